//! Joins against nested-loop references over random, out-of-order input at
//! parallelism 1 and 4, with state on the heap and in RocksDB, plus the output schema rule, plan errors and the
//! watermark contract of the output. Jobs use engine primitives only
//! (`from_batches`, `assign_watermarks`, `transform`, `collect`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::TimestampMillisecondArray;
use arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_engine::data::event_times_ms;
use sluice_engine::state::rocks::RocksConfig;
use sluice_engine::state::StateBackend;
use sluice_engine::{
    Collector, Env, Operator, OperatorContext, Stream, Watermark, WatermarkStrategy,
};
use sluice_operators::join::{Join, JoinWindow};

/// Disorder of the random inputs; watermarks trail by this much, so no row
/// is late.
const DELAY_MS: i64 = 300;

#[derive(Debug, Clone)]
struct Row {
    k: Option<i64>,
    k2: &'static str,
    ts: i64,
    id: i64,
}

impl Row {
    /// Whether the rows match on the keys the test joins on.
    fn same_key(&self, o: &Row, multi: bool) -> bool {
        self.k.is_some() && self.k == o.k && (!multi || self.k2 == o.k2)
    }
}

fn random_rows(seed: u64, n: usize) -> Vec<Row> {
    let mut r = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|i| Row {
            // Some null keys: they must match nothing.
            k: (r.random_range(0..20) != 0).then(|| r.random_range(0..5)),
            k2: ["a", "b"][r.random_range(0..2)],
            ts: i as i64 * 20 - r.random_range(0..DELAY_MS),
            id: i as i64,
        })
        .collect()
}

/// A source of `rows` (columns k, k2, ts, id) in batches of 37, with
/// watermarks `DELAY_MS` behind; `ts` is Int64 ms or Timestamp(ms).
fn source(env: &Env, name: &str, rows: &[Row], ts_as_timestamp: bool) -> Stream {
    let ts_type = if ts_as_timestamp {
        DataType::Timestamp(TimeUnit::Millisecond, None)
    } else {
        DataType::Int64
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("k2", DataType::Utf8, false),
        Field::new("ts", ts_type, false),
        Field::new("id", DataType::Int64, false),
    ]));
    let batches = rows
        .chunks(37)
        .map(|c| {
            let ts = c.iter().map(|r| r.ts);
            let ts: ArrayRef = if ts_as_timestamp {
                Arc::new(TimestampMillisecondArray::from_iter_values(ts))
            } else {
                Arc::new(Int64Array::from_iter_values(ts))
            };
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(c.iter().map(|r| r.k).collect::<Int64Array>()),
                    Arc::new(StringArray::from_iter_values(c.iter().map(|r| r.k2))),
                    ts,
                    Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.id))),
                ],
            )
            .unwrap()
        })
        .collect();
    env.from_batches(name, schema, batches).assign_watermarks(
        WatermarkStrategy::bounded_out_of_orderness("ts", Duration::from_millis(DELAY_MS as u64)),
    )
}

fn int_column(b: &RecordBatch, name: &str) -> Vec<i64> {
    let c = b.column(b.schema().index_of(name).unwrap()).clone();
    event_times_ms(&c).unwrap()
}

/// (left id, right id, window start, window end) of every output row, sorted.
fn pairs(out: &[RecordBatch], window: bool) -> Vec<(i64, i64, i64, i64)> {
    let mut v = Vec::new();
    for b in out {
        let (l, r) = (int_column(b, "id"), int_column(b, "right_id"));
        let (s, e) = if window {
            (int_column(b, "window_start"), int_column(b, "window_end"))
        } else {
            (vec![0; b.num_rows()], vec![0; b.num_rows()])
        };
        for i in 0..b.num_rows() {
            v.push((l[i], r[i], s[i], e[i]));
        }
    }
    v.sort();
    v
}

