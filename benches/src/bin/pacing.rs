//! CPU cost of pacing: runs the `nexmark` job binary (a sibling of this
//! executable, or `--nexmark PATH`) unpaced and at each `--rate`, several
//! times, and prints a Markdown table of the CPU time (user + system, all
//! threads) per event and its ratio to the unpaced run, ready for
//! `benches/RESULTS.md`.
//!
//! The CPU time is read from `/proc/PID/stat` once the job has exited and
//! before it is reaped: a zombie's `utime` and `stime` hold the totals of
//! all its threads (Linux).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

/// CPU per event of paced and unpaced Nexmark runs.
#[derive(Parser, Debug)]
struct Args {
    /// Query to run.
    #[arg(long, default_value = "q5")]
    query: String,
    /// Paced rates (events per second) to compare with the unpaced run.
    #[arg(long, value_delimiter = ',', default_value = "20000,200000")]
    rate: Vec<u64>,
    /// Wall time of each paced run (its events are rate × this).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events of the unpaced run.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Parallelism.
    #[arg(long, default_value_t = 1)]
    parallelism: usize,
    /// Runs per configuration; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The nexmark binary (default: next to this one).
    #[arg(long)]
    nexmark: Option<PathBuf>,
}

/// Clock ticks of `/proc/PID/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// One run: wall time and CPU time (s).
struct Run {
    wall: f64,
    cpu: f64,
}

/// `utime + stime` (ticks) and the state of `pid`.
fn stat(pid: u32) -> anyhow::Result<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = &text[text.rfind(')').context("malformed stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f[0].chars().next().context("no state")?;
    // Fields 14 and 15 of stat(5) are the 12th and 13th after the name.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok((state, ticks))
}

fn run(bin: &PathBuf, args: &Args, rate: Option<u64>) -> anyhow::Result<Run> {
    let events = match rate {
        Some(r) => r * args.seconds,
        None => args.events,
    };
    let mut cmd = Command::new(bin);
    cmd.args(["--query", &args.query, "--output", "blackhole"])
        .args(["--events", &events.to_string()])
        .args(["--parallelism", &args.parallelism.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(r) = rate {
        cmd.args(["--rate", &r.to_string()]);
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    let ticks = loop {
        let (state, ticks) = stat(pid)?;
        if state == 'Z' {
            break ticks;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = start.elapsed().as_secs_f64();
    let status = child.wait()?;
    if !status.success() {
        bail!("{} exited with {status}", bin.display());
    }
    Ok(Run {
        wall,
        cpu: ticks as f64 / TICKS_PER_SEC,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.nexmark {
        Some(p) => p.clone(),
        None => sluice_benches::machine::sibling("nexmark")?,
    };
    println!("| run | events | wall (s) | CPU (s) | cores | CPU per event (µs) | vs unpaced |");
    println!("|---|---|---|---|---|---|---|");
    let mut unpaced = None;
    for rate in std::iter::once(None).chain(args.rate.iter().map(|r| Some(*r))) {
        let events = rate.map_or(args.events, |r| r * args.seconds);
        let runs = (0..args.repeat)
            .map(|_| run(&bin, &args, rate))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let per_event: Vec<f64> = runs.iter().map(|r| r.cpu / events as f64 * 1e6).collect();
        let wall = median(runs.iter().map(|r| r.wall).collect());
        let cpu = median(runs.iter().map(|r| r.cpu).collect());
        let us = median(per_event.clone());
        let base = *unpaced.get_or_insert(us);
        println!(
            "| {} | {events} | {wall:.2} | {cpu:.2} | {:.2} | {us:.3} (runs: {}) | {:.2} |",
            rate.map_or("unpaced".to_string(), |r| format!("--rate {r}")),
            cpu / wall,
            per_event
                .iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            us / base
        );
    }
    Ok(())
}
