//! The Kafka source against a real broker (tansu, started per test on a
//! free port). Records are written by a plain rdkafka producer and read
//! back by the engine; dead letters are read by a plain rdkafka consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_connectors::kafka::testing::Broker;
use sluice_connectors::kafka::{dlq, send_waiting, DecodePolicy, Format, KafkaSource, StartFrom};
use sluice_connectors::parquet::ParquetSink;
use sluice_connectors::sinks::SlowSink;
use sluice_engine::{CheckpointConfig, Env, RestartStrategy, WatermarkStrategy};
use sluice_operators::prelude::*;

fn producer(broker: &Broker) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Writes `values` to `partition` (or spread by the producer when `None`)
/// and waits until the broker has them all.
fn produce(broker: &Broker, topic: &str, partition: Option<i32>, values: &[String]) {
    let p = producer(broker);
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{i}");
        let mut rec = BaseRecord::to(topic).key(&key).payload(v);
        if let Some(part) = partition {
            rec = rec.partition(part);
        } else {
            rec = rec.partition((i % 3) as i32);
        }
        send_waiting(&p, rec).unwrap();
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

fn json_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]))
}

fn record(id: usize) -> String {
    format!(r#"{{"id": {id}, "name": "n{}"}}"#, id % 7)
}

/// (partition, offset, id) of every row of every visible Parquet file.
fn read_rows(dir: &Path) -> Vec<(i32, i64, i64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".parquet") {
            continue;
        }
        let f = std::fs::File::open(e.path()).unwrap();
        for b in ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
        {
            out.extend(triples(&b.unwrap()));
        }
    }
    out.sort_unstable();
    out
}

fn triples(b: &RecordBatch) -> Vec<(i32, i64, i64)> {
    let p = b.column(0).as_primitive::<Int32Type>();
    let o = b.column(1).as_primitive::<Int64Type>();
    let id = b.column(3).as_primitive::<Int64Type>();
    (0..b.num_rows())
        .map(|i| (p.value(i), o.value(i), id.value(i)))
        .collect()
}

