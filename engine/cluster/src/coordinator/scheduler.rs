//! Placing a job's subtasks on worker slots. Subtask `i` of every vertex
//! shares slot `i` (as Flink's slot sharing does), so a job needs as many
//! slots as its widest vertex; the strategy decides which workers give
//! them. Each worker used by an attempt runs one executor process.
//!
//! [`place`] is a pure function of the offers (free and total slots,
//! declared capacity, measured CPU) and the round-robin cursor: the
//! manager gathers those under its lock, and the tests here feed them
//! directly. What each strategy is for:
//! - `spread`: most free slots first, so a job's executors, and jobs,
//!   land on as many workers as possible;
//! - `pack`: fill the first worker with room, to keep others empty (to be
//!   drained, or for a later wide job);
//! - `weighted`: slots in proportion to declared `--capacity`, for
//!   workers of different sizes;
//! - `round-robin`: each slot goes to the next worker after the one the
//!   previous slot went to, across jobs, so successive small jobs start
//!   on different workers even when slot counts tie;
//! - `least-loaded`: the smallest share of slots in use, then the least
//!   CPU its executors measurably use, so a job avoids a worker that a
//!   busy job occupies as much as the others' light ones do. Slot use
//!   comes first because it is known at once: a job placed a moment ago
//!   has not reported CPU yet, and ordering by CPU alone would send a
//!   burst of submissions all to the same idle-looking worker.

use std::cmp::Ordering;

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
    /// Slots it offers in all (free and in use).
    pub slots: usize,
    /// Declared capacity (weight).
    pub capacity: f64,
    /// CPU cores its executors used lately, as measured from their
    /// reports (0 when nothing was measured: no executors, or just
    /// started ones).
    pub cpu_cores: f64,
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
    /// The worker the last slot went to: the round-robin cursor the next
    /// placement starts after.
    pub last_worker: String,
}

/// Chooses a worker (an index into `offers`) for each of `needed` slots.
/// `after`: the worker the previous placement's last slot went to (only
/// round-robin reads it).
pub fn choose(
    offers: &[Offer],
    needed: usize,
    strategy: Scheduling,
    after: Option<&str>,
) -> Result<Vec<usize>> {
    let free: usize = offers.iter().map(|o| o.free).sum();
    if needed > free {
        return Err(Error::Config(format!(
            "the job needs {needed} slots and {free} are free on {} live workers",
            offers.len()
        )));
    }
    let n = offers.len();
    let mut taken = vec![0usize; n];
    let mut out = Vec::with_capacity(needed);
    // Round-robin's next position: the first worker after the cursor in
    // offer order (a cursor naming a worker since gone still has a place
    // in that order).
    let mut next = after.map_or(0, |a| {
        offers
            .iter()
            .position(|o| o.worker.as_str() > a)
            .unwrap_or(0)
    });
    for _ in 0..needed {
        let open = (0..n).filter(|&w| taken[w] < offers[w].free);
        let pick = match strategy {
            // Most free slots left first; ties to the first offered.
            Scheduling::Spread => open.max_by_key(|&w| (offers[w].free - taken[w], usize::MAX - w)),
            // Fill the first worker with room before the next.
            Scheduling::Pack => open.min(),
            // Least load relative to capacity after taking one more,
            // counting the slots other jobs use there (not only this
            // job's), so the whole cluster's slots follow the weights.
            Scheduling::Weighted => open.min_by(|&a, &b| {
                let load = |w: usize| {
                    let used = offers[w].slots.saturating_sub(offers[w].free) + taken[w];
                    (used + 1) as f64 / offers[w].capacity.max(1e-9)
                };
                load(a).total_cmp(&load(b)).then(a.cmp(&b))
            }),
            // The first worker with room from the rotation's position.
            Scheduling::RoundRobin => (0..n)
                .map(|i| (next + i) % n)
                .find(|&w| taken[w] < offers[w].free),
            // Smallest share of slots in use (compared exactly, as
            // fractions), then least measured CPU, then offer order.
            Scheduling::LeastLoaded => open.min_by(|&a, &b| {
                let used = |w: usize| offers[w].slots.saturating_sub(offers[w].free) + taken[w];
                let share =
                    (used(a) * offers[b].slots.max(1)).cmp(&(used(b) * offers[a].slots.max(1)));
                share
                    .then_with(|| {
                        offers[a]
                            .cpu_cores
                            .partial_cmp(&offers[b].cpu_cores)
                            .unwrap_or(Ordering::Equal)
                    })
                    .then(a.cmp(&b))
            }),
        }
        .expect("enough free slots were checked");
        taken[pick] += 1;
        next = (pick + 1) % n;
        out.push(pick);
    }
    Ok(out)
}

