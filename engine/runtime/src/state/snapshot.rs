//! What an operator hands over at a checkpoint barrier and what it gets back
//! on restore. Keyed state travels as Arrow batches carrying a `_key_group`
//! column, so a restored subtask takes exactly the rows of the key groups it
//! owns at the new parallelism; operator state (source positions, a sink's
//! pending files) travels as opaque entries that every restored subtask
//! receives in full and picks from (Flink's union list state).

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt32Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, UInt32Type};
use arrow::record_batch::RecordBatch;

use crate::data::CheckpointId;
use crate::error::{Error, Result};
use crate::hash::hash_columns;
use crate::state::key_group::key_group_of;
use crate::state::rocks::{DbCheckpoint, RestoredDb};

/// Name of the column that carries each keyed-state row's key group.
pub const KEY_GROUP_COLUMN: &str = "_key_group";

/// One operator subtask's state at a barrier.
#[derive(Debug, Default, Clone)]
pub struct OperatorSnapshot {
    /// Keyed state rows; every batch has a `UInt32` [`KEY_GROUP_COLUMN`].
    pub keyed: Vec<RecordBatch>,
    /// Operator state entries, redistributed as a union on restore.
    pub entries: Vec<Vec<u8>>,
    /// Keyed state held in RocksDB: its native checkpoint, to upload.
    pub db: Option<DbCheckpoint>,
    /// Unaligned checkpoints, the head of a task only: records in flight
    /// into the task at its snapshot, with the logical input each came on.
    pub in_flight: Vec<(usize, RecordBatch)>,
}

impl OperatorSnapshot {
    /// A snapshot holding only operator-state entries.
    pub fn entries(entries: Vec<Vec<u8>>) -> Self {
        OperatorSnapshot {
            entries,
            ..OperatorSnapshot::default()
        }
    }

    /// A snapshot holding only keyed rows.
    pub fn keyed(keyed: Vec<RecordBatch>) -> Self {
        OperatorSnapshot {
            keyed,
            ..OperatorSnapshot::default()
        }
    }

    /// Whether there is nothing to store.
    pub fn is_empty(&self) -> bool {
        self.keyed.iter().all(|b| b.num_rows() == 0)
            && self.entries.is_empty()
            && self.db.is_none()
            && self.in_flight.is_empty()
    }
}

/// The state a subtask restores from.
#[derive(Debug, Default, Clone)]
pub struct RestoredState {
    /// The checkpoint it comes from.
    pub checkpoint: CheckpointId,
    /// Keyed rows of the key groups this subtask owns (with the key-group column).
    pub keyed: Vec<RecordBatch>,
    /// Every operator-state entry of every old subtask of the operator.
    pub entries: Vec<Vec<u8>>,
    /// Local copies of the old RocksDB databases whose key groups overlap
    /// this subtask's (the operator opens its database from them).
    pub dbs: Vec<RestoredDb>,
    /// Records that were in flight into this subtask at an unaligned
    /// checkpoint, with their logical input: the task replays them before
    /// it reads new input (operators ignore this).
    pub in_flight: Vec<(usize, RecordBatch)>,
}

/// `batch` with a [`KEY_GROUP_COLUMN`] appended, computed from `keys` (the
/// key columns, in key-by order) with the hash that routes records.
pub fn with_key_groups(
    batch: RecordBatch,
    keys: &[ArrayRef],
    max_parallelism: usize,
) -> Result<RecordBatch> {
    let mut hashes = Vec::new();
    hash_columns(keys, batch.num_rows(), &mut hashes)?;
    let groups: UInt32Array = hashes
        .iter()
        .map(|h| key_group_of(*h, max_parallelism) as u32)
        .collect();
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(
        KEY_GROUP_COLUMN,
        DataType::UInt32,
        false,
    )));
    let mut cols = batch.columns().to_vec();
    cols.push(Arc::new(groups));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// The rows of `batch` whose key group lies in `groups`.
pub fn filter_key_groups(batch: &RecordBatch, groups: &Range<usize>) -> Result<RecordBatch> {
    let idx = batch.schema().index_of(KEY_GROUP_COLUMN).map_err(|_| {
        Error::Checkpoint(format!("keyed state without a {KEY_GROUP_COLUMN} column"))
    })?;
    let col = batch.column(idx);
    if col.data_type() != &DataType::UInt32 || col.null_count() > 0 {
        return Err(Error::Checkpoint(format!(
            "{KEY_GROUP_COLUMN} must be a non-null UInt32 column"
        )));
    }
    let keep: BooleanArray = col
        .as_primitive::<UInt32Type>()
        .values()
        .iter()
        .map(|g| Some(groups.contains(&(*g as usize))))
        .collect();
    Ok(filter_record_batch(batch, &keep)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::key_group::range_of;
    use arrow::array::Int64Array;

    #[test]
    fn rows_split_by_key_group_cover_every_row_once() {
        let keys: ArrayRef = Arc::new(Int64Array::from_iter_values(0..1000));
        let batch = RecordBatch::try_from_iter([("k", keys.clone())]).unwrap();
        let tagged = with_key_groups(batch, &[keys], 128).unwrap();
        for p in [1, 3, 4] {
            let total: usize = (0..p)
                .map(|s| {
                    filter_key_groups(&tagged, &range_of(s, 128, p))
                        .unwrap()
                        .num_rows()
                })
                .sum();
            assert_eq!(total, 1000);
        }
    }

    #[test]
    fn missing_key_group_column_is_an_error() {
        let keys: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        let batch = RecordBatch::try_from_iter([("k", keys)]).unwrap();
        assert!(filter_key_groups(&batch, &(0..128)).is_err());
    }
}
