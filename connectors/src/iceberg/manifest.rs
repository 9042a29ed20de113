//! Iceberg's Avro files: a manifest (the data files one commit adds,
//! with their partition values) and a manifest list (every manifest of a
//! snapshot). The Avro schemas are the spec's v2 ones with their field
//! ids, as Java's and PyIceberg's writers write them; readers resolve
//! them by those ids. The optional column statistics (sizes, counts,
//! bounds) are left out: Iceberg's maps are Avro arrays tagged
//! `logicalType: map`, which the Avro crate does not keep, and readers
//! take an absent optional field as null (no pruning by bounds).

use apache_avro::types::Value;
use apache_avro::{Codec, DeflateSettings, Reader, Schema, Writer};
use serde_json::json;
use sluice_engine::{Error, Result};

use super::metadata::{SpecJson, TableMetadata};
use crate::parquet::PartitionValue;

/// One data file a commit adds.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// Its full location (`file:///…`).
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// One value per field of the table's partition spec.
    pub partition: Vec<PartitionValue>,
}

fn avro(what: &str, e: impl std::fmt::Display) -> Error {
    Error::connector("iceberg", format!("{what}: {e}"))
}

/// The Avro type of a partition field: what its transform yields.
fn partition_type(
    meta: &TableMetadata,
    transform: &str,
    source_id: i32,
) -> Result<serde_json::Value> {
    let date = json!({"type": "int", "logicalType": "date"});
    Ok(match transform {
        "day" => date,
        "hour" | "month" | "year" => json!("int"),
        "identity" => {
            let column = meta
                .schema()?
                .fields
                .iter()
                .find(|c| c.id == source_id)
                .ok_or_else(|| avro("partition spec", format!("no column {source_id}")))?;
            match column.ty.as_str() {
                Some("string") => json!("string"),
                Some("int") => json!("int"),
                Some("long") => json!("long"),
                Some("boolean") => json!("boolean"),
                Some("date") => date,
                other => {
                    return Err(Error::Config(format!(
                        "the Iceberg sink partitions by identity on strings, integers, \
                         booleans and dates, not {other:?} ('{}')",
                        column.name
                    )))
                }
            }
        }
        other => return Err(Error::Config(format!("unsupported transform {other}"))),
    })
}

