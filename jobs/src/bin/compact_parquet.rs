//! `compact_parquet`: merges the small Parquet files of closed partition
//! directories of a local output, or of an Iceberg table, into files of a
//! target size. See `sluice_connectors::parquet::compact` and
//! `sluice_connectors::iceberg::compact_table`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sluice_connectors::iceberg::compact_table;
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
///
/// With --iceberg-table it compacts an Iceberg table instead (e.g. one
/// `kafka_to_parquet --iceberg-table` writes, while it writes): the small
/// files of partitions that received nothing for --min-age are merged and
/// swapped in by one `replace` snapshot, so a reader's scan sees the old
/// files or the merged ones. The replaced files stay for readers of older
/// snapshots.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The output directory to compact.
    #[arg(
        long,
        required_unless_present = "iceberg_table",
        conflicts_with = "iceberg_table"
    )]
    path: Option<Location>,
    /// Compact this Iceberg table (NAMESPACE.TABLE) instead; needs
    /// --iceberg-catalog.
    #[arg(long, requires = "iceberg_catalog", value_name = "NAMESPACE.TABLE")]
    iceberg_table: Option<String>,
    /// The table's SQL catalog: the SQLite file kafka_to_parquet wrote
    /// (WAREHOUSE/catalog.db unless it was given --iceberg-catalog).
    #[arg(long, value_name = "FILE")]
    iceberg_catalog: Option<PathBuf>,
    /// The catalog's name inside that file.
    #[arg(long, default_value = "sluice", value_name = "NAME")]
    iceberg_catalog_name: String,
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
    let opts = CompactOptions {
        target_size: args.target_size,
        min_age: args.min_age,
        keep_replaced: args.keep_replaced,
        ..Default::default()
    };
    let (stats, what) = match (&args.path, &args.iceberg_table, &args.iceberg_catalog) {
        (_, Some(table), Some(catalog)) => (
            compact_table(catalog, &args.iceberg_catalog_name, table, &opts)?,
            "bins",
        ),
        (Some(path), _, _) => (compact(path, &opts)?, "directories"),
        _ => unreachable!("clap requires --path or --iceberg-table with --iceberg-catalog"),
    };
    eprintln!(
        "compact_parquet: {} {what}, {} files merged into {}, {} rows",
        stats.directories, stats.files_in, stats.files_out, stats.rows
    );
    Ok(())
}
