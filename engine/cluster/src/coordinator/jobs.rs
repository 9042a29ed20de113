//! A job as the coordinator holds it: its durable record, the attempt
//! running now, and what is shown of it (counters, the newest sink rows,
//! its executors' newest log lines,
//! checkpoint figures) or kept in memory for it (its autoscaler's
//! samples) but never written to disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_engine::checkpoint::CheckpointStats;
use sluice_protocol::api::{ExecutorLaunch, JobStatus, NodeCounters, Placement};
use sluice_protocol::logs::JobLogs;
use sluice_protocol::metrics::JobMetrics;
use sluice_protocol::results::LatestRows;

use super::autoscaler::Autoscaler;
use super::logs::LogRing;
use super::manager::now_ms;
use super::meta::JobRecord;
use crate::attempt::AttemptHandle;

/// The attempt of a job that runs now.
pub(crate) struct Run {
    pub(crate) handle: AttemptHandle,
    pub(crate) placement: Vec<Placement>,
    /// Per executor: its worker and launch.
    pub(crate) launches: Vec<(String, ExecutorLaunch)>,
    /// Slots taken per worker.
    pub(crate) slots: HashMap<String, usize>,
}

pub(crate) struct Job {
    pub(crate) record: JobRecord,
    pub(crate) run: Option<Run>,
    /// When a waiting job may start its next attempt.
    pub(crate) not_before: Instant,
    /// When its last attempt failed: the next one only goes to workers
    /// that heartbeated since (a worker whose executor just vanished is
    /// likely dead, though not yet declared so).
    pub(crate) failed_at: Option<Instant>,
    /// Why a waiting job has not started (too few slots), shown as its
    /// error while it has no other.
    pub(crate) waiting: Option<String>,
    pub(crate) stats: Arc<Mutex<CheckpointStats>>,
    /// Fencing refusals of earlier attempts (the current run's are added).
    pub(crate) rejected_stale: u64,
    pub(crate) nodes: Vec<NodeCounters>,
    /// The newest rows its sinks received, over all attempts.
    pub(crate) results: LatestRows,
    /// Its executors' newest log lines, over all attempts.
    pub(crate) logs: LogRing,
    /// Incremented by every change of `record`.
    pub(crate) version: u64,
    /// `record` changed since it was last handed to the writer.
    pub(crate) unsaved: bool,
    /// Its autoscaler, if it was submitted with a range.
    pub(crate) autoscaler: Option<Autoscaler>,
    /// When the autoscaler last sampled it, ms since the epoch.
    pub(crate) autoscaled_ms: i64,
}

impl Job {
    pub(crate) fn new(record: JobRecord) -> Job {
        let autoscaler = record.autoscaler.as_ref().map(|a| {
            Autoscaler::new(sluice_protocol::api::AutoscaleRange {
                min: a.min,
                max: a.max,
            })
        });
        Job {
            record,
            run: None,
            not_before: Instant::now(),
            failed_at: None,
            waiting: None,
            stats: Arc::default(),
            rejected_stale: 0,
            nodes: Vec::new(),
            results: LatestRows::default(),
            logs: LogRing::default(),
            version: 0,
            unsaved: false,
            autoscaler,
            autoscaled_ms: 0,
        }
    }

    /// Notes the newest completed checkpoint in the record.
    pub(crate) fn note_checkpoint(&mut self) {
        let latest = self
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recent
            .iter()
            .filter(|r| !r.savepoint)
            .map(|r| r.id)
            .max();
        if latest.is_some() && latest > self.record.latest_checkpoint {
            self.record.latest_checkpoint = latest;
            self.changed();
        }
    }

    /// Notes a change of `record`, to be written when the manager's lock
    /// is released.
    pub(crate) fn changed(&mut self) {
        self.record.updated_ms = now_ms();
        self.version += 1;
        self.unsaved = true;
    }

    fn rejected(&self) -> u64 {
        self.rejected_stale + self.run.as_ref().map_or(0, |r| r.handle.rejected_stale())
    }

    /// The current attempt's figures as the API shows them: its
    /// executors' latest reports, read when asked for (nothing once no
    /// attempt runs).
    pub(crate) fn metrics(&self) -> JobMetrics {
        let (subtasks, processes) = self
            .run
            .as_ref()
            .map(|run| run.handle.figures())
            .unwrap_or_default();
        JobMetrics::new(
            &self.record.id,
            now_ms(),
            &self.record.description.vertices,
            subtasks,
            processes,
        )
    }

    /// Its executors' log lines from `since` on, as the API answers them
    /// (see [`LogRing::read`]). Complete once the job ended and every
    /// executor of its last attempt that logged had its log read to the
    /// end, and two heartbeats (`heartbeat`) passed for one that logged
    /// nothing yet; or, whatever its executors did (a worker died with
    /// them), [`LOG_GRACE`] after the end.
    pub(crate) fn logs(
        &self,
        since: u64,
        limit: usize,
        tail: Option<usize>,
        heartbeat: Duration,
    ) -> JobLogs {
        let (lines, next) = self.logs.read(since, limit, tail);
        let state = self.record.life.state;
        // The record's last change of an ended job is its end.
        let ended_for = now_ms().saturating_sub(self.record.updated_ms).max(0) as u128;
        let complete = state.is_terminal()
            && ((self.logs.ended(self.record.life.attempt)
                && ended_for >= 2 * heartbeat.as_millis())
                || ended_for >= LOG_GRACE.as_millis());
        JobLogs {
            job_id: self.record.id.clone(),
            state,
            lines,
            next,
            dropped: self.logs.dropped(),
            complete,
        }
    }

    /// The job as the API shows it.
    pub(crate) fn status(&self) -> JobStatus {
        let r = &self.record;
        JobStatus {
            id: r.id.clone(),
            name: r.description.name.clone(),
            state: r.life.state,
            attempt: r.life.attempt,
            restarts: r.life.restarts,
            artifact: r.artifact.clone(),
            args: r.args.clone(),
            submitted_ms: r.submitted_ms,
            updated_ms: r.updated_ms,
            error: r.life.error.clone().or_else(|| self.waiting.clone()),
            latest_checkpoint: r.latest_checkpoint,
            rejected_stale: self.rejected(),
            placement: self
                .run
                .as_ref()
                .map(|run| run.placement.clone())
                .unwrap_or_default(),
            nodes: self.nodes.clone(),
            vertices: r.description.vertices.clone(),
            parallelism: r.parallelism,
            workdir: r.workdir.clone(),
            rescaling_to: r.rescale.as_ref().map(|p| p.parallelism),
            restart: r.life.policy,
            exceptions: r.exceptions.clone(),
            autoscaler: r.autoscaler.clone().map(|mut a| {
                a.pending = (r.life.state == sluice_protocol::api::JobState::Running)
                    .then(|| self.autoscaler.as_ref().and_then(|s| s.pending()))
                    .flatten()
                    .map(|(to, since_ms)| sluice_protocol::api::AutoscalePending { to, since_ms });
                a
            }),
        }
    }
}

/// How long after a job ended its log lines are still waited for when an
/// executor's log was not read to its end (its worker died, say).
const LOG_GRACE: Duration = Duration::from_secs(15);

/// Whether `s` names an artifact: a lowercase hex SHA-256.
pub(crate) fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
