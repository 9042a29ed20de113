//! Logical → physical graph. Decides each node's parallelism, fuses chains
//! of forward edges with equal parallelism into one task (a "vertex"), and
//! turns forward edges whose ends differ in parallelism into rebalances.

use crate::checkpoint::coordinator::TaskKey;
use crate::error::{Error, Result};
use crate::graph::{EdgeKind, LogicalGraph, NodeId, NodeKind};

/// One task type of the physical graph: a chain of fused nodes run by
/// `parallelism` subtasks.
#[derive(Debug, Clone)]
pub struct Vertex {
    /// Index in [`PhysicalPlan::vertices`].
    pub id: usize,
    /// Fused nodes, head first; each feeds the next through its main output.
    pub chain: Vec<NodeId>,
    /// Number of subtasks.
    pub parallelism: usize,
    /// Display name: the chained node names joined with " -> ".
    pub name: String,
}

/// An edge between vertices.
#[derive(Debug, Clone)]
pub struct PhysicalEdge {
    /// Upstream vertex.
    pub from_vertex: usize,
    /// Position in the upstream chain of the node that emits.
    pub from_member: usize,
    /// Output port of that node.
    pub port: usize,
    /// Downstream vertex (its head node receives).
    pub to_vertex: usize,
    /// Logical input of the downstream head.
    pub input: usize,
    /// Partitioning (forward only where parallelism matches).
    pub kind: EdgeKind,
}

/// The physical graph.
#[derive(Debug, Clone)]
pub struct PhysicalPlan {
    /// Vertices in topological order.
    pub vertices: Vec<Vertex>,
    /// Edges between vertices.
    pub edges: Vec<PhysicalEdge>,
    /// Key groups of the job.
    pub max_parallelism: usize,
}

/// Plans `graph` with `default_parallelism` for nodes without their own.
pub fn plan(
    graph: &LogicalGraph,
    default_parallelism: usize,
    max_parallelism: usize,
    chaining: bool,
) -> Result<PhysicalPlan> {
    if graph.nodes.is_empty() {
        return Err(Error::plan("job", "the job has no operators"));
    }
    let par: Vec<usize> = graph
        .nodes
        .iter()
        .map(|n| n.parallelism.unwrap_or(default_parallelism).max(1))
        .collect();
    for n in &graph.nodes {
        if par[n.id.0] > max_parallelism {
            return Err(Error::plan(
                &n.name,
                format!(
                    "parallelism {} exceeds max parallelism {max_parallelism}",
                    par[n.id.0]
                ),
            ));
        }
        if !matches!(n.kind, NodeKind::Sink { .. }) && graph.consumers(n.id).next().is_none() {
            return Err(Error::plan(
                &n.name,
                "its output goes nowhere; end the stream in a sink",
            ));
        }
    }
    // A node fuses into its upstream when it is the upstream's only main-output
    // consumer, over a forward edge, at equal parallelism, with one input edge.
    let mut chained_to: Vec<Option<NodeId>> = vec![None; graph.nodes.len()];
    if chaining {
        for n in &graph.nodes {
            if n.inputs.len() != 1 || n.chain_head {
                continue;
            }
            let e = &n.inputs[0];
            let up = graph.node(e.from);
            let main_consumers = graph
                .consumers(up.id)
                .filter(|(_, ce)| ce.port == 0)
                .count();
            if e.kind == EdgeKind::Forward
                && e.port == 0
                && main_consumers == 1
                && par[up.id.0] == par[n.id.0]
                && !matches!(up.kind, NodeKind::Sink { .. })
            {
                chained_to[n.id.0] = Some(up.id);
            }
        }
    }
    // Build chains from their heads, in node order (which is topological).
    let mut vertex_of: Vec<(usize, usize)> = vec![(usize::MAX, 0); graph.nodes.len()];
    let mut vertices: Vec<Vertex> = Vec::new();
    for n in &graph.nodes {
        if chained_to[n.id.0].is_some() {
            continue;
        }
        let mut chain = vec![n.id];
        let mut cur = n.id;
        while let Some(next) = graph.nodes.iter().find(|m| chained_to[m.id.0] == Some(cur)) {
            chain.push(next.id);
            cur = next.id;
        }
        let vid = vertices.len();
        for (i, id) in chain.iter().enumerate() {
            vertex_of[id.0] = (vid, i);
        }
        let name = chain
            .iter()
            .map(|id| graph.node(*id).name.as_str())
            .collect::<Vec<_>>()
            .join(" -> ");
        vertices.push(Vertex {
            id: vid,
            chain,
            parallelism: par[n.id.0],
            name,
        });
    }
    let mut edges = Vec::new();
    for n in &graph.nodes {
        if chained_to[n.id.0].is_some() {
            continue;
        }
        for e in &n.inputs {
            let (from_vertex, from_member) = vertex_of[e.from.0];
            let kind = match &e.kind {
                EdgeKind::Forward if par[e.from.0] != par[n.id.0] => EdgeKind::Rebalance,
                k => k.clone(),
            };
            edges.push(PhysicalEdge {
                from_vertex,
                from_member,
                port: e.port,
                to_vertex: vertex_of[n.id.0].0,
                input: e.input,
                kind,
            });
        }
    }
    Ok(PhysicalPlan {
        vertices,
        edges,
        max_parallelism,
    })
}

impl PhysicalPlan {
    /// Every subtask of the plan, vertex by vertex.
    pub fn tasks(&self) -> impl Iterator<Item = TaskKey> + '_ {
        self.vertices.iter().flat_map(|v| {
            (0..v.parallelism).map(move |s| TaskKey {
                vertex: v.id,
                subtask: s,
            })
        })
    }

    /// A one-line-per-vertex description, for logs and `--explain`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for v in &self.vertices {
            s.push_str(&format!(
                "[{}] {} (parallelism {})\n",
                v.id, v.name, v.parallelism
            ));
            for e in self.edges.iter().filter(|e| e.to_vertex == v.id) {
                s.push_str(&format!(
                    "    <- [{}] input {} {:?}\n",
                    e.from_vertex, e.input, e.kind
                ));
            }
        }
        s
    }
}
