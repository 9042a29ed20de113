//! The checkpoint coordinator and the snapshot writer, two threads beside
//! a job's tasks. The coordinator triggers checkpoints at the sources on a
//! timer (one in flight, minimum pause, timeout), collects
//! acknowledgements, writes manifests, applies retention and tells tasks
//! when a checkpoint is complete (or aborted); it also serves savepoint
//! requests and takes the final checkpoint of a bounded job. The writer
//! turns the state copies tasks hand over into files, so a task never
//! waits for storage.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tracing::{debug, info, warn};

use super::manifest::{CheckpointFigures, Manifest, NodeState, SubtaskState, FORMAT_VERSION};
use super::storage::{Location, Storage};
use super::store::{
    checkpoint_dir_name, pin_savepoint, pinned_savepoint, retain, write_db, write_manifest,
    write_snapshot, UploadCache,
};
use super::{CheckpointConfig, CheckpointRecord, CheckpointStats};
use crate::data::{Barrier, BarrierKind, CheckpointId};
use crate::error::{Error, Result};
use crate::runtime::JobControl;
use crate::state::OperatorSnapshot;
pub use sluice_protocol::control::TaskControl;
pub use sluice_protocol::ids::TaskKey;

/// A task's state copies at a barrier, on their way to the writer.
#[derive(Debug)]
pub struct TaskSnapshot {
    /// Checkpoint.
    pub id: CheckpointId,
    /// Which task.
    pub task: TaskKey,
    /// Per chained node (graph index): its snapshot.
    pub states: Vec<(usize, OperatorSnapshot)>,
    /// Time from the first barrier to the last on this task's inputs.
    pub alignment: Duration,
}

/// A request for a savepoint.
#[derive(Debug)]
pub struct SavepointRequest {
    /// Where it goes (must not hold a savepoint already).
    pub dir: Storage,
    /// Stop the job once it is complete.
    pub stop: bool,
    /// Answered with its location when complete.
    pub reply: Sender<Result<Location>>,
}

/// Anything → coordinator.
#[derive(Debug)]
pub enum CoordinatorMsg {
    /// The writer stored a task's snapshot.
    Ack {
        /// Checkpoint.
        id: CheckpointId,
        /// Which task.
        task: TaskKey,
        /// Files per node.
        files: Vec<(usize, SubtaskState)>,
        /// Bytes the snapshot consists of.
        bytes: u64,
        /// Bytes uploaded for it.
        uploaded: u64,
        /// The task's alignment time.
        alignment: Duration,
    },
    /// A snapshot could not be taken or written.
    Decline {
        /// Checkpoint.
        id: CheckpointId,
        /// Why.
        error: String,
    },
    /// The task consumed all its input and waits for the final checkpoint.
    Finished(TaskKey),
    /// Take a savepoint.
    Savepoint(SavepointRequest),
}

/// Where each in-flight checkpoint's files go, and whether it is a
/// savepoint (self-contained) — shared with the writer.
pub type CheckpointDirs = Arc<Mutex<HashMap<u64, (Storage, bool)>>>;

/// Removes the native database checkpoints of a snapshot not written.
fn discard(snap: &TaskSnapshot) {
    for (_, s) in &snap.states {
        if let Some(db) = &s.db {
            let _ = std::fs::remove_dir_all(&db.dir);
        }
    }
}

/// What the writer stored for one task: files per node, bytes, bytes uploaded.
type Written = (Vec<(usize, SubtaskState)>, u64, u64);

fn write_task(
    snap: &TaskSnapshot,
    dir: &Storage,
    shared: bool,
    cache: &mut UploadCache,
) -> Result<Written> {
    let mut files = Vec::new();
    let (mut bytes, mut uploaded) = (0, 0);
    let sub = snap.task.subtask;
    for (node, state) in &snap.states {
        if state.is_empty() {
            continue;
        }
        let (mut keyed, entries) = write_snapshot(dir, *node, sub, state)?;
        let small = keyed
            .iter()
            .chain(entries.iter())
            .map(|f| f.bytes)
            .sum::<u64>();
        bytes += small;
        uploaded += small;
        let db = match &state.db {
            Some(db) => {
                let (d, up) = write_db(dir, shared, *node, sub, db, cache)?;
                bytes += d.files.iter().map(|f| f.file.bytes).sum::<u64>();
                uploaded += up;
                Some(d)
            }
            None => None,
        };
        files.push((
            *node,
            SubtaskState {
                subtask: sub,
                keyed_more: keyed.split_off(keyed.len().min(1)),
                keyed: keyed.pop(),
                entries,
                db,
            },
        ));
    }
    Ok((files, bytes, uploaded))
}

