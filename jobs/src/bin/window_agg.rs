//! `window_agg`: windowed aggregation of a Parquet, CSV or JSON-lines file
//! into Parquet. See `sluice_jobs::window_agg`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice_connectors::parquet::ParquetSink;
use sluice_engine::Env;
use sluice_jobs::cli::{checkpoint_summary, init_logging, parse_duration, CheckpointArgs};
use sluice_jobs::window_agg::{build, WindowAggSpec};
use sluice_operators::prelude::WindowSpec;

/// Windowed aggregation of a file into Parquet.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Input: a .parquet, .csv or .jsonl file, or a directory of them.
    #[arg(long)]
    source: PathBuf,
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
    parallelism: Option<usize>,
    #[command(flatten)]
    checkpoints: CheckpointArgs,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let window = WindowSpec::parse(&args.window).context("--window")?;
    let env = Env::new();
    if let Some(p) = args.parallelism {
        env.set_parallelism(p);
    }
    args.checkpoints.apply(&env, "window_agg")?;
    let spec = WindowAggSpec {
        source: args.source,
        time: args.time,
        keys: args.key,
        window,
        aggs: args.aggs,
        watermark_delay: args.watermark_delay,
    };
    build(&env, &spec)?.sink(ParquetSink::new(&args.output));
    let result = env.execute()?;
    eprintln!(
        "window_agg: {} input records, {} ms, output in {}, {}",
        result.source_records(),
        result.duration.as_millis(),
        args.output.display(),
        checkpoint_summary(&result.checkpoints)
    );
    Ok(())
}
