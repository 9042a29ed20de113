//! The coordinator's jobs and workers, and the decisions that drive them:
//! a job's attempt runs on the executors the scheduler placed; the
//! manager starts it through the control server, turns its events into
//! life-cycle transitions ([`lifecycle`](super::lifecycle), which decides
//! what a failure means), declares workers dead when heartbeats stop, and
//! answers heartbeats with the executors each worker must run. One thread
//! calls [`Manager::tick`].
//!
//! Everything is behind one mutex, and storage is kept out of it where
//! that is safe:
//! - A state change marks the job's record changed under the lock. The
//!   caller writes the changed records (small files, synced) after
//!   releasing it, before it returns. Each record carries a version, and an
//!   older version never overwrites a newer one.
//! - The checkpoint location of a job about to start is scanned without
//!   the lock.
//! - Starting an attempt writes its record under the lock, and a new id is
//!   written before it is handed out: an attempt number must be durable
//!   before any executor can learn of it from a heartbeat, and no id is
//!   ever used twice.
//!
//! Handlers that write run on `spawn_blocking`, never on the async
//! workers.

mod adopt;
mod attempts;
mod autoscale;
mod commands;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use sluice_engine::checkpoint::store::has_manifest;
use sluice_engine::checkpoint::{Location, Storage};
use sluice_engine::error::{Error, Result};
use sluice_protocol::api::{
    Checkpoints, ClusterInfo, ExecutorLaunch, ExecutorSpec, Heartbeat, HeartbeatReply,
    JobDescription, JobResults, JobState, JobStatus, Placement, RegisterWorker, Registered,
    RescaleRequest, Rescaled, SavepointRequest, SavepointTaken, SubmitJob, WorkerInfo,
};
use sluice_protocol::metrics::JobMetrics;
use sluice_protocol::secret::attempt_secret;
use sluice_web::{History, JobsView, Metrics};

use super::artifacts::ArtifactError;
use super::jobs::{is_sha256, Job, Run};
use super::lifecycle::{AfterFailure, Lifecycle, Retry};
use super::load::CpuMeter;
use super::meta::{IdCounters, JobRecord, MetaStore, PendingRescale};
use super::raft::Command;
use super::scheduler::{place, Assignment, Offer};
use super::workers::{Registration, Workers};
use super::CoordinatorConfig;
use crate::attempt::{AttemptConfig, AttemptEvent, CheckpointStart, ControlServer};
use attempts::{jobs_on, used_slots};

/// An artifact no kept job uses is removed only once it is this old: a
/// submission uploads before it submits.
/// How often the UI's history is sampled.
const HISTORY_INTERVAL: Duration = Duration::from_secs(1);

const ARTIFACT_GRACE: Duration = Duration::from_secs(3600);

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Inner {
    workers: Workers,
    jobs: HashMap<String, Job>,
    ids: IdCounters,
    /// The executors' measured CPU per worker (least-loaded placement).
    cpu: CpuMeter,
    /// The worker the last placed slot went to: where round-robin
    /// placement continues. In memory only: a new leader starts anew.
    rotation: Option<String>,
}

/// Shared coordinator state.
pub struct Manager {
    config: CoordinatorConfig,
    meta: MetaStore,
    control: ControlServer,
    control_addr: String,
    /// Signs each attempt's certificate (TLS clusters).
    signer: Option<sluice_engine::tls::issue::Signer>,
    inner: Mutex<Inner>,
    /// The version of each job's record last written; held while writing.
    written: Mutex<HashMap<String, u64>>,
    /// Checkpoint histograms (`/metrics`).
    metrics: Arc<Metrics>,
    /// The recent figures behind the UI's charts.
    history: History,
}

impl Manager {
    /// Opens the data directory's plain files, binds the control server
    /// and loads the jobs of an earlier run (those not ended wait to be
    /// restarted). The coordinator service never does: its manager is on
    /// its Raft group's log ([`open_with`](Self::open_with) and
    /// [`MetaStore::replicated`]); this is for tests and tools.
    pub fn open(config: CoordinatorConfig) -> Result<Arc<Manager>> {
        let meta = MetaStore::open_limited(&config.data_dir, config.artifact_limits)?;
        Manager::open_with(config, meta)
    }

