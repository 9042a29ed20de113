//! Every row of a file into a Kafka topic: test data for the Kafka jobs,
//! and a small job of its own (file source, Kafka sink).
use clap::Parser;
use sluice_connectors::file::FileSource;
use sluice_connectors::kafka::KafkaSink;
use sluice_engine::Env;
use sluice_jobs::cli::{init_logging, parse_kafka_option};
use sluice_jobs::progress::ProgressArgs;

/// Every row of a file (JSON lines, CSV or Parquet, by its extension) into
/// a Kafka topic, one JSON object per record, at least once.
///
/// The topic is created by the broker if it allows that (tansu and Kafka's
/// default do). Rows that do not parse fail the job, naming the line.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Bootstrap brokers, HOST:PORT[,HOST:PORT…].
    #[arg(long)]
    brokers: String,
    /// Topic to write to.
    #[arg(long)]
    topic: String,
    /// A librdkafka property for every Kafka client of the job, KEY=VALUE
    /// (repeatable): security.protocol=SASL_SSL, sasl.mechanism=PLAIN,
    /// sasl.username=..., ssl.ca.location=FILE, ... An unknown property is
    /// an error before the job starts.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_kafka_option)]
    kafka_option: Vec<(String, String)>,
    /// The file: .jsonl/.json (one JSON object per line), .csv (with a
    /// header) or .parquet.
    #[arg(long)]
    source: std::path::PathBuf,
    #[command(flatten)]
    progress: ProgressArgs,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let env = Env::new();
    // One file, one reader: the records keep the file's order.
    env.set_parallelism(1);
    let mut sink = KafkaSink::new(&args.brokers, &args.topic);
    for (k, v) in &args.kafka_option {
        sink = sink.property(k, v);
    }
    env.source(FileSource::detect(&args.source)?).sink(sink);
    let result = args.progress.execute(&env)?;
    eprintln!(
        "file_to_kafka: {} records from {} to topic {}, {} ms",
        result.source_records(),
        args.source.display(),
        args.topic,
        result.duration.as_millis()
    );
    Ok(())
}
