//! Iceberg table metadata (format version 2): the JSON document a
//! catalog points to, the table's schemas with their field ids, the
//! partition spec, snapshots, and the mapping of a stream's Arrow schema
//! onto the table's columns (including adding columns and widening types,
//! Iceberg's schema evolution).
//!
//! Fields this writer does not know (written by other engines) are kept
//! as they are: every struct carries the rest of its JSON object.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sluice_engine::{Error, Result};

use crate::parquet::{PartitionSpec, Transform};

/// The Arrow field metadata key Parquet writers turn into field ids.
pub const FIELD_ID_KEY: &str = "PARQUET:field_id";
/// Partition field ids start here (the spec's convention).
const FIRST_PARTITION_FIELD_ID: i32 = 1000;

/// A table's metadata file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TableMetadata {
    pub format_version: u8,
    pub table_uuid: String,
    pub location: String,
    #[serde(default)]
    pub last_sequence_number: i64,
    pub last_updated_ms: i64,
    pub last_column_id: i32,
    pub schemas: Vec<IcebergSchema>,
    pub current_schema_id: i32,
    pub partition_specs: Vec<SpecJson>,
    pub default_spec_id: i32,
    #[serde(default)]
    pub last_partition_id: i32,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_snapshot_id: Option<i64>,
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    #[serde(default)]
    pub snapshot_log: Vec<Value>,
    #[serde(default)]
    pub metadata_log: Vec<Value>,
    #[serde(default)]
    pub refs: BTreeMap<String, Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One schema of a table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IcebergSchema {
    pub schema_id: i32,
    pub fields: Vec<IcebergField>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A column: its type is a primitive's name or a nested type's object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IcebergField {
    pub id: i32,
    pub name: String,
    pub required: bool,
    #[serde(rename = "type")]
    pub ty: Value,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A partition spec as the metadata lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SpecJson {
    pub spec_id: i32,
    pub fields: Vec<SpecField>,
}

/// One partition field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SpecField {
    pub source_id: i32,
    pub field_id: i32,
    pub name: String,
    pub transform: String,
}

/// A snapshot: the table's state after one commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    pub snapshot_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<i64>,
    #[serde(default)]
    pub sequence_number: i64,
    pub timestamp_ms: i64,
    pub manifest_list: String,
    #[serde(default)]
    pub summary: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<i32>,
}

/// Files, rows and bytes a snapshot adds or removes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Change {
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// The summary of a snapshot (`operation` `append` or `replace`) making
/// `added` and `removed` on top of `parent`, with the running totals.
pub fn summary(
    parent: Option<&Snapshot>,
    operation: &str,
    added: Change,
    removed: Change,
) -> BTreeMap<String, String> {
    let total = |key: &str| parent.map_or(0, |p| p.total(key));
    let mut out = BTreeMap::from([
        ("operation".to_string(), operation.to_string()),
        ("added-data-files".into(), added.files.to_string()),
        ("added-records".into(), added.rows.to_string()),
        ("added-files-size".into(), added.bytes.to_string()),
    ]);
    if removed.files > 0 {
        out.insert("deleted-data-files".into(), removed.files.to_string());
        out.insert("deleted-records".into(), removed.rows.to_string());
        out.insert("removed-files-size".into(), removed.bytes.to_string());
    }
    for (key, add, remove) in [
        ("total-data-files", added.files, removed.files),
        ("total-records", added.rows, removed.rows),
        ("total-files-size", added.bytes, removed.bytes),
        ("total-delete-files", 0, 0),
        ("total-position-deletes", 0, 0),
        ("total-equality-deletes", 0, 0),
    ] {
        let v = (total(key) + add).saturating_sub(remove);
        out.insert(key.to_string(), v.to_string());
    }
    out
}

