//! The coordinator's REST API: request and response bodies (JSON), and the
//! plan and assignment documents that travel inside them (job
//! descriptions, executor specs). The routes and the OpenAPI document that
//! describes them are the cluster crate's.

use serde::{Deserialize, Serialize};

pub use crate::autoscale::{
    AutoscaleDecision, AutoscalePending, AutoscaleRange, AutoscalerStatus, MAX_AUTOSCALE_DECISIONS,
};
use crate::ids::TaskKey;
use crate::stats::CheckpointStats;

/// The most key groups a job may have (Flink's bound too).
pub const MAX_KEY_GROUPS: usize = 32768;

/// Life cycle of a job. The coordinator's state machine
/// (`sluice-cluster`'s `coordinator::lifecycle`) lists the transitions.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Submitted, waiting for its first attempt (for slots).
    Created,
    /// An attempt is placed and starting: its executors launch and connect.
    Scheduling,
    /// Every executor of the current attempt runs.
    Running,
    /// Running, with a savepoint asked for through the API in flight.
    Savepointing,
    /// Stopping with a savepoint to run on at another parallelism.
    Rescaling,
    /// Every task consumed its input; the final checkpoint commits it.
    Finishing,
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
    /// Every state, in life-cycle order.
    pub const ALL: [JobState; 10] = [
        JobState::Created,
        JobState::Scheduling,
        JobState::Running,
        JobState::Savepointing,
        JobState::Rescaling,
        JobState::Finishing,
        JobState::Restarting,
        JobState::Finished,
        JobState::Failed,
        JobState::Canceled,
    ];

    /// The name the API uses (`RUNNING`, ...).
    pub fn name(self) -> &'static str {
        match self {
            JobState::Created => "CREATED",
            JobState::Scheduling => "SCHEDULING",
            JobState::Running => "RUNNING",
            JobState::Savepointing => "SAVEPOINTING",
            JobState::Rescaling => "RESCALING",
            JobState::Finishing => "FINISHING",
            JobState::Restarting => "RESTARTING",
            JobState::Finished => "FINISHED",
            JobState::Failed => "FAILED",
            JobState::Canceled => "CANCELED",
        }
    }

    /// Whether an attempt of the job runs (its executors are up).
    pub fn is_running(self) -> bool {
        matches!(
            self,
            JobState::Running | JobState::Savepointing | JobState::Rescaling | JobState::Finishing
        )
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// The vertices feeding it, and how (a plan of a binary that does not
    /// say leaves this empty).
    #[serde(default)]
    pub inputs: Vec<VertexInput>,
}

/// An edge of the physical plan, as its downstream vertex sees it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexInput {
    /// The upstream vertex.
    pub vertex: usize,
    /// How records are routed: `forward`, `hash`, `rebalance`,
    /// `broadcast` or `load-aware`.
    pub partitioning: String,
}

/// How a job checkpoints, as the coordinator needs it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Unaligned checkpoints (exactly-once, barriers overtake in-flight
    /// records, which are stored with the checkpoint).
    #[serde(default)]
    pub unaligned: bool,
    /// A checkpoint or savepoint to start from when `dir` holds none.
    pub restore_from: Option<String>,
}

/// The serialized plan of a job: what the binary builds with its
/// arguments, planned at the submitted parallelism.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDescription {
    /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) of the binary that
    /// described the job; a coordinator of another version refuses it.
    pub protocol: u32,
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
    /// Operator id of every graph node, by index (what checkpoint
    /// manifests record so restore can match state by id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uids: Vec<String>,
    /// Checkpointing, if the job checkpoints.
    pub checkpoint: Option<CheckpointDescription>,
    /// What follows a failed attempt (the job's restart strategy; only a
    /// job that checkpoints can restart).
    pub restart: RestartPolicy,
}

