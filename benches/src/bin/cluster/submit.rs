//! Submit → RUNNING: a fresh coordinator and two workers per run (so the
//! workers download the binary); measures `sluice submit` and until the job
//! is RUNNING, and the size of the artifact the coordinator stored.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::harness::{pace, Cluster};
use crate::q5::q5_args;
use crate::report::{all, median, secs};
use crate::Args;

/// One submission to a fresh cluster: seconds from starting `sluice
/// submit`, and the bytes shipped.
struct SubmitRun {
    command: f64,
    running: f64,
    shipped: u64,
    polls: Vec<Duration>,
}

fn submit_once(
    args: &Args,
    sluice: &Path,
    nexmark: &Path,
    dir: &Path,
) -> anyhow::Result<SubmitRun> {
    let c = Cluster::start(args, sluice, dir, 2, &[], 1)?;
    let debug = nexmark.with_file_name(format!(
        "{}.debug",
        nexmark
            .file_name()
            .context("a file name")?
            .to_string_lossy()
    ));
    if !args.warm {
        let _ = std::fs::remove_file(&debug);
    }
    let mut job_args = q5_args(args.failover_rate * 600);
    job_args.extend(["--rate".into(), args.failover_rate.to_string()]);
    let start = Instant::now();
    let job = c.submit(nexmark, &job_args)?;
    let command = start.elapsed();
    let running = loop {
        let poll = Instant::now();
        let s = c.status(&job)?;
        if s.state.is_running() {
            break start.elapsed();
        }
        if s.state.is_terminal() {
            bail!("job {job} ended {:?}: {:?}\n{}", s.state, s.error, c.logs());
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("job {job} not RUNNING within 10 min\n{}", c.logs());
        }
        pace(poll);
    };
    let artifact = c.status(&job)?.artifact;
    let shipped = std::fs::metadata(dir.join("coordinator").join("artifacts").join(&artifact))
        .map(|m| m.len())
        .unwrap_or(0);
    let _ = c.inner.sluice(&["cancel", &job]);
    Ok(SubmitRun {
        command: secs(command),
        running: secs(running),
        shipped,
        polls: c.take_polls(),
    })
}

/// Medians of the command and of RUNNING, the shipped size, all runs.
pub(crate) fn submit(
    args: &Args,
    sluice: &Path,
    nexmark: &Path,
    dir: &Path,
    polls: &mut Vec<Duration>,
) -> anyhow::Result<(f64, f64, u64, String)> {
    println!(
        "submit → RUNNING: fresh coordinator + 2 workers × {} slot(s) per run",
        args.slots
    );
    println!(
        "{:>4} {:>12} {:>12} {:>14}",
        "run", "command s", "RUNNING s", "shipped MB"
    );
    let (mut cmd, mut run, mut shipped) = (vec![], vec![], 0);
    for i in 0..args.repeat.max(1) {
        let r = submit_once(args, sluice, nexmark, &dir.join(format!("submit-{i}")))?;
        println!(
            "{:>4} {:>12.3} {:>12.3} {:>14.1}",
            i + 1,
            r.command,
            r.running,
            r.shipped as f64 / 1e6
        );
        polls.extend(&r.polls);
        cmd.push(r.command);
        run.push(r.running);
        shipped = r.shipped;
    }
    let runs = format!(
        "command {} s; RUNNING {} s",
        all(&cmd, |x| format!("{x:.2}")),
        all(&run, |x| format!("{x:.2}"))
    );
    Ok((median(cmd), median(run), shipped, runs))
}
