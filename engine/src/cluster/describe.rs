//! The serialized plan of a job ([`JobDescription`]): what a job binary in
//! describe mode writes, and what the coordinator places and checkpoints
//! by. It owns the translation between the runtime's plan and checkpoint
//! settings and their API forms; it knows nothing of scheduling.

use std::time::Duration;

use crate::checkpoint::coordinator::{NodeInfo, TaskKey};
use crate::checkpoint::{CheckpointConfig, Guarantee, Location};
use crate::cluster::api::{CheckpointDescription, JobDescription, VertexInfo};
use crate::graph::{LogicalGraph, NodeKind};
use crate::plan::PhysicalPlan;
use crate::runtime::JobConfig;

impl JobDescription {
    /// Describes `plan` (planned from `graph` with `config`).
    pub fn from_plan(graph: &LogicalGraph, plan: &PhysicalPlan, config: &JobConfig) -> Self {
        JobDescription {
            name: config.name.clone(),
            parallelism: config.parallelism,
            max_parallelism: plan.max_parallelism,
            vertices: plan
                .vertices
                .iter()
                .map(|v| VertexInfo {
                    id: v.id,
                    name: v.name.clone(),
                    parallelism: v.parallelism,
                    source: matches!(graph.node(v.chain[0]).kind, NodeKind::Source { .. }),
                    nodes: v
                        .chain
                        .iter()
                        .map(|n| (n.0, graph.node(*n).name.clone()))
                        .collect(),
                })
                .collect(),
            graph_nodes: graph.nodes.len(),
            checkpoint: config
                .checkpoint
                .as_ref()
                .map(CheckpointDescription::from_config),
        }
    }

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

    /// Every graph node as a checkpoint manifest records it, in graph order.
    pub fn node_infos(&self) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> = self
            .vertices
            .iter()
            .flat_map(|v| {
                v.nodes.iter().map(|(node, name)| NodeInfo {
                    node: *node,
                    name: name.clone(),
                    parallelism: v.parallelism,
                })
            })
            .collect();
        nodes.sort_by_key(|n| n.node);
        nodes
    }
}

impl CheckpointDescription {
    /// The API form of a job's checkpoint settings.
    pub fn from_config(c: &CheckpointConfig) -> Self {
        CheckpointDescription {
            dir: c.dir.as_str().to_string(),
            interval_ms: c.interval.as_millis() as u64,
            timeout_ms: c.timeout.as_millis() as u64,
            min_pause_ms: c.min_pause.as_millis() as u64,
            retained: c.retained,
            exactly_once: c.guarantee == Guarantee::ExactlyOnce,
            restore_from: c.restore_from.as_ref().map(|l| l.as_str().to_string()),
        }
    }

    /// The settings the checkpoint coordinator runs with.
    pub fn to_config(&self) -> CheckpointConfig {
        CheckpointConfig {
            dir: Location::from(self.dir.as_str()),
            interval: Duration::from_millis(self.interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            min_pause: Duration::from_millis(self.min_pause_ms),
            guarantee: if self.exactly_once {
                Guarantee::ExactlyOnce
            } else {
                Guarantee::AtLeastOnce
            },
            retained: self.retained,
            restore_from: self.restore_from.as_deref().map(Location::from),
        }
    }
}
