//! Failover: after the first completed checkpoint, a worker's process
//! group (or the Raft leader among three coordinators) is killed. For a
//! worker, measures until the failure is seen, a new attempt starts, runs,
//! and its sources produce output again. For the leader, whose executors
//! run on and rejoin the next one: until a new leader answers, the
//! executors rejoined it (it reports their counters), and it completed a
//! checkpoint (exactly-once sinks commit again).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use sluice_engine::protocol::api::JobState;

use crate::harness::{pace, paced_job, raft_leader, source_output};
use crate::report::{all, median, secs};
use crate::{Args, CHECKPOINT_INTERVAL, HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT};

struct Failover {
    /// Kill to RESTARTING (or a later attempt) seen.
    detected: Duration,
    /// Kill to a new attempt number seen.
    attempt: Duration,
    /// Kill to the new attempt RUNNING.
    running: Duration,
    /// Kill to a source node of the new attempt reporting records out.
    output: Duration,
    checkpoint: u64,
    /// Attempts started after the kill, up to the one whose output resumed
    /// (restarts counted by the coordinator).
    attempts: u64,
    /// Durations of this run's `sluice status` calls.
    polls: Vec<Duration>,
}

fn failover_once(
    args: &Args,
    sluice: &Path,
    nexmark: &Path,
    dir: &Path,
) -> anyhow::Result<Failover> {
    let raft = args.victim == "raft-leader";
    let coordinators = if raft { 3 } else { 1 };
    let (mut c, job, before, sources) = paced_job(args, sluice, nexmark, dir, coordinators)?;
    let coordinator = raft;
    // A checkpoint that completes from here on completed after the kill.
    let checkpoint_at_kill = c.status(&job)?.latest_checkpoint;
    let killed = if raft {
        let leader = raft_leader(&c, coordinators)?;
        c.inner.kill_coordinator_at(leader);
        c.polled.set((leader + 1) % coordinators);
        Instant::now()
    } else {
        let victim = before.placement[0].worker.clone();
        let pos = c.inner.worker_position(&victim)?;
        c.inner
            .signal_worker(pos, &format!("-{}", args.failover_signal));
        let killed = Instant::now();
        if args.failover_signal == "KILL" {
            c.inner.wait_worker(pos);
        }
        killed
    };

    let (mut detected, mut attempt, mut running) = (None, None, None);
    // The coordinator refreshes a job's counters from the running attempt
    // once per tick, so the first statuses of a new attempt can still
    // carry the previous attempt's counters: only counters seen after an
    // all-zero report under the same attempt count.
    let mut fresh = None;
    loop {
        let poll = Instant::now();
        let s = match c.status(&job) {
            Ok(s) => s,
            // No leader answers until one is elected: HTTP polls try
            // each survivor in turn.
            Err(_) if coordinator && killed.elapsed() < Duration::from_secs(120) => {
                let n = coordinators;
                let mut next = (c.polled.get() + 1) % n;
                if c.inner.coordinator_pid(next).is_none() {
                    next = (next + 1) % n;
                }
                c.polled.set(next);
                pace(poll);
                continue;
            }
            Err(e) => return Err(e),
        };
        let t = killed.elapsed();
        if coordinator {
            detected.get_or_insert(t);
        }
        if s.state.is_terminal() {
            bail!(
                "job {job} ended {:?} before output resumed: {:?}\n{}",
                s.state,
                s.error,
                c.logs()
            );
        }
        if s.state == JobState::Restarting || s.restarts > before.restarts {
            detected.get_or_insert(t);
        }
        if raft && s.attempt == before.attempt {
            // Adopted: the new leader's counters come from the executors'
            // reports once they rejoined it.
            if source_output(&s.nodes, &sources) {
                attempt.get_or_insert(t);
                running.get_or_insert(t);
            }
            if attempt.is_some() && s.latest_checkpoint > checkpoint_at_kill {
                return Ok(Failover {
                    detected: detected.unwrap_or(t),
                    attempt: attempt.unwrap_or(t),
                    running: running.unwrap_or(t),
                    output: t,
                    checkpoint: checkpoint_at_kill.unwrap_or(0),
                    attempts: 0,
                    polls: c.take_polls(),
                });
            }
        }
        if s.attempt > before.attempt {
            detected.get_or_insert(t);
            attempt.get_or_insert(t);
            if s.state.is_running() {
                running.get_or_insert(t);
            }
            if s.nodes
                .iter()
                .all(|n| n.records_in == 0 && n.records_out == 0)
            {
                fresh = Some(s.attempt);
            }
            if fresh == Some(s.attempt) && source_output(&s.nodes, &sources) {
                let r = Failover {
                    detected: detected.unwrap_or(t),
                    attempt: attempt.unwrap_or(t),
                    running: running.unwrap_or(t),
                    output: t,
                    checkpoint: before.latest_checkpoint.unwrap_or(0),
                    attempts: s.restarts - before.restarts,
                    polls: c.take_polls(),
                };
                return Ok(r);
            }
        }
        if t > Duration::from_secs(120) {
            bail!(
                "output did not resume within 120 s of the kill (status: {:?}, attempt {})\n{}",
                s.state,
                s.attempt,
                c.logs()
            );
        }
        pace(poll);
    }
}

