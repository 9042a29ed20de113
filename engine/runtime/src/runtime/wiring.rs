//! Wiring a plan in one process: the channels of every edge between the
//! subtasks this process runs (a local bounded channel when both ends are
//! here, the end of a network channel otherwise) and one thread per local
//! subtask. The embedded cluster runs every subtask, so all its channels
//! are local; a task executor runs its share and gets remote ends from its
//! exchange connections. Channel ids are derived from the plan alone, so
//! every process running the same plan numbers channels alike.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use tracing::debug;

use super::{panic_message, task, InputChannel, JobControl, NodeMetrics};
use crate::checkpoint::coordinator::TaskKey;
use crate::data::StreamMessage;
use crate::error::{Error, Result};
use crate::exchange::frame::ChannelId;
use crate::exchange::local::channel;
use crate::exchange::partition::{targets, EdgeWriter};
use crate::exchange::ChannelSender;
use crate::graph::LogicalGraph;
use crate::metrics::TaskMeter;
use crate::plan::PhysicalPlan;

/// The channels of a plan's edges in one process: every local subtask's
/// input channels and output writers.
pub(crate) struct Wiring {
    /// Per (vertex, subtask): its input channels.
    inputs: HashMap<(usize, usize), Vec<InputChannel>>,
    /// Per (vertex, subtask, chain member): (output port, writer).
    writers: HashMap<(usize, usize, usize), Vec<(usize, EdgeWriter)>>,
}

/// The ends of channels whose other end is in another process.
pub(crate) trait RemoteEnds {
    /// The sending end of `channel`, whose receiver runs task `to`.
    fn sender(&mut self, channel: ChannelId, to: TaskKey) -> Result<Box<dyn ChannelSender>>;
    /// The receiving end of `channel`, whose sender runs task `from`.
    fn receiver(&mut self, channel: ChannelId, from: TaskKey) -> Result<Receiver<StreamMessage>>;
}

/// No remote ends: every task is local (the embedded cluster).
pub(crate) struct NoRemote;

impl RemoteEnds for NoRemote {
    fn sender(&mut self, channel: ChannelId, to: TaskKey) -> Result<Box<dyn ChannelSender>> {
        Err(Error::Internal(format!(
            "channel {} to {to:?} is remote in an embedded job",
            channel.0
        )))
    }
    fn receiver(&mut self, channel: ChannelId, from: TaskKey) -> Result<Receiver<StreamMessage>> {
        Err(Error::Internal(format!(
            "channel {} from {from:?} is remote in an embedded job",
            channel.0
        )))
    }
}

/// One channel of a plan: edge index, upstream and downstream subtasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanChannel {
    /// Index in `plan.edges`.
    pub edge: usize,
    /// Sending task.
    pub from: TaskKey,
    /// Receiving task.
    pub to: TaskKey,
    /// Its id, the same in every process running the plan.
    pub id: ChannelId,
}

/// Every channel of `plan`, in edge order. Ids number the (upstream,
/// downstream) pairs of each edge one after the other, so every process
/// planning the same graph derives the same ids.
pub fn plan_channels(plan: &PhysicalPlan) -> Result<Vec<PlanChannel>> {
    let mut out = Vec::new();
    let mut base: u64 = 0;
    for (ei, e) in plan.edges.iter().enumerate() {
        let up = plan.vertices[e.from_vertex].parallelism;
        let down = plan.vertices[e.to_vertex].parallelism;
        for u in 0..up {
            for t in targets(&e.kind, u, down) {
                let id = base + (u * down + t) as u64;
                let id = u32::try_from(id).map_err(|_| {
                    Error::Config("the plan has more channels than a u32 can number".into())
                })?;
                out.push(PlanChannel {
                    edge: ei,
                    from: TaskKey {
                        vertex: e.from_vertex,
                        subtask: u,
                    },
                    to: TaskKey {
                        vertex: e.to_vertex,
                        subtask: t,
                    },
                    id: ChannelId(id),
                });
            }
        }
        base += (up * down) as u64;
    }
    Ok(out)
}