/// Writes task snapshots until every sender is gone. SST files of periodic
/// checkpoints are shared between them; savepoints copy everything.
pub fn run_writer(
    rx: Receiver<TaskSnapshot>,
    dirs: CheckpointDirs,
    coordinator: Sender<CoordinatorMsg>,
) {
    let mut cache = UploadCache::new();
    for snap in rx {
        let target = dirs
            .lock()
            .expect("checkpoint dirs lock")
            .get(&snap.id.0)
            .cloned();
        let Some((dir, savepoint)) = target else {
            discard(&snap); // aborted meanwhile
            continue;
        };
        let msg = match write_task(&snap, &dir, !savepoint, &mut cache) {
            Ok((files, bytes, uploaded)) => CoordinatorMsg::Ack {
                id: snap.id,
                task: snap.task,
                files,
                bytes,
                uploaded,
                alignment: snap.alignment,
            },
            Err(e) => {
                discard(&snap);
                CoordinatorMsg::Decline {
                    id: snap.id,
                    error: e.to_string(),
                }
            }
        };
        if coordinator.send(msg).is_err() {
            return;
        }
    }
}

/// Where the coordinator's messages to one task go: the task's control
/// channel in this process, or the connection to the executor running it.
/// Sending never fails: a task that is gone is the failure path's business.
pub trait TaskPort: Send {
    /// Delivers `msg` to the task, if it is still there.
    fn send(&self, msg: TaskControl);
}

impl TaskPort for Sender<TaskControl> {
    fn send(&self, msg: TaskControl) {
        let _ = Sender::send(self, msg);
    }
}

/// Called when checkpoint `id` is about to be triggered, with its
/// directory and whether it is a savepoint: executors in other processes
/// must know where to write before any barrier reaches them.
pub type PrepareHook = Box<dyn FnMut(u64, &Storage, bool) + Send>;

/// Told of every checkpoint or savepoint the coordinator completes, once,
/// after its manifest is written and before tasks are told to commit: the
/// place metrics observe each completed checkpoint.
pub type CompletionHook = Arc<dyn Fn(&CheckpointRecord) + Send + Sync>;

/// Asked, once every task acknowledged checkpoint `id` (`savepoint`:
/// whether it is one) and before its manifest is written, whether it may
/// complete: a refusal (why) aborts it as a failed manifest write would,
/// and fails the attempt, so nothing of it is ever committed. A
/// coordinator in a Raft group records the completion in the group's log
/// here: a leader cut off from the majority can complete nothing.
pub type ApprovalHook = Arc<dyn Fn(u64, bool) -> std::result::Result<(), String> + Send + Sync>;

/// A graph node as the manifest records it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Graph index.
    pub node: usize,
    /// Name.
    pub name: String,
    /// Operator id.
    pub uid: String,
    /// Parallelism in this run.
    pub parallelism: usize,
}

/// Everything the coordinator thread needs.
pub struct Coordinator {
    /// Checkpoint settings.
    pub config: CheckpointConfig,
    /// The opened checkpoint location (`config.dir`).
    pub root: Storage,
    /// Job name (recorded in manifests).
    pub job: String,
    /// This run's attempt number.
    pub attempt: u64,
    /// First checkpoint id to use.
    pub next_id: u64,
    /// Key groups.
    pub max_parallelism: usize,
    /// Every node of the graph.
    pub nodes: Vec<NodeInfo>,
    /// Every task: where its control messages go and whether its head is
    /// a source.
    pub tasks: Vec<(TaskKey, Box<dyn TaskPort>, bool)>,
    /// Incoming messages.
    pub rx: Receiver<CoordinatorMsg>,
    /// Shared with the writer.
    pub dirs: CheckpointDirs,
    /// Metrics, shared with the job handle.
    pub stats: Arc<Mutex<CheckpointStats>>,
    /// The job's failure and stop state.
    pub control: Arc<JobControl>,
    /// Announces each checkpoint's directory before its trigger.
    pub prepare: Option<PrepareHook>,
    /// Told of each completed checkpoint.
    pub on_complete: Option<CompletionHook>,
    /// Asked before each checkpoint completes (see [`ApprovalHook`]).
    pub approve: Option<ApprovalHook>,
}

