//! Window aggregates: output names and types over many input types, null
//! handling, user-defined aggregates (tumbling, and merged in sessions),
//! and the plan errors a window reports.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampSecondArray, UInt64Array,
};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampSecondType,
};
use sluice_engine::{Env, Error, Stream};
use sluice_operators::prelude::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("i32", DataType::Int32, true),
        Field::new("u64", DataType::UInt64, false),
        Field::new("f32", DataType::Float32, false),
        Field::new("at", DataType::Timestamp(TimeUnit::Second, None), false),
        Field::new("s", DataType::Utf8, true),
        Field::new("flag", DataType::Boolean, false),
    ]))
}

/// Two windows of key "a": [0, 100) with three rows, [100, 200) with one
/// row whose nullable columns are null.
fn source(env: &Env) -> Stream {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["a"; 4])),
        Arc::new(Int64Array::from(vec![10, 20, 30, 150])),
        Arc::new(Int32Array::from(vec![Some(-5), None, Some(7), None])),
        Arc::new(UInt64Array::from(vec![u64::MAX, 2, 3, 4])),
        Arc::new(Float32Array::from(vec![0.5, 1.5, -1.0, 2.0])),
        Arc::new(TimestampSecondArray::from(vec![30, 10, 20, 40])),
        Arc::new(StringArray::from(vec![
            Some("pear"),
            Some("apple"),
            None,
            None,
        ])),
        Arc::new(arrow::array::BooleanArray::from(vec![
            true, false, true, true,
        ])),
    ];
    let batch = RecordBatch::try_new(schema(), cols).unwrap();
    env.from_batches("rows", schema(), vec![batch])
        .watermarks(bounded_out_of_orderness("ts", Duration::ZERO))
}

fn tumbling(s: Stream, aggs: Vec<AggregateExpr>) -> Stream {
    s.key_by(["k"])
        .window(WindowSpec::tumbling(Duration::from_millis(100)))
        .aggregate(aggs)
}

#[test]
fn aggregates_keep_or_widen_types_and_skip_nulls() {
    let env = Env::new();
    let agg = tumbling(
        source(&env),
        vec![
            count(),
            sum("i32"),
            sum("u64"),
            sum("f32"),
            avg("i32"),
            min("i32"),
            max("f32"),
            min("at"),
            max("at"),
            min("s"),
            max("s"),
            max("u64").alias("top"),
        ],
    );
    let fields: Vec<(String, DataType)> = agg
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let secs = DataType::Timestamp(TimeUnit::Second, None);
    let want: Vec<(&str, DataType)> = vec![
        ("k", DataType::Utf8),
        ("window_start", ts.clone()),
        ("window_end", ts),
        ("count", DataType::Int64),
        ("sum_i32", DataType::Int64),
        ("sum_u64", DataType::Decimal128(38, 0)),
        ("sum_f32", DataType::Float64),
        ("avg_i32", DataType::Float64),
        ("min_i32", DataType::Int32),
        ("max_f32", DataType::Float32),
        ("min_at", secs.clone()),
        ("max_at", secs),
        ("min_s", DataType::Utf8),
        ("max_s", DataType::Utf8),
        ("top", DataType::UInt64),
    ];
    let want: Vec<(String, DataType)> = want.into_iter().map(|(n, t)| (n.into(), t)).collect();
    assert_eq!(fields, want);
    let out = agg.collect();
    env.execute().unwrap();
    let b = out.concat();
    assert_eq!(b.num_rows(), 2);
    let first = (0..2)
        .find(|r| {
            b.column(1)
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                .value(*r)
                == 0
        })
        .unwrap();
    let second = 1 - first;
    let i64s = |c: usize| b.column(c).as_primitive::<Int64Type>().clone();
    let f64s = |c: usize| b.column(c).as_primitive::<Float64Type>().clone();
    // count counts rows, nulls included.
    assert_eq!((i64s(3).value(first), i64s(3).value(second)), (3, 1));
    // sum skips nulls; a window with only nulls sums to null.
    assert_eq!(i64s(4).value(first), 2);
    assert!(i64s(4).is_null(second));
    // UInt64 sums widen to a decimal: u64::MAX stays itself (they
    // wrapped into Int64 before, where u64::MAX was -1).
    assert_eq!(
        b.column(5)
            .as_primitive::<arrow::datatypes::Decimal128Type>()
            .value(first),
        i128::from(u64::MAX) + 2 + 3
    );
    assert_eq!(f64s(6).value(first), 1.0);
    assert_eq!(f64s(7).value(first), 1.0);
    assert!(f64s(7).is_null(second));
    assert_eq!(
        b.column(8)
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(first),
        -5
    );
    assert_eq!(
        b.column(9)
            .as_primitive::<arrow::datatypes::Float32Type>()
            .value(first),
        1.5
    );
    let at = |c: usize| {
        b.column(c)
            .as_primitive::<TimestampSecondType>()
            .value(first)
    };
    assert_eq!((at(10), at(11)), (10, 30));
    let s = |c: usize| b.column(c).as_string::<i32>().clone();
    assert_eq!((s(12).value(first), s(13).value(first)), ("apple", "pear"));
    assert!(s(12).is_null(second) && s(13).is_null(second));
    assert_eq!(
        b.column(14)
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .value(first),
        u64::MAX
    );
}