    /// [`open`](Self::open) on `meta`: a data directory's files, or a Raft
    /// group's replicated state (a new leader opens its manager so).
    pub fn open_with(config: CoordinatorConfig, meta: MetaStore) -> Result<Arc<Manager>> {
        let tls = config.load_tls()?;
        let (node, signer) = match tls {
            Some(t) => (Some(t.node), Some(t.signer)),
            None => (None, None),
        };
        let control = ControlServer::bind_with(config.control_listen, node)?;
        // The term this manager leads in (a new leader opens its manager
        // after it leads): its attempts, heartbeat answers and control
        // server carry it, so workers and executors can tell a deposed
        // leader's instructions from the current one's.
        control.set_term(meta.replica().map_or(0, |r| r.position().term));
        let metrics = Arc::new(Metrics::new());
        control.on_checkpoint_complete({
            let metrics = metrics.clone();
            Arc::new(move |job, r| metrics.checkpoint_completed(job, &r.figures))
        });
        // In a Raft group a checkpoint completes only once the log took
        // its completion from the job's current attempt: an attempt of a
        // deposed leader, or one started before a newer leader's, never
        // completes one, so its sinks never commit.
        if let Some(replica) = meta.replica().cloned() {
            let term = control.term();
            control.approve_checkpoints(Arc::new(move |job, attempt, id, savepoint| {
                replica
                    .write(Command::CheckpointCompleted {
                        job: job.to_string(),
                        attempt,
                        id,
                        savepoint,
                        term,
                    })
                    .map_err(|e| e.to_string())
            }));
        }
        let control_addr = control.local_addr().to_string();
        let records = meta.load()?;
        let ids = meta.load_ids(&records)?;
        meta.save_ids(&ids)?;
        let mut jobs = HashMap::new();
        for mut record in records {
            let stats = Arc::default();
            let run = adopt::adopt(
                &control,
                &control_addr,
                config.rejoin_grace,
                &mut record,
                &stats,
            );
            if run.is_some() {
                // Its term fences the previous leader's completions, and is
                // in the log before a heartbeat answer relays it.
                record.updated_ms = now_ms();
                meta.save(&record)?;
            } else {
                if let Some(r) = record.rescale.take() {
                    finish_rescale(&mut record, r);
                }
                let before = record.life.state;
                record.life = record.life.clone().reopened();
                if record.life.state != before {
                    info!(job = %record.id, attempt = record.life.attempt, "resuming a job after a coordinator restart");
                    record.updated_ms = now_ms();
                    meta.save(&record)?;
                }
            }
            let mut job = Job::new(record);
            job.stats = stats;
            job.run = run;
            jobs.insert(job.record.id.clone(), job);
        }
        info!(control = %control_addr, jobs = jobs.len(), term = control.term(), "coordinator state opened");
        Ok(Arc::new(Manager {
            config,
            meta,
            control,
            control_addr,
            signer,
            inner: Mutex::new(Inner {
                workers: Workers::default(),
                jobs,
                ids,
                cpu: CpuMeter::default(),
                rotation: None,
            }),
            written: Mutex::default(),
            metrics,
            history: History::new(HISTORY_INTERVAL),
        }))
    }

    /// The Raft term this manager leads in (0 outside a group).
    pub fn term(&self) -> u64 {
        self.control.term()
    }

