//! The logical job graph the DSL builds: nodes (sources, operators, sinks)
//! with their output schemas and factories, and edges with a partitioning
//! kind. The planner (`plan`) turns it into the physical graph.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;

use crate::error::Result;
use crate::operator::{Operator, OperatorContext, Sink, Source};

/// The verb of a node name: without the `#N` that makes names unique and
/// without arguments in parentheses (a sink's path, say).
pub fn verb_of(name: &str) -> &str {
    let name = name.split('#').next().unwrap_or(name);
    name.split('(').next().unwrap_or(name).trim()
}

/// Index of a node in the logical graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// Builds one operator instance per subtask.
pub type OperatorFactory = Arc<dyn Fn(&OperatorContext) -> Result<Box<dyn Operator>> + Send + Sync>;
/// Builds one source instance per subtask.
pub type SourceFactory = Arc<dyn Fn(&OperatorContext) -> Result<Box<dyn Source>> + Send + Sync>;
/// Builds one sink instance per subtask.
pub type SinkFactory = Arc<dyn Fn(&OperatorContext) -> Result<Box<dyn Sink>> + Send + Sync>;

/// How records move along an edge from the upstream subtasks to the
/// downstream ones (timely's "parallelization contract" as a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeKind {
    /// Subtask i to subtask i; needs equal parallelism (else it becomes rebalance).
    Forward,
    /// By hash of these column indices, through key groups.
    Hash(Vec<usize>),
    /// Round-robin, a batch at a time.
    Rebalance,
    /// Every batch to every downstream subtask.
    Broadcast,
    /// Each batch to the downstream channel with the smallest backlog.
    LoadAware,
}

/// How a source assigns watermarks: bounded out-of-orderness on an
/// event-time column, tracked per split, with an optional idle timeout
/// and emission interval. Given to `watermarks(..)` (`sluice-operators`)
/// or [`Stream::assign_watermarks`](crate::Stream::assign_watermarks).
///
/// ```
/// use std::time::Duration;
/// use sluice_engine::WatermarkStrategy;
///
/// let w = WatermarkStrategy::bounded_out_of_orderness("ts", Duration::from_millis(500))
///     .idle_after(Duration::from_secs(10))
///     .emit_every(Duration::from_millis(200));
/// assert_eq!(w.max_out_of_orderness_ms, 500);
/// assert_eq!(w.emit_interval, Duration::from_millis(200));
/// // By default a watermark follows every batch that advances it.
/// assert_eq!(WatermarkStrategy::ascending("ts").emit_interval, Duration::ZERO);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkStrategy {
    /// The event-time column (Int64 epoch ms or a timestamp type).
    pub column: String,
    /// How far behind the largest timestamp seen the watermark trails (ms).
    pub max_out_of_orderness_ms: i64,
    /// A split silent this long stops holding back the watermark.
    pub idle_timeout: Option<Duration>,
    /// Least wall-clock time between two watermarks a source subtask (or
    /// mid-stream assigner) emits; zero (the default) emits one after
    /// every batch that advances event time.
    pub emit_interval: Duration,
}

impl WatermarkStrategy {
    /// Watermark = max timestamp seen - `delay` - 1 ms (Flink's convention).
    pub fn bounded_out_of_orderness(column: impl Into<String>, delay: Duration) -> Self {
        WatermarkStrategy {
            column: column.into(),
            max_out_of_orderness_ms: delay.as_millis() as i64,
            idle_timeout: None,
            emit_interval: Duration::ZERO,
        }
    }

    /// Timestamps never go backwards within a split.
    pub fn ascending(column: impl Into<String>) -> Self {
        Self::bounded_out_of_orderness(column, Duration::ZERO)
    }

    /// Declares a split idle after `timeout` without records.
    pub fn idle_after(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Emits a watermark at most once per `interval` of wall-clock time
    /// instead of after every batch (Flink's auto-watermark interval):
    /// fewer watermark messages for downstream tasks to combine and
    /// windows to react to, at the price of firing up to `interval` later.
    /// A watermark held back goes out with the first batch or poll after
    /// the interval; the end of input's final watermark is never held.
    pub fn emit_every(mut self, interval: Duration) -> Self {
        self.emit_interval = interval;
        self
    }
}

/// What a node does.
#[derive(Clone)]
pub enum NodeKind {
    /// Produces records.
    Source {
        /// Instance factory.
        factory: SourceFactory,
        /// Watermark assignment applied by the source task, per split.
        watermarks: Option<WatermarkStrategy>,
    },
    /// Transforms records.
    Operator {
        /// Instance factory.
        factory: OperatorFactory,
    },
    /// Consumes records.
    Sink {
        /// Instance factory.
        factory: SinkFactory,
    },
}

/// An input edge of a node.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Upstream node.
    pub from: NodeId,
    /// Which output of the upstream node (0 main, 1.. side outputs).
    pub port: usize,
    /// Which input of this node (0 for single-input; 0/1 for joins).
    pub input: usize,
    /// Partitioning.
    pub kind: EdgeKind,
}