/// The manifest entry schema for `spec`.
fn entry_schema(meta: &TableMetadata, spec: &SpecJson) -> Result<Schema> {
    let partition = spec
        .fields
        .iter()
        .map(|f| {
            Ok(
                json!({"name": f.name, "field-id": f.field_id, "default": null,
                      "type": ["null", partition_type(meta, &f.transform, f.source_id)?]}),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let schema = json!({"type": "record", "name": "manifest_entry", "fields": [
        {"name": "status", "type": "int", "field-id": 0},
        {"name": "snapshot_id", "type": ["null", "long"], "default": null, "field-id": 1},
        {"name": "sequence_number", "type": ["null", "long"], "default": null, "field-id": 3},
        {"name": "file_sequence_number", "type": ["null", "long"], "default": null, "field-id": 4},
        {"name": "data_file", "field-id": 2, "type": {"type": "record", "name": "r2", "fields": [
            {"name": "content", "type": "int", "field-id": 134},
            {"name": "file_path", "type": "string", "field-id": 100},
            {"name": "file_format", "type": "string", "field-id": 101},
            {"name": "partition", "field-id": 102,
             "type": {"type": "record", "name": "r102", "fields": partition}},
            {"name": "record_count", "type": "long", "field-id": 103},
            {"name": "file_size_in_bytes", "type": "long", "field-id": 104},
            {"name": "key_metadata", "type": ["null", "bytes"], "default": null, "field-id": 131},
            {"name": "split_offsets", "default": null, "field-id": 132,
             "type": ["null", {"type": "array", "element-id": 133, "items": "long"}]},
            {"name": "equality_ids", "default": null, "field-id": 135,
             "type": ["null", {"type": "array", "element-id": 136, "items": "int"}]},
            {"name": "sort_order_id", "type": ["null", "int"], "default": null, "field-id": 140}
        ]}}
    ]});
    Schema::parse(&schema).map_err(|e| avro("the manifest schema", e))
}

fn list_schema() -> Result<Schema> {
    let schema = json!({"type": "record", "name": "manifest_file", "fields": [
        {"name": "manifest_path", "type": "string", "field-id": 500},
        {"name": "manifest_length", "type": "long", "field-id": 501},
        {"name": "partition_spec_id", "type": "int", "field-id": 502},
        {"name": "content", "type": "int", "field-id": 517},
        {"name": "sequence_number", "type": "long", "field-id": 515},
        {"name": "min_sequence_number", "type": "long", "field-id": 516},
        {"name": "added_snapshot_id", "type": "long", "field-id": 503},
        {"name": "added_files_count", "type": "int", "field-id": 504},
        {"name": "existing_files_count", "type": "int", "field-id": 505},
        {"name": "deleted_files_count", "type": "int", "field-id": 506},
        {"name": "added_rows_count", "type": "long", "field-id": 512},
        {"name": "existing_rows_count", "type": "long", "field-id": 513},
        {"name": "deleted_rows_count", "type": "long", "field-id": 514},
        {"name": "partitions", "default": null, "field-id": 507, "type": ["null", {
            "type": "array", "element-id": 508, "items": {"type": "record", "name": "r508",
            "fields": [
                {"name": "contains_null", "type": "boolean", "field-id": 509},
                {"name": "contains_nan", "type": ["null", "boolean"], "default": null, "field-id": 518},
                {"name": "lower_bound", "type": ["null", "bytes"], "default": null, "field-id": 510},
                {"name": "upper_bound", "type": ["null", "bytes"], "default": null, "field-id": 511}
            ]}}]},
        {"name": "key_metadata", "type": ["null", "bytes"], "default": null, "field-id": 519}
    ]});
    Schema::parse(&schema).map_err(|e| avro("the manifest list schema", e))
}

/// A writer of Iceberg's Avro files. Deflate, as Java and PyIceberg
/// write them: PyIceberg takes a file that names no codec for gzip.
fn writer<'a>(schema: &'a Schema, what: &str) -> Result<Writer<'a, Vec<u8>>> {
    Writer::builder()
        .schema(schema)
        .writer(Vec::new())
        .codec(Codec::Deflate(DeflateSettings::default()))
        .build()
        .map_err(|e| avro(what, e))
}

fn null() -> Value {
    Value::Union(0, Box::new(Value::Null))
}

fn some(v: Value) -> Value {
    Value::Union(1, Box::new(v))
}

/// The Avro value of a partition value of an Avro type.
fn partition_value(v: &PartitionValue, ty: &serde_json::Value) -> Result<Value> {
    let Some(v) = (match v {
        PartitionValue::Null => None,
        PartitionValue::Bool(b) => Some(Value::Boolean(*b)),
        PartitionValue::Str(s) => Some(Value::String(s.clone())),
        PartitionValue::Int(i) => Some(if ty.get("logicalType").is_some() {
            Value::Date(narrow(*i)?)
        } else if ty == "long" {
            Value::Long(*i)
        } else {
            Value::Int(narrow(*i)?)
        }),
    }) else {
        return Ok(null());
    };
    Ok(some(v))
}

fn narrow(i: i64) -> Result<i32> {
    i32::try_from(i).map_err(|_| avro("partition value", format!("{i} is out of an int's range")))
}

/// The manifest entries of `files`, added by `snapshot` under `spec`.
pub fn added_entries(
    meta: &TableMetadata,
    spec: &SpecJson,
    snapshot: i64,
    files: &[DataFile],
) -> Result<Vec<Value>> {
    let types = spec
        .fields
        .iter()
        .map(|f| partition_type(meta, &f.transform, f.source_id))
        .collect::<Result<Vec<_>>>()?;
    files
        .iter()
        .map(|f| {
            let partition = spec
                .fields
                .iter()
                .zip(&types)
                .enumerate()
                .map(|(i, (field, ty))| {
                    let v = f.partition.get(i).unwrap_or(&PartitionValue::Null);
                    Ok((field.name.clone(), partition_value(v, ty)?))
                })
                .collect::<Result<Vec<_>>>()?;
            let data_file = Value::Record(vec![
                ("content".into(), Value::Int(0)),
                ("file_path".into(), Value::String(f.path.clone())),
                ("file_format".into(), Value::String("PARQUET".into())),
                ("partition".into(), Value::Record(partition)),
                ("record_count".into(), Value::Long(f.rows as i64)),
                ("file_size_in_bytes".into(), Value::Long(f.bytes as i64)),
                ("key_metadata".into(), null()),
                ("split_offsets".into(), null()),
                ("equality_ids".into(), null()),
                ("sort_order_id".into(), null()),
            ]);
            // The sequence numbers of an added file are inherited from
            // the manifest list's entry.
            Ok(entry(Status::Added, snapshot, None, data_file))
        })
        .collect()
}

/// A manifest entry's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Existing = 0,
    Added = 1,
    Deleted = 2,
}

