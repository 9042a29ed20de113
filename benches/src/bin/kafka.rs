//! Kafka read throughput against a local tansu broker: plain rdkafka
//! consumers reading the topic (the ceiling; as many as the job's
//! parallelism, tuned and polled as Sluice's), next to Sluice's Kafka
//! source into Parquet or a discarding sink (raw bytes, and JSON decoded
//! into columns), bounded mode; Parquet into a local directory, or into an
//! S3 bucket of a local S3-compatible server (moto, from `scripts/tools.sh`;
//! variants `raw-s3`, `json-s3`), or as an Iceberg table in a local
//! warehouse (`raw-iceberg`, `json-iceberg`: no checkpoints, so each
//! finished file is one snapshot). Variants run in interleaved rounds;
//! prints every run and one Markdown table of medians of `--repeat`.

use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_connectors::iceberg::IcebergSink;
use sluice_connectors::kafka::testing::Broker;
use sluice_connectors::kafka::{Format, KafkaSource};
use sluice_connectors::parquet::ParquetSink;
use sluice_connectors::sinks::DiscardSink;
use sluice_engine::checkpoint::Location;
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
    /// Variants to run, comma-separated: plain, raw, json, raw-s3, json-s3,
    /// raw-iceberg, json-iceberg, raw-iceberg-s3, json-iceberg-s3.
    #[arg(long, value_delimiter = ',', default_value = "plain,raw,json")]
    only: Vec<String>,
    /// The S3 server for the -s3 variants (moto_server).
    #[arg(long, default_value = ".tools/venv/bin/moto_server")]
    moto: std::path::PathBuf,
    /// Discard Sluice's output instead of writing Parquet (isolates the
    /// source from the sink).
    #[arg(long)]
    discard: bool,
    /// Columns written without a dictionary besides `_offset` and
    /// `_timestamp`, as `kafka_to_parquet` writes them (comma-separated;
    /// e.g. `id`, whose values are all distinct).
    #[arg(long, value_delimiter = ',')]
    no_dictionary: Vec<String>,
}

/// Plain consumers, one per thread, reading every record (payload
/// touched, not decoded); thread `t` of `threads` reads the partitions
/// `p % threads == t`, as Sluice's subtasks do.
fn plain(
    broker: &Broker,
    topic: &str,
    n: usize,
    partitions: i32,
    threads: usize,
) -> anyhow::Result<(f64, usize)> {
    let start = Instant::now();
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<i32> = (0..partitions)
                    .filter(|p| *p as usize % threads == t)
                    .collect();
                // `produce` sends record i to partition i % partitions.
                let share: usize = mine
                    .iter()
                    .map(|&p| (n + (partitions - 1 - p) as usize) / partitions as usize)
                    .sum();
                s.spawn(move || read_partitions(broker, topic, &mine, share))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("consumer thread panicked"))
            .collect::<anyhow::Result<Vec<usize>>>()
    })?;
    let n: usize = counts.iter().sum();
    Ok((n as f64 / start.elapsed().as_secs_f64(), n))
}

