//! Partitioned output: the partition spec a user writes
//! (`country,dt=date(_timestamp),hour=hour(_timestamp)`), its checks
//! against the input schema, and the split of a batch into one batch per
//! Hive-style directory (`country=DE/dt=2026-12-06/hour=07`).
//!
//! The split is vectorized: each partition field becomes one array (the
//! column itself, or a time bucket computed with integer kernels), rows
//! are grouped by the Arrow row format of those arrays, and each group is
//! `take`n once; a directory name is rendered once per group, not per row.
//! Columns partitioned by value are left out of the files (their value is
//! in the path, as Hive, Spark and PyArrow expect); time buckets derive
//! from a column that stays in the files.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_row::{RowConverter, SortField};
use sluice_engine::{Error, Result};

const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_DAY: i64 = 86_400_000;
/// What Hive names the directory of a null value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// How a partition field derives its value from its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// The column's value (`country=DE`).
    Identity,
    /// The year of a time column (`2026`).
    Year,
    /// The month of the year (`01`..`12`).
    Month,
    /// The date (`2026-12-06`).
    Date,
    /// The day of the month (`01`..`31`).
    Day,
    /// The hour of the day (`00`..`23`).
    Hour,
}

impl Transform {
    fn by_name(name: &str) -> Option<Transform> {
        Some(match name {
            "identity" => Transform::Identity,
            "year" => Transform::Year,
            "month" => Transform::Month,
            "date" => Transform::Date,
            "day" => Transform::Day,
            "hour" => Transform::Hour,
            _ => return None,
        })
    }

    /// Rank of the time bucket: finer transforms close sooner.
    fn fineness(self) -> u8 {
        match self {
            Transform::Identity => 0,
            Transform::Year => 1,
            Transform::Month => 2,
            Transform::Date | Transform::Day => 3,
            Transform::Hour => 4,
        }
    }
}

/// One directory level of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionField {
    /// Directory key (`dt` in `dt=2026-12-06`).
    pub name: String,
    /// The input column it is computed from.
    pub source: String,
    /// How.
    pub transform: Transform,
}

/// The directory layout of partitioned output: one level per field, in
/// order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionSpec {
    fields: Vec<PartitionField>,
}