/// What the coordinator does when an attempt fails: the job's own restart
/// strategy, so a job restarts the same way embedded and on a cluster.
/// Deterministic failures (bad records under the fail policy, plan errors)
/// never restart, whatever the policy.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Fail the job at the first failure.
    None,
    /// Restart after a fixed delay, at most `attempts` times.
    FixedDelay {
        /// Restarts allowed.
        attempts: u32,
        /// Wait before each restart, ms.
        delay_ms: u64,
    },
    /// Restart with a delay doubling from `initial_ms` up to `max_ms`, at
    /// most `attempts` times.
    ExponentialBackoff {
        /// Restarts allowed.
        attempts: u32,
        /// First delay, ms.
        initial_ms: u64,
        /// Largest delay, ms.
        max_ms: u64,
    },
}

impl RestartPolicy {
    /// The delay before restart number `restarts + 1`, in ms, or `None` to
    /// give up.
    pub fn delay_ms(&self, restarts: u64) -> Option<u64> {
        match *self {
            RestartPolicy::None => None,
            RestartPolicy::FixedDelay { attempts, delay_ms } => {
                (restarts < u64::from(attempts)).then_some(delay_ms)
            }
            RestartPolicy::ExponentialBackoff {
                attempts,
                initial_ms,
                max_ms,
            } => (restarts < u64::from(attempts)).then(|| {
                initial_ms
                    .saturating_mul(1u64 << restarts.min(20))
                    .min(max_ms)
            }),
        }
    }

    /// Restarts allowed.
    pub fn attempts(&self) -> u32 {
        match *self {
            RestartPolicy::None => 0,
            RestartPolicy::FixedDelay { attempts, .. }
            | RestartPolicy::ExponentialBackoff { attempts, .. } => attempts,
        }
    }
}

impl JobDescription {
    /// The name of graph node `node`.
    pub fn node_name(&self, node: usize) -> Option<&str> {
        self.vertices
            .iter()
            .flat_map(|v| &v.nodes)
            .find(|(n, _)| *n == node)
            .map(|(_, name)| name.as_str())
    }

    /// Every subtask of the plan, vertex by vertex.
    pub fn tasks(&self) -> Vec<TaskKey> {
        self.vertices
            .iter()
            .flat_map(|v| {
                (0..v.parallelism).map(move |s| TaskKey {
                    vertex: v.id,
                    subtask: s,
                })
            })
            .collect()
    }

    /// Refuses a description no job binary of this release writes: no
    /// vertices, a parallelism of 0 or above the key groups, no key groups,
    /// operators outside the graph, checkpoint intervals or timeouts of 0.
    pub fn check(&self) -> Result<(), crate::Error> {
        let bad = |why: String| Err(crate::Error::Malformed(format!("job description: {why}")));
        if self.vertices.is_empty() {
            return bad("the plan has no vertices".into());
        }
        if self.max_parallelism == 0 || self.max_parallelism > MAX_KEY_GROUPS {
            return bad(format!(
                "max_parallelism must be between 1 and {MAX_KEY_GROUPS}, not {}",
                self.max_parallelism
            ));
        }
        if self.parallelism == 0 {
            return bad("parallelism must be at least 1".into());
        }
        for v in &self.vertices {
            if v.parallelism == 0 || v.parallelism > self.max_parallelism {
                return bad(format!(
                    "vertex '{}' has parallelism {}; it must be between 1 and max_parallelism ({})",
                    v.name, v.parallelism, self.max_parallelism
                ));
            }
            if v.nodes.is_empty() || v.nodes.iter().any(|(n, _)| *n >= self.graph_nodes) {
                return bad(format!(
                    "vertex '{}' names operators outside the job's {} graph nodes",
                    v.name, self.graph_nodes
                ));
            }
        }
        if let Some(c) = &self.checkpoint {
            if c.interval_ms == 0 || c.timeout_ms == 0 {
                return bad(format!(
                    "the checkpoint interval ({} ms) and timeout ({} ms) must be above 0",
                    c.interval_ms, c.timeout_ms
                ));
            }
            if c.retained == 0 {
                return bad("at least one completed checkpoint must be retained".into());
            }
            if c.dir.trim().is_empty() {
                return bad("the checkpoint location is empty".into());
            }
        }
        Ok(())
    }

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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitJob {
    /// SHA-256 (hex) of the job binary, uploaded before.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
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
    /// Let the coordinator's autoscaler choose the job's parallelism
    /// within this range (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleRange>,
}

/// Answer to a submission.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    /// The new job's id.
    pub job_id: String,
}

