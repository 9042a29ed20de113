//! Newtype ids and the checkpoint barrier: the small values that travel in
//! control frames and on stream edges alike.

use serde::{Deserialize, Serialize};

/// Identifies one checkpoint of a job.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct CheckpointId(pub u64);

/// What a barrier asks of the operators it passes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BarrierKind {
    /// A periodic checkpoint.
    Checkpoint,
    /// A user-triggered, self-contained savepoint.
    Savepoint,
    /// A savepoint after which the job stops.
    StopWithSavepoint,
    /// The checkpoint taken once every task has consumed all its input; it
    /// commits the last epoch of a bounded job.
    EndOfInput,
}

/// A Chandy–Lamport checkpoint barrier.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Barrier {
    /// Which checkpoint.
    pub id: CheckpointId,
    /// Trigger time (ms since epoch), for metrics.
    pub timestamp: i64,
    /// Checkpoint, savepoint, or stop-with-savepoint.
    pub kind: BarrierKind,
}

/// A subtask of a vertex.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    /// Vertex index in the physical plan.
    pub vertex: usize,
    /// Subtask index.
    pub subtask: usize,
}