impl PartitionSpec {
    /// No partitions (files directly under the output location).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `country,dt=date(_timestamp),hour=hour(_timestamp)`: comma
    /// separated fields, each `[NAME=]COLUMN` (by value) or
    /// `[NAME=]FUNC(COLUMN)` with FUNC one of `year`, `month`, `date`,
    /// `day`, `hour` over a timestamp (or epoch-millisecond) column. A
    /// field without a name is named after its column, or its function.
    pub fn parse(text: &str) -> Result<Self> {
        let mut spec = PartitionSpec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = |why: &str| Error::Config(format!("partition field '{item}': {why}"));
            let (name, expr) = match item.split_once('=') {
                Some((n, e)) => (Some(n.trim()), e.trim()),
                None => (None, item),
            };
            let (transform, source) = match expr.split_once('(') {
                Some((func, rest)) => {
                    let col = rest
                        .strip_suffix(')')
                        .ok_or_else(|| bad("missing ')'"))?
                        .trim();
                    let t = Transform::by_name(func.trim()).ok_or_else(|| {
                        bad("unknown function (year, month, date, day, hour or identity)")
                    })?;
                    (t, col)
                }
                None => (Transform::Identity, expr),
            };
            if source.is_empty() {
                return Err(bad("no column"));
            }
            let name = match name {
                Some(n) => n.to_string(),
                None if transform == Transform::Identity => source.to_string(),
                None => expr.split('(').next().unwrap_or(source).trim().to_string(),
            };
            spec = spec.field(name, source, transform);
        }
        Ok(spec)
    }

    /// Adds a level `name=TRANSFORM(source)`.
    pub fn field(
        mut self,
        name: impl Into<String>,
        source: impl Into<String>,
        transform: Transform,
    ) -> Self {
        self.fields.push(PartitionField {
            name: name.into(),
            source: source.into(),
            transform,
        });
        self
    }

    /// Adds a level by the value of `column` (`column=VALUE`).
    pub fn column(self, column: &str) -> Self {
        self.field(column, column, Transform::Identity)
    }

    /// Adds `dt=YYYY-MM-DD` and `hour=HH` levels from the time column
    /// `time` (the usual layout for event time).
    pub fn hourly(self, time: &str) -> Self {
        self.field("dt", time, Transform::Date)
            .field("hour", time, Transform::Hour)
    }

    /// The levels.
    pub fn fields(&self) -> &[PartitionField] {
        &self.fields
    }

    /// Whether there are no levels.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Checks the spec against the sink's input: every column exists and
    /// has a type its transform takes, names make valid directory keys,
    /// and some column is left for the files.
    pub fn validate(&self, input: &Schema) -> Result<()> {
        let mut seen = Vec::new();
        for f in &self.fields {
            let bad = |why: String| Error::Config(format!("partition field '{}': {why}", f.name));
            if f.name.is_empty() || f.name.contains(['/', '=', '\\']) || f.name.starts_with('.') {
                return Err(bad("the name cannot be a directory key".into()));
            }
            if seen.contains(&&f.name) {
                return Err(bad("named twice".into()));
            }
            seen.push(&f.name);
            let col = input.field_with_name(&f.source).map_err(|_| {
                bad(format!(
                    "no column '{}' (columns: {})",
                    f.source,
                    names(input)
                ))
            })?;
            let ok = match f.transform {
                Transform::Identity => matches!(
                    col.data_type(),
                    DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View
                        | DataType::Boolean
                        | DataType::Int8
                        | DataType::Int16
                        | DataType::Int32
                        | DataType::Int64
                        | DataType::UInt8
                        | DataType::UInt16
                        | DataType::UInt32
                        | DataType::UInt64
                        | DataType::Date32
                ),
                _ => matches!(
                    col.data_type(),
                    DataType::Timestamp(_, _) | DataType::Int64 | DataType::Date32
                ),
            };
            if !ok {
                return Err(bad(format!(
                    "column '{}' is {}, which {} cannot partition by",
                    f.source,
                    col.data_type(),
                    if f.transform == Transform::Identity {
                        "a value partition (strings, integers, booleans, dates)"
                    } else {
                        "a time function (timestamps, epoch milliseconds, dates)"
                    }
                )));
            }
        }
        if self.file_schema(input).fields().is_empty() {
            return Err(Error::Config(
                "every column is a partition column: the files would have none".into(),
            ));
        }
        Ok(())
    }

    /// The columns the files hold: the input without value-partitioned
    /// columns.
    pub fn file_schema(&self, input: &Schema) -> SchemaRef {
        let dropped = |name: &str| {
            self.fields
                .iter()
                .any(|f| f.transform == Transform::Identity && f.source == name)
        };
        Arc::new(Schema::new_with_metadata(
            input
                .fields()
                .iter()
                .filter(|f| !dropped(f.name()))
                .cloned()
                .collect::<Vec<_>>(),
            input.metadata().clone(),
        ))
    }
}

fn names(s: &Schema) -> String {
    s.fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How partition values are computed and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Hive directories: `dt=2026-12-06/hour=07`; value-partitioned
    /// columns are left out of the files.
    Hive,
    /// Apache Iceberg's transforms: time buckets counted from the epoch
    /// (`hour` is hours since 1970, `day` a date), every column kept in
    /// the files.
    Iceberg,
}

/// One partition value of a file (what a table format records).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PartitionValue {
    /// Null.
    Null,
    /// A boolean column's value.
    Bool(bool),
    /// An integer column's value, a date's days, or a time bucket.
    Int(i64),
    /// A string column's value.
    Str(String),
}

