//! The coordinator's side of a job attempt: the control server executors
//! dial, the attempt's life cycle (hellos, peers, done, failure) and its
//! checkpoint coordinator, whose task messages travel as control frames.
//!
//! It owns fencing on the control path: a hello from an attempt that is
//! not the job's current one is refused, and frames arriving on a
//! connection of a superseded attempt are dropped, both counted in the
//! current attempt's [`AttemptHandle::rejected_stale`] (frames of an
//! attempt that ended are dropped too). Only the current attempt's
//! checkpoint coordinator sends `Complete`, so nothing a stale executor
//! staged is ever committed. It knows nothing of REST, workers or
//! scheduling: the coordinator service decides placement and restarts and
//! drives attempts through [`ControlServer`] and [`AttemptHandle`].
//!
//! - `server`: the control server on tokio (bounded hellos, a cap on
//!   connections that have proven nothing, a task per connection).
//! - `start`: where an attempt starts (the checkpoint to restore).
//! - `checkpoints`: the attempt's checkpoint coordinator, its task
//!   messages sent as control frames, and what a rejoining executor may
//!   claim of its checkpoints.

mod checkpoints;
mod server;
mod start;

pub use server::{ApproveHook, CheckpointHook, ControlServer, HELLO_TIMEOUT, MAX_UNPROVEN};
pub use start::{CheckpointSetup, CheckpointStart};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use tracing::{debug, info, warn};

use sluice_engine::checkpoint::coordinator::{
    ApprovalHook, CompletionHook, Coordinator, CoordinatorMsg, SavepointRequest, TaskControl,
    TaskKey, TaskPort,
};
use sluice_engine::checkpoint::store::has_manifest;
use sluice_engine::checkpoint::{CheckpointRecord, CheckpointStats, Location, Storage};
use sluice_engine::data::CheckpointId;
use sluice_engine::error::{Error, Result};
use sluice_engine::runtime::JobControl;
use sluice_protocol::api::{JobDescription, NodeCounters};
use sluice_protocol::control::{Rejoin, Retry, ToCoordinator, ToExecutor};
use sluice_protocol::metrics::{ExecutorMetrics, ExecutorProcess, SubtaskMetrics};
use sluice_protocol::results::LatestRows;

use server::{Attempts, ExecLink};
use start::absolute;

/// Bound on waiting for a cancelled checkpoint coordinator to stop.
const COORDINATOR_STOP: Duration = Duration::from_secs(10);
/// One attempt to run a job.
pub struct AttemptConfig {
    /// Job id.
    pub job_id: String,
    /// Attempt number (fencing generation).
    pub attempt: u64,
    /// The job's plan.
    pub description: JobDescription,
    /// The executor of every subtask.
    pub placement: Vec<(TaskKey, usize)>,
    /// Executors in the attempt (indexes `0..executors`).
    pub executors: usize,
    /// Checkpointing, when the job checkpoints.
    pub checkpoint: Option<CheckpointSetup>,
    /// Checkpoint metrics, shared across the job's attempts.
    pub stats: Arc<Mutex<CheckpointStats>>,
    /// What its executors must say in their hello (`ExecutorSpec::secret`).
    pub secret: String,
    /// Set when a new leader adopts an attempt whose executors run: only
    /// their rejoining hellos are taken, and unless all of them rejoined
    /// within this long the attempt fails (and the job restarts).
    pub adopt: Option<Duration>,
}

/// What happens to an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEvent {
    /// Every executor said hello and got the peers.
    Running,
    /// Every executor of an adopted attempt rejoined this leader.
    Adopted,
    /// Every task consumed its input; the final checkpoint is under way.
    Finishing,
    /// Every executor is done and the final checkpoint (when the job
    /// checkpoints) completed.
    Finished,
    /// An executor failed, a control connection was lost before its
    /// executor was done, or the checkpoint coordinator failed. By then
    /// the checkpoint coordinator has stopped (no later manifest appears)
    /// and the attempt's executors have been told to cancel.
    Failed {
        /// What failed.
        error: String,
        /// Whether a restart can help.
        retry: Retry,
    },
}

