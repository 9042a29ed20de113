//! Windows against a brute-force reference over random out-of-order input,
//! run as real jobs at parallelism 1 and 4.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimestampMillisecondType,
};
use proptest::prelude::*;
use sluice_engine::{Env, Stream};
use sluice_operators::prelude::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

type Rec = (i64, i64, i64);

fn to_batches(recs: &[Rec], cuts: &[usize]) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (recs.len() + 1)).collect();
    bounds.push(recs.len());
    bounds.sort();
    for end in bounds {
        if end > start {
            let part = &recs[start..end];
            out.push(
                RecordBatch::try_new(
                    schema(),
                    vec![
                        Arc::new(Int64Array::from_iter_values(part.iter().map(|r| r.0))),
                        Arc::new(Int64Array::from_iter_values(part.iter().map(|r| r.1))),
                        Arc::new(Int64Array::from_iter_values(part.iter().map(|r| r.2))),
                    ],
                )
                .unwrap(),
            );
            start = end;
        }
    }
    out
}

/// The watermark in force before each record: the source emits
/// max(ts) - delay - 1 after each batch.
fn watermarks_before(batches: &[RecordBatch], delay: i64) -> Vec<i64> {
    let mut wm = i64::MIN;
    let mut max = i64::MIN;
    let mut out = Vec::new();
    for b in batches {
        let ts = b.column(1).as_primitive::<Int64Type>().values();
        for t in ts {
            out.push(wm);
            max = max.max(*t);
        }
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

type Out = BTreeMap<(i64, i64, i64), Row>;

fn run(batches: Vec<RecordBatch>, delay: i64, spec: WindowSpec, p: usize) -> (Out, usize) {
    let env = Env::new();
    env.set_parallelism(p);
    // One source subtask: each window subtask then has one input channel, so
    // which records are late does not depend on thread timing (with several
    // channels, a record can overtake another channel's watermark).
    let src: Stream = env.from_batches("input", schema(), batches);
    let agg = src
        .watermarks(bounded_out_of_orderness(
            "ts",
            Duration::from_millis(delay as u64),
        ))
        .key_by(["k"])
        .window(spec)
        .aggregate([count(), sum("v"), min("v"), max("v"), avg("v")]);
    let late = agg.late_data().collect();
    let out = agg.collect();
    env.execute().unwrap();
    let mut got = Out::new();
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
            assert!(
                got.insert((k.value(r), s.value(r), e.value(r)), row)
                    .is_none(),
                "window emitted twice"
            );
        }
    }
    (got, late.num_rows())
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

/// Tumbling/sliding reference: a record joins each of its windows that the
/// watermark before it has not passed; it is late when it joins none.
fn reference_fixed(recs: &[Rec], wms: &[i64], size: i64, slide: i64) -> (Out, usize) {
    let mut acc: BTreeMap<(i64, i64, i64), Vec<i64>> = BTreeMap::new();
    let mut late = 0;
    for ((k, ts, v), wm) in recs.iter().zip(wms) {
        let last = ts - ts.rem_euclid(slide);
        let mut joined = false;
        let mut s = last;
        while s + size > *ts {
            if s + size - 1 > *wm {
                acc.entry((*k, s, s + size)).or_default().push(*v);
                joined = true;
            }
            s -= slide;
        }
        if !joined {
            late += 1;
        }
    }
    (finish(acc), late)
}

/// Session reference when nothing is late: gap-merge of sorted times per key.
fn reference_sessions(recs: &[Rec], gap: i64) -> Out {
    let mut by_key: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    for (k, ts, v) in recs {
        by_key.entry(*k).or_default().push((*ts, *v));
    }
    let mut acc: BTreeMap<(i64, i64, i64), Vec<i64>> = BTreeMap::new();
    for (k, mut v) in by_key {
        v.sort();
        let mut group: Vec<(i64, i64)> = Vec::new();
        let mut flush = |g: &mut Vec<(i64, i64)>| {
            if let (Some(f), Some(l)) = (g.first(), g.last()) {
                acc.insert((k, f.0, l.0 + gap), g.iter().map(|x| x.1).collect());
            }
            g.clear();
        };
        for x in v {
            if group.last().is_some_and(|l| x.0 >= l.0 + gap) {
                flush(&mut group);
            }
            group.push(x);
        }
        flush(&mut group);
    }
    finish(acc)
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
        got.len(),
        want.len(),
        "windows: got {:?}\nwant {:?}",
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(
            (g.count, g.sum, g.min, g.max),
            (w.count, w.sum, w.min, w.max),
            "window {k:?}"
        );
        assert!((g.avg - w.avg).abs() < 1e-9);
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
    ) {
        let (size, slide) = [(1_000, 1_000), (2_000, 500), (1_500, 1_000), (3_000, 700)][shape];
        let spec = if size == slide {
            WindowSpec::tumbling(Duration::from_millis(size as u64))
        } else {
            WindowSpec::sliding(Duration::from_millis(size as u64), Duration::from_millis(slide as u64))
        };
        let batches = to_batches(&recs, &cuts);
        let wms = watermarks_before(&batches, delay);
        let (want, want_late) = reference_fixed(&recs, &wms, size, slide);
        for p in [1, 4] {
            let (got, late) = run(batches.clone(), delay, spec, p);
            assert_close(&got, &want);
            prop_assert_eq!(late, want_late);
        }
    }

    #[test]
    fn sessions_match_reference(
        recs in records(),
        cuts in prop::collection::vec(0usize..400, 0..12),
        gap in 50i64..2_000,
    ) {
        let batches = to_batches(&recs, &cuts);
        let want = reference_sessions(&recs, gap);
        for p in [1, 4] {
            // A delay above the disorder: nothing is late.
            let (got, late) = run(batches.clone(), 3_100, WindowSpec::session(Duration::from_millis(gap as u64)), p);
            assert_close(&got, &want);
            prop_assert_eq!(late, 0);
        }
    }
}
