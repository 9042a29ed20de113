//! Record formats: how Kafka record values become Arrow rows. Owns the
//! output schema of the Kafka source (`_partition`, `_offset`,
//! `_timestamp`, then the decoded fields), the strict check that a JSON
//! value fits a schema, JSON schema inference from sample records, and the
//! textual schema description used by `--schema` files and checkpoints.
//!
//! A record either decodes or is *bad*: the caller gets the row index and a
//! message and applies the decode policy (`super::dlq`). Nothing is dropped
//! here. JSON records are checked against the schema (`crate::json`, the
//! rule the JSON-lines file source follows too) before they become
//! columns, so a record arrow-json
//! would coerce (a string `"12"` into an integer column, a float into an
//! integer) or silently lose (an unknown field) is reported instead. Avro
//! datums become `serde_json` values, checked the same way here.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, Int32Array, Int64Array, StringBuilder};
use arrow::array::{RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::Value;
use sluice_engine::{Error, Result};

use crate::json::JsonDecoder;

/// Name of the partition column.
pub const PARTITION_COLUMN: &str = "_partition";
/// Name of the offset column.
pub const OFFSET_COLUMN: &str = "_offset";
/// Name of the record timestamp column (ms since the epoch; null when the
/// record has none).
pub const TIMESTAMP_COLUMN: &str = "_timestamp";
/// Name of the value column of the raw and string formats.
pub const VALUE_COLUMN: &str = "value";

/// How record values are decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// One JSON object per record, with these fields (missing fields are
    /// null; a field of the wrong type, or one the schema does not name,
    /// makes the record bad).
    Json(SchemaRef),
    /// The value as bytes (`value: Binary`, null for tombstones).
    Raw,
    /// The value as UTF-8 text (`value: Utf8`); invalid UTF-8 is bad.
    String,
    /// One Avro datum per record, written with this schema; decoded
    /// values are checked like JSON ones.
    Avro(super::avro::AvroSchema),
}

impl Format {
    /// The decoded fields (without the metadata columns).
    pub fn value_fields(&self) -> Fields {
        match self {
            Format::Json(s) => s.fields().clone(),
            Format::Avro(a) => a.fields().fields().clone(),
            Format::Raw => Fields::from(vec![Field::new(VALUE_COLUMN, DataType::Binary, true)]),
            Format::String => Fields::from(vec![Field::new(VALUE_COLUMN, DataType::Utf8, true)]),
        }
    }

    /// The source's output schema: metadata columns, then the value fields.
    pub fn output_schema(&self) -> Result<SchemaRef> {
        let mut fields = metadata_fields();
        for f in self.value_fields().iter() {
            if fields.iter().any(|m| m.name() == f.name()) {
                return Err(Error::Config(format!(
                    "the record field '{}' clashes with the Kafka source's metadata column of that name",
                    f.name()
                )));
            }
            if let Format::Json(_) | Format::Avro(_) = self {
                check_supported(f.data_type(), f.name())?;
            }
            fields.push(f.as_ref().clone());
        }
        Ok(Arc::new(Schema::new(fields)))
    }
}

fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new(PARTITION_COLUMN, DataType::Int32, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
        Field::new(
            TIMESTAMP_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
    ]
}

fn check_supported(dt: &DataType, path: &str) -> Result<()> {
    match dt {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Boolean
        | DataType::Timestamp(_, None) => Ok(()),
        DataType::Struct(fields) => fields
            .iter()
            .try_for_each(|f| check_supported(f.data_type(), &format!("{path}.{}", f.name()))),
        DataType::List(item) => check_supported(item.data_type(), &format!("{path}[]")),
        other => Err(Error::Config(format!(
            "JSON field '{path}' has type {other}, which the Kafka JSON format does not decode"
        ))),
    }
}

/// Record values (and keys) of one partition, copied out of the consumer
/// so they outlive the message: one buffer per column, not per record.
#[derive(Debug, Default)]
pub struct RawRecords {
    /// Offsets, ascending.
    pub offsets: Vec<i64>,
    /// Record timestamps (ms), when the record has one.
    pub timestamps: Vec<Option<i64>>,
    /// Record values.
    pub values: Blobs,
    /// Record keys (kept for dead letters).
    pub keys: Blobs,
}