/// Runs `build` at parallelism 1 and 4, with state on the heap and in
/// RocksDB behind a cache too small for it, and checks each run against
/// `want`.
fn check(want: &[(i64, i64, i64, i64)], window: bool, what: &str, build: impl Fn(&Env) -> Stream) {
    assert!(!want.is_empty(), "{what}: the reference found no pairs");
    for rocks in [false, true] {
        for p in [1, 4] {
            let env = Env::new();
            env.set_parallelism(p);
            if rocks {
                env.configure(|c| {
                    c.state.backend = StateBackend::RocksDb(RocksConfig {
                        cache_bytes: 2 << 10,
                        block_cache_bytes: 64 << 10,
                        write_buffer_bytes: 64 << 10,
                    })
                });
            }
            let out = build(&env).collect();
            env.execute().unwrap();
            assert_eq!(
                pairs(&out.batches(), window),
                want,
                "{what}, parallelism {p}, rocksdb: {rocks}"
            );
        }
    }
}

const MULTI: [&str; 2] = ["k", "k2"];

#[test]
fn unbounded_join_matches_nested_loops() {
    for seed in [1, 2] {
        let (left, right) = (random_rows(seed, 300), random_rows(seed + 100, 300));
        for keys in [&MULTI[..1], &MULTI[..]] {
            let multi = keys.len() == 2;
            let mut want = Vec::new();
            for l in &left {
                for r in &right {
                    if l.same_key(r, multi) {
                        want.push((l.id, r.id, 0, 0));
                    }
                }
            }
            want.sort();
            check(&want, false, &format!("seed {seed} keys {keys:?}"), |env| {
                source(env, "l", &left, false).join(source(env, "r", &right, true), keys, keys)
            });
        }
    }
}

#[test]
fn window_join_matches_nested_loops() {
    for seed in [3, 4] {
        let (left, right) = (random_rows(seed, 300), random_rows(seed + 100, 300));
        // Tumbling, sliding with slide | size, sliding with panes of gcd 200.
        for (size, slide) in [(1000, 1000), (1000, 250), (1000, 400)] {
            let mut want = Vec::new();
            for l in &left {
                for r in &right {
                    if !l.same_key(r, true) {
                        continue;
                    }
                    let mut s = l.ts - l.ts.rem_euclid(slide);
                    while s + size > l.ts {
                        if r.ts >= s && r.ts < s + size {
                            want.push((l.id, r.id, s, s + size));
                        }
                        s -= slide;
                    }
                }
            }
            want.sort();
            let window = JoinWindow::sliding(
                Duration::from_millis(size as u64),
                Duration::from_millis(slide as u64),
            );
            check(
                &want,
                true,
                &format!("seed {seed} window {size}/{slide}"),
                |env| {
                    source(env, "l", &left, false).window_join(
                        source(env, "r", &right, true),
                        &MULTI,
                        &MULTI,
                        window,
                    )
                },
            );
        }
    }
}

#[test]
fn interval_join_matches_nested_loops() {
    for seed in [5, 6] {
        let (left, right) = (random_rows(seed, 300), random_rows(seed + 100, 300));
        for (lower, upper) in [(-100, 200), (0, 0), (50, 400), (-500, -120)] {
            let mut want = Vec::new();
            for l in &left {
                for r in &right {
                    if l.same_key(r, true) && r.ts >= l.ts + lower && r.ts <= l.ts + upper {
                        want.push((l.id, r.id, 0, 0));
                    }
                }
            }
            want.sort();
            check(
                &want,
                false,
                &format!("seed {seed} [{lower}, {upper}]"),
                |env| {
                    source(env, "l", &left, false).interval_join(
                        source(env, "r", &right, true),
                        &MULTI,
                        &MULTI,
                        lower,
                        upper,
                    )
                },
            );
        }
    }
}

#[test]
fn sliding_window_join_emits_a_pair_once_per_shared_window() {
    let row = |k, ts, id| Row {
        k: Some(k),
        k2: "a",
        ts,
        id,
    };
    let left = [row(1, 25_000, 1)];
    let right = [row(1, 28_000, 10), row(1, 5_000, 11), row(2, 26_000, 12)];
    let window = JoinWindow::sliding(Duration::from_secs(30), Duration::from_secs(10));
    let want = vec![
        (1, 10, 0, 30_000),
        (1, 10, 10_000, 40_000),
        (1, 10, 20_000, 50_000),
        (1, 11, 0, 30_000),
    ];
    check(&want, true, "sliding 30s/10s", |env| {
        source(env, "l", &left, false).window_join(
            source(env, "r", &right, false),
            &["k"],
            &["k"],
            window,
        )
    });
}

