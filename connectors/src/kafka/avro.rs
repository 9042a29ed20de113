//! Avro record values with a given writer schema (plain binary datums, no
//! schema-registry framing). Owns the mapping from an Avro record schema to
//! Arrow fields and from a decoded Avro value to the JSON value the JSON
//! path checks and columnarizes, so both formats share one strict check.
//!
//! Supported types: null, boolean, int, long, float, double, string,
//! enum (as its symbol), records (structs), arrays (lists), unions of null
//! and one type (nullable), timestamp-millis and timestamp-micros.

use std::sync::Arc;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use apache_avro::Schema as AvroSchemaDef;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::Value;
use sluice_engine::{Error, Result};

/// An Avro writer schema and the Arrow fields it decodes into.
#[derive(Debug, Clone, PartialEq)]
pub struct AvroSchema {
    avro: AvroSchemaDef,
    fields: SchemaRef,
}

impl AvroSchema {
    /// Parses an Avro schema (JSON text); its top level must be a record.
    pub fn parse(text: &str) -> Result<Self> {
        let avro = AvroSchemaDef::parse_str(text)
            .map_err(|e| Error::Config(format!("invalid Avro schema: {e}")))?;
        let AvroSchemaDef::Record(r) = &avro else {
            return Err(Error::Config("the Avro schema must be a record".into()));
        };
        let fields = r
            .fields
            .iter()
            .map(|f| field(&f.name, &f.schema))
            .collect::<Result<Vec<_>>>()?;
        Ok(AvroSchema {
            fields: Arc::new(Schema::new(fields)),
            avro,
        })
    }

    /// The Arrow fields of the record.
    pub fn fields(&self) -> &SchemaRef {
        &self.fields
    }

    /// A datum reader for this schema (resolving the schema once, for a
    /// batch of datums).
    pub fn reader(&self) -> Result<GenericDatumReader<'_>> {
        GenericDatumReader::builder(&self.avro)
            .build()
            .map_err(|e| Error::Config(format!("Avro schema: {e}")))
    }

    /// Decodes one datum to the JSON value the JSON checker takes.
    pub fn decode(
        reader: &GenericDatumReader<'_>,
        bytes: &[u8],
    ) -> std::result::Result<Value, String> {
        let mut rest = bytes;
        let v = reader
            .read_value(&mut rest)
            .map_err(|e| format!("invalid Avro datum: {e}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "invalid Avro datum: {} bytes left after the record",
                rest.len()
            ));
        }
        to_json(v)
    }
}

fn field(name: &str, s: &AvroSchemaDef) -> Result<Field> {
    if let AvroSchemaDef::Union(u) = s {
        let v = u.variants();
        let non_null: Vec<&AvroSchemaDef> = v
            .iter()
            .filter(|x| !matches!(x, AvroSchemaDef::Null))
            .collect();
        if non_null.len() == 1 && v.len() == 2 {
            return Ok(Field::new(name, data_type(name, non_null[0])?, true));
        }
        return Err(Error::Config(format!(
            "Avro field '{name}': only unions of null and one type are supported"
        )));
    }
    Ok(Field::new(name, data_type(name, s)?, false))
}

fn data_type(name: &str, s: &AvroSchemaDef) -> Result<DataType> {
    Ok(match s {
        AvroSchemaDef::Boolean => DataType::Boolean,
        AvroSchemaDef::Int => DataType::Int32,
        AvroSchemaDef::Long => DataType::Int64,
        AvroSchemaDef::Float => DataType::Float32,
        AvroSchemaDef::Double => DataType::Float64,
        AvroSchemaDef::String | AvroSchemaDef::Enum(_) => DataType::Utf8,
        AvroSchemaDef::TimestampMillis => DataType::Timestamp(TimeUnit::Millisecond, None),
        AvroSchemaDef::TimestampMicros => DataType::Timestamp(TimeUnit::Microsecond, None),
        AvroSchemaDef::Record(r) => DataType::Struct(Fields::from(
            r.fields
                .iter()
                .map(|f| field(&f.name, &f.schema))
                .collect::<Result<Vec<_>>>()?,
        )),
        AvroSchemaDef::Array(a) => {
            DataType::List(Arc::new(field("item", &a.items)?.with_nullable(true)))
        }
        other => {
            return Err(Error::Config(format!(
            "Avro field '{name}' has type {other:?}, which the Kafka Avro format does not decode"
        )))
        }
    })
}

