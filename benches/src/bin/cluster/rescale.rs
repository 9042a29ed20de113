//! Rescale: after the first completed checkpoint, `sluice rescale ID -p 3`;
//! measures how long the command takes and until the job runs, and
//! produces output, at parallelism 3.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::harness::{pace, paced_job, source_output};
use crate::report::{all, median, secs};
use crate::{Args, CHECKPOINT_INTERVAL};

/// One rescale: times from starting `sluice rescale` (seconds).
struct Rescale {
    command: f64,
    running: f64,
    output: f64,
    polls: Vec<Duration>,
}

fn rescale_once(args: &Args, sluice: &Path, nexmark: &Path, dir: &Path) -> anyhow::Result<Rescale> {
    let (c, job, before, sources) = paced_job(args, sluice, nexmark, dir, 0)?;
    let start = Instant::now();
    let out = c.inner.sluice(&["rescale", &job, "-p", "3"])?;
    if !out.status.success() {
        bail!(
            "sluice rescale failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            c.logs()
        );
    }
    let command = start.elapsed();
    let (mut running, mut fresh) = (None, None);
    loop {
        let poll = Instant::now();
        let s = c.status(&job)?;
        let t = start.elapsed();
        if s.state.is_terminal() {
            bail!(
                "job {job} ended {:?} during the rescale: {:?}",
                s.state,
                s.error
            );
        }
        let wide = s.vertices.iter().map(|v| v.parallelism).max() == Some(3);
        if wide && s.attempt > before.attempt {
            if s.state.is_running() {
                running.get_or_insert(t);
            }
            if s.nodes.iter().all(|n| n.records_out == 0) {
                fresh = Some(s.attempt);
            }
            if fresh == Some(s.attempt) && source_output(&s.nodes, &sources) {
                return Ok(Rescale {
                    command: secs(command),
                    running: secs(running.unwrap_or(t)),
                    output: secs(t),
                    polls: c.take_polls(),
                });
            }
        }
        if t > Duration::from_secs(120) {
            bail!("no output at parallelism 3 within 120 s\n{}", c.logs());
        }
        pace(poll);
    }
}

pub(crate) fn rescale(
    args: &Args,
    sluice: &Path,
    nexmark: &Path,
    dir: &Path,
    polls: &mut Vec<Duration>,
) -> anyhow::Result<(f64, f64, f64, String)> {
    println!(
        "rescale 2 → 3: coordinator + 3 workers × {} slot(s); q5 at {} events/s, checkpoints every {CHECKPOINT_INTERVAL}",
        args.slots, args.failover_rate
    );
    println!(
        "{:>4} {:>12} {:>12} {:>16}",
        "run", "command s", "RUNNING s", "output again s"
    );
    let (mut cmd, mut run, mut out) = (vec![], vec![], vec![]);
    for i in 0..args.repeat.max(1) {
        let r = rescale_once(args, sluice, nexmark, &dir.join(format!("rescale-{i}")))?;
        println!(
            "{:>4} {:>12.3} {:>12.3} {:>16.3}",
            i + 1,
            r.command,
            r.running,
            r.output
        );
        polls.extend(&r.polls);
        cmd.push(r.command);
        run.push(r.running);
        out.push(r.output);
    }
    let runs = format!(
        "command {} s; RUNNING {} s; output {} s",
        all(&cmd, |x| format!("{x:.2}")),
        all(&run, |x| format!("{x:.2}")),
        all(&out, |x| format!("{x:.2}"))
    );
    Ok((median(cmd), median(run), median(out), runs))
}
