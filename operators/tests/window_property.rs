//! Windows against brute-force references over random out-of-order input
//! (random keys, bounded disorder, random batch splits, random watermark
//! delay and allowed lateness), run as real jobs at parallelism 1 and 4.
//!
//! The input comes from one source subtask emitting the generated batches;
//! the source task assigns watermark max(ts) - delay - 1 after each batch, so
//! the references can replay the exact watermark sequence. (With several
//! source subtasks, which records are late would depend on thread timing.)

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimestampMillisecondType,
};
use proptest::prelude::*;
use sluice_engine::state::rocks::RocksConfig;
use sluice_engine::state::StateBackend;
use sluice_engine::{Env, OperatorContext, Source, SourcePoll, Stream, WatermarkStrategy};
use sluice_operators::prelude::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

/// (key, event time, value).
type Rec = (i64, i64, i64);

/// Emits prepared batches from split 0, then ends.
struct Batches(VecDeque<RecordBatch>);

impl Source for Batches {
    fn poll(&mut self, _ctx: &OperatorContext) -> sluice_engine::Result<SourcePoll> {
        Ok(match self.0.pop_front() {
            Some(batch) => SourcePoll::Batch { split: 0, batch },
            None => SourcePoll::End,
        })
    }
}

/// Splits `recs` into batches at the (random) cut points.
fn to_batches(recs: &[Rec], cuts: &[usize]) -> Vec<Vec<Rec>> {
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (recs.len() + 1)).collect();
    bounds.push(recs.len());
    bounds.sort();
    let mut out = Vec::new();
    let mut start = 0;
    for end in bounds {
        if end > start {
            out.push(recs[start..end].to_vec());
            start = end;
        }
    }
    out
}

fn to_arrow(batch: &[Rec]) -> RecordBatch {
    let col = |f: fn(&Rec) -> i64| Arc::new(Int64Array::from_iter_values(batch.iter().map(f)));
    RecordBatch::try_new(schema(), vec![col(|r| r.0), col(|r| r.1), col(|r| r.2)]).unwrap()
}