impl ControlServer {
    /// Registers a new attempt of a job; it replaces (and cancels) the
    /// job's previous attempt.
    pub fn start_attempt(&self, cfg: AttemptConfig) -> Result<AttemptHandle> {
        if cfg.description.checkpoint.is_some() != cfg.checkpoint.is_some() {
            // Executors checkpoint when the job binary says so; without a
            // coordinator their tasks would wait for a final checkpoint
            // forever, and with one nothing would acknowledge.
            return Err(Error::Config(format!(
                "job '{}' {} checkpoints, but its attempt is started {} checkpoint setup",
                cfg.job_id,
                if cfg.description.checkpoint.is_some() {
                    "takes"
                } else {
                    "takes no"
                },
                if cfg.checkpoint.is_some() {
                    "with a"
                } else {
                    "without a"
                },
            )));
        }
        let tasks = cfg.description.tasks();
        let placed: HashMap<TaskKey, usize> = cfg.placement.iter().copied().collect();
        for t in &tasks {
            match placed.get(t) {
                Some(e) if *e < cfg.executors => {}
                Some(e) => {
                    return Err(Error::Config(format!(
                        "subtask {} of vertex {} is placed on executor {e} of {}",
                        t.subtask, t.vertex, cfg.executors
                    )))
                }
                None => {
                    return Err(Error::Config(format!(
                        "subtask {} of vertex {} is not placed",
                        t.subtask, t.vertex
                    )))
                }
            }
        }
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let n = cfg.executors;
        let attempt = Arc::new(Attempt {
            adopting: cfg.adopt.is_some(),
            rejected: AtomicU64::new(0),
            job_id: cfg.job_id,
            attempt: cfg.attempt,
            secret: cfg.secret,
            description: cfg.description,
            placement: cfg.placement,
            events_tx,
            events_rx,
            control: Arc::new(JobControl::default()),
            stats: cfg.stats,
            on_checkpoint: self.attempts.on_checkpoint.get().cloned(),
            approve_checkpoint: self.attempts.approve_checkpoint.get().cloned(),
            term: self.attempts.term.load(Ordering::SeqCst),
            coordinator_thread: Mutex::new(None),
            coordinator_stopped: AtomicBool::new(false),
            announced: Arc::default(),
            ended: AtomicBool::new(false),
            finished_tasks: Mutex::default(),
            state: Mutex::new(AttemptState {
                links: vec![None; n],
                exchange: vec![None; n],
                done: vec![false; n],
                metrics: vec![ExecutorMetrics::default(); n],
                results: LatestRows::default(),
                running: false,
                checkpoints_done: cfg.checkpoint.is_none(),
                checkpoint: cfg.checkpoint,
                coordinator: None,
                rejoined: 0,
            }),
        });
        let old = self
            .attempts
            .current
            .lock()
            .expect("attempts lock")
            .insert(attempt.job_id.clone(), attempt.clone());
        if let Some(old) = old {
            let reason = format!("superseded by attempt {}", attempt.attempt);
            // Stopping waits for its checkpoint coordinator: never on the
            // caller's async workers.
            self.handle().spawn_blocking(move || old.cancel(&reason));
        }
        match cfg.adopt {
            Some(grace) => {
                info!(job = %attempt.job_id, attempt = attempt.attempt, executors = n,
                    grace_ms = grace.as_millis() as u64, "adopting a running attempt");
                let a = attempt.clone();
                self.handle().spawn(async move {
                    tokio::time::sleep(grace).await;
                    let running = a.state.lock().expect("attempt lock").running;
                    if !running {
                        tokio::task::spawn_blocking(move || {
                            a.fail(
                                format!(
                                    "its executors did not all rejoin this leader within {grace:?}"
                                ),
                                Retry::Backoff,
                            )
                        });
                    }
                });
            }
            None => {
                info!(job = %attempt.job_id, attempt = attempt.attempt, executors = n, "attempt started")
            }
        }
        Ok(AttemptHandle { attempt })
    }
}