/// A manifest entry of `data_file` (a record in the entry schema's
/// `data_file` shape), with explicit sequence numbers unless inherited.
pub fn entry(
    status: Status,
    snapshot: i64,
    sequence: Option<(i64, i64)>,
    data_file: Value,
) -> Value {
    let (seq, fseq) = match sequence {
        Some((s, f)) => (some(Value::Long(s)), some(Value::Long(f))),
        None => (null(), null()),
    };
    Value::Record(vec![
        ("status".into(), Value::Int(status as i32)),
        ("snapshot_id".into(), some(Value::Long(snapshot))),
        ("sequence_number".into(), seq),
        ("file_sequence_number".into(), fseq),
        ("data_file".into(), data_file),
    ])
}

/// Whether a manifest entry marks its file deleted.
pub fn is_deleted(entry: &Value) -> bool {
    get_i64(entry, "status") == Some(Status::Deleted as i64)
}

/// Encodes a manifest of `entries` under `spec`.
pub fn write_entries(
    meta: &TableMetadata,
    spec: &SpecJson,
    entries: Vec<Value>,
) -> Result<Vec<u8>> {
    let schema = entry_schema(meta, spec)?;
    let mut w = writer(&schema, "a manifest")?;
    let table_schema = serde_json::to_string(meta.schema()?).map_err(|e| avro("schema", e))?;
    let spec_json = serde_json::to_string(&spec.fields).map_err(|e| avro("spec", e))?;
    for (k, v) in [
        ("schema", table_schema),
        ("schema-id", meta.current_schema_id.to_string()),
        ("partition-spec", spec_json),
        ("partition-spec-id", spec.spec_id.to_string()),
        ("format-version", "2".into()),
        ("content", "data".into()),
    ] {
        w.add_user_metadata(k.into(), v)
            .map_err(|e| avro("a manifest", e))?;
    }
    for e in entries {
        w.append_value(e).map_err(|e| avro("a manifest entry", e))?;
    }
    w.into_inner().map_err(|e| avro("a manifest", e))
}

/// The entries of a manifest under `spec`, in this writer's schema.
pub fn read_entries(meta: &TableMetadata, spec: &SpecJson, bytes: &[u8]) -> Result<Vec<Value>> {
    let schema = entry_schema(meta, spec)?;
    let reader = Reader::builder(bytes)
        .reader_schema(&schema)
        .build()
        .map_err(|e| avro("reading a manifest", e))?;
    reader
        .map(|v| v.map_err(|e| avro("reading a manifest", e)))
        .collect()
}

/// Field `name` of record `v`, through a union's branch.
pub fn get<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let Value::Record(fields) = v else {
        return None;
    };
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| match v {
            Value::Union(_, inner) => inner.as_ref(),
            v => v,
        })
}

