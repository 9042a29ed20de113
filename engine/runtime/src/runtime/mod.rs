//! Running a physical plan. [`task`] holds the subtask loops (source loop,
//! input loop over a crossbeam `Select`, the operator chain); [`watermark`]
//! holds watermark generation and combination; [`wiring`] creates the
//! channels between subtasks (local, or ends of network channels) and
//! starts one OS thread per subtask (operator work never runs on an async
//! reactor). This module propagates the first failure to every task,
//! and, when the job checkpoints, starts the checkpoint coordinator and
//! writer beside the tasks and restarts a failed job from its latest
//! checkpoint under the restart strategy. [`JobHandle`] is the running
//! job: savepoints, stop, cancel, join.

pub mod align;
mod driver;
pub mod task;
#[cfg(feature = "ui")]
mod ui;
pub mod watermark;
pub mod wiring;

use driver::Driver;

pub use wiring::{plan_channels, PlanChannel};
pub(crate) use wiring::{spawn_tasks, task_meters, wire, NoRemote, RemoteEnds, TaskContext};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, Sender};
use tracing::{info, warn};

use crate::checkpoint::coordinator::{
    run_writer, CheckpointDirs, CompletionHook, Coordinator, CoordinatorMsg, NodeInfo,
    SavepointRequest, TaskControl, TaskKey, TaskPort, TaskSnapshot,
};
use crate::checkpoint::restore::RestorePlan;
use crate::checkpoint::restore::StartPoint;
use crate::checkpoint::store::has_manifest;
use crate::checkpoint::{CheckpointConfig, CheckpointStats, RestartStrategy};
use crate::checkpoint::{Location, Storage};
use crate::graph::NodeKind;
use sluice_protocol::api::NodeCounters;
use sluice_protocol::metrics::SubtaskMetrics;

use crate::data::StreamMessage;
use crate::error::{Error, Result, Retry};
use crate::graph::LogicalGraph;
use crate::plan::{plan, PhysicalPlan};
use crate::state::key_group::DEFAULT_MAX_PARALLELISM;

/// How a job runs.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Job name, for logs.
    pub name: String,
    /// Default parallelism of every node.
    pub parallelism: usize,
    /// Number of key groups.
    pub max_parallelism: usize,
    /// Capacity of each channel, in messages (batches): bounds memory.
    pub channel_capacity: usize,
    /// Fuse forward edges into chains.
    pub chaining: bool,
    /// Checkpointing, off by default.
    pub checkpoint: Option<CheckpointConfig>,
    /// What happens when a task fails (only with checkpointing: a job
    /// without checkpoints has nothing to resume from).
    pub restart: RestartStrategy,
    /// Where keyed state lives.
    pub state: crate::state::StateSettings,
    /// Serve the web UI and the job API of an embedded run on this
    /// address (`SLUICE_UI`); none by default.
    pub ui: Option<std::net::SocketAddr>,
}

impl JobConfig {
    /// Checks that this build has the parts the configuration asks for —
    /// RocksDB state (feature `rocksdb`), `s3://` checkpoint locations
    /// (`s3`), the web UI (`ui`) — so a job built without one fails with a
    /// configuration error naming the feature before anything runs.
    /// [`Env::execute`](crate::Env::execute) and
    /// [`Env::start`](crate::Env::start) call it.
    pub fn check_features(&self) -> Result<()> {
        self.state.backend.check_available()?;
        if let Some(ck) = &self.checkpoint {
            ck.dir.check_available()?;
            if let Some(from) = &ck.restore_from {
                from.check_available()?;
            }
        }
        match self.ui {
            Some(addr) if !cfg!(feature = "ui") => Err(Error::Config(format!(
                "the web UI was asked for on {addr}, but this job was built without \
                 sluice-engine's `ui` feature; enable it (it is on by default) or unset {}",
                crate::dsl::UI_ENV
            ))),
            _ => Ok(()),
        }
    }
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            name: "sluice-job".into(),
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            channel_capacity: 8,
            chaining: true,
            checkpoint: None,
            restart: RestartStrategy::default(),
            state: crate::state::StateSettings::default(),
            ui: None,
        }
    }
}

