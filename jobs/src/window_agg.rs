//! The generic windowed aggregation job: a file (or a Kafka topic, through
//! [`window_stream`]) in, windows per key, Parquet out. The `window_agg` binary is a thin command line over [`build`].

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use sluice_connectors::file::FileSource;
use sluice_engine::{Env, Error, Result, Stream, WatermarkStrategy};
use sluice_operators::prelude::*;

/// What to compute.
#[derive(Debug, Clone)]
pub struct WindowAggSpec {
    /// Input file or directory (`.parquet`, `.csv` or `.jsonl`).
    pub source: PathBuf,
    /// Event-time column (epoch ms or a timestamp type).
    pub time: String,
    /// Key columns.
    pub keys: Vec<String>,
    /// Window.
    pub window: WindowSpec,
    /// Aggregates as `count`, `sum:COL`, `min:COL`, `max:COL`, `avg:COL`.
    pub aggs: Vec<String>,
    /// Watermark delay (bounded out-of-orderness).
    pub watermark_delay: Duration,
    /// Skip (and count) bad records of files instead of failing.
    pub skip_bad_records: bool,
}

/// Parses one `--agg` value.
pub fn parse_agg(s: &str) -> Result<AggregateExpr> {
    let (f, col) = match s.split_once(':') {
        Some((f, c)) => (f, Some(c)),
        None => (s, None),
    };
    Ok(match (f, col) {
        ("count", None) => count(),
        ("sum", Some(c)) => sum(c),
        ("min", Some(c)) => min(c),
        ("max", Some(c)) => max(c),
        ("avg", Some(c)) => avg(c),
        _ => {
            return Err(Error::Config(format!(
                "invalid aggregate '{s}'; expected count, sum:COL, min:COL, max:COL or avg:COL"
            )))
        }
    })
}

/// Builds the job in `env` and returns the aggregated stream, with the
/// count of bad records the file source skipped.
pub fn build(env: &Env, spec: &WindowAggSpec) -> Result<(Stream, Arc<AtomicU64>)> {
    if !spec.source.exists() {
        return Err(Error::Config(format!(
            "source {} does not exist",
            spec.source.display()
        )));
    }
    let files = FileSource::detect(&spec.source)?.skip_bad_records(spec.skip_bad_records);
    let skipped = files.skipped();
    Ok((window_stream(env.source(files), spec)?, skipped))
}

/// The windowed aggregation of `spec` over any stream that has its time,
/// key and aggregated columns (`spec.source` is not used): how the job
/// runs over a Kafka topic instead of files.
pub fn window_stream(stream: Stream, spec: &WindowAggSpec) -> Result<Stream> {
    let aggs = spec
        .aggs
        .iter()
        .map(|a| parse_agg(a))
        .collect::<Result<Vec<_>>>()?;
    if aggs.is_empty() {
        return Err(Error::Config("at least one --agg is needed".into()));
    }
    let keys: Vec<&str> = spec.keys.iter().map(String::as_str).collect();
    Ok(stream
        .watermarks(WatermarkStrategy::bounded_out_of_orderness(
            &spec.time,
            spec.watermark_delay,
        ))
        .key_by(keys)
        .window(spec.window)
        .aggregate(aggs))
}