/// A bounded job must stop at the end offsets of its first start even when
/// more records arrive while it runs, and still do so after it failed and
/// restarted from a checkpoint (the ends come from state, not a new look).
#[test]
fn bounded_mode_stops_at_first_seen_end_across_a_restart() {
    let broker = Broker::start().unwrap();
    broker.create_topic("events", 3).unwrap();
    let n = 6000;
    let values: Vec<String> = (0..n).map(record).collect();
    produce(&broker, "events", None, &values);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ck = dir.path().join("ck");
    let env = Env::new();
    env.set_parallelism(2);
    env.configure(|c| {
        c.name = "bounded".into();
        let mut cfg = CheckpointConfig::new(&ck);
        cfg.interval = Duration::from_millis(20);
        c.checkpoint = Some(cfg);
        c.restart = RestartStrategy::FixedDelay {
            attempts: 3,
            delay: Duration::from_millis(10),
        };
    });
    let source = KafkaSource::new(broker.address(), "events")
        .json(json_schema())
        .until_end()
        .batch_size(50);
    let stream = env.source(source);
    let schema = stream.schema().clone();
    let addr = broker.address();
    let produced_more = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let ck_probe = ck.clone();
    let more = produced_more.clone();
    let parts_seen = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    stream
        .map_batches(schema, move |b| {
            // Once every partition delivered a batch, every subtask has
            // opened and fixed its ends: write records past them, which the
            // job must not read.
            let all_open = {
                let mut seen = parts_seen.lock().unwrap();
                seen.extend(
                    b.column(0)
                        .as_primitive::<Int32Type>()
                        .values()
                        .iter()
                        .copied(),
                );
                seen.len() == 3
            };
            if all_open && !more.swap(true, Ordering::SeqCst) {
                let extra: Vec<String> = (n..n + 300).map(record).collect();
                let p: BaseProducer = ClientConfig::new()
                    .set("bootstrap.servers", &addr)
                    .create()
                    .unwrap();
                for (i, v) in extra.iter().enumerate() {
                    p.send(
                        BaseRecord::<(), String>::to("events")
                            .payload(v)
                            .partition((i % 3) as i32),
                    )
                    .unwrap();
                }
                p.flush(Duration::from_secs(30)).unwrap();
            }
            let k = seen.fetch_add(b.num_rows() as u64, Ordering::SeqCst);
            // Fail once, mid-way, after a checkpoint completed.
            let checkpointed = std::fs::read_dir(&ck_probe)
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.path().join("_manifest.json").exists())
                })
                .unwrap_or(false);
            if k > 1000 && checkpointed && !failed.swap(true, Ordering::SeqCst) {
                panic!("injected failure after {k} records");
            }
            // Slow enough that checkpoints (every 20 ms) complete mid-run.
            std::thread::sleep(Duration::from_millis(5));
            Ok(b)
        })
        .sink(ParquetSink::new(&out));
    let res = env.execute().unwrap();
    assert!(produced_more.load(Ordering::SeqCst));
    assert_eq!(
        res.checkpoints.restarts, 1,
        "the injected failure restarted the job"
    );

    let rows = read_rows(&out);
    let ids: Vec<i64> = rows.iter().map(|r| r.2).collect();
    let want: Vec<i64> = (0..n as i64).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    if sorted != want {
        let mut seen = BTreeMap::new();
        for id in &sorted {
            *seen.entry(*id).or_insert(0usize) += 1;
        }
        let dups: Vec<_> = seen
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(i, _)| *i)
            .collect();
        let missing: Vec<_> = want.iter().filter(|i| !seen.contains_key(i)).collect();
        let extra = seen.keys().filter(|i| **i >= n as i64).count();
        panic!(
            "every record before the end exactly once, none after: {} rows, {} duplicated (first {:?}), {} missing (first {:?}), {extra} past the end",
            sorted.len(),
            dups.len(),
            &dups[..dups.len().min(5)],
            missing.len(),
            &missing[..missing.len().min(5)],
        );
    }
    // (partition, offset) pairs are unique and dense per partition.
    let mut per: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, o, _) in &rows {
        per.entry(*p).or_default().push(*o);
    }
    assert_eq!(per.len(), 3);
    for (p, offs) in per {
        let dense: Vec<i64> = (0..offs.len() as i64).collect();
        assert_eq!(offs, dense, "partition {p}");
    }
}

