//! Command-line helpers shared by the job binaries: durations, output
//! targets, checkpoint flags, logging setup.

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

/// Parses a size in bytes: `1000000`, `512KB`, `128MiB`, `1GiB` (KB, MB,
/// GB are powers of 1000; KiB, MiB, GiB of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size '{s}': expected a number with an optional unit"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size '{s}': unknown unit '{other}' (KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid size '{s}': must be positive and fit in 64 bits"))
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

/// Where keyed state lives while the job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateBackend {
    /// On the heap (columnar accumulators), snapshotted as Arrow IPC.
    Memory,
    /// In RocksDB on local disk (larger than memory), checkpointed incrementally.
    Rocksdb,
}

/// The checkpoint and state flags every job binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckpointArgs {
    /// Checkpoint into this directory or `s3://bucket/prefix` (S3 settings
    /// from `AWS_*` variables); a job started again with the same location
    /// resumes from its newest restorable checkpoint.
    #[arg(long)]
    pub checkpoint_dir: Option<sluice_engine::checkpoint::Location>,
    /// Time between checkpoints.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// Completed checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    pub checkpoints_retained: usize,
    /// Skip barrier alignment (at-least-once instead of exactly-once).
    #[arg(long)]
    pub at_least_once: bool,
    /// State backend (tumbling and sliding windows use RocksDB when asked).
    #[arg(long, value_enum, default_value = "memory")]
    pub state: StateBackend,
    /// RocksDB block cache per operator subtask, MiB.
    #[arg(long, default_value_t = 64)]
    pub state_cache_mb: usize,
    /// Local directory for RocksDB databases (default: the system temp dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Start from this checkpoint or savepoint (a directory or S3 URL) when
    /// the checkpoint location holds none of this job yet.
    #[arg(long)]
    pub restore: Option<sluice_engine::checkpoint::Location>,
}

impl CheckpointArgs {
    /// Configures `env` (named `job`, which checkpoints record) from the flags.
    pub fn apply(&self, env: &sluice_engine::Env, job: &str) -> anyhow::Result<()> {
        if self.restore.is_some() && self.checkpoint_dir.is_none() {
            anyhow::bail!("--restore needs --checkpoint-dir (where the resumed job checkpoints)");
        }
        if self.checkpoint_interval.is_zero() {
            anyhow::bail!("--checkpoint-interval must be positive");
        }
        env.configure(|c| {
            c.name = job.to_string();
            if let Some(d) = &self.state_dir {
                c.state.local_dir = d.clone();
            }
            if self.state == StateBackend::Rocksdb {
                let cache = self.state_cache_mb.max(1) << 20;
                c.state.backend = sluice_engine::state::StateBackend::RocksDb(
                    sluice_engine::state::rocks::RocksConfig {
                        block_cache_bytes: cache,
                        // Memtables are the other big consumer: keep them in proportion.
                        write_buffer_bytes: (cache / 4).max(1 << 20),
                    },
                );
            }
            if let Some(dir) = &self.checkpoint_dir {
                let mut ck = sluice_engine::CheckpointConfig::new(dir.clone());
                ck.interval = self.checkpoint_interval;
                ck.retained = self.checkpoints_retained.max(1);
                ck.restore_from = self.restore.clone();
                if self.at_least_once {
                    ck.guarantee = sluice_engine::checkpoint::Guarantee::AtLeastOnce;
                }
                c.checkpoint = Some(ck);
            }
        });
        Ok(())
    }
}

/// A one-line summary of a job's checkpoints for the binaries' reports.
pub fn checkpoint_summary(stats: &sluice_engine::checkpoint::CheckpointStats) -> String {
    let last = stats.recent.last();
    format!(
        "checkpoints={} aborted={} restarts={} restored_from={} last_checkpoint_ms={} last_checkpoint_bytes={}",
        stats.completed,
        stats.aborted,
        stats.restarts,
        stats.restored_from.map_or("-".into(), |c| c.to_string()),
        last.map_or("-".into(), |r| r.figures.duration_ms.to_string()),
        last.map_or("-".into(), |r| r.figures.bytes.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("512KB"), Ok(512_000));
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
