//! JSON records into Arrow columns under one strict rule, shared by the
//! Kafka source (`--format json`) and the JSON-lines file source: every
//! record is checked against the schema in one streaming pass
//! ([`check`]: types, integer ranges, nullability, unknown and duplicate
//! fields), so nothing is coerced (a string `"12"` never becomes an
//! integer) or silently dropped (a duplicate key is an error, not "the
//! last one wins"). Records that fit are built into columns: straight
//! from the checked values for flat schemas ([`columns`]), through
//! arrow-json's decoder for nested ones. Records that do not fit are
//! handed back with why, for the caller's bad-record policy.

pub(crate) mod check;
pub(crate) mod columns;

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use sluice_engine::Result;

use check::RecordShape;
use columns::FlatColumns;

/// Decodes JSON records of one schema.
pub(crate) struct JsonDecoder {
    schema: SchemaRef,
    shape: RecordShape,
    /// Flat schemas: checked values go straight to columns.
    flat: Option<FlatColumns>,
    /// Nested schemas: arrow-json builds the columns of checked records.
    nested: Option<arrow::json::reader::Decoder>,
}

impl JsonDecoder {
    pub(crate) fn new(schema: SchemaRef) -> Result<Self> {
        let flat = FlatColumns::new(schema.fields());
        let nested = match flat {
            Some(_) => None,
            None => Some(
                arrow::json::ReaderBuilder::new(schema.clone())
                    .with_strict_mode(true)
                    // Flushed whenever it is full; this only sizes buffers.
                    .with_batch_size(65_536)
                    .build_decoder()?,
            ),
        };
        Ok(JsonDecoder {
            shape: RecordShape::new(schema.fields().clone()),
            schema,
            flat,
            nested,
        })
    }

    /// Decodes `records` (an index the caller knows the record by, and its
    /// bytes; `None` is a record without a value, bad with `missing` as
    /// the reason). Each bad record goes to `bad` with why and is left
    /// out; `bad` returning an error stops decoding with it. Returns the
    /// indices of the records decoded, in order, and their columns.
    pub(crate) fn decode<'a>(
        &mut self,
        records: impl IntoIterator<Item = (usize, Option<&'a [u8]>)>,
        missing: &str,
        bad: &mut dyn FnMut(usize, String) -> Result<()>,
    ) -> Result<(Vec<usize>, Vec<ArrayRef>)> {
        let mut good = Vec::new();
        let mut slots = Vec::with_capacity(self.schema.fields().len());
        let mut batches = Vec::new();
        for (i, bytes) in records {
            let Some(mut bytes) = bytes else {
                bad(i, missing.to_string())?;
                continue;
            };
            if let Err(e) = self.shape.check(bytes, &mut slots) {
                bad(i, e)?;
                continue;
            }
            good.push(i);
            if let Some(cols) = &mut self.flat {
                cols.append(&slots);
                continue;
            }
            let dec = self
                .nested
                .as_mut()
                .expect("arrow-json for a nested schema");
            // The decoder stops taking bytes when its batch is full.
            while !bytes.is_empty() {
                let n = dec.decode(bytes)?;
                bytes = &bytes[n..];
                if !bytes.is_empty() {
                    batches.extend(dec.flush()?);
                }
            }
        }
        let columns = match &mut self.flat {
            Some(cols) => cols.finish(),
            None => {
                let dec = self
                    .nested
                    .as_mut()
                    .expect("arrow-json for a nested schema");
                batches.extend(dec.flush()?);
                arrow::compute::concat_batches(&self.schema, &batches)?
                    .columns()
                    .to_vec()
            }
        };
        Ok((good, columns))
    }
}