/// Creates the channels of every edge touching a task `local` selects: a
/// local channel when both ends are local, a remote end otherwise.
pub(crate) fn wire(
    plan: &PhysicalPlan,
    capacity: usize,
    cancelled: &Arc<AtomicBool>,
    local: &dyn Fn(TaskKey) -> bool,
    remote: &mut dyn RemoteEnds,
) -> Result<Wiring> {
    let mut inputs: HashMap<(usize, usize), Vec<InputChannel>> = HashMap::new();
    let mut writers: HashMap<(usize, usize, usize), Vec<(usize, EdgeWriter)>> = HashMap::new();
    let channels = plan_channels(plan)?;
    // Channels of one edge and upstream subtask are consecutive, in the
    // order `targets` gives, which is the order the writer routes by.
    for group in channels.chunk_by(|a, b| a.edge == b.edge && a.from == b.from) {
        let (first, e) = (group[0], &plan.edges[group[0].edge]);
        let from_local = local(first.from);
        let mut senders: Vec<Box<dyn ChannelSender>> = Vec::new();
        for c in group {
            let rx = match (from_local, local(c.to)) {
                (true, true) => {
                    let (tx, rx) = channel(capacity, cancelled.clone());
                    senders.push(Box::new(tx));
                    rx
                }
                (true, false) => {
                    senders.push(remote.sender(c.id, c.to)?);
                    continue;
                }
                (false, true) => remote.receiver(c.id, c.from)?,
                (false, false) => continue,
            };
            inputs
                .entry((c.to.vertex, c.to.subtask))
                .or_default()
                .push((rx, e.input));
        }
        if from_local {
            let w = EdgeWriter::new(
                e.kind.clone(),
                senders,
                plan.max_parallelism,
                first.from.subtask,
            );
            writers
                .entry((e.from_vertex, first.from.subtask, e.from_member))
                .or_default()
                .push((e.port, w));
        }
    }
    Ok(Wiring { inputs, writers })
}

/// What every task thread of a run shares.
pub(crate) struct TaskContext<'a> {
    pub graph: &'a LogicalGraph,
    pub plan: &'a PhysicalPlan,
    pub metrics: &'a [Arc<NodeMetrics>],
    /// One per task `spawn_tasks` starts ([`task_meters`]).
    pub meters: &'a [Arc<TaskMeter>],
    pub attempt: u64,
    pub state: &'a crate::state::StateSettings,
    pub control: &'a Arc<JobControl>,
}

/// A meter for every task `local` selects, in plan order.
pub(crate) fn task_meters(
    plan: &PhysicalPlan,
    local: &dyn Fn(TaskKey) -> bool,
) -> Vec<Arc<TaskMeter>> {
    plan.tasks()
        .filter(|k| local(*k))
        .map(|k| Arc::new(TaskMeter::new(k.vertex, k.subtask)))
        .collect()
}

