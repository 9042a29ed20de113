//! The coordinator's state and decisions: workers and their heartbeats,
//! jobs and their attempts. A job's attempt runs on the executors the
//! scheduler placed; the manager starts it through the control server,
//! watches its events, declares workers dead when heartbeats stop,
//! restarts failed attempts from the latest checkpoint with a new attempt
//! number (which fences the old one), and answers heartbeats with the
//! executors each worker must run. One thread calls [`Manager::tick`].
//!
//! Everything is behind one mutex, and storage is kept out of it where
//! that is safe:
//! - A state change marks the job's record changed under the lock. The
//!   caller writes the changed records (small files, synced) after
//!   releasing it, before it returns. Each record carries a version, and an
//!   older version never overwrites a newer one.
//! - The checkpoint location of a job about to start is scanned without
//!   the lock.
//! - Starting an attempt writes its record under the lock. An attempt
//!   number must be durable before any executor can learn of it from a
//!   heartbeat, so that a restarted coordinator never reuses it.
//!
//! Handlers that write still run on `spawn_blocking`, never on the async
//! workers.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use super::meta::{JobRecord, MetaStore, PendingRescale};
use super::scheduler::{place, Assignment, Offer};
use super::CoordinatorConfig;
use crate::checkpoint::store::has_manifest;
use crate::checkpoint::{CheckpointStats, Location, Storage};
use crate::cluster::api::{
    Checkpoints, ClusterInfo, ExecutorLaunch, ExecutorSpec, Heartbeat, HeartbeatReply,
    JobDescription, JobResults, JobState, JobStatus, NodeCounters, Placement, RegisterWorker,
    Registered, RescaleRequest, Rescaled, SavepointRequest, SavepointTaken, SubmitJob, WorkerInfo,
};
use crate::cluster::attempt::{
    AttemptConfig, AttemptEvent, AttemptHandle, CheckpointStart, ControlServer,
};
use crate::cluster::jobs_api::JobsView;
use crate::cluster::results::LatestRows;
use crate::cluster::security::attempt_secret;
use crate::error::{Error, Result};

/// An artifact no kept job uses is removed only once it is this old: a
/// submission uploads before it submits.
const ARTIFACT_GRACE: Duration = Duration::from_secs(3600);

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Worker {
    slots: usize,
    capacity: f64,
    host: String,
    last_heartbeat: Instant,
    alive: bool,
}

/// The attempt of a job that runs now.
struct Run {
    handle: AttemptHandle,
    placement: Vec<Placement>,
    /// Per executor: its worker and launch.
    launches: Vec<(String, ExecutorLaunch)>,
    /// Slots taken per worker.
    slots: HashMap<String, usize>,
}

struct Job {
    record: JobRecord,
    run: Option<Run>,
    /// When a restarting job may start its next attempt.
    not_before: Instant,
    /// When its last attempt failed: the next one only goes to workers
    /// that heartbeated since (a worker whose executor just vanished is
    /// likely dead, though not yet declared so).
    failed_at: Option<Instant>,
    stats: Arc<Mutex<CheckpointStats>>,
    /// Fencing refusals of earlier attempts (the current run's are added).
    rejected_stale: u64,
    nodes: Vec<NodeCounters>,
    /// The newest rows its sinks received, over all attempts.
    results: LatestRows,
    /// Incremented by every change of `record`.
    version: u64,
    /// `record` changed since it was last handed to the writer.
    unsaved: bool,
}

impl Job {
    fn new(record: JobRecord) -> Job {
        Job {
            record,
            run: None,
            not_before: Instant::now(),
            failed_at: None,
            stats: Arc::default(),
            rejected_stale: 0,
            nodes: Vec::new(),
            results: LatestRows::default(),
            version: 0,
            unsaved: false,
        }
    }

    fn note_checkpoint(&mut self) {
        let latest = self
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recent
            .iter()
            .filter(|r| !r.savepoint)
            .map(|r| r.id)
            .max();
        if latest.is_some() && latest > self.record.latest_checkpoint {
            self.record.latest_checkpoint = latest;
            self.changed();
        }
    }

    fn set_state(&mut self, state: JobState, error: Option<String>) {
        self.record.state = state;
        if error.is_some() || state == JobState::Running {
            self.record.error = error;
        }
        self.changed();
    }

