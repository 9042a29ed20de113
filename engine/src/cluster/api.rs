//! The coordinator's REST API: request and response bodies (JSON). The
//! routes are listed in [`ROUTES`] and described by `engine/openapi.json`.

use serde::{Deserialize, Serialize};

use crate::checkpoint::coordinator::TaskKey;
use crate::checkpoint::CheckpointStats;

/// Every route of the API, as `METHOD path` (path parameters in braces).
pub const ROUTES: &[&str] = &[
    "GET /api/v1/jobs",
    "POST /api/v1/jobs",
    "GET /api/v1/jobs/{id}",
    "POST /api/v1/jobs/{id}/cancel",
    "POST /api/v1/jobs/{id}/savepoint",
    "POST /api/v1/jobs/{id}/rescale",
    "GET /api/v1/jobs/{id}/checkpoints",
    "GET /api/v1/jobs/{id}/results",
    "PUT /api/v1/artifacts/{sha256}",
    "GET /api/v1/artifacts/{sha256}",
    "HEAD /api/v1/artifacts/{sha256}",
    "GET /api/v1/workers",
    "POST /api/v1/workers",
    "POST /api/v1/workers/{id}/heartbeat",
    "GET /api/v1/cluster",
    "GET /metrics",
    "GET /",
    "GET /ui",
    "GET /ui/app.js",
];

/// Life cycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Submitted, waiting for slots.
    Created,
    /// Every executor of the current attempt runs.
    Running,
    /// An attempt failed; the next one waits for its delay or for slots.
    Restarting,
    /// All input consumed and the final checkpoint committed.
    Finished,
    /// Failed for good (no checkpoints, restarts exhausted, or a job error).
    Failed,
    /// Cancelled by a user.
    Canceled,
}

impl JobState {
    /// The name the API uses (`RUNNING`, ...).
    pub fn name(self) -> &'static str {
        match self {
            JobState::Created => "CREATED",
            JobState::Running => "RUNNING",
            JobState::Restarting => "RESTARTING",
            JobState::Finished => "FINISHED",
            JobState::Failed => "FAILED",
            JobState::Canceled => "CANCELED",
        }
    }

    /// Whether the job has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Failed | JobState::Canceled
        )
    }
}

/// One vertex (chain of fused operators) of a job's physical plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexInfo {
    /// Vertex index in the physical plan.
    pub id: usize,
    /// Name (the chained operators' names).
    pub name: String,
    /// Subtasks.
    pub parallelism: usize,
    /// Whether its head is a source (sources receive checkpoint triggers).
    pub source: bool,
    /// Chained graph nodes: (graph index, name).
    pub nodes: Vec<(usize, String)>,
}

/// How a job checkpoints, as the coordinator needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointDescription {
    /// Checkpoint location (directory or `s3://` URL), as the job gave it
    /// (a relative directory is relative to the submitter's working
    /// directory).
    pub dir: String,
    /// Trigger interval, ms.
    pub interval_ms: u64,
    /// Timeout, ms.
    pub timeout_ms: u64,
    /// Minimum pause between checkpoints, ms.
    pub min_pause_ms: u64,
    /// Completed checkpoints kept.
    pub retained: usize,
    /// Aligned barriers (exactly-once) or not (at-least-once).
    pub exactly_once: bool,
    /// A checkpoint or savepoint to start from when `dir` holds none.
    pub restore_from: Option<String>,
}

/// The serialized plan of a job: what the binary builds with its
/// arguments, planned at the submitted parallelism.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDescription {
    /// Job name (also the name in checkpoint manifests).
    pub name: String,
    /// Default parallelism it was planned with.
    pub parallelism: usize,
    /// Key groups.
    pub max_parallelism: usize,
    /// Vertices in plan order.
    pub vertices: Vec<VertexInfo>,
    /// Number of graph nodes.
    pub graph_nodes: usize,
    /// Checkpointing, if the job checkpoints.
    pub checkpoint: Option<CheckpointDescription>,
}

impl JobDescription {
    /// Slots the job needs: subtask `i` of every vertex shares slot `i`.
    pub fn slots(&self) -> usize {
        self.vertices
            .iter()
            .map(|v| v.parallelism)
            .max()
            .unwrap_or(0)
    }
}