/// How long an embedded job's web UI outlives the job.
#[cfg(feature = "ui")]
const UI_LINGER: Duration = Duration::from_millis(2500);

/// Rows a sink keeps of the latest batch it received, for the results
/// the coordinator shows.
pub use sluice_protocol::results::TAIL_ROWS;

/// Per-node counters, shared by the node's subtasks.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// Records received.
    pub records_in: AtomicU64,
    /// Records emitted on the main output.
    pub records_out: AtomicU64,
    /// A sink's last rows not yet taken by a reporter (at most
    /// [`TAIL_ROWS`]; a slice, so keeping it copies nothing).
    tail: Mutex<Option<RecordBatch>>,
}

impl NodeMetrics {
    /// Keeps the last rows of `batch` as the node's latest rows.
    pub(crate) fn keep_tail(&self, batch: &RecordBatch) {
        let n = batch.num_rows();
        if n == 0 {
            return;
        }
        let keep = n.min(TAIL_ROWS);
        let tail = batch.slice(n - keep, keep);
        *self.tail.lock().unwrap_or_else(|p| p.into_inner()) = Some(tail);
    }

    /// The latest rows kept since the last call, if any.
    pub fn take_tail(&self) -> Option<RecordBatch> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Final counters of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    /// Node name.
    pub name: String,
    /// Records received over all subtasks.
    pub records_in: u64,
    /// Records emitted over all subtasks.
    pub records_out: u64,
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// Wall time from start to the last subtask finishing.
    pub duration: Duration,
    /// Counters per node, in graph order.
    pub nodes: Vec<NodeSummary>,
    /// The physical plan that ran.
    pub plan: PhysicalPlan,
    /// Checkpoint metrics (all zero without checkpointing).
    pub checkpoints: CheckpointStats,
    /// Whether the job stopped with a savepoint instead of finishing its input.
    pub stopped: bool,
    /// In executor mode, which executor of the job this process was: its
    /// counters are its own subtasks' and its checkpoint figures those its
    /// tasks were told of (no restarts, no per-checkpoint figures), not the
    /// job's. `None` for an embedded run, which ran the whole job.
    pub executor: Option<ExecutorShare>,
}

/// Which executor of a job an executor-mode run was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorShare {
    /// Its index, from 0.
    pub index: usize,
    /// The job's executor count.
    pub of: usize,
}

impl JobResult {
    /// Counters of the node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSummary> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Records emitted by all sources.
    pub fn source_records(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.records_in == 0)
            .map(|n| n.records_out)
            .sum()
    }
}

/// Shared failure state of a running attempt: the first error wins, and
/// every task stops when `cancelled` is set.
#[derive(Debug, Default)]
pub struct JobControl {
    /// Set when the job must stop.
    pub cancelled: Arc<AtomicBool>,
    stopped: AtomicBool,
    first_error: Mutex<Option<Error>>,
    on_first_error: std::sync::OnceLock<ErrorHook>,
}

/// Told the first error before anything is cancelled.
pub(crate) struct ErrorHook(pub Box<dyn Fn(&Error) + Send + Sync>);

impl std::fmt::Debug for ErrorHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErrorHook")
    }
}

