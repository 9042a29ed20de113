//! Table mode of the Parquet sink: instead of making finished files
//! visible by name, the sink hands them to a table format, whose commit
//! makes them visible (`crate::iceberg`). The sink keeps writing, rolling
//! and recovering files as always; the table decides what a commit is.
//!
//! Files are renamed to their final names as soon as they are finished
//! (a table's readers only see files its snapshots list). At barrier `n`
//! every subtask records the files it staged for `n` through
//! [`TableFormat::stage`] (durably, before it acknowledges); when `n`
//! completes, subtask 0 alone commits every staged file of every subtask
//! up to `n` ([`TableFormat::commit`]), so a checkpoint is one table
//! commit. On resume subtask 0 recovers for all old subtasks (so that the
//! recovered files are published before it commits them) and the others
//! leave recovery to it.

use std::fmt::Debug;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use sluice_engine::checkpoint::Location;
use sluice_engine::Result;

use super::state::FileEntry;

/// A table format the Parquet sink commits finished files to.
pub trait TableFormat: Send + Sync + Debug {
    /// Where data files go (the table's data directory).
    fn data_location(&self) -> Location;

    /// The schema files of batches of `input` are written with (the
    /// table's types, and what its readers need in the files, such as
    /// field ids).
    fn file_schema(&self, input: &SchemaRef) -> Result<SchemaRef>;

    /// `batch` in `file_schema`.
    fn convert(&self, batch: &RecordBatch, file_schema: &SchemaRef) -> Result<RecordBatch>;

    /// Phase one at barrier `epoch`: records durably the files `subtask`
    /// of job attempt `attempt` staged for it (possibly none).
    fn stage(&self, epoch: u64, subtask: usize, attempt: u64, files: &[FileEntry]) -> Result<()>;

    /// Phase two on subtask 0, `epoch` completed: commits the staged files
    /// of every epoch up to it that is not committed yet, one commit per
    /// epoch. Idempotent.
    fn commit(&self, epoch: u64) -> Result<()>;

    /// Without checkpoints: commits one finished file at once.
    fn commit_now(&self, file: &FileEntry) -> Result<()>;

    /// Resume from checkpoint `restored` on subtask 0, every old subtask's
    /// files published locally by now: commits what `restored` committed
    /// and the table lacks (its staged files, the committed prefixes of
    /// the files open at it) and drops what later checkpoints of earlier
    /// attempts staged.
    fn recover(&self, restored: u64, attempt: u64, files: &[FileEntry]) -> Result<()>;
}