impl Snapshot {
    /// A running total of its summary (`total-records`, ...; 0 if absent).
    pub fn total(&self, key: &str) -> u64 {
        self.summary
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl TableMetadata {
    /// A new table at `location` with `input`'s columns (all optional,
    /// so files written before a column existed, or without it, read as
    /// nulls) and `partitioning` as its spec.
    pub fn create(
        location: &str,
        uuid: String,
        input: &Schema,
        partitioning: &PartitionSpec,
        now_ms: i64,
    ) -> Result<Self> {
        let mut next = 0;
        let fields = input
            .fields()
            .iter()
            .map(|f| new_field(f, &mut next))
            .collect::<Result<Vec<_>>>()?;
        let schema = IcebergSchema {
            schema_id: 0,
            fields,
            other: Map::new(),
        };
        let spec = spec_of(partitioning, &schema)?;
        let last_partition_id = spec
            .fields
            .iter()
            .map(|f| f.field_id)
            .max()
            .unwrap_or(FIRST_PARTITION_FIELD_ID - 1);
        let mut other = Map::new();
        other.insert("sort-orders".into(), json!([{"order-id": 0, "fields": []}]));
        other.insert("default-sort-order-id".into(), json!(0));
        Ok(TableMetadata {
            format_version: 2,
            table_uuid: uuid,
            location: location.to_string(),
            last_sequence_number: 0,
            last_updated_ms: now_ms,
            last_column_id: next,
            schemas: vec![schema],
            current_schema_id: 0,
            partition_specs: vec![spec],
            default_spec_id: 0,
            last_partition_id,
            properties: BTreeMap::new(),
            current_snapshot_id: None,
            snapshots: Vec::new(),
            snapshot_log: Vec::new(),
            metadata_log: Vec::new(),
            refs: BTreeMap::new(),
            other,
        })
    }

    /// The current schema.
    pub fn schema(&self) -> Result<&IcebergSchema> {
        self.schemas
            .iter()
            .find(|s| s.schema_id == self.current_schema_id)
            .ok_or_else(|| {
                Error::Checkpoint(format!(
                    "Iceberg metadata names schema {} but does not hold it",
                    self.current_schema_id
                ))
            })
    }

    /// The default partition spec.
    pub fn spec(&self) -> Result<&SpecJson> {
        self.partition_specs
            .iter()
            .find(|s| s.spec_id == self.default_spec_id)
            .ok_or_else(|| {
                Error::Checkpoint(format!(
                    "Iceberg metadata names partition spec {} but does not hold it",
                    self.default_spec_id
                ))
            })
    }

    /// The current snapshot.
    pub fn current(&self) -> Option<&Snapshot> {
        let id = self.current_snapshot_id?;
        self.snapshots.iter().find(|s| s.snapshot_id == id)
    }

    /// Refuses a job whose partitioning differs from the table's spec
    /// (its files' partition values would not be the table's).
    pub fn check_spec(&self, partitioning: &PartitionSpec) -> Result<()> {
        let schema = self.schema()?;
        let describe = |fields: Vec<(String, String, String)>| {
            if fields.is_empty() {
                return "unpartitioned".to_string();
            }
            let parts: Vec<String> = fields
                .into_iter()
                .map(|(name, t, col)| format!("{name}={t}({col})"))
                .collect();
            parts.join(",")
        };
        let column = |id: i32| {
            schema
                .fields
                .iter()
                .find(|c| c.id == id)
                .map_or_else(|| format!("#{id}"), |c| c.name.clone())
        };
        let table: Vec<_> = self
            .spec()?
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.transform.clone(), column(f.source_id)))
            .collect();
        let job: Vec<_> = partitioning
            .fields()
            .iter()
            .map(|f| {
                let t = transform_name(f.transform).to_string();
                (f.name.clone(), t, f.source.clone())
            })
            .collect();
        if table == job {
            return Ok(());
        }
        Err(Error::Config(format!(
            "the Iceberg table is partitioned as {}, the job as {}: write with the table's \
             partitioning (or to a new table)",
            describe(table),
            describe(job)
        )))
    }

    /// Makes `snapshot` the current one (the `main` branch's head).
    pub fn add_snapshot(&mut self, snapshot: Snapshot) {
        let id = snapshot.snapshot_id;
        self.last_sequence_number = snapshot.sequence_number;
        self.current_snapshot_id = Some(id);
        self.refs
            .insert("main".into(), json!({"snapshot-id": id, "type": "branch"}));
        self.snapshot_log
            .push(json!({"snapshot-id": id, "timestamp-ms": snapshot.timestamp_ms}));
        self.snapshots.push(snapshot);
    }

