//! Operator state. Keyed state is split into a fixed number of key groups
//! (the job's max parallelism); a subtask owns a contiguous range of
//! groups, so state moves by whole groups when parallelism changes.
//!
//! - [`table`]: the one state layer every stateful operator uses — a table
//!   of `(key group, namespace, key) → value` entries; on the heap backend
//!   the table is the state, on RocksDB a bounded write-back cache in front
//!   of it.
//! - [`store`]: an operator subtask's tables on the configured backend,
//!   their shared cache budget, restore and snapshots.
//! - [`keyed`]: the keyed-state API user code programs against (value,
//!   list and map states with namespaces, timers), over tables.
//! - [`rocks`]: everything that names RocksDB (the database, its
//!   checkpoints, the store behind a table).
//! - [`snapshot`]: the form state takes in a checkpoint; [`key_group`] the
//!   key-group arithmetic.

pub mod key_group;
pub mod keyed;
pub mod rocks;
pub mod snapshot;
pub mod store;
pub mod table;

pub use snapshot::{OperatorSnapshot, RestoredState};

use std::path::PathBuf;

use crate::error::{Error, Result};

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

impl StateBackend {
    /// Whether this build can run the backend: RocksDB needs
    /// sluice-engine's `rocksdb` feature (on by default). `Env::execute`
    /// and `Env::start` check it before anything runs.
    pub fn check_available(&self) -> Result<()> {
        match self {
            StateBackend::RocksDb(_) if !cfg!(feature = "rocksdb") => {
                Err(rocksdb_unavailable("the RocksDB state backend was chosen"))
            }
            _ => Ok(()),
        }
    }
}

/// The error for RocksDB state in a build without the `rocksdb` feature.
pub(crate) fn rocksdb_unavailable(what: &str) -> Error {
    Error::Config(format!(
        "{what}, but this job was built without sluice-engine's `rocksdb` feature; \
         enable it (it is on by default) or use StateBackend::Memory"
    ))
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
