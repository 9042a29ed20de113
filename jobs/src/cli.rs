//! Command-line helpers shared by the job binaries: durations, output
//! targets, checkpoint flags (and what a checkpoint location holds when a
//! job starts: the notice that it resumes, `--fresh`), logging setup, the
//! closing summary's resume part, hints on errors.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_engine::checkpoint::{store, Storage};
use tracing::info;

/// The `tracing` target of notices for whoever runs a job: where it
/// resumes, where a bounded source stops. Shown at INFO by default.
pub use sluice_connectors::kafka::NOTICE_TARGET;

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

/// Parses `--kafka-option KEY=VALUE` (a librdkafka property; the value
/// may contain `=`).
pub fn parse_kafka_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "'{s}' is not KEY=VALUE (a librdkafka property, e.g. security.protocol=SASL_SSL)"
        )),
    }
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

/// Installs a `tracing` subscriber reading `RUST_LOG` (default: warnings,
/// and the job notices of [`NOTICE_TARGET`]), writing to stderr so stdout
/// stays for results.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("warn,{NOTICE_TARGET}=info"))
    });
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Around the progress bar, when one is drawn.
        .with_writer(|| crate::progress::LogWriter)
        // Colours only for a terminal, not in files and pipes.
        .with_ansi(std::io::stderr().is_terminal())
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
    #[arg(long, conflicts_with = "unaligned_checkpoints")]
    pub at_least_once: bool,
    /// Unaligned checkpoints, exactly-once: every operator snapshots as
    /// soon as a checkpoint starts and the records still queued between
    /// operators are stored with it, so checkpoints stay quick when the
    /// job is backpressured. Savepoints stay aligned; an unaligned
    /// checkpoint restores only at the parallelism it was taken at (to
    /// rescale, take a savepoint).
    #[arg(long)]
    pub unaligned_checkpoints: bool,
    /// State backend: every stateful operator (windows, joins, top-N,
    /// keyed state) keeps its state there.
    #[arg(long, value_enum, default_value = "memory")]
    pub state: StateBackend,
    /// RocksDB: the live state each operator subtask keeps in memory (a
    /// write-back cache), MiB; state beyond it lives in RocksDB.
    #[arg(long, default_value_t = 64)]
    pub state_cache_mb: usize,
    /// RocksDB: block cache per operator subtask, MiB.
    #[arg(long, default_value_t = 16)]
    pub rocksdb_block_cache_mb: usize,
    /// RocksDB: memtables per operator subtask (all tables together), MiB.
    #[arg(long, default_value_t = 16)]
    pub rocksdb_write_buffer_mb: usize,
    /// Local directory for RocksDB databases (default: the system temp dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Start from this checkpoint or savepoint (a directory or S3 URL) when
    /// the checkpoint location holds none of this job yet.
    #[arg(long)]
    pub restore: Option<sluice_engine::checkpoint::Location>,
    /// Start from the beginning instead of resuming: move the checkpoint
    /// directory and the output directory aside (renamed to
    /// `NAME.old-TIMESTAMP`) when they hold anything. Nothing is deleted.
    /// Local directories only, embedded runs only.
    #[arg(long)]
    pub fresh: bool,
    /// Restore even if the checkpoint holds state of operators the job no
    /// longer has (their state is dropped); by default that is refused.
    #[arg(long)]
    pub allow_non_restored_state: bool,
    /// Print the plan (settings, then each vertex with its chained
    /// operators, parallelism and partitioned inputs) and exit without
    /// running anything or touching the checkpoint and output locations.
    #[arg(long, conflicts_with = "fresh")]
    pub explain: bool,
}

/// What the checkpoint location held when the job started: the checkpoint
/// it resumes from, as far as the manifests tell (the engine verifies it,
/// and falls back past a damaged one with a warning).
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// Newest completed checkpoint: id and when it was taken (ms since the
    /// epoch).
    pub checkpoint: Option<(u64, i64)>,
}

/// `2025-06-01T10:00:00Z` for ms since the epoch.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// How long ago `ms` (since the epoch) was, roughly (`3m 20s`).
fn ago(ms: i64) -> String {
    let then = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let secs = SystemTime::now()
        .duration_since(then)
        .map_or(0, |d| d.as_secs());
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Renames `dir` to `DIR.old-TIMESTAMP` (a fresh name) and returns it.
fn set_aside(dir: &Path) -> anyhow::Result<PathBuf> {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "dir".into());
    let mut target = dir.with_file_name(format!("{name}.old-{stamp}"));
    let mut n = 2;
    while target.exists() {
        target = dir.with_file_name(format!("{name}.old-{stamp}-{n}"));
        n += 1;
    }
    std::fs::rename(dir, &target).map_err(|e| {
        anyhow::anyhow!(
            "--fresh: moving {} aside to {}: {e}",
            dir.display(),
            target.display()
        )
    })?;
    Ok(target)
}

