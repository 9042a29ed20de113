//! `nexmark`: runs one Nexmark query on the embedded cluster and prints
//! events processed, wall time and events per second.

use anyhow::Context;
use clap::Parser;
use sluice_connectors::nexmark::NexmarkConfig;
use sluice_connectors::parquet::ParquetSink;
use sluice_connectors::sinks::{DiscardSink, PrintSink, SlowSink};
use sluice_engine::Env;
use sluice_jobs::cli::{checkpoint_summary, init_logging, resume_summary, CheckpointArgs, Output};
use sluice_jobs::nexmark::{build, Query};
use sluice_operators::partition::Repartition;

/// Runs a Nexmark benchmark query on generated events.
///
/// Prints one line with the events processed, wall time and events per
/// second. A job started again with the same --checkpoint-dir resumes (it
/// says so; --fresh starts from the beginning).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// q0 | q1 | q2 | q3 | q4 | q5 | q7 | q8 | q11, or the window benchmarks tumble | slide
    #[arg(long)]
    query: String,
    /// Number of generator events (all types; 1:3:46 persons:auctions:bids).
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Parallelism of every operator.
    #[arg(long)]
    parallelism: Option<std::num::NonZeroUsize>,
    /// A directory for Parquet output, `blackhole` to discard, or `print`.
    #[arg(long, default_value = "blackhole")]
    output: Output,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Wall-clock rate limit in events per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Run only the bid generator into a discarding sink (the baseline the
    /// queries are compared with); `--query` is then only a label.
    #[arg(long)]
    generator_only: bool,
    /// With `--output blackhole`: discard in a deliberately slow sink that
    /// sleeps this long per batch, behind a rebalance, to watch
    /// backpressure in the job's metrics (e.g. `5ms`).
    #[arg(long, value_parser = humantime::parse_duration)]
    sink_delay: Option<std::time::Duration>,
    #[command(flatten)]
    checkpoints: CheckpointArgs,
}

/// Peak resident memory of this process in MiB (Linux), for the benchmark report.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let query: Query = args.query.parse().context("--query")?;
    let cfg = NexmarkConfig {
        events: args.events,
        seed: args.seed,
        rate_limit: args.rate,
        ..Default::default()
    };
    let env = Env::new();
    if let Some(p) = args.parallelism {
        env.set_parallelism(p.get());
    }
    let name = if args.generator_only {
        "nexmark-generator".to_string()
    } else {
        format!("nexmark-{}", format!("{query:?}").to_lowercase())
    };
    let resume = args.checkpoints.apply(&env, &name)?;
    if let Output::Dir(d) = &args.output {
        args.checkpoints.fresh_output(d)?;
    }
    let out = if args.generator_only {
        env.source(sluice_connectors::nexmark::NexmarkSource::bids(cfg.clone()))
    } else {
        build(&env, query, &cfg)
    };
    match (&args.output, args.sink_delay) {
        (Output::Blackhole, Some(per_batch)) => out.rebalance().sink(SlowSink { per_batch }),
        (_, Some(_)) => anyhow::bail!("--sink-delay needs --output blackhole"),
        (Output::Blackhole, None) => out.sink(DiscardSink),
        (Output::Print, None) => out.sink(PrintSink),
        (Output::Dir(d), None) => out.sink(ParquetSink::new(d)),
    }
    if args.checkpoints.explained(&env)? {
        return Ok(());
    }
    let result = env.execute()?;
    let secs = result.duration.as_secs_f64();
    let records = result.source_records();
    let query = if args.generator_only {
        "generator".to_string()
    } else {
        format!("{query:?}").to_lowercase()
    };
    let checkpoints = checkpoint_summary(&result);
    let resumed = resume_summary(&resume, &result.checkpoints);
    let rss = peak_rss_mib().unwrap_or(f64::NAN);
    match result.executor {
        // One executor of a job on a cluster generated a share of the
        // events: --events and a rate over them are the job's, not its.
        Some(e) => println!(
            "query={query} executor={} executors={} source_records={records} wall_ms={} records_per_sec={:.0} peak_rss_mib={rss:.0} {checkpoints} ({resumed})",
            e.index,
            e.of,
            result.duration.as_millis(),
            records as f64 / secs,
        ),
        None => println!(
            "query={query} events={} source_records={records} wall_ms={} events_per_sec={:.0} records_per_sec={:.0} peak_rss_mib={rss:.0} {checkpoints} ({resumed})",
            args.events,
            result.duration.as_millis(),
            args.events as f64 / secs,
            records as f64 / secs,
        ),
    }
    Ok(())
}
