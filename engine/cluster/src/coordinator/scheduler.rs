//! Placing a job's subtasks on worker slots. Subtask `i` of every vertex
//! shares slot `i` (as Flink's slot sharing does), so a job needs as many
//! slots as its widest vertex; the strategy decides which workers give
//! them. Each worker used by an attempt runs one executor process.

use sluice_engine::checkpoint::coordinator::TaskKey;
use sluice_engine::error::{Error, Result};
use sluice_protocol::api::JobDescription;

use super::Scheduling;

/// A worker as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Worker id.
    pub worker: String,
    /// Free slots.
    pub free: usize,
    /// Declared capacity (weight).
    pub capacity: f64,
}

/// Where an attempt runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Worker of each executor, by executor index.
    pub executors: Vec<String>,
    /// Slots each executor takes.
    pub slots: Vec<usize>,
    /// Executor of every subtask.
    pub tasks: Vec<(TaskKey, usize)>,
}

/// Chooses a worker for each of `needed` slots.
fn choose(offers: &[Offer], needed: usize, strategy: Scheduling) -> Result<Vec<usize>> {
    let free: usize = offers.iter().map(|o| o.free).sum();
    if needed > free {
        return Err(Error::Config(format!(
            "the job needs {needed} slots and {free} are free on {} live workers",
            offers.len()
        )));
    }
    let mut taken = vec![0usize; offers.len()];
    let mut out = Vec::with_capacity(needed);
    for _ in 0..needed {
        let open = (0..offers.len()).filter(|&w| taken[w] < offers[w].free);
        let pick = match strategy {
            // Most free slots left first; ties to the first offered.
            Scheduling::Spread => open.max_by_key(|&w| (offers[w].free - taken[w], usize::MAX - w)),
            // Fill the first worker with room before the next.
            Scheduling::Pack => open.min(),
            // Least load relative to capacity after taking one more.
            Scheduling::Weighted => open.min_by(|&a, &b| {
                let load = |w: usize| (taken[w] + 1) as f64 / offers[w].capacity.max(1e-9);
                load(a).total_cmp(&load(b)).then(a.cmp(&b))
            }),
        }
        .expect("enough free slots were checked");
        taken[pick] += 1;
        out.push(pick);
    }
    Ok(out)
}

/// Places every subtask of `job` on `offers`.
pub fn place(job: &JobDescription, offers: &[Offer], strategy: Scheduling) -> Result<Assignment> {
    let slots = choose(offers, job.slots(), strategy)?;
    let mut executors: Vec<String> = Vec::new();
    let mut slot_counts: Vec<usize> = Vec::new();
    let mut slot_executor = Vec::with_capacity(slots.len());
    for w in slots {
        let worker = &offers[w].worker;
        let e = match executors.iter().position(|x| x == worker) {
            Some(e) => e,
            None => {
                executors.push(worker.clone());
                slot_counts.push(0);
                executors.len() - 1
            }
        };
        slot_counts[e] += 1;
        slot_executor.push(e);
    }
    let tasks = job
        .vertices
        .iter()
        .flat_map(|v| {
            let slot_executor = &slot_executor;
            (0..v.parallelism).map(move |s| {
                (
                    TaskKey {
                        vertex: v.id,
                        subtask: s,
                    },
                    slot_executor[s],
                )
            })
        })
        .collect();
    Ok(Assignment {
        executors,
        slots: slot_counts,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::api::VertexInfo;

    fn job(parallelisms: &[usize]) -> JobDescription {
        JobDescription {
            protocol: sluice_protocol::PROTOCOL_VERSION,
            name: "j".into(),
            parallelism: 1,
            max_parallelism: 128,
            graph_nodes: parallelisms.len(),
            uids: Vec::new(),
            checkpoint: None,
            restart: sluice_protocol::api::RestartPolicy::None,
            vertices: parallelisms
                .iter()
                .enumerate()
                .map(|(id, &p)| VertexInfo {
                    id,
                    name: format!("v{id}"),
                    parallelism: p,
                    source: id == 0,
                    nodes: vec![(id, format!("v{id}"))],
                    inputs: Vec::new(),
                })
                .collect(),
        }
    }

    fn offers(free: &[(usize, f64)]) -> Vec<Offer> {
        free.iter()
            .enumerate()
            .map(|(i, &(free, capacity))| Offer {
                worker: format!("w{i}"),
                free,
                capacity,
            })
            .collect()
    }

    #[test]
    fn spread_pack_and_weighted() {
        let j = job(&[4, 2]);
        let o = offers(&[(4, 1.0), (4, 1.0), (4, 3.0)]);
        let spread = place(&j, &o, Scheduling::Spread).unwrap();
        assert_eq!(spread.executors, vec!["w0", "w1", "w2"]);
        assert_eq!(spread.slots, vec![2, 1, 1]);
        let pack = place(&j, &o, Scheduling::Pack).unwrap();
        assert_eq!(pack.executors, vec!["w0"]);
        assert_eq!(pack.slots, vec![4]);
        let weighted = place(&j, &o, Scheduling::Weighted).unwrap();
        let on_w2 = weighted.executors.iter().position(|w| w == "w2").unwrap();
        assert_eq!(weighted.slots[on_w2], 2, "{weighted:?}");
        // Every subtask is placed once, subtask i of each vertex together.
        assert_eq!(spread.tasks.len(), 6);
        let exec_of = |v: usize, s: usize| {
            spread
                .tasks
                .iter()
                .find(|(k, _)| k.vertex == v && k.subtask == s)
                .unwrap()
                .1
        };
        assert_eq!(exec_of(0, 1), exec_of(1, 1));
    }

    #[test]
    fn too_few_slots_is_a_clear_error() {
        let e = place(
            &job(&[3]),
            &offers(&[(1, 1.0), (1, 1.0)]),
            Scheduling::Spread,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs 3 slots and 2 are free"), "{e}");
    }
}
