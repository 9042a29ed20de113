//! Executors' logs on their way to whoever asks the coordinator: the
//! lines a worker reads from an executor's log file and sends with its
//! heartbeat ([`LogChunk`]), and what `GET /api/v1/jobs/{id}/logs`
//! answers ([`JobLogs`], one [`LogLine`] per line). The bounds a worker
//! keeps to are here too, so that a coordinator and its workers agree on
//! them; how the lines are read (worker) and kept (coordinator) is the
//! cluster crate's.

use serde::{Deserialize, Serialize};

use crate::api::JobState;

/// The longest line sent, in bytes: a longer one is cut there (at a
/// character boundary) and [`TRUNCATED`] appended.
pub const MAX_LINE_BYTES: usize = 4096;

/// What ends a line that was cut at [`MAX_LINE_BYTES`].
pub const TRUNCATED: &str = " [… line truncated]";

/// The most log text (the lines' bytes, all executors together) one
/// heartbeat carries; what is left waits for the next one.
pub const HEARTBEAT_LOG_BYTES: usize = 64 * 1024;

/// New lines of one executor's log, as a worker sends them with its
/// heartbeat.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// Job id.
    pub job_id: String,
    /// Attempt.
    pub attempt: u64,
    /// Executor index in the attempt.
    pub executor: usize,
    /// Whole lines, oldest first, without their line ends (a partial last
    /// line is sent once it is complete or the executor ended).
    pub lines: Vec<String>,
    /// When the worker read them, ms since the epoch.
    pub time_ms: i64,
    /// The executor ended and its log was read to the end: nothing more
    /// comes from it.
    #[serde(default)]
    pub complete: bool,
}

/// One line of an executor's log, as the coordinator keeps it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its place among the job's lines: numbered from 0 in the order the
    /// coordinator received them, over all attempts and executors.
    pub seq: u64,
    /// When its worker read it from the executor's log (at most a
    /// heartbeat after it was written), ms since the epoch; `None` when
    /// not known.
    pub time_ms: Option<i64>,
    /// The attempt whose executor wrote it.
    pub attempt: u64,
    /// The executor's index in that attempt.
    pub executor: usize,
    /// The worker that ran the executor.
    pub worker: String,
    /// The line, without its line end (cut at [`MAX_LINE_BYTES`] and
    /// marked with [`TRUNCATED`] if it was longer).
    pub text: String,
}

/// `GET /api/v1/jobs/{id}/logs`: lines of the job's executors, oldest
/// first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLogs {
    /// Job id.
    pub job_id: String,
    /// The job's state when this was answered.
    pub state: JobState,
    /// The lines asked for, oldest first.
    pub lines: Vec<LogLine>,
    /// The `since` to ask with next: one past the last line answered (with
    /// no line answered, the `seq` the next line will get).
    pub next: u64,
    /// Lines dropped (the coordinator keeps a bounded number per job)
    /// before the oldest kept: the oldest kept line's `seq`.
    pub dropped: u64,
    /// The job ended and no more lines are expected: every executor of its
    /// last attempt that logged anything ended and had its log read to the
    /// end (or the job ended long enough ago to stop waiting).
    pub complete: bool,
}
