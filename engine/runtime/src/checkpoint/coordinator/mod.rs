//! The checkpoint coordinator and the snapshot writer, two threads beside
//! a job's tasks. The coordinator triggers checkpoints at the sources on a
//! timer (one in flight, minimum pause, timeout), collects
//! acknowledgements, writes manifests, applies retention and tells tasks
//! when a checkpoint is complete (or aborted); it also serves savepoint
//! requests and takes the final checkpoint of a bounded job. The writer
//! turns the state copies tasks hand over into files, so a task never
//! waits for storage.
//!
//! This module holds the messages between tasks, writer and coordinator,
//! the hooks a caller plugs in and the [`Coordinator`]'s settings;
//! `writer` holds the snapshot writer's thread ([`run_writer`]), `run` the
//! coordinator thread's loop ([`Coordinator::run`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::manifest::SubtaskState;
use super::storage::{Location, Storage};
use super::{CheckpointConfig, CheckpointRecord, CheckpointStats};
use crate::data::CheckpointId;
use crate::error::Result;
use crate::runtime::JobControl;
use crate::state::OperatorSnapshot;
pub use sluice_protocol::control::TaskControl;
pub use sluice_protocol::ids::TaskKey;

mod run;
mod writer;

pub use writer::run_writer;

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
    /// Trigger the first checkpoint at once instead of after an interval
    /// (a new leader that adopted a running attempt: the sinks hold
    /// everything since the previous leader's last completed one).
    pub trigger_at_once: bool,
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

#[cfg(test)]
mod tests;
