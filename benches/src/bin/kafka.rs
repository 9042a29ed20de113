//! Kafka read throughput against a local tansu broker: a plain rdkafka
//! consumer reading the topic (the ceiling), next to Sluice's Kafka source
//! into Parquet (JSON decoded into columns, and raw bytes), bounded mode,
//! parallelism as given. Prints one Markdown table; medians of `--repeat`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_connectors::kafka::testing::Broker;
use sluice_connectors::kafka::{send_waiting, Format, KafkaSource};
use sluice_connectors::parquet::ParquetSink;
use sluice_engine::Env;

#[derive(Parser, Debug)]
struct Args {
    /// Records in the topic.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Topic partitions.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Source parallelism.
    #[arg(long, default_value_t = 2)]
    parallelism: usize,
    /// Runs per variant.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

fn produce(broker: &Broker, topic: &str, n: usize, partitions: i32) -> anyhow::Result<()> {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("linger.ms", "20")
        .create()?;
    for i in 0..n {
        // About 100 bytes, as in the broker's measured figures.
        let v = format!(
            r#"{{"id": {i}, "user": "user-{:05}", "amount": {}.25, "ok": {}, "city": "c{:03}"}}"#,
            i % 50_000,
            i % 10_000,
            i % 2 == 0,
            i % 500
        );
        let rec = BaseRecord::<(), String>::to(topic)
            .payload(&v)
            .partition(i as i32 % partitions);
        send_waiting(&p, rec)?;
    }
    p.flush(Duration::from_secs(120))?;
    Ok(())
}

/// A plain consumer reading every record (payload touched, not decoded).
fn plain(broker: &Broker, topic: &str, n: usize, partitions: i32) -> anyhow::Result<f64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", "bench")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    let start = Instant::now();
    c.assign(&tpl)?;
    let (mut got, mut bytes) = (0usize, 0usize);
    let mut ended = BTreeSet::new();
    while got < n {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                use rdkafka::message::Message;
                bytes += m.payload().map_or(0, <[u8]>::len);
                got += 1;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            _ => {}
        }
    }
    std::hint::black_box(bytes);
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn sluice(broker: &Broker, topic: &str, n: usize, p: usize, json: bool) -> anyhow::Result<f64> {
    let dir = tempfile_dir()?;
    let env = Env::new();
    env.set_parallelism(p);
    let mut src = KafkaSource::new(broker.address(), topic).until_end();
    src = if json {
        let schema = src.infer_json_schema(1000, Duration::from_secs(30))?;
        src.json(schema)
    } else {
        src.format(Format::Raw)
    };
    // As `kafka_to_parquet` writes them.
    let sink = ParquetSink::new(&dir).without_dictionary(["_offset", "_timestamp"]);
    env.source(src).sink(sink);
    let start = Instant::now();
    let res = env.execute()?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        res.source_records() as usize == n,
        "read {} of {n} records",
        res.source_records()
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(n as f64 / secs)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("sluice-kafka-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::start()?;
    broker.create_topic("bench", args.partitions)?;
    let t = Instant::now();
    produce(&broker, "bench", args.records, args.partitions)?;
    eprintln!(
        "produced {} records in {:.1} s",
        args.records,
        t.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    let plain_rate = median(
        (0..args.repeat)
            .map(|_| plain(&broker, "bench", args.records, args.partitions))
            .collect::<anyhow::Result<Vec<_>>>()?,
    );
    rows.push(("plain rdkafka consumer (1 thread)".to_string(), plain_rate));
    for (json, name) in [(false, "raw"), (true, "json")] {
        let r = median(
            (0..args.repeat)
                .map(|_| sluice(&broker, "bench", args.records, args.parallelism, json))
                .collect::<anyhow::Result<Vec<_>>>()?,
        );
        rows.push((
            format!(
                "Sluice Kafka → Parquet, {name}, parallelism {}",
                args.parallelism
            ),
            r,
        ));
    }
    println!("| reader | median records/s | vs plain consumer |");
    println!("|---|---|---|");
    for (name, r) in rows {
        println!("| {name} | {:.0} K | {:.2} |", r / 1000.0, r / plain_rate);
    }
    Ok(())
}