/// A task's acknowledgement: files per node, bytes, uploaded bytes, alignment time.
type TaskAck = (Vec<(usize, SubtaskState)>, u64, u64, Duration);

struct InFlight {
    barrier: Barrier,
    dir: Storage,
    started: Instant,
    acks: HashMap<TaskKey, TaskAck>,
    savepoint: Option<SavepointRequest>,
    /// For a savepoint: the pin it replaced, put back if it aborts.
    previous_pin: Option<Location>,
    is_final: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Coordinator {
    /// Runs until the final checkpoint completes, the job stops or fails.
    pub fn run(mut self) {
        let mut in_flight: Option<InFlight> = None;
        let mut finished: HashSet<TaskKey> = HashSet::new();
        // Savepoint requests in the order they came: the first asked is
        // the first taken, and none is left unanswered when the loop ends.
        let mut queued: VecDeque<SavepointRequest> = VecDeque::new();
        let mut last_done = Instant::now();
        let mut next_trigger = Instant::now() + self.config.interval;
        loop {
            if self.control.is_cancelled() {
                for r in queued
                    .drain(..)
                    .chain(in_flight.take().and_then(|f| f.savepoint))
                {
                    let _ = r.reply.send(Err(Error::Cancelled));
                }
                return;
            }
            let wait = next_trigger
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            match self.rx.recv_timeout(wait) {
                Ok(CoordinatorMsg::Ack {
                    id,
                    task,
                    files,
                    bytes,
                    uploaded,
                    alignment,
                }) => {
                    let Some(f) = in_flight.as_mut().filter(|f| f.barrier.id == id) else {
                        continue; // aborted or superseded
                    };
                    f.acks.insert(task, (files, bytes, uploaded, alignment));
                    if f.acks.len() == self.tasks.len() {
                        let f = in_flight.take().expect("checked above");
                        let is_final = f.is_final;
                        self.complete(f);
                        last_done = Instant::now();
                        next_trigger = last_done + self.config.min_pause.max(self.config.interval);
                        if is_final || self.control.is_stopped() {
                            let why = if is_final {
                                "the job finished its input"
                            } else {
                                "the job stopped with an earlier savepoint"
                            };
                            for r in queued.drain(..) {
                                let _ = r.reply.send(Err(Error::Checkpoint(why.into())));
                            }
                            return;
                        }
                    }
                }
                Ok(CoordinatorMsg::Decline { id, error }) => {
                    if in_flight.as_ref().is_some_and(|f| f.barrier.id == id) {
                        let f = in_flight.take().expect("checked above");
                        self.abort(f, &format!("declined: {error}"));
                    }
                }
                Ok(CoordinatorMsg::Finished(task)) => {
                    finished.insert(task);
                    // A task that ended before the barrier in flight reached
                    // it takes part with its final state (it ignores the
                    // request if it snapshotted this checkpoint already).
                    if let Some(f) = in_flight.as_ref().filter(|f| !f.acks.contains_key(&task)) {
                        self.send(task, TaskControl::SnapshotFinished(f.barrier));
                    }
                }
                Ok(CoordinatorMsg::Savepoint(req)) => queued.push_back(req),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if let Some(f) = in_flight.take_if(|f| f.started.elapsed() > self.config.timeout) {
                if f.is_final || f.savepoint.as_ref().is_some_and(|s| s.stop) {
                    self.control.fail(Error::Checkpoint(format!(
                        "checkpoint {} timed out after {:?}",
                        f.barrier.id.0, self.config.timeout
                    )));
                }
                self.abort(f, "timed out");
            }
            if in_flight.is_some() {
                continue;
            }
            if finished.len() == self.tasks.len() {
                // Every task consumed its input: the final checkpoint
                // commits the last epoch.
                for r in queued.drain(..) {
                    let _ = r
                        .reply
                        .send(Err(Error::Checkpoint("the job finished its input".into())));
                }
                in_flight = Some(self.trigger(BarrierKind::EndOfInput, None, &finished));
                continue;
            }
            let due =
                Instant::now() >= next_trigger && last_done.elapsed() >= self.config.min_pause;
            if due || !queued.is_empty() {
                in_flight = match queued.pop_front() {
                    Some(req) => {
                        let kind = if req.stop {
                            BarrierKind::StopWithSavepoint
                        } else {
                            BarrierKind::Savepoint
                        };
                        // Pinned first: once it completes it has committed
                        // output, so every restart must consider it.
                        let previous = pinned_savepoint(&self.root);
                        let pinned = previous.and_then(|previous| {
                            pin_savepoint(&self.root, Some(req.dir.location())).map(|()| previous)
                        });
                        match pinned {
                            Ok(previous) => {
                                let mut f = self.trigger(kind, Some(req), &finished);
                                f.previous_pin = previous;
                                Some(f)
                            }
                            Err(e) => {
                                let _ = req.reply.send(Err(e));
                                None
                            }
                        }
                    }
                    None => Some(self.trigger(BarrierKind::Checkpoint, None, &finished)),
                };
                next_trigger = Instant::now() + self.config.interval;
            }
        }
    }

    fn send(&self, task: TaskKey, msg: TaskControl) {
        if let Some((_, tx, _)) = self.tasks.iter().find(|(k, _, _)| *k == task) {
            tx.send(msg);
        }
    }

    fn trigger(
        &mut self,
        kind: BarrierKind,
        savepoint: Option<SavepointRequest>,
        finished: &HashSet<TaskKey>,
    ) -> InFlight {
        let is_final = kind == BarrierKind::EndOfInput;
        let id = CheckpointId(self.next_id);
        self.next_id += 1;
        let dir = match &savepoint {
            Some(req) => req.dir.clone(),
            None => self.root.child(&checkpoint_dir_name(id.0)),
        };
        self.dirs
            .lock()
            .expect("checkpoint dirs lock")
            .insert(id.0, (dir.clone(), savepoint.is_some()));
        if let Some(prepare) = self.prepare.as_mut() {
            prepare(id.0, &dir, savepoint.is_some());
        }
        let barrier = Barrier {
            id,
            timestamp: now_ms(),
            kind,
        };
        debug!(checkpoint = id.0, ?kind, "triggering checkpoint");
        for (key, tx, is_source) in &self.tasks {
            if finished.contains(key) {
                tx.send(TaskControl::SnapshotFinished(barrier));
            } else if *is_source {
                tx.send(TaskControl::Trigger(barrier));
            }
        }
        InFlight {
            barrier,
            dir,
            started: Instant::now(),
            acks: HashMap::new(),
            savepoint,
            previous_pin: None,
            is_final,
        }
    }

    fn abort(&mut self, f: InFlight, why: &str) {
        let id = f.barrier.id;
        warn!(checkpoint = id.0, reason = why, "checkpoint aborted");
        self.dirs
            .lock()
            .expect("checkpoint dirs lock")
            .remove(&id.0);
        for (_, tx, _) in &self.tasks {
            tx.send(TaskControl::Abort(id));
        }
        if let Some(req) = f.savepoint {
            if let Err(e) = pin_savepoint(&self.root, f.previous_pin.as_ref()) {
                warn!(error = %e, "could not put back the pin an aborted savepoint replaced");
            }
            let _ = req
                .reply
                .send(Err(Error::Checkpoint(format!("savepoint aborted: {why}"))));
        } else if let Err(e) = f.dir.delete_all() {
            warn!(checkpoint = id.0, error = %e, "could not delete an aborted checkpoint");
        }
        self.stats.lock().expect("stats lock").aborted += 1;
    }

    fn complete(&mut self, mut f: InFlight) {
        let id = f.barrier.id;
        let mut per_node: BTreeMap<usize, Vec<SubtaskState>> = BTreeMap::new();
        let (mut bytes, mut uploaded, mut alignment) = (0u64, 0u64, Duration::ZERO);
        for (_, (files, b, u, a)) in std::mem::take(&mut f.acks) {
            bytes += b;
            uploaded += u;
            alignment = alignment.max(a);
            for (node, s) in files {
                per_node.entry(node).or_default().push(s);
            }
        }
        let figures = CheckpointFigures {
            duration_ms: f.started.elapsed().as_millis() as u64,
            alignment_ms: alignment.as_millis() as u64,
            bytes,
            uploaded_bytes: uploaded,
        };
        let manifest = Manifest {
            format: FORMAT_VERSION,
            job: self.job.clone(),
            id: id.0,
            savepoint: f.savepoint.is_some(),
            finished: f.is_final,
            attempt: self.attempt,
            timestamp_ms: f.barrier.timestamp,
            max_parallelism: self.max_parallelism,
            graph_nodes: self.nodes.len(),
            nodes: self
                .nodes
                .iter()
                .map(|n| {
                    let mut subtasks = per_node.remove(&n.node).unwrap_or_default();
                    subtasks.sort_by_key(|s| s.subtask);
                    NodeState {
                        node: n.node,
                        name: n.name.clone(),
                        uid: n.uid.clone(),
                        parallelism: n.parallelism,
                        subtasks,
                    }
                })
                .collect(),
            figures: figures.clone(),
        };
        if let Some(approve) = &self.approve {
            if let Err(why) = approve(id.0, f.savepoint.is_some()) {
                let why = format!("its completion was not approved: {why}");
                self.control.fail(Error::Checkpoint(why.clone()));
                self.abort(f, &why);
                return;
            }
        }
        if let Err(e) = write_manifest(&f.dir, &manifest) {
            // Not complete: aborted like any checkpoint that fails (tasks
            // drop what they staged for it, its files go, a savepoint's pin
            // is put back and its requester answered).
            let why = format!("its manifest could not be written: {e}");
            if f.is_final || f.savepoint.as_ref().is_some_and(|s| s.stop) {
                self.control.fail(e);
            }
            self.abort(f, &why);
            return;
        }
        self.dirs
            .lock()
            .expect("checkpoint dirs lock")
            .remove(&id.0);
        info!(
            checkpoint = id.0,
            ms = figures.duration_ms,
            alignment_ms = figures.alignment_ms,
            bytes = figures.bytes,
            savepoint = f.savepoint.is_some(),
            final_checkpoint = f.is_final,
            "checkpoint complete"
        );
        let record = CheckpointRecord {
            id: id.0,
            savepoint: f.savepoint.is_some(),
            figures,
        };
        if let Some(hook) = &self.on_complete {
            hook(&record);
        }
        self.stats.lock().expect("stats lock").record(record);
        if let Some(req) = &f.savepoint {
            if req.stop {
                self.control.stop();
            }
        }
        for (_, tx, _) in &self.tasks {
            tx.send(TaskControl::Complete(id));
        }
        if let Some(req) = f.savepoint {
            let _ = req.reply.send(Ok(f.dir.location().clone()));
        } else if let Err(e) = retain(&self.root, self.config.retained) {
            warn!(error = %e, "checkpoint retention failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::checkpoint::store::load_verified;

    const TASK: TaskKey = TaskKey {
        vertex: 0,
        subtask: 0,
    };

    /// Cancels the coordinator and waits for it.
    struct Stop {
        control: Arc<JobControl>,
        thread: thread::JoinHandle<()>,
    }

    impl Stop {
        fn stop(self) {
            self.control.fail(Error::Cancelled);
            self.thread.join().unwrap();
        }
    }

    /// A coordinator over one source task played by this test: every
    /// trigger is acknowledged at once (no state).
    fn start(
        root: &std::path::Path,
        interval: Duration,
        on_complete: Option<CompletionHook>,
    ) -> (
        Sender<CoordinatorMsg>,
        Receiver<TaskControl>,
        Arc<Mutex<CheckpointStats>>,
        Stop,
    ) {
        start_approved(root, interval, on_complete, None)
    }

    /// [`start`] with an approval hook.
    fn start_approved(
        root: &std::path::Path,
        interval: Duration,
        on_complete: Option<CompletionHook>,
        approve: Option<ApprovalHook>,
    ) -> (
        Sender<CoordinatorMsg>,
        Receiver<TaskControl>,
        Arc<Mutex<CheckpointStats>>,
        Stop,
    ) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (task_tx, task_rx) = crossbeam_channel::unbounded::<TaskControl>();
        let stats = Arc::new(Mutex::new(CheckpointStats::default()));
        let control = Arc::new(JobControl::default());
        let config = CheckpointConfig {
            interval,
            ..CheckpointConfig::new(root)
        };
        let coordinator = Coordinator {
            root: Storage::open(&config.dir).unwrap(),
            config,
            job: "t".into(),
            attempt: 1,
            next_id: 1,
            max_parallelism: 128,
            nodes: vec![NodeInfo {
                node: 0,
                name: "source".into(),
                uid: "source".into(),
                parallelism: 1,
            }],
            tasks: vec![(TASK, Box::new(task_tx), true)],
            rx,
            dirs: Arc::default(),
            stats: stats.clone(),
            control: control.clone(),
            prepare: None,
            on_complete,
            approve,
        };
        let thread = thread::spawn(move || coordinator.run());
        (tx, task_rx, stats, Stop { control, thread })
    }

    /// Plays the task: acknowledges triggers, passes other messages on.
    fn ack_triggers(
        coordinator: Sender<CoordinatorMsg>,
        task: Receiver<TaskControl>,
    ) -> Receiver<TaskControl> {
        let (seen_tx, seen) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            for msg in task {
                if let TaskControl::Trigger(b) = msg {
                    let _ = coordinator.send(CoordinatorMsg::Ack {
                        id: b.id,
                        task: TASK,
                        files: Vec::new(),
                        bytes: 0,
                        uploaded: 0,
                        alignment: Duration::ZERO,
                    });
                }
                let _ = seen_tx.send(msg);
            }
        });
        seen
    }

    fn savepoint(
        dir: &std::path::Path,
        stop: bool,
    ) -> (SavepointRequest, Receiver<Result<Location>>) {
        let (reply, rx) = crossbeam_channel::bounded(1);
        let req = SavepointRequest {
            dir: Storage::open(&Location::from(dir)).unwrap(),
            stop,
            reply,
        };
        (req, rx)
    }

    #[test]
    fn savepoints_are_taken_in_the_order_they_were_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, task, _, coordinator) =
            start(&dir.path().join("ck"), Duration::from_secs(3600), None);
        // The task holds its first acknowledgement until two more
        // requests wait behind the first: first asked, first taken.
        let (a, a_reply) = savepoint(&dir.path().join("a"), false);
        tx.send(CoordinatorMsg::Savepoint(a)).unwrap();
        let first = task.recv_timeout(Duration::from_secs(10)).unwrap();
        let (b, b_reply) = savepoint(&dir.path().join("b"), false);
        let (c, c_reply) = savepoint(&dir.path().join("c"), false);
        tx.send(CoordinatorMsg::Savepoint(b)).unwrap();
        tx.send(CoordinatorMsg::Savepoint(c)).unwrap();
        thread::sleep(Duration::from_millis(100));
        let TaskControl::Trigger(barrier) = first else {
            panic!("{first:?}");
        };
        tx.send(CoordinatorMsg::Ack {
            id: barrier.id,
            task: TASK,
            files: Vec::new(),
            bytes: 0,
            uploaded: 0,
            alignment: Duration::ZERO,
        })
        .unwrap();
        let _seen = ack_triggers(tx.clone(), task);
        let id = |reply: Receiver<Result<Location>>| {
            let l = reply
                .recv_timeout(Duration::from_secs(10))
                .unwrap()
                .unwrap();
            load_verified(&Storage::open(&l).unwrap()).unwrap().id
        };
        let (a, b, c) = (id(a_reply), id(b_reply), id(c_reply));
        assert!(a < b && b < c, "taken as {a}, {b}, {c}");
        coordinator.stop();
    }

