//! Barriers in a running job must not change what it computes: two inputs
//! at different speeds (so barriers arrive in every order and one input is
//! held back while the other catches up), unioned, keyed and windowed, with
//! a checkpoint every few milliseconds, in exactly-once (aligned and
//! unaligned) and at-least-once mode, give the same windows as the same job
//! without checkpoints; the
//! checkpoints complete, and an input that ends mid-checkpoint does not
//! stall the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimestampMillisecondType};
use sluice_engine::checkpoint::Guarantee;
use sluice_engine::{CheckpointConfig, Env, Stream, WatermarkStrategy};
use sluice_operators::prelude::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

/// `n` batches of 50 rows; event time grows by 10 ms per row.
fn batches(n: usize, seed: i64) -> Vec<RecordBatch> {
    (0..n)
        .map(|b| {
            let rows = 50i64;
            let base = b as i64 * rows;
            let k = Int64Array::from_iter_values((0..rows).map(|i| (base + i + seed) % 17));
            let v = Int64Array::from_iter_values((0..rows).map(|i| (base + i) * seed % 101));
            let ts = Int64Array::from_iter_values((0..rows).map(|i| (base + i) * 10));
            RecordBatch::try_new(schema(), vec![Arc::new(k), Arc::new(v), Arc::new(ts)]).unwrap()
        })
        .collect()
}

type Windows = BTreeMap<(i64, i64), (i64, i64)>;

/// Checkpoint modes: the guarantee and whether barriers are unaligned.
type Mode = (Guarantee, bool);

fn run(checkpoint: Option<Mode>) -> (Windows, u64) {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new();
    env.set_parallelism(2);
    env.configure(|c| {
        if let Some((g, unaligned)) = checkpoint {
            let mut ck = CheckpointConfig::new(dir.path());
            ck.interval = Duration::from_millis(3);
            ck.guarantee = g;
            ck.unaligned = unaligned;
            c.checkpoint = Some(ck);
        }
    });
    let slow_batches = batches(60, 3);
    let slow: Stream = env
        .from_batches("slow", schema(), slow_batches)
        .map_batches(schema(), |b| {
            // Slow enough for periodic checkpoints to complete on a loaded
            // machine too (the test asserts some did).
            std::thread::sleep(Duration::from_millis(20));
            Ok(b)
        });
    // The fast input is shorter: it ends while checkpoints are in flight.
    let fast = env.from_batches("fast", schema(), batches(25, 7));
    let wm = || WatermarkStrategy::bounded_out_of_orderness("ts", Duration::ZERO);
    let out = slow
        .watermarks(wm())
        .union(&[fast.watermarks(wm())])
        .key_by(["k"])
        .window(WindowSpec::tumbling(Duration::from_millis(500)))
        .aggregate([count(), sum("v")])
        .collect();
    let res = env.execute().unwrap();
    let mut w = Windows::new();
    for b in out.batches() {
        let k = b.column(0).as_primitive::<Int64Type>();
        let s = b.column(1).as_primitive::<TimestampMillisecondType>();
        let c = b.column(3).as_primitive::<Int64Type>();
        let v = b.column(4).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            let prev = w.insert((k.value(r), s.value(r)), (c.value(r), v.value(r)));
            assert!(prev.is_none(), "a window fired twice");
        }
    }
    (w, res.checkpoints.completed)
}

#[test]
fn barriers_do_not_change_results() {
    let (want, none) = run(None);
    assert_eq!(none, 0);
    assert!(want.len() > 100);
    for g in [
        (Guarantee::ExactlyOnce, false),
        (Guarantee::ExactlyOnce, true),
        (Guarantee::AtLeastOnce, false),
    ] {
        let (got, completed) = run(Some(g));
        assert_eq!(got, want, "{g:?}");
        // Periodic checkpoints plus the final one.
        assert!(
            completed >= 3,
            "{g:?}: only {completed} checkpoints completed"
        );
    }
}

/// One window holding 200k distinct keys: far more state than the 256 KiB
/// live-state cache, block cache and memtables RocksDB is given, with the
/// same result as the heap backend.
#[test]
fn rocksdb_state_larger_than_its_cache() {
    use sluice_engine::state::rocks::RocksConfig;
    use sluice_engine::state::StateBackend;
    let keys = 200_000i64;
    let input: Vec<RecordBatch> = (0..20)
        .map(|b| {
            let k = Int64Array::from_iter_values((0..keys / 10).map(|i| (i * 7919 + b) % keys));
            let v = Int64Array::from_iter_values((0..keys / 10).map(|i| i % 1000 + b));
            let ts = Int64Array::from_iter_values((0..keys / 10).map(|i| b * 1000 + i % 1000));
            RecordBatch::try_new(schema(), vec![Arc::new(k), Arc::new(v), Arc::new(ts)]).unwrap()
        })
        .collect();
    let run = |rocks: bool| {
        let env = Env::new();
        env.set_parallelism(2);
        if rocks {
            env.configure(|c| {
                c.state.backend = StateBackend::RocksDb(RocksConfig {
                    cache_bytes: 256 << 10,
                    block_cache_bytes: 256 << 10,
                    write_buffer_bytes: 256 << 10,
                })
            });
        }
        let out = env
            .from_batches("input", schema(), input.clone())
            .watermarks(WatermarkStrategy::bounded_out_of_orderness(
                "ts",
                Duration::ZERO,
            ))
            .key_by(["k"])
            .window(WindowSpec::tumbling(Duration::from_secs(3600)))
            .aggregate([count(), sum("v"), max("v")])
            .collect();
        env.execute().unwrap();
        let mut rows: Vec<(i64, i64, i64, i64)> = Vec::new();
        for b in out.batches() {
            let c = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
            let (k, n, s, m) = (c(0), c(3), c(4), c(5));
            for r in 0..b.num_rows() {
                rows.push((k.value(r), n.value(r), s.value(r), m.value(r)));
            }
        }
        rows.sort_unstable();
        rows
    };
    let heap = run(false);
    assert_eq!(heap.len(), keys as usize);
    assert_eq!(run(true), heap);
}