fn names(s: &Stream) -> Vec<String> {
    s.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

#[test]
fn output_schema_renames_right_columns_and_sets_event_time() {
    let env = Env::new();
    let l = |env: &Env| source(env, "l", &[], false);
    let r = |env: &Env| source(env, "r", &[], true);
    let joined = l(&env).join(r(&env), &["k"], &["k"]);
    assert_eq!(
        names(&joined),
        ["k", "k2", "ts", "id", "right_k", "right_k2", "right_ts", "right_id"]
    );
    assert_eq!(joined.event_time(), None);
    let interval = l(&env).interval_join(r(&env), &["k"], &["k"], -5, 5);
    assert_eq!(names(&interval), names(&joined));
    assert_eq!(interval.event_time(), Some("ts"));
    // The window join's own output renames again when joined with itself.
    let windowed = l(&env).window_join(
        r(&env),
        &["k"],
        &["k"],
        JoinWindow::tumbling(Duration::from_secs(1)),
    );
    let mut want = names(&joined);
    want.extend(["window_start".into(), "window_end".into()]);
    assert_eq!(names(&windowed), want);
    assert_eq!(windowed.event_time(), Some("window_end"));
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    assert_eq!(windowed.schema().field(8).data_type(), &ts);
    let twice = windowed.clone().window_join(
        windowed,
        &["k"],
        &["k"],
        JoinWindow::tumbling(Duration::from_secs(1)),
    );
    let n = names(&twice);
    assert_eq!(n.len(), 22);
    assert_eq!(n[..10], want[..]);
    // Right `k` meets left `k` and `right_k`; right `right_k` then meets
    // the `right_right_k` just added.
    assert_eq!(
        n[10..14],
        [
            "right_right_k",
            "right_right_k2",
            "right_right_ts",
            "right_right_id"
        ]
    );
    assert_eq!(n[14], "right_right_right_k");
    assert_eq!(
        n[18..],
        [
            "right_window_start",
            "right_window_end",
            "join_window_start",
            "join_window_end"
        ]
    );
    env.graph().unwrap();
}

/// Runs a job built by `build` and returns its plan error.
fn plan_error(build: impl Fn(&Env)) -> String {
    let env = Env::new();
    build(&env);
    env.execute().unwrap_err().to_string()
}

fn assert_contains(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "{err:?} lacks {p:?}");
    }
}

#[test]
fn plan_errors_name_the_columns_and_the_fix() {
    let plain = |env: &Env| {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, false),
            Field::new("ts", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(vec![1])),
                Arc::new(Int64Array::from(vec![1])),
            ],
        )
        .unwrap();
        env.from_batches("plain", schema, vec![batch])
    };
    let timed = |env: &Env| source(env, "timed", &[], false);
    let tumbling = JoinWindow::tumbling(Duration::from_secs(1));

    let err = plan_error(|env| {
        timed(env)
            .window_join(plain(env), &["id"], &["ts"], tumbling)
            .collect();
    });
    assert_contains(
        &err,
        &[
            "window_join",
            "no watermark strategy on the right input",
            "[k, ts]",
            "call .watermarks(...) before window_join",
        ],
    );
    let err = plan_error(|env| {
        plain(env)
            .interval_join(timed(env), &["ts"], &["id"], 0, 1)
            .collect();
    });
    assert_contains(
        &err,
        &["interval_join", "no watermark strategy on the left input"],
    );

    for verb in ["join", "window_join", "interval_join"] {
        let err = plan_error(|env| {
            let l = plain(env).assign_watermarks(WatermarkStrategy::ascending("ts"));
            let r = timed(env);
            match verb {
                "join" => l.join(r, &["k"], &["k"]),
                "window_join" => l.window_join(r, &["k"], &["k"], tumbling),
                _ => l.interval_join(r, &["k"], &["k"], 0, 1),
            }
            .collect();
        });
        assert_contains(&err, &[verb, "left 'k' is Int32 but right 'k' is Int64"]);
    }

    let err = plan_error(|env| {
        timed(env).join(timed(env), &["nope"], &["k"]).collect();
    });
    assert_contains(&err, &["unknown left key column 'nope'", "[k, k2, ts, id]"]);
    let err = plan_error(|env| {
        timed(env).join(timed(env), &["k", "k2"], &["k"]).collect();
    });
    assert_contains(&err, &["same, non-zero number of left and right keys"]);
    let err = plan_error(|env| {
        let bad = JoinWindow::sliding(Duration::from_secs(1), Duration::from_secs(2));
        timed(env)
            .window_join(timed(env), &["k"], &["k"], bad)
            .collect();
    });
    assert_contains(&err, &["invalid window: size 1000 ms, slide 2000 ms"]);
    let err = plan_error(|env| {
        timed(env)
            .interval_join(timed(env), &["k"], &["k"], 5, -5)
            .collect();
    });
    assert_contains(&err, &["lower bound 5 ms is above upper bound -5 ms"]);
}

