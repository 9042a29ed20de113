//! Every row of a file into a Kafka topic: test data for the Kafka jobs,
//! and a small job of its own (file source, Kafka sink).
use clap::Parser;
use sluice_connectors::file::FileSource;
use sluice_connectors::kafka::KafkaSink;
use sluice_engine::Env;
use sluice_jobs::cli::init_logging;

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
    /// The file: .jsonl/.json (one JSON object per line), .csv (with a
    /// header) or .parquet.
    #[arg(long)]
    source: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let env = Env::new();
    // One file, one reader: the records keep the file's order.
    env.set_parallelism(1);
    env.source(FileSource::detect(&args.source)?)
        .sink(KafkaSink::new(&args.brokers, &args.topic));
    let result = env.execute()?;
    eprintln!(
        "file_to_kafka: {} records from {} to topic {}, {} ms",
        result.source_records(),
        args.source.display(),
        args.topic,
        result.duration.as_millis()
    );
    Ok(())
}