fn consume_all(broker: &Broker, topic: &str, expect: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", "verifier")
        .create()
        .unwrap();
    // A topic created by its first record may briefly have no partitions.
    let deadline = Instant::now() + Duration::from_secs(10);
    let partitions = loop {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let ps: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
        if !ps.is_empty() || Instant::now() > deadline {
            break ps;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < expect && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    // Nothing more than expected arrives.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

fn header<'a>(m: &'a rdkafka::message::OwnedMessage, key: &str) -> Option<&'a str> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| std::str::from_utf8(v).unwrap())
}

fn mixed_records() -> (Vec<String>, BTreeSet<usize>) {
    let mut values = Vec::new();
    let mut bad = BTreeSet::new();
    for i in 0..300 {
        if i % 50 == 7 {
            values.push(format!(r#"{{"id": "not a number {i}"}}"#));
            bad.insert(i);
        } else if i % 50 == 31 {
            values.push(format!("{{broken json {i}"));
            bad.insert(i);
        } else {
            values.push(record(i));
        }
    }
    (values, bad)
}

fn run_bounded(
    broker: &Broker,
    topic: &str,
    policy: DecodePolicy,
) -> sluice_engine::Result<(usize, u64, u64)> {
    let env = Env::new();
    env.set_parallelism(2);
    let src = KafkaSource::new(broker.address(), topic)
        .json(json_schema())
        .until_end()
        .on_decode_error(policy);
    let stats = src.decode_stats();
    let got = env.source(src).collect();
    env.execute()?;
    Ok((got.num_rows(), stats.skipped(), stats.dead_lettered()))
}

#[test]
fn bad_records_follow_the_decode_policy() {
    let broker = Broker::start().unwrap();
    broker.create_topic("mixed", 1).unwrap();
    let (values, bad) = mixed_records();
    produce(&broker, "mixed", Some(0), &values);
    let good = values.len() - bad.len();

    // Dead letters: the original bytes, the error and the position.
    let (rows, skipped, dead) = run_bounded(
        &broker,
        "mixed",
        DecodePolicy::DeadLetter("mixed-dlq".into()),
    )
    .unwrap();
    assert_eq!((rows, skipped, dead as usize), (good, 0, bad.len()));
    let letters = consume_all(&broker, "mixed-dlq", bad.len());
    assert_eq!(letters.len(), bad.len());
    let offsets: BTreeSet<usize> = letters
        .iter()
        .map(|m| header(m, dlq::OFFSET_HEADER).unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        offsets, bad,
        "one dead letter per bad record, by source offset"
    );
    for m in &letters {
        let off: usize = header(m, dlq::OFFSET_HEADER).unwrap().parse().unwrap();
        assert_eq!(
            m.payload().unwrap(),
            values[off].as_bytes(),
            "original bytes"
        );
        assert_eq!(
            m.key().unwrap(),
            format!("k{off}").as_bytes(),
            "original key"
        );
        assert_eq!(header(m, dlq::TOPIC_HEADER), Some("mixed"));
        assert_eq!(header(m, dlq::PARTITION_HEADER), Some("0"));
        let err = header(m, dlq::ERROR_HEADER).unwrap();
        if off % 50 == 7 {
            assert!(err.contains("field 'id' is a string"), "{err}");
        } else {
            assert!(err.contains("invalid JSON"), "{err}");
        }
    }

    // Skip: counted, not emitted.
    let (rows, skipped, dead) = run_bounded(&broker, "mixed", DecodePolicy::Skip).unwrap();
    assert_eq!((rows, skipped as usize, dead), (good, bad.len(), 0));

    // Fail: the job fails naming the first bad record.
    let err = run_bounded(&broker, "mixed", DecodePolicy::Fail).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("topic 'mixed' partition 0 offset 7") && msg.contains("field 'id'"),
        "{msg}"
    );
}

fn collect_ids(batches: &[RecordBatch]) -> Vec<i64> {
    let mut ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| triples(b).into_iter().map(|t| t.2))
        .collect();
    ids.sort_unstable();
    ids
}

/// Positions are committed to the group when checkpoints complete, and a
/// job starting from the group's offsets reads only what came after; a job
/// starting from the latest offsets reads nothing already there, and one
/// starting from a timestamp reads from the first record at or after it.
#[test]
fn start_positions_and_committed_offsets() {
    let broker = Broker::start().unwrap();
    broker.create_topic("pos", 3).unwrap();
    produce(
        &broker,
        "pos",
        None,
        &(0..300).map(record).collect::<Vec<_>>(),
    );
    let dir = tempfile::tempdir().unwrap();

    let run = |start: StartFrom, ck: Option<&Path>| -> Vec<i64> {
        let env = Env::new();
        env.set_parallelism(2);
        if let Some(ck) = ck {
            env.configure(|c| {
                let mut cfg = CheckpointConfig::new(ck);
                cfg.interval = Duration::from_millis(50);
                c.checkpoint = Some(cfg);
            });
        }
        let src = KafkaSource::new(broker.address(), "pos")
            .json(json_schema())
            .until_end()
            .start_from(start)
            .group("sluice-test");
        let got = env.source(src).collect();
        env.execute().unwrap();
        collect_ids(&got.batches())
    };

    // Earliest with checkpoints: everything; the final checkpoint commits.
    assert_eq!(
        run(StartFrom::Earliest, Some(&dir.path().join("ck1"))),
        (0..300).collect::<Vec<_>>()
    );
    let t_mid = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    produce(
        &broker,
        "pos",
        None,
        &(300..450).map(record).collect::<Vec<_>>(),
    );
    // Committed: only the records after the committed positions.
    assert_eq!(
        run(StartFrom::Committed, Some(&dir.path().join("ck2"))),
        (300..450).collect::<Vec<_>>()
    );
    // Timestamp: the records written after t_mid.
    assert_eq!(
        run(StartFrom::Timestamp(t_mid), None),
        (300..450).collect::<Vec<_>>()
    );
    // Latest: nothing (bounded at the same high watermark).
    assert!(run(StartFrom::Latest, None).is_empty());
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An unbounded job reads records as they arrive, on every partition.
/// (Partition discovery is not tested here: tansu 0.6 does not implement
/// CreatePartitions, so a topic cannot grow while a test runs.)
#[test]
fn unbounded_job_tails_the_topic() {
    let broker = Broker::start().unwrap();
    broker.create_topic("tail", 3).unwrap();
    produce(
        &broker,
        "tail",
        Some(0),
        &(0..100).map(record).collect::<Vec<_>>(),
    );
    let env = Env::new();
    env.set_parallelism(2);
    let src = KafkaSource::new(broker.address(), "tail")
        .format(Format::String)
        .partition_discovery(Some(Duration::from_millis(200)));
    let got = env.source(src).collect();
    let handle = env.start().unwrap();
    let wait_rows = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.num_rows() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        got.num_rows()
    };
    assert_eq!(wait_rows(100), 100);
    produce(
        &broker,
        "tail",
        Some(1),
        &(100..150).map(record).collect::<Vec<_>>(),
    );
    produce(
        &broker,
        "tail",
        Some(2),
        &(150..200).map(record).collect::<Vec<_>>(),
    );
    assert_eq!(
        wait_rows(200),
        200,
        "records written while the job runs arrive"
    );
    std::thread::sleep(Duration::from_millis(300));
    handle.cancel();
    let _ = handle.join();
    assert_eq!(got.num_rows(), 200, "nothing twice");
    let parts: BTreeSet<i32> = got
        .batches()
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int32Type>().values().to_vec())
        .collect();
    assert_eq!(parts, BTreeSet::from([0, 1, 2]));
    let texts = got.concat();
    let mut values: Vec<String> = texts
        .column(3)
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap().to_string())
        .collect();
    values.sort();
    let mut want: Vec<String> = (0..200).map(record).collect();
    want.sort();
    assert_eq!(values, want);
}

