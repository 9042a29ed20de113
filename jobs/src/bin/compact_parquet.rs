//! `compact_parquet`: merges the small Parquet files of closed partition
//! directories of a local output into files of a target size. See
//! `sluice_connectors::parquet::compact`.

use std::time::Duration;

use clap::Parser;
use sluice_connectors::parquet::{compact, CompactOptions};
use sluice_engine::checkpoint::Location;
use sluice_jobs::cli::{init_logging, parse_duration, parse_size};

/// Merges the small Parquet files of closed partitions into larger ones.
///
/// Walks the output of a Parquet sink (e.g. `kafka_to_parquet --output
/// DIR`, Hive partitions included). In every directory that is closed (no
/// file being written, nothing changed for --min-age), files smaller than
/// three quarters of --target-size are merged, files of one schema
/// together, into files of about --target-size. The directory is switched
/// to the merged files in one atomic step (a reader sees either the old
/// files or the new ones, never both: no duplicate rows); the replaced
/// files stay hidden for --keep-replaced so readers already reading them
/// can finish. Run it periodically; a run that was killed is finished by
/// the next. Local directories only: object stores cannot switch a set of
/// files atomically.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The output directory to compact.
    #[arg(long)]
    path: Location,
    /// Size of the merged files: 128MiB, 512KB, 1000000.
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    target_size: u64,
    /// A directory is closed once nothing in it changed for this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    min_age: Duration,
    /// Replaced files are deleted by a run this much later.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    keep_replaced: Duration,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let stats = compact(
        &args.path,
        &CompactOptions {
            target_size: args.target_size,
            min_age: args.min_age,
            keep_replaced: args.keep_replaced,
            ..Default::default()
        },
    )?;
    eprintln!(
        "compact_parquet: {} directories, {} files merged into {}, {} rows",
        stats.directories, stats.files_in, stats.files_out, stats.rows
    );
    Ok(())
}