    /// The data directory's store.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// This coordinator no longer leads its Raft group: every attempt it
    /// runs is left to the next leader (its executors lose their control
    /// connections and wait, running, for the leader that adopts them),
    /// nothing is written (it could not be), and the manager is dropped by
    /// its owner after this.
    pub fn step_down(&self) {
        let mut inner = self.lock();
        for job in inner.jobs.values_mut() {
            if let Some(run) = job.run.take() {
                run.handle
                    .abandon("this coordinator is no longer the leader of its group");
            }
            job.unsaved = false;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases the lock, then writes the records changed under it.
    fn release(&self, inner: std::sync::MutexGuard<'_, Inner>) {
        let _ = self.release_reporting(inner, None);
    }

    /// [`release`](Self::release), returning the error of job `id`'s
    /// write: a user's change is acknowledged only once it is durable (in
    /// a Raft group: committed), or the request fails and says so.
    fn release_reporting(
        &self,
        mut inner: std::sync::MutexGuard<'_, Inner>,
        id: Option<&str>,
    ) -> Result<()> {
        let changed: Vec<(u64, JobRecord)> = inner
            .jobs
            .values_mut()
            .filter(|j| j.unsaved)
            .map(|j| {
                j.unsaved = false;
                (j.version, j.record.clone())
            })
            .collect();
        drop(inner);
        let mut reported = Ok(());
        for (version, record) in changed {
            if let Err(e) = self.write(version, &record) {
                warn!(job = %record.id, error = %e, "could not write job metadata");
                if id == Some(record.id.as_str()) {
                    reported = Err(e);
                }
            }
        }
        reported
    }

    /// Writes `record` at `version` unless a newer version was written.
    fn write(&self, version: u64, record: &JobRecord) -> Result<()> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if written.get(&record.id).is_some_and(|&w| w >= version) {
            return Ok(());
        }
        self.meta.save(record)?;
        written.insert(record.id.clone(), version);
        Ok(())
    }

    // ---- workers ----

    /// Registers a worker. One that brings an id this coordinator knows
    /// restarted: whatever its earlier process ran is gone, so those
    /// attempts fail (and restart elsewhere or on it, under new numbers).
    pub fn register(&self, req: RegisterWorker) -> Result<Registered> {
        let mut inner = self.lock();
        let mut next = inner.ids.next_worker;
        let registration = inner.workers.register(req, &mut next)?;
        if next != inner.ids.next_worker {
            let ids = IdCounters {
                next_worker: next,
                ..inner.ids
            };
            self.meta.save_ids(&ids)?;
            inner.ids = ids;
        }
        if let Registration::Restarted(id) = &registration {
            for job in jobs_on(&inner, id) {
                self.fail_attempt(
                    &mut inner,
                    &job,
                    format!("worker {id} restarted"),
                    Retry::Backoff,
                );
            }
        }
        self.release(inner);
        Ok(Registered {
            worker_id: registration.id().to_string(),
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            term: self.control.term(),
        })
    }

    /// Records a heartbeat; `None` for a worker this coordinator does not
    /// know (it registers again).
    pub fn heartbeat(&self, worker: &str, hb: Heartbeat) -> Option<HeartbeatReply> {
        let mut inner = self.lock();
        if !inner.workers.heartbeat(worker, Instant::now(), hb.process) {
            return None;
        }
        // Lines of a job this coordinator does not know (forgotten) go.
        for chunk in hb.logs {
            if let Some(job) = inner.jobs.get_mut(&chunk.job_id) {
                job.logs.add(worker, chunk);
            }
        }
        let mut failures = Vec::new();
        for r in &hb.executors {
            // Only failures of the running attempt matter here; an executor
            // that exited with 0 is done, and the attempt says when the job is.
            let Some(code) = r.exit.filter(|&c| c != 0) else {
                continue;
            };
            let Some(job) = inner.jobs.get(&r.job_id) else {
                continue;
            };
            if job.run.is_some() && job.record.life.attempt == r.attempt {
                failures.push((
                    r.job_id.clone(),
                    format!(
                        "executor {} on {worker} exited with code {code}",
                        r.executor
                    ),
                ));
            }
        }
        for (job, why) in failures {
            self.fail_attempt(&mut inner, &job, why, Retry::Backoff);
        }
        let executors = inner
            .jobs
            .values()
            .filter_map(|j| j.run.as_ref())
            .flat_map(|run| run.launches.iter())
            .filter(|(w, _)| w == worker)
            .map(|(_, l)| l.clone())
            .collect();
        let mut prefetch: Vec<String> = inner
            .jobs
            .values()
            .filter(|j| !j.record.life.state.is_terminal())
            .map(|j| j.record.artifact.clone())
            .collect();
        prefetch.sort();
        prefetch.dedup();
        self.release(inner);
        Some(HeartbeatReply {
            executors,
            prefetch,
            term: self.control.term(),
        })
    }

    /// Live workers, and dead ones not forgotten yet.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let inner = self.lock();
        let mut out: Vec<WorkerInfo> = inner
            .workers
            .iter()
            .map(|(id, w)| WorkerInfo {
                id: id.clone(),
                slots: w.slots,
                used_slots: used_slots(&inner, id),
                capacity: w.capacity,
                host: w.host.clone(),
                alive: w.alive,
                since_heartbeat_ms: w.last_heartbeat.elapsed().as_millis() as u64,
                process: w.process,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Cluster summary.
    pub fn cluster(&self) -> ClusterInfo {
        let workers = self.workers();
        let inner = self.lock();
        let jobs = JobState::ALL
            .into_iter()
            .map(|s| {
                let n = inner
                    .jobs
                    .values()
                    .filter(|j| j.record.life.state == s)
                    .count();
                (s, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let alive: Vec<_> = workers.iter().filter(|w| w.alive).collect();
        ClusterInfo {
            workers_alive: alive.len(),
            slots: alive.iter().map(|w| w.slots).sum(),
            used_slots: alive.iter().map(|w| w.used_slots).sum(),
            jobs,
            heartbeat_timeout_ms: self.config.heartbeat_timeout.as_millis() as u64,
            control: self.control_addr.clone(),
        }
    }

    // ---- jobs ----

    /// Every job, oldest first.
    pub fn jobs(&self) -> Vec<JobStatus> {
        let inner = self.lock();
        let mut out: Vec<JobStatus> = inner.jobs.values().map(Job::status).collect();
        out.sort_by_key(|j| j.submitted_ms);
        out
    }

    /// One job.
    pub fn job(&self, id: &str) -> Option<JobStatus> {
        self.lock().jobs.get(id).map(Job::status)
    }

    /// Checkpoint figures of a job.
    pub fn checkpoints(&self, id: &str) -> Option<Checkpoints> {
        let inner = self.lock();
        let job = inner.jobs.get(id)?;
        let stats = job.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(Checkpoints {
            job_id: id.to_string(),
            dir: job
                .record
                .description
                .checkpoint
                .as_ref()
                .map(|c| c.dir.clone()),
            latest: job.record.latest_checkpoint,
            stats,
        })
    }

    /// The newest rows each sink of job `id` received.
    pub fn results(&self, id: &str) -> Option<JobResults> {
        let inner = self.lock();
        let job = inner.jobs.get(id)?;
        Some(job.results.to_results(id, &job.record.description))
    }

    /// The current attempt's figures of job `id` per subtask and executor.
    pub fn job_metrics(&self, id: &str) -> Option<JobMetrics> {
        Some(self.lock().jobs.get(id)?.metrics())
    }

    /// Lines of job `id`'s executors' logs from `since` on: the first
    /// `limit`, or with `tail` the last `tail` (at most `limit`).
    pub fn logs(
        &self,
        id: &str,
        since: u64,
        limit: usize,
        tail: Option<usize>,
    ) -> Option<sluice_protocol::logs::JobLogs> {
        let inner = self.lock();
        let job = inner.jobs.get(id)?;
        Some(job.logs(since, limit, tail, self.config.heartbeat_interval))
    }
}

impl JobsView for Manager {
    fn jobs(&self) -> Vec<JobStatus> {
        Manager::jobs(self)
    }
    fn job(&self, id: &str) -> Option<JobStatus> {
        Manager::job(self, id)
    }
    fn checkpoints(&self, id: &str) -> Option<Checkpoints> {
        Manager::checkpoints(self, id)
    }
    fn results(&self, id: &str) -> Option<JobResults> {
        Manager::results(self, id)
    }
    fn job_metrics(&self, id: &str) -> Option<JobMetrics> {
        Manager::job_metrics(self, id)
    }
    fn workers(&self) -> Vec<WorkerInfo> {
        Manager::workers(self)
    }
    fn cluster(&self) -> ClusterInfo {
        Manager::cluster(self)
    }
    fn cancel(&self, id: &str) -> sluice_web::Result<JobStatus> {
        Ok(Manager::cancel(self, id)?)
    }
    fn savepoint(&self, id: &str, request: SavepointRequest) -> sluice_web::Result<SavepointTaken> {
        Ok(Manager::savepoint(self, id, request)?)
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn history(&self) -> &History {
        &self.history
    }
}

/// A rescale the previous coordinator did not finish: made if its
/// savepoint completed (the job then resumes from it at the new
/// parallelism), dropped otherwise (the job resumes as it was).
fn finish_rescale(record: &mut JobRecord, r: PendingRescale) {
    let taken = Storage::open_in_parent(&Location::from(r.savepoint.as_str()))
        .and_then(|dir| has_manifest(&dir))
        .unwrap_or(false);
    if taken {
        info!(job = %record.id, parallelism = r.parallelism, savepoint = %r.savepoint,
            "finishing a rescale the previous coordinator began");
        record.parallelism = r.parallelism;
        record.description = r.description;
    } else {
        warn!(job = %record.id, savepoint = %r.savepoint,
            "a rescale the previous coordinator began has no savepoint; the job resumes as it was");
    }
}

pub(super) fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no job {id}"))
}

#[cfg(test)]
pub(crate) mod tests;
