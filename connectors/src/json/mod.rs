//! JSON records into Arrow columns under one strict rule, shared by the
//! Kafka source (`--format json`) and the JSON-lines file source: every
//! record is checked against the schema in one streaming pass
//! ([`check`]: types, integer ranges, nullability, unknown and duplicate
//! fields; for flat schemas [`scan`] accepts the records that fit
//! first, without serde, and leaves the others to the check), so nothing
//! is coerced (a string `"12"` never becomes an
//! integer) or silently dropped (a duplicate key is an error, not "the
//! last one wins"). Records that fit are built into columns: straight
//! from the checked values for flat schemas ([`columns`]), through
//! arrow-json's decoder for nested ones. Records that do not fit are
//! handed back with why, for the caller's bad-record policy. Schemas are
//! inferred from sample records the same way for both ([`infer_schema`]).

pub(crate) mod check;
pub(crate) mod columns;
pub(crate) mod scan;

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{Field, Schema, SchemaRef};
use serde_json::Value;
use sluice_engine::{Error, Result};

use check::RecordShape;
use columns::FlatColumns;
use scan::FlatScan;

/// Decodes JSON records of one schema.
pub(crate) struct JsonDecoder {
    schema: SchemaRef,
    shape: RecordShape,
    /// Flat schemas: checked values go straight to columns.
    flat: Option<FlatColumns>,
    /// Flat schemas: the fast path of the check.
    scan: Option<FlatScan>,
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
        let scan = flat.as_ref().and_then(|_| FlatScan::new(schema.fields()));
        Ok(JsonDecoder {
            shape: RecordShape::new(schema.fields().clone()),
            schema,
            flat,
            scan,
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
            // The scanner decides only for records that fit; the check
            // decides the rest and says why.
            let scanned = self
                .scan
                .as_ref()
                .is_some_and(|s| s.scan(bytes, &mut slots));
            if !scanned {
                if let Err(e) = self.shape.check(bytes, &mut slots) {
                    bad(i, e)?;
                    continue;
                }
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

/// The kind of a JSON value as inference sees it (integers and floats are
/// both numbers: they widen to Float64 together).
fn inferred_kind(v: &Value) -> Option<&'static str> {
    match v {
        Value::Null => None,
        Value::Bool(_) => Some("a boolean"),
        Value::Number(_) => Some("a number"),
        Value::String(_) => Some("a string"),
        Value::Array(_) => Some("an array"),
        Value::Object(_) => Some("an object"),
    }
}

/// A top-level field whose sampled values disagree in kind (an integer in
/// most records, a string in one) would be inferred as the type that holds
/// them all, usually a string, and then every usual record would be bad.
/// The values of the kinds most records do not have are left out of the
/// inference instead (the records holding them are bad records when read,
/// under the decode policy), with a warning naming the field.
fn outvote_odd_values(objects: &mut [Value]) {
    let mut kinds: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<&'static str, usize>,
    > = std::collections::BTreeMap::new();
    for o in objects.iter() {
        if let Value::Object(m) = o {
            for (k, v) in m {
                if let Some(kind) = inferred_kind(v) {
                    *kinds.entry(k.clone()).or_default().entry(kind).or_default() += 1;
                }
            }
        }
    }
    for (field, counts) in kinds.into_iter().filter(|(_, c)| c.len() > 1) {
        let (&winner, &most) = counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .expect("more than one kind");
        let total: usize = counts.values().sum();
        // Without a clear majority there is nothing to outvote.
        if most * 2 <= total {
            continue;
        }
        let others: Vec<String> = counts
            .iter()
            .filter(|(k, _)| **k != winner)
            .map(|(k, n)| format!("{k} in {n}"))
            .collect();
        tracing::warn!(
            "JSON schema inference: field '{field}' holds {winner} in {most} sampled records but {}; \
             inferred from the {most} (records that do not fit are bad records; declare a schema to decide otherwise)",
            others.join(", ")
        );
        for o in objects.iter_mut() {
            if let Value::Object(m) = o {
                if let Some(v) = m.get_mut(&field) {
                    if inferred_kind(v).is_some_and(|k| k != winner) {
                        *v = Value::Null;
                    }
                }
            }
        }
    }
}

/// Infers a JSON schema from sample record values: integers → Int64,
/// other numbers → Float64 (a field seen as both becomes Float64),
/// strings → Utf8, booleans → Boolean, objects → structs, arrays → lists;
/// every field nullable, in name order. A top-level field whose values
/// disagree in kind takes the kind most sampled records have (with a
/// warning); the others are then bad records. Values that are not JSON
/// objects are ignored here (they are bad records when the job reads them).
pub(crate) fn infer_schema<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<SchemaRef> {
    let mut objects: Vec<Value> = values
        .into_iter()
        .filter_map(|b| serde_json::from_slice::<Value>(b).ok())
        .filter(Value::is_object)
        .collect();
    if objects.is_empty() {
        return Err(Error::Config(
            "cannot infer a JSON schema: no sampled record is a JSON object".into(),
        ));
    }
    outvote_odd_values(&mut objects);
    let schema = arrow::json::reader::infer_json_schema_from_iterator(objects.iter().map(Ok))?;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    if fields.is_empty() {
        return Err(Error::Config(
            "cannot infer a JSON schema: the sampled objects have no fields".into(),
        ));
    }
    Ok(Arc::new(Schema::new(fields)))
}