/// Each partition is a watermark split: an empty partition holds event
/// time back until the idle timeout declares it idle, after which windows
/// over the other partitions fire, each with its full count.
#[test]
fn per_partition_watermarks_with_idleness() {
    let broker = Broker::start().unwrap();
    broker.create_topic("wm", 3).unwrap();
    let base = 1_700_000_000_000i64;
    let p = producer(&broker);
    for part in 0..2 {
        for t in 0..20i64 {
            for j in 0..10i64 {
                let v = format!(r#"{{"id": {}, "name": null}}"#, t * 10 + j);
                p.send(
                    BaseRecord::<(), String>::to("wm")
                        .payload(&v)
                        .partition(part)
                        .timestamp(base + t * 1000 + j * 50),
                )
                .unwrap();
            }
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();

    let run = |idle: Option<Duration>, wait: Duration| -> Vec<(i32, i64)> {
        let env = Env::new();
        env.set_parallelism(1);
        let mut wm = WatermarkStrategy::bounded_out_of_orderness("_timestamp", Duration::ZERO);
        if let Some(d) = idle {
            wm = wm.idle_after(d);
        }
        let got = env
            .source(KafkaSource::new(broker.address(), "wm").json(json_schema()))
            .watermarks(wm)
            .key_by(["_partition"])
            .window(WindowSpec::tumbling(Duration::from_secs(1)))
            .aggregate([count()])
            .collect();
        let handle = env.start().unwrap();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && got.num_rows() < 38 {
            std::thread::sleep(Duration::from_millis(50));
        }
        handle.cancel();
        let _ = handle.join();
        got.batches()
            .iter()
            .flat_map(|b| {
                let part = b.column(0).as_primitive::<Int32Type>().clone();
                let n = b
                    .column(b.num_columns() - 1)
                    .as_primitive::<Int64Type>()
                    .clone();
                (0..b.num_rows()).map(move |i| (part.value(i), n.value(i)))
            })
            .collect()
    };

    // Without idleness the empty partition 2 holds every window back.
    assert!(run(None, Duration::from_millis(1500)).is_empty());
    // With it, the windows of partitions 0 and 1 up to the watermark fire
    // (the last second of each stays open: nothing later has arrived).
    let fired = run(Some(Duration::from_millis(300)), Duration::from_secs(20));
    assert_eq!(fired.len(), 38, "19 windows of each of the two partitions");
    assert!(fired.iter().all(|(p, n)| *p < 2 && *n == 10), "{fired:?}");
}

/// Avro datums with a given writer schema, read from the topic.
#[test]
fn avro_values_with_a_given_schema() {
    use apache_avro::types::Value as Avro;
    use apache_avro::writer::datum::GenericDatumWriter;
    use sluice_connectors::kafka::avro::AvroSchema;
    let text = r#"{"type": "record", "name": "E", "fields": [
        {"name": "id", "type": "long"}, {"name": "name", "type": ["null", "string"]}]}"#;
    let schema = AvroSchema::parse(text).unwrap();
    let parsed = apache_avro::Schema::parse_str(text).unwrap();
    let w = GenericDatumWriter::builder(&parsed).build().unwrap();
    let broker = Broker::start().unwrap();
    broker.create_topic("avro", 2).unwrap();
    let p = producer(&broker);
    for i in 0..500i64 {
        let name = if i % 5 == 0 {
            Avro::Union(0, Box::new(Avro::Null))
        } else {
            Avro::Union(1, Box::new(Avro::String(format!("n{i}"))))
        };
        let bytes = w
            .write_value_to_vec(Avro::Record(vec![
                ("id".into(), Avro::Long(i)),
                ("name".into(), name),
            ]))
            .unwrap();
        p.send(
            BaseRecord::<(), Vec<u8>>::to("avro")
                .payload(&bytes)
                .partition((i % 2) as i32),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let env = Env::new();
    env.set_parallelism(2);
    let got = env
        .source(
            KafkaSource::new(broker.address(), "avro")
                .format(Format::Avro(schema))
                .until_end(),
        )
        .collect();
    env.execute().unwrap();
    let batches = got.batches();
    let ids = collect_ids(&batches);
    assert_eq!(ids, (0..500).collect::<Vec<_>>());
    let nulls: usize = batches.iter().map(|b| b.column(4).null_count()).sum();
    assert_eq!(nulls, 100);
}

/// Consumer lag per partition: the source reports, as its backlog, each
/// partition's high watermark minus its position. Behind a slow sink the
/// source falls behind the topic (lag above zero), then catches up (zero).
#[test]
fn consumer_lag_per_partition_is_the_sources_backlog() {
    let broker = Broker::start().unwrap();
    broker.create_topic("lag", 2).unwrap();
    produce(
        &broker,
        "lag",
        Some(0),
        &(0..1000).map(record).collect::<Vec<_>>(),
    );
    let env = Env::new();
    env.set_parallelism(1);
    let src = KafkaSource::new(broker.address(), "lag")
        .format(Format::String)
        .batch_size(10);
    // 20 ms per batch of 10 behind a bounded channel: the source cannot
    // get more than a few batches ahead of the sink.
    env.source(src).rebalance().sink(SlowSink {
        per_batch: Duration::from_millis(20),
    });
    let handle = env.start().unwrap();
    let lag_of = |split: &str| -> Option<u64> {
        handle
            .task_metrics()
            .iter()
            .flat_map(|s| s.pending.iter())
            .find(|p| p.split == split)
            .map(|p| p.records)
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("lag on partition 0", &|| {
        lag_of("lag-0").is_some_and(|n| n > 0)
    });
    assert!(lag_of("lag-0").unwrap() <= 1000);
    wait("partition 0 caught up", &|| lag_of("lag-0") == Some(0));
    // The sink's subtask took every record in.
    wait("every record at the sink", &|| {
        handle
            .task_metrics()
            .iter()
            .filter(|s| s.vertex == 1)
            .map(|s| s.records_in)
            .sum::<u64>()
            == 1000
    });
    handle.cancel();
    let _ = handle.join();
}
