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
use sluice_jobs::progress::ProgressArgs;
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
    /// Changes of --rate at event numbers, RATE@EVENT,... (e.g.
    /// `80000@2000000,20000@6000000`: 80,000 events/s from event 2,000,000,
    /// back to 20,000/s from event 6,000,000). Keyed by event number, not
    /// time, so a job restored from a checkpoint or savepoint keeps the
    /// schedule. Needs --rate.
    #[arg(long, value_name = "RATE@EVENT,...", requires = "rate", value_parser = parse_rate_steps)]
    rate_steps: Option<RateSteps>,
    /// Synthetic CPU work per event each source spends (spinning) on top
    /// of generating it, e.g. `300us`: the job's load then follows the
    /// event rate, to watch backpressure or the autoscaler. The output
    /// does not change.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    work_per_event: Option<std::time::Duration>,
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
    #[command(flatten)]
    progress: ProgressArgs,
}

/// `--rate-steps`: (first event, events per second), in event order.
#[derive(Debug, Clone)]
struct RateSteps(Vec<(u64, u64)>);

fn parse_rate_steps(s: &str) -> Result<RateSteps, String> {
    let mut steps = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (rate, event) = part
            .split_once('@')
            .ok_or_else(|| format!("{part:?}: expected RATE@EVENT (e.g. 80000@2000000)"))?;
        let rate: u64 = rate
            .trim()
            .parse()
            .map_err(|e| format!("{part:?}: rate: {e}"))?;
        let event: u64 = event
            .trim()
            .parse()
            .map_err(|e| format!("{part:?}: event: {e}"))?;
        if rate == 0 {
            return Err(format!(
                "{part:?}: the rate must be at least 1 event per second"
            ));
        }
        steps.push((event, rate));
    }
    steps.sort_unstable();
    if steps.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(format!("{s:?}: two rates from the same event"));
    }
    Ok(RateSteps(steps))
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
        rate_steps: args.rate_steps.clone().map(|r| r.0).unwrap_or_default(),
        work_per_event: args.work_per_event.unwrap_or_default(),
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
    let result = args.progress.execute(&env)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_steps_are_rates_at_event_numbers() {
        let s = parse_rate_steps("20000@6000000, 80000@2000000").unwrap();
        assert_eq!(s.0, vec![(2_000_000, 80_000), (6_000_000, 20_000)]);
        assert!(parse_rate_steps("80000").is_err());
        assert!(parse_rate_steps("0@5").is_err());
        assert!(parse_rate_steps("5@1,6@1").is_err());
        assert!(Args::try_parse_from(["nexmark", "--query", "q5", "--rate-steps", "5@1"]).is_err());
    }
}
