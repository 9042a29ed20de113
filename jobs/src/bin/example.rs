//! The README example: hot auctions over a sliding window, on generated bids.
use std::time::Duration;

use clap::Parser;
use sluice_connectors::nexmark::{NexmarkConfig, NexmarkSource};
use sluice_connectors::sinks::PrintSink;
use sluice_operators::prelude::*;

/// The README example: the auctions with the most bids in sliding 10 s
/// windows (every 2 s), among 200,000 generated Nexmark bids priced over
/// 1,000; prints the windows as tables.
#[derive(Parser)]
#[command(version)]
struct Args {}

fn main() -> sluice_engine::Result<()> {
    // Nothing to configure, but --help, --version and stray arguments
    // behave like the other job binaries'.
    Args::parse();
    let env = Env::new();
    let bids = NexmarkSource::bids(NexmarkConfig {
        events: 200_000,
        ..Default::default()
    });
    env.source(bids)
        .watermarks(WatermarkStrategy::bounded_out_of_orderness(
            "date_time",
            Duration::from_millis(200),
        ))
        .filter(col("price").gt(lit(1_000i64)))
        .key_by(["auction"])
        .window(WindowSpec::sliding(
            Duration::from_secs(10),
            Duration::from_secs(2),
        ))
        .aggregate([count().alias("bids"), max("price")])
        .top_by_time("bids")
        .sink(PrintSink);
    let result = env.execute()?;
    eprintln!(
        "processed {} bids in {:?}",
        result.source_records(),
        result.duration
    );
    Ok(())
}
