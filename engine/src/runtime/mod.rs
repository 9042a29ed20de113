//! Running a physical plan. [`task`] holds the subtask loops (source loop,
//! input loop over a crossbeam `Select`, the operator chain); [`watermark`]
//! holds watermark generation and combination. This module wires channels
//! between subtasks, starts one OS thread per subtask (operator work never
//! runs on an async reactor), propagates the first failure to every task and
//! returns it.

pub mod align;
pub mod task;
pub mod watermark;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tracing::{debug, info};

use crate::data::StreamMessage;
use crate::error::{Error, Result};
use crate::exchange::local::channel;
use crate::exchange::partition::{targets, EdgeWriter};
use crate::exchange::ChannelSender;
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
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            name: "sluice-job".into(),
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            channel_capacity: 8,
            chaining: true,
        }
    }
}

/// Per-node counters, shared by the node's subtasks.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// Records received.
    pub records_in: AtomicU64,
    /// Records emitted on the main output.
    pub records_out: AtomicU64,
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

/// Shared failure state of a running job: the first error wins, and every
/// task stops when `cancelled` is set.
#[derive(Debug, Default)]
pub struct JobControl {
    /// Set when the job must stop.
    pub cancelled: Arc<AtomicBool>,
    first_error: Mutex<Option<Error>>,
}

impl JobControl {
    /// Records a failure and cancels the job; secondary `Cancelled` errors
    /// caused by the first failure are not recorded.
    pub fn fail(&self, error: Error) {
        let mut first = self.first_error.lock().expect("job control lock poisoned");
        if first.is_none() && !matches!(error.root(), Error::Cancelled) {
            *first = Some(error);
        }
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether the job is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn take_error(&self) -> Option<Error> {
        self.first_error
            .lock()
            .expect("job control lock poisoned")
            .take()
    }
}

/// An input channel of a subtask and the logical input it feeds.
type InputChannel = (Receiver<StreamMessage>, usize);

/// Plans and runs `graph` in this process, one thread per subtask.
pub fn run_embedded(graph: &LogicalGraph, config: &JobConfig) -> Result<JobResult> {
    let plan = plan(
        graph,
        config.parallelism,
        config.max_parallelism,
        config.chaining,
    )?;
    info!(job = %config.name, "starting embedded job\n{}", plan.describe());
    let control = Arc::new(JobControl::default());
    let metrics: Vec<Arc<NodeMetrics>> = graph.nodes.iter().map(|_| Arc::default()).collect();

    // Channels: for each edge and upstream subtask, one channel per target.
    let mut inputs: HashMap<(usize, usize), Vec<InputChannel>> = HashMap::new();
    let mut writers: HashMap<(usize, usize, usize), Vec<(usize, EdgeWriter)>> = HashMap::new();
    for e in &plan.edges {
        let up = &plan.vertices[e.from_vertex];
        let down = &plan.vertices[e.to_vertex];
        for u in 0..up.parallelism {
            let mut senders: Vec<Box<dyn ChannelSender>> = Vec::new();
            for t in targets(&e.kind, u, down.parallelism) {
                let (tx, rx) = channel(config.channel_capacity, control.cancelled.clone());
                senders.push(Box::new(tx));
                inputs
                    .entry((e.to_vertex, t))
                    .or_default()
                    .push((rx, e.input));
            }
            let w = EdgeWriter::new(e.kind.clone(), senders, plan.max_parallelism, u);
            writers
                .entry((e.from_vertex, u, e.from_member))
                .or_default()
                .push((e.port, w));
        }
    }

    let start = Instant::now();
    let mut handles = Vec::new();
    for v in &plan.vertices {
        for s in 0..v.parallelism {
            let member_writers: Vec<Vec<(usize, EdgeWriter)>> = (0..v.chain.len())
                .map(|m| writers.remove(&(v.id, s, m)).unwrap_or_default())
                .collect();
            let task = task::TaskSpec {
                graph: graph.clone(),
                vertex: v.clone(),
                subtask: s,
                max_parallelism: plan.max_parallelism,
                inputs: inputs.remove(&(v.id, s)).unwrap_or_default(),
                writers: member_writers,
                metrics: v.chain.iter().map(|n| metrics[n.0].clone()).collect(),
                input_schemas: task::input_schemas(graph, v),
            };
            let control = control.clone();
            let name = format!("{}-{}", v.name, s);
            let thread_name: String = name.chars().take(60).collect();
            let h = std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        task::run(task, &control)
                    }));
                    let result = match result {
                        Ok(r) => r,
                        Err(payload) => Err(Error::Panic(panic_message(payload))),
                    };
                    if let Err(e) = result {
                        debug!(task = %name, error = %e, "task failed");
                        control.fail(Error::Task {
                            operator: name.clone(),
                            subtask: s,
                            source: Box::new(e),
                        });
                    }
                })
                .map_err(|e| Error::io("spawning a task thread", e))?;
            handles.push(h);
        }
    }
    for h in handles {
        let _ = h.join();
    }
    if let Some(e) = control.take_error() {
        return Err(e);
    }
    if control.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let duration = start.elapsed();
    let nodes = graph
        .nodes
        .iter()
        .map(|n| NodeSummary {
            name: n.name.clone(),
            records_in: metrics[n.id.0].records_in.load(Ordering::Relaxed),
            records_out: metrics[n.id.0].records_out.load(Ordering::Relaxed),
        })
        .collect();
    info!(job = %config.name, ms = duration.as_millis() as u64, "job finished");
    Ok(JobResult {
        duration,
        nodes,
        plan,
    })
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
