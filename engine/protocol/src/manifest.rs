//! The manifest of a completed checkpoint or savepoint: which files hold
//! which operator subtask's state, with sizes and CRC-32 checksums. It is
//! written last (to a temporary name, then renamed), so its presence marks
//! the checkpoint complete; a checkpoint whose manifest does not parse or
//! whose files do not match it is not restorable.

use serde::{Deserialize, Serialize};

/// Bumped when the layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// File name of the manifest inside a checkpoint directory.
pub const MANIFEST_FILE: &str = "_manifest.json";

/// A state file referenced by a manifest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Path relative to the checkpoint's directory.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the contents.
    pub crc32: u32,
}

/// One file of a RocksDB checkpoint.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbFile {
    /// Its name inside the database directory.
    pub name: String,
    /// Where it is stored. SST files of periodic checkpoints live in the
    /// checkpoint root's `shared/` directory and are referenced by every
    /// checkpoint that contains them (incremental checkpoints).
    pub file: FileRef,
}

/// A RocksDB database in a checkpoint.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbState {
    /// Key groups it holds, `[start, end)`.
    pub key_groups: [usize; 2],
    /// Its files.
    pub files: Vec<DbFile>,
}

/// One subtask's state of one operator.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskState {
    /// Subtask index at the time of the checkpoint.
    pub subtask: usize,
    /// Keyed state (Arrow IPC file with a key-group column).
    pub keyed: Option<FileRef>,
    /// More keyed-state files, one per further schema (a join stores each
    /// side's rows with that side's schema).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyed_more: Vec<FileRef>,
    /// Operator-state entries.
    pub entries: Option<FileRef>,
    /// Keyed state in RocksDB.
    #[serde(default)]
    pub db: Option<DbState>,
    /// Unaligned checkpoints: the records that were in flight into this
    /// subtask when it took its snapshot (after it, before each input
    /// channel's barrier), one Arrow IPC file per logical input, replayed
    /// before new input when the subtask restores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<InFlightFile>,
}

/// Records in flight into one logical input of a subtask at an unaligned
/// checkpoint.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightFile {
    /// The logical input (0, or 1 for a join's second side).
    pub input: usize,
    /// Arrow IPC file of the records, in arrival order per channel.
    pub file: FileRef,
}

/// The state of one node of the job graph.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Node index in the logical graph.
    pub node: usize,
    /// Node name (its verb is checked on restore).
    pub name: String,
    /// The operator's id (explicit or derived, see `LogicalGraph::uids`):
    /// restore matches state to operators by it. Empty in manifests of
    /// older versions, which restore by position.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Parallelism when the checkpoint was taken.
    pub parallelism: usize,
    /// Subtasks that had state.
    pub subtasks: Vec<SubtaskState>,
}

/// Figures recorded with each checkpoint.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointFigures {
    /// From trigger to manifest written, ms.
    pub duration_ms: u64,
    /// Longest barrier alignment of any task, ms.
    pub alignment_ms: u64,
    /// Bytes of state the checkpoint consists of (full size).
    pub bytes: u64,
    /// Bytes uploaded for it (less than `bytes` when SST files were
    /// already stored by an earlier checkpoint).
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// Unaligned checkpoints: bytes of the records that were in flight
    /// between tasks and are stored with the checkpoint.
    #[serde(default)]
    pub in_flight_bytes: u64,
}

/// A completed checkpoint or savepoint.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// Job name.
    pub job: String,
    /// Checkpoint id.
    pub id: u64,
    /// Whether this is a savepoint (self-contained, never deleted by retention).
    pub savepoint: bool,
    /// Whether the job had finished all input: restoring it only commits.
    pub finished: bool,
    /// Attempt number of the run that took it.
    pub attempt: u64,
    /// Trigger time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Key groups of the job.
    pub max_parallelism: usize,
    /// Number of nodes in the job graph (checked on restore).
    pub graph_nodes: usize,
    /// Per-node state.
    pub nodes: Vec<NodeState>,
    /// Duration, alignment and size.
    pub figures: CheckpointFigures,
    /// An unaligned checkpoint: its subtasks snapshotted at different
    /// points of their streams, so it restores only at the parallelism it
    /// was taken at (each subtask from its own state).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unaligned: bool,
}

impl Manifest {
    /// Every file the manifest refers to.
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        self.nodes
            .iter()
            .flat_map(|n| n.subtasks.iter())
            .flat_map(|s| {
                s.keyed
                    .iter()
                    .chain(s.keyed_more.iter())
                    .chain(s.entries.iter())
                    .chain(s.in_flight.iter().map(|f| &f.file))
                    .chain(s.db.iter().flat_map(|d| d.files.iter().map(|f| &f.file)))
            })
    }
}
