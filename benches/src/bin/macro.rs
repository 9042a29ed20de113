//! The macro benchmark runner: runs the `nexmark` job binary (a sibling of
//! this executable in the target directory, or the builds named with
//! `--bin`) for every combination of query, state backend, checkpoint
//! interval and parallelism, several times, and prints a Markdown report of
//! median events/s and peak memory, ready for `benches/RESULTS.md`.
//!
//! Runs are interleaved: repetition `r` runs every configuration once
//! before repetition `r + 1` starts, so drift of a shared machine touches
//! every configuration alike. The report starts with the command line and
//! the machine (CPU model, cores, load before and after).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::Parser;

/// Nexmark macro benchmark.
#[derive(Parser, Debug)]
struct Args {
    /// Queries to run (`generator` is the bid generator alone; `tumble` and
    /// `slide` are the window benchmarks of the nexmark binary).
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
    /// Checkpoint settings to run: `off`, or an interval such as `1s`
    /// (into a fresh directory per run), `1s:unaligned` for unaligned
    /// checkpoints.
    #[arg(long, value_delimiter = ',', default_value = "off")]
    checkpoints: Vec<String>,
    /// A sink that sleeps this long per batch (the job is then
    /// backpressured), e.g. `2ms`.
    #[arg(long, value_parser = humantime::parse_duration)]
    sink_delay: Option<std::time::Duration>,
    /// State backends to run: `memory`, `rocksdb` (default live-state
    /// cache) or `rocksdb:MB` (a live-state cache of MB MiB per operator
    /// subtask, e.g. small enough that the state does not fit).
    #[arg(long, value_delimiter = ',', default_value = "memory")]
    states: Vec<String>,
    /// Builds to compare, `LABEL=PATH` of a nexmark binary (repeatable);
    /// default: the nexmark binary next to this one, labelled `this`.
    #[arg(long = "bin")]
    bins: Vec<String>,
}

/// One configuration of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Config {
    build: String,
    query: String,
    state: String,
    checkpoints: String,
    parallelism: usize,
}

struct Run {
    events_per_sec: f64,
    peak_rss_mib: f64,
    checkpoints: f64,
    median_checkpoint_ms: f64,
    max_checkpoint_ms: f64,
}

fn field(line: &str, name: &str) -> anyhow::Result<f64> {
    let v = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .with_context(|| format!("no {name} in '{line}'"))?;
    Ok(v.parse()?)
}