    /// Makes the table able to take `input`: adds the columns it lacks
    /// and widens `int` to `long` and `float` to `double` where the input
    /// needs it, as a new current schema. Returns whether anything
    /// changed; a column whose type cannot become the input's is refused.
    pub fn evolve(&mut self, input: &Schema) -> Result<bool> {
        let mut schema = self.schema()?.clone();
        let mut next = self.last_column_id;
        let mut changed = false;
        for f in input.fields() {
            let wanted = iceberg_type(&stored_type(f.data_type(), f.name())?, &mut 0)?;
            match schema.fields.iter_mut().find(|c| c.name == *f.name()) {
                None => {
                    schema.fields.push(new_field(f, &mut next)?);
                    changed = true;
                }
                Some(c) if c.ty.is_string() && wanted.is_string() && c.ty != wanted => {
                    match (c.ty.as_str(), wanted.as_str()) {
                        (Some("int"), Some("long")) | (Some("float"), Some("double")) => {
                            c.ty = wanted;
                            changed = true;
                        }
                        // The table's type holds the input's (an int
                        // column into a long one): cast when writing.
                        (Some("long"), Some("int")) | (Some("double"), Some("float")) => {}
                        (Some(have), Some(got)) => {
                            return Err(Error::Config(format!(
                            "column '{}' is {got} in the stream but {have} in the Iceberg table, \
                                 and Iceberg cannot change a {have} column to {got}",
                            f.name()
                        )))
                        }
                        _ => unreachable!("both types are names"),
                    }
                }
                Some(_) => {}
            }
        }
        if !changed {
            return Ok(false);
        }
        schema.schema_id = self.schemas.iter().map(|s| s.schema_id).max().unwrap_or(0) + 1;
        self.current_schema_id = schema.schema_id;
        self.last_column_id = next;
        self.schemas.push(schema);
        Ok(true)
    }