/// The rows of one batch that go to one directory.
#[derive(Debug)]
pub struct PartitionBatch {
    /// Relative directory, `k=v/k=v` (empty without partitions).
    pub dir: String,
    /// End (ms, exclusive) of the newest time bucket among the rows, when
    /// the spec has time levels.
    pub closes_at: Option<i64>,
    /// The rows, in the file schema.
    pub batch: RecordBatch,
    /// The partition's values, one per field.
    pub values: Vec<PartitionValue>,
}

/// Splits batches of one input schema by a spec.
pub struct Partitioner {
    spec: PartitionSpec,
    flavor: Flavor,
    /// Input column of each field.
    sources: Vec<usize>,
    /// Input columns the files keep.
    keep: Vec<usize>,
    file_schema: SchemaRef,
    /// The finest time transform and its column, for `closes_at`.
    finest: Option<(Transform, usize)>,
    converter: RowConverter,
}

impl std::fmt::Debug for Partitioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitioner")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Partitioner {
    /// A partitioner for `input` (validated).
    pub fn new(spec: &PartitionSpec, input: &Schema, flavor: Flavor) -> Result<Self> {
        spec.validate(input)?;
        let index = |name: &str| {
            input
                .index_of(name)
                .map_err(|e| Error::Internal(format!("validated column vanished: {e}")))
        };
        let sources = spec
            .fields
            .iter()
            .map(|f| index(&f.source))
            .collect::<Result<Vec<_>>>()?;
        let file_schema = match flavor {
            Flavor::Hive => spec.file_schema(input),
            Flavor::Iceberg => Arc::new(input.clone()),
        };
        let keep = file_schema
            .fields()
            .iter()
            .map(|f| index(f.name()))
            .collect::<Result<Vec<_>>>()?;
        let finest = spec
            .fields
            .iter()
            .zip(&sources)
            .filter(|(f, _)| f.transform != Transform::Identity)
            .max_by_key(|(f, _)| f.transform.fineness())
            .map(|(f, i)| (f.transform, *i));
        let sort_fields = spec
            .fields
            .iter()
            .zip(&sources)
            .map(|(f, i)| {
                SortField::new(match f.transform {
                    Transform::Identity => input.field(*i).data_type().clone(),
                    _ => DataType::Int32,
                })
            })
            .collect();
        let converter = RowConverter::new(sort_fields).map_err(arrow_err)?;
        Ok(Partitioner {
            spec: spec.clone(),
            flavor,
            sources,
            keep,
            file_schema,
            finest,
            converter,
        })
    }

    /// The schema of the files.
    pub fn file_schema(&self) -> &SchemaRef {
        &self.file_schema
    }

    /// Splits `batch` into one batch per directory, rows in input order
    /// within each.
    pub fn split(&mut self, batch: &RecordBatch) -> Result<Vec<PartitionBatch>> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        let keys = self
            .spec
            .fields
            .iter()
            .zip(&self.sources)
            .map(|(f, i)| key_array(f.transform, batch.column(*i), self.flavor))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let ends = match self.finest {
            Some((t, i)) => Some(bucket_ends(t, &epoch_ms(batch.column(i))?)),
            None => None,
        };
        let projected = batch.project(&self.keep).map_err(arrow_err)?;
        let rows = self.converter.convert_columns(&keys).map_err(arrow_err)?;
        let first = rows.row(0);
        // Usual case for time-partitioned streams: the whole batch is in one
        // directory.
        if (1..n).all(|r| rows.row(r) == first) {
            return Ok(vec![PartitionBatch {
                dir: self.render(&keys, 0)?,
                closes_at: ends.as_ref().map(|e| max_of(e, 0..n)),
                batch: projected,
                values: values_at(&keys, 0),
            }]);
        }
        let mut groups: HashMap<arrow_row::Row<'_>, Vec<u32>> = HashMap::new();
        let mut order = Vec::new();
        for r in 0..n {
            let row = rows.row(r);
            groups
                .entry(row)
                .or_insert_with(|| {
                    order.push(row);
                    Vec::new()
                })
                .push(r as u32);
        }
        let mut out = Vec::with_capacity(order.len());
        for row in order {
            let idx = &groups[&row];
            let indices = UInt32Array::from(idx.clone());
            let columns = projected
                .columns()
                .iter()
                .map(|c| take(c.as_ref(), &indices, None))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(arrow_err)?;
            out.push(PartitionBatch {
                dir: self.render(&keys, idx[0] as usize)?,
                closes_at: ends
                    .as_ref()
                    .map(|e| idx.iter().map(|r| e[*r as usize]).max().unwrap_or(i64::MIN)),
                batch: RecordBatch::try_new(projected.schema(), columns).map_err(arrow_err)?,
                values: values_at(&keys, idx[0] as usize),
            });
        }
        Ok(out)
    }

    /// The directory of row `r`.
    fn render(&self, keys: &[ArrayRef], r: usize) -> Result<String> {
        let mut dir = String::new();
        for (f, k) in self.spec.fields.iter().zip(keys) {
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(&f.name);
            dir.push('=');
            if k.is_null(r) {
                dir.push_str(NULL_PARTITION);
                continue;
            }
            match f.transform {
                Transform::Identity => {
                    let fmt = ArrayFormatter::try_new(k.as_ref(), &FormatOptions::default())
                        .map_err(arrow_err)?;
                    escape_into(&fmt.value(r).to_string(), &mut dir);
                }
                t => {
                    let v = k.as_primitive::<arrow::datatypes::Int32Type>().value(r);
                    match self.flavor {
                        Flavor::Hive => render_time(t, v, &mut dir),
                        Flavor::Iceberg => render_iceberg_time(t, v, &mut dir),
                    }
                }
            }
        }
        Ok(dir)
    }
}