/// Where a subtask runs.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// What follows a failed attempt (the job's own restart strategy).
    pub restart: RestartPolicy,
    /// The job's failures, oldest first (the newest
    /// [`MAX_EXCEPTIONS`] are kept): attempt and start failures alike.
    #[serde(default)]
    pub exceptions: Vec<JobException>,
    /// The autoscaler of a job submitted with `autoscale`: its range and
    /// the rescales it decided, with their reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// How many failures a job's history keeps.
pub const MAX_EXCEPTIONS: usize = 32;

/// One failure of a job: when, which attempt, what, and what followed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobException {
    /// When the coordinator learnt of it, ms since the epoch.
    pub time_ms: i64,
    /// The attempt that failed.
    pub attempt: u64,
    /// The cause, as the executor or the coordinator said it (names the
    /// subtask when a task failed).
    pub error: String,
    /// What followed: `restart` (with the job's restart policy's delay),
    /// `failed` (the job failed for good).
    pub outcome: String,
}

/// Counters of one graph node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResults {
    /// Job id.
    pub job_id: String,
    /// One entry per sink that received rows, in graph order.
    pub sinks: Vec<SinkResults>,
}

/// The newest rows of one sink.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavepointRequest {
    /// Where the savepoint goes (directory or `s3://` URL).
    pub dir: String,
    /// Stop the job once it is taken.
    #[serde(default)]
    pub stop: bool,
}

/// `POST /api/v1/coordinators`: a coordinator to add to the Raft group
/// as a voter. It must be running with `--join` (or be a member already)
/// and reachable at `url`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddCoordinator {
    /// Its node id, unused in the group so far.
    pub id: u64,
    /// Its API URL (`http://host:port` or `https://host:port`).
    pub url: String,
}

/// One coordinator of the Raft group.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorMember {
    /// Node id.
    pub id: u64,
    /// API URL.
    pub url: String,
    /// A voter (counts for majorities), or a learner being brought up to
    /// date before it becomes one.
    pub voter: bool,
}

/// `GET /api/v1/coordinators`: the Raft group as its leader knows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coordinators {
    /// The leader's node id.
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
    /// Every member, by id.
    pub members: Vec<CoordinatorMember>,
}

/// `POST /api/v1/jobs/{id}/rescale`: stop the job with a savepoint and
/// run it on from there at another parallelism.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RescaleRequest {
    /// The new parallelism (`SLUICE_PARALLELISM` of the executors).
    pub parallelism: usize,
    /// The job's plan at that parallelism, from its binary in describe
    /// mode; the same operators as the running plan.
    pub description: JobDescription,
}

/// Answer to a rescale: the savepoint the job continues from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rescaled {
    /// Where the savepoint is.
    pub savepoint: String,
    /// The new parallelism.
    pub parallelism: usize,
}

/// Answer to a savepoint request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavepointTaken {
    /// Where it is.
    pub location: String,
}

/// `GET /api/v1/jobs/{id}/checkpoints`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    /// The worker's id.
    pub worker_id: String,
    /// How often to heartbeat, ms.
    pub heartbeat_interval_ms: u64,
    /// The Raft term of the coordinator that answered (see
    /// [`HeartbeatReply::term`]).
    pub term: u64,
}