/// Whether `dir` exists and holds anything.
fn holds_anything(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut rd| rd.next().is_some())
}

impl CheckpointArgs {
    /// Configures `env` (named `job`, which checkpoints record) from the
    /// flags. Says where the job resumes (or that it starts from the
    /// beginning) and, with `--fresh`, moves the checkpoint directory
    /// aside first. Only an embedded run looks: in describe or executor
    /// mode the location is the coordinator's business (and `--fresh` an
    /// error).
    pub fn apply(&self, env: &sluice_engine::Env, job: &str) -> anyhow::Result<Resume> {
        if self.restore.is_some() && self.checkpoint_dir.is_none() {
            anyhow::bail!("--restore needs --checkpoint-dir (where the resumed job checkpoints)");
        }
        if self.checkpoint_interval.is_zero() {
            anyhow::bail!("--checkpoint-interval must be positive");
        }
        let resume = self.look(job)?;
        env.configure(|c| {
            c.name = job.to_string();
            if let Some(d) = &self.state_dir {
                c.state.local_dir = d.clone();
            }
            if self.state == StateBackend::Rocksdb {
                c.state.backend = sluice_engine::state::StateBackend::RocksDb(
                    sluice_engine::state::rocks::RocksConfig {
                        cache_bytes: self.state_cache_mb << 20,
                        block_cache_bytes: self.rocksdb_block_cache_mb.max(1) << 20,
                        write_buffer_bytes: self.rocksdb_write_buffer_mb.max(1) << 20,
                    },
                );
            }
            if let Some(dir) = &self.checkpoint_dir {
                let mut ck = sluice_engine::CheckpointConfig::new(dir.clone());
                ck.interval = self.checkpoint_interval;
                ck.retained = self.checkpoints_retained.max(1);
                ck.restore_from = self.restore.clone();
                ck.allow_non_restored_state = self.allow_non_restored_state;
                if self.at_least_once {
                    ck.guarantee = sluice_engine::checkpoint::Guarantee::AtLeastOnce;
                }
                ck.unaligned = self.unaligned_checkpoints;
                c.checkpoint = Some(ck);
            }
        });
        Ok(resume)
    }

    /// With `--explain`: prints the plan of the job built on `env` to
    /// stdout and says so (the caller then exits without running it).
    pub fn explained(&self, env: &sluice_engine::Env) -> anyhow::Result<bool> {
        if !self.explain {
            return Ok(false);
        }
        let plan = env.explain()?;
        let mut out = std::io::stdout().lock();
        std::io::Write::write_all(&mut out, plan.as_bytes())?;
        Ok(true)
    }

    /// What the checkpoint location holds; with `--fresh` it is moved aside.
    fn look(&self, job: &str) -> anyhow::Result<Resume> {
        if self.explain {
            return Ok(Resume::default());
        }
        if !sluice_engine::dsl::runs_embedded() {
            if self.fresh {
                anyhow::bail!(
                    "--fresh works on embedded runs only; on a cluster, submit the job with a new --checkpoint-dir"
                );
            }
            return Ok(Resume::default());
        }
        let Some(location) = &self.checkpoint_dir else {
            return Ok(Resume::default());
        };
        let newest = store::newest_manifest(&Storage::open(location)?)?;
        if self.fresh {
            let Some(dir) = location.local_path() else {
                anyhow::bail!(
                    "--fresh moves local directories aside; for {location} choose a new prefix instead"
                );
            };
            if holds_anything(&dir) {
                let aside = set_aside(&dir)?;
                let what = match &newest {
                    Some((m, n)) => format!(
                        "{n} checkpoint(s) of job '{}', the newest {} taken {}",
                        m.job,
                        m.id,
                        rfc3339(m.timestamp_ms)
                    ),
                    None => "no completed checkpoint".into(),
                };
                info!(target: NOTICE_TARGET,
                    "--fresh: moved {} ({what}) aside to {}; starting from the beginning",
                    dir.display(), aside.display());
            }
            return Ok(Resume::default());
        }
        match newest {
            Some((m, _)) if m.job == job => {
                info!(target: NOTICE_TARGET,
                    "resuming job '{job}' from checkpoint {} in {location} (taken {}, {} ago); \
                     --fresh starts from the beginning instead",
                    m.id, rfc3339(m.timestamp_ms), ago(m.timestamp_ms));
                Ok(Resume {
                    checkpoint: Some((m.id, m.timestamp_ms)),
                })
            }
            // Another job's checkpoints: the engine refuses to start, naming it.
            Some(_) => Ok(Resume::default()),
            None => {
                match &self.restore {
                    Some(r) => info!(target: NOTICE_TARGET,
                        "{location} holds no checkpoint yet: starting from {r}"),
                    None => info!(target: NOTICE_TARGET,
                        "{location} holds no checkpoint yet: starting from the beginning"),
                }
                Ok(Resume::default())
            }
        }
    }