fn arrow_err(e: arrow::error::ArrowError) -> Error {
    Error::connector("parquet", format!("partitioning: {e}"))
}

fn max_of(e: &[i64], rows: std::ops::Range<usize>) -> i64 {
    rows.map(|r| e[r]).max().unwrap_or(i64::MIN)
}

/// A time column as epoch milliseconds (UTC).
fn epoch_ms(col: &ArrayRef) -> Result<Int64Array> {
    let ms = match col.data_type() {
        DataType::Int64 => col.clone(),
        DataType::Date32 => {
            let days = col.as_primitive::<arrow::datatypes::Date32Type>();
            Arc::new(days.unary::<_, Int64Type>(|d| i64::from(d) * MS_PER_DAY)) as ArrayRef
        }
        DataType::Timestamp(_, _) => {
            let as_ms =
                cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(arrow_err)?;
            cast(&as_ms, &DataType::Int64).map_err(arrow_err)?
        }
        other => {
            return Err(Error::Internal(format!(
                "time partition over {other} passed validation"
            )))
        }
    };
    Ok(ms.as_primitive::<Int64Type>().clone())
}

/// The values of row `r` of the key arrays.
fn values_at(keys: &[ArrayRef], r: usize) -> Vec<PartitionValue> {
    keys.iter()
        .map(|k| {
            if k.is_null(r) {
                return PartitionValue::Null;
            }
            match k.data_type() {
                DataType::Boolean => PartitionValue::Bool(k.as_boolean().value(r)),
                DataType::Utf8 => PartitionValue::Str(k.as_string::<i32>().value(r).to_string()),
                DataType::LargeUtf8 => {
                    PartitionValue::Str(k.as_string::<i64>().value(r).to_string())
                }
                DataType::Utf8View => PartitionValue::Str(k.as_string_view().value(r).to_string()),
                _ => match cast(&k.slice(r, 1), &DataType::Int64) {
                    Ok(a) => PartitionValue::Int(a.as_primitive::<Int64Type>().value(0)),
                    Err(_) => PartitionValue::Null,
                },
            }
        })
        .collect()
}

