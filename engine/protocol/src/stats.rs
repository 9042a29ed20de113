//! Checkpoint figures of a job as executors, the coordinator and the REST
//! API report them.

use serde::{Deserialize, Serialize};

use crate::manifest::CheckpointFigures;

/// Figures of one completed checkpoint, for the job's metrics.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Checkpoint id.
    pub id: u64,
    /// Whether it was a savepoint.
    pub savepoint: bool,
    /// Duration, alignment time and size.
    pub figures: CheckpointFigures,
}

/// Checkpoint metrics of a job (all attempts).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStats {
    /// Checkpoints completed.
    pub completed: u64,
    /// Checkpoints aborted (timeout, declined, superseded by the end of input).
    pub aborted: u64,
    /// Restarts from a checkpoint after a failure.
    pub restarts: u64,
    /// The checkpoint the last attempt started from, if any.
    pub restored_from: Option<u64>,
    /// The most recent completed checkpoints (up to 32), oldest first.
    pub recent: Vec<CheckpointRecord>,
}

impl CheckpointStats {
    /// Counts a completed checkpoint and keeps its figures among the recent ones.
    pub fn record(&mut self, r: CheckpointRecord) {
        self.completed += 1;
        if self.recent.len() == 32 {
            self.recent.remove(0);
        }
        self.recent.push(r);
    }
}