/// An integer field of a record (null or absent: `None`).
pub fn get_i64(v: &Value, name: &str) -> Option<i64> {
    match get(v, name)? {
        Value::Int(i) => Some(i64::from(*i)),
        Value::Long(l) => Some(*l),
        _ => None,
    }
}

/// A string field of a record.
pub fn get_str<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    match get(v, name)? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// Replaces field `name` of record `v`.
pub fn set(v: &mut Value, name: &str, to: Value) {
    if let Value::Record(fields) = v {
        if let Some((_, slot)) = fields.iter_mut().find(|(k, _)| k == name) {
            *slot = to;
        }
    }
}

/// A manifest list's entry: one manifest and what it holds.
pub struct ListEntry<'a> {
    pub path: &'a str,
    pub length: u64,
    pub spec_id: i32,
    pub sequence: i64,
    pub min_sequence: i64,
    pub snapshot: i64,
    /// Files and rows added, existing, deleted.
    pub added: (usize, u64),
    pub existing: (usize, u64),
    pub deleted: (usize, u64),
}

impl ListEntry<'_> {
    /// The entry of a manifest adding `files` in snapshot `snapshot`.
    pub fn added<'a>(
        path: &'a str,
        length: u64,
        spec_id: i32,
        snapshot: i64,
        sequence: i64,
        files: &[DataFile],
    ) -> ListEntry<'a> {
        ListEntry {
            path,
            length,
            spec_id,
            sequence,
            min_sequence: sequence,
            snapshot,
            added: (files.len(), files.iter().map(|f| f.rows).sum()),
            existing: (0, 0),
            deleted: (0, 0),
        }
    }

    pub fn value(&self) -> Value {
        let count = |n: usize| Value::Int(n as i32);
        let rows = |n: u64| Value::Long(n as i64);
        Value::Record(vec![
            ("manifest_path".into(), Value::String(self.path.to_string())),
            ("manifest_length".into(), Value::Long(self.length as i64)),
            ("partition_spec_id".into(), Value::Int(self.spec_id)),
            ("content".into(), Value::Int(0)),
            ("sequence_number".into(), Value::Long(self.sequence)),
            ("min_sequence_number".into(), Value::Long(self.min_sequence)),
            ("added_snapshot_id".into(), Value::Long(self.snapshot)),
            ("added_files_count".into(), count(self.added.0)),
            ("existing_files_count".into(), count(self.existing.0)),
            ("deleted_files_count".into(), count(self.deleted.0)),
            ("added_rows_count".into(), rows(self.added.1)),
            ("existing_rows_count".into(), rows(self.existing.1)),
            ("deleted_rows_count".into(), rows(self.deleted.1)),
            ("partitions".into(), null()),
            ("key_metadata".into(), null()),
        ])
    }
}

/// The entries of a manifest list, in this writer's schema (Avro
/// resolution by name, so a list another engine wrote reads the same).
pub fn read_list_entries(bytes: &[u8]) -> Result<Vec<Value>> {
    let schema = list_schema()?;
    let reader = Reader::builder(bytes)
        .reader_schema(&schema)
        .build()
        .map_err(|e| avro("reading a manifest list", e))?;
    reader
        .map(|v| v.map_err(|e| avro("reading a manifest list", e)))
        .collect()
}

/// Encodes the manifest list of snapshot `snapshot` (sequence number
/// `sequence`, parent `parent`) holding `entries`.
pub fn write_list(
    snapshot: i64,
    parent: Option<i64>,
    sequence: i64,
    entries: Vec<Value>,
) -> Result<Vec<u8>> {
    let schema = list_schema()?;
    let mut w = writer(&schema, "a manifest list")?;
    for (k, v) in [
        ("snapshot-id", snapshot.to_string()),
        (
            "parent-snapshot-id",
            parent.map_or("null".into(), |p| p.to_string()),
        ),
        ("sequence-number", sequence.to_string()),
        ("format-version", "2".into()),
    ] {
        w.add_user_metadata(k.into(), v)
            .map_err(|e| avro("a manifest list", e))?;
    }
    for e in entries {
        w.append_value(e)
            .map_err(|e| avro("a manifest list entry", e))?;
    }
    w.into_inner().map_err(|e| avro("a manifest list", e))
}

