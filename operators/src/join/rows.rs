//! The rows a join keeps, as state-table values: per key (and time bucket),
//! a list of `time (8 B) | length (4 B) | row` elements, each row in Arrow's
//! row format over the input's columns, so a list spills to RocksDB as it
//! is and decodes back to columns in one vectorized call.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_row::{RowConverter, Rows, SortField};
use sluice_engine::{Error, Result};

/// Encodes one input's rows and decodes stored ones.
pub(crate) struct RowLists {
    converter: RowConverter,
    types: Vec<DataType>,
}

impl RowLists {
    /// For rows of `schema`. Column types the row format cannot hold are a
    /// plan-time error of the join verbs (see [`RowLists::supports`]).
    pub(crate) fn new(schema: &SchemaRef) -> Result<Self> {
        let types: Vec<DataType> = schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(RowLists {
            converter: RowConverter::new(types.iter().cloned().map(SortField::new).collect())?,
            types,
        })
    }

    /// Whether every column of `schema` can be kept in join state.
    pub(crate) fn supports(schema: &SchemaRef) -> std::result::Result<(), String> {
        let fields: Vec<SortField> = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        if RowConverter::supports_fields(&fields) {
            Ok(())
        } else {
            Err(format!(
                "a join keeps its inputs' rows in Arrow's row format, which cannot hold \
                 every column type of {:?}",
                schema
                    .fields()
                    .iter()
                    .map(|f| format!("{}: {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>()
            ))
        }
    }

    /// The rows of `batch`, encoded.
    pub(crate) fn encode(&self, batch: &RecordBatch) -> Result<Rows> {
        Ok(self.converter.convert_columns(batch.columns())?)
    }

    /// Columns of the given encoded rows, with the input's types
    /// (dictionary columns come back from the row format as their values).
    pub(crate) fn decode<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        let cols = self
            .converter
            .convert_rows(rows.into_iter().map(|r| parser.parse(r)))?;
        cols.into_iter()
            .zip(&self.types)
            .map(|(c, t)| {
                if c.data_type() == t {
                    Ok(c)
                } else {
                    Ok(cast(&c, t)?)
                }
            })
            .collect()
    }
}

/// Appends a row at time `t` to a stored list.
pub(crate) fn append(list: &mut Vec<u8>, t: i64, row: &[u8]) {
    list.extend_from_slice(&t.to_le_bytes());
    list.extend_from_slice(&(row.len() as u32).to_le_bytes());
    list.extend_from_slice(row);
}

/// The (time, row) elements of a stored list.
pub(crate) fn elements(list: &[u8]) -> impl Iterator<Item = Result<(i64, &[u8])>> + '_ {
    let mut rest = list;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let bad = || Error::Checkpoint("a join's stored row list is truncated".into());
        let parsed = (|| {
            let t = i64::from_le_bytes(rest.get(..8).ok_or_else(bad)?.try_into().expect("8"));
            let n = u32::from_le_bytes(rest.get(8..12).ok_or_else(bad)?.try_into().expect("4"));
            let row = rest.get(12..12 + n as usize).ok_or_else(bad)?;
            rest = &rest[12 + n as usize..];
            Ok((t, row))
        })();
        if parsed.is_err() {
            rest = &[];
        }
        Some(parsed)
    })
}

/// An output batch of a join from left and right columns (and more, such
/// as window bounds).
pub(crate) fn joined(schema: &SchemaRef, parts: Vec<Vec<ArrayRef>>) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = parts.into_iter().flatten().collect();
    Ok(RecordBatch::try_new(Arc::clone(schema), cols)?)
}