fn run(
    bin: &PathBuf,
    c: &Config,
    events: u64,
    sink_delay: Option<std::time::Duration>,
) -> anyhow::Result<Run> {
    let mut cmd = Command::new(bin);
    let ck = tempfile_dir()?;
    match c.state.split_once(':') {
        Some(("rocksdb", mb)) => {
            cmd.args(["--state", "rocksdb", "--state-cache-mb", mb]);
        }
        None if c.state == "rocksdb" || c.state == "memory" => {
            cmd.args(["--state", &c.state]);
        }
        _ => bail!("unknown state '{}': memory, rocksdb or rocksdb:MB", c.state),
    }
    if c.checkpoints != "off" {
        let (interval, mode) = c
            .checkpoints
            .split_once(':')
            .unwrap_or((&c.checkpoints, "aligned"));
        cmd.arg("--checkpoint-dir")
            .arg(&ck)
            .args(["--checkpoint-interval", interval]);
        match mode {
            "aligned" => {}
            "unaligned" => {
                cmd.arg("--unaligned-checkpoints");
            }
            m => bail!("unknown checkpoint mode '{m}': aligned or unaligned"),
        }
    }
    if let Some(d) = sink_delay {
        cmd.args(["--sink-delay", &humantime::format_duration(d).to_string()]);
    }
    cmd.args([
        "--events",
        &events.to_string(),
        "--parallelism",
        &c.parallelism.to_string(),
        "--output",
        "blackhole",
    ]);
    if c.query == "generator" {
        cmd.args(["--query", "q0", "--generator-only"]);
    } else {
        cmd.args(["--query", &c.query]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let _ = std::fs::remove_dir_all(&ck);
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8(out.stdout)?;
    let line = stdout.lines().last().context("no output")?;
    Ok(Run {
        events_per_sec: field(line, "events_per_sec")?,
        peak_rss_mib: field(line, "peak_rss_mib")?,
        checkpoints: field(line, "checkpoints")?,
        median_checkpoint_ms: field(line, "median_checkpoint_ms").unwrap_or(f64::NAN),
        max_checkpoint_ms: field(line, "max_checkpoint_ms").unwrap_or(f64::NAN),
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

/// CPU model and core count from `/proc/cpuinfo`.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn builds(args: &Args) -> anyhow::Result<Vec<(String, PathBuf)>> {
    if args.bins.is_empty() {
        let bin = sluice_benches::machine::sibling("nexmark")?;
        return Ok(vec![("this".into(), bin)]);
    }
    args.bins
        .iter()
        .map(|b| {
            let (label, path) = b
                .split_once('=')
                .with_context(|| format!("--bin '{b}': expected LABEL=PATH"))?;
            Ok((label.to_string(), PathBuf::from(path)))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let builds = builds(&args)?;
    for (_, bin) in &builds {
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --release -p sluice-jobs --bin nexmark)",
                bin.display()
            );
        }
    }
    let mut configs = Vec::new();
    for (build, _) in &builds {
        for q in &args.queries {
            for s in &args.states {
                for ck in &args.checkpoints {
                    for &p in &args.parallelism {
                        configs.push(Config {
                            build: build.clone(),
                            query: q.clone(),
                            state: s.clone(),
                            checkpoints: ck.clone(),
                            parallelism: p,
                        });
                    }
                }
            }
        }
    }
    let bin_of: HashMap<&str, &PathBuf> = builds.iter().map(|(l, p)| (l.as_str(), p)).collect();
    let load_before = load_average();
    let mut runs: HashMap<Config, Vec<Run>> = HashMap::new();
    for r in 0..args.repeat.max(1) {
        for c in &configs {
            eprintln!("run {} of {}: {c:?}", r + 1, args.repeat.max(1));
            let result = run(bin_of[c.build.as_str()], c, args.events, args.sink_delay)?;
            runs.entry(c.clone()).or_default().push(result);
        }
    }
    let medians: HashMap<&Config, f64> = runs
        .iter()
        .map(|(c, rs)| (c, median(rs.iter().map(|r| r.events_per_sec).collect())))
        .collect();
    let command: Vec<String> = std::env::args().collect();
    println!("Command: `{}`", command.join(" "));
    println!();
    println!(
        "Machine: {}; load average {} before, {} after; {} events per run, medians of {} interleaved runs.",
        machine(),
        load_before,
        load_average(),
        args.events,
        args.repeat.max(1)
    );
    println!();
    println!("| build | query | state | checkpoints | p | median events/s | vs heap | vs first build | runs | peak RSS MiB | checkpoints | checkpoint ms, median (max) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for c in &configs {
        let rs = &runs[c];
        let eps = medians[c];
        let heap = Config {
            state: "memory".into(),
            ..c.clone()
        };
        let first = Config {
            build: builds[0].0.clone(),
            ..c.clone()
        };
        let ratio = |other: &Config| {
            medians
                .get(other)
                .filter(|_| other != c)
                .map_or("".to_string(), |m| format!("{:.2}", eps / m))
        };
        let all: Vec<String> = rs
            .iter()
            .map(|r| format!("{:.2}", r.events_per_sec / 1e6))
            .collect();
        let rss = rs.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max);
        let cks = median(rs.iter().map(|r| r.checkpoints).collect());
        let ck_ms = median(rs.iter().map(|r| r.median_checkpoint_ms).collect());
        let ck_max = median(rs.iter().map(|r| r.max_checkpoint_ms).collect());
        println!(
            "| {} | {} | {} | {} | {} | {:.2} M | {} | {} | {} | {rss:.0} | {cks:.0} | {ck_ms:.0} ({ck_max:.0}) |",
            c.build,
            c.query,
            c.state,
            c.checkpoints,
            c.parallelism,
            eps / 1e6,
            ratio(&heap),
            ratio(&first),
            all.join(", ")
        );
    }
    Ok(())
}