    /// The schema files of `input` are written with: the table's types
    /// (timestamps in microseconds, small integers widened) and each
    /// field's id, nested ones included.
    pub fn file_schema(&self, input: &Schema) -> Result<SchemaRef> {
        let schema = self.schema()?;
        let fields = input
            .fields()
            .iter()
            .map(|f| {
                let column = schema
                    .fields
                    .iter()
                    .find(|c| c.name == *f.name())
                    .ok_or_else(|| {
                        Error::Internal(format!("column '{}' is not in the table", f.name()))
                    })?;
                let stored = match column.ty.as_str() {
                    Some("long") => match f.data_type() {
                        DataType::Int32 | DataType::Int16 | DataType::Int8 => DataType::Int64,
                        _ => stored_type(f.data_type(), f.name())?,
                    },
                    Some("double") if f.data_type() == &DataType::Float32 => DataType::Float64,
                    _ => stored_type(f.data_type(), f.name())?,
                };
                with_ids(f, &stored, column.id, &column.ty)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// A fresh column for `f` with ids counted on from `next`.
fn new_field(f: &Field, next: &mut i32) -> Result<IcebergField> {
    *next += 1;
    let id = *next;
    let ty = iceberg_type(&stored_type(f.data_type(), f.name())?, next)?;
    Ok(IcebergField {
        id,
        name: f.name().clone(),
        required: false,
        ty,
        other: Map::new(),
    })
}

/// The Arrow type Iceberg stores for `dt` (timestamps in microseconds,
/// small and unsigned integers widened), or why it cannot.
pub fn stored_type(dt: &DataType, path: &str) -> Result<DataType> {
    Ok(match dt {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| {
                    let t = stored_type(f.data_type(), &format!("{path}.{}", f.name()))?;
                    Ok(f.as_ref().clone().with_data_type(t))
                })
                .collect::<Result<Fields>>()?,
        ),
        DataType::List(item) => DataType::List(Arc::new(
            item.as_ref()
                .clone()
                .with_data_type(stored_type(item.data_type(), &format!("{path}[]"))?),
        )),
        DataType::Boolean
        | DataType::Int32
        | DataType::Int64
        | DataType::Float32
        | DataType::Float64
        | DataType::Utf8
        | DataType::Binary
        | DataType::Date32 => dt.clone(),
        other => {
            return Err(Error::Config(format!(
                "column '{path}' is {other}, which the Iceberg sink does not write \
                 (it writes booleans, integers, floats, strings, binary, dates, \
                 timestamps, structs and lists)"
            )))
        }
    })
}

/// The Iceberg type of a stored Arrow type, nested ids from `next`.
fn iceberg_type(dt: &DataType, next: &mut i32) -> Result<Value> {
    Ok(match dt {
        DataType::Boolean => json!("boolean"),
        DataType::Int32 => json!("int"),
        DataType::Int64 => json!("long"),
        DataType::Float32 => json!("float"),
        DataType::Float64 => json!("double"),
        DataType::Utf8 => json!("string"),
        DataType::Binary => json!("binary"),
        DataType::Date32 => json!("date"),
        DataType::Timestamp(_, None) => json!("timestamp"),
        DataType::Timestamp(_, Some(_)) => json!("timestamptz"),
        DataType::Struct(fields) => {
            let fields = fields
                .iter()
                .map(|f| {
                    let field = new_field(f, next)?;
                    serde_json::to_value(field).map_err(|e| Error::Internal(e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            json!({"type": "struct", "fields": fields})
        }
        DataType::List(item) => {
            *next += 1;
            let id = *next;
            let element = iceberg_type(item.data_type(), next)?;
            json!({"type": "list", "element-id": id, "element": element,
                   "element-required": !item.is_nullable()})
        }
        other => return Err(Error::Internal(format!("{other} passed the type check"))),
    })
}

/// `f` as stored (type `stored`), with field id `id` and, for nested
/// types, its children's ids from the table's type `ty`.
fn with_ids(f: &Field, stored: &DataType, id: i32, ty: &Value) -> Result<Field> {
    let dt = match stored {
        DataType::Struct(children) => {
            let columns = ty.get("fields").and_then(Value::as_array);
            DataType::Struct(
                children
                    .iter()
                    .map(|c| {
                        let column = columns
                            .and_then(|cs| {
                                cs.iter().find(|x| x.get("name") == Some(&json!(c.name())))
                            })
                            .ok_or_else(|| {
                                Error::Config(format!(
                                    "nested field '{}.{}' is not in the Iceberg table \
                                     (nested columns do not evolve)",
                                    f.name(),
                                    c.name()
                                ))
                            })?;
                        let cid = column.get("id").and_then(Value::as_i64).unwrap_or(0) as i32;
                        with_ids(c, c.data_type(), cid, &column["type"])
                    })
                    .collect::<Result<Fields>>()?,
            )
        }
        DataType::List(item) => {
            let eid = ty
                .get("element-id")
                .and_then(Value::as_i64)
                .ok_or_else(|| {
                    Error::Config(format!("column '{}' is not a list in the table", f.name()))
                })? as i32;
            DataType::List(Arc::new(with_ids(
                item,
                item.data_type(),
                eid,
                &ty["element"],
            )?))
        }
        other => other.clone(),
    };
    let mut meta = f.metadata().clone();
    meta.insert(FIELD_ID_KEY.to_string(), id.to_string());
    Ok(f.clone().with_data_type(dt).with_metadata(meta))
}

/// The Iceberg spec of a Sluice partition spec over `schema`.
fn spec_of(partitioning: &PartitionSpec, schema: &IcebergSchema) -> Result<SpecJson> {
    let fields = partitioning
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let source = schema
                .fields
                .iter()
                .find(|c| c.name == f.source)
                .ok_or_else(|| {
                    Error::Config(format!("no column '{}' to partition by", f.source))
                })?;
            Ok(SpecField {
                source_id: source.id,
                field_id: FIRST_PARTITION_FIELD_ID + i as i32,
                name: f.name.clone(),
                transform: transform_name(f.transform).to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SpecJson { spec_id: 0, fields })
}

/// Iceberg's name of a transform (`date` and `day` are both its `day`:
/// days since the epoch).
pub fn transform_name(t: Transform) -> &'static str {
    match t {
        Transform::Identity => "identity",
        Transform::Year => "year",
        Transform::Month => "month",
        Transform::Date | Transform::Day => "day",
        Transform::Hour => "hour",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> Schema {
        Schema::new(vec![
            Field::new("country", DataType::Utf8, true),
            Field::new("n", DataType::Int32, false),
            Field::new(
                "_timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
        ])
    }

    #[test]
    fn creates_ids_and_a_spec_and_maps_files_onto_them() {
        let spec = PartitionSpec::parse("country,dt=date(_timestamp)").unwrap();
        let m = TableMetadata::create("file:///t", "u".into(), &input(), &spec, 1).unwrap();
        let s = m.schema().unwrap();
        assert_eq!(
            s.fields
                .iter()
                .map(|f| (f.id, f.ty.clone()))
                .collect::<Vec<_>>()[..3],
            [
                (1, json!("string")),
                (2, json!("int")),
                (3, json!("timestamp"))
            ]
        );
        // The list's element took the next id after its column's.
        assert_eq!(s.fields[3].ty["element-id"], json!(5));
        assert_eq!(m.last_column_id, 5);
        let spec = m.spec().unwrap();
        assert_eq!(spec.fields[1].transform, "day");
        assert_eq!(spec.fields[1].source_id, 3);
        assert_eq!(spec.fields[1].field_id, 1001);
        let files = m.file_schema(&input()).unwrap();
        assert_eq!(files.field(2).metadata()[FIELD_ID_KEY], "3");
        assert_eq!(
            files.field(2).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        let DataType::List(item) = files.field(3).data_type() else {
            panic!("a list")
        };
        assert_eq!(item.metadata()[FIELD_ID_KEY], "5");
        // The JSON round trip keeps what it does not model.
        let text = serde_json::to_string(&m).unwrap();
        let back: TableMetadata = serde_json::from_str(&text).unwrap();
        assert_eq!(back.other["default-sort-order-id"], json!(0));
    }

    #[test]
    fn a_job_partitioned_otherwise_is_refused() {
        let spec = PartitionSpec::parse("country,dt=date(_timestamp)").unwrap();
        let m = TableMetadata::create("file:///t", "u".into(), &input(), &spec, 1).unwrap();
        m.check_spec(&spec).unwrap();
        let day = PartitionSpec::parse("country,dt=day(_timestamp)").unwrap();
        m.check_spec(&day).unwrap();
        let err = m
            .check_spec(&PartitionSpec::parse("h=hour(_timestamp)").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("partitioned as country=identity(country),dt=day(_timestamp), the job as h=hour(_timestamp)"),
            "{err}"
        );
        let err = m.check_spec(&PartitionSpec::new()).unwrap_err().to_string();
        assert!(err.contains("the job as unpartitioned"), "{err}");
    }

    #[test]
    fn evolves_by_adding_columns_and_widening() {
        let mut m =
            TableMetadata::create("file:///t", "u".into(), &input(), &PartitionSpec::new(), 1)
                .unwrap();
        assert!(!m.evolve(&input()).unwrap());
        let mut fields: Vec<Field> = input().fields().iter().map(|f| (**f).clone()).collect();
        fields[1] = Field::new("n", DataType::Int64, true);
        fields.push(Field::new("city", DataType::Utf8, true));
        let wider = Schema::new(fields);
        assert!(m.evolve(&wider).unwrap());
        assert_eq!(m.current_schema_id, 1);
        let s = m.schema().unwrap();
        assert_eq!(s.fields[1].ty, json!("long"));
        assert_eq!((s.fields[4].id, s.fields[4].name.as_str()), (6, "city"));
        // The old schema is kept, and an int input now goes to long.
        assert_eq!(m.schemas.len(), 2);
        assert_eq!(
            m.file_schema(&input()).unwrap().field(1).data_type(),
            &DataType::Int64
        );
        let mut fields: Vec<Field> = input().fields().iter().map(|f| (**f).clone()).collect();
        fields[0] = Field::new("country", DataType::Int64, true);
        let err = m.evolve(&Schema::new(fields)).unwrap_err().to_string();
        assert!(
            err.contains("cannot change a string column to long"),
            "{err}"
        );
    }
}
