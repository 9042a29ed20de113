//! A new leader's adoption of attempts whose executors still run: from
//! the run record the log holds, it registers the attempt with its own
//! control server (taking only the executors' rejoining hellos) and lists
//! the executors to their workers under its own control address and term,
//! which the workers relay to them. Only a job that cannot be adopted (no
//! run record, a rescale under way, unreadable checkpoints) is restarted,
//! as it is when its executors do not all rejoin within the grace.

use sluice_engine::checkpoint::coordinator::TaskKey;
use sluice_engine::checkpoint::CheckpointStats;

use super::*;
use crate::coordinator::meta::{RunExecutor, RunRecord};

/// The run of `record`'s attempt, adopted: `None` when it cannot be (the
/// job then restarts). On success the record names this leader's term in
/// its run record and must be written before any heartbeat answer lists
/// the executors.
pub(super) fn adopt(
    control: &ControlServer,
    control_addr: &str,
    grace: Duration,
    record: &mut JobRecord,
    stats: &Arc<Mutex<CheckpointStats>>,
) -> Option<Run> {
    if grace.is_zero() || record.rescale.is_some() || !record.life.may_adopt() {
        return None;
    }
    let run = record
        .run
        .as_ref()
        .filter(|r| r.attempt == record.life.attempt)?;
    let mut placement = Vec::with_capacity(run.tasks.len());
    for (task, e) in &run.tasks {
        let Some(x) = run.executors.get(*e) else {
            warn!(job = %record.id, "the run record places a subtask on no executor; restarting the job");
            return None;
        };
        placement.push(Placement {
            task: *task,
            worker: x.worker.clone(),
            executor: *e,
        });
    }
    let checkpoint = match CheckpointStart::find(&record.description) {
        Ok(start) => start.map(|s| s.setup),
        Err(e) => {
            warn!(job = %record.id, error = %e, "cannot read the job's checkpoints to adopt its attempt; restarting it");
            return None;
        }
    };
    let term = control.term();
    let handle = control
        .start_attempt(AttemptConfig {
            job_id: record.id.clone(),
            attempt: run.attempt,
            description: record.description.clone(),
            placement: run.tasks.clone(),
            executors: run.executors.len(),
            checkpoint,
            stats: stats.clone(),
            secret: run.secret.clone(),
            adopt: Some(grace),
        })
        .inspect_err(|e| warn!(job = %record.id, error = %e, "cannot adopt the job's attempt; restarting it"))
        .ok()?;
    let launches = run
        .executors
        .iter()
        .map(|x| {
            let mut launch = x.launch.clone();
            launch.spec.control = control_addr.to_string();
            launch.spec.term = term;
            (x.worker.clone(), launch)
        })
        .collect();
    let slots = run
        .executors
        .iter()
        .map(|x| (x.worker.clone(), x.slots))
        .collect();
    info!(job = %record.id, attempt = run.attempt, from_term = run.term, term,
        "adopting the running attempt of the previous leader");
    if let Some(run) = record.run.as_mut() {
        run.term = term;
    }
    record.life = record.life.clone().adopted();
    Some(Run {
        handle,
        placement,
        launches,
        slots,
    })
}

/// The run record of an attempt being started: its launches without their
/// TLS keys (executors that rejoin hold theirs).
pub(super) fn run_record(
    attempt: u64,
    term: u64,
    secret: &str,
    tasks: &[(TaskKey, usize)],
    launches: &[(String, ExecutorLaunch)],
    slots: &[usize],
) -> RunRecord {
    RunRecord {
        attempt,
        term,
        secret: secret.to_string(),
        tasks: tasks.to_vec(),
        executors: launches
            .iter()
            .zip(slots)
            .map(|((worker, launch), slots)| {
                let mut launch = launch.clone();
                launch.spec.tls = None;
                RunExecutor {
                    worker: worker.clone(),
                    slots: *slots,
                    launch,
                }
            })
            .collect(),
    }
}