/// The watermark in force while each batch is processed: the source emits
/// max(ts) - delay - 1 after each batch.
fn watermarks_before(batches: &[Vec<Rec>], delay: i64) -> Vec<i64> {
    let (mut wm, mut max) = (i64::MIN, i64::MIN);
    let mut out = Vec::new();
    for b in batches {
        out.push(wm);
        max = b.iter().map(|r| r.1).fold(max, i64::max);
        wm = wm.max(max - delay - 1);
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    count: i64,
    sum: i64,
    min: i64,
    max: i64,
    avg: f64,
}

/// (key, window start, window end) → the window's last emitted result.
type Out = BTreeMap<(i64, i64, i64), Row>;

/// Runs the job; returns the last result per window, whether any window was
/// emitted more than once, and the number of late records.
fn run(
    batches: &[Vec<Rec>],
    delay: i64,
    spec: WindowSpec,
    lateness: i64,
    p: usize,
    rocks: bool,
) -> (Out, bool, usize) {
    let env = Env::new();
    env.set_parallelism(p);
    if rocks {
        // A tiny cache: the database, not memory, holds the state.
        env.configure(|c| {
            c.state.backend = StateBackend::RocksDb(RocksConfig {
                cache_bytes: 4 << 10,
                block_cache_bytes: 64 << 10,
                write_buffer_bytes: 64 << 10,
            })
        });
    }
    let arrow: Vec<RecordBatch> = batches.iter().map(|b| to_arrow(b)).collect();
    let src: Stream = env
        .source_fn("input", schema(), move |_| {
            Ok(Box::new(Batches(arrow.clone().into())))
        })
        .set_parallelism(1);
    let agg = src
        .assign_watermarks(WatermarkStrategy::bounded_out_of_orderness(
            "ts",
            Duration::from_millis(delay as u64),
        ))
        .keyed_by(&["k"])
        .window(spec)
        .allowed_lateness(Duration::from_millis(lateness as u64))
        .aggregate([count(), sum("v"), min("v"), max("v"), avg("v")]);
    let late = agg.late_data().collect();
    let out = agg.collect();
    env.execute().unwrap();
    let mut got = Out::new();
    let mut repeated = false;
    // One key is handled by one subtask, whose batches reach the collector
    // in order: the last row per window is its final result.
    for b in out.batches() {
        let i = |c: usize| b.column(c).as_primitive::<Int64Type>().clone();
        let t = |c: usize| {
            b.column(c)
                .as_primitive::<TimestampMillisecondType>()
                .clone()
        };
        let (k, s, e) = (i(0), t(1), t(2));
        let (c, su, mn, mx) = (i(3), i(4), i(5), i(6));
        let avg = b.column(7).as_primitive::<Float64Type>();
        for r in 0..b.num_rows() {
            let row = Row {
                count: c.value(r),
                sum: su.value(r),
                min: mn.value(r),
                max: mx.value(r),
                avg: avg.value(r),
            };
            repeated |= got
                .insert((k.value(r), s.value(r), e.value(r)), row)
                .is_some();
        }
    }
    (got, repeated, late.num_rows())
}

fn finish(acc: BTreeMap<(i64, i64, i64), Vec<i64>>) -> Out {
    acc.into_iter()
        .map(|(k, v)| {
            let sum: i64 = v.iter().sum();
            let row = Row {
                count: v.len() as i64,
                sum,
                min: *v.iter().min().unwrap(),
                max: *v.iter().max().unwrap(),
                avg: sum as f64 / v.len() as f64,
            };
            (k, row)
        })
        .collect()
}

/// Tumbling/sliding reference: a record joins each window containing it
/// (enumerated naively) whose end - 1 + lateness the watermark has not
/// reached; it is late when it joins none.
fn reference_fixed(
    batches: &[Vec<Rec>],
    wms: &[i64],
    size: i64,
    slide: i64,
    lateness: i64,
) -> (Out, usize) {
    let mut acc: BTreeMap<(i64, i64, i64), Vec<i64>> = BTreeMap::new();
    let mut late = 0;
    for (batch, wm) in batches.iter().zip(wms) {
        for (k, ts, v) in batch {
            let mut joined = false;
            // Every slide-aligned start s with s <= ts < s + size.
            let mut s = ts.div_euclid(slide) * slide;
            while s + size > *ts {
                if s + size - 1 + lateness > *wm {
                    acc.entry((*k, s, s + size)).or_default().push(*v);
                    joined = true;
                }
                s -= slide;
            }
            if !joined {
                late += 1;
            }
        }
    }
    (finish(acc), late)
}

/// Session reference without lateness, replaying batches and watermarks:
/// per key a list of open sessions holding their values; a record merges
/// every open session overlapping [ts, ts + gap) and is late when the merged
/// session's end - 1 is at or below the watermark; after each batch the
/// sessions the new watermark passed are emitted and dropped.
fn reference_sessions(batches: &[Vec<Rec>], wms: &[i64], gap: i64) -> (Out, usize) {
    type Open = Vec<(i64, i64, Vec<i64>)>;
    let mut open: BTreeMap<i64, Open> = BTreeMap::new();
    let mut acc: BTreeMap<(i64, i64, i64), Vec<i64>> = BTreeMap::new();
    let mut late = 0;
    let mut fire = |open: &mut BTreeMap<i64, Open>, wm: i64| {
        for (k, list) in open.iter_mut() {
            list.retain(|(s, e, vals)| {
                if e - 1 <= wm {
                    assert!(acc.insert((*k, *s, *e), vals.clone()).is_none());
                    false
                } else {
                    true
                }
            });
        }
    };
    let next_wms = wms.iter().skip(1).copied().chain([i64::MAX]);
    for ((batch, wm), next) in batches.iter().zip(wms).zip(next_wms) {
        for (k, ts, v) in batch {
            let list = open.entry(*k).or_default();
            let (mut s, mut e, mut vals) = (*ts, ts + gap, vec![*v]);
            let (hit, keep): (Open, Open) = std::mem::take(list)
                .into_iter()
                .partition(|(os, oe, _)| *os < ts + gap && *ts < *oe);
            *list = keep;
            for (os, oe, ov) in hit.iter() {
                s = s.min(*os);
                e = e.max(*oe);
                vals.extend(ov);
            }
            if e - 1 <= *wm {
                late += 1;
                list.extend(hit);
            } else {
                list.push((s, e, vals));
            }
        }
        fire(&mut open, next);
    }
    (finish(acc), late)
}

fn records() -> impl Strategy<Value = Vec<Rec>> {
    prop::collection::vec((0i64..5, 0i64..3_000, -100i64..100), 1..300).prop_map(|v| {
        // Times drift forward with bounded disorder (up to 3 s back).
        v.into_iter()
            .enumerate()
            .map(|(i, (k, back, val))| (k, i as i64 * 40 - back, val))
            .collect()
    })
}

fn assert_close(got: &Out, want: &Out) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the windows emitted"
    );
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(
            (g.count, g.sum, g.min, g.max),
            (w.count, w.sum, w.min, w.max),
            "window {k:?}"
        );
        assert!((g.avg - w.avg).abs() < 1e-9, "avg of window {k:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn tumbling_and_sliding_match_reference(
        recs in records(),
        cuts in prop::collection::vec(0usize..400, 0..12),
        delay in 0i64..4_000,
        shape in 0usize..4,
        lateness in prop_oneof![Just(0i64), 1i64..2_500],
    ) {
        // Tumbling, slide dividing size, and slides that do not divide it
        // (panes of gcd(size, slide)).
        let (size, slide) = [(1_000, 1_000), (2_000, 500), (1_500, 1_000), (3_000, 700)][shape];
        let spec = if size == slide {
            WindowSpec::tumbling(Duration::from_millis(size as u64))
        } else {
            WindowSpec::sliding(Duration::from_millis(size as u64), Duration::from_millis(slide as u64))
        };
        let batches = to_batches(&recs, &cuts);
        let wms = watermarks_before(&batches, delay);
        let (want, want_late) = reference_fixed(&batches, &wms, size, slide, lateness);
        for (p, rocks) in [(1, false), (4, false), (2, true)] {
            let (got, repeated, late) = run(&batches, delay, spec, lateness, p, rocks);
            assert_close(&got, &want);
            prop_assert_eq!(late, want_late, "late records at parallelism {} (rocksdb: {})", p, rocks);
            if lateness == 0 {
                prop_assert!(!repeated, "without lateness every window fires once");
            }
        }
    }

    #[test]
    fn sessions_match_reference(
        recs in records(),
        cuts in prop::collection::vec(0usize..400, 0..12),
        delay in 0i64..4_000,
        gap in 50i64..2_000,
    ) {
        let batches = to_batches(&recs, &cuts);
        let wms = watermarks_before(&batches, delay);
        let (want, want_late) = reference_sessions(&batches, &wms, gap);
        for p in [1, 4] {
            let spec = WindowSpec::session(Duration::from_millis(gap as u64));
            let (got, repeated, late) = run(&batches, delay, spec, 0, p, false);
            assert_close(&got, &want);
            prop_assert_eq!(late, want_late, "late records at parallelism {}", p);
            prop_assert!(!repeated, "without lateness every session fires once");
        }
    }
}
