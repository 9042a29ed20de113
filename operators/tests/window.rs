//! Window semantics on small, hand-checked jobs: lateness and the late-data
//! side output for tumbling, sliding and session windows; global (unkeyed)
//! windows; the hash edge on the keys; composite and string keys; chaining a
//! window on `window_end`; one output batch per firing watermark.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::array_value_to_string;
use sluice_engine::dsl::IdentityOperator;
use sluice_engine::graph::NodeKind;
use sluice_engine::{EdgeKind, Env, Stream};
use sluice_operators::prelude::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

/// (k, name, ts, v)
type Rec = (i64, &'static str, i64, i64);

/// One batch per group, from one source subtask, watermarks with `delay`.
fn source(env: &Env, groups: Vec<Vec<Rec>>, delay: u64) -> Stream {
    let batches = groups
        .into_iter()
        .map(|g| {
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Int64Array::from_iter_values(g.iter().map(|r| r.0))),
                    Arc::new(StringArray::from_iter_values(g.iter().map(|r| r.1))),
                    Arc::new(Int64Array::from_iter_values(g.iter().map(|r| r.2))),
                    Arc::new(Int64Array::from_iter_values(g.iter().map(|r| r.3))),
                ],
            )
            .unwrap()
        })
        .collect();
    env.from_batches("rows", schema(), batches)
        .watermarks(bounded_out_of_orderness("ts", Duration::from_millis(delay)))
}

/// Rows as `a|b|c` strings in arrival order (timestamps as epoch ms).
fn table(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Timestamp(..) => cast(c, &DataType::Int64).unwrap(),
                _ => c.clone(),
            })
            .collect();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = cols
                .iter()
                .map(|c| array_value_to_string(c, r).unwrap())
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Column `v` of the late records, in arrival order.
fn late_values(batches: &[RecordBatch]) -> Vec<String> {
    table(batches)
        .into_iter()
        .map(|r| r.rsplit('|').next().unwrap().to_string())
        .collect()
}

#[test]
fn tumbling_late_records_go_to_late_data_or_refire_within_lateness() {
    // Batch 1 moves the watermark to 249, so [0, 100) fires; batch 2 brings a
    // record for it; batch 3 moves the watermark to 399 (past 99 + 200);
    // batch 4 brings another record for [0, 100).
    let input = || {
        vec![
            vec![(1, "a", 10, 1), (1, "a", 250, 2)],
            vec![(1, "a", 20, 3)],
            vec![(1, "a", 400, 4)],
            vec![(1, "a", 30, 5)],
        ]
    };
    let run = |lateness: u64| {
        let env = Env::new();
        env.set_parallelism(2);
        let agg = source(&env, input(), 0)
            .key_by(["k"])
            .window(WindowSpec::tumbling(Duration::from_millis(100)))
            .allowed_lateness(Duration::from_millis(lateness))
            .aggregate([count(), sum("v")]);
        let late = agg.late_data().collect();
        let out = agg.collect();
        env.execute().unwrap();
        (table(&out.batches()), late_values(&late.batches()))
    };

    let (out, late) = run(0);
    assert_eq!(late, ["3", "5"], "records for a fired window are late");
    assert_eq!(
        sorted(out),
        ["1|0|100|1|1", "1|200|300|1|2", "1|400|500|1|4"]
    );

    let (out, late) = run(200);
    assert_eq!(
        late,
        ["5"],
        "only the record past end - 1 + lateness is late"
    );
    let first: Vec<_> = out.iter().filter(|r| r.starts_with("1|0|")).collect();
    assert_eq!(
        first,
        ["1|0|100|1|1", "1|0|100|2|4"],
        "[0, 100) fires at watermark 249, then again with the late record"
    );
    assert_eq!(out.len(), 4);
}

#[test]
fn sliding_lateness_updates_only_windows_still_within_it() {
    // size 200, slide 100, lateness 150. After batch 1 the watermark is 349:
    // [-100, 100) and [0, 200) fired. Record 120 belongs to [0, 200) (past
    // 199 + 150) and [100, 300) (within lateness, fired empty): only the
    // latter takes it, and fires at once.
    let env = Env::new();
    let agg = source(
        &env,
        vec![
            vec![(1, "a", 50, 1), (1, "a", 350, 2)],
            vec![(1, "a", 120, 10)],
        ],
        0,
    )
    .key_by(["k"])
    .window(WindowSpec::sliding(
        Duration::from_millis(200),
        Duration::from_millis(100),
    ))
    .allowed_lateness(Duration::from_millis(150))
    .aggregate([count(), sum("v")]);
    let late = agg.late_data().collect();
    let out = agg.collect();
    env.execute().unwrap();
    assert_eq!(late.num_rows(), 0);
    assert_eq!(
        table(&out.batches()),
        [
            "1|-100|100|1|1",
            "1|0|200|1|1",
            "1|100|300|1|10",
            "1|200|400|1|2",
            "1|300|500|1|2"
        ]
    );
}