/// A running attempt, as the coordinator service drives it. Cheap to clone.
#[derive(Clone)]
pub struct AttemptHandle {
    attempt: Arc<Attempt>,
}

impl AttemptHandle {
    /// The attempt's events, in order (each terminal event at most once).
    pub fn events(&self) -> Receiver<AttemptEvent> {
        self.attempt.events_rx.clone()
    }

    /// Takes a savepoint into `dir` and returns its location when it is
    /// complete; with `stop` the job's tasks stop after it (the attempt
    /// then finishes).
    pub fn savepoint(&self, dir: Location, stop: bool) -> Result<Location> {
        let dir = Storage::open(&dir)?;
        if has_manifest(&dir)? {
            return Err(Error::Checkpoint(format!(
                "{} already holds a savepoint",
                dir.location()
            )));
        }
        // `start_attempt` made sure the setup matches the description.
        if self.attempt.description.checkpoint.is_none() {
            return Err(Error::Config(
                "savepoints need checkpointing (a checkpoint directory)".into(),
            ));
        }
        let tx = self
            .attempt
            .state
            .lock()
            .expect("attempt lock")
            .coordinator
            .clone()
            .ok_or_else(|| Error::Checkpoint("the attempt is not running".into()))?;
        let (reply, rx) = crossbeam_channel::bounded(1);
        tx.send(CoordinatorMsg::Savepoint(SavepointRequest {
            dir,
            stop,
            reply,
        }))
        .map_err(|_| Error::Checkpoint("the attempt is not running".into()))?;
        rx.recv().map_err(|_| {
            Error::Checkpoint("the attempt ended before the savepoint completed".into())
        })?
    }

    /// Cancels the attempt: the checkpoint coordinator stops (a
    /// checkpoint it is completing is finished first; this waits for it,
    /// bounded), then its executors get `Cancel` and their connections
    /// close. No event follows.
    pub fn cancel(&self, reason: &str) {
        self.attempt.cancel(reason);
    }

    /// Leaves the attempt to a new leader: like [`cancel`](Self::cancel),
    /// but its executors are not told to stop. Their connections close and
    /// they wait for the leader that adopts them.
    pub fn abandon(&self, reason: &str) {
        self.attempt.abandon(reason);
    }

    /// Hellos and frames of other attempts of this job refused while this
    /// attempt was the job's current one (each refusal counts in exactly
    /// one attempt, so the job's total is the sum over its attempts).
    pub fn rejected_stale(&self) -> u64 {
        self.attempt.rejected.load(Ordering::Relaxed)
    }

    /// Records in and out per graph node, summed over the executors'
    /// latest reports.
    pub fn metrics(&self) -> Vec<NodeCounters> {
        let st = self.attempt.state.lock().expect("attempt lock");
        let mut sum: Vec<NodeCounters> = (0..self.attempt.description.graph_nodes)
            .map(|node| NodeCounters {
                node,
                ..NodeCounters::default()
            })
            .collect();
        for report in &st.metrics {
            for c in &report.nodes {
                if let Some(s) = sum.get_mut(c.node) {
                    s.records_in += c.records_in;
                    s.records_out += c.records_out;
                }
            }
        }
        sum
    }

    /// Every executor's latest figures per subtask and of its process
    /// (the subtasks by vertex and subtask; processes by executor).
    pub fn figures(&self) -> (Vec<SubtaskMetrics>, Vec<ExecutorProcess>) {
        let st = self.attempt.state.lock().expect("attempt lock");
        let mut subtasks: Vec<SubtaskMetrics> = st
            .metrics
            .iter()
            .flat_map(|r| r.subtasks.iter().cloned())
            .collect();
        subtasks.sort_by_key(|s| (s.vertex, s.subtask));
        let processes = st
            .metrics
            .iter()
            .enumerate()
            .filter_map(|(executor, r)| {
                r.process
                    .map(|process| ExecutorProcess { executor, process })
            })
            .collect();
        (subtasks, processes)
    }