/// The manifest paths a list names.
#[cfg(test)]
pub fn read_list(bytes: &[u8]) -> Result<Vec<String>> {
    let reader = Reader::new(bytes).map_err(|e| avro("reading a manifest list", e))?;
    let mut out = Vec::new();
    for v in reader {
        if let Value::Record(fields) = v.map_err(|e| avro("reading a manifest list", e))? {
            for (k, v) in fields {
                if let (true, Value::String(p)) = (k == "manifest_path", v) {
                    out.push(p);
                }
            }
        }
    }
    Ok(out)
}

/// The data files a manifest lists as live (not deleted): their paths and
/// recorded sizes.
#[cfg(test)]
pub fn read_manifest(bytes: &[u8]) -> Result<Vec<(String, i64)>> {
    let reader = Reader::new(bytes).map_err(|e| avro("reading a manifest", e))?;
    let mut out = Vec::new();
    for v in reader {
        let v = v.map_err(|e| avro("reading a manifest", e))?;
        if is_deleted(&v) {
            continue;
        }
        if let Some(file) = get(&v, "data_file") {
            let path = get_str(file, "file_path").unwrap_or_default();
            let size = get_i64(file, "file_size_in_bytes").unwrap_or(-1);
            out.push((path.to_string(), size));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, TimeUnit};

    use super::*;
    use crate::parquet::PartitionSpec;

    #[test]
    fn manifests_round_trip_with_field_ids_and_parents() {
        let input = ArrowSchema::new(vec![
            Field::new("country", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]);
        let spec = PartitionSpec::parse("country,dt=date(ts)").unwrap();
        let meta = TableMetadata::create("file:///t", "u".into(), &input, &spec, 0).unwrap();
        let files = vec![DataFile {
            path: "file:///t/data/a.parquet".into(),
            rows: 3,
            bytes: 100,
            partition: vec![
                PartitionValue::Str("DE".into()),
                PartitionValue::Int(20_000),
            ],
        }];
        let spec = meta.spec().unwrap();
        let m = write_entries(&meta, spec, added_entries(&meta, spec, 7, &files).unwrap()).unwrap();
        assert_eq!(
            read_manifest(&m).unwrap(),
            [("file:///t/data/a.parquet".to_string(), 100)]
        );
        let header = String::from_utf8_lossy(&m[..m.len().min(4000)]).to_string();
        assert!(header.contains("\"field-id\":1001"), "{header}");
        assert!(header.contains("deflate"), "{header}");
        let len = m.len() as u64;
        let new = ListEntry::added("file:///t/metadata/m1.avro", len, 0, 7, 1, &files);
        let first = write_list(7, None, 1, vec![new.value()]).unwrap();
        let mut entries =
            vec![ListEntry::added("file:///t/metadata/m2.avro", len, 0, 8, 2, &files).value()];
        entries.extend(read_list_entries(&first).unwrap());
        let second = write_list(8, Some(7), 2, entries).unwrap();
        // Entries read back keep their figures.
        let back = read_entries(&meta, meta.spec().unwrap(), &m).unwrap();
        assert_eq!(get_i64(&back[0], "status"), Some(1));
        assert_eq!(get_i64(&back[0], "snapshot_id"), Some(7));
        assert_eq!(get_i64(&back[0], "sequence_number"), None);
        let file = get(&back[0], "data_file").unwrap();
        assert_eq!(get_str(file, "file_path"), Some("file:///t/data/a.parquet"));
        assert_eq!(get_i64(file, "record_count"), Some(3));
        assert_eq!(
            read_list(&second).unwrap(),
            ["file:///t/metadata/m2.avro", "file:///t/metadata/m1.avro"]
        );
    }
}