/// The key array of one field: the column itself, or its time bucket as
/// Int32 (days since the epoch for a date, the hour of the day, ...; in
/// Iceberg's flavor every bucket counts from the epoch).
fn key_array(t: Transform, col: &ArrayRef, flavor: Flavor) -> Result<ArrayRef> {
    if t == Transform::Identity {
        return Ok(col.clone());
    }
    let ms = epoch_ms(col)?;
    if flavor == Flavor::Iceberg {
        let keys: Int32Array = ms.unary(|m| {
            let days = m.div_euclid(MS_PER_DAY);
            match t {
                Transform::Hour => m.div_euclid(MS_PER_HOUR) as i32,
                Transform::Month => {
                    let (y, mo, _) = civil(days);
                    ((y - 1970) * 12 + i64::from(mo) - 1) as i32
                }
                Transform::Year => (civil(days).0 - 1970) as i32,
                _ => days as i32,
            }
        });
        return Ok(Arc::new(keys));
    }
    let keys: Int32Array = ms.unary(|m| {
        let days = m.div_euclid(MS_PER_DAY);
        match t {
            Transform::Date => days as i32,
            Transform::Hour => (m.rem_euclid(MS_PER_DAY) / MS_PER_HOUR) as i32,
            Transform::Day => civil(days).2 as i32,
            Transform::Month => civil(days).1 as i32,
            Transform::Year => civil(days).0 as i32,
            Transform::Identity => 0,
        }
    });
    Ok(Arc::new(keys))
}

/// End (exclusive, ms) of the `t` bucket each time falls in.
fn bucket_ends(t: Transform, ms: &Int64Array) -> Vec<i64> {
    ms.iter()
        .map(|m| {
            let Some(m) = m else { return i64::MIN };
            let days = m.div_euclid(MS_PER_DAY);
            match t {
                Transform::Hour => (m.div_euclid(MS_PER_HOUR) + 1).saturating_mul(MS_PER_HOUR),
                Transform::Date | Transform::Day | Transform::Identity => {
                    (days + 1).saturating_mul(MS_PER_DAY)
                }
                Transform::Month => {
                    let (y, mo, _) = civil(days);
                    let (y, mo) = if mo == 12 { (y + 1, 1) } else { (y, mo + 1) };
                    days_from_civil(y, mo, 1).saturating_mul(MS_PER_DAY)
                }
                Transform::Year => {
                    let (y, _, _) = civil(days);
                    days_from_civil(y + 1, 1, 1).saturating_mul(MS_PER_DAY)
                }
            }
        })
        .collect()
}

fn render_time(t: Transform, v: i32, out: &mut String) {
    let _ = match t {
        Transform::Date => {
            let (y, m, d) = civil(i64::from(v));
            write!(out, "{y:04}-{m:02}-{d:02}")
        }
        Transform::Year => write!(out, "{v:04}"),
        Transform::Month | Transform::Day | Transform::Hour => write!(out, "{v:02}"),
        Transform::Identity => Ok(()),
    };
}

/// Iceberg's human form of a time bucket (as its partition paths show).
fn render_iceberg_time(t: Transform, v: i32, out: &mut String) {
    let _ = match t {
        Transform::Hour => {
            let (y, m, d) = civil(i64::from(v).div_euclid(24));
            write!(out, "{y:04}-{m:02}-{d:02}-{:02}", v.rem_euclid(24))
        }
        Transform::Month => write!(
            out,
            "{:04}-{:02}",
            1970 + v.div_euclid(12),
            v.rem_euclid(12) + 1
        ),
        Transform::Year => write!(out, "{:04}", 1970 + v),
        _ => {
            let (y, m, d) = civil(i64::from(v));
            write!(out, "{y:04}-{m:02}-{d:02}")
        }
    };
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Day count since 1970-01-01 of a date (`days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Appends `value` as a Hive path segment: characters that are special in
/// paths or in Hive's own escaping become `%XX`.
fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        let special = c.is_control()
            || matches!(
                c,
                '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
            );
        if special {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    if value.is_empty() {
        out.push_str(NULL_PARTITION);
    }
}

#[cfg(test)]
#[path = "partition_tests.rs"]
mod tests;
