//! The distributed runtime's macro benchmark: real `sluice coordinator` and
//! `sluice worker` processes on loopback ports, driven through the CLI as
//! `jobs/tests/distributed.rs` does, with the `nexmark` job binary.
//!
//! - q5 (`--query q5 --parallelism 2 --output blackhole`) run embedded
//!   (process start to exit) against the same job submitted with
//!   `sluice submit --parallelism 2` to a coordinator and two workers
//!   (submit to FINISHED, and RUNNING to FINISHED), polling
//!   `sluice status ID --json` every 20 ms;
//! - failover: three workers with a 1 s heartbeat timeout, q5 with
//!   checkpoints every 500 ms at a limited rate; after the first completed
//!   checkpoint one worker's process group (the worker and its executors)
//!   gets SIGKILL, and the benchmark measures how long until the status
//!   shows a new attempt, until that attempt is RUNNING, and until a source
//!   node of the new attempt reports records out. With `--victim
//!   raft-leader` three coordinators form a Raft group (`--peers`, each
//!   its own data directory) and the leader gets SIGKILL instead:
//!   "detected" is the first status a newly elected leader answers.
//!
//! - rescale (`--only rescale`): the failover's job and cluster, and after
//!   the first completed checkpoint `sluice rescale ID -p 3`; measures how
//!   long the command takes (the stop-with-savepoint), until the job runs
//!   at parallelism 3, and until a source of that attempt reports records.
//!
//! - submit (`--only submit`): a fresh coordinator and two workers per
//!   run (so the workers download the binary), the paced q5 sent with
//!   `sluice submit`; measures how long the command takes (describe run,
//!   preparing the binary, upload) and until the job is RUNNING (the
//!   workers' downloads and executor starts), then cancels it; reports the
//!   size of the job binary and of the artifact the coordinator stored.
//!   `BINARY.debug` beside the job binary is removed before each run, so
//!   every run pays for writing it, as the first submission of a new build
//!   does; with `--warm` it is kept, as for a resubmission of one build.
//!
//! Prints a table per measurement while it runs, then a Markdown section
//! for `benches/RESULTS.md` (machine, exact command, medians).
//!
//! Polls are timestamped when the `sluice status` call returns, so each
//! figure is an upper bound, late by at most one poll period plus one
//! call (both reported). Executors report node counters about once a
//! second, so "output resumed" also includes up to a second of report
//! delay.
//!
//! Modules: `harness` (the cluster under test, its status polls and the
//! paced job the failover and rescale start from), one per measurement
//! (`q5`, `failover`, `rescale`, `submit`), and `report` (medians, the
//! machine description and the Markdown section).

mod failover;
mod harness;
mod q5;
mod report;
mod rescale;
mod submit;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;

use failover::failover;
use q5::q5;
use report::{loadavg, Measured};
use rescale::rescale;
use submit::submit;

/// Distributed-runtime macro benchmark (q5 embedded vs a cluster; failover).
#[derive(Parser, Debug)]
struct Args {
    /// The `sluice` binary [default: `sluice` beside this executable].
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The `nexmark` job binary [default: `nexmark` beside this executable].
    #[arg(long)]
    nexmark: Option<PathBuf>,
    /// Generator events of the q5 comparison.
    #[arg(long, default_value_t = 20_000_000)]
    events: u64,
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 1)]
    slots: usize,
    /// Generator rate of the failover job, events/s.
    #[arg(long, default_value_t = 1_000_000)]
    failover_rate: u64,
    /// Intended length of the failover job, seconds (events = rate × this).
    #[arg(long, default_value_t = 20)]
    failover_secs: u64,
    /// Signal sent to the victim worker's process group: KILL (a crash:
    /// the kernel closes its sockets, so peers notice at once) or STOP (a
    /// silent machine: only the heartbeat timeout notices).
    #[arg(long, default_value = "KILL", value_parser = ["KILL", "STOP"])]
    failover_signal: String,
    /// How the job's status is polled: `cli` runs `sluice status ID --json`
    /// (a process per poll, which costs CPU the jobs share on a small
    /// machine), `http` GETs `/api/v1/jobs/ID` from the coordinator itself.
    #[arg(long, default_value = "cli", value_parser = ["cli", "http"])]
    poll: String,
    /// What the failover kills: a worker's process group, or the leader
    /// of a Raft group of three coordinators (another is elected).
    #[arg(long, default_value = "worker", value_parser = ["worker", "raft-leader"])]
    victim: String,
    /// Run only this part.
    #[arg(long, value_parser = ["q5", "failover", "rescale", "submit"])]
    only: Option<String>,
    /// `--only submit`: keep `BINARY.debug` between runs (a resubmission
    /// of one build) instead of removing it before each.
    #[arg(long)]
    warm: bool,
    /// Keep the working directory (logs, checkpoints) instead of removing it.
    #[arg(long)]
    keep: bool,
    /// The coordinators' `--election-timeout` (with `--victim
    /// raft-leader`: a follower stands after a random half to whole of it,
    /// once the dead leader's lease of the same length has run out).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    election_timeout: Duration,
    /// Secure the cluster with a throwaway CA: HTTPS, and mutual TLS on
    /// control connections and the exchange [default: --insecure-plaintext].
    /// `--poll http` needs plaintext.
    #[arg(long)]
    tls: bool,
}

