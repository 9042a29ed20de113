//! The cluster under test: a [`LocalCluster`] whose job status is polled
//! (by `sluice status` or a plain HTTP GET) and timed, the poll pacing, and
//! the paced, checkpointing q5 job the failover and rescale measurements
//! start from.

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sluice_cluster::local::{LocalCluster, LocalClusterConfig, WorkerPlace};
use sluice_engine::protocol::api::{JobStatus, NodeCounters};

use crate::q5::q5_args;
use crate::{Args, CHECKPOINT_INTERVAL, HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, POLL};

/// A [`LocalCluster`] whose job status is polled and timed.
pub(crate) struct Cluster {
    pub(crate) inner: LocalCluster,
    /// Poll with a plain HTTP GET instead of `sluice status`.
    http: bool,
    /// Durations of the status calls made.
    polls: RefCell<Vec<Duration>>,
    /// The coordinator an HTTP poll asks (its index; the leader of a Raft group).
    pub(crate) polled: std::cell::Cell<usize>,
}

impl Cluster {
    /// Starts a coordinator (with `coordinator_args`) and `workers`
    /// workers on loopback, and waits until every worker is registered and
    /// alive.
    pub(crate) fn start(
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
    pub(crate) fn submit(&self, nexmark: &Path, job_args: &[String]) -> anyhow::Result<String> {
        let job_args: Vec<&str> = job_args.iter().map(String::as_str).collect();
        Ok(self.inner.submit(2, nexmark, &job_args)?)
    }

    /// `sluice status JOB --json` (or `GET /api/v1/jobs/JOB`), timed.
    pub(crate) fn status(&self, job: &str) -> anyhow::Result<JobStatus> {
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
    pub(crate) fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut ok: impl FnMut(&Cluster) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        self.inner.wait_for(timeout, what, |_| ok(self))
    }

    /// The status calls timed since the last call.
    pub(crate) fn take_polls(&self) -> Vec<Duration> {
        self.polls.take()
    }

    pub(crate) fn logs(&self) -> String {
        self.inner.logs()
    }
}

/// The body of `GET path` from 127.0.0.1:`port`.
fn http_get(port: u16, path: &str) -> anyhow::Result<Vec<u8>> {
    Ok(sluice_benches::http::get(port, path)?)
}

/// The coordinator of a Raft group (`coordinators` members) that answers
/// the API as its leader.
pub(crate) fn raft_leader(c: &Cluster, coordinators: usize) -> anyhow::Result<usize> {
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
pub(crate) fn pace(start: Instant) {
    std::thread::sleep(POLL.saturating_sub(start.elapsed()));
}

pub(crate) fn source_output(nodes: &[NodeCounters], sources: &[usize]) -> bool {
    nodes
        .iter()
        .any(|n| n.records_in == 0 && n.records_out > 0 && sources.contains(&n.node))
}

/// `coordinators` coordinators and 3 workers running the paced q5
/// with checkpoints, once it runs, completed a checkpoint and reported
/// counters: the cluster, the job id, its status then, and its source
/// nodes (those with no input).
pub(crate) fn paced_job(
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
