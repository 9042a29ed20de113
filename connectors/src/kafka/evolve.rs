//! Schema evolution of JSON records (opt-in, [`super::KafkaSource::evolve_schema`]):
//! a record that does not fit the current schema but could, once the
//! schema gains its new fields or widens a type compatibly, changes the
//! schema instead of being a bad record.
//!
//! Compatible changes: a new field (top level or inside a struct; added
//! as nullable, after the existing ones, so existing columns keep their
//! positions), an integer field receiving a non-integer number (→
//! float64), a narrower integer receiving a value out of its range (→
//! int64), a field that was never null receiving null or missing
//! (→ nullable), a list's items widening by the same rules. Anything else
//! (a string where a number was, an object where a scalar was, ...) is
//! incompatible: the record stays bad, with the reason, and goes to the
//! decode policy (the dead-letter topic, typically).
//!
//! The check stays strict and single-pass for records that fit; only a
//! batch with a record that does not is looked at again: its misfits are
//! parsed, the schema is merged over them, and the whole batch is decoded
//! again with the merged schema (earlier records of the batch get nulls
//! for the new fields), so every batch has one schema. Every schema a
//! subtask used is kept in its checkpoint state, in order (the history);
//! a restart starts from the merge of all of them.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::Value;
use sluice_engine::{Error, Result};
use tracing::info;

use super::format::{Decoder, Format, RawRecords};

/// The evolving schema of one source subtask.
#[derive(Debug, Clone)]
pub struct Evolution {
    /// Every schema used, oldest first; the last is the current one.
    history: Vec<SchemaRef>,
}

impl Evolution {
    /// Starting from `schema` (the record fields, without the metadata
    /// columns).
    pub fn new(schema: SchemaRef) -> Self {
        Evolution {
            history: vec![schema],
        }
    }

    /// The current schema.
    pub fn current(&self) -> &SchemaRef {
        self.history.last().expect("history is never empty")
    }

    /// Every schema used, oldest first.
    pub fn history(&self) -> &[SchemaRef] {
        &self.history
    }

    /// Takes in a schema of the checkpoint resumed (another subtask's, or
    /// an older one of this): the current schema becomes the merge of
    /// both. Returns whether it changed.
    pub fn absorb(&mut self, other: &Schema) -> Result<bool> {
        let merged = merge_schemas(self.current().fields(), other.fields())
            .map_err(|e| Error::Checkpoint(format!("checkpointed JSON schemas conflict: {e}")))?;
        if &merged == self.current().fields() {
            return Ok(false);
        }
        self.history.push(Arc::new(Schema::new(merged)));
        Ok(true)
    }

    /// Decodes `recs` with `decoder`, evolving the schema (and replacing
    /// the decoder) when records need it. Records that do not fit even
    /// then go to `bad`, their reason saying so.
    pub fn decode(
        &mut self,
        decoder: &mut Decoder,
        partition: i32,
        recs: &RawRecords,
        bad: &mut dyn FnMut(usize, String) -> Result<()>,
    ) -> Result<RecordBatch> {
        let mut misfits = Vec::new();
        let batch = decoder.decode(partition, recs, &mut |i, e| {
            misfits.push((i, e));
            Ok(())
        })?;
        if misfits.is_empty() {
            return Ok(batch);
        }
        let parse = |i: usize| {
            recs.values
                .get(i)
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        };
        let mut fields = self.current().fields().clone();
        for (i, _) in &misfits {
            if let Some(Ok(Some(merged))) = parse(*i).map(|v| evolve(&fields, &v)) {
                fields = merged;
            }
        }
        let batch = if &fields == self.current().fields() {
            batch
        } else {
            let schema = Arc::new(Schema::new(fields));
            let fresh = Decoder::new(Format::Json(schema.clone()))?;
            info!(
                partition,
                fields = ?schema.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect::<Vec<_>>(),
                "JSON schema evolved"
            );
            self.history.push(schema);
            *decoder = fresh;
            misfits.clear();
            decoder.decode(partition, recs, &mut |i, e| {
                misfits.push((i, e));
                Ok(())
            })?
        };
        // What is left does not fit any compatible change: say why.
        let current = self.current().fields().clone();
        for (i, e) in misfits {
            match parse(i).map(|v| evolve(&current, &v)) {
                Some(Err(why)) => bad(i, format!("incompatible schema change: {why}"))?,
                _ => bad(i, e)?,
            }
        }
        Ok(batch)
    }
}

/// The schema `fields` extended so that `record` fits: `Ok(None)` if it
/// fits already (or is not an object), `Err` with the reason if no
/// compatible change makes it fit.
pub fn evolve(fields: &Fields, record: &Value) -> std::result::Result<Option<Fields>, String> {
    let Value::Object(obj) = record else {
        return Ok(None);
    };
    let merged = merge_object(fields, obj, "")?;
    Ok((&merged != fields).then_some(merged))
}

