//! Keys of state-table entries: a batch's key columns as Arrow row-format
//! bytes (equal keys, equal bytes, on either input of a join) and each
//! row's key group (from the hash that routes records, so state lives in
//! the subtask that receives the key), and the way back from bytes to key
//! columns for output.

use arrow::array::{Array, ArrayRef};
use arrow::buffer::NullBuffer;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow_row::{RowConverter, Rows, SortField};
use sluice_engine::hash::hash_columns;
use sluice_engine::state::key_group::key_group_of;
use sluice_engine::Result;

/// The key columns of one input and their row converter.
pub(crate) struct TableKeys {
    columns: Vec<usize>,
    /// `None` without key columns (one global key, empty bytes).
    converter: Option<RowConverter>,
    hashes: Vec<u64>,
}

/// One batch's keys.
pub(crate) struct BatchKeys {
    /// Row-format bytes per row (`None`: every key is empty).
    pub rows: Option<Rows>,
    /// Key group per row.
    pub groups: Vec<usize>,
    /// Rows with a null in some key column are null here.
    pub nulls: Option<NullBuffer>,
}

impl BatchKeys {
    /// Row `i`'s key bytes.
    pub fn key(&self, i: usize) -> &[u8] {
        self.rows.as_ref().map_or(&[], |r| r.row(i).data())
    }

    /// Whether row `i` has a null in a key column.
    pub fn is_null(&self, i: usize) -> bool {
        self.nulls.as_ref().is_some_and(|n| n.is_null(i))
    }
}

impl TableKeys {
    /// Keys at `columns` of the given types (no columns: one global key).
    pub(crate) fn new(columns: Vec<usize>, types: &[DataType]) -> Result<Self> {
        Ok(TableKeys {
            columns,
            converter: if types.is_empty() {
                None
            } else {
                Some(RowConverter::new(
                    types.iter().cloned().map(SortField::new).collect(),
                )?)
            },
            hashes: Vec::new(),
        })
    }

    /// The keys of `batch`.
    pub(crate) fn encode(
        &mut self,
        batch: &RecordBatch,
        max_parallelism: usize,
    ) -> Result<BatchKeys> {
        let cols: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|c| batch.column(*c).clone())
            .collect();
        self.encode_columns(&cols, batch.num_rows(), max_parallelism)
    }

    /// The keys of key columns `cols` (in key order) of `n` rows.
    pub(crate) fn encode_columns(
        &mut self,
        cols: &[ArrayRef],
        n: usize,
        max_parallelism: usize,
    ) -> Result<BatchKeys> {
        hash_columns(cols, n, &mut self.hashes)?;
        let groups = self
            .hashes
            .iter()
            .map(|h| key_group_of(*h, max_parallelism))
            .collect();
        let nulls = cols.iter().fold(None, |acc: Option<NullBuffer>, c| {
            NullBuffer::union(acc.as_ref(), c.logical_nulls().as_ref())
        });
        let rows = match &self.converter {
            Some(c) => Some(c.convert_columns(cols)?),
            None => None,
        };
        Ok(BatchKeys {
            rows,
            groups,
            nulls,
        })
    }

    /// Key columns of stored key bytes (in the order given).
    pub(crate) fn decode<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<ArrayRef>> {
        let Some(c) = &self.converter else {
            return Ok(Vec::new());
        };
        let parser = c.parser();
        Ok(c.convert_rows(keys.into_iter().map(|k| parser.parse(k)))?)
    }
}
