//! Chandy–Lamport checkpoints (Flink's asynchronous barrier snapshots).
//!
//! The [`coordinator`] triggers checkpoint `n` at the sources, which record
//! their position and emit `Barrier(n)`; tasks align barriers over their
//! inputs (`runtime::align`), snapshot their chained operators in order,
//! forward the barrier and hand the copies to a writer thread, so
//! processing goes on while state is written. When every task has
//! acknowledged, the coordinator writes the manifest ([`manifest`]) and
//! tells every task the checkpoint is complete, which is when sinks commit
//! what they staged. [`store`] owns the layout, checksums, fallback past
//! corrupted checkpoints and retention; [`storage`] the local directory or
//! S3-compatible bucket they live in.
//!
//! Bounded jobs end with a final checkpoint taken after every task has
//! finished its input, so the output of the last epoch is committed the same
//! way and a job killed while committing it still ends exactly once.

pub mod coordinator;
pub mod restore;
pub mod storage;
pub mod store;

use std::time::Duration;

pub use crate::runtime::align::Guarantee;
pub use manifest::{CheckpointFigures, Manifest};
pub use sluice_protocol::manifest;
pub use sluice_protocol::stats::{CheckpointRecord, CheckpointStats};
pub use storage::{Location, Storage};

/// How a job checkpoints: set on the job's configuration, every
/// `interval` the sources record their position and a barrier flows
/// through the job; each operator's state goes to `dir/chk-NNNNNN/`. A job
/// started again on the same `dir` resumes from its newest complete
/// checkpoint; a bounded job ends with a final one.
///
/// ```
/// use std::time::Duration;
/// use sluice_engine::testing::{int_batch, run_collect};
/// use sluice_engine::{CheckpointConfig, Env};
///
/// let dir = std::env::temp_dir().join(format!("sluice-doc-ck-{}", std::process::id()));
/// let env = Env::new();
/// env.configure(|c| {
///     let mut ck = CheckpointConfig::new(&dir);
///     ck.interval = Duration::from_millis(200);
///     c.checkpoint = Some(ck);
/// });
/// let batch = int_batch(&[("n", &[1, 2, 3])]);
/// let s = env.from_batches("numbers", batch.schema(), vec![batch]);
/// assert_eq!(run_collect(&s)?.len(), 3);
/// let taken = std::fs::read_dir(&dir)?.flatten().filter(|e| {
///     e.file_name().to_string_lossy().starts_with("chk-")
/// });
/// assert!(taken.count() >= 1, "the final checkpoint");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Where checkpoints go (`DIR/chk-NNNNNN`), a directory or an
    /// `s3://bucket/prefix`; a job started again with the same location
    /// resumes from the newest restorable checkpoint.
    pub dir: Location,
    /// Time between checkpoint triggers.
    pub interval: Duration,
    /// A checkpoint not complete after this long is aborted.
    pub timeout: Duration,
    /// Least time between the end of one checkpoint and the next trigger.
    pub min_pause: Duration,
    /// Aligned (exactly-once) or unaligned (at-least-once) barriers.
    pub guarantee: Guarantee,
    /// Unaligned checkpoints (Flink's `execution.checkpointing.unaligned`),
    /// for jobs whose barriers would wait behind backpressured queues:
    /// every task snapshots as soon as the checkpoint is triggered, never
    /// blocks an input, and stores the records still in flight to it
    /// (those ahead of each input's barrier) with the checkpoint; they are
    /// replayed when it restores. Exactly-once like aligned ones.
    /// Savepoints and the final checkpoint stay aligned (so a savepoint
    /// restores at any parallelism); an unaligned checkpoint that holds
    /// in-flight records restores only at the parallelism it was taken at.
    pub unaligned: bool,
    /// Completed checkpoints kept.
    pub retained: usize,
    /// A checkpoint or savepoint directory to start from when `dir` holds
    /// no checkpoint of this job yet.
    pub restore_from: Option<Location>,
    /// Start even when the checkpoint holds state of operators the job no
    /// longer has (matched by operator id); that state is dropped (Flink's
    /// `--allowNonRestoredState`). Off: such a restore is refused.
    pub allow_non_restored_state: bool,
}

impl CheckpointConfig {
    /// Checkpoints into `dir` every second, exactly-once, keeping three.
    pub fn new(dir: impl Into<Location>) -> Self {
        CheckpointConfig {
            dir: dir.into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            min_pause: Duration::ZERO,
            guarantee: Guarantee::ExactlyOnce,
            unaligned: false,
            retained: 3,
            restore_from: None,
            allow_non_restored_state: false,
        }
    }
}

/// What to do when a task fails.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// Fail the job.
    None,
    /// Restart after a fixed delay, at most `attempts` times.
    FixedDelay {
        /// Restarts allowed.
        attempts: u32,
        /// Wait before each restart.
        delay: Duration,
    },
    /// Restart with a delay doubling from `initial` up to `max`.
    ExponentialBackoff {
        /// Restarts allowed.
        attempts: u32,
        /// First delay.
        initial: Duration,
        /// Largest delay.
        max: Duration,
    },
}

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy::ExponentialBackoff {
            attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl RestartStrategy {
    /// The delay before restart number `restarts + 1`, or `None` to give up.
    pub fn delay(&self, restarts: u32) -> Option<Duration> {
        match self {
            RestartStrategy::None => None,
            RestartStrategy::FixedDelay { attempts, delay } => {
                (restarts < *attempts).then_some(*delay)
            }
            RestartStrategy::ExponentialBackoff {
                attempts,
                initial,
                max,
            } => (restarts < *attempts)
                .then(|| initial.saturating_mul(1u32 << restarts.min(20)).min(*max)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delays() {
        let s = RestartStrategy::ExponentialBackoff {
            attempts: 3,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(250),
        };
        let d: Vec<_> = (0..4).map(|r| s.delay(r)).collect();
        assert_eq!(
            d,
            vec![
                Some(Duration::from_millis(100)),
                Some(Duration::from_millis(200)),
                Some(Duration::from_millis(250)),
                None
            ]
        );
        assert_eq!(RestartStrategy::None.delay(0), None);
    }
}