    /// Notes a change of `record`, to be written by [`Manager::release`].
    fn changed(&mut self) {
        self.record.updated_ms = now_ms();
        self.version += 1;
        self.unsaved = true;
    }

    /// Waiting for an attempt, with none running.
    fn startable(&self) -> bool {
        matches!(self.record.state, JobState::Created | JobState::Restarting) && self.run.is_none()
    }

    fn rejected(&self) -> u64 {
        self.rejected_stale + self.run.as_ref().map_or(0, |r| r.handle.rejected_stale())
    }
}

struct Inner {
    workers: HashMap<String, Worker>,
    jobs: HashMap<String, Job>,
    next_id: u64,
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
        let meta = MetaStore::open(&config.data_dir)?;
        let control = ControlServer::bind(config.control_listen)?;
        let control_addr = control.local_addr().to_string();
        let mut jobs = HashMap::new();
        let mut next_id = 1;
        for mut record in meta.load()? {
            if let Some(n) = record
                .id
                .strip_prefix("job-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                next_id = next_id.max(n + 1);
            }
            if let Some(r) = record.rescale.take() {
                finish_rescale(&mut record, r);
            }
            if !record.state.is_terminal() && record.state != JobState::Created {
                info!(job = %record.id, attempt = record.attempt, "resuming a job after a coordinator restart");
                record.state = JobState::Restarting;
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
                workers: HashMap::new(),
                jobs,
                next_id,
            }),
            written: Mutex::default(),
        }))
    }

    /// The data directory's store (artifacts).
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

    /// Registers a worker (again, after a coordinator restart, with its id).
    pub fn register(&self, req: RegisterWorker) -> Result<Registered> {
        if req.slots == 0 {
            return Err(Error::Config(
                "a worker must offer at least one slot".into(),
            ));
        }
        if !(req.capacity > 0.0 && req.capacity.is_finite()) {
            return Err(Error::Config(format!(
                "capacity must be a positive number, not {}",
                req.capacity
            )));
        }
        let mut inner = self.lock();
        let id = match req.worker_id.filter(|id| !id.is_empty()) {
            Some(id) => id,
            None => loop {
                let id = format!("worker-{}", inner.next_id);
                inner.next_id += 1;
                if !inner.workers.contains_key(&id) {
                    break id;
                }
            },
        };
        info!(worker = %id, slots = req.slots, host = %req.host, "worker registered");
        inner.workers.insert(
            id.clone(),
            Worker {
                slots: req.slots,
                capacity: req.capacity,
                host: req.host,
                last_heartbeat: Instant::now(),
                alive: true,
            },
        );
        Ok(Registered {
            worker_id: id,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
        })
    }

    /// Records a heartbeat; `None` for a worker this coordinator does not
    /// know (it registers again).
    pub fn heartbeat(&self, worker: &str, hb: Heartbeat) -> Option<HeartbeatReply> {
        let mut inner = self.lock();
        let w = inner.workers.get_mut(worker)?;
        w.last_heartbeat = Instant::now();
        if !w.alive {
            info!(worker, "worker is back");
            w.alive = true;
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
            // The running attempt's number is the record's.
            if job.run.is_some() && job.record.attempt == r.attempt {
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
            self.fail_attempt(&mut inner, &job, why);
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
            .filter(|j| !j.record.state.is_terminal())
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

    /// Live and dead workers.
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
        let mut jobs: Vec<(JobState, usize)> = Vec::new();
        for j in inner.jobs.values() {
            match jobs.iter_mut().find(|(s, _)| *s == j.record.state) {
                Some((_, n)) => *n += 1,
                None => jobs.push((j.record.state, 1)),
            }
        }
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
        if !self.meta.artifact_path(&req.artifact).is_file() {
            return Err(Error::Config(format!(
                "artifact {} was not uploaded (PUT /api/v1/artifacts/{{sha256}} first)",
                req.artifact
            )));
        }
        if req.description.vertices.is_empty() || req.description.slots() == 0 {
            return Err(Error::Config("the job's plan has no vertices".into()));
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
            let id = format!("job-{}", inner.next_id);
            inner.next_id += 1;
            id
        };
        let now = now_ms();
        let record = JobRecord {
            id: id.clone(),
            state: JobState::Created,
            attempt: 0,
            restarts: 0,
            artifact: req.artifact,
            args: req.args,
            parallelism: req.parallelism.unwrap_or(req.description.parallelism),
            workdir: req.workdir,
            description: req.description,
            submitted_ms: now,
            updated_ms: now,
            error: None,
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
        let mut out: Vec<JobStatus> = inner.jobs.values().map(status_of).collect();
        out.sort_by_key(|j| j.submitted_ms);
        out
    }

    /// One job.
    pub fn job(&self, id: &str) -> Option<JobStatus> {
        self.lock().jobs.get(id).map(status_of)
    }

    /// Cancels a job that has not ended.
    pub fn cancel(&self, id: &str) -> Result<JobStatus> {
        let mut inner = self.lock();
        let job = inner.jobs.get_mut(id).ok_or_else(|| not_found(id))?;
        if job.record.state.is_terminal() {
            return Err(Error::Config(format!(
                "job {id} already ended ({:?})",
                job.record.state
            )));
        }
        if let Some(run) = job.run.take() {
            run.handle.cancel("cancelled by a user");
            job.rejected_stale += run.handle.rejected_stale();
        }
        job.record.rescale = None;
        job.set_state(JobState::Canceled, None);
        let status = status_of(job);
        self.release(inner);
        Ok(status)
    }

    /// The running attempt's handle, for a savepoint (taken without the lock).
    pub fn attempt_handle(&self, id: &str) -> Result<AttemptHandle> {
        let inner = self.lock();
        let job = inner.jobs.get(id).ok_or_else(|| not_found(id))?;
        if job.record.description.checkpoint.is_none() {
            return Err(Error::Config(format!(
                "job {id} does not checkpoint, so it cannot take savepoints"
            )));
        }
        match (&job.run, job.record.state) {
            (Some(run), JobState::Running) => Ok(run.handle.clone()),
            (_, state) => Err(Error::Config(format!(
                "job {id} is not running ({state:?})"
            ))),
        }
    }

    /// Stops job `id` with a savepoint and runs it on from there with
    /// `req`'s plan; returns the savepoint once it is taken. The switch
    /// happens when the stopped attempt ends ([`Manager::tick`]); if the
    /// attempt fails first, the job restarts at its old parallelism and
    /// this returns the error.
    pub fn rescale(&self, id: &str, req: RescaleRequest) -> Result<Rescaled> {
        let pinned = {
            let mut inner = self.lock();
            let live_slots: usize = inner
                .workers
                .values()
                .filter(|w| w.alive)
                .map(|w| w.slots)
                .sum();
            let job = inner.jobs.get_mut(id).ok_or_else(|| not_found(id))?;
            let run = match &job.run {
                Some(run) if job.record.state == JobState::Running => run,
                _ => {
                    return Err(Error::Config(format!(
                        "job {id} is {}; only a running job can be rescaled",
                        job.record.state.name()
                    )))
                }
            };
            if job.record.rescale.is_some() {
                return Err(Error::Config(format!("job {id} is already being rescaled")));
            }
            let Some(checkpoint) = job.record.description.checkpoint.clone() else {
                return Err(Error::Config(format!(
                    "job {id} does not checkpoint, so its state cannot move to another parallelism"
                )));
            };
            let mut description = req.description;
            same_operators(&job.record.description, &description)?;
            if req.parallelism == 0 || description.slots() == 0 {
                return Err(Error::Config("the parallelism must be at least 1".into()));
            }
            if description.slots() > live_slots {
                return Err(Error::Config(format!(
                    "the job would need {} slots; the live workers offer {live_slots}",
                    description.slots()
                )));
            }
            // The checkpoint settings stay the job's (the plan was
            // described in another directory, perhaps).
            description.checkpoint = Some(checkpoint.clone());
            let savepoint = format!(
                "{}/rescale-a{}-{}",
                checkpoint.dir.trim_end_matches('/'),
                job.record.attempt,
                now_ms()
            );
            let handle = run.handle.clone();
            // Durable before the savepoint is asked for (written below).
            job.record.rescale = Some(PendingRescale {
                parallelism: req.parallelism,
                description,
                savepoint: savepoint.clone(),
            });
            job.changed();
            info!(job = %id, parallelism = req.parallelism, %savepoint, "rescale: taking a savepoint and stopping");
            let location = Location::from(savepoint.as_str());
            self.release(inner);
            (handle, location)
        };
        // The checkpoint coordinator pins the savepoint before taking it,
        // so whatever restarts the job next resumes from it.
        let (handle, location) = pinned;
        match handle.savepoint(location, true) {
            Ok(taken) => Ok(Rescaled {
                savepoint: taken.to_string(),
                parallelism: req.parallelism,
            }),
            Err(e) => {
                let mut inner = self.lock();
                if let Some(job) = inner.jobs.get_mut(id) {
                    job.record.rescale = None;
                    job.changed();
                }
                self.release(inner);
                Err(e)
            }
        }
    }

    /// Resolves a location the way the job's executors see it.
    pub fn resolve_location(&self, id: &str, dir: &str) -> Result<Location> {
        let inner = self.lock();
        let job = inner.jobs.get(id).ok_or_else(|| not_found(id))?;
        Ok(resolve(dir, job.record.workdir.as_deref()))
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
        let timeout = self.config.heartbeat_timeout;
        let mut dead = Vec::new();
        for (id, w) in inner.workers.iter_mut() {
            if w.alive && w.last_heartbeat.elapsed() > timeout {
                w.alive = false;
                warn!(worker = %id, ?timeout, "worker missed its heartbeats: declared dead");
                dead.push(id.clone());
            }
        }
        for worker in dead {
            let hit: Vec<String> = inner
                .jobs
                .values()
                .filter(|j| {
                    j.run
                        .as_ref()
                        .is_some_and(|r| r.slots.contains_key(&worker))
                })
                .map(|j| j.record.id.clone())
                .collect();
            for job in hit {
                self.fail_attempt(&mut inner, &job, format!("worker {worker} was lost"));
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
                let job = inner.jobs.get_mut(id).expect("listed");
                match ev {
                    AttemptEvent::Running => {
                        if job.record.state != JobState::Running {
                            info!(job = %id, attempt = job.record.attempt, "job running");
                            job.set_state(JobState::Running, None);
                        }
                    }
                    AttemptEvent::Finished => {
                        if let Some(run) = job.run.take() {
                            job.rejected_stale += run.handle.rejected_stale();
                            run.handle.cancel("the job finished");
                        }
                        job.note_checkpoint();
                        if let Some(r) = job.record.rescale.take() {
                            // Stopped by the rescale's savepoint (or, if its
                            // input ended first, finished: restarting then
                            // resumes at the end and finishes again).
                            info!(job = %id, parallelism = r.parallelism, savepoint = %r.savepoint, "job stopped for a rescale");
                            job.record.parallelism = r.parallelism;
                            job.record.description = r.description;
                            job.nodes.clear();
                            job.not_before = Instant::now();
                            job.failed_at = None;
                            job.set_state(JobState::Restarting, None);
                            break;
                        }
                        info!(job = %id, "job finished");
                        job.set_state(JobState::Finished, None);
                        break;
                    }
                    AttemptEvent::Failed(e) => {
                        self.fail_attempt(&mut inner, id, e);
                        break;
                    }
                }
            }
            if let Some(job) = inner.jobs.get_mut(id) {
                job.note_checkpoint();
            }
        }

        let forgotten = self.forget_old_jobs(&mut inner);

        let due: Vec<(String, JobDescription)> = inner
            .jobs
            .values()
            .filter(|j| j.startable() && Instant::now() >= j.not_before)
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
            // Placed first, so a job waiting for slots does not scan its
            // checkpoints every tick; the scan runs without the lock.
            let placeable = {
                let inner = self.lock();
                self.assign(&inner, &id).map(|_| ())
            };
            let start = placeable.and_then(|()| CheckpointStart::find(&description));
            let mut inner = self.lock();
            if let Err(e) = start.and_then(|start| self.start_attempt(&mut inner, &id, start)) {
                if let Some(job) = inner.jobs.get_mut(&id) {
                    // Too few slots is a reason to wait, not to fail; a
                    // heartbeat or a worker declared dead may change it soon.
                    job.not_before = Instant::now() + Duration::from_millis(100);
                    if job.record.error.as_deref() != Some(&e.to_string()) {
                        warn!(job = %id, error = %e, "job cannot start yet");
                        job.record.error = Some(e.to_string());
                    }
                }
            }
            self.release(inner);
        }
    }

    /// Forgets the oldest ended jobs beyond `retained_jobs` (whose newest
    /// record is on disk, so no write in flight brings one back); returns
    /// their ids, whose records the caller deletes after the lock.
    fn forget_old_jobs(&self, inner: &mut Inner) -> Vec<String> {
        let mut ended: Vec<(i64, String)> = inner
            .jobs
            .values()
            .filter(|j| j.record.state.is_terminal())
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
    fn fail_attempt(&self, inner: &mut Inner, id: &str, error: String) {
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
        let restartable = job.record.description.checkpoint.is_some();
        if !restartable || job.record.restarts >= u64::from(self.config.max_restarts) {
            let why = if restartable {
                format!("{error} (after {} restarts)", job.record.restarts)
            } else {
                format!("{error} (the job does not checkpoint, so it cannot be restarted)")
            };
            warn!(job = %id, error = %why, "job failed");
            job.set_state(JobState::Failed, Some(why));
            return;
        }
        warn!(job = %id, attempt = job.record.attempt, error = %error, "attempt failed; restarting from the latest checkpoint");
        job.record.restarts += 1;
        job.not_before = Instant::now() + self.config.restart_delay;
        job.failed_at = Some(Instant::now());
        job.set_state(JobState::Restarting, Some(error));
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
        if !inner.jobs.get(id).is_some_and(Job::startable) {
            return Ok(());
        }
        let assignment = self.assign(inner, id)?;
        let job = inner.jobs.get_mut(id).expect("checked above");
        let record = &job.record;
        let mut attempt = record.attempt + 1;
        let restore = start
            .as_ref()
            .and_then(|s| s.restore.as_ref().map(|l| l.to_string()));
        if let Some(s) = &start {
            attempt = attempt.max(s.min_attempt);
        }
        let restored_from = start.as_ref().and_then(|s| s.restored_from);
        let secret = attempt_secret()?;
        let checkpoint = start.map(|s| s.setup);
        let handle = self.control.start_attempt(AttemptConfig {
            job_id: id.to_string(),
            attempt,
            description: record.description.clone(),
            placement: assignment.tasks.clone(),
            executors: assignment.executors.len(),
            checkpoint,
            stats: job.stats.clone(),
            secret: secret.clone(),
        })?;
        {
            let mut stats = job.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.restored_from = restored_from;
            stats.restarts = record.restarts;
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
        job.record.attempt = attempt;
        job.record.error = None;
        // Durable before a heartbeat can hand the attempt to a worker.
        job.changed();
        job.unsaved = false;
        if let Err(e) = self.write(job.version, &job.record) {
            handle.cancel("its attempt number could not be recorded");
            return Err(e);
        }
        job.failed_at = None;
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
    fn cancel(&self, id: &str) -> Result<JobStatus> {
        Manager::cancel(self, id)
    }
    fn savepoint(&self, id: &str, request: SavepointRequest) -> Result<SavepointTaken> {
        let handle = self.attempt_handle(id)?;
        let dir = self.resolve_location(id, &request.dir)?;
        let location = handle.savepoint(dir, request.stop)?;
        Ok(SavepointTaken {
            location: location.to_string(),
        })
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

fn status_of(job: &Job) -> JobStatus {
    let r = &job.record;
    JobStatus {
        id: r.id.clone(),
        name: r.description.name.clone(),
        state: r.state,
        attempt: r.attempt,
        restarts: r.restarts,
        artifact: r.artifact.clone(),
        args: r.args.clone(),
        submitted_ms: r.submitted_ms,
        updated_ms: r.updated_ms,
        error: r.error.clone(),
        latest_checkpoint: r.latest_checkpoint,
        rejected_stale: job.rejected(),
        placement: job
            .run
            .as_ref()
            .map(|run| run.placement.clone())
            .unwrap_or_default(),
        nodes: job.nodes.clone(),
        vertices: r.description.vertices.clone(),
        parallelism: r.parallelism,
        workdir: r.workdir.clone(),
        rescaling_to: r.rescale.as_ref().map(|p| p.parallelism),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: JobState) -> JobRecord {
        JobRecord {
            id: "job-7".into(),
            state,
            attempt: 1,
            restarts: 0,
            artifact: "0".repeat(64),
            args: Vec::new(),
            parallelism: 1,
            workdir: None,
            description: JobDescription {
                name: "t".into(),
                parallelism: 1,
                max_parallelism: 128,
                vertices: Vec::new(),
                graph_nodes: 0,
                checkpoint: None,
            },
            submitted_ms: 0,
            updated_ms: 0,
            error: None,
            latest_checkpoint: None,
            rescale: None,
        }
    }

    #[test]
    fn a_rescale_must_keep_the_operators() {
        let plan = |p: usize, names: &[&str]| {
            let mut d = record(JobState::Running).description;
            d.graph_nodes = names.len();
            d.vertices = vec![crate::cluster::api::VertexInfo {
                id: 0,
                name: names.join(" -> "),
                parallelism: p,
                source: true,
                nodes: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (i, n.to_string()))
                    .collect(),
            }];
            d
        };
        let running = plan(2, &["source", "window", "sink"]);
        assert!(same_operators(&running, &plan(4, &["source", "window", "sink"])).is_ok());
        let e = same_operators(&running, &plan(4, &["source", "map", "sink"])).unwrap_err();
        assert!(e.to_string().contains("is not job 't'"), "{e}");
        assert!(same_operators(&running, &plan(4, &["source", "sink"])).is_err());
    }

    #[test]
    fn only_the_newest_ended_jobs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
        config.retained_jobs = 2;
        let m = Manager::open(config).unwrap();
        let states = [
            JobState::Finished,
            JobState::Failed,
            JobState::Running,
            JobState::Canceled,
            JobState::Finished,
        ];
        for (i, state) in states.into_iter().enumerate() {
            let mut r = record(state);
            r.id = format!("job-{i}");
            r.updated_ms = i as i64;
            m.meta.save(&r).unwrap();
            m.lock().jobs.insert(r.id.clone(), Job::new(r));
        }
        m.tick();
        let mut kept: Vec<String> = m.jobs().into_iter().map(|j| j.id).collect();
        kept.sort();
        // The two newest ended jobs and the one still running.
        assert_eq!(kept, ["job-2", "job-3", "job-4"]);
        let mut on_disk: Vec<String> = m.meta.load().unwrap().into_iter().map(|r| r.id).collect();
        on_disk.sort();
        assert_eq!(on_disk, kept);
    }

    #[test]
    fn a_rescale_begun_by_a_dead_coordinator_is_finished_if_its_savepoint_exists() {
        let dir = tempfile::tempdir().unwrap();
        let config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
        let meta = MetaStore::open(dir.path()).unwrap();
        let mut wider = record(JobState::Running).description;
        wider.parallelism = 3;
        let taken = dir.path().join("rescale-taken");
        std::fs::create_dir_all(&taken).unwrap();
        std::fs::write(taken.join("_manifest.json"), b"{}").unwrap();
        for (id, savepoint) in [("job-1", &taken), ("job-2", &dir.path().join("never"))] {
            let mut r = record(JobState::Running);
            r.id = id.to_string();
            r.rescale = Some(PendingRescale {
                parallelism: 3,
                description: wider.clone(),
                savepoint: savepoint.to_string_lossy().into_owned(),
            });
            meta.save(&r).unwrap();
        }
        // While pending, the status says where the job is going.
        let mut pending = record(JobState::Running);
        pending.rescale = meta.load().unwrap()[0].rescale.clone();
        assert_eq!(status_of(&Job::new(pending)).rescaling_to, Some(3));
        let m = Manager::open(config).unwrap();
        let one = m.job("job-1").unwrap();
        assert_eq!((one.state, one.parallelism), (JobState::Restarting, 3));
        let two = m.job("job-2").unwrap();
        assert_eq!((two.state, two.parallelism), (JobState::Restarting, 1));
        let on_disk = m.meta.load().unwrap();
        assert!(
            on_disk.iter().all(|r| r.rescale.is_none()),
            "settled on disk"
        );
        assert_eq!(
            on_disk
                .iter()
                .find(|r| r.id == "job-1")
                .unwrap()
                .description
                .parallelism,
            3
        );
    }

    /// Two callers may write after releasing the lock in either order; the
    /// file keeps the newer state.
    #[test]
    fn an_older_record_never_overwrites_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
        let m = Manager::open(config).unwrap();
        m.write(2, &record(JobState::Canceled)).unwrap();
        m.write(1, &record(JobState::Running)).unwrap();
        let on_disk = m.meta.load().unwrap();
        assert_eq!(on_disk.len(), 1);
        assert_eq!(on_disk[0].state, JobState::Canceled);
        m.write(3, &record(JobState::Restarting)).unwrap();
        assert_eq!(m.meta.load().unwrap()[0].state, JobState::Restarting);
    }
}