/// Reads the `records` of `partitions` from the beginning (stopping at the
/// last, not at an end-of-partition event, which would cost one more empty
/// fetch); returns the records read.
fn read_partitions(
    broker: &Broker,
    topic: &str,
    partitions: &[i32],
    records: usize,
) -> anyhow::Result<usize> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", "bench")
        // Tuned as Sluice's consumers are: librdkafka's default backoff (1 s)
        // stalls a consumer that drains its queue faster than the broker
        // refills it, and a smaller queue means fewer fresh pages.
        .set("fetch.queue.backoff.ms", "10")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.wait.max.ms", "100")
        // Nothing stored or committed per message.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let (mut got, mut bytes) = (0usize, 0usize);
    while got < records {
        match c.poll(Duration::ZERO) {
            Some(Ok(m)) => {
                use rdkafka::message::Message;
                bytes += m.payload().map_or(0, <[u8]>::len);
                got += 1;
            }
            Some(Err(e)) => return Err(e.into()),
            // As Sluice's source polls: no timeout per call (each costs a
            // clock read), a short sleep when the queue is empty.
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    std::hint::black_box(bytes);
    Ok(got)
}

/// Where a Sluice variant writes.
#[derive(Clone, Copy)]
enum Out<'a> {
    Local,
    Bucket(&'a S3),
    /// An Iceberg table (catalog in SQLite) in a local warehouse or in
    /// the bucket.
    Iceberg(Option<&'a S3>),
}

fn sluice(
    broker: &Broker,
    topic: &str,
    n: usize,
    p: usize,
    json: bool,
    args: &Args,
    out: Out<'_>,
) -> anyhow::Result<f64> {
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
    let stream = env.source(src);
    let prefix = format!(
        "run-{}",
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let parquet = |sink: ParquetSink| {
        sink.without_dictionary(["_offset", "_timestamp"])
            .without_dictionary(args.no_dictionary.iter().cloned())
    };
    match out {
        _ if args.discard => stream.sink(DiscardSink),
        Out::Local => stream.sink(parquet(ParquetSink::new(&dir))),
        Out::Bucket(s3) => stream.sink(parquet(ParquetSink::new(s3.url(&prefix)))),
        Out::Iceberg(bucket) => {
            let warehouse = match bucket {
                Some(s3) => Location::from(s3.url(&prefix)),
                None => Location::from(&dir),
            };
            let table = format!("bench.{}", prefix.replace('-', "_"));
            stream.sink(
                IcebergSink::new(dir.join("catalog.db"), warehouse, table)
                    .parquet(|_| parquet(ParquetSink::new("unused"))),
            )
        }
    }
    let start = Instant::now();
    let res = env.execute()?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        res.source_records() as usize == n,
        "read {} of {n} records",
        res.source_records()
    );
    if !args.discard {
        let written = match out {
            Out::Bucket(s3) | Out::Iceberg(Some(s3)) => s3.parquet_rows(&prefix)?,
            Out::Local | Out::Iceberg(None) => parquet_rows(&dir)?,
        };
        anyhow::ensure!(written == n, "wrote {written} of {n} records");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(n as f64 / secs)
}

/// Rows in the Parquet files under `dir` (at any depth: an Iceberg
/// table's data files), from their footers.
fn parquet_rows(dir: &std::path::Path) -> anyhow::Result<usize> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut rows = 0;
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if path.is_dir() {
            rows += parquet_rows(&path)?;
        } else if path.extension().is_some_and(|x| x == "parquet") {
            let r = SerializedFileReader::new(std::fs::File::open(&path)?)?;
            rows += r.metadata().file_metadata().num_rows() as usize;
        }
    }
    Ok(rows)
}

static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A local S3-compatible server with one bucket, for the -s3 variants;
/// the job's S3 settings point at it through the environment.
struct S3 {
    child: std::process::Child,
    port: u16,
}

impl S3 {
    fn start(bin: &std::path::Path) -> anyhow::Result<S3> {
        use object_store::ObjectStoreExt;
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: run scripts/tools.sh",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let s3 = S3 { child, port };
        for (k, v) in [
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "bench".into()),
            ("AWS_SECRET_ACCESS_KEY", "bench".into()),
            ("AWS_REGION", "us-east-1".into()),
        ] {
            // SAFETY: set before any thread of the benchmark reads the
            // environment (the broker and consumers do not).
            unsafe { std::env::set_var(k, v) };
        }
        let start = Instant::now();
        loop {
            if s3
                .block(s3.store()?.put(
                    &object_store::path::Path::from("probe"),
                    object_store::PutPayload::from_static(b"x"),
                ))
                .is_ok()
            {
                return Ok(s3);
            }
            // Creates the bucket (moto answers 200 to a PUT on its name).
            let _ = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut c| {
                use std::io::Write;
                write!(
                    c,
                    "PUT /bench HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                let mut sink = Vec::new();
                std::io::Read::read_to_end(&mut c, &mut sink)
            });
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "moto did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn url(&self, prefix: &str) -> String {
        format!("s3://bench/{prefix}")
    }

    fn store(&self) -> anyhow::Result<object_store::aws::AmazonS3> {
        Ok(object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name("bench")
            .build()?)
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    /// Rows in the Parquet objects under `prefix`, from their footers.
    fn parquet_rows(&self, prefix: &str) -> anyhow::Result<usize> {
        use futures::TryStreamExt;
        use object_store::{ObjectStore, ObjectStoreExt};
        let store = self.store()?;
        let prefix = object_store::path::Path::from(prefix);
        let objects: Vec<object_store::ObjectMeta> =
            self.block(store.list(Some(&prefix)).try_collect())?;
        let mut rows = 0;
        for o in objects
            .iter()
            .filter(|o| o.location.as_ref().ends_with(".parquet"))
        {
            let bytes = self.block(async { store.get(&o.location).await?.bytes().await })?;
            let r = parquet::file::reader::SerializedFileReader::new(bytes)?;
            use parquet::file::reader::FileReader;
            rows += r.metadata().file_metadata().num_rows() as usize;
        }
        Ok(rows)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.port;
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("sluice-kafka-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn median(mut xs: Vec<f64>) -> f64 {
    eprintln!(
        "runs (K records/s): {:?}",
        xs.iter().map(|x| (x / 1000.0).round()).collect::<Vec<_>>()
    );
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::start()?;
    broker.create_topic("bench", args.partitions)?;
    let t = Instant::now();
    let values = (0..args.records).map(|i| sluice_benches::kafka_json_record(i, ""));
    broker.produce("bench", args.partitions, values)?;
    eprintln!(
        "produced {} records in {:.1} s",
        args.records,
        t.elapsed().as_secs_f64()
    );
    let sink = if args.discard { "discard" } else { "Parquet" };
    let variants: Vec<&str> = [
        "plain",
        "raw",
        "json",
        "raw-s3",
        "json-s3",
        "raw-iceberg",
        "json-iceberg",
        "raw-iceberg-s3",
        "json-iceberg-s3",
    ]
    .into_iter()
    .filter(|v| args.only.iter().any(|o| o == v))
    .collect();
    let s3 = if variants.iter().any(|v| v.ends_with("-s3")) {
        Some(S3::start(&args.moto)?)
    } else {
        None
    };
    // Rounds of one run per variant, so drift of the shared machine and the
    // broker's state over time touch every variant alike.
    let mut runs = vec![Vec::new(); variants.len()];
    for _ in 0..args.repeat {
        for (i, v) in variants.iter().enumerate() {
            let (n, p) = (args.records, args.parallelism);
            runs[i].push(match *v {
                "plain" => {
                    let r = plain(&broker, "bench", n, args.partitions, p)?;
                    anyhow::ensure!(r.1 == n, "plain consumers read {} of {n} records", r.1);
                    r.0
                }
                v => {
                    let bucket = || s3.as_ref().expect("started for -s3 variants");
                    let out = match (v.contains("-iceberg"), v.ends_with("-s3")) {
                        (true, true) => Out::Iceberg(Some(bucket())),
                        (true, false) => Out::Iceberg(None),
                        (false, true) => Out::Bucket(bucket()),
                        (false, false) => Out::Local,
                    };
                    sluice(&broker, "bench", n, p, v.starts_with("json"), &args, out)?
                }
            });
        }
    }
    let mut rows = Vec::new();
    let mut plain_rate = f64::NAN;
    for (v, xs) in variants.iter().zip(runs) {
        eprint!("{v}: ");
        let r = median(xs);
        if *v == "plain" {
            plain_rate = r;
            let p = args.parallelism;
            rows.push((format!("plain rdkafka consumers, {p} threads"), r));
        } else {
            let p = args.parallelism;
            let sink = match (v.contains("-iceberg"), v.ends_with("-s3")) {
                (true, true) => "Iceberg table in S3 (moto)",
                (true, false) => "Iceberg table (local warehouse)",
                (false, true) => "Parquet in S3 (moto)",
                (false, false) => sink,
            };
            let v = v.split('-').next().unwrap_or(v);
            rows.push((format!("Sluice Kafka → {sink}, {v}, parallelism {p}"), r));
        }
    }
    println!("| reader | median records/s | vs plain consumer |");
    println!("|---|---|---|");
    for (name, r) in rows {
        println!("| {name} | {:.0} K | {:.2} |", r / 1000.0, r / plain_rate);
    }
    Ok(())
}
