//! State partitioning and snapshots. Keyed state is split into a fixed
//! number of key groups (the job's max parallelism); a subtask owns a
//! contiguous range of groups, so state moves by whole groups when
//! parallelism changes. [`snapshot`] holds the form state takes in a
//! checkpoint.

pub mod key_group;
pub mod snapshot;

pub use snapshot::{OperatorSnapshot, RestoredState};
