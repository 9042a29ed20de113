//! The macro benchmark runner: runs the `nexmark` job binary (a sibling of
//! this executable in the target directory) for each query and parallelism,
//! several times, and prints a Markdown table of median events/s and peak
//! memory, ready for `benches/RESULTS.md`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::Parser;

/// Nexmark macro benchmark.
#[derive(Parser, Debug)]
struct Args {
    /// Queries to run (`generator` is the bid generator alone).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "generator,q0,q5,q7,q8,q11"
    )]
    queries: Vec<String>,
    /// Parallelisms to run each query at.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    parallelism: Vec<usize>,
    /// Generator events per run.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Runs per configuration; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Checkpoint at this interval (e.g. `1s`) into a fresh directory per
    /// run; off by default.
    #[arg(long)]
    checkpoint_interval: Option<String>,
    /// State backend passed to the job (`memory` or `rocksdb`).
    #[arg(long, default_value = "memory")]
    state: String,
}

struct Run {
    events_per_sec: f64,
    records_per_sec: f64,
    peak_rss_mib: f64,
    checkpoints: f64,
    last_checkpoint_ms: f64,
}

fn field(line: &str, name: &str) -> anyhow::Result<f64> {
    let v = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .with_context(|| format!("no {name} in '{line}'"))?;
    Ok(v.parse()?)
}

fn run(bin: &PathBuf, query: &str, p: usize, args: &Args) -> anyhow::Result<Run> {
    let events = args.events;
    let mut cmd = Command::new(bin);
    let ck = tempfile_dir()?;
    cmd.args(["--state", &args.state]);
    if let Some(i) = &args.checkpoint_interval {
        cmd.arg("--checkpoint-dir")
            .arg(&ck)
            .args(["--checkpoint-interval", i]);
    }
    cmd.args([
        "--events",
        &events.to_string(),
        "--parallelism",
        &p.to_string(),
        "--output",
        "blackhole",
    ]);
    if query == "generator" {
        cmd.args(["--query", "q0", "--generator-only"]);
    } else {
        cmd.args(["--query", query]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{query} p={p} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&ck);
    let stdout = String::from_utf8(out.stdout)?;
    let line = stdout.lines().last().context("no output")?;
    Ok(Run {
        events_per_sec: field(line, "events_per_sec")?,
        records_per_sec: field(line, "records_per_sec")?,
        peak_rss_mib: field(line, "peak_rss_mib")?,
        checkpoints: field(line, "checkpoints")?,
        last_checkpoint_ms: field(line, "last_checkpoint_ms").unwrap_or(f64::NAN),
    })
}

/// A fresh checkpoint directory for one run.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "sluice-bench-ck-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    Ok(d)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = std::env::current_exe()?.with_file_name("nexmark");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p sluice-jobs)",
            bin.display()
        );
    }
    println!("| query | parallelism | events | median events/s | median source records/s | peak RSS MiB | checkpoints | runs |");
    println!("|---|---|---|---|---|---|---|---|");
    for q in &args.queries {
        for &p in &args.parallelism {
            let runs = (0..args.repeat.max(1))
                .map(|_| run(&bin, q, p, &args))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let eps = median(runs.iter().map(|r| r.events_per_sec).collect());
            let rps = median(runs.iter().map(|r| r.records_per_sec).collect());
            let rss = runs.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max);
            let all: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.2}M", r.events_per_sec / 1e6))
                .collect();
            let cks = median(runs.iter().map(|r| r.checkpoints).collect());
            let ck_ms = median(runs.iter().map(|r| r.last_checkpoint_ms).collect());
            println!(
                "| {q} | {p} | {} | {:.2} M | {:.2} M | {rss:.0} | {cks:.0} (last {ck_ms:.0} ms) | {} |",
                args.events,
                eps / 1e6,
                rps / 1e6,
                all.join(", ")
            );
        }
    }
    Ok(())
}