/// Geometric mean: exp of the mean of logs.
struct GeoMean;

impl AggregateFunction for GeoMean {
    type Input = f64;
    type Acc = (f64, i64);
    type Output = Option<f64>;
    fn name(&self) -> &str {
        "geomean"
    }
    fn accumulate(&self, acc: &mut (f64, i64), v: f64) {
        acc.0 += v.ln();
        acc.1 += 1;
    }
    fn merge(&self, acc: &mut (f64, i64), other: &(f64, i64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn finish(&self, acc: &(f64, i64)) -> Option<f64> {
        (acc.1 > 0).then(|| (acc.0 / acc.1 as f64).exp())
    }
}

/// Distinct strings, joined in order.
struct Distinct;

impl AggregateFunction for Distinct {
    type Input = String;
    type Acc = std::collections::BTreeSet<String>;
    type Output = String;
    fn name(&self) -> &str {
        "distinct"
    }
    fn accumulate(&self, acc: &mut Self::Acc, v: String) {
        acc.insert(v);
    }
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
        acc.extend(other.iter().cloned());
    }
    fn finish(&self, acc: &Self::Acc) -> String {
        acc.iter().cloned().collect::<Vec<_>>().join(",")
    }
}

#[test]
fn user_defined_aggregates_accumulate_and_merge() {
    // Session gap 100: 0 and 150 open two sessions; 80 bridges them.
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("x", DataType::Int32, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let batch = |k: Vec<i64>, ts: Vec<i64>, x: Vec<i32>, s: Vec<&str>| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(k)),
                Arc::new(Int64Array::from(ts)),
                Arc::new(Int32Array::from(x)),
                Arc::new(StringArray::from(s)),
            ],
        )
        .unwrap()
    };
    for p in [1, 2] {
        let env = Env::new();
        env.set_parallelism(p);
        let out = env
            .from_batches(
                "rows",
                schema.clone(),
                vec![
                    batch(vec![1, 1], vec![0, 150], vec![2, 8], vec!["b", "a"]),
                    batch(vec![1, 2], vec![80, 80], vec![4, 3], vec!["b", "z"]),
                ],
            )
            .watermarks(bounded_out_of_orderness("ts", Duration::from_millis(200)))
            .key_by(["k"])
            .window(WindowSpec::session(Duration::from_millis(100)))
            .aggregate([udaf("x", GeoMean), udaf("s", Distinct).alias("names")])
            .collect();
        env.execute().unwrap();
        let b = out.concat();
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            ["k", "window_start", "window_end", "geomean_x", "names"]
        );
        let mut rows: Vec<(i64, f64, String)> = (0..b.num_rows())
            .map(|r| {
                (
                    b.column(0).as_primitive::<Int64Type>().value(r),
                    b.column(3).as_primitive::<Float64Type>().value(r),
                    b.column(4).as_string::<i32>().value(r).to_string(),
                )
            })
            .collect();
        rows.sort_by_key(|r| r.0);
        assert_eq!(rows.len(), 2, "the bridge merged key 1 into one session");
        assert!((rows[0].1 - 4.0).abs() < 1e-9, "cbrt(2 * 8 * 4) = 4");
        assert_eq!(rows[0].2, "a,b");
        assert!((rows[1].1 - 3.0).abs() < 1e-9);
        assert_eq!(rows[1].2, "z");
    }
}

