//! State partitioning and snapshots. Keyed state is split into a fixed
//! number of key groups (the job's max parallelism); a subtask owns a
//! contiguous range of groups, so state moves by whole groups when
//! parallelism changes. [`snapshot`] holds the form state takes in a
//! checkpoint; [`rocks`] the RocksDB backend; [`keyed`] the keyed-state
//! API (value, list and map states with namespaces) on either backend.

pub mod key_group;
pub mod keyed;
pub mod rocks;
pub mod snapshot;

pub use snapshot::{OperatorSnapshot, RestoredState};

use std::path::PathBuf;

/// Where operators keep keyed state while the job runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StateBackend {
    /// On the heap; snapshots are Arrow IPC files (fast, bounded by memory).
    #[default]
    Memory,
    /// In RocksDB on local disk (state larger than memory); snapshots are
    /// incremental uploads of its SST files.
    RocksDb(rocks::RocksConfig),
}

/// The backend plus the local directory operators keep databases in.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSettings {
    /// Backend.
    pub backend: StateBackend,
    /// Local working directory (per job run; databases are deleted on exit).
    pub local_dir: PathBuf,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            backend: StateBackend::Memory,
            local_dir: std::env::temp_dir().join("sluice-state"),
        }
    }
}