/// `POST /api/v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitJob {
    /// SHA-256 (hex) of the job binary, uploaded before.
    pub artifact: String,
    /// Arguments the binary runs with.
    pub args: Vec<String>,
    /// The parallelism asked for (`SLUICE_PARALLELISM` of the executors).
    pub parallelism: Option<usize>,
    /// Working directory of the executors (the submitter's, so relative
    /// paths in the arguments mean the same thing).
    pub workdir: Option<String>,
    /// The job's plan, from the binary in describe mode.
    pub description: JobDescription,
}

/// Answer to a submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    /// The new job's id.
    pub job_id: String,
}

/// Where a subtask runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Which subtask.
    pub task: TaskKey,
    /// Worker id.
    pub worker: String,
    /// Executor index within the attempt.
    pub executor: usize,
}

/// `GET /api/v1/jobs/{id}` (and one entry of `GET /api/v1/jobs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    /// Job id.
    pub id: String,
    /// Job name.
    pub name: String,
    /// State.
    pub state: JobState,
    /// Current attempt (fencing generation).
    pub attempt: u64,
    /// Restarts so far.
    pub restarts: u64,
    /// Binary and arguments.
    pub artifact: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Submission time, ms since the epoch.
    pub submitted_ms: i64,
    /// Last state change, ms since the epoch.
    pub updated_ms: i64,
    /// The last failure, if any.
    pub error: Option<String>,
    /// Latest completed checkpoint id.
    pub latest_checkpoint: Option<u64>,
    /// Messages from stale attempts refused (fencing).
    pub rejected_stale: u64,
    /// Placement of the current attempt's subtasks.
    pub placement: Vec<Placement>,
    /// Records in and out per graph node, summed over executors (latest report).
    pub nodes: Vec<NodeCounters>,
    /// The job's vertices (chains of graph nodes), as planned.
    #[serde(default)]
    pub vertices: Vec<VertexInfo>,
    /// Parallelism the job runs at (`SLUICE_PARALLELISM` of its executors).
    #[serde(default)]
    pub parallelism: usize,
    /// Working directory of its executors (the submitter's).
    #[serde(default)]
    pub workdir: Option<String>,
    /// The parallelism a rescale under way moves the job to.
    #[serde(default)]
    pub rescaling_to: Option<usize>,
}

/// Counters of one graph node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounters {
    /// Graph index.
    pub node: usize,
    /// Records in.
    pub records_in: u64,
    /// Records out.
    pub records_out: u64,
}

/// Rows of one sink, rendered as text: what an executor reports, and what
/// the coordinator keeps per sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkRows {
    /// The sink's graph node.
    pub node: usize,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, oldest first; a value as Arrow displays it (null is empty).
    pub rows: Vec<Vec<String>>,
}

/// `GET /api/v1/jobs/{id}/results`: the newest rows each sink received
/// (not necessarily committed yet).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResults {
    /// Job id.
    pub job_id: String,
    /// One entry per sink that received rows, in graph order.
    pub sinks: Vec<SinkResults>,
}

/// The newest rows of one sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkResults {
    /// Graph node.
    pub node: usize,
    /// Node name.
    pub name: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, oldest first.
    pub rows: Vec<Vec<String>>,
    /// When rows last arrived, ms since the epoch.
    pub updated_ms: i64,
}

/// `POST /api/v1/jobs/{id}/savepoint`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavepointRequest {
    /// Where the savepoint goes (directory or `s3://` URL).
    pub dir: String,
    /// Stop the job once it is taken.
    #[serde(default)]
    pub stop: bool,
}

/// `POST /api/v1/jobs/{id}/rescale`: stop the job with a savepoint and
/// run it on from there at another parallelism.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RescaleRequest {
    /// The new parallelism (`SLUICE_PARALLELISM` of the executors).
    pub parallelism: usize,
    /// The job's plan at that parallelism, from its binary in describe
    /// mode; the same operators as the running plan.
    pub description: JobDescription,
}

