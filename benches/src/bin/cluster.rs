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

use std::cell::RefCell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use sluice_cluster::local::{LocalCluster, LocalClusterConfig, WorkerPlace};
use sluice_engine::protocol::api::{JobState, JobStatus, NodeCounters};

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

/// A [`LocalCluster`] whose job status is polled and timed.
struct Cluster {
    inner: LocalCluster,
    /// Poll with a plain HTTP GET instead of `sluice status`.
    http: bool,
    /// Durations of the status calls made.
    polls: RefCell<Vec<Duration>>,
    /// The coordinator an HTTP poll asks (its index; the leader of a Raft group).
    polled: std::cell::Cell<usize>,
}

impl Cluster {
    /// Starts a coordinator (with `coordinator_args`) and `workers`
    /// workers on loopback, and waits until every worker is registered and
    /// alive.
    fn start(
        args: &Args,
        sluice: &Path,
        dir: &Path,
        workers: usize,
        coordinator_args: &[&str],
        coordinators: usize,
    ) -> anyhow::Result<Cluster> {
        let inner = LocalCluster::start(LocalClusterConfig {
            sluice: sluice.to_path_buf(),
            dir: dir.to_path_buf(),
            host: "127.0.0.1".into(),
            coordinator_args: coordinator_args.iter().map(|a| a.to_string()).collect(),
            workers: vec![WorkerPlace::loopback(); workers],
            slots: args.slots,
            security: None,
            plaintext: !args.tls,
            coordinators,
        })?;
        Ok(Cluster {
            inner,
            http: args.poll == "http",
            polls: RefCell::new(Vec::new()),
            polled: std::cell::Cell::new(0),
        })
    }

    /// Submits `nexmark JOB_ARGS` with `--parallelism 2`; returns the job id.
    fn submit(&self, nexmark: &Path, job_args: &[String]) -> anyhow::Result<String> {
        let job_args: Vec<&str> = job_args.iter().map(String::as_str).collect();
        Ok(self.inner.submit(2, nexmark, &job_args)?)
    }