/// Starts one thread per subtask `local` selects; a failing or panicking
/// task records its error in the job control, which cancels the others.
pub(crate) fn spawn_tasks(
    cx: &TaskContext<'_>,
    local: &dyn Fn(TaskKey) -> bool,
    wiring: &mut Wiring,
    task_ck: &mut HashMap<TaskKey, task::TaskCheckpointing>,
) -> Result<Vec<JoinHandle<()>>> {
    let (graph, plan) = (cx.graph, cx.plan);
    let mut handles = Vec::new();
    for key in plan.tasks().filter(|k| local(*k)) {
        let (v, s) = (&plan.vertices[key.vertex], key.subtask);
        let meter = cx
            .meters
            .iter()
            .find(|m| m.key() == (key.vertex, key.subtask))
            .cloned()
            .ok_or_else(|| Error::Internal(format!("no meter for task {key:?}")))?;
        let member_writers: Vec<Vec<(usize, EdgeWriter)>> = (0..v.chain.len())
            .map(|m| {
                let mut writers = wiring.writers.remove(&(v.id, s, m)).unwrap_or_default();
                for (_, w) in &mut writers {
                    w.set_meter(meter.clone());
                }
                writers
            })
            .collect();
        let task = task::TaskSpec {
            graph: graph.clone(),
            vertex: v.clone(),
            subtask: s,
            max_parallelism: plan.max_parallelism,
            inputs: wiring.inputs.remove(&(v.id, s)).unwrap_or_default(),
            writers: member_writers,
            metrics: v.chain.iter().map(|n| cx.metrics[n.0].clone()).collect(),
            input_schemas: task::input_schemas(graph, v),
            attempt: cx.attempt,
            state: cx.state.clone(),
            checkpointing: task_ck.remove(&key),
            meter: meter.clone(),
        };
        let control = cx.control.clone();
        let name = format!("{}-{}", v.name, s);
        let thread_name: String = name.chars().take(60).collect();
        let h = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    task::run(task, &control)
                }));
                meter.end();
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
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{EdgeKind, NodeId};
    use crate::plan::{PhysicalEdge, Vertex};

    fn vertex(id: usize, parallelism: usize) -> Vertex {
        Vertex {
            id,
            chain: vec![NodeId(id)],
            parallelism,
            name: format!("v{id}"),
        }
    }

    fn edge(from: usize, to: usize, kind: EdgeKind) -> PhysicalEdge {
        PhysicalEdge {
            from_vertex: from,
            from_member: 0,
            port: 0,
            to_vertex: to,
            input: 0,
            kind,
        }
    }

    #[test]
    fn channel_ids_are_unique_and_follow_the_edges() {
        let plan = PhysicalPlan {
            vertices: vec![vertex(0, 1), vertex(1, 3), vertex(2, 3)],
            edges: vec![
                edge(0, 1, EdgeKind::Hash(vec![0])),
                edge(1, 2, EdgeKind::Forward),
            ],
            max_parallelism: 128,
        };
        let ch = plan_channels(&plan).unwrap();
        // 1 × 3 hash channels, then 3 forward channels u → u.
        assert_eq!(ch.len(), 6);
        let mut ids: Vec<u32> = ch.iter().map(|c| c.id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 6);
        assert!(ch[3..].iter().all(|c| c.from.subtask == c.to.subtask));
        // The same plan numbers its channels the same way again.
        assert_eq!(plan_channels(&plan).unwrap(), ch);
    }

    #[test]
    fn only_channels_touching_local_tasks_are_wired() {
        let plan = PhysicalPlan {
            vertices: vec![vertex(0, 2), vertex(1, 2)],
            edges: vec![edge(0, 1, EdgeKind::Rebalance)],
            max_parallelism: 128,
        };
        struct Count(usize, usize);
        impl RemoteEnds for Count {
            fn sender(&mut self, _: ChannelId, _: TaskKey) -> Result<Box<dyn ChannelSender>> {
                self.0 += 1;
                let (tx, _rx) = channel(1, Arc::default());
                Ok(Box::new(tx))
            }
            fn receiver(&mut self, _: ChannelId, _: TaskKey) -> Result<Receiver<StreamMessage>> {
                self.1 += 1;
                Ok(crossbeam_channel::bounded(1).1)
            }
        }
        // This process runs subtask 0 of both vertices.
        let mut remote = Count(0, 0);
        let w = wire(&plan, 4, &Arc::default(), &|k| k.subtask == 0, &mut remote).unwrap();
        assert_eq!((remote.0, remote.1), (1, 1));
        assert_eq!(w.inputs[&(1, 0)].len(), 2);
        assert_eq!(w.writers[&(0, 0, 0)].len(), 1);
        assert!(!w.writers.contains_key(&(0, 1, 0)));
    }
}
