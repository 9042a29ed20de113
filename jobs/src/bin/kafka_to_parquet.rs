//! `kafka_to_parquet`: every record of a Kafka topic, once, into Parquet.
//! See `sluice_jobs::kafka_to_parquet`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sluice_connectors::iceberg::{split_table_name, IcebergSink};
use sluice_connectors::kafka::{DecodePolicy, StartFrom};
use sluice_connectors::parquet::{ParquetSink, PartitionSpec};
use sluice_engine::checkpoint::Location;
use sluice_engine::Env;
use sluice_jobs::cli::{
    checkpoint_summary, explain, init_logging, parse_duration, parse_kafka_option, parse_size,
    resume_summary, CheckpointArgs,
};
use sluice_jobs::kafka_to_parquet::{source, KafkaToParquetSpec, ValueFormat};
use sluice_jobs::progress::ProgressArgs;
use sluice_operators::prelude::*;

/// Every record of a Kafka topic into Parquet files, exactly once with
/// checkpoints.
///
/// Columns: _partition, _offset, _timestamp and the decoded value (JSON
/// fields from --schema or inferred, raw bytes, text, or Avro). Output goes
/// to a directory or to s3://bucket/prefix, optionally into Hive-style
/// partition directories. A file stays open across checkpoints and rolls
/// by size, rows, age, inactivity or (with --watermark-delay) when its time
/// partition has passed; a reader only ever sees complete files that a
/// checkpoint committed. A job started again with the same
/// --checkpoint-dir resumes where the last one stopped (it says so; --fresh
/// starts from the beginning). Records that do not decode fail the job
/// unless --skip-bad-records or --dead-letter-topic says otherwise.
#[derive(Parser, Debug)]
#[command(version, after_help = EXAMPLES)]
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
    /// JSON: a record that gains a field, or widens a type compatibly
    /// (integer to float, narrower to wider), changes the schema instead of
    /// failing: later rows go to new files with the merged columns (nulls
    /// where a record lacks a field). Incompatible records (a string where
    /// a number was) stay bad: see --dead-letter-topic. Every schema used
    /// is kept in the checkpoints.
    #[arg(long)]
    evolve_schema: bool,
    /// Records sampled to infer the JSON schema.
    #[arg(long, default_value_t = 1000)]
    infer_sample: usize,
    /// A librdkafka property for every Kafka client of the job, KEY=VALUE
    /// (repeatable): security.protocol=SASL_SSL, sasl.mechanism=PLAIN,
    /// sasl.username=..., ssl.ca.location=FILE, ... An unknown property is
    /// an error before the job starts.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_kafka_option)]
    kafka_option: Vec<(String, String)>,
    /// Where the Parquet files go: a directory, or s3://bucket/prefix (S3
    /// settings from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// and AWS_ENDPOINT plus AWS_ALLOW_HTTP=true for a local server).
    #[arg(
        long,
        required_unless_present = "iceberg_table",
        conflicts_with = "iceberg_table"
    )]
    output: Option<Location>,
    /// Write an Apache Iceberg table NAMESPACE.TABLE instead of plain files
    /// (created on first use with the stream's columns and --partition-by as
    /// its partition spec, an identity field per column and Iceberg's day,
    /// hour, month and year transforms). Each checkpoint's files become one
    /// snapshot, exactly once across crashes. Needs --iceberg-warehouse.
    #[arg(long, requires = "iceberg_warehouse", value_name = "NAMESPACE.TABLE",
          value_parser = parse_table_name)]
    iceberg_table: Option<String>,
    /// Where the Iceberg tables' files go (WAREHOUSE/NAMESPACE/TABLE): a
    /// directory, or s3://bucket/prefix (S3 settings as for --output).
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    iceberg_warehouse: Option<Location>,
    /// The SQL catalog: an SQLite file in the JDBC catalog's layout (what
    /// PyIceberg's SqlCatalog, Spark and Trino read) [default:
    /// WAREHOUSE/catalog.db for a directory; required for a bucket].
    #[arg(long, value_name = "FILE")]
    iceberg_catalog: Option<PathBuf>,
    /// The catalog's name inside that file (readers open it by this name).
    #[arg(long, default_value = "sluice", value_name = "NAME")]
    iceberg_catalog_name: String,
    /// Hive-style partition directories, outermost first: comma-separated
    /// fields, each COLUMN (by value: country=DE/; the column then lives in
    /// the path, not in the files) or NAME=FUNC(COLUMN) with FUNC one of
    /// year, month, date, day, hour of a timestamp column, e.g.
    /// 'dt=date(_timestamp),hour=hour(_timestamp)'.
    #[arg(long)]
    partition_by: Option<String>,
    /// Roll a file (finish it; it becomes visible when the next checkpoint
    /// completes) once it holds this much: 128MiB, 512KB, 1000000.
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    roll_size: u64,
    /// Roll a file once it holds this many rows.
    #[arg(long)]
    roll_rows: Option<u64>,
    /// Roll a file this long after it was opened.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    roll_interval: Duration,
    /// Roll a file that received nothing for this long, so a quiet topic's
    /// last records become visible.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    roll_inactivity: Duration,
    /// Roll every file at every checkpoint: output visible one checkpoint
    /// interval after it is read, at the price of a file per checkpoint,
    /// subtask and partition.
    #[arg(long)]
    roll_on_checkpoint: bool,
    /// Event time for time partitions: the --event-time column may arrive
    /// this much out of order. Once the watermark passes the end of a time
    /// partition (an hour for hour(COLUMN)), its files roll. Kafka
    /// partitions that see no records for 5 s stop holding the watermark
    /// back.
    #[arg(long, value_parser = parse_duration)]
    watermark_delay: Option<Duration>,
    /// The column holding event time, for --watermark-delay: `_timestamp`
    /// (the Kafka record's timestamp) or a timestamp column of the records.
    #[arg(long, default_value = "_timestamp")]
    event_time: String,
    /// Object storage: bytes buffered per open file before they are
    /// uploaded as one part (S3 needs at least 5MiB).
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    upload_part_size: u64,
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
    #[command(flatten)]
    progress: ProgressArgs,
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
    if let Some(output) = &args.output {
        args.checkpoints.fresh_output_at(output)?;
    }
    let policy = match (&args.dead_letter_topic, args.skip_bad_records) {
        (Some(t), _) => DecodePolicy::DeadLetter(t.clone()),
        (None, true) => DecodePolicy::Skip,
        (None, false) => DecodePolicy::Fail,
    };
    let spec = KafkaToParquetSpec {
        job: job.to_string(),
        brokers: args.brokers,
        topic: args.topic.clone(),
        format: args.format,
        schema: args.schema,
        infer_sample: args.infer_sample,
        start: args.start_from,
        until_end: args.until_end,
        group: args.group.clone(),
        policy,
        checkpoint_dir: args.checkpoints.checkpoint_dir.clone(),
        partition_discovery: args.partition_discovery,
        evolve_schema: args.evolve_schema,
        kafka_options: args.kafka_option.clone(),
    };
    // The Iceberg table, warehouse and catalog file, checked before the
    // job reads anything.
    let iceberg = match (&args.iceberg_table, &args.iceberg_warehouse) {
        (Some(table), Some(warehouse)) => {
            let catalog = match (&args.iceberg_catalog, warehouse.local_path()) {
                (Some(c), _) => c.clone(),
                (None, Some(dir)) => dir.join("catalog.db"),
                (None, None) => anyhow::bail!(
                    "--iceberg-warehouse {warehouse} is in object storage: name the catalog's \
                     SQLite file with --iceberg-catalog FILE"
                ),
            };
            Some((table.clone(), warehouse.clone(), catalog))
        }
        _ => None,
    };
    let src = source(&spec)?;
    let stats = src.decode_stats();
    let progress = src.progress();
    // Offsets and timestamps are distinct per record: no dictionary.
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| Location::from("unused"));
    let mut sink = ParquetSink::new(output)
        .without_dictionary(["_offset", "_timestamp"])
        .max_file_size(usize::try_from(args.roll_size).unwrap_or(usize::MAX))
        .rollover_interval(args.roll_interval)
        .inactivity_interval(args.roll_inactivity)
        .upload_part_size(usize::try_from(args.upload_part_size).unwrap_or(usize::MAX));
    if let Some(rows) = args.roll_rows {
        sink = sink.max_file_rows(rows);
    }
    if args.roll_on_checkpoint {
        sink = sink.roll_at_checkpoints();
    }
    if let Some(spec) = &args.partition_by {
        sink = sink.partition_by(PartitionSpec::parse(spec)?);
    }
    let stream = env.source(src);
    let stream = match args.watermark_delay {
        Some(d) => stream.watermarks(
            bounded_out_of_orderness(&args.event_time, d).idle_after(Duration::from_secs(5)),
        ),
        None => stream,
    };
    let output = match iceberg {
        Some((table, warehouse, catalog)) => {
            // One writer id per job writing the table: its consumer group
            // when it has one, else its topic.
            let writer = args
                .group
                .clone()
                .unwrap_or_else(|| format!("kafka_to_parquet:{}", args.topic));
            let described = format!("Iceberg table {table} (catalog {})", catalog.display());
            let iceberg = IcebergSink::new(&catalog, warehouse, table)
                .catalog_name(&args.iceberg_catalog_name)
                .writer_id(writer)
                .parquet(|_| sink);
            stream.sink(iceberg);
            described
        }
        None => {
            stream.sink(sink);
            args.output
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        }
    };
    if args.checkpoints.explained(&env)? {
        return Ok(());
    }
    let result = args.progress.execute(&env).map_err(|e| {
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
        output,
        resume_summary(&resume, &result.checkpoints),
        progress.describe(),
        checkpoint_summary(&result)
    );
    Ok(())
}

fn parse_table_name(s: &str) -> Result<String, String> {
    split_table_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

const EXAMPLES: &str = "\
Examples:
  # Every record once into local files, resumable after any crash
  kafka_to_parquet --brokers 127.0.0.1:9092 --topic events --output out/ \\
    --checkpoint-dir ck/

  # Into S3, by country and hour of the record's timestamp
  kafka_to_parquet --brokers 127.0.0.1:9092 --topic events \\
    --output s3://lake/events --checkpoint-dir s3://lake/checkpoints/events \\
    --partition-by 'country,dt=date(_timestamp),hour=hour(_timestamp)' \\
    --watermark-delay 1m --roll-interval 5m

  # An Iceberg table partitioned by day (read with PyIceberg's SqlCatalog
  # \"sluice\" at sqlite:///lake/catalog.db)
  kafka_to_parquet --brokers 127.0.0.1:9092 --topic events \\
    --iceberg-table lake.events --iceberg-warehouse lake/ \\
    --partition-by 'dt=date(_timestamp)' --checkpoint-dir ck/";