/// Builds a job with `f` and returns its plan error.
fn plan_error(f: impl Fn(&Env)) -> String {
    let env = Env::new();
    f(&env);
    match env.execute() {
        Err(e @ Error::Plan { .. }) => e.to_string(),
        Err(e) => panic!("expected a plan error, got {e}"),
        Ok(_) => panic!("expected a plan error, the job ran"),
    }
}

fn expect(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "'{message}' should mention '{p}'");
    }
}

#[test]
fn plan_errors_name_the_window_and_the_problem() {
    let unwatermarked = |env: &Env| {
        let batch = RecordBatch::new_empty(schema());
        env.from_batches("rows", schema(), vec![batch])
    };
    let m = plan_error(|env| {
        drop(tumbling(unwatermarked(env), vec![count()]).collect());
    });
    expect(&m, &["window", "no watermark strategy", ".watermarks(...)"]);

    let m = plan_error(|env| drop(tumbling(source(env), vec![sum("nope")]).collect()));
    expect(&m, &["window", "'nope'", "sum_nope", "[k, ts, i32, u64"]);

    for (agg, name) in [(sum("s"), "sum_s"), (avg("s"), "avg_s")] {
        let m = plan_error(|env| drop(tumbling(source(env), vec![agg.clone()]).collect()));
        expect(&m, &["window", name, "'s' is Utf8"]);
    }
    let m = plan_error(|env| drop(tumbling(source(env), vec![max("flag")]).collect()));
    expect(&m, &["window", "max_flag", "'flag' is Boolean"]);
    let m = plan_error(|env| drop(tumbling(source(env), vec![udaf("s", GeoMean)]).collect()));
    expect(&m, &["window", "geomean_s", "'s' is Utf8"]);

    let m = plan_error(|env| {
        drop(tumbling(source(env), vec![count(), sum("i32").alias("count")]).collect())
    });
    expect(&m, &["window", "'count' appears twice"]);

    for (spec, part) in [
        (
            WindowSpec::tumbling(Duration::ZERO),
            "size must be positive",
        ),
        (
            WindowSpec::Tumbling { size_ms: -5 },
            "size must be positive",
        ),
        (
            WindowSpec::sliding(Duration::from_secs(1), Duration::from_secs(2)),
            "larger than size",
        ),
        (WindowSpec::Session { gap_ms: 0 }, "gap must be positive"),
    ] {
        let m = plan_error(|env| {
            drop(
                source(env)
                    .key_by(["k"])
                    .window(spec)
                    .aggregate([count()])
                    .collect(),
            )
        });
        expect(&m, &["window", part]);
    }

    let m = plan_error(|env| drop(source(env).late_data().collect()));
    expect(&m, &["late_data", "not a window aggregate"]);
}

#[test]
fn late_data_has_the_input_schema() {
    let env = Env::new();
    let agg = tumbling(source(&env), vec![count()]);
    let late = agg.late_data();
    assert_eq!(late.schema(), &schema());
    let cols: HashSet<_> = agg
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert!(cols.contains("window_end"));
}
