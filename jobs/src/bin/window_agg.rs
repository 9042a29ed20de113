//! `window_agg`: windowed aggregation of a Parquet, CSV or JSON-lines file,
//! or of a Kafka topic (`--source kafka:TOPIC --brokers HOST:PORT`), into
//! Parquet. See `sluice_jobs::window_agg`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice_connectors::kafka::{DecodePolicy, StartFrom};
use sluice_connectors::parquet::ParquetSink;
use sluice_engine::Env;
use sluice_jobs::cli::{
    checkpoint_summary, explain, init_logging, parse_duration, parse_kafka_option, resume_summary,
    CheckpointArgs,
};
use sluice_jobs::kafka_to_parquet::{self, KafkaToParquetSpec, ValueFormat};
use sluice_jobs::progress::ProgressArgs;
use sluice_jobs::window_agg::{build, window_stream, WindowAggSpec};
use sluice_operators::prelude::WindowSpec;

/// Windowed aggregation of files or a Kafka topic into Parquet.
///
/// Reads Parquet, CSV or JSON-lines files (a file or a directory of one
/// format) or a Kafka topic (--source kafka:TOPIC), assigns event time from
/// --time, and writes one row per key and window with the aggregates. A job
/// started again with the same --checkpoint-dir resumes (it says so;
/// --fresh starts from the beginning).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Input: a .parquet, .csv or .jsonl file, a directory of them, or
    /// kafka:TOPIC (with --brokers).
    #[arg(long)]
    source: PathBuf,
    /// Kafka brokers, HOST:PORT (for --source kafka:TOPIC).
    #[arg(long)]
    brokers: Option<String>,
    /// A librdkafka property for every Kafka client of the job, KEY=VALUE
    /// (repeatable): security.protocol=SASL_SSL, sasl.mechanism=PLAIN,
    /// sasl.username=..., ssl.ca.location=FILE, ... An unknown property is
    /// an error before the job starts.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_kafka_option)]
    kafka_option: Vec<(String, String)>,
    /// Kafka value format (JSON objects; the schema is inferred unless
    /// --schema names a file).
    #[arg(long, value_enum, default_value = "json")]
    format: ValueFormat,
    /// Kafka JSON schema file (see kafka_to_parquet --help).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Kafka: stop at the end of the topic (the end offsets when this run
    /// starts, or the ends an interrupted bounded run fixed).
    #[arg(long)]
    until_end: bool,
    /// Skip (and count) bad records instead of failing: Kafka records that
    /// do not decode, JSON lines that do not fit the schema, and records
    /// whose event time is missing or outside years 1 to 9999.
    #[arg(long)]
    skip_bad_records: bool,
    /// Event-time column (epoch milliseconds or a timestamp type).
    #[arg(long)]
    time: String,
    /// Key column(s), comma-separated.
    #[arg(long, value_delimiter = ',')]
    key: Vec<String>,
    /// tumbling:SIZE | sliding:SIZE,SLIDE | session:GAP (e.g. tumbling:10s).
    #[arg(long)]
    window: String,
    /// count | sum:COL | min:COL | max:COL | avg:COL (repeatable).
    #[arg(long = "agg", required = true)]
    aggs: Vec<String>,
    /// Output directory for Parquet files.
    #[arg(long)]
    output: PathBuf,
    /// Bounded out-of-orderness of the event time.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    watermark_delay: Duration,
    /// Parallelism of every operator.
    #[arg(long)]
    parallelism: Option<std::num::NonZeroUsize>,
    #[command(flatten)]
    checkpoints: CheckpointArgs,
    #[command(flatten)]
    progress: ProgressArgs,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let window = WindowSpec::parse(&args.window).context("--window")?;
    let env = Env::new();
    if let Some(p) = args.parallelism {
        env.set_parallelism(p.get());
    }
    let resume = args.checkpoints.apply(&env, "window_agg")?;
    args.checkpoints.fresh_output(&args.output)?;
    let spec = WindowAggSpec {
        source: args.source,
        time: args.time,
        keys: args.key,
        window,
        aggs: args.aggs,
        watermark_delay: args.watermark_delay,
        skip_bad_records: args.skip_bad_records,
    };
    let kafka_topic = spec
        .source
        .to_str()
        .and_then(|s| s.strip_prefix("kafka:"))
        .map(str::to_string);
    let (stream, skipped): (_, Box<dyn Fn() -> u64>) = match kafka_topic {
        Some(topic) => {
            let Some(brokers) = args.brokers.clone() else {
                anyhow::bail!("--source kafka:TOPIC needs --brokers HOST:PORT");
            };
            let src = kafka_to_parquet::source(&KafkaToParquetSpec {
                job: "window_agg".into(),
                brokers,
                topic,
                format: args.format,
                schema: args.schema.clone(),
                infer_sample: 1000,
                start: StartFrom::Earliest,
                until_end: args.until_end,
                group: None,
                policy: if args.skip_bad_records {
                    DecodePolicy::Skip
                } else {
                    DecodePolicy::Fail
                },
                checkpoint_dir: args.checkpoints.checkpoint_dir.clone(),
                partition_discovery: Duration::from_secs(10),
                // Windows need columns fixed at plan time.
                evolve_schema: false,
                kafka_options: args.kafka_option.clone(),
            })?;
            let stats = src.decode_stats();
            (
                window_stream(env.source(src), &spec)?,
                Box::new(move || stats.skipped()),
            )
        }
        None => {
            let (stream, count) = build(&env, &spec)?;
            (
                stream,
                Box::new(move || count.load(std::sync::atomic::Ordering::Relaxed)),
            )
        }
    };
    stream.sink(ParquetSink::new(&args.output));
    if args.checkpoints.explained(&env)? {
        return Ok(());
    }
    let result = args
        .progress
        .execute(&env)
        .map_err(|e| explain(e, "--skip-bad-records skips and counts such records"))?;
    eprintln!(
        "window_agg: {} input records, {} ms, skipped={}, output in {}, {}, {}",
        result.source_records(),
        result.duration.as_millis(),
        skipped(),
        args.output.display(),
        resume_summary(&resume, &result.checkpoints),
        checkpoint_summary(&result)
    );
    Ok(())
}
