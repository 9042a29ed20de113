//! The serialized plan of a job ([`JobDescription`]): what a job binary in
//! describe mode writes, and what the coordinator places and checkpoints
//! by. It owns the translation between the runtime's plan and checkpoint
//! settings and their protocol forms; it knows nothing of scheduling.

use std::time::Duration;

use sluice_protocol::api::{
    CheckpointDescription, JobDescription, RestartPolicy, VertexInfo, VertexInput,
};
use sluice_protocol::PROTOCOL_VERSION;

use crate::checkpoint::coordinator::NodeInfo;
use crate::checkpoint::{CheckpointConfig, Guarantee, Location, RestartStrategy};
use crate::graph::{EdgeKind, LogicalGraph, NodeKind};
use crate::plan::PhysicalPlan;
use crate::runtime::JobConfig;

/// Describes `plan` (planned from `graph` with `config`).
pub fn describe(graph: &LogicalGraph, plan: &PhysicalPlan, config: &JobConfig) -> JobDescription {
    JobDescription {
        protocol: PROTOCOL_VERSION,
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
                inputs: plan
                    .edges
                    .iter()
                    .filter(|e| e.to_vertex == v.id)
                    .map(|e| VertexInput {
                        vertex: e.from_vertex,
                        partitioning: partitioning(&e.kind).into(),
                    })
                    .collect(),
            })
            .collect(),
        graph_nodes: graph.nodes.len(),
        uids: graph.uids(),
        checkpoint: config.checkpoint.as_ref().map(checkpoint_description),
        restart: restart_policy(&config.restart),
    }
}

/// How an edge routes records, as the API names it.
fn partitioning(kind: &EdgeKind) -> &'static str {
    match kind {
        EdgeKind::Forward => "forward",
        EdgeKind::Hash(_) => "hash",
        EdgeKind::Rebalance => "rebalance",
        EdgeKind::Broadcast => "broadcast",
        EdgeKind::LoadAware => "load-aware",
    }
}

/// The protocol form of a job's restart strategy.
pub fn restart_policy(r: &RestartStrategy) -> RestartPolicy {
    let ms = |d: &Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
    match r {
        RestartStrategy::None => RestartPolicy::None,
        RestartStrategy::FixedDelay { attempts, delay } => RestartPolicy::FixedDelay {
            attempts: *attempts,
            delay_ms: ms(delay),
        },
        RestartStrategy::ExponentialBackoff {
            attempts,
            initial,
            max,
        } => RestartPolicy::ExponentialBackoff {
            attempts: *attempts,
            initial_ms: ms(initial),
            max_ms: ms(max),
        },
    }
}

/// Every graph node of `job` as a checkpoint manifest records it, in graph
/// order.
pub fn node_infos(job: &JobDescription) -> Vec<NodeInfo> {
    let mut nodes: Vec<NodeInfo> = job
        .vertices
        .iter()
        .flat_map(|v| {
            v.nodes.iter().map(|(node, name)| NodeInfo {
                node: *node,
                name: name.clone(),
                uid: job.uids.get(*node).cloned().unwrap_or_default(),
                parallelism: v.parallelism,
            })
        })
        .collect();
    nodes.sort_by_key(|n| n.node);
    nodes
}

/// The protocol form of a job's checkpoint settings.
pub fn checkpoint_description(c: &CheckpointConfig) -> CheckpointDescription {
    CheckpointDescription {
        dir: c.dir.as_str().to_string(),
        interval_ms: c.interval.as_millis() as u64,
        timeout_ms: c.timeout.as_millis() as u64,
        min_pause_ms: c.min_pause.as_millis() as u64,
        retained: c.retained,
        exactly_once: c.guarantee == Guarantee::ExactlyOnce,
        unaligned: c.unaligned,
        restore_from: c.restore_from.as_ref().map(|l| l.as_str().to_string()),
    }
}

/// The settings the checkpoint coordinator runs with.
pub fn checkpoint_config(d: &CheckpointDescription) -> CheckpointConfig {
    CheckpointConfig {
        dir: Location::from(d.dir.as_str()),
        interval: Duration::from_millis(d.interval_ms),
        timeout: Duration::from_millis(d.timeout_ms),
        min_pause: Duration::from_millis(d.min_pause_ms),
        guarantee: if d.exactly_once {
            Guarantee::ExactlyOnce
        } else {
            Guarantee::AtLeastOnce
        },
        unaligned: d.unaligned,
        retained: d.retained,
        restore_from: d.restore_from.as_deref().map(Location::from),
        // The coordinator only writes manifests; restores are the
        // executors' (which read the flag from the job's own settings).
        allow_non_restored_state: false,
    }
}
