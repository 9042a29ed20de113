//! Extreme values through every window kind and join: a record at
//! `i64::MAX` or `i64::MIN` event time is a bad record with a clear error
//! (it panicked the pane window and was dropped silently before), and a
//! sum never wraps: UInt64 sums widen to a 38-digit decimal, Int64 sums
//! that leave Int64 fail naming the aggregate.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Decimal128Type, Field, Schema, SchemaRef};
use sluice_engine::{Env, Error, Retry, Stream, WatermarkStrategy};
use sluice_operators::prelude::*;

fn schema(v: DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("v", v, false),
    ]))
}

fn rows(env: &Env, name: &str, ts: &[i64]) -> Stream {
    let s = schema(DataType::Int64);
    let batch = RecordBatch::try_new(
        s.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(ts.iter().map(|_| 1))),
            Arc::new(Int64Array::from(ts.to_vec())),
            Arc::new(Int64Array::from_iter_values(ts.iter().map(|_| 1))),
        ],
    )
    .unwrap();
    env.from_batches(name, s, vec![batch]).assign_watermarks(
        WatermarkStrategy::bounded_out_of_orderness("ts", Duration::from_millis(10)),
    )
}

/// Builds a job over records at the given event times.
type Job = fn(&Env, &[i64]) -> Stream;

/// Every way an event time meets window or join arithmetic.
fn jobs() -> Vec<(&'static str, Job)> {
    fn window(env: &Env, ts: &[i64], spec: WindowSpec) -> Stream {
        rows(env, "rows", ts)
            .key_by(["k"])
            .window(spec)
            .aggregate([count()])
    }
    vec![
        ("tumbling", |env, ts| {
            window(env, ts, WindowSpec::tumbling(Duration::from_secs(10)))
        }),
        ("sliding", |env, ts| {
            window(
                env,
                ts,
                WindowSpec::sliding(Duration::from_secs(10), Duration::from_secs(2)),
            )
        }),
        ("session", |env, ts| {
            window(env, ts, WindowSpec::session(Duration::from_secs(5)))
        }),
        ("window_join", |env, ts| {
            rows(env, "l", ts).window_join(
                rows(env, "r", &[1_000]),
                &["k"],
                &["k"],
                JoinWindow::tumbling(Duration::from_secs(10)),
            )
        }),
        ("interval_join", |env, ts| {
            rows(env, "l", ts).interval_join(rows(env, "r", &[1_000]), &["k"], &["k"], -5, 5)
        }),
    ]
}

#[test]
fn extreme_event_times_are_bad_records_in_every_window_and_join() {
    for (what, build) in jobs() {
        for t in [i64::MAX, i64::MIN] {
            let env = Env::new();
            env.set_parallelism(2);
            build(&env, &[1_000, t, 2_000]).collect();
            let e = env
                .execute()
                .expect_err(&format!("{what}: a record at {t} must not pass"));
            assert!(
                matches!(e.root(), Error::Decode(_)),
                "{what} at {t}: {e} (a bad record, not a panic)"
            );
            let msg = e.to_string();
            assert!(
                msg.contains(&t.to_string()) && msg.contains("outside the supported range"),
                "{what} at {t}: {msg}"
            );
            assert_eq!(e.retry(), Retry::Never, "{what}");
        }
    }
}

#[test]
fn windows_at_the_edges_of_the_supported_range_fire() {
    use sluice_engine::data::{MAX_EVENT_TIME, MIN_EVENT_TIME};
    for (what, build) in jobs() {
        let env = Env::new();
        env.set_parallelism(1);
        let out = build(&env, &[MIN_EVENT_TIME, 1_000, MAX_EVENT_TIME]).collect();
        env.execute()
            .unwrap_or_else(|e| panic!("{what}: times in range run: {e}"));
        if !what.contains("join") {
            assert_eq!(
                out.num_rows(),
                if what == "sliding" { 15 } else { 3 },
                "{what}"
            );
        }
    }
}

fn sum_of(values: Arc<dyn arrow::array::Array>, t: DataType) -> Result<RecordBatch, Error> {
    let s = schema(t);
    let n = values.len();
    let batch = RecordBatch::try_new(
        s.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values((0..n).map(|_| 1))),
            Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 10))),
            values,
        ],
    )
    .unwrap();
    let env = Env::new();
    env.set_parallelism(1);
    let out = env
        .from_batches("rows", s, vec![batch])
        .assign_watermarks(WatermarkStrategy::ascending("ts"))
        .key_by(["k"])
        .window(WindowSpec::tumbling(Duration::from_secs(10)))
        .aggregate([sum("v"), avg("v")])
        .collect();
    env.execute()?;
    Ok(out.concat())
}

#[test]
fn uint64_sums_widen_instead_of_wrapping() {
    let b = sum_of(
        Arc::new(UInt64Array::from(vec![u64::MAX, u64::MAX, 2])),
        DataType::UInt64,
    )
    .unwrap();
    let sums = b.column_by_name("sum_v").unwrap();
    assert_eq!(sums.data_type(), &DataType::Decimal128(38, 0));
    assert_eq!(
        sums.as_primitive::<Decimal128Type>().value(0),
        2 * i128::from(u64::MAX) + 2
    );
    let avg = b
        .column_by_name("avg_v")
        .unwrap()
        .as_primitive::<arrow::datatypes::Float64Type>();
    assert!((avg.value(0) - (2.0 * u64::MAX as f64 + 2.0) / 3.0).abs() < 1e6);
}

#[test]
fn int64_sums_that_overflow_fail_naming_the_aggregate() {
    let e = sum_of(
        Arc::new(Int64Array::from(vec![i64::MAX, 1])),
        DataType::Int64,
    )
    .unwrap_err();
    assert!(matches!(e.root(), Error::Overflow(_)), "{e}");
    assert!(e.to_string().contains("sum_v"), "{e}");
    assert_eq!(e.retry(), Retry::Never);
    // In range, nothing changes.
    let b = sum_of(
        Arc::new(Int64Array::from(vec![i64::MAX, -1])),
        DataType::Int64,
    )
    .unwrap();
    assert_eq!(
        b.column_by_name("sum_v")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        i64::MAX - 1
    );
}