    /// Sink rows reported since the last call.
    pub fn take_results(&self) -> LatestRows {
        std::mem::take(&mut self.attempt.state.lock().expect("attempt lock").results)
    }

    /// The attempt number.
    pub fn attempt(&self) -> u64 {
        self.attempt.attempt
    }

    /// Whether a checkpoint or savepoint was announced and has not
    /// completed (one that was aborted counts until a newer one
    /// completes).
    pub fn checkpoint_in_flight(&self) -> bool {
        let announced = self.attempt.announced.load(Ordering::SeqCst);
        let completed = self
            .attempt
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recent
            .iter()
            .map(|r| r.id)
            .max()
            .unwrap_or(0);
        announced > completed
    }
}

pub(crate) struct Attempt {
    /// A new leader's adoption of running executors (rejoining hellos only).
    adopting: bool,
    job_id: String,
    attempt: u64,
    secret: String,
    description: JobDescription,
    placement: Vec<(TaskKey, usize)>,
    events_tx: Sender<AttemptEvent>,
    events_rx: Receiver<AttemptEvent>,
    /// The checkpoint coordinator's failure state.
    control: Arc<JobControl>,
    stats: Arc<Mutex<CheckpointStats>>,
    /// Told of each completed checkpoint (the coordinator's metrics).
    on_checkpoint: Option<CheckpointHook>,
    /// Asked before each checkpoint completes (a Raft group's log).
    approve_checkpoint: Option<ApproveHook>,
    /// The term it was started under (its control server's).
    pub(crate) term: u64,
    rejected: AtomicU64,
    /// A terminal event was sent or the attempt was cancelled.
    ended: AtomicBool,
    /// Tasks that consumed all their input.
    finished_tasks: Mutex<HashSet<TaskKey>>,
    /// The checkpoint coordinator's thread, once started.
    coordinator_thread: Mutex<Option<std::thread::ThreadId>>,
    /// Its `run` returned.
    coordinator_stopped: AtomicBool,
    /// The newest checkpoint or savepoint announced to the executors
    /// (`Prepare`): in flight until one as new completes.
    announced: Arc<AtomicU64>,
    state: Mutex<AttemptState>,
}

struct AttemptState {
    links: Vec<Option<ExecLink>>,
    exchange: Vec<Option<String>>,
    done: Vec<bool>,
    metrics: Vec<ExecutorMetrics>,
    /// Sink rows reported since the manager last took them.
    results: LatestRows,
    running: bool,
    /// The checkpoint coordinator ended after the final checkpoint (or
    /// the job does not checkpoint).
    checkpoints_done: bool,
    /// Taken when the checkpoint coordinator starts.
    checkpoint: Option<CheckpointSetup>,
    /// The checkpoint coordinator's inbox while it runs.
    coordinator: Option<Sender<CoordinatorMsg>>,
    /// The newest checkpoint id rejoining executors had prepared.
    rejoined: u64,
}

impl Attempt {
    fn links(&self) -> Vec<ExecLink> {
        let st = self.state.lock().expect("attempt lock");
        st.links.iter().flatten().cloned().collect()
    }