fn merge_object(
    fields: &Fields,
    obj: &serde_json::Map<String, Value>,
    path: &str,
) -> std::result::Result<Fields, String> {
    let mut out: Vec<Field> = Vec::with_capacity(fields.len());
    for f in fields.iter() {
        let name = join(path, f.name());
        let mut f = f.as_ref().clone();
        match obj.get(f.name()) {
            None | Some(Value::Null) => f = f.with_nullable(true),
            Some(v) => {
                let dt = merge_type(f.data_type(), v, &name)?;
                f = f.with_data_type(dt);
            }
        }
        out.push(f);
    }
    for (k, v) in obj {
        if fields.find(k).is_none() {
            out.push(Field::new(k, infer(v), true));
        }
    }
    Ok(Fields::from(out))
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
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `dt` widened so that `v` fits.
fn merge_type(dt: &DataType, v: &Value, path: &str) -> std::result::Result<DataType, String> {
    let incompatible = || {
        Err(format!(
            "field '{path}' is {}, was {dt}: not a compatible change",
            kind(v)
        ))
    };
    match (dt, v) {
        (_, Value::Null) => Ok(dt.clone()),
        (
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64,
            Value::Number(n),
        ) => {
            if let Some(i) = n.as_i64() {
                let fits = match dt {
                    DataType::Int8 => i8::try_from(i).is_ok(),
                    DataType::Int16 => i16::try_from(i).is_ok(),
                    DataType::Int32 => i32::try_from(i).is_ok(),
                    _ => true,
                };
                Ok(if fits { dt.clone() } else { DataType::Int64 })
            } else {
                Ok(DataType::Float64)
            }
        }
        (
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64,
            Value::Number(n),
        ) => Ok(match n.as_u64() {
            Some(u) => {
                let fits = match dt {
                    DataType::UInt8 => u8::try_from(u).is_ok(),
                    DataType::UInt16 => u16::try_from(u).is_ok(),
                    DataType::UInt32 => u32::try_from(u).is_ok(),
                    _ => true,
                };
                if fits {
                    dt.clone()
                } else {
                    DataType::UInt64
                }
            }
            // Negative or fractional.
            None => DataType::Float64,
        }),
        (DataType::Float32 | DataType::Float64, Value::Number(_)) => Ok(DataType::Float64),
        (DataType::Utf8 | DataType::LargeUtf8, Value::String(_)) => Ok(dt.clone()),
        (DataType::Boolean, Value::Bool(_)) => Ok(DataType::Boolean),
        (DataType::Timestamp(_, _), Value::Number(n)) if n.is_i64() => Ok(dt.clone()),
        (DataType::Struct(fields), Value::Object(obj)) => {
            Ok(DataType::Struct(merge_object(fields, obj, path)?))
        }
        (DataType::List(item), Value::Array(items)) => {
            let mut t = item.data_type().clone();
            for v in items {
                t = merge_type(&t, v, &format!("{path}[]"))?;
            }
            Ok(DataType::List(Arc::new(
                item.as_ref().clone().with_data_type(t).with_nullable(true),
            )))
        }
        _ => incompatible(),
    }
}

/// The type of a new field first seen with value `v` (the rules of schema
/// inference: integers int64, other numbers float64; a field first seen
/// as null is a string).
fn infer(v: &Value) -> DataType {
    match v {
        Value::Null | Value::String(_) => DataType::Utf8,
        Value::Bool(_) => DataType::Boolean,
        Value::Number(n) if n.is_i64() => DataType::Int64,
        Value::Number(_) => DataType::Float64,
        Value::Array(items) => {
            let mut t: Option<DataType> = None;
            for v in items.iter().filter(|v| !v.is_null()) {
                t = Some(match t {
                    None => infer(v),
                    Some(t) => merge_type(&t, v, "").unwrap_or(t),
                });
            }
            DataType::List(Arc::new(Field::new_list_field(
                t.unwrap_or(DataType::Utf8),
                true,
            )))
        }
        Value::Object(obj) => DataType::Struct(
            obj.iter()
                .map(|(k, v)| Field::new(k, infer(v), true))
                .collect(),
        ),
    }
}

/// The merge of two schemas of the same source (checkpoint entries of
/// several subtasks, or of several versions): fields of `a` in order,
/// widened where `b` has a wider type, then the fields only `b` has.
pub fn merge_schemas(a: &Fields, b: &Fields) -> std::result::Result<Fields, String> {
    let mut out: Vec<Field> = Vec::with_capacity(a.len());
    for f in a.iter() {
        let merged = match b.find(f.name()) {
            None => f.as_ref().clone().with_nullable(true),
            Some((_, g)) => {
                let dt = merge_types(f.data_type(), g.data_type(), f.name())?;
                f.as_ref()
                    .clone()
                    .with_data_type(dt)
                    .with_nullable(f.is_nullable() || g.is_nullable())
            }
        };
        out.push(merged);
    }
    for g in b.iter() {
        if a.find(g.name()).is_none() {
            out.push(g.as_ref().clone().with_nullable(true));
        }
    }
    Ok(Fields::from(out))
}

fn merge_types(a: &DataType, b: &DataType, path: &str) -> std::result::Result<DataType, String> {
    use DataType::*;
    if a == b {
        return Ok(a.clone());
    }
    let rank = |t: &DataType| match t {
        Int8 => Some(1),
        Int16 => Some(2),
        Int32 => Some(3),
        Int64 => Some(4),
        Float32 | Float64 => Some(5),
        _ => None,
    };
    match (a, b) {
        (Struct(x), Struct(y)) => Ok(Struct(merge_schemas(x, y)?)),
        (List(x), List(y)) => Ok(List(Arc::new(
            x.as_ref()
                .clone()
                .with_data_type(merge_types(x.data_type(), y.data_type(), path)?)
                .with_nullable(true),
        ))),
        _ => match (rank(a), rank(b)) {
            (Some(5), Some(_)) | (Some(_), Some(5)) => Ok(Float64),
            (Some(x), Some(y)) => Ok(if x >= y { a.clone() } else { b.clone() }),
            _ => Err(format!(
                "field '{path}' is {a} in one schema and {b} in another"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Vec<(&str, DataType, bool)>) -> Fields {
        v.into_iter()
            .map(|(n, t, null)| Field::new(n, t, null))
            .collect()
    }

    #[test]
    fn new_fields_are_appended_and_types_widen() {
        let f = fields(vec![
            ("id", DataType::Int64, false),
            ("score", DataType::Int64, true),
            ("name", DataType::Utf8, true),
        ]);
        assert_eq!(
            evolve(&f, &json!({"id": 1, "score": 2, "name": "a"})),
            Ok(None)
        );
        let got = evolve(
            &f,
            &json!({"id": 1, "score": 2.5, "email": "e", "geo": {"lat": 1}}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            fields(vec![
                ("id", DataType::Int64, false),
                ("score", DataType::Float64, true),
                // Missing from the record: stays, nullable.
                ("name", DataType::Utf8, true),
                ("email", DataType::Utf8, true),
                (
                    "geo",
                    DataType::Struct(fields(vec![("lat", DataType::Int64, true)])),
                    true
                ),
            ])
        );
        // A field that was never null turns nullable.
        let got = evolve(&f, &json!({"score": 1})).unwrap().unwrap();
        assert!(got[0].is_nullable());
    }

    #[test]
    fn incompatible_changes_are_reasons() {
        let f = fields(vec![
            ("name", DataType::Utf8, true),
            ("n", DataType::Int64, true),
        ]);
        let e = evolve(&f, &json!({"name": 12})).unwrap_err();
        assert!(e.contains("'name' is an integer, was Utf8"), "{e}");
        assert!(evolve(&f, &json!({"n": "12"})).is_err());
        assert!(evolve(&f, &json!({"n": {"x": 1}})).is_err());
    }

    #[test]
    fn nested_structs_and_lists_evolve() {
        let f = fields(vec![(
            "geo",
            DataType::Struct(fields(vec![("lat", DataType::Int64, true)])),
            true,
        )]);
        let got = evolve(
            &f,
            &json!({"geo": {"lat": 1.5, "city": "x"}, "tags": [1, 2.5]}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            got[0].data_type(),
            &DataType::Struct(fields(vec![
                ("lat", DataType::Float64, true),
                ("city", DataType::Utf8, true)
            ]))
        );
        assert_eq!(
            got[1].data_type(),
            &DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
        );
    }

    #[test]
    fn schemas_of_subtasks_merge() {
        let a = fields(vec![
            ("id", DataType::Int64, false),
            ("x", DataType::Int32, true),
        ]);
        let b = fields(vec![
            ("id", DataType::Int64, false),
            ("x", DataType::Float64, true),
            ("y", DataType::Utf8, true),
        ]);
        assert_eq!(
            merge_schemas(&a, &b).unwrap(),
            fields(vec![
                ("id", DataType::Int64, false),
                ("x", DataType::Float64, true),
                ("y", DataType::Utf8, true),
            ])
        );
        let c = fields(vec![("id", DataType::Utf8, true)]);
        assert!(merge_schemas(&a, &c).is_err());
        let mut ev = Evolution::new(Arc::new(Schema::new(a)));
        assert!(ev.absorb(&Schema::new(b)).unwrap());
        assert_eq!(ev.history().len(), 2);
        // An older version (fewer fields) changes nothing.
        let older = fields(vec![("id", DataType::Int64, false)]);
        assert!(!ev.absorb(&Schema::new(older)).unwrap());
    }
}