fn to_json(v: Avro) -> std::result::Result<Value, String> {
    Ok(match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(i) => Value::from(i),
        Avro::Long(i) | Avro::TimestampMillis(i) | Avro::TimestampMicros(i) => Value::from(i),
        Avro::Float(f) => Value::from(f64::from(f)),
        Avro::Double(f) => Value::from(f),
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s),
        Avro::Union(_, inner) => to_json(*inner)?,
        Avro::Array(xs) => Value::Array(xs.into_iter().map(to_json).collect::<Result<_, _>>()?),
        Avro::Record(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| Ok((k, to_json(v)?)))
                .collect::<std::result::Result<_, String>>()?,
        ),
        other => return Err(format!("Avro value {other:?} is not supported")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::format::{Decoder, Format, RawRecords};
    use apache_avro::writer::datum::GenericDatumWriter;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};

    const SCHEMA: &str = r#"{
        "type": "record", "name": "Bid",
        "fields": [
            {"name": "auction", "type": "long"},
            {"name": "price", "type": "double"},
            {"name": "channel", "type": ["null", "string"]},
            {"name": "tags", "type": {"type": "array", "items": "string"}}
        ]
    }"#;

    pub(crate) fn datum(s: &AvroSchema, auction: i64, channel: Option<&str>) -> Vec<u8> {
        let v = Avro::Record(vec![
            ("auction".into(), Avro::Long(auction)),
            ("price".into(), Avro::Double(auction as f64 / 2.0)),
            (
                "channel".into(),
                match channel {
                    Some(c) => Avro::Union(1, Box::new(Avro::String(c.into()))),
                    None => Avro::Union(0, Box::new(Avro::Null)),
                },
            ),
            (
                "tags".into(),
                Avro::Array(vec![Avro::String("a".into()), Avro::String("b".into())]),
            ),
        ]);
        GenericDatumWriter::builder(&s.avro)
            .build()
            .unwrap()
            .write_value_to_vec(v)
            .unwrap()
    }

    #[test]
    fn avro_datums_become_columns_and_bad_bytes_are_reported() {
        let s = AvroSchema::parse(SCHEMA).unwrap();
        assert!(s.fields().field(2).is_nullable());
        assert!(!s.fields().field(0).is_nullable());
        let mut d = Decoder::new(Format::Avro(s.clone())).unwrap();
        let mut r = RawRecords::default();
        r.push(0, None, None, Some(&datum(&s, 7, Some("web"))));
        r.push(1, None, None, Some(&[0xff, 0xff, 0xff]));
        r.push(2, None, None, Some(&datum(&s, 9, None)));
        let mut good = datum(&s, 11, None);
        good.push(0);
        r.push(3, None, None, Some(&good));
        let mut bad = Vec::new();
        let b = d
            .decode(0, &r, &mut |i, e| {
                bad.push((i, e));
                Ok(())
            })
            .unwrap();
        assert_eq!(b.num_rows(), 2);
        let auction = b.column(3).as_primitive::<Int64Type>();
        assert_eq!(auction.values().to_vec(), vec![7, 9]);
        assert_eq!(b.column(4).as_primitive::<Float64Type>().value(1), 4.5);
        let channel = b.column(5).as_string::<i32>();
        assert_eq!(channel.value(0), "web");
        assert!(channel.is_null(1));
        assert_eq!(b.column(6).as_list::<i32>().value(0).len(), 2);
        let idx: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![1, 3]);
        assert!(bad[0].1.contains("invalid Avro datum"), "{}", bad[0].1);
        assert!(bad[1].1.contains("1 bytes left"), "{}", bad[1].1);
    }

    #[test]
    fn unsupported_avro_types_are_refused_at_plan_time() {
        let err = AvroSchema::parse(
            r#"{"type": "record", "name": "R", "fields": [{"name": "m", "type": {"type": "map", "values": "long"}}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("'m'"), "{err}");
        assert!(AvroSchema::parse(r#""long""#).is_err());
    }
}