impl RawRecords {
    /// Records held.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }
    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
    /// Forgets the records, keeping the buffers' capacity (the source
    /// reuses one set of buffers batch after batch instead of growing
    /// fresh ones).
    pub fn clear(&mut self) {
        self.offsets.clear();
        self.timestamps.clear();
        self.values.clear();
        self.keys.clear();
    }
    /// Appends one record.
    pub fn push(&mut self, offset: i64, ts: Option<i64>, key: Option<&[u8]>, value: Option<&[u8]>) {
        self.offsets.push(offset);
        self.timestamps.push(ts);
        self.keys.push(key);
        self.values.push(value);
    }
}

/// Optional byte strings in one contiguous buffer.
#[derive(Debug, Default)]
pub struct Blobs {
    data: Vec<u8>,
    ends: Vec<usize>,
    present: Vec<bool>,
}

impl Blobs {
    fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.present.clear();
    }
    fn push(&mut self, b: Option<&[u8]>) {
        if let Some(b) = b {
            self.data.extend_from_slice(b);
        }
        self.ends.push(self.data.len());
        self.present.push(b.is_some());
    }
    /// The `i`-th byte string, `None` when absent.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        if !self.present[i] {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.data[start..self.ends[i]])
    }
}

/// Why a record without a value is bad in the decoded formats.
const TOMBSTONE: &str = "record has no value (tombstone)";

/// Turns [`RawRecords`] into record batches of the source's output schema.
pub struct Decoder {
    format: Format,
    schema: SchemaRef,
    /// Avro: builds the columns of the decoded values.
    json: Option<arrow::json::reader::Decoder>,
    /// JSON: checks records and builds their columns.
    records: Option<JsonDecoder>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("format", &self.format)
            .finish()
    }
}

impl Decoder {
    /// A decoder for `format`.
    pub fn new(format: Format) -> Result<Self> {
        let schema = format.output_schema()?;
        let records = match &format {
            Format::Json(s) => Some(JsonDecoder::new(s.clone())?),
            _ => None,
        };
        // arrow-json builds the columns of Avro values.
        let json_fields = match &format {
            Format::Avro(a) => Some(a.fields().clone()),
            _ => None,
        };
        let json = match json_fields {
            Some(s) => Some(
                arrow::json::ReaderBuilder::new(s)
                    .with_strict_mode(true)
                    // serialize() takes all rows at once; this only sizes buffers.
                    .with_batch_size(65_536)
                    .build_decoder()?,
            ),
            _ => None,
        };
        Ok(Decoder {
            format,
            schema,
            json,
            records,
        })
    }

    /// The output schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `recs` of `partition`. Each bad record is passed to `bad`
    /// (its index in `recs` and why) and left out of the batch; `bad`
    /// returning an error stops decoding with that error.
    pub fn decode(
        &mut self,
        partition: i32,
        recs: &RawRecords,
        bad: &mut dyn FnMut(usize, String) -> Result<()>,
    ) -> Result<RecordBatch> {
        let mut good: Vec<usize> = Vec::with_capacity(recs.len());
        let values: ArrayRef = match &self.format {
            Format::Raw => {
                let mut b = BinaryBuilder::with_capacity(recs.len(), recs.values.data.len());
                for i in 0..recs.len() {
                    b.append_option(recs.values.get(i));
                    good.push(i);
                }
                Arc::new(b.finish())
            }
            Format::String => {
                let mut b = StringBuilder::with_capacity(recs.len(), recs.values.data.len());
                for i in 0..recs.len() {
                    match recs.values.get(i).map(std::str::from_utf8) {
                        None => b.append_null(),
                        Some(Ok(s)) => b.append_value(s),
                        Some(Err(e)) => {
                            bad(i, format!("value is not UTF-8: {e}"))?;
                            continue;
                        }
                    }
                    good.push(i);
                }
                Arc::new(b.finish())
            }
            Format::Json(_) => {
                let dec = self.records.as_mut().expect("JSON decoder for JSON format");
                let (good, columns) = dec.decode(
                    (0..recs.len()).map(|i| (i, recs.values.get(i))),
                    TOMBSTONE,
                    bad,
                )?;
                return self.with_metadata(partition, recs, &good, columns);
            }
            Format::Avro(a) => {
                let fields = a.fields().clone();
                let reader = a.reader()?;
                let mut rows: Vec<Value> = Vec::with_capacity(recs.len());
                for i in 0..recs.len() {
                    let parsed = match recs.values.get(i) {
                        None => Err(TOMBSTONE.to_string()),
                        Some(bytes) => super::avro::AvroSchema::decode(&reader, bytes),
                    }
                    .and_then(|v| check_object(&v, fields.fields(), "").map(|_| v));
                    match parsed {
                        Ok(v) => {
                            rows.push(v);
                            good.push(i);
                        }
                        Err(e) => bad(i, e)?,
                    }
                }
                let dec = self.json.as_mut().expect("JSON decoder for Avro format");
                dec.serialize(&rows)?;
                let batch = match dec.flush()? {
                    Some(b) => b,
                    None => RecordBatch::new_empty(fields.clone()),
                };
                return self.with_metadata(partition, recs, &good, batch.columns().to_vec());
            }
        };
        self.with_metadata(partition, recs, &good, vec![values])
    }