    /// With `--fresh` (embedded runs), moves an output directory that
    /// holds anything aside, so the fresh run's files are all there is.
    pub fn fresh_output(&self, dir: &Path) -> anyhow::Result<()> {
        if self.fresh && !self.explain && sluice_engine::dsl::runs_embedded() && holds_anything(dir)
        {
            let aside = set_aside(dir)?;
            info!(target: NOTICE_TARGET,
                "--fresh: moved the earlier output {} aside to {}", dir.display(), aside.display());
        }
        Ok(())
    }

    /// [`CheckpointArgs::fresh_output`] for an output that may be in a
    /// bucket: there nothing can be moved aside atomically, so `--fresh`
    /// with an object-store output is refused rather than half done.
    pub fn fresh_output_at(
        &self,
        output: &sluice_engine::checkpoint::Location,
    ) -> anyhow::Result<()> {
        match output.local_path() {
            Some(dir) => self.fresh_output(&dir),
            None if self.fresh && sluice_engine::dsl::runs_embedded() => anyhow::bail!(
                "--fresh moves local directories aside; the output {output} is in object storage: \
                 remove or rename it there, or write to a new prefix"
            ),
            None => Ok(()),
        }
    }
}

/// The resume part of a closing summary: `resumed from checkpoint 12
/// (taken 2025-06-01T10:00:00Z)`, or `started from the beginning`.
pub fn resume_summary(
    resume: &Resume,
    stats: &sluice_engine::checkpoint::CheckpointStats,
) -> String {
    // The first attempt's start point: later ones (restarts) resume from
    // the job's own checkpoints, which the summary counts separately.
    match (resume.checkpoint, stats.restored_from) {
        (Some((id, _)), Some(r)) if stats.restarts == 0 && r != id => {
            format!("resumed from checkpoint {r} (newer ones did not verify)")
        }
        (Some((id, ms)), _) => format!("resumed from checkpoint {id} (taken {})", rfc3339(ms)),
        (None, Some(id)) if stats.restarts == 0 => format!("resumed from checkpoint {id}"),
        _ => "started from the beginning".into(),
    }
}

/// `e` for the user, with a hint for errors a flag can get past: records
/// that cannot be decoded or processed (`bad_records` says which flags
/// skip or keep them).
pub fn explain(e: sluice_engine::Error, bad_records: &str) -> anyhow::Error {
    match e.root() {
        sluice_engine::Error::Decode(_) => {
            anyhow::anyhow!("{e}\n(the job stopped at the first bad record; {bad_records})")
        }
        _ => anyhow::Error::new(e),
    }
}

/// A one-line summary of a job's checkpoints for the binaries' reports.
/// An executor (one process of a job on a cluster) knows only the
/// checkpoints its tasks were told completed or aborted: restarts and each
/// checkpoint's figures are the coordinator's (`sluice status`).
pub fn checkpoint_summary(result: &sluice_engine::JobResult) -> String {
    let stats = &result.checkpoints;
    let restored = stats.restored_from.map_or("-".into(), |c| c.to_string());
    if result.executor.is_some() {
        return format!(
            "checkpoints={} aborted={} restored_from={restored}",
            stats.completed, stats.aborted
        );
    }
    let last = stats.recent.last();
    // Over the recent checkpoints (up to 32): how long they took and what
    // they held in flight (unaligned ones).
    let median = |f: &dyn Fn(&sluice_engine::checkpoint::CheckpointRecord) -> u64| {
        let mut v: Vec<u64> = stats.recent.iter().map(f).collect();
        v.sort_unstable();
        v.get(v.len() / 2).map_or("-".into(), |m| m.to_string())
    };
    let max_ms = stats.recent.iter().map(|r| r.figures.duration_ms).max();
    format!(
        "checkpoints={} aborted={} restarts={} restored_from={restored} last_checkpoint_ms={} last_checkpoint_bytes={} \
         median_checkpoint_ms={} max_checkpoint_ms={} median_in_flight_bytes={}",
        stats.completed,
        stats.aborted,
        stats.restarts,
        last.map_or("-".into(), |r| r.figures.duration_ms.to_string()),
        last.map_or("-".into(), |r| r.figures.bytes.to_string()),
        median(&|r| r.figures.duration_ms),
        max_ms.map_or("-".into(), |m| m.to_string()),
        median(&|r| r.figures.in_flight_bytes),
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
