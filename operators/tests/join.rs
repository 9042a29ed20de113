//! Event-time joins against nested-loop references over random input, at
//! parallelism 1 and 4.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimestampMillisecondType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_engine::{Env, Stream};
use sluice_operators::prelude::*;

fn schema(prefix: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(format!("{prefix}k"), DataType::Int64, false),
        Field::new(format!("{prefix}k2"), DataType::Int64, false),
        Field::new(format!("{prefix}ts"), DataType::Int64, false),
        Field::new(format!("{prefix}id"), DataType::Int64, false),
    ]))
}

type Row = (i64, i64, i64, i64);

fn rows(seed: u64, n: usize) -> Vec<Row> {
    let mut r = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            (
                r.random_range(0..6),
                r.random_range(0..2),
                i as i64 * 20 - r.random_range(0..300),
                i as i64,
            )
        })
        .collect()
}

fn stream(env: &Env, prefix: &str, data: &[Row]) -> Stream {
    let s = schema(prefix);
    let batches: Vec<RecordBatch> = data
        .chunks(37)
        .map(|c| {
            let col = |f: fn(&Row) -> i64| Arc::new(Int64Array::from_iter_values(c.iter().map(f)));
            RecordBatch::try_new(
                s.clone(),
                vec![col(|r| r.0), col(|r| r.1), col(|r| r.2), col(|r| r.3)],
            )
            .unwrap()
        })
        .collect();
    env.from_batches(&format!("{prefix}src"), s, batches)
        .watermarks(bounded_out_of_orderness(
            &format!("{prefix}ts"),
            Duration::from_millis(300),
        ))
}

/// (left id, right id, window start) of every pair.
fn pairs(b: &[RecordBatch], window: bool) -> Vec<(i64, i64, i64)> {
    let mut v = Vec::new();
    for b in b {
        let l = b.column(3).as_primitive::<Int64Type>();
        let r = b.column(7).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let w = if window {
                b.column(8)
                    .as_primitive::<TimestampMillisecondType>()
                    .value(i)
            } else {
                0
            };
            v.push((l.value(i), r.value(i), w));
        }
    }
    v.sort();
    v
}

#[test]
fn window_join_matches_nested_loops() {
    let (left, right) = (rows(1, 400), rows(2, 400));
    for (size, slide) in [(1000, 1000), (1000, 250)] {
        let mut want = Vec::new();
        for l in &left {
            for r in &right {
                if (l.0, l.1) != (r.0, r.1) {
                    continue;
                }
                let mut s = l.2 - l.2.rem_euclid(slide);
                while s + size > l.2 {
                    if r.2 >= s && r.2 < s + size {
                        want.push((l.3, r.3, s));
                    }
                    s -= slide;
                }
            }
        }
        want.sort();
        assert!(!want.is_empty());
        for p in [1, 4] {
            let env = Env::new();
            env.set_parallelism(p);
            let window = JoinWindow::sliding(
                Duration::from_millis(size as u64),
                Duration::from_millis(slide as u64),
            );
            let out = stream(&env, "l_", &left)
                .window_join(
                    stream(&env, "r_", &right),
                    &["l_k", "l_k2"],
                    &["r_k", "r_k2"],
                    window,
                )
                .collect();
            env.execute().unwrap();
            assert_eq!(
                pairs(&out.batches(), true),
                want,
                "size {size} slide {slide} p {p}"
            );
        }
    }
}

#[test]
fn interval_join_matches_nested_loops() {
    let (left, right) = (rows(3, 500), rows(4, 500));
    for (lower, upper) in [(-100, 200), (0, 0), (50, 400)] {
        let mut want: Vec<(i64, i64, i64)> = Vec::new();
        for l in &left {
            for r in &right {
                if (l.0, l.1) == (r.0, r.1) && r.2 >= l.2 + lower && r.2 <= l.2 + upper {
                    want.push((l.3, r.3, 0));
                }
            }
        }
        want.sort();
        for p in [1, 4] {
            let env = Env::new();
            env.set_parallelism(p);
            let out = stream(&env, "l_", &left)
                .interval_join(
                    stream(&env, "r_", &right),
                    &["l_k", "l_k2"],
                    &["r_k", "r_k2"],
                    lower,
                    upper,
                )
                .collect();
            env.execute().unwrap();
            assert_eq!(
                pairs(&out.batches(), false),
                want,
                "[{lower}, {upper}] p {p}"
            );
        }
    }
}

#[test]
fn time_joins_need_watermarks_and_matching_key_types() {
    let env = Env::new();
    let plain = env.from_batches("plain", schema("p_"), vec![]);
    plain
        .clone()
        .interval_join(stream(&env, "r_", &[]), &["p_k"], &["r_k"], 0, 1)
        .collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(
        err.contains("interval_join") && err.contains("no watermark strategy on the left input"),
        "{err}"
    );
    let env = Env::new();
    let l =
        stream(&env, "l_", &[]).select([col("l_k").cast(DataType::Int32).alias("k"), col("l_ts")]);
    let l = l.watermarks(bounded_out_of_orderness("l_ts", Duration::ZERO));
    l.window_join(
        stream(&env, "r_", &[]),
        &["k"],
        &["r_k"],
        JoinWindow::tumbling(Duration::from_secs(1)),
    )
    .collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(
        err.contains("left 'k' is Int32 but right 'r_k' is Int64"),
        "{err}"
    );
}