pub(crate) struct FailoverSummary {
    pub(crate) detected_s: f64,
    pub(crate) attempt_s: f64,
    pub(crate) running_s: f64,
    pub(crate) output_s: f64,
    pub(crate) attempts: String,
    pub(crate) runs: String,
}

pub(crate) fn failover(
    args: &Args,
    sluice: &Path,
    nexmark: &Path,
    dir: &Path,
    polls: &mut Vec<Duration>,
) -> anyhow::Result<FailoverSummary> {
    println!(
        "failover: coordinator + 3 workers × {} slot(s), heartbeat timeout {HEARTBEAT_TIMEOUT}, \
         interval {HEARTBEAT_INTERVAL}; q5 at {} events/s, checkpoints every {CHECKPOINT_INTERVAL}",
        args.slots, args.failover_rate
    );
    let raft = args.victim == "raft-leader";
    let (attempt_label, output_label) = if raft {
        ("rejoined s", "ckpt again s")
    } else {
        ("new att. s", "output again s")
    };
    println!(
        "{:>4} {:>6} {:>12} {:>12} {:>12} {:>16} {:>9}",
        "run", "ckpt", "detected s", attempt_label, "RUNNING s", output_label, "attempts"
    );
    let (mut det, mut att, mut run, mut out) = (vec![], vec![], vec![], vec![]);
    let mut attempts = vec![];
    for i in 0..args.repeat.max(1) {
        let d = dir.join(format!("failover-{i}"));
        let f = failover_once(args, sluice, nexmark, &d)?;
        polls.extend(&f.polls);
        println!(
            "{:>4} {:>6} {:>12.3} {:>12.3} {:>12.3} {:>16.3} {:>9}",
            i + 1,
            f.checkpoint,
            secs(f.detected),
            secs(f.attempt),
            secs(f.running),
            secs(f.output),
            f.attempts
        );
        attempts.push(f.attempts.to_string());
        det.push(secs(f.detected));
        att.push(secs(f.attempt));
        run.push(secs(f.running));
        out.push(secs(f.output));
    }
    Ok(FailoverSummary {
        detected_s: median(det.clone()),
        attempt_s: median(att.clone()),
        running_s: median(run.clone()),
        output_s: median(out.clone()),
        attempts: attempts.join(", "),
        runs: format!(
            "failure seen {} s; {} {} s; RUNNING {} s; {} {} s; \
             attempts after the kill {}",
            all(&det, |x| format!("{x:.2}")),
            if raft { "rejoined" } else { "new attempt" },
            all(&att, |x| format!("{x:.2}")),
            all(&run, |x| format!("{x:.2}")),
            if raft {
                "checkpoint completed"
            } else {
                "output"
            },
            all(&out, |x| format!("{x:.2}")),
            attempts.join(", ")
        ),
    })
}
