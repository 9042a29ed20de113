//! Command-line helpers shared by the job binaries: durations, output
//! targets, logging setup.

use std::path::PathBuf;
use std::time::Duration;

/// Where a job writes its results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Discard every record (benchmarks).
    Blackhole,
    /// Print to stdout.
    Print,
    /// Parquet files in this directory.
    Dir(PathBuf),
}

impl std::str::FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("empty output".into()),
            "blackhole" => Ok(Output::Blackhole),
            "print" | "-" => Ok(Output::Print),
            dir => Ok(Output::Dir(PathBuf::from(dir))),
        }
    }
}

/// Parses `500ms`, `10s`, `5m`, `1h` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration '{s}': {e}"))
}

/// Installs a `tracing` subscriber reading `RUST_LOG` (default: warnings),
/// writing to stderr so stdout stays for results.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
