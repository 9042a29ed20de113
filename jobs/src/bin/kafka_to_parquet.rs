//! `kafka_to_parquet`: every record of a Kafka topic, once, into Parquet.
//! See `sluice_jobs::kafka_to_parquet`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sluice_connectors::kafka::{DecodePolicy, StartFrom};
use sluice_connectors::parquet::ParquetSink;
use sluice_engine::Env;
use sluice_jobs::cli::{
    checkpoint_summary, explain, init_logging, parse_duration, resume_summary, CheckpointArgs,
};
use sluice_jobs::kafka_to_parquet::{source, KafkaToParquetSpec, ValueFormat};

/// Every record of a Kafka topic into Parquet files, exactly once with
/// checkpoints.
///
/// Columns: _partition, _offset, _timestamp and the decoded value (JSON
/// fields from --schema or inferred, raw bytes, text, or Avro). A job
/// started again with the same --checkpoint-dir resumes where the last one
/// stopped (it says so; --fresh starts from the beginning). Records that do
/// not decode fail the job unless --skip-bad-records or
/// --dead-letter-topic says otherwise.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Bootstrap brokers, HOST:PORT[,HOST:PORT…].
    #[arg(long)]
    brokers: String,
    /// Topic to read.
    #[arg(long)]
    topic: String,
    /// Value format.
    #[arg(long, value_enum, default_value = "json")]
    format: ValueFormat,
    /// JSON schema file: [{"name": .., "type": "int64"|"float64"|"string"|"bool"|
    /// "timestamp_ms"|{"struct": [..]}|{"list": TYPE}, "nullable": true}, ..].
    /// Without it the schema is inferred from the first records. With
    /// --format avro: the Avro writer schema (required).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Records sampled to infer the JSON schema.
    #[arg(long, default_value_t = 1000)]
    infer_sample: usize,
    /// Output directory for Parquet files.
    #[arg(long)]
    output: PathBuf,
    /// Parallelism (partition p is read by subtask p % P).
    #[arg(long)]
    parallelism: Option<std::num::NonZeroUsize>,
    /// Stop at the end of the topic: the end offsets when this run starts
    /// (or, when it resumes a bounded run that was interrupted, the ends
    /// that run fixed). Without it the job runs until stopped.
    #[arg(long)]
    until_end: bool,
    /// earliest | latest | committed | timestamp:MS (partitions without a
    /// checkpointed position).
    #[arg(long, default_value = "earliest")]
    start_from: StartFrom,
    /// Consumer group the positions are committed to when checkpoints complete.
    #[arg(long)]
    group: Option<String>,
    /// Send records that fail to decode to this topic (original bytes,
    /// error and position in headers).
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Skip (and count) records that fail to decode instead of failing the
    /// job (when no dead-letter topic is given).
    #[arg(long)]
    skip_bad_records: bool,
    /// How often to look for new partitions.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    partition_discovery: Duration,
    #[command(flatten)]
    checkpoints: CheckpointArgs,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let env = Env::new();
    if let Some(p) = args.parallelism {
        env.set_parallelism(p.get());
    }
    let job = "kafka_to_parquet";
    let resume = args.checkpoints.apply(&env, job)?;
    args.checkpoints.fresh_output(&args.output)?;
    let policy = match (&args.dead_letter_topic, args.skip_bad_records) {
        (Some(t), _) => DecodePolicy::DeadLetter(t.clone()),
        (None, true) => DecodePolicy::Skip,
        (None, false) => DecodePolicy::Fail,
    };
    let spec = KafkaToParquetSpec {
        job: job.to_string(),
        brokers: args.brokers,
        topic: args.topic,
        format: args.format,
        schema: args.schema,
        infer_sample: args.infer_sample,
        start: args.start_from,
        until_end: args.until_end,
        group: args.group,
        policy,
        checkpoint_dir: args.checkpoints.checkpoint_dir.clone(),
        partition_discovery: args.partition_discovery,
    };
    let src = source(&spec)?;
    let stats = src.decode_stats();
    let progress = src.progress();
    // Offsets and timestamps are distinct per record: no dictionary.
    let sink = ParquetSink::new(&args.output).without_dictionary(["_offset", "_timestamp"]);
    env.source(src).sink(sink);
    let result = env.execute().map_err(|e| {
        explain(
            e,
            "--skip-bad-records skips and counts such records, --dead-letter-topic TOPIC keeps them in a topic",
        )
    })?;
    let records = result.source_records();
    let nothing_new = if records == 0 && progress.resumed() && progress.nothing_new() {
        " (nothing new: every partition had been read up to the end already)"
    } else {
        ""
    };
    eprintln!(
        "kafka_to_parquet: {records} records{nothing_new}, {} ms, skipped={} dead_lettered={}, output in {}, {}; read {}; {}",
        result.duration.as_millis(),
        stats.skipped(),
        stats.dead_lettered(),
        args.output.display(),
        resume_summary(&resume, &result.checkpoints),
        progress.describe(),
        checkpoint_summary(&result)
    );
    Ok(())
}
