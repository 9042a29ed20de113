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
use sluice_protocol::secret::attempt_secret;
use sluice_web::JobsView;

use super::artifacts::ArtifactError;
use super::jobs::{is_sha256, Job, Run};
use super::lifecycle::{AfterFailure, Lifecycle, Retry};
use super::meta::{IdCounters, JobRecord, MetaStore, PendingRescale};
use super::scheduler::{place, Assignment, Offer};
use super::workers::{Registration, Workers};
use super::CoordinatorConfig;
use crate::attempt::{AttemptConfig, AttemptEvent, CheckpointStart, ControlServer};

/// An artifact no kept job uses is removed only once it is this old: a
/// submission uploads before it submits.
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
}

/// Shared coordinator state.
pub struct Manager {
    config: CoordinatorConfig,
    meta: MetaStore,
    control: ControlServer,
    control_addr: String,
    inner: Mutex<Inner>,
    /// The version of each job's record last written; held while writing.
    written: Mutex<HashMap<String, u64>>,
}

impl Manager {
    /// Opens the data directory, binds the control server and loads the
    /// jobs of an earlier run (those not ended wait to be restarted).
    pub fn open(config: CoordinatorConfig) -> Result<Arc<Manager>> {
        let meta = MetaStore::open_limited(&config.data_dir, config.artifact_limits)?;
        let control = ControlServer::bind(config.control_listen)?;
        let control_addr = control.local_addr().to_string();
        let records = meta.load()?;
        let ids = meta.load_ids(&records)?;
        meta.save_ids(&ids)?;
        let mut jobs = HashMap::new();
        for mut record in records {
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
            jobs.insert(record.id.clone(), Job::new(record));
        }
        info!(control = %control_addr, jobs = jobs.len(), "coordinator state opened");
        Ok(Arc::new(Manager {
            config,
            meta,
            control,
            control_addr,
            inner: Mutex::new(Inner {
                workers: Workers::default(),
                jobs,
                ids,
            }),
            written: Mutex::default(),
        }))
    }