/// What a worker reports of one executor process.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Executors started by this worker and not yet reported as ended.
    pub executors: Vec<ExecutorReport>,
    /// New lines of its executors' logs, at most
    /// [`HEARTBEAT_LOG_BYTES`](crate::logs::HEARTBEAT_LOG_BYTES) of text.
    #[serde(default)]
    pub logs: Vec<crate::logs::LogChunk>,
    /// The worker service's own process: CPU time and resident memory
    /// (its executors report theirs).
    #[serde(default)]
    pub process: Option<crate::metrics::ProcessMetrics>,
}

/// Answer to a heartbeat: every executor this worker must run now. The
/// worker starts those it does not run and kills those not listed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The executors wanted on this worker.
    pub executors: Vec<ExecutorLaunch>,
    /// Binaries of the jobs that have not ended: a worker fetches them
    /// ahead of need, so a restart placed on it does not wait for a download.
    #[serde(default)]
    pub prefetch: Vec<String>,
    /// The Raft term the answering coordinator leads in. A worker that has
    /// seen a newer term refuses the answer (it is a deposed leader's) and
    /// turns to another coordinator.
    pub term: u64,
}

/// An executor process a worker must run.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorLaunch {
    /// SHA-256 of the binary (`GET /api/v1/artifacts/{sha256}`).
    pub artifact: String,
    /// Arguments of the binary.
    pub args: Vec<String>,
    /// Working directory (falls back to the executor's own directory when
    /// the worker has none such).
    pub workdir: Option<String>,
    /// What the executor runs (written to its stdin, `SLUICE_EXECUTOR=-`).
    pub spec: ExecutorSpec,
}

/// A task executor's assignment.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorSpec {
    /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) of the coordinator
    /// that wrote it; an executor of another version refuses it.
    pub protocol: u32,
    /// Job id.
    pub job_id: String,
    /// Attempt (fencing generation): the exchange and the coordinator refuse
    /// other attempts.
    pub attempt: u64,
    /// The Raft term of the leader that started the attempt: workers that
    /// have seen a newer term do not start it, and the executor refuses a
    /// control server of another term.
    pub term: u64,
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
    pub secret: String,
    /// The attempt's TLS identity, for the control connection and the
    /// exchange; `None`: plaintext (a coordinator started with
    /// `--insecure-plaintext`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<AttemptTls>,
    /// How long, in ms, the executor waits for a new leader after its
    /// control connection is lost (its worker relays the new leader's
    /// control address on its stdin, a [`Relay`](crate::control::Relay)
    /// per line) before it fences itself; 0: it fences at once.
    #[serde(default)]
    pub rejoin_grace_ms: u64,
}

/// An attempt's TLS identity: a certificate the cluster CA issued for this
/// attempt alone (it names `sluice://attempt/JOB/ATTEMPT`), its key, and
/// the CA to check peers against. Secret, as the attempt's secret is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptTls {
    /// The cluster CA's certificate (PEM).
    pub ca: String,
    /// The attempt's certificate (PEM).
    pub cert: String,
    /// The attempt's private key (PEM).
    pub key: String,
}

impl std::fmt::Debug for AttemptTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("AttemptTls").finish_non_exhaustive()
    }
}

/// One worker, as `GET /api/v1/workers` shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// The worker service's own process (not its executors'), as its
    /// last heartbeat said.
    #[serde(default)]
    pub process: Option<crate::metrics::ProcessMetrics>,
}

/// `GET /api/v1/cluster`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Workers alive.
    pub workers_alive: usize,
    /// Slots on live workers.
    pub slots: usize,
    /// Slots in use.
    pub used_slots: usize,
    /// Jobs per state (states without jobs are left out), in life-cycle
    /// order.
    pub jobs: std::collections::BTreeMap<JobState, usize>,
    /// Heartbeat timeout, ms.
    pub heartbeat_timeout_ms: u64,
    /// Control address executors dial.
    pub control: String,
}

/// Error body of every failed request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}