    /// Tells every connected executor to stop (unless `abandon`) and
    /// closes the connections.
    fn stop_executors(&self, reason: &str, abandon: bool) {
        self.control.fail(Error::Cancelled);
        // Let a checkpoint being completed finish first: once this returns
        // (and before any event), no manifest appears any more, so a
        // restart sees the latest checkpoint there will be.
        let coordinator = *self.coordinator_thread.lock().expect("coordinator lock");
        if coordinator.is_some_and(|id| id != std::thread::current().id()) {
            let deadline = std::time::Instant::now() + COORDINATOR_STOP;
            while !self.coordinator_stopped.load(Ordering::SeqCst) {
                if std::time::Instant::now() >= deadline {
                    warn!(job = %self.job_id, attempt = self.attempt,
                        "the checkpoint coordinator did not stop in time");
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for l in self.links() {
            if !abandon {
                let _ = l.send(&ToExecutor::Cancel {
                    reason: reason.to_string(),
                });
            }
            l.close();
        }
    }

    fn cancel(&self, reason: &str) {
        if self.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        info!(job = %self.job_id, attempt = self.attempt, reason, "attempt cancelled");
        self.stop_executors(reason, false);
    }

    fn abandon(&self, reason: &str) {
        if self.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        info!(job = %self.job_id, attempt = self.attempt, reason, "attempt left to the next leader");
        self.stop_executors(reason, true);
    }

    fn fail(&self, why: String, retry: Retry) {
        if self.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        warn!(job = %self.job_id, attempt = self.attempt, error = %why, ?retry, "attempt failed");
        self.stop_executors(&format!("attempt {} failed: {why}", self.attempt), false);
        let _ = self
            .events_tx
            .send(AttemptEvent::Failed { error: why, retry });
    }

    fn check_finished(&self) {
        let finished = {
            let st = self.state.lock().expect("attempt lock");
            st.running && st.checkpoints_done && st.done.iter().all(|d| *d)
        };
        if finished && !self.ended.swap(true, Ordering::SeqCst) {
            info!(job = %self.job_id, attempt = self.attempt, "attempt finished");
            let _ = self.events_tx.send(AttemptEvent::Finished);
            for l in self.links() {
                l.close();
            }
        }
    }

    /// Registers executor `i`; once all are there, sends the peers and
    /// starts checkpointing. Refuses a slot taken twice, and a fresh hello
    /// to an adopted attempt or a rejoining one to a new attempt.
    fn register(
        self: &Arc<Self>,
        i: usize,
        exchange: String,
        link: ExecLink,
        rejoin: Option<Rejoin>,
    ) -> std::result::Result<(), String> {
        let mut st = self.state.lock().expect("attempt lock");
        if self.ended.load(Ordering::SeqCst) {
            return Err(format!("attempt {} has ended", self.attempt));
        }
        match (&rejoin, self.adopting) {
            (None, true) => {
                return Err(format!(
                    "attempt {} is being adopted by a new leader: only its running executors \
                     may rejoin it",
                    self.attempt
                ))
            }
            (Some(_), false) => {
                return Err(format!(
                    "attempt {} was started by this leader: there is nothing to rejoin",
                    self.attempt
                ))
            }
            _ => {}
        }
        if i >= st.links.len() {
            return Err(format!(
                "executor {i} is not part of attempt {} ({} executors)",
                self.attempt,
                st.links.len()
            ));
        }
        if st.links[i].is_some() {
            return Err(format!("executor {i} already said hello"));
        }
        let mut finished = Vec::new();
        if let Some(r) = rejoin {
            self.check_rejoin(i, &r, st.checkpoint.as_ref())?;
            st.rejoined = st.rejoined.max(r.checkpoint);
            finished = r.finished;
        }
        st.links[i] = Some(link);
        st.exchange[i] = Some(exchange);
        if !finished.is_empty() {
            // Told to the checkpoint coordinator when it starts, once
            // every executor rejoined (below).
            let mut f = self.finished_tasks.lock().expect("finished lock");
            f.extend(finished.iter().copied());
        }
        if st.links.iter().any(Option::is_none) {
            return Ok(());
        }
        let peers = ToExecutor::Peers {
            exchange: st.exchange.iter().flatten().cloned().collect(),
            placement: self.placement.clone(),
            term: self.term,
        };
        for l in st.links.iter().flatten() {
            if let Err(e) = l.send(&peers) {
                warn!(error = %e, "could not send the peers");
            }
        }
        st.running = true;
        if let Some(mut setup) = st.checkpoint.take() {
            // Ids a deposed leader may have announced are never reused:
            // their barriers may still be in flight.
            setup.next_id = setup.next_id.max(st.rejoined.saturating_add(1));
            let links: Vec<ExecLink> = st.links.iter().flatten().cloned().collect();
            match self.start_checkpoints(setup, &links) {
                Ok(tx) => st.coordinator = Some(tx),
                Err(e) => {
                    drop(st);
                    self.fail(
                        format!("starting the checkpoint coordinator: {e}"),
                        Retry::Backoff,
                    );
                    return Ok(());
                }
            }
        }
        drop(st);
        if self.adopting {
            info!(job = %self.job_id, attempt = self.attempt, "attempt adopted: every executor rejoined");
            let _ = self.events_tx.send(AttemptEvent::Adopted);
            let finished: Vec<TaskKey> = self
                .finished_tasks
                .lock()
                .expect("finished lock")
                .iter()
                .copied()
                .collect();
            if !finished.is_empty() && finished.len() == self.description.tasks().len() {
                let _ = self.events_tx.send(AttemptEvent::Finishing);
            }
            for t in finished {
                self.to_coordinator(CoordinatorMsg::Finished(t));
            }
        } else {
            info!(job = %self.job_id, attempt = self.attempt, "attempt running");
            let _ = self.events_tx.send(AttemptEvent::Running);
        }
        Ok(())
    }

    /// Whether this attempt is still its job's current one.
    fn is_current(&self, attempts: &Attempts) -> bool {
        attempts
            .current
            .lock()
            .expect("attempts lock")
            .get(&self.job_id)
            .is_some_and(|a| std::ptr::eq(a.as_ref(), self))
    }

    fn to_coordinator(&self, msg: CoordinatorMsg) {
        let tx = self.state.lock().expect("attempt lock").coordinator.clone();
        if let Some(tx) = tx {
            let _ = tx.send(msg);
        }
    }

    /// Handles one frame of executor `i`.
    fn on_frame(&self, i: usize, frame: ToCoordinator) {
        match frame {
            ToCoordinator::Ack {
                id,
                task,
                files,
                bytes,
                uploaded,
                alignment_ms,
            } => self.to_coordinator(CoordinatorMsg::Ack {
                id: CheckpointId(id),
                task,
                files,
                bytes,
                uploaded,
                alignment: Duration::from_millis(alignment_ms),
            }),
            ToCoordinator::Decline { id, error } => self.to_coordinator(CoordinatorMsg::Decline {
                id: CheckpointId(id),
                error: format!("executor {i}: {error}"),
            }),
            ToCoordinator::Finished(task) => {
                let (new, all) = {
                    let mut f = self.finished_tasks.lock().expect("finished lock");
                    let new = f.insert(task);
                    (new, new && f.len() == self.description.tasks().len())
                };
                if all {
                    let _ = self.events_tx.send(AttemptEvent::Finishing);
                }
                // A rejoining executor may tell a task twice.
                if new {
                    self.to_coordinator(CoordinatorMsg::Finished(task))
                }
            }
            ToCoordinator::Metrics(m) => {
                self.state.lock().expect("attempt lock").metrics[i] = m;
            }
            ToCoordinator::Results(rows) => {
                let now = crate::coordinator::manager::now_ms();
                let mut st = self.state.lock().expect("attempt lock");
                for r in rows {
                    st.results.add(r, now);
                }
            }
            ToCoordinator::Failed { error, retry } => {
                self.fail(format!("executor {i}: {error}"), retry)
            }
            ToCoordinator::Done => {
                self.state.lock().expect("attempt lock").done[i] = true;
                self.check_finished();
            }
            ToCoordinator::Hello { .. } => {
                debug!(executor = i, "second hello ignored");
            }
        }
    }
}