    /// The data directory's store.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases the lock, then writes the records changed under it.
    fn release(&self, mut inner: std::sync::MutexGuard<'_, Inner>) {
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
        for (version, record) in changed {
            if let Err(e) = self.write(version, &record) {
                warn!(job = %record.id, error = %e, "could not write job metadata");
            }
        }
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
        })
    }

    /// Records a heartbeat; `None` for a worker this coordinator does not
    /// know (it registers again).
    pub fn heartbeat(&self, worker: &str, hb: Heartbeat) -> Option<HeartbeatReply> {
        let mut inner = self.lock();
        if !inner.workers.heartbeat(worker, Instant::now()) {
            return None;
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

    /// Accepts a job whose binary was uploaded.
    pub fn submit(&self, req: SubmitJob) -> Result<String> {
        if !is_sha256(&req.artifact) {
            return Err(Error::Config(format!(
                "{:?} is not an artifact: name a binary by the lowercase hex SHA-256 it was uploaded under",
                req.artifact
            )));
        }
        // Verified (hashed again only if its file changed since): a job
        // must not be accepted for a binary that can never be served.
        match self.meta.artifacts().open_verified(&req.artifact) {
            Ok(_) => {}
            Err(ArtifactError::NotFound(_)) => {
                return Err(Error::Config(format!(
                    "artifact {} was not uploaded (PUT /api/v1/artifacts/{{sha256}} first)",
                    req.artifact
                )))
            }
            Err(ArtifactError::Io(e)) => return Err(e),
            Err(e) => return Err(Error::Config(e.to_string())),
        }
        req.description
            .check()
            .map_err(|e| Error::Config(e.to_string()))?;
        if req.parallelism == Some(0) {
            return Err(Error::Config("the parallelism must be at least 1".into()));
        }
        // Relative locations mean the submitter's directory, for the
        // coordinator as for the executors.
        let mut req = req;
        if let Some(c) = &mut req.description.checkpoint {
            c.dir = resolve(&c.dir, req.workdir.as_deref()).to_string();
            if let Some(r) = &mut c.restore_from {
                *r = resolve(r, req.workdir.as_deref()).to_string();
            }
        }
        let id = {
            let mut inner = self.lock();
            let ids = IdCounters {
                next_job: inner.ids.next_job + 1,
                ..inner.ids
            };
            // Durable before the id is used: never handed out twice.
            self.meta.save_ids(&ids)?;
            let id = format!("job-{}", inner.ids.next_job);
            inner.ids = ids;
            id
        };
        let now = now_ms();
        let life = Lifecycle::new(
            req.description.restart,
            req.description.checkpoint.is_some(),
        );
        let record = JobRecord {
            id: id.clone(),
            life,
            artifact: req.artifact,
            args: req.args,
            parallelism: req.parallelism.unwrap_or(req.description.parallelism),
            workdir: req.workdir,
            description: req.description,
            submitted_ms: now,
            updated_ms: now,
            latest_checkpoint: None,
            rescale: None,
        };
        // Written before the job is visible, and without the lock: the
        // write waits for the disk.
        self.meta.save(&record)?;
        info!(job = %id, name = %record.description.name, slots = record.description.slots(), "job submitted");
        self.lock().jobs.insert(id.clone(), Job::new(record));
        Ok(id)
    }

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

    /// Cancels a job that has not ended.
    pub fn cancel(&self, id: &str) -> Result<JobStatus> {
        let mut inner = self.lock();
        let job = inner.jobs.get_mut(id).ok_or_else(|| not_found(id))?;
        job.record
            .life
            .cancel()
            .map_err(|e| Error::Config(format!("cannot cancel {id}: {e}")))?;
        if let Some(run) = job.run.take() {
            run.handle.cancel("cancelled by a user");
            job.rejected_stale += run.handle.rejected_stale();
        }
        job.record.rescale = None;
        job.changed();
        info!(job = %id, "job cancelled");
        let status = job.status();
        self.release(inner);
        Ok(status)
    }

    /// Takes a savepoint of a running job (the job is SAVEPOINTING while
    /// it is in flight). Requests are served in the order they came.
    pub fn savepoint(&self, id: &str, request: SavepointRequest) -> Result<SavepointTaken> {
        let (handle, dir) = {
            let mut inner = self.lock();
            let job = inner.jobs.get_mut(id).ok_or_else(|| not_found(id))?;
            if job.record.description.checkpoint.is_none() {
                return Err(Error::Config(format!(
                    "job {id} does not checkpoint, so it cannot take savepoints"
                )));
            }
            let handle = match &job.run {
                Some(run) => run.handle.clone(),
                None => {
                    return Err(Error::Config(format!(
                        "job {id} is {}; only a running job can take a savepoint",
                        job.record.life.state.name()
                    )))
                }
            };
            job.record
                .life
                .savepoint_requested()
                .map_err(|e| Error::Config(format!("no savepoint of {id}: {e}")))?;
            job.changed();
            let dir = resolve(&request.dir, job.record.workdir.as_deref());
            self.release(inner);
            (handle, dir)
        };
        let taken = handle.savepoint(dir, request.stop);
        let mut inner = self.lock();
        if let Some(job) = inner.jobs.get_mut(id) {
            if job
                .run
                .as_ref()
                .is_some_and(|r| r.handle.attempt() == handle.attempt())
            {
                job.record.life.savepoint_answered();
                job.changed();
            }
        }
        self.release(inner);
        Ok(SavepointTaken {
            location: taken?.to_string(),
        })
    }

    /// Stops job `id` with a savepoint and runs it on from there with
    /// `req`'s plan; returns the savepoint once it is taken. The switch
    /// happens when the stopped attempt ends ([`Manager::tick`]); if the
    /// attempt fails first, the job restarts at its old parallelism and
    /// this returns the error.
    pub fn rescale(&self, id: &str, req: RescaleRequest) -> Result<Rescaled> {
        let (handle, location) = {
            let mut inner = self.lock();
            let live_slots: usize = inner
                .workers
                .iter()
                .filter(|(_, w)| w.alive)
                .map(|(_, w)| w.slots)
                .sum();
            let job = inner.jobs.get_mut(id).ok_or_else(|| not_found(id))?;
            let Some(run) = &job.run else {
                return Err(Error::Config(format!(
                    "job {id} is {}; only a running job can be rescaled",
                    job.record.life.state.name()
                )));
            };
            let handle = run.handle.clone();
            let mut description = req.description;
            same_operators(&job.record.description, &description)?;
            description
                .check()
                .map_err(|e| Error::Config(e.to_string()))?;
            if req.parallelism == 0 {
                return Err(Error::Config("the parallelism must be at least 1".into()));
            }
            if description.slots() > live_slots {
                return Err(Error::Config(format!(
                    "the job would need {} slots; the live workers offer {live_slots}",
                    description.slots()
                )));
            }
            job.record
                .life
                .rescale_requested()
                .map_err(|e| Error::Config(format!("cannot rescale {id}: {e}")))?;
            let checkpoint = job
                .record
                .description
                .checkpoint
                .clone()
                .expect("the life cycle refuses a rescale of a job without checkpoints");
            // The checkpoint settings stay the job's (the plan was
            // described in another directory, perhaps).
            description.checkpoint = Some(checkpoint.clone());
            let savepoint = format!(
                "{}/rescale-a{}-{}",
                checkpoint.dir.trim_end_matches('/'),
                job.record.life.attempt,
                now_ms()
            );
            // Durable before the savepoint is asked for (written below).
            job.record.rescale = Some(PendingRescale {
                parallelism: req.parallelism,
                description,
                savepoint: savepoint.clone(),
            });
            job.changed();
            info!(job = %id, parallelism = req.parallelism, %savepoint, "rescale: taking a savepoint and stopping");
            self.release(inner);
            (handle, Location::from(savepoint.as_str()))
        };
        // The checkpoint coordinator pins the savepoint before taking it,
        // so whatever restarts the job next resumes from it.
        match handle.savepoint(location, true) {
            Ok(taken) => Ok(Rescaled {
                savepoint: taken.to_string(),
                parallelism: req.parallelism,
            }),
            Err(e) => {
                let mut inner = self.lock();
                if let Some(job) = inner.jobs.get_mut(id) {
                    if job
                        .run
                        .as_ref()
                        .is_some_and(|r| r.handle.attempt() == handle.attempt())
                    {
                        job.record.rescale = None;
                        job.record.life.rescale_abandoned();
                        job.changed();
                    }
                }
                self.release(inner);
                Err(e)
            }
        }
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

    // ---- the manager loop ----

    /// One round: dead workers, attempt events, starts of waiting jobs.
    pub fn tick(&self) {
        let mut inner = self.lock();
        let dead = inner.workers.expire(
            Instant::now(),
            self.config.heartbeat_timeout,
            self.config.dead_worker_retention,
        );
        for worker in dead {
            for job in jobs_on(&inner, &worker) {
                self.fail_attempt(
                    &mut inner,
                    &job,
                    format!("worker {worker} was lost"),
                    Retry::Backoff,
                );
            }
        }

        let ids: Vec<String> = inner.jobs.keys().cloned().collect();
        for id in &ids {
            let job = inner.jobs.get_mut(id).expect("listed");
            let Some(run) = &job.run else { continue };
            job.nodes = run.handle.metrics();
            let rows = run.handle.take_results();
            job.results.merge(rows);
            let events: Vec<AttemptEvent> = run.handle.events().try_iter().collect();
            for ev in events {
                if self.on_event(&mut inner, id, ev) {
                    break;
                }
            }
            if let Some(job) = inner.jobs.get_mut(id) {
                job.note_checkpoint();
            }
        }

        let forgotten = self.forget_old_jobs(&mut inner);
        let now = Instant::now();
        let due: Vec<(String, JobDescription)> = inner
            .jobs
            .values()
            .filter(|j| j.record.life.waits_for_attempt(j.run.is_some()) && now >= j.not_before)
            .map(|j| (j.record.id.clone(), j.record.description.clone()))
            .collect();
        let used: Option<HashSet<String>> = (!forgotten.is_empty()).then(|| {
            inner
                .jobs
                .values()
                .map(|j| j.record.artifact.clone())
                .collect()
        });
        self.release(inner);
        for id in forgotten {
            if let Err(e) = self.meta.delete(&id) {
                warn!(job = %id, error = %e, "the record of a forgotten job stays on disk");
            }
        }
        if let Some(used) = used {
            match self.meta.remove_unused_artifacts(&used, ARTIFACT_GRACE) {
                Ok(removed) if !removed.is_empty() => {
                    info!(artifacts = ?removed, "removed binaries no kept job uses");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot remove unused binaries"),
            }
        }
        for (id, description) in due {
            self.try_start(&id, &description);
        }
    }

    /// Applies one attempt event to job `id`; true when the attempt ended
    /// (later events of it mean nothing).
    fn on_event(&self, inner: &mut Inner, id: &str, ev: AttemptEvent) -> bool {
        let Some(job) = inner.jobs.get_mut(id) else {
            return true;
        };
        match ev {
            AttemptEvent::Running => {
                if job.record.life.state == JobState::Scheduling {
                    info!(job = %id, attempt = job.record.life.attempt, "job running");
                }
                if let Err(e) = job.record.life.running() {
                    warn!(job = %id, error = %e, "running event ignored");
                }
                job.changed();
                false
            }
            AttemptEvent::Finishing => {
                job.record.life.finishing();
                job.changed();
                false
            }
            AttemptEvent::Finished => {
                if let Some(run) = job.run.take() {
                    job.rejected_stale += run.handle.rejected_stale();
                    run.handle.cancel("the job finished");
                }
                job.note_checkpoint();
                let rescale = job.record.rescale.take();
                match job.record.life.attempt_ended(rescale.is_some()) {
                    Ok(JobState::Rescaling) => {
                        let r = rescale.expect("a rescale was pending");
                        // Stopped by the rescale's savepoint: the next
                        // attempt restores it at the new parallelism.
                        info!(job = %id, parallelism = r.parallelism, savepoint = %r.savepoint, "job stopped for a rescale");
                        job.record.parallelism = r.parallelism;
                        job.record.description = r.description;
                        job.nodes.clear();
                        job.not_before = Instant::now();
                        job.failed_at = None;
                    }
                    Ok(_) => info!(job = %id, "job finished"),
                    Err(e) => warn!(job = %id, error = %e, "finish event ignored"),
                }
                job.changed();
                true
            }
            AttemptEvent::Failed { error, retry } => {
                self.fail_attempt(inner, id, error, retry);
                true
            }
        }
    }

    /// Places and starts the next attempt of `id`: too few slots leaves it
    /// waiting; a start that fails otherwise (its checkpoints cannot be
    /// read, they belong to another job) is a failure of the job, which its
    /// restart policy answers.
    fn try_start(&self, id: &str, description: &JobDescription) {
        // Placed first, so a job waiting for slots does not scan its
        // checkpoints every tick; the scan runs without the lock.
        let placeable = {
            let mut inner = self.lock();
            match self.assign(&inner, id) {
                Ok(_) => true,
                Err(e) => {
                    if let Some(job) = inner.jobs.get_mut(id) {
                        job.not_before = Instant::now() + Duration::from_millis(100);
                        let waiting = format!("waiting for slots: {e}");
                        if job.waiting.as_deref() != Some(&waiting) {
                            info!(job = %id, reason = %e, "job waits for slots");
                            job.waiting = Some(waiting);
                        }
                    }
                    false
                }
            }
        };
        if !placeable {
            return;
        }
        let start = CheckpointStart::find(description);
        let mut inner = self.lock();
        let started = start.and_then(|start| self.start_attempt(&mut inner, id, start));
        if let Err(e) = started {
            let still_waiting = inner
                .jobs
                .get(id)
                .is_some_and(|j| j.record.life.waits_for_attempt(j.run.is_some()));
            if still_waiting {
                warn!(job = %id, error = %e, "the job's attempt could not start");
                self.after_failure(
                    &mut inner,
                    id,
                    format!("starting an attempt: {e}"),
                    Retry::Backoff,
                );
            }
        }
        self.release(inner);
    }

    /// Forgets the oldest ended jobs beyond `retained_jobs` (whose newest
    /// record is on disk, so no write in flight brings one back); returns
    /// their ids, whose records the caller deletes after the lock.
    fn forget_old_jobs(&self, inner: &mut Inner) -> Vec<String> {
        let mut ended: Vec<(i64, String)> = inner
            .jobs
            .values()
            .filter(|j| j.record.life.state.is_terminal())
            .map(|j| (j.record.updated_ms, j.record.id.clone()))
            .collect();
        let keep = self.config.retained_jobs.max(1);
        if ended.len() <= keep {
            return Vec::new();
        }
        ended.sort();
        let excess = ended.len() - keep;
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let mut forgotten = Vec::new();
        // One not written yet waits for a later tick.
        for (_, id) in ended.into_iter().take(excess) {
            let saved = inner
                .jobs
                .get(&id)
                .is_some_and(|j| !j.unsaved && written.get(&id).copied().unwrap_or(0) >= j.version);
            if saved {
                inner.jobs.remove(&id);
                info!(job = %id, "forgetting an old ended job");
                forgotten.push(id);
            }
        }
        forgotten
    }

    /// Ends the current attempt of `id` after a failure and decides what next.
    fn fail_attempt(&self, inner: &mut Inner, id: &str, error: String, retry: Retry) {
        let Some(job) = inner.jobs.get_mut(id) else {
            return;
        };
        let Some(run) = job.run.take() else { return };
        run.handle.cancel(&error);
        if job.record.rescale.take().is_some() {
            warn!(job = %id, "the attempt failed during a rescale; restarting at the old parallelism");
        }
        job.rejected_stale += run.handle.rejected_stale();
        job.note_checkpoint();
        // The next attempt only goes to workers heard from since: one
        // whose executor just vanished is likely dead, though not yet
        // declared so.
        job.failed_at = Some(Instant::now());
        self.after_failure(inner, id, error, retry);
    }

    /// What the job's life cycle makes of a failure of its attempt or start.
    fn after_failure(&self, inner: &mut Inner, id: &str, error: String, retry: Retry) {
        let Some(job) = inner.jobs.get_mut(id) else {
            return;
        };
        let attempt = job.record.life.attempt;
        match job.record.life.failed(error.clone(), retry) {
            AfterFailure::Restart { delay_ms } => {
                warn!(job = %id, attempt, error = %error, restarts = job.record.life.restarts,
                    delay_ms, "attempt failed; restarting from the latest checkpoint");
                job.not_before = Instant::now() + Duration::from_millis(delay_ms);
            }
            AfterFailure::Failed => {
                warn!(job = %id, error = ?job.record.life.error, "job failed");
            }
            AfterFailure::Ignored => {}
        }
        job.changed();
    }

    /// Where the next attempt of `id` would run, on the workers alive now
    /// (and, after a failure, heard from since).
    fn assign(&self, inner: &Inner, id: &str) -> Result<Assignment> {
        let job = inner.jobs.get(id).ok_or_else(|| not_found(id))?;
        let mut offers: Vec<Offer> = inner
            .workers
            .iter()
            .filter(|(_, w)| w.alive && job.failed_at.is_none_or(|t| w.last_heartbeat > t))
            .map(|(wid, w)| Offer {
                worker: wid.clone(),
                free: w.slots.saturating_sub(used_slots(inner, wid)),
                capacity: w.capacity,
            })
            .filter(|o| o.free > 0)
            .collect();
        offers.sort_by(|a, b| a.worker.cmp(&b.worker));
        place(&job.record.description, &offers, self.config.scheduling)
    }

    /// Places and starts the next attempt of `id` from `start` (its
    /// checkpoints, scanned without the lock), unless the job no longer
    /// waits for one (cancelled meanwhile, say).
    fn start_attempt(
        &self,
        inner: &mut Inner,
        id: &str,
        start: Option<CheckpointStart>,
    ) -> Result<()> {
        if !inner
            .jobs
            .get(id)
            .is_some_and(|j| j.record.life.waits_for_attempt(j.run.is_some()))
        {
            return Ok(());
        }
        let assignment = self.assign(inner, id)?;
        let secret = attempt_secret()?;
        let job = inner.jobs.get_mut(id).expect("checked above");
        let mut life = job.record.life.clone();
        let attempt = life
            .schedule(start.as_ref().map_or(0, |s| s.min_attempt))
            .map_err(|e| Error::Internal(format!("scheduling {id}: {e}")))?;
        let restore = start
            .as_ref()
            .and_then(|s| s.restore.as_ref().map(|l| l.to_string()));
        let restored_from = start.as_ref().and_then(|s| s.restored_from);
        let record = &job.record;
        let handle = self.control.start_attempt(AttemptConfig {
            job_id: id.to_string(),
            attempt,
            description: record.description.clone(),
            placement: assignment.tasks.clone(),
            executors: assignment.executors.len(),
            checkpoint: start.map(|s| s.setup),
            stats: job.stats.clone(),
            secret: secret.clone(),
        })?;
        {
            let mut stats = job.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.restored_from = restored_from;
            stats.restarts = life.restarts;
        }
        let launches: Vec<(String, ExecutorLaunch)> = assignment
            .executors
            .iter()
            .enumerate()
            .map(|(e, worker)| {
                let host = inner
                    .workers
                    .get(worker)
                    .map_or("127.0.0.1".into(), |w| w.host.clone());
                (
                    worker.clone(),
                    ExecutorLaunch {
                        artifact: record.artifact.clone(),
                        args: record.args.clone(),
                        workdir: record.workdir.clone(),
                        spec: ExecutorSpec {
                            protocol: sluice_protocol::PROTOCOL_VERSION,
                            job_id: id.to_string(),
                            attempt,
                            executor: e,
                            executors: assignment.executors.len(),
                            control: self.control_addr.clone(),
                            tasks: assignment
                                .tasks
                                .iter()
                                .filter(|(_, x)| *x == e)
                                .map(|(k, _)| *k)
                                .collect(),
                            bind_host: host,
                            parallelism: record.parallelism,
                            restore: restore.clone(),
                            secret: secret.clone(),
                        },
                    },
                )
            })
            .collect();
        let placement = assignment
            .tasks
            .iter()
            .map(|(task, e)| Placement {
                task: *task,
                worker: assignment.executors[*e].clone(),
                executor: *e,
            })
            .collect();
        info!(job = %id, attempt, executors = ?assignment.executors, restore = ?restore, "starting attempt");
        let job = inner.jobs.get_mut(id).expect("checked above");
        job.record.life = life;
        // Durable before a heartbeat can hand the attempt to a worker.
        job.changed();
        job.unsaved = false;
        if let Err(e) = self.write(job.version, &job.record) {
            handle.cancel("its attempt number could not be recorded");
            return Err(e);
        }
        job.failed_at = None;
        job.waiting = None;
        // Counters are per attempt: the new executors report from zero.
        job.nodes.clear();
        job.run = Some(Run {
            handle,
            placement,
            slots: assignment
                .executors
                .iter()
                .cloned()
                .zip(assignment.slots.iter().copied())
                .collect(),
            launches,
        });
        Ok(())
    }
}

/// The jobs whose running attempt has executors on `worker`.
fn jobs_on(inner: &Inner, worker: &str) -> Vec<String> {
    inner
        .jobs
        .values()
        .filter(|j| j.run.as_ref().is_some_and(|r| r.slots.contains_key(worker)))
        .map(|j| j.record.id.clone())
        .collect()
}

fn used_slots(inner: &Inner, worker: &str) -> usize {
    inner
        .jobs
        .values()
        .filter_map(|j| j.run.as_ref())
        .filter_map(|r| r.slots.get(worker))
        .sum()
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

/// Refuses a plan for a rescale that is not the running one's operators.
fn same_operators(running: &JobDescription, new: &JobDescription) -> Result<()> {
    let nodes = |d: &JobDescription| {
        let mut n: Vec<(usize, String)> = d.vertices.iter().flat_map(|v| v.nodes.clone()).collect();
        n.sort();
        n
    };
    if running.name != new.name
        || running.max_parallelism != new.max_parallelism
        || running.graph_nodes != new.graph_nodes
        || nodes(running) != nodes(new)
    {
        return Err(Error::Config(format!(
            "the plan to rescale to is not job '{}' ({} operators, {} key groups): \
             it is '{}' with {} operators and {} key groups",
            running.name,
            running.graph_nodes,
            running.max_parallelism,
            new.name,
            new.graph_nodes,
            new.max_parallelism
        )));
    }
    Ok(())
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no job {id}"))
}

/// A location as given by the job: relative directories are relative to
/// the submitter's working directory.
fn resolve(dir: &str, workdir: Option<&str>) -> Location {
    let location = Location::from(dir);
    match (location.local_path(), workdir) {
        (Some(p), Some(w)) if p.is_relative() => Location::from(Path::new(w).join(p)),
        _ => location,
    }
}

#[cfg(test)]
mod tests;
