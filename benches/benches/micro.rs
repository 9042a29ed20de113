//! Criterion micro-benchmarks: hash partitioning, expression evaluation,
//! window aggregation (tumbling, and sliding at growing size/slide to show
//! per-record cost does not grow with the overlap), and decoding Kafka
//! JSON records into columns (flat schema: straight into builders; nested:
//! through arrow-json), without a broker.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, TimestampMillisecondArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_benches::{bid_schema, prepared, ROWS};
use sluice_connectors::sinks::DiscardSink;
use sluice_engine::exchange::local::channel;
use sluice_engine::exchange::partition::EdgeWriter;
use sluice_engine::exchange::ChannelSender;
use sluice_engine::{EdgeKind, Env, StreamMessage, WatermarkStrategy};
use sluice_operators::prelude::*;

/// Bid-like batches: 10,000 keys, 0.1 ms apart in event time.
fn batches(n: usize) -> Vec<RecordBatch> {
    let mut rng = SmallRng::seed_from_u64(7);
    (0..n)
        .map(|b| {
            let keys: Vec<i64> = (0..ROWS).map(|_| rng.random_range(0..10_000)).collect();
            let price: Vec<i64> = (0..ROWS).map(|_| rng.random_range(1..100_000)).collect();
            let ts: Vec<i64> = (0..ROWS).map(|i| ((b * ROWS + i) / 10) as i64).collect();
            RecordBatch::try_new(
                bid_schema(),
                vec![
                    Arc::new(Int64Array::from(keys)),
                    Arc::new(Int64Array::from(price)),
                    Arc::new(TimestampMillisecondArray::from(ts)),
                ],
            )
            .expect("bench batch")
        })
        .collect()
}

fn hash_partitioning(c: &mut Criterion) {
    let batch = batches(1).remove(0);
    let mut g = c.benchmark_group("hash_partition");
    g.throughput(Throughput::Elements(ROWS as u64));
    for p in [2usize, 8] {
        g.bench_with_input(BenchmarkId::from_parameter(p), &p, |b, &p| {
            let cancel = Arc::new(AtomicBool::new(false));
            let (txs, rxs): (Vec<_>, Vec<_>) =
                (0..p).map(|_| channel(1024, cancel.clone())).unzip();
            let txs: Vec<Box<dyn ChannelSender>> =
                txs.into_iter().map(|t| Box::new(t) as _).collect();
            let mut w = EdgeWriter::new(EdgeKind::Hash(vec![0]), txs, 128, 0);
            b.iter(|| {
                w.send_batch(batch.clone()).expect("send");
                for rx in &rxs {
                    while let Ok(StreamMessage::Batch(_)) = rx.try_recv() {}
                }
            });
        });
    }
    g.finish();
}

fn expressions(c: &mut Criterion) {
    let batch = batches(1).remove(0);
    let mut g = c.benchmark_group("expr");
    g.throughput(Throughput::Elements(ROWS as u64));
    let conv = col("price").cast(DataType::Float64) * lit(0.908);
    g.bench_function("price_to_euro", |b| {
        b.iter(|| conv.evaluate(&batch).expect("eval"))
    });
    let pred = (col("auction") % lit(123i64))
        .eq(lit(0i64))
        .and(col("price").gt(lit(1000i64)));
    g.bench_function("filter_predicate", |b| {
        b.iter(|| pred.evaluate(&batch).expect("eval"))
    });
    g.finish();
}

fn run_window(input: &Arc<Vec<RecordBatch>>, spec: WindowSpec) {
    let env = Env::new();
    env.set_parallelism(1);
    prepared(&env, bid_schema(), input.clone())
        .watermarks(WatermarkStrategy::ascending("date_time"))
        .key_by(["auction"])
        .window(spec)
        .aggregate([count(), sum("price")])
        .sink(DiscardSink);
    env.execute().expect("window job");
}

fn windows(c: &mut Criterion) {
    let input = Arc::new(batches(64));
    let mut g = c.benchmark_group("window");
    g.sample_size(10);
    g.throughput(Throughput::Elements((64 * ROWS) as u64));
    let s = Duration::from_secs;
    g.bench_function("tumbling_10s", |b| {
        b.iter(|| run_window(&input, WindowSpec::tumbling(s(10))))
    });
    for size in [10u64, 60] {
        g.bench_function(BenchmarkId::new("sliding_2s", format!("{size}s")), |b| {
            b.iter(|| run_window(&input, WindowSpec::sliding(s(size), s(2))))
        });
    }
    g.bench_function("session_1s", |b| {
        b.iter(|| run_window(&input, WindowSpec::session(s(1))))
    });
    g.finish();
}

/// Kafka JSON decoding of one source batch (8,192 records of about 100
/// bytes, as in the Kafka macro benchmark), flat, with a nested field, and
/// with 40 fields.
fn kafka_json(c: &mut Criterion) {
    use sluice_connectors::kafka::format::{schema_from_json, Decoder, RawRecords};
    use sluice_connectors::kafka::Format;
    const N: usize = 8192;
    let flat = serde_json::json!([
        {"name": "id", "type": "int64"},
        {"name": "user", "type": "string"},
        {"name": "amount", "type": "float64"},
        {"name": "ok", "type": "bool"},
        {"name": "city", "type": "string"},
    ]);
    let mut nested = flat.clone();
    nested.as_array_mut().unwrap().push(serde_json::json!(
        {"name": "geo", "type": {"struct": [{"name": "lat", "type": "float64"}]}}
    ));
    // 40 fields: where looking a key up among the fields starts to cost.
    let mut wide = flat.clone();
    let mut wide_extra = String::new();
    for k in 0..35 {
        wide.as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": format!("x{k:02}"), "type": "int64"}));
        wide_extra.push_str(&format!(r#", "x{k:02}": {k}"#));
    }
    let mut group = c.benchmark_group("kafka_json_decode");
    group.throughput(Throughput::Elements(N as u64));
    for (name, fields, extra) in [
        ("flat", flat, ""),
        ("nested", nested, r#", "geo": {"lat": 52.5}"#),
        ("wide", wide, wide_extra.as_str()),
    ] {
        let mut recs = RawRecords::default();
        for i in 0..N {
            let v = sluice_benches::kafka_json_record(i, extra);
            recs.push(i as i64, Some(0), None, Some(v.as_bytes()));
        }
        let schema = schema_from_json(&fields).unwrap();
        let mut decoder = Decoder::new(Format::Json(schema)).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let batch = decoder
                    .decode(0, &recs, &mut |i, e| panic!("record {i}: {e}"))
                    .unwrap();
                assert_eq!(batch.num_rows(), N);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hash_partitioning, expressions, windows, kafka_json);
criterion_main!(benches);