#[test]
fn sessions_merge_refire_within_lateness_and_drop_late_records() {
    // gap 100, lateness 500. Watermark 299 after batch 1: [0, 100) fires.
    // 50 extends it to [0, 150): fires again at once. 160 opens [160, 260),
    // already due: fires at once. 140 bridges both into [0, 260): fires.
    // Watermark 1999 purges everything; 100 then forms [100, 200), past
    // 199 + 500: late.
    let input = vec![
        vec![(1, "a", 0, 1), (1, "a", 300, 2)],
        vec![(1, "a", 50, 3)],
        vec![(1, "a", 160, 4)],
        vec![(1, "a", 140, 5)],
        vec![(1, "a", 2000, 7)],
        vec![(1, "a", 100, 6)],
    ];
    for p in [1, 3] {
        let env = Env::new();
        env.set_parallelism(p);
        let agg = source(&env, input.clone(), 0)
            .key_by(["k"])
            .window(WindowSpec::session(Duration::from_millis(100)))
            .allowed_lateness(Duration::from_millis(500))
            .aggregate([count(), sum("v"), min("ts")]);
        let late = agg.late_data().collect();
        let out = agg.collect();
        env.execute().unwrap();
        assert_eq!(late_values(&late.batches()), ["6"]);
        assert_eq!(
            table(&out.batches()),
            [
                "1|0|100|1|1|0",
                "1|0|150|2|4|0",
                "1|160|260|1|4|160",
                "1|0|260|4|13|0",
                "1|300|400|1|2|300",
                "1|2000|2100|1|7|2000"
            ]
        );
    }
}

#[test]
fn unkeyed_windows_run_as_one_global_window() {
    let env = Env::new();
    env.set_parallelism(4);
    let rows: Vec<Rec> = (0..40).map(|i| (i % 7, "x", i * 50, i)).collect();
    let agg = source(&env, rows.chunks(9).map(|c| c.to_vec()).collect(), 0)
        .rebalance()
        .window(WindowSpec::tumbling(Duration::from_secs(1)))
        .aggregate([count(), sum("v")]);
    assert!(agg.keys().is_none());
    let out = agg.collect();
    let graph = env.graph().unwrap();
    let node = graph
        .nodes
        .iter()
        .find(|n| n.name == "tumbling_window")
        .unwrap();
    assert_eq!(node.parallelism, Some(1));
    env.execute().unwrap();
    // Records 20i..20i+19 fall in second i. The collecting sink runs at
    // parallelism 4, so the two windows may arrive in either order.
    let mut got = table(&out.batches());
    got.sort();
    assert_eq!(got, ["0|1000|20|190", "1000|2000|20|590"]);
}

#[test]
fn the_window_input_is_hashed_on_the_keys_after_a_forward_operator() {
    let env = Env::new();
    env.set_parallelism(3);
    let keyed = source(&env, vec![vec![(1, "a", 0, 1)]], 0).key_by(["k", "name"]);
    let keys = keyed.keys().map(|k| k.to_vec());
    let event_time = keyed.event_time().map(String::from);
    // A forward operator that keeps keys and event time, as map-like verbs do.
    let forwarded = keyed
        .transform("identity", schema(), |_| Ok(Box::new(IdentityOperator)))
        .with_keys(keys)
        .with_event_time(event_time);
    let agg = forwarded
        .window(WindowSpec::tumbling(Duration::from_secs(1)))
        .aggregate([count()]);
    assert_eq!(agg.keys(), Some(&["k".to_string(), "name".to_string()][..]));
    assert_eq!(agg.event_time(), Some("window_end"));
    let names: Vec<_> = agg.schema().fields().iter().map(|f| f.name()).collect();
    assert_eq!(names, ["k", "name", "window_start", "window_end", "count"]);
    let graph = env.graph().unwrap();
    let node = graph
        .nodes
        .iter()
        .find(|n| n.name == "tumbling_window")
        .unwrap();
    assert!(matches!(node.kind, NodeKind::Operator { .. }));
    assert_eq!(node.inputs[0].kind, EdgeKind::Hash(vec![0, 1]));
}

