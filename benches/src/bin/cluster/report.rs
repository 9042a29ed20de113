//! The report: figure arithmetic (medians, lists of runs), the machine
//! description and the Markdown section for `benches/RESULTS.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::failover::FailoverSummary;
use crate::q5::Q5Summary;
use crate::{Args, CHECKPOINT_INTERVAL, HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, POLL};
use sluice_benches::machine::{command_line, cpu_model, nproc};
pub(crate) use sluice_benches::machine::{loadavg, median};

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub(crate) fn all(v: &[f64], f: impl Fn(f64) -> String) -> String {
    v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(", ")
}

/// What a run measured (each part `None` when not run), and the
/// circumstances the report states.
pub(crate) struct Measured {
    pub(crate) q5: Option<Q5Summary>,
    pub(crate) failover: Option<FailoverSummary>,
    /// Rescale medians (command, RUNNING, output) and all runs.
    pub(crate) rescale: Option<(f64, f64, f64, String)>,
    /// Submit medians (command, RUNNING), the shipped size, all runs.
    pub(crate) submit: Option<(f64, f64, u64, String)>,
    /// Durations of every status call made.
    pub(crate) polls: Vec<Duration>,
    /// The load average when the benchmark started.
    pub(crate) load_start: String,
    /// Whether debug binaries were measured.
    pub(crate) debug: bool,
}