impl JobControl {
    /// Records a failure and cancels the job; secondary `Cancelled` errors
    /// caused by the first failure are not recorded.
    pub fn fail(&self, error: Error) {
        let mut first = self.first_error.lock().expect("job control lock poisoned");
        if first.is_none() && !matches!(error.root(), Error::Cancelled) {
            // Before the cancellation spreads: a task executor reports the
            // cause before its peers see their connections close and
            // report those instead.
            if let Some(hook) = self.on_first_error.get() {
                (hook.0)(&error);
            }
            *first = Some(error);
        }
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Calls `hook` with the first error, ahead of cancelling (once set,
    /// it stays).
    pub(crate) fn on_first_error(&self, hook: ErrorHook) {
        let _ = self.on_first_error.set(hook);
    }

    /// Whether the job is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Marks the job as stopping after a stop-with-savepoint.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Whether a stop-with-savepoint completed.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Takes the first error recorded (once).
    pub fn take_error(&self) -> Option<Error> {
        self.first_error
            .lock()
            .expect("job control lock poisoned")
            .take()
    }
}

/// An input channel of a subtask and the logical input it feeds.
pub(crate) type InputChannel = (Receiver<StreamMessage>, usize);

/// What the handle (and the embedded web UI) can reach of the attempt
/// that is running, and how the job ended.
#[derive(Default)]
pub(crate) struct Current {
    control: Option<Arc<JobControl>>,
    coordinator: Option<Sender<CoordinatorMsg>>,
    /// The running attempt's number and counters.
    pub(crate) attempt: u64,
    pub(crate) metrics: Vec<Arc<NodeMetrics>>,
    /// The running attempt's subtask meters.
    pub(crate) meters: Vec<Arc<crate::metrics::TaskMeter>>,
    /// Why the last attempt failed, while the next one is waited for.
    pub(crate) restarting: Option<String>,
    /// Set once the job ended: cleanly (`None`) or with an error.
    pub(crate) ended: Option<Option<String>>,
}

/// A job running in this process.
pub struct JobHandle {
    thread: JoinHandle<Result<JobResult>>,
    current: Arc<Mutex<Current>>,
    user_cancel: Arc<AtomicBool>,
    stats: Arc<Mutex<CheckpointStats>>,
    /// A task executor of a distributed job: its savepoints are the
    /// coordinator's.
    executor: bool,
    /// Rates of [`JobHandle::task_metrics`] between calls.
    sampler: crate::metrics::Sampler,
}

impl JobHandle {
    /// Takes a savepoint into `dir` (a directory or an S3 URL) and
    /// returns its location when complete.
    pub fn savepoint(&self, dir: impl Into<Location>) -> Result<Location> {
        self.request_savepoint(dir.into(), false)
    }

    /// Takes a savepoint into `dir`, commits it and stops the job (whose
    /// [`JobHandle::join`] then reports `stopped`).
    pub fn stop_with_savepoint(&self, dir: impl Into<Location>) -> Result<Location> {
        self.request_savepoint(dir.into(), true)
    }

    fn request_savepoint(&self, dir: Location, stop: bool) -> Result<Location> {
        if self.executor {
            return Err(Error::Config(
                "a task executor takes no savepoints: ask the coordinator".into(),
            ));
        }
        request_savepoint(&self.current, dir, stop)
    }

    /// Cancels the job.
    pub fn cancel(&self) {
        cancel(&self.user_cancel, &self.current);
    }

    /// Checkpoint metrics so far.
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// The running attempt's figures per subtask: busy, idle and
    /// backpressured time (per second since the previous call, at least a
    /// second back, and in total), records and bytes in and out, the input
    /// watermark and the source's backlog per split: what the web UI and a
    /// cluster show. Empty before the first attempt starts and for a task
    /// executor's handle (its coordinator has them).
    pub fn task_metrics(&self) -> Vec<SubtaskMetrics> {
        let meters = self.current.lock().expect("job handle lock").meters.clone();
        self.sampler.sample(&meters)
    }

    /// Whether the job has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// A handle on a task executor `run` runs in its own thread; `run`
    /// gets the flag [`JobHandle::cancel`] sets. It has no savepoints.
    pub(crate) fn spawn(
        run: impl FnOnce(Arc<AtomicBool>) -> Result<JobResult> + Send + 'static,
    ) -> Result<JobHandle> {
        let user_cancel = Arc::new(AtomicBool::new(false));
        let cancel = user_cancel.clone();
        let thread = std::thread::Builder::new()
            .name("job-driver".into())
            .spawn(move || run(cancel))
            .map_err(|e| Error::io("spawning the job driver", e))?;
        Ok(JobHandle {
            thread,
            current: Arc::default(),
            user_cancel,
            stats: Arc::default(),
            executor: true,
            sampler: Default::default(),
        })
    }

    /// Waits for the job to end.
    pub fn join(self) -> Result<JobResult> {
        self.thread
            .join()
            .unwrap_or_else(|p| Err(Error::Panic(panic_message(p))))
    }
}

/// Asks the running attempt's checkpoint coordinator for a savepoint into
/// `dir` and waits for it.
pub(crate) fn request_savepoint(
    current: &Mutex<Current>,
    dir: Location,
    stop: bool,
) -> Result<Location> {
    let dir = Storage::open(&dir)?;
    if has_manifest(&dir)? {
        return Err(Error::Checkpoint(format!(
            "{} already holds a savepoint",
            dir.location()
        )));
    }
    let tx = current
        .lock()
        .expect("job handle lock")
        .coordinator
        .clone()
        .ok_or_else(|| {
            Error::Config("savepoints need checkpointing (a checkpoint directory)".into())
        })?;
    let (reply, rx) = crossbeam_channel::bounded(1);
    tx.send(CoordinatorMsg::Savepoint(SavepointRequest {
        dir,
        stop,
        reply,
    }))
    .map_err(|_| Error::Checkpoint("the job is not running".into()))?;
    rx.recv()
        .map_err(|_| Error::Checkpoint("the job ended before the savepoint completed".into()))?
}

/// Cancels the job: no restart follows, and the running attempt stops.
pub(crate) fn cancel(user_cancel: &AtomicBool, current: &Mutex<Current>) {
    user_cancel.store(true, Ordering::SeqCst);
    if let Some(c) = &current.lock().expect("job handle lock").control {
        c.fail(Error::Cancelled);
    }
}

/// Plans and runs `graph` in this process, one thread per subtask.
pub fn run_embedded(graph: &LogicalGraph, config: &JobConfig) -> Result<JobResult> {
    start_embedded(graph, config)?.join()
}

/// Plans `graph` and starts it in this process; returns at once.
pub fn start_embedded(graph: &LogicalGraph, config: &JobConfig) -> Result<JobHandle> {
    let plan = plan(
        graph,
        config.parallelism,
        config.max_parallelism,
        config.chaining,
    )?;
    let current = Arc::new(Mutex::new(Current::default()));
    let user_cancel = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(CheckpointStats::default()));
    #[cfg(feature = "ui")]
    let (ui, on_complete) = match config.ui {
        Some(addr) => {
            let view = ui::EmbeddedView::new(
                graph,
                &plan,
                config,
                current.clone(),
                user_cancel.clone(),
                stats.clone(),
            );
            let hook = view.completion_hook();
            (Some(view.serve(addr)?), Some(hook))
        }
        None => (None, None),
    };
    #[cfg(not(feature = "ui"))]
    let on_complete = {
        config.check_features()?;
        None
    };
    let (graph, config) = (graph.clone(), config.clone());
    let driver = Driver {
        graph,
        config,
        plan,
        current: current.clone(),
        user_cancel: user_cancel.clone(),
        stats: stats.clone(),
        on_complete,
    };
    let ended = current.clone();
    let thread = std::thread::Builder::new()
        .name("job-driver".into())
        .spawn(move || {
            let result = driver.run();
            ended.lock().expect("job handle lock").ended =
                Some(result.as_ref().err().map(|e| e.to_string()));
            #[cfg(feature = "ui")]
            if let Some(ui) = ui {
                // Pages watching the job poll once a second: let them see
                // how it ended before the process (and its UI) goes.
                std::thread::sleep(UI_LINGER);
                drop(ui);
            }
            result
        })
        .map_err(|e| Error::io("spawning the job driver", e))?;
    Ok(JobHandle {
        thread,
        current,
        user_cancel,
        stats,
        executor: false,
        sampler: Default::default(),
    })
}

/// Counters of every graph node, shared by its subtasks.
pub(crate) fn node_metrics(graph: &LogicalGraph) -> Vec<Arc<NodeMetrics>> {
    graph.nodes.iter().map(|_| Arc::default()).collect()
}

/// The counters as the API reports them, by graph node.
pub(crate) fn counters(metrics: &[Arc<NodeMetrics>]) -> Vec<NodeCounters> {
    metrics
        .iter()
        .enumerate()
        .map(|(node, m)| NodeCounters {
            node,
            records_in: m.records_in.load(Ordering::Relaxed),
            records_out: m.records_out.load(Ordering::Relaxed),
        })
        .collect()
}

/// The counters as a job result reports them.
pub(crate) fn summaries(graph: &LogicalGraph, metrics: &[Arc<NodeMetrics>]) -> Vec<NodeSummary> {
    graph
        .nodes
        .iter()
        .map(|n| NodeSummary {
            name: n.name.clone(),
            records_in: metrics[n.id.0].records_in.load(Ordering::Relaxed),
            records_out: metrics[n.id.0].records_out.load(Ordering::Relaxed),
        })
        .collect()
}

/// State settings of one run: its databases live in their own directory,
/// removed when the returned guard drops.
pub(crate) fn run_state(
    config: &JobConfig,
    attempt: u64,
) -> (crate::state::StateSettings, LocalDir) {
    let mut state = config.state.clone();
    static RUNS: AtomicU64 = AtomicU64::new(0);
    state.local_dir = state.local_dir.join(format!(
        "{}-{}-{}-a{}",
        config
            .name
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed),
        attempt
    ));
    let dir = LocalDir(state.local_dir.clone());
    (state, dir)
}

