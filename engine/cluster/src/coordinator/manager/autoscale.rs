//! The autoscaler's shell around [`autoscaler`](crate::coordinator::autoscaler)'s
//! pure decisions: each tick it samples the figures of every autoscaled
//! job that is RUNNING (not saving, rescaling, finishing or restarting),
//! hands them to the job's [`Autoscaler`](crate::coordinator::autoscaler::Autoscaler)
//! with whether a checkpoint is in flight, records and logs what it
//! decides, and rescales through [`Manager::rescale`] — the path `sluice
//! rescale` takes: a savepoint with stop, then the next attempt restores it
//! at the new parallelism. Only the leader has a manager, so only the
//! leader's autoscaler acts.

use sluice_protocol::api::{AutoscaleDecision, MAX_AUTOSCALE_DECISIONS};

use super::*;
use crate::coordinator::autoscaler::{plan_at, Sample};

/// How often an autoscaled job is sampled (executors report every 250 ms).
const SAMPLE_EVERY_MS: i64 = 500;

impl Manager {
    /// Samples the autoscaled jobs that are due and starts the rescales
    /// their autoscalers decided, each on a thread of its own (a rescale
    /// waits for its savepoint).
    pub(super) fn autoscale(self: &Arc<Self>) {
        let settings = self.config.autoscale;
        let now = now_ms();
        let mut decided: Vec<(String, AutoscaleDecision)> = Vec::new();
        let mut inner = self.lock();
        for (id, job) in inner.jobs.iter_mut() {
            if job.autoscaler.is_none()
                || job.record.life.state != JobState::Running
                || job.record.rescale.is_some()
                || now - job.autoscaled_ms < SAMPLE_EVERY_MS
            {
                continue;
            }
            let Some(run) = &job.run else { continue };
            job.autoscaled_ms = now;
            let (subtasks, _) = run.handle.figures();
            let sample = Sample::of(now, &job.record.description.vertices, &subtasks);
            let may_act = !run.handle.checkpoint_in_flight();
            let from = job.record.parallelism;
            let attempt = job.record.life.attempt;
            let scaler = job.autoscaler.as_mut().expect("checked above");
            let Some(rec) = scaler.observe(&settings, now, attempt, from, sample, may_act) else {
                continue;
            };
            let decision = rec.decision(now, from, settings.target_utilization);
            info!(
                job = %id,
                from,
                to = rec.parallelism,
                vertex = rec.vertex,
                busy_ms_per_s = rec.busy_ms_per_s,
                input_rate = rec.input_rate,
                true_rate = rec.true_rate,
                target = settings.target_utilization,
                reason = %decision.reason,
                "autoscaler: rescaling"
            );
            if let Some(status) = job.record.autoscaler.as_mut() {
                push_decision(&mut status.decisions, decision.clone());
                job.changed();
            }
            decided.push((id.clone(), decision));
        }
        self.release(inner);
        for (id, decision) in decided {
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("autoscaler-rescale".into())
                .spawn(move || {
                    if let Err(e) = me.autoscaled_rescale(&id, decision.to) {
                        warn!(job = %id, to = decision.to, error = %e, "autoscaler: the rescale did not happen");
                        me.note_autoscale_error(&id, decision.time_ms, e.to_string());
                    }
                });
            if let Err(e) = spawned {
                warn!(error = %e, "autoscaler: cannot start a rescale thread");
            }
        }
    }

    /// Rescales job `id` to `parallelism` with the plan the coordinator
    /// derives from its current one, as a user's rescale would.
    fn autoscaled_rescale(&self, id: &str, parallelism: usize) -> Result<Rescaled> {
        let description = {
            let inner = self.lock();
            let job = inner.jobs.get(id).ok_or_else(|| not_found(id))?;
            plan_at(&job.record.description, parallelism).ok_or_else(|| {
                Error::Config(format!(
                    "job {id} has a vertex of its own parallelism; it cannot be planned at {parallelism} here"
                ))
            })?
        };
        self.rescale(
            id,
            RescaleRequest {
                parallelism,
                description,
            },
        )
    }

    /// Notes on the decision made at `time_ms` why its rescale did not
    /// happen.
    fn note_autoscale_error(&self, id: &str, time_ms: i64, error: String) {
        let mut inner = self.lock();
        if let Some(job) = inner.jobs.get_mut(id) {
            let decision = job
                .record
                .autoscaler
                .as_mut()
                .and_then(|s| s.decisions.iter_mut().rev().find(|d| d.time_ms == time_ms));
            if let Some(d) = decision {
                d.error = Some(error);
                job.changed();
            }
        }
        self.release(inner);
    }
}

/// Appends `decision`, keeping the newest [`MAX_AUTOSCALE_DECISIONS`].
fn push_decision(decisions: &mut Vec<AutoscaleDecision>, decision: AutoscaleDecision) {
    decisions.push(decision);
    if decisions.len() > MAX_AUTOSCALE_DECISIONS {
        let excess = decisions.len() - MAX_AUTOSCALE_DECISIONS;
        decisions.drain(..excess);
    }
}