/// Places every subtask of `job` on `offers`; `after` is the round-robin
/// cursor (see [`choose`]).
pub fn place(
    job: &JobDescription,
    offers: &[Offer],
    strategy: Scheduling,
    after: Option<&str>,
) -> Result<Assignment> {
    let slots = choose(offers, job.slots(), strategy, after)?;
    let last_worker = slots
        .last()
        .map(|&w| offers[w].worker.clone())
        .unwrap_or_default();
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
        last_worker,
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
                slots: 4,
                capacity,
                cpu_cores: 0.0,
            })
            .collect()
    }

    /// Workers `w0…` with (slots in use, slots, measured cores), capacity 1.
    fn loaded(workers: &[(usize, usize, f64)]) -> Vec<Offer> {
        workers
            .iter()
            .enumerate()
            .map(|(i, &(used, slots, cpu_cores))| Offer {
                worker: format!("w{i}"),
                free: slots - used,
                slots,
                capacity: 1.0,
                cpu_cores,
            })
            .collect()
    }

    fn workers_of(o: &[Offer], picks: &[usize]) -> Vec<String> {
        picks.iter().map(|&w| o[w].worker.clone()).collect()
    }

    #[test]
    fn spread_pack_and_weighted() {
        let j = job(&[4, 2]);
        let o = offers(&[(4, 1.0), (4, 1.0), (4, 3.0)]);
        let spread = place(&j, &o, Scheduling::Spread, None).unwrap();
        assert_eq!(spread.executors, vec!["w0", "w1", "w2"]);
        assert_eq!(spread.slots, vec![2, 1, 1]);
        let pack = place(&j, &o, Scheduling::Pack, None).unwrap();
        assert_eq!(pack.executors, vec!["w0"]);
        assert_eq!(pack.slots, vec![4]);
        let weighted = place(&j, &o, Scheduling::Weighted, None).unwrap();
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
    fn weighted_counts_the_slots_other_jobs_use() {
        // w1 has three times w0's capacity and already runs 3 slots: one
        // more there would be 4/3 against 1/1 on w0.
        let mut o = loaded(&[(0, 8, 0.0), (3, 8, 0.0)]);
        o[1].capacity = 3.0;
        let picks = choose(&o, 1, Scheduling::Weighted, None).unwrap();
        assert_eq!(workers_of(&o, &picks), ["w0"]);
        // Five slots from there end at 2 : 6, the declared 1 : 3.
        let picks = choose(&o, 5, Scheduling::Weighted, None).unwrap();
        let on_w1 = picks.iter().filter(|&&w| w == 1).count();
        assert_eq!((5 - on_w1, on_w1 + 3), (2, 6), "{picks:?}");
    }

    #[test]
    fn round_robin_starts_each_placement_after_the_last() {
        let o = offers(&[(4, 1.0), (4, 1.0), (4, 1.0)]);
        let mut cursor: Option<String> = None;
        let mut firsts = Vec::new();
        for _ in 0..4 {
            let a = place(&job(&[1]), &o, Scheduling::RoundRobin, cursor.as_deref()).unwrap();
            firsts.push(a.executors[0].clone());
            cursor = Some(a.last_worker);
        }
        // Spread would start every one of them on w0 (a tie on free slots).
        assert_eq!(firsts, ["w0", "w1", "w2", "w0"]);
        // A wider job continues the rotation slot by slot, skipping full
        // workers, and wraps around.
        let o = offers(&[(4, 1.0), (0, 1.0), (4, 1.0)]);
        let picks = choose(&o, 4, Scheduling::RoundRobin, Some("w0")).unwrap();
        assert_eq!(workers_of(&o, &picks), ["w2", "w0", "w2", "w0"]);
        // A cursor naming a worker no longer offered keeps its place in
        // the order: after "w1" comes "w2".
        let o = offers(&[(4, 1.0), (4, 1.0)]);
        let o = vec![
            o[0].clone(),
            Offer {
                worker: "w2".into(),
                ..o[1].clone()
            },
        ];
        let picks = choose(&o, 1, Scheduling::RoundRobin, Some("w1")).unwrap();
        assert_eq!(workers_of(&o, &picks), ["w2"]);
        let picks = choose(&o, 1, Scheduling::RoundRobin, Some("w9")).unwrap();
        assert_eq!(workers_of(&o, &picks), ["w0"], "past the last: wraps");
    }

    #[test]
    fn least_loaded_orders_by_slot_share_then_measured_cpu() {
        // Share of slots in use, not their count: 2 of 8 is less than 1 of 2.
        let o = loaded(&[(1, 2, 0.0), (2, 8, 0.0)]);
        let picks = choose(&o, 1, Scheduling::LeastLoaded, None).unwrap();
        assert_eq!(workers_of(&o, &picks), ["w1"]);
        // Equal shares: the least CPU wins, whatever the offer order.
        let o = loaded(&[(1, 4, 0.9), (1, 4, 0.05), (1, 4, 0.3)]);
        let picks = choose(&o, 1, Scheduling::LeastLoaded, None).unwrap();
        assert_eq!(workers_of(&o, &picks), ["w1"]);
        // Slot share first: an idle-looking worker with more slots in use
        // (its executors just started and reported nothing yet) is not
        // preferred to a busy one with fewer.
        let o = loaded(&[(1, 4, 1.5), (3, 4, 0.0)]);
        let picks = choose(&o, 1, Scheduling::LeastLoaded, None).unwrap();
        assert_eq!(workers_of(&o, &picks), ["w0"]);
        // A wide job spreads as its own slots raise each worker's share.
        let o = loaded(&[(1, 4, 1.8), (1, 4, 0.1), (1, 4, 0.2)]);
        let picks = choose(&o, 3, Scheduling::LeastLoaded, None).unwrap();
        assert_eq!(workers_of(&o, &picks), ["w1", "w2", "w0"]);
    }

    /// A skewed set placed one job at a time, each job's measured CPU
    /// known before the next arrives (as when jobs come seconds apart):
    /// a heavy job (1.0 core) then four light ones (0.1 core each), on
    /// three workers of four slots. Returns the CPU per worker and the
    /// slots used per worker.
    fn skewed(strategy: Scheduling) -> (Vec<f64>, Vec<usize>) {
        let mut o = loaded(&[(0, 4, 0.0), (0, 4, 0.0), (0, 4, 0.0)]);
        let mut cursor: Option<String> = None;
        for cores in [1.0, 0.1, 0.1, 0.1, 0.1] {
            let a = place(&job(&[1]), &o, strategy, cursor.as_deref()).unwrap();
            let w = o.iter_mut().find(|w| w.worker == a.executors[0]).unwrap();
            w.free -= 1;
            w.cpu_cores += cores;
            cursor = Some(a.last_worker);
        }
        (
            o.iter().map(|w| w.cpu_cores).collect(),
            o.iter().map(|w| w.slots - w.free).collect(),
        )
    }

    #[test]
    fn a_skewed_set_of_jobs_per_strategy() {
        let round =
            |v: Vec<f64>| -> Vec<f64> { v.iter().map(|c| (c * 10.0).round() / 10.0).collect() };
        // Spread and weighted (equal capacities) break slot ties towards
        // the first worker: the heavy job's worker gets a light one too.
        let (cpu, slots) = skewed(Scheduling::Spread);
        assert_eq!((round(cpu), slots), (vec![1.1, 0.2, 0.1], vec![2, 2, 1]));
        let (cpu, slots) = skewed(Scheduling::Weighted);
        assert_eq!((round(cpu), slots), (vec![1.1, 0.2, 0.1], vec![2, 2, 1]));
        // Pack puts them all on the first worker (four slots), then the next.
        let (cpu, slots) = skewed(Scheduling::Pack);
        assert_eq!((round(cpu), slots), (vec![1.3, 0.1, 0.0], vec![4, 1, 0]));
        // Round-robin goes around: the same counts as spread here.
        let (cpu, slots) = skewed(Scheduling::RoundRobin);
        assert_eq!((round(cpu), slots), (vec![1.1, 0.2, 0.1], vec![2, 2, 1]));
        // Least-loaded sees the heavy job's CPU on slot ties and leaves
        // its worker alone.
        let (cpu, slots) = skewed(Scheduling::LeastLoaded);
        assert_eq!((round(cpu), slots), (vec![1.0, 0.2, 0.2], vec![1, 2, 2]));
    }

    #[test]
    fn too_few_slots_is_a_clear_error() {
        for strategy in [
            Scheduling::Spread,
            Scheduling::Pack,
            Scheduling::Weighted,
            Scheduling::RoundRobin,
            Scheduling::LeastLoaded,
        ] {
            let e = place(&job(&[3]), &offers(&[(1, 1.0), (1, 1.0)]), strategy, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("needs 3 slots and 2 are free"), "{e}");
        }
    }
}