    #[test]
    fn requests_queued_behind_a_stopping_savepoint_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, task, _, coordinator) =
            start(&dir.path().join("ck"), Duration::from_secs(3600), None);
        let (stop, stop_reply) = savepoint(&dir.path().join("stop"), true);
        let (later, later_reply) = savepoint(&dir.path().join("later"), false);
        tx.send(CoordinatorMsg::Savepoint(stop)).unwrap();
        tx.send(CoordinatorMsg::Savepoint(later)).unwrap();
        let _seen = ack_triggers(tx.clone(), task);
        stop_reply
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap();
        let e = later_reply
            .recv_timeout(Duration::from_secs(10))
            .expect("answered, not dropped")
            .unwrap_err();
        assert!(e.to_string().contains("stopped"), "{e}");
        coordinator.stop();
    }

    #[test]
    fn a_checkpoint_whose_manifest_cannot_be_written_is_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ck");
        std::fs::create_dir_all(&root).unwrap();
        // Where checkpoint 1's directory would go stands a file: its
        // manifest cannot be written (whoever runs the test).
        std::fs::write(root.join(checkpoint_dir_name(1)), b"in the way").unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let hook: CompletionHook = {
            let heard = heard.clone();
            Arc::new(move |r: &CheckpointRecord| heard.lock().unwrap().push(r.id))
        };
        let (tx, task, stats, coordinator) = start(&root, Duration::from_millis(20), Some(hook));
        let seen = ack_triggers(tx.clone(), task);
        // The task is told, as for any aborted checkpoint, and the
        // coordinator goes on: the next checkpoint completes.
        let mut told = Vec::new();
        while !told.contains(&"complete 2") {
            match seen.recv_timeout(Duration::from_secs(10)).unwrap() {
                TaskControl::Abort(CheckpointId(1)) => told.push("abort 1"),
                TaskControl::Complete(CheckpointId(1)) => told.push("complete 1"),
                TaskControl::Complete(CheckpointId(2)) => told.push("complete 2"),
                _ => {}
            }
        }
        assert_eq!(told, ["abort 1", "complete 2"]);
        let s = stats.lock().unwrap().clone();
        assert_eq!((s.aborted, s.completed), (1, 1));
        // The completion hook (metrics) heard the completed one, once,
        // before the task was told; the aborted one never.
        let heard = heard.lock().unwrap().clone();
        assert_eq!(heard[0], 2, "{heard:?}");
        assert!(heard.windows(2).all(|w| w[0] < w[1]), "{heard:?}");
        assert!(root
            .join(checkpoint_dir_name(2))
            .join("_manifest.json")
            .is_file());
        coordinator.stop();
    }

    #[test]
    fn a_checkpoint_whose_completion_is_refused_is_aborted_and_fails_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ck");
        // Checkpoint 1 is approved, 2 refused (a coordinator that can no
        // longer commit to its Raft group).
        let approve: ApprovalHook = Arc::new(|id, _| {
            if id == 1 {
                Ok(())
            } else {
                Err(format!("checkpoint {id}: not the leader"))
            }
        });
        let (tx, task, stats, coordinator) =
            start_approved(&root, Duration::from_millis(20), None, Some(approve));
        let seen = ack_triggers(tx.clone(), task);
        let mut told = Vec::new();
        while !told.contains(&"abort 2") {
            assert!(told.len() < 5, "checkpoint 2 was not refused: {told:?}");
            match seen.recv_timeout(Duration::from_secs(10)).unwrap() {
                TaskControl::Complete(CheckpointId(n)) => told.push(if n == 1 {
                    "complete 1"
                } else {
                    "complete later"
                }),
                TaskControl::Abort(CheckpointId(2)) => told.push("abort 2"),
                _ => {}
            }
        }
        assert_eq!(told, ["complete 1", "abort 2"]);
        let dir_of = |n| root.join(checkpoint_dir_name(n)).join("_manifest.json");
        assert!(dir_of(1).is_file());
        assert!(!dir_of(2).exists(), "a refused checkpoint has no manifest");
        // Counted once the abort is done, just after the task was told.
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.lock().unwrap().aborted == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let s = stats.lock().unwrap().clone();
        assert_eq!((s.completed, s.aborted), (1, 1));
        let failed = coordinator.control.take_error().map(|e| e.to_string());
        assert!(
            failed
                .as_deref()
                .is_some_and(|e| e.contains("not approved")),
            "{failed:?}"
        );
        coordinator.stop();
    }
}
