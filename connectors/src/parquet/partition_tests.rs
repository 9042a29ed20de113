//! Tests of partition specs and the split of batches by partition.

use super::*;
use arrow::array::{StringArray, TimestampMillisecondArray};
use arrow::datatypes::Field;

fn input() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("country", DataType::Utf8, true),
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("x", DataType::Int64, false),
    ]));
    // 2026-12-06T07:59:59.999Z, 2026-12-06T08:00:00Z
    let t = 1_796_543_999_999i64;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![
                Some("DE"),
                Some("a/b"),
                Some("DE"),
                None,
            ])),
            Arc::new(TimestampMillisecondArray::from(vec![t, t, t + 1, t])),
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
        ],
    )
    .unwrap()
}

#[test]
fn parses_names_columns_and_functions() {
    let s = PartitionSpec::parse("country, dt=date(_timestamp),hour(_timestamp)").unwrap();
    assert_eq!(
        s.fields(),
        &[
            PartitionField {
                name: "country".into(),
                source: "country".into(),
                transform: Transform::Identity
            },
            PartitionField {
                name: "dt".into(),
                source: "_timestamp".into(),
                transform: Transform::Date
            },
            PartitionField {
                name: "hour".into(),
                source: "_timestamp".into(),
                transform: Transform::Hour
            },
        ]
    );
    assert!(PartitionSpec::parse("dt=week(ts)").is_err());
    assert!(PartitionSpec::parse("dt=date(ts").is_err());
    let schema = input().schema();
    assert!(PartitionSpec::parse("nope")
        .unwrap()
        .validate(&schema)
        .is_err());
    assert!(PartitionSpec::parse("date(country)")
        .unwrap()
        .validate(&schema)
        .is_err());
    assert!(PartitionSpec::parse("x,country,_timestamp")
        .unwrap()
        .validate(&schema)
        .is_err());
}

#[test]
fn splits_rows_into_hive_directories() {
    let spec = PartitionSpec::new().column("country").hourly("_timestamp");
    let b = input();
    let mut p = Partitioner::new(&spec, &b.schema(), Flavor::Hive).unwrap();
    let parts = p.split(&b).unwrap();
    let dirs: Vec<(&str, Vec<i64>)> = parts
        .iter()
        .map(|p| {
            let x = p.batch.column(1).as_primitive::<Int64Type>();
            (p.dir.as_str(), x.values().to_vec())
        })
        .collect();
    assert_eq!(
        dirs,
        vec![
            ("country=DE/dt=2026-12-06/hour=07", vec![1]),
            ("country=a%2Fb/dt=2026-12-06/hour=07", vec![2]),
            ("country=DE/dt=2026-12-06/hour=08", vec![3]),
            (
                "country=__HIVE_DEFAULT_PARTITION__/dt=2026-12-06/hour=07",
                vec![4]
            ),
        ]
    );
    // The country is in the path, not in the files.
    assert_eq!(p.file_schema().fields().len(), 2);
    assert_eq!(parts[0].batch.schema(), *p.file_schema());
    assert_eq!(parts[0].closes_at, Some(1_796_544_000_000));
    assert_eq!(parts[2].closes_at, Some(1_796_544_000_000 + MS_PER_HOUR));
    assert_eq!(
        parts[0].values,
        [
            PartitionValue::Str("DE".into()),
            PartitionValue::Int(20_793),
            PartitionValue::Int(7)
        ]
    );
    // Iceberg's transforms count from the epoch and keep the columns.
    let mut p = Partitioner::new(&spec, &b.schema(), Flavor::Iceberg).unwrap();
    let parts = p.split(&b).unwrap();
    assert_eq!(parts[0].dir, "country=DE/dt=2026-12-06/hour=2026-12-06-07");
    assert_eq!(parts[0].values[2], PartitionValue::Int(20_793 * 24 + 7));
    assert_eq!(parts[0].batch.num_columns(), 3);
}

#[test]
fn one_directory_keeps_the_batch_whole() {
    let spec = PartitionSpec::parse("y=year(_timestamp),m=month(_timestamp)").unwrap();
    let b = input();
    let mut p = Partitioner::new(&spec, &b.schema(), Flavor::Hive).unwrap();
    let parts = p.split(&b).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].dir, "y=2026/m=12");
    assert_eq!(parts[0].batch.num_rows(), 4);
    // The month ends at 2027-01-01.
    assert_eq!(
        parts[0].closes_at,
        Some(days_from_civil(2027, 1, 1) * MS_PER_DAY)
    );
}

#[test]
fn calendar_round_trips() {
    for days in [-800_000i64, -1, 0, 59, 365, 10_957, 20_793, 2_000_000] {
        let (y, m, d) = civil(days);
        assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
    }
    assert_eq!(civil(0), (1970, 1, 1));
    assert_eq!(civil(20_793), (2026, 12, 6));
}