const POLL: Duration = Duration::from_millis(20);
const HEARTBEAT_TIMEOUT: &str = "1s";
const HEARTBEAT_INTERVAL: &str = "200ms";
const CHECKPOINT_INTERVAL: &str = "500ms";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The coordinators the harness starts read their setting from the
    // environment (every `sluice coordinator` flag has one); set before any
    // thread or process starts.
    std::env::set_var(
        "SLUICE_ELECTION_TIMEOUT",
        humantime::format_duration(args.election_timeout).to_string(),
    );
    if args.tls && args.poll == "http" {
        bail!("--poll http sends plain HTTP: use --poll cli with --tls");
    }
    let sluice = match &args.sluice {
        Some(p) => p.clone(),
        None => sluice_benches::machine::sibling("sluice")?,
    };
    let nexmark = match &args.nexmark {
        Some(p) => p.clone(),
        None => sluice_benches::machine::sibling("nexmark")?,
    };
    for (p, how) in [
        (
            &sluice,
            "cargo build --release -p sluice-cluster --bin sluice",
        ),
        (
            &nexmark,
            "cargo build --release -p sluice-jobs --bin nexmark",
        ),
    ] {
        if !p.is_file() {
            bail!(
                "{} not found: build it ({how}) or pass its path",
                p.display()
            );
        }
    }
    // Absolute: `sluice submit` runs in the cluster's directory.
    let sluice = std::fs::canonicalize(&sluice)?;
    let nexmark = std::fs::canonicalize(&nexmark)?;
    let dir = std::env::temp_dir().join(format!("sluice-cluster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let load_start = loadavg();
    let debug = [&sluice, &nexmark]
        .iter()
        .any(|p| p.components().any(|c| c.as_os_str() == "debug"));
    if debug {
        println!("warning: debug binaries; the figures are not for RESULTS.md\n");
    }

    let mut polls = Vec::new();
    let mut submitted = None;
    let result = (|| -> anyhow::Result<_> {
        if args.only.as_deref() == Some("rescale") {
            let r = rescale(&args, &sluice, &nexmark, &dir, &mut polls)?;
            return Ok((None, None, Some(r)));
        }
        if args.only.as_deref() == Some("submit") {
            submitted = Some(submit(&args, &sluice, &nexmark, &dir, &mut polls)?);
            return Ok((None, None, None));
        }
        let q = if args.only.is_none() || args.only.as_deref() == Some("q5") {
            let q = q5(&args, &sluice, &nexmark, &dir)?;
            polls.extend(&q.polls);
            println!();
            Some(q)
        } else {
            None
        };
        let f = if args.only.is_none() || args.only.as_deref() == Some("failover") {
            let f = failover(&args, &sluice, &nexmark, &dir, &mut polls)?;
            println!();
            Some(f)
        } else {
            None
        };
        Ok((q, f, None))
    })();
    let (q, f, rs) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("logs and checkpoints kept in {}", dir.display());
            return Err(e);
        }
    };
    let measured = Measured {
        q5: q,
        failover: f,
        rescale: rs,
        submit: submitted,
        polls,
        load_start,
        debug,
    };
    let md = report::markdown(&args, &sluice, &nexmark, measured);
    println!("---- Markdown for benches/RESULTS.md ----\n");
    print!("{md}");

    if args.keep {
        println!("\nkept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