    fn with_metadata(
        &self,
        partition: i32,
        recs: &RawRecords,
        good: &[usize],
        values: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(vec![partition; good.len()])),
            Arc::new(Int64Array::from_iter_values(
                good.iter().map(|&i| recs.offsets[i]),
            )),
            Arc::new(TimestampMillisecondArray::from_iter(
                good.iter().map(|&i| recs.timestamps[i]),
            )),
        ];
        cols.extend(values);
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

/// Checks that `v` is an object whose fields fit `fields`.
fn check_object(v: &Value, fields: &Fields, path: &str) -> Result<(), String> {
    let Value::Object(map) = v else {
        return Err(format!(
            "{} is {}, expected an object",
            if path.is_empty() { "record" } else { path },
            kind(v)
        ));
    };
    for (name, _) in map.iter() {
        if !fields.iter().any(|f| f.name() == name) {
            return Err(format!("unknown field '{}'", join(path, name)));
        }
    }
    for f in fields.iter() {
        let p = join(path, f.name());
        match map.get(f.name()) {
            None | Some(Value::Null) if f.is_nullable() => {}
            None | Some(Value::Null) => return Err(format!("field '{p}' is missing or null")),
            Some(x) => check_value(x, f.data_type(), &p)?,
        }
    }
    Ok(())
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_value(v: &Value, dt: &DataType, path: &str) -> Result<(), String> {
    let fits = match dt {
        DataType::Int8 => v.as_i64().is_some_and(|x| i8::try_from(x).is_ok()),
        DataType::Int16 => v.as_i64().is_some_and(|x| i16::try_from(x).is_ok()),
        DataType::Int32 => v.as_i64().is_some_and(|x| i32::try_from(x).is_ok()),
        DataType::Int64 | DataType::Timestamp(_, None) => v.is_i64(),
        DataType::UInt8 => v.as_u64().is_some_and(|x| u8::try_from(x).is_ok()),
        DataType::UInt16 => v.as_u64().is_some_and(|x| u16::try_from(x).is_ok()),
        DataType::UInt32 => v.as_u64().is_some_and(|x| u32::try_from(x).is_ok()),
        DataType::UInt64 => v.is_u64(),
        DataType::Float32 | DataType::Float64 => v.is_number(),
        DataType::Utf8 | DataType::LargeUtf8 => v.is_string(),
        DataType::Boolean => v.is_boolean(),
        DataType::Struct(fields) => return check_object(v, fields, path),
        DataType::List(item) => {
            let Value::Array(xs) = v else {
                return Err(format!("field '{path}' is {}, expected an array", kind(v)));
            };
            for x in xs {
                match x {
                    Value::Null if item.is_nullable() => {}
                    _ => check_value(x, item.data_type(), &format!("{path}[]"))?,
                }
            }
            true
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!("field '{path}' is {}, expected {dt}", kind(v)))
    }
}

/// Infers a JSON schema from sample record values: see
/// `crate::json::infer_schema` (the JSON-lines file source infers the
/// same way).
pub fn infer_json_schema<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<SchemaRef> {
    crate::json::infer_schema(values)
}

/// The textual form of a JSON schema (for `--schema` files and
/// checkpoints): an array of `{"name", "type", "nullable"}` where `type` is
/// `int8`…`int64`, `uint8`…`uint64`, `float32`, `float64`, `string`,
/// `bool`, `timestamp_ms`, `timestamp_us`, `{"struct": [fields]}` or
/// `{"list": type}`. `nullable` defaults to true.
pub fn schema_to_json(schema: &Schema) -> Result<Value> {
    fields_to_json(schema.fields())
}

fn fields_to_json(fields: &Fields) -> Result<Value> {
    fields
        .iter()
        .map(|f| {
            Ok(serde_json::json!({
                "name": f.name(),
                "type": type_to_json(f.data_type())?,
                "nullable": f.is_nullable(),
            }))
        })
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}

fn type_to_json(dt: &DataType) -> Result<Value> {
    Ok(Value::String(
        match dt {
            DataType::Int8 => "int8",
            DataType::Int16 => "int16",
            DataType::Int32 => "int32",
            DataType::Int64 => "int64",
            DataType::UInt8 => "uint8",
            DataType::UInt16 => "uint16",
            DataType::UInt32 => "uint32",
            DataType::UInt64 => "uint64",
            DataType::Float32 => "float32",
            DataType::Float64 => "float64",
            DataType::Utf8 | DataType::LargeUtf8 => "string",
            DataType::Boolean => "bool",
            DataType::Timestamp(TimeUnit::Millisecond, None) => "timestamp_ms",
            DataType::Timestamp(TimeUnit::Microsecond, None) => "timestamp_us",
            DataType::Struct(fields) => {
                return Ok(serde_json::json!({ "struct": fields_to_json(fields)? }))
            }
            DataType::List(item) => {
                return Ok(serde_json::json!({ "list": type_to_json(item.data_type())? }))
            }
            other => {
                return Err(Error::Config(format!(
                    "type {other} has no textual form in Kafka JSON schemas"
                )))
            }
        }
        .to_string(),
    ))
}

/// Parses the textual form written by [`schema_to_json`].
pub fn schema_from_json(v: &Value) -> Result<SchemaRef> {
    Ok(Arc::new(Schema::new(fields_from_json(v)?)))
}

fn fields_from_json(v: &Value) -> Result<Fields> {
    let bad = |m: String| Error::Config(format!("invalid JSON schema: {m}"));
    let Value::Array(items) = v else {
        return Err(bad("expected an array of fields".into()));
    };
    items
        .iter()
        .map(|f| {
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("field without a name: {f}")))?;
            let ty = f
                .get("type")
                .ok_or_else(|| bad(format!("field '{name}' has no type")))?;
            let nullable = f.get("nullable").and_then(Value::as_bool).unwrap_or(true);
            Ok(Field::new(name, type_from_json(ty)?, nullable))
        })
        .collect::<Result<Vec<_>>>()
        .map(Fields::from)
}

fn type_from_json(v: &Value) -> Result<DataType> {
    if let Some(s) = v.get("struct") {
        return Ok(DataType::Struct(fields_from_json(s)?));
    }
    if let Some(item) = v.get("list") {
        return Ok(DataType::List(Arc::new(Field::new(
            "item",
            type_from_json(item)?,
            true,
        ))));
    }
    Ok(match v.as_str() {
        Some("int8") => DataType::Int8,
        Some("int16") => DataType::Int16,
        Some("int32") => DataType::Int32,
        Some("int64") => DataType::Int64,
        Some("uint8") => DataType::UInt8,
        Some("uint16") => DataType::UInt16,
        Some("uint32") => DataType::UInt32,
        Some("uint64") => DataType::UInt64,
        Some("float32") => DataType::Float32,
        Some("float64") => DataType::Float64,
        Some("string") => DataType::Utf8,
        Some("bool") => DataType::Boolean,
        Some("timestamp_ms") => DataType::Timestamp(TimeUnit::Millisecond, None),
        Some("timestamp_us") => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ => {
            return Err(Error::Config(format!(
                "invalid JSON schema: unknown type {v}"
            )))
        }
    })
}

#[cfg(test)]
mod tests;