/// A node of the logical graph.
#[derive(Clone)]
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// Display name (verb or user-given name), unique within the job.
    pub name: String,
    /// Source, operator or sink.
    pub kind: NodeKind,
    /// Explicit parallelism; `None` takes the job default.
    pub parallelism: Option<usize>,
    /// Output schemas: index 0 the main output, then side outputs.
    pub outputs: Vec<SchemaRef>,
    /// Input edges.
    pub inputs: Vec<Edge>,
    /// Number of logical inputs (1 for most, 2 for joins).
    pub num_inputs: usize,
    /// Must not be chained to its upstream (e.g. it needs its own thread).
    pub chain_head: bool,
    /// The operator id given with `Stream::uid`; `None` takes the derived
    /// default (see [`LogicalGraph::uids`]).
    pub uid: Option<String>,
    /// The node's operator keeps no state (a verb says so with
    /// `Stream::stateless`): default operator ids look through it.
    pub stateless: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("parallelism", &self.parallelism)
            .field("uid", &self.uid)
            .field("inputs", &self.inputs)
            .finish()
    }
}

/// The logical graph of a job.
#[derive(Clone, Default, Debug)]
pub struct LogicalGraph {
    /// Nodes in creation order (a topological order: inputs exist first).
    pub nodes: Vec<Node>,
}

impl LogicalGraph {
    /// The node with this id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// The operator id of every node, by index: the id given with
    /// `Stream::uid`, or a default derived from what the operator is and
    /// where its input comes from — its verb (the node name without `#N`
    /// or arguments), and per input, the ids of the nearest upstream nodes
    /// that are not stateless (looking through filters, selects, maps,
    /// unions and the like), with the names of the key columns the input is
    /// partitioned on. Parallelism, names' arguments (a sink's path), node
    /// positions and stateless operators anywhere do not enter it, so
    /// adding or removing stateless operators, or changing parallelism,
    /// keeps every default id. Nodes whose derivation is equal (two
    /// identical windows over the same stream) are numbered in the order
    /// they were added (`-2`, `-3`).
    pub fn uids(&self) -> Vec<String> {
        let mut uids: Vec<String> = Vec::with_capacity(self.nodes.len());
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        for n in &self.nodes {
            if let Some(u) = &n.uid {
                uids.push(u.clone());
                continue;
            }
            let stem = verb_of(&n.name);
            let mut sig = stem.to_string();
            let mut inputs: Vec<&Edge> = n.inputs.iter().collect();
            inputs.sort_by_key(|e| e.input);
            for e in inputs {
                let mut anchors = Vec::new();
                self.anchors(e.from, e.port, &uids, &mut anchors);
                anchors.sort();
                sig.push_str(&format!("|in{}:{}", e.input, anchors.join(",")));
                if let EdgeKind::Hash(cols) = &e.kind {
                    let schema = &self.nodes[e.from.0].outputs[e.port];
                    let names: Vec<&str> = cols
                        .iter()
                        .filter_map(|c| schema.fields().get(*c).map(|f| f.name().as_str()))
                        .collect();
                    sig.push_str(&format!("/keys:{}", names.join(",")));
                }
            }
            let base = format!("{stem}@{:016x}", crate::hash::hash_bytes(sig.as_bytes()));
            let k = seen.entry(base.clone()).or_insert(0);
            *k += 1;
            uids.push(if *k == 1 { base } else { format!("{base}-{k}") });
        }
        uids
    }

    /// The ids of the nearest nodes at or above output `port` of `from`
    /// that are not stateless.
    fn anchors(&self, from: NodeId, port: usize, uids: &[String], out: &mut Vec<String>) {
        let n = &self.nodes[from.0];
        let passes = n.stateless && matches!(n.kind, NodeKind::Operator { .. }) && port == 0;
        if !passes || n.inputs.is_empty() {
            out.push(format!("{}:{port}", uids[from.0]));
            return;
        }
        for e in &n.inputs {
            self.anchors(e.from, e.port, uids, out);
        }
    }

    /// Edges leaving `id`, as (consumer, edge).
    pub fn consumers(&self, id: NodeId) -> impl Iterator<Item = (&Node, &Edge)> {
        self.nodes.iter().flat_map(move |n| {
            n.inputs
                .iter()
                .filter(move |e| e.from == id)
                .map(move |e| (n, e))
        })
    }
}