/// The Markdown section for `benches/RESULTS.md`.
pub(crate) fn markdown(args: &Args, sluice: &Path, nexmark: &Path, measured: Measured) -> String {
    let Measured {
        q5: q,
        failover: f,
        rescale: rs,
        submit: submitted,
        polls,
        load_start,
        debug,
    } = measured;
    let mut md = String::new();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "## Distributed runtime: q5 on a cluster, failover ({date})\n"
    );
    if debug {
        let _ = writeln!(md, "**Debug binaries: not release figures.**\n");
    }
    let _ = writeln!(
        md,
        "Machine: `nproc` = {}, {}; load average {} at the start, {} at the end.\n",
        nproc(),
        cpu_model(),
        load_start,
        loadavg()
    );
    let _ = writeln!(md, "```sh\n{}\n```\n", command_line());
    let _ = writeln!(
        md,
        "Real processes on loopback: `sluice coordinator`, `sluice worker`s \
         ({} slot(s) each), jobs sent with `sluice submit --parallelism 2`; \
         state from {} polled every {} ms; a call took \
         {:.0} ms (median of {}), so each time is late by at most a period plus a \
         call. Medians of {} runs.\n",
        args.slots,
        if args.poll == "http" {
            "`GET /api/v1/jobs/ID`"
        } else {
            "`sluice status ID --json`"
        },
        POLL.as_millis(),
        median(polls.iter().map(|d| secs(*d) * 1e3).collect()),
        polls.len(),
        args.repeat.max(1)
    );
    if let Some(q) = &q {
        let n = args.events as f64;
        let _ = writeln!(
            md,
            "q5, {} events, `--output blackhole`; embedded = `nexmark --parallelism 2` \
             process start to exit (the job's own `wall_ms`: {:.0}); cluster = coordinator \
             defaults, 2 workers, from starting `sluice submit` (describe run, upload) to \
             FINISHED (the first run also includes the workers' first download of the \
             binary).\n",
            args.events, q.job_ms
        );
        let _ = writeln!(md, "| run | time | events/s | vs embedded |");
        let _ = writeln!(md, "|---|---|---|---|");
        let emb = n / q.embedded_s;
        let _ = writeln!(
            md,
            "| embedded, parallelism 2 | {:.2} s | {:.2} M | 1.00 |",
            q.embedded_s,
            emb / 1e6
        );
        let _ = writeln!(
            md,
            "| cluster, submit → FINISHED | {:.2} s | {:.2} M | {:.2} |",
            q.cluster_s,
            n / q.cluster_s / 1e6,
            n / q.cluster_s / emb
        );
        let _ = writeln!(
            md,
            "| cluster, RUNNING → FINISHED | {:.2} s | {:.2} M | {:.2} |\n",
            q.running_s,
            n / q.running_s / 1e6,
            n / q.running_s / emb
        );
        let _ = writeln!(md, "All runs: {}.\n", q.runs);
    }
    if let Some(f) = &f {
        if args.victim == "raft-leader" {
            let _ = writeln!(
                md,
                "Raft leader failover: three coordinators in a Raft group (`--peers`, each its own \
                 data directory, `--election-timeout {}`; `--heartbeat-timeout {HEARTBEAT_TIMEOUT} \
                 --heartbeat-interval {HEARTBEAT_INTERVAL}`), 3 workers given every URL; q5 with \
                 `--rate {} --checkpoint-interval {CHECKPOINT_INTERVAL}` ({} events); after the \
                 first completed checkpoint, SIGKILL to the leader. Times from the signal; \
                 \"failure seen\" is the first status a newly elected leader answers; the \
                 executors run on, and the new leader adopts their attempt: \"rejoined\" is \
                 the first status in which it reports the sources' records out (executors \
                 report to it once they rejoined), \"checkpoint again\" the first in which a \
                 checkpoint completed after the kill (sinks commit again). \"attempts\" \
                 counts restarts after the kill (0: adopted).\n",
                humantime::format_duration(args.election_timeout),
                args.failover_rate,
                args.failover_rate * args.failover_secs,
            );
        } else {
            let _ = writeln!(
                md,
                "Failover: coordinator with `--heartbeat-timeout {HEARTBEAT_TIMEOUT} \
             --heartbeat-interval {HEARTBEAT_INTERVAL}` (restart delay: default), 3 workers; \
             q5 with `--rate {} --checkpoint-interval {CHECKPOINT_INTERVAL}` ({} events); \
             after the first completed checkpoint, SIG{} to the process group of the worker \
             running subtask 0 (the worker and its executors). Times from the signal; \
             \"new attempt\" is the first status with a higher attempt number (possibly one \
             that fails again: \"attempts\" counts those started after the signal), \
             \"output again\" the first status in which a source node of the attempt then \
             current shows records out (executors report every 250 ms). {}\n",
                args.failover_rate,
                args.failover_rate * args.failover_secs,
                args.failover_signal,
                if args.failover_signal == "KILL" {
                    "With SIGKILL the kernel closes the victim's sockets, so the coordinator \
                 learns of the failure from the lost control connection, before the \
                 heartbeat timeout; `--failover-signal STOP` measures a silent machine."
                } else {
                    "SIGSTOP keeps the victim's sockets open: only the heartbeat timeout \
                 notices it."
                }
            );
        }
        let _ = writeln!(
            md,
            "{}",
            if args.victim == "raft-leader" {
                "| failure seen (new leader answers) | executors rejoined | RUNNING | \
                 checkpoint again | attempts (each run) |"
            } else {
                "| failure seen (RESTARTING) | new attempt | new attempt RUNNING | output again | \
                 attempts (each run) |"
            }
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        let _ = writeln!(
            md,
            "| {:.2} s | {:.2} s | {:.2} s | {:.2} s | {} |\n",
            f.detected_s, f.attempt_s, f.running_s, f.output_s, f.attempts
        );
        let _ = writeln!(md, "All runs: {}.", f.runs);
    }
    if let Some((cmd, run, out, runs)) = &rs {
        let _ = writeln!(
            md,
            "Rescale: coordinator with default restart settings, 3 workers; q5 at parallelism 2 \
             with `--rate {} --checkpoint-interval {CHECKPOINT_INTERVAL}`; after the first \
             completed checkpoint, `sluice rescale ID -p 3` (describe the binary at 3, \
             stop with a savepoint, restore it at 3). Times from starting the command.\n",
            args.failover_rate
        );
        let _ = writeln!(md, "| command returns | RUNNING at 3 | output again |");
        let _ = writeln!(md, "|---|---|---|");
        let _ = writeln!(md, "| {cmd:.2} s | {run:.2} s | {out:.2} s |\n");
        let _ = writeln!(md, "All runs: {runs}.");
    }
    if let Some((cmd, run, shipped, runs)) = &submitted {
        let binary = std::fs::metadata(nexmark).map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(
            md,
            "Submit: a fresh coordinator and 2 workers per run; q5 at parallelism 2 with \
             `--rate {}`, sent with `sluice submit` ({}); times from starting the command; \
             {}. Job binary {:.1} MB, stored by the coordinator as {:.1} MB.\n",
            args.failover_rate,
            sluice.display(),
            if args.warm {
                "`BINARY.debug` kept from an earlier run"
            } else {
                "`BINARY.debug` removed before each run"
            },
            binary as f64 / 1e6,
            *shipped as f64 / 1e6
        );
        let _ = writeln!(md, "| command returns | RUNNING |");
        let _ = writeln!(md, "|---|---|");
        let _ = writeln!(md, "| {cmd:.2} s | {run:.2} s |\n");
        let _ = writeln!(md, "All runs: {runs}.");
    }
    md
}
