//! Figures of a running job per subtask and per process, as an executor
//! reports them to the coordinator (inside
//! [`ToCoordinator::Metrics`](crate::control::ToCoordinator::Metrics)) and
//! as `GET /api/v1/jobs/{id}/metrics` shows them. The time accounting
//! follows Flink's task metrics: in each second of wall time a subtask is
//! *idle* (waiting for input), *backpressured* (waiting for room in an
//! output channel: a full local queue or no credit on a network channel)
//! or *busy* (everything else: operator work, encoding, state).

use serde::{Deserialize, Serialize};

use crate::api::{NodeCounters, VertexInfo};

/// What an executor reports every 250 ms.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutorMetrics {
    /// Records in and out per graph node of its subtasks (cumulative).
    pub nodes: Vec<NodeCounters>,
    /// Its subtasks.
    pub subtasks: Vec<SubtaskMetrics>,
    /// The executor process, where it could be read (Linux).
    pub process: Option<ProcessMetrics>,
}

/// One subtask (vertex, subtask index) of the current attempt.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubtaskMetrics {
    /// Vertex index in the physical plan.
    pub vertex: usize,
    /// Subtask index.
    pub subtask: usize,
    /// Milliseconds per second busy, over the last second or so
    /// (1000 − idle − backpressured).
    pub busy_ms_per_s: u64,
    /// Milliseconds per second waiting for input.
    pub idle_ms_per_s: u64,
    /// Milliseconds per second waiting for room downstream.
    pub backpressured_ms_per_s: u64,
    /// Busy time since the subtask started, ms.
    pub busy_ms: u64,
    /// Idle time since the subtask started, ms.
    pub idle_ms: u64,
    /// Backpressured time since the subtask started, ms.
    pub backpressured_ms: u64,
    /// Records that entered the subtask: from its input channels, or read
    /// by its source.
    pub records_in: u64,
    /// Records it sent on its output edges (once per edge).
    pub records_out: u64,
    /// Arrow buffer bytes of the batches that entered it.
    pub bytes_in: u64,
    /// Arrow buffer bytes of the batches it sent (once per edge).
    pub bytes_out: u64,
    /// Its input watermark (ms since the epoch): the minimum over its
    /// inputs, or what its source generated; none before the first.
    pub watermark_ms: Option<i64>,
    /// Per split of its source, records not yet read (a Kafka partition's
    /// high watermark minus the source's position).
    #[serde(default)]
    pub pending: Vec<SplitPending>,
    /// A bounded source's records not read yet, where it can tell (none
    /// for an unbounded source): with `records_in`, how far the job is.
    #[serde(default)]
    pub remaining: Option<u64>,
    /// How full its input channels were at its last tick, 0 to 1 (Flink's
    /// inPoolUsage): near 1, it cannot keep up with its inputs. None
    /// without inputs.
    #[serde(default)]
    pub input_queue_usage: Option<f64>,
    /// How full its output channels were, 0 to 1 (local queues, and the
    /// credit of network channels in use; Flink's outPoolUsage): near 1,
    /// downstream backpressures it. None without outputs.
    #[serde(default)]
    pub output_queue_usage: Option<f64>,
    /// At a sink's subtask (no output edges): how long the sources' latency
    /// markers took to reach it over the last minute. Markers pass
    /// operators by, so this is the time in queues and on the network
    /// between source and sink (Flink's latency markers), not time records
    /// wait in windows; across machines it includes their clocks' offset.
    #[serde(default)]
    pub latency: Option<Latency>,
}

/// Latency markers' times from source to a sink subtask, ms.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Markers measured.
    pub markers: u64,
    /// Median.
    pub p50_ms: i64,
    /// 99th percentile.
    pub p99_ms: i64,
    /// Largest.
    pub max_ms: i64,
}

impl SubtaskMetrics {
    /// Wall clock minus the watermark, ms, at `now_ms`; none without a
    /// watermark or once the input ended (the final watermark is `i64::MAX`).
    pub fn watermark_lag_ms(&self, now_ms: i64) -> Option<i64> {
        self.watermark_ms
            .filter(|w| *w < i64::MAX)
            .map(|w| now_ms.saturating_sub(w))
    }
}

/// Records a source split has not read yet.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPending {
    /// The split, as the source names it (Kafka: `topic-partition`).
    pub split: String,
    /// Records behind.
    pub records: u64,
}

/// One process running a job's subtasks.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessMetrics {
    /// CPU time (user and system) since the process started, ms.
    pub cpu_ms: u64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Bytes it sent to other processes on exchange connections (frames
    /// as encoded, before TLS).
    #[serde(default)]
    pub net_sent_bytes: u64,
    /// Bytes it received from other processes on exchange connections.
    #[serde(default)]
    pub net_received_bytes: u64,
}