/// Answer to a rescale: the savepoint the job continues from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rescaled {
    /// Where the savepoint is.
    pub savepoint: String,
    /// The new parallelism.
    pub parallelism: usize,
}

/// Answer to a savepoint request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavepointTaken {
    /// Where it is.
    pub location: String,
}

/// `GET /api/v1/jobs/{id}/checkpoints`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoints {
    /// Job id.
    pub job_id: String,
    /// Where checkpoints go.
    pub dir: Option<String>,
    /// Latest completed checkpoint id.
    pub latest: Option<u64>,
    /// Counts and recent checkpoints.
    pub stats: CheckpointStats,
}

/// `POST /api/v1/workers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterWorker {
    /// Set when a worker registers again (after a coordinator restart).
    pub worker_id: Option<String>,
    /// Slots offered.
    pub slots: usize,
    /// Declared capacity (weight for the weighted scheduler), default 1.
    pub capacity: f64,
    /// Host its executors listen on for data exchange.
    pub host: String,
}

/// Answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    /// The worker's id.
    pub worker_id: String,
    /// How often to heartbeat, ms.
    pub heartbeat_interval_ms: u64,
}

/// What a worker reports of one executor process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorReport {
    /// Job id.
    pub job_id: String,
    /// Attempt.
    pub attempt: u64,
    /// Executor index.
    pub executor: usize,
    /// Process id.
    pub pid: u32,
    /// Exit code once the process ended (`None` while it runs; -1 for a signal).
    pub exit: Option<i32>,
}

/// `POST /api/v1/workers/{id}/heartbeat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Executors started by this worker and not yet reported as ended.
    pub executors: Vec<ExecutorReport>,
}

/// Answer to a heartbeat: every executor this worker must run now. The
/// worker starts those it does not run and kills those not listed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The executors wanted on this worker.
    pub executors: Vec<ExecutorLaunch>,
    /// Binaries of the jobs that have not ended: a worker fetches them
    /// ahead of need, so a restart placed on it does not wait for a download.
    #[serde(default)]
    pub prefetch: Vec<String>,
}

/// An executor process a worker must run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorLaunch {
    /// SHA-256 of the binary (`GET /api/v1/artifacts/{sha256}`).
    pub artifact: String,
    /// Arguments of the binary.
    pub args: Vec<String>,
    /// Working directory (falls back to the worker's data dir when missing).
    pub workdir: Option<String>,
    /// What the executor runs (written to a file named by `SLUICE_EXECUTOR`).
    pub spec: ExecutorSpec,
}

/// A task executor's assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorSpec {
    /// Job id.
    pub job_id: String,
    /// Attempt (fencing generation): the exchange and the coordinator refuse
    /// other attempts.
    pub attempt: u64,
    /// This executor's index in the attempt.
    pub executor: usize,
    /// Executors in the attempt.
    pub executors: usize,
    /// Coordinator's control address (`host:port`).
    pub control: String,
    /// The subtasks this executor runs.
    pub tasks: Vec<TaskKey>,
    /// Host the exchange listener binds (port chosen by the system).
    pub bind_host: String,
    /// Default parallelism (the submitted one).
    pub parallelism: usize,
    /// Checkpoint to restore (location of its directory), if any.
    pub restore: Option<String>,
    /// The attempt's secret: executors present it to the coordinator and
    /// to each other.
    #[serde(default)]
    pub secret: String,
}

/// One worker, as `GET /api/v1/workers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: String,
    /// Slots offered.
    pub slots: usize,
    /// Slots used by running jobs.
    pub used_slots: usize,
    /// Declared capacity.
    pub capacity: f64,
    /// Exchange host.
    pub host: String,
    /// Whether heartbeats arrive in time.
    pub alive: bool,
    /// Time since the last heartbeat, ms.
    pub since_heartbeat_ms: u64,
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Workers alive.
    pub workers_alive: usize,
    /// Slots on live workers.
    pub slots: usize,
    /// Slots in use.
    pub used_slots: usize,
    /// Jobs per state.
    pub jobs: Vec<(JobState, usize)>,
    /// Heartbeat timeout, ms.
    pub heartbeat_timeout_ms: u64,
    /// Control address executors dial.
    pub control: String,
}

/// Error body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}