    /// `sluice status JOB --json` (or `GET /api/v1/jobs/JOB`), timed.
    fn status(&self, job: &str) -> anyhow::Result<JobStatus> {
        let start = Instant::now();
        let body = if self.http {
            let url = self.inner.coordinator_url(self.polled.get());
            let port = url.rsplit(':').next().and_then(|p| p.parse().ok());
            let port = port.context("a coordinator port")?;
            let b = http_get(port, &format!("/api/v1/jobs/{job}"));
            self.polls.borrow_mut().push(start.elapsed());
            b?
        } else {
            let out = self.inner.sluice(&["status", job, "--json"])?;
            self.polls.borrow_mut().push(start.elapsed());
            if !out.status.success() {
                bail!(
                    "sluice status {job} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            out.stdout
        };
        serde_json::from_slice(&body).context("parsing the status JSON")
    }

    /// Calls `ok` every 100 ms until it says yes.
    fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut ok: impl FnMut(&Cluster) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        self.inner.wait_for(timeout, what, |_| ok(self))
    }

    /// The status calls timed since the last call.
    fn take_polls(&self) -> Vec<Duration> {
        self.polls.take()
    }

    fn logs(&self) -> String {
        self.inner.logs()
    }
}

/// The body of `GET path` from 127.0.0.1:`port` (HTTP/1.0: the answer
/// ends when the connection closes).
fn http_get(port: u16, path: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the HTTP header")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(answer[split + 4..].to_vec())
}

/// The coordinator of a Raft group (`coordinators` members) that answers
/// the API as its leader.
fn raft_leader(c: &Cluster, coordinators: usize) -> anyhow::Result<usize> {
    for i in 0..coordinators {
        let url = c.inner.coordinator_url(i);
        let port = url.rsplit(':').next().and_then(|p| p.parse().ok());
        if http_get(port.context("a coordinator port")?, "/api/v1/jobs").is_ok() {
            return Ok(i);
        }
    }
    bail!("no coordinator of the group answers as its leader")
}

/// Sleeps out the rest of a poll period begun at `start`.
fn pace(start: Instant) {
    std::thread::sleep(POLL.saturating_sub(start.elapsed()));
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

fn all(v: &[f64], f: impl Fn(f64) -> String) -> String {
    v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(", ")
}

// ---- q5: embedded vs cluster ----

fn q5_args(events: u64) -> Vec<String> {
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

struct Q5Summary {
    embedded_s: f64,
    job_ms: f64,
    cluster_s: f64,
    running_s: f64,
    runs: String,
    polls: Vec<Duration>,
}

fn q5(args: &Args, sluice: &Path, nexmark: &Path, dir: &Path) -> anyhow::Result<Q5Summary> {
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

// ---- failover ----

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

fn source_output(nodes: &[NodeCounters], sources: &[usize]) -> bool {
    nodes
        .iter()
        .any(|n| n.records_in == 0 && n.records_out > 0 && sources.contains(&n.node))
}

/// `coordinators` coordinators and 3 workers running the paced q5
/// with checkpoints, once it runs, completed a checkpoint and reported
/// counters: the cluster, the job id, its status then, and its source
/// nodes (those with no input).
fn paced_job(
    args: &Args,
    sluice: &Path,
    nexmark: &Path,
    dir: &Path,
    coordinators: usize,
) -> anyhow::Result<(Cluster, String, JobStatus, Vec<usize>)> {
    let c = Cluster::start(
        args,
        sluice,
        dir,
        3,
        &[
            "--heartbeat-timeout",
            HEARTBEAT_TIMEOUT,
            "--heartbeat-interval",
            HEARTBEAT_INTERVAL,
        ],
        coordinators,
    )?;
    if coordinators > 1 {
        // HTTP polls go to the group's leader (followers answer 503).
        c.polled.set(raft_leader(&c, coordinators)?);
    }
    let ck = dir.join("checkpoints");
    let mut job_args = q5_args(args.failover_rate * args.failover_secs);
    job_args.extend(["--rate".into(), args.failover_rate.to_string()]);
    job_args.extend(["--checkpoint-dir".into(), ck.to_string_lossy().into_owned()]);
    job_args.extend([
        "--checkpoint-interval".into(),
        CHECKPOINT_INTERVAL.to_string(),
    ]);
    let job = c.submit(nexmark, &job_args)?;
    let mut before = None;
    c.wait_for(Duration::from_secs(120), "a completed checkpoint", |c| {
        let s = c.status(&job)?;
        if s.state.is_terminal() {
            bail!("job {job} ended {:?} too early: {:?}", s.state, s.error);
        }
        let ready = s.state.is_running()
            && s.latest_checkpoint.is_some()
            && s.nodes.iter().any(|n| n.records_out > 0)
            && !s.placement.is_empty();
        if ready {
            before = Some(s);
        }
        Ok(ready)
    })?;
    let before = before.expect("set when ready");
    let sources = before
        .nodes
        .iter()
        .filter(|n| n.records_in == 0)
        .map(|n| n.node)
        .collect();
    Ok((c, job, before, sources))
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

struct FailoverSummary {
    detected_s: f64,
    attempt_s: f64,
    running_s: f64,
    output_s: f64,
    attempts: String,
    runs: String,
}

fn failover(
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
    println!(
        "{:>4} {:>6} {:>12} {:>12} {:>12} {:>16} {:>9}",
        "run", "ckpt", "detected s", "new att. s", "RUNNING s", "output again s", "attempts"
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
            "failure seen {} s; new attempt {} s; RUNNING {} s; output {} s; \
             attempts after the kill {}",
            all(&det, |x| format!("{x:.2}")),
            all(&att, |x| format!("{x:.2}")),
            all(&run, |x| format!("{x:.2}")),
            all(&out, |x| format!("{x:.2}")),
            attempts.join(", ")
        ),
    })
}

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

fn rescale(
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

// ---- submit → RUNNING ----

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
fn submit(
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

// ---- report ----

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(name))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "not reported in /proc/cpuinfo".into())
}

fn nproc() -> String {
    Command::new("nproc")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The command line as typed (arguments with spaces quoted).
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.tls && args.poll == "http" {
        bail!("--poll http sends plain HTTP: use --poll cli with --tls");
    }
    let sluice = match &args.sluice {
        Some(p) => p.clone(),
        None => sibling("sluice")?,
    };
    let nexmark = match &args.nexmark {
        Some(p) => p.clone(),
        None => sibling("nexmark")?,
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
                 data directory, `--election-timeout 1s`; `--heartbeat-timeout {HEARTBEAT_TIMEOUT} \
                 --heartbeat-interval {HEARTBEAT_INTERVAL}`), 3 workers given every URL; q5 with \
                 `--rate {} --checkpoint-interval {CHECKPOINT_INTERVAL}` ({} events); after the \
                 first completed checkpoint, SIGKILL to the leader. Times from the signal; \
                 \"failure seen\" is the first status a newly elected leader answers; the \
                 executors of the old leader cancelled themselves when their control \
                 connections broke.\n",
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
            "| failure seen (RESTARTING) | new attempt | new attempt RUNNING | output again | \
             attempts (each run) |"
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
        let binary = std::fs::metadata(&nexmark).map(|m| m.len()).unwrap_or(0);
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
    println!("---- Markdown for benches/RESULTS.md ----\n");
    print!("{md}");

    if args.keep {
        println!("\nkept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