/// Every graph node as a manifest records it, in graph order.
pub(crate) fn node_infos(graph: &LogicalGraph, plan: &PhysicalPlan) -> Vec<NodeInfo> {
    let uids = graph.uids();
    let mut nodes: Vec<NodeInfo> = Vec::new();
    for v in &plan.vertices {
        for n in &v.chain {
            nodes.push(NodeInfo {
                node: n.0,
                name: graph.node(*n).name.clone(),
                uid: uids[n.0].clone(),
                parallelism: v.parallelism,
            });
        }
    }
    nodes.sort_by_key(|n| n.node);
    nodes
}

/// A task's control channel, as the coordinator holds it: the key, the
/// sender and whether the task's head is a source.
pub(crate) type ControlPort = (TaskKey, Sender<TaskControl>, bool);

/// Control channels and checkpoint settings of the tasks `local` selects.
pub(crate) fn checkpoint_channels(
    graph: &LogicalGraph,
    plan: &PhysicalPlan,
    local: &dyn Fn(TaskKey) -> bool,
    writer: &Sender<TaskSnapshot>,
    coordinator: &Sender<CoordinatorMsg>,
    config: &CheckpointConfig,
    restore: Option<Arc<RestorePlan>>,
) -> (Vec<ControlPort>, HashMap<TaskKey, task::TaskCheckpointing>) {
    let mut ports = Vec::new();
    let mut task_ck = HashMap::new();
    for key in plan.tasks().filter(|k| local(*k)) {
        let head = plan.vertices[key.vertex].chain[0];
        let is_source = matches!(graph.node(head).kind, NodeKind::Source { .. });
        let (tx, rx) = crossbeam_channel::unbounded();
        ports.push((key, tx, is_source));
        task_ck.insert(
            key,
            task::TaskCheckpointing {
                key,
                control: rx,
                writer: writer.clone(),
                coordinator: coordinator.clone(),
                guarantee: config.guarantee,
                unaligned: config.unaligned,
                restore: restore.clone(),
            },
        );
    }
    (ports, task_ck)
}

/// Starts the snapshot writer thread.
pub(crate) fn spawn_writer(
    rx: Receiver<TaskSnapshot>,
    dirs: CheckpointDirs,
    coordinator: Sender<CoordinatorMsg>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("checkpoint-writer".into())
        .spawn(move || run_writer(rx, dirs, coordinator))
        .map_err(|e| Error::io("spawning the checkpoint writer", e))
}

/// Removes a run's local state directory when the run ends.
pub(crate) struct LocalDir(PathBuf);

impl Drop for LocalDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