/// Passes batches through, counting rows whose event time is at or behind
/// the last watermark it saw (rows late for any downstream window).
struct LatenessProbe {
    time: usize,
    watermark: i64,
    late: Arc<AtomicUsize>,
    rows: Arc<AtomicUsize>,
}

impl Operator for LatenessProbe {
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> sluice_engine::Result<()> {
        let ts = event_times_ms(batch.column(self.time))?;
        let late = ts.iter().filter(|t| **t <= self.watermark).count();
        self.late.fetch_add(late, Ordering::Relaxed);
        self.rows.fetch_add(ts.len(), Ordering::Relaxed);
        out.emit(batch);
        Ok(())
    }

    fn on_watermark(
        &mut self,
        wm: Watermark,
        _ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> sluice_engine::Result<Option<Watermark>> {
        if let Watermark::EventTime(t) = wm {
            self.watermark = self.watermark.max(t);
        }
        Ok(Some(wm))
    }
}

#[test]
fn time_join_output_is_never_behind_its_watermark() {
    let (left, right) = (random_rows(7, 300), random_rows(8, 300));
    for windowed in [false, true] {
        for p in [1, 4] {
            let env = Env::new();
            env.set_parallelism(p);
            let (l, r) = (
                source(&env, "l", &left, false),
                source(&env, "r", &right, false),
            );
            let joined = if windowed {
                let w = JoinWindow::sliding(Duration::from_secs(1), Duration::from_millis(500));
                l.window_join(r, &MULTI, &MULTI, w)
            } else {
                l.interval_join(r, &MULTI, &MULTI, -200, 600)
            };
            let time = joined
                .schema()
                .index_of(joined.event_time().unwrap())
                .unwrap();
            let (late, rows) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (l2, r2) = (late.clone(), rows.clone());
            let schema: SchemaRef = joined.schema().clone();
            joined
                .transform("probe", schema, move |_| {
                    Ok(Box::new(LatenessProbe {
                        time,
                        watermark: i64::MIN,
                        late: l2.clone(),
                        rows: r2.clone(),
                    }))
                })
                .collect();
            env.execute().unwrap();
            assert!(rows.load(Ordering::Relaxed) > 0);
            assert_eq!(late.load(Ordering::Relaxed), 0, "windowed {windowed} p {p}");
        }
    }
}

#[test]
fn null_keys_match_nothing() {
    let row = |k, id| Row {
        k,
        k2: "a",
        ts: 10,
        id,
    };
    let left = [row(None, 1), row(Some(1), 2)];
    let right = [row(None, 10), row(Some(1), 11)];
    for multi in [false, true] {
        let keys = if multi { &MULTI[..] } else { &MULTI[..1] };
        let env = Env::new();
        let out = source(&env, "l", &left, false)
            .join(source(&env, "r", &right, false), keys, keys)
            .collect();
        env.execute().unwrap();
        assert_eq!(
            pairs(&out.batches(), false),
            [(2, 11, 0, 0)],
            "keys {keys:?}"
        );
        let b = out.concat();
        let k = b.column(0).as_primitive::<Int64Type>();
        assert_eq!(k.null_count(), 0);
    }
}
