//! The coordinator thread's loop: triggers checkpoints on the timer (one
//! in flight, minimum pause, timeout) and savepoints in the order they
//! were asked for, collects acknowledgements, writes the manifest of a
//! complete checkpoint (after the approval hook) and applies retention, or
//! aborts it, and takes the final checkpoint of a bounded job.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::RecvTimeoutError;
use tracing::{debug, info, warn};

use super::{Coordinator, CoordinatorMsg, SavepointRequest, TaskControl, TaskKey};
use crate::checkpoint::manifest::{
    CheckpointFigures, Manifest, NodeState, SubtaskState, FORMAT_VERSION,
};
use crate::checkpoint::storage::{Location, Storage};
use crate::checkpoint::store::{
    checkpoint_dir_name, pin_savepoint, pinned_savepoint, retain, write_manifest,
};
use crate::checkpoint::CheckpointRecord;
use crate::data::{Barrier, BarrierKind, CheckpointId};
use crate::error::Error;

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
        let mut next_trigger = if self.trigger_at_once {
            Instant::now()
        } else {
            Instant::now() + self.config.interval
        };
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
        // Unaligned: every task snapshots on the trigger (or its first
        // barrier, whichever comes first), not only the sources. Savepoints
        // and the final checkpoint stay aligned, so they hold no records in
        // flight and restore at any parallelism.
        let everyone = self.config.unaligned && kind == BarrierKind::Checkpoint;
        for (key, tx, is_source) in &self.tasks {
            if finished.contains(key) {
                tx.send(TaskControl::SnapshotFinished(barrier));
            } else if *is_source || everyone {
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
        let in_flight_bytes = per_node
            .values()
            .flatten()
            .flat_map(|s| s.in_flight.iter())
            .map(|f| f.file.bytes)
            .sum();
        let figures = CheckpointFigures {
            duration_ms: f.started.elapsed().as_millis() as u64,
            alignment_ms: alignment.as_millis() as u64,
            bytes,
            uploaded_bytes: uploaded,
            in_flight_bytes,
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
            unaligned: self.config.unaligned && f.barrier.kind == BarrierKind::Checkpoint,
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
            in_flight_bytes = figures.in_flight_bytes,
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
