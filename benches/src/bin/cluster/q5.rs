//! q5 embedded against the same job on a coordinator and two workers:
//! process start to exit, and submit (and RUNNING) to FINISHED.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sluice_engine::protocol::api::JobState;

use crate::harness::{pace, Cluster};
use crate::report::{all, median, secs};
use crate::Args;

pub(crate) fn q5_args(events: u64) -> Vec<String> {
    ["--query", "q5", "--events", &events.to_string()]
        .into_iter()
        .map(String::from)
        .chain(["--output".into(), "blackhole".into()])
        .collect()
}

/// Embedded q5: process wall time, and the job's own `wall_ms`.
fn embedded(nexmark: &Path, events: u64) -> anyhow::Result<(Duration, f64)> {
    let start = Instant::now();
    let out = Command::new(nexmark)
        .args(q5_args(events))
        .args(["--parallelism", "2"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", nexmark.display()))?;
    let wall = start.elapsed();
    if !out.status.success() {
        bail!(
            "embedded q5 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let job_ms = stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("wall_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Ok((wall, job_ms))
}

struct ClusterRun {
    /// Submit (the `sluice submit` process start) to FINISHED seen.
    total: Duration,
    /// First RUNNING seen to FINISHED seen (none if RUNNING was missed).
    running: Option<Duration>,
}

fn cluster_q5(c: &mut Cluster, nexmark: &Path, events: u64) -> anyhow::Result<ClusterRun> {
    let start = Instant::now();
    let job = c.submit(nexmark, &q5_args(events))?;
    let mut running_at = None;
    loop {
        let poll = Instant::now();
        let s = c.status(&job)?;
        let t = start.elapsed();
        match s.state {
            state if state.is_running() => {
                running_at.get_or_insert(t);
            }
            JobState::Finished => {
                return Ok(ClusterRun {
                    total: t,
                    running: running_at.map(|r| t - r),
                })
            }
            JobState::Failed | JobState::Canceled => {
                bail!("job {job} ended {:?}: {:?}\n{}", s.state, s.error, c.logs())
            }
            _ => {}
        }
        if t > Duration::from_secs(1800) {
            bail!("job {job} did not finish in 30 min\n{}", c.logs());
        }
        pace(poll);
    }
}

pub(crate) struct Q5Summary {
    pub(crate) embedded_s: f64,
    pub(crate) job_ms: f64,
    pub(crate) cluster_s: f64,
    pub(crate) running_s: f64,
    pub(crate) runs: String,
    pub(crate) polls: Vec<Duration>,
}

pub(crate) fn q5(
    args: &Args,
    sluice: &Path,
    nexmark: &Path,
    dir: &Path,
) -> anyhow::Result<Q5Summary> {
    let n = args.events as f64;
    let mut cluster = Cluster::start(args, sluice, &dir.join("q5"), 2, &[], 1)?;
    let (mut emb, mut job_ms, mut tot, mut run) = (vec![], vec![], vec![], vec![]);
    println!(
        "q5, {} events, parallelism 2: embedded vs coordinator + 2 workers × {} slot(s)",
        args.events, args.slots
    );
    println!(
        "{:>4} {:>12} {:>12} {:>16} {:>16} {:>12}",
        "run", "embedded s", "emb. M ev/s", "submit→FIN s", "RUNNING→FIN s", "cluster M ev/s"
    );
    // Interleaved, so drifting load on a shared machine hits both alike.
    for i in 0..args.repeat.max(1) {
        let (wall, ms) = embedded(nexmark, args.events)?;
        let r = cluster_q5(&mut cluster, nexmark, args.events)?;
        println!(
            "{:>4} {:>12.3} {:>12.2} {:>16.3} {:>16} {:>12.2}",
            i + 1,
            secs(wall),
            n / secs(wall) / 1e6,
            secs(r.total),
            r.running
                .map_or("missed".into(), |d| format!("{:.3}", secs(d))),
            n / secs(r.total) / 1e6
        );
        emb.push(secs(wall));
        job_ms.push(ms);
        tot.push(secs(r.total));
        if let Some(d) = r.running {
            run.push(secs(d));
        }
    }
    Ok(Q5Summary {
        embedded_s: median(emb.clone()),
        job_ms: median(job_ms),
        cluster_s: median(tot.clone()),
        running_s: median(run),
        runs: format!(
            "embedded {} s; cluster {} s",
            all(&emb, |x| format!("{x:.2}")),
            all(&tot, |x| format!("{x:.2}"))
        ),
        polls: cluster.take_polls(),
    })
}