/// `GET /api/v1/jobs/{id}/metrics`: the current attempt's figures per
/// subtask and per executor process.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobMetrics {
    /// Job id.
    pub job_id: String,
    /// When these were put together, ms since the epoch (watermark lags
    /// are relative to it).
    pub time_ms: i64,
    /// Every subtask that reported, by vertex and subtask.
    pub subtasks: Vec<SubtaskFigures>,
    /// Every executor process that reported, by index (an embedded job is
    /// one process, index 0).
    pub executors: Vec<ExecutorProcess>,
}

impl JobMetrics {
    /// The figures of job `job_id` at `time_ms`: each subtask named after
    /// its vertex in `vertices`, its watermark lag relative to `time_ms`.
    pub fn new(
        job_id: &str,
        time_ms: i64,
        vertices: &[VertexInfo],
        subtasks: Vec<SubtaskMetrics>,
        executors: Vec<ExecutorProcess>,
    ) -> JobMetrics {
        let subtasks = subtasks
            .into_iter()
            .map(|metrics| SubtaskFigures {
                vertex_name: vertices
                    .iter()
                    .find(|v| v.id == metrics.vertex)
                    .map_or_else(String::new, |v| v.name.clone()),
                watermark_lag_ms: metrics.watermark_lag_ms(time_ms),
                metrics,
            })
            .collect();
        JobMetrics {
            job_id: job_id.to_string(),
            time_ms,
            subtasks,
            executors,
        }
    }
}

/// A subtask's figures with its vertex's name and its watermark lag.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubtaskFigures {
    /// The vertex's name (its chained operators).
    pub vertex_name: String,
    /// Wall clock minus the watermark at `time_ms`, ms.
    pub watermark_lag_ms: Option<i64>,
    /// The figures.
    #[serde(flatten)]
    pub metrics: SubtaskMetrics,
}

/// One executor process's figures.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutorProcess {
    /// Executor index within the attempt.
    pub executor: usize,
    /// Its CPU time and memory.
    #[serde(flatten)]
    pub process: ProcessMetrics,
}

/// `GET /api/v1/jobs/{id}/history`: a job's figures over the last
/// minutes, one point per sampling interval, oldest first. The server
/// keeps a bounded window in memory (a new coordinator leader starts an
/// empty one).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobHistory {
    /// Job id.
    pub job_id: String,
    /// Time between points, ms.
    pub interval_ms: u64,
    /// Oldest first.
    pub points: Vec<HistoryPoint>,
}

/// A job's figures at one time. Rates are per second since the previous
/// point of the same attempt (none at an attempt's first point).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// The attempt that was running.
    pub attempt: u64,
    /// Records its sources read per second.
    pub source_records_per_s: Option<f64>,
    /// Records that reached its last vertices (those feeding no other)
    /// per second.
    pub sink_records_per_s: Option<f64>,
    /// The largest watermark lag over its subtasks, ms.
    pub watermark_lag_ms: Option<i64>,
    /// Records its sources have not read yet (Kafka consumer lag), summed
    /// over splits; none when no source reports a backlog.
    pub source_pending: Option<u64>,
    /// Checkpoints completed since the previous point: (id, duration ms).
    pub checkpoints: Vec<(u64, u64)>,
    /// The largest 99th-percentile latency from source to sink over its
    /// sink subtasks (latency markers of the last minute).
    #[serde(default)]
    pub latency_p99_ms: Option<i64>,
    /// Per vertex.
    pub vertices: Vec<VertexLoad>,
}

/// One vertex at a point of a job's history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VertexLoad {
    /// Vertex index in the physical plan.
    pub vertex: usize,
    /// Records in per second, over its subtasks.
    pub records_in_per_s: Option<f64>,
    /// Records out per second, over its subtasks.
    pub records_out_per_s: Option<f64>,
    /// The busiest subtask's busy milliseconds per second.
    pub busy_ms_per_s: u64,
    /// The most backpressured subtask's backpressured milliseconds per second.
    pub backpressured_ms_per_s: u64,
}

/// `GET /api/v1/workers/load`: each worker's load over the last minutes,
/// oldest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkersLoad {
    /// Time between points, ms.
    pub interval_ms: u64,
    /// Oldest first.
    pub points: Vec<WorkersPoint>,
}

/// Every worker at one time.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkersPoint {
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// Per worker.
    pub workers: Vec<WorkerLoad>,
}

/// One worker at one time.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerLoad {
    /// Worker id.
    pub worker: String,
    /// Slots in use.
    pub used_slots: usize,
    /// Slots.
    pub slots: usize,
    /// CPU cores its executors used since the previous point (none at
    /// the first point of an executor).
    pub cpu_cores: Option<f64>,
    /// Resident memory of its executors, bytes.
    pub rss_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_wall_clock_minus_watermark_until_the_input_ends() {
        let mut m = SubtaskMetrics::default();
        assert_eq!(m.watermark_lag_ms(5_000), None);
        m.watermark_ms = Some(3_000);
        assert_eq!(m.watermark_lag_ms(5_000), Some(2_000));
        m.watermark_ms = Some(i64::MAX);
        assert_eq!(m.watermark_lag_ms(5_000), None);
    }
}