#[test]
fn composite_and_string_keys_group_like_single_keys() {
    let rows: Vec<Rec> = (0..60)
        .map(|i| (i % 2, ["x", "y", "z"][(i % 3) as usize], i * 10, 1))
        .collect();
    let mut results = Vec::new();
    for p in [1, 4] {
        let env = Env::new();
        env.set_parallelism(p);
        let s = source(&env, rows.chunks(13).map(|c| c.to_vec()).collect(), 0);
        let by_both = s
            .clone()
            .key_by(["name", "k"])
            .window(WindowSpec::tumbling(Duration::from_millis(300)))
            .aggregate([count()])
            .collect();
        let by_name = s
            .key_by(["name"])
            .window(WindowSpec::tumbling(Duration::from_millis(300)))
            .aggregate([count()])
            .collect();
        env.execute().unwrap();
        let both = sorted(table(&by_both.batches()));
        // 6 (name, k) combinations in 2 windows of 30 records each: 5 apiece.
        assert_eq!(both.len(), 12);
        assert!(both.iter().all(|r| r.ends_with("|5")), "{both:?}");
        let name = sorted(table(&by_name.batches()));
        assert_eq!(name.len(), 6);
        assert!(name.iter().all(|r| r.ends_with("|10")), "{name:?}");
        results.push((both, name));
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn a_window_on_window_end_sees_nothing_late() {
    // Disorder up to ~5 s, delay 6 s: nothing is late upstream.
    let rows: Vec<Rec> = (0..500)
        .map(|i| (i % 3, "a", (i * 37) % 5_000 + i * 4, 1))
        .collect();
    // Reference: a record in [s, s + 100) is counted in the second holding s + 100.
    let mut want: Vec<String> = {
        let mut m = std::collections::BTreeMap::new();
        for (k, _, ts, _) in &rows {
            let end = ts.div_euclid(100) * 100 + 100;
            *m.entry((*k, end.div_euclid(1_000) * 1_000)).or_insert(0) += 1;
        }
        m.into_iter()
            .map(|((k, s), n)| format!("{k}|{s}|{}|{n}", s + 1_000))
            .collect()
    };
    want.sort();
    for p in [1, 4] {
        let env = Env::new();
        env.set_parallelism(p);
        let s = source(&env, rows.chunks(17).map(|c| c.to_vec()).collect(), 6_000);
        let small = s
            .key_by(["k"])
            .window(WindowSpec::tumbling(Duration::from_millis(100)))
            .aggregate([count().alias("n")]);
        let small_late = small.late_data().collect();
        // Windows of a window: the 100 ms counts summed per second.
        let nested = small
            .window(WindowSpec::tumbling(Duration::from_secs(1)))
            .aggregate([sum("n")]);
        let nested_late = nested.late_data().collect();
        let nested = nested.collect();
        env.execute().unwrap();
        assert_eq!(small_late.num_rows(), 0);
        assert_eq!(nested_late.num_rows(), 0, "nothing is late downstream");
        assert_eq!(sorted(table(&nested.batches())), want, "parallelism {p}");
    }
}

#[test]
fn one_output_batch_per_firing_watermark() {
    // Five keys in three windows, all closed by the final watermark.
    let rows: Vec<Rec> = (0..30).map(|i| (i % 5, "a", i * 10, 1)).collect();
    let env = Env::new();
    env.set_parallelism(1);
    let out = env
        .from_batches(
            "rows",
            schema(),
            vec![RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
                ],
            )
            .unwrap()],
        )
        // A delay longer than the data: only the end of input fires windows.
        .watermarks(bounded_out_of_orderness("ts", Duration::from_secs(10)))
        .key_by(["k"])
        .window(WindowSpec::sliding(
            Duration::from_millis(200),
            Duration::from_millis(100),
        ))
        .aggregate([count()])
        .collect();
    env.execute().unwrap();
    // Windows starting at -100, 0, 100, 200 per key.
    assert_eq!(out.num_rows(), 20);
    assert_eq!(out.batches().len(), 1);
}
