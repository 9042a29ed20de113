//! The manager loop: dead workers, attempt events turned into life-cycle
//! transitions, and starts of waiting jobs on the executors the scheduler
//! placed.

use sluice_protocol::api::{AttemptTls, JobException, MAX_EXCEPTIONS};

use super::*;

impl Manager {
    /// One round: dead workers, attempt events, starts of waiting jobs,
    /// then the autoscaler.
    pub fn tick(self: &Arc<Self>) {
        let mut inner = self.lock();
        let dead = inner.workers.expire(
            Instant::now(),
            self.config.heartbeat_timeout,
            self.config.dead_worker_retention,
        );
        for worker in dead {
            for job in jobs_on(&inner, &worker) {
                self.fail_attempt(
                    &mut inner,
                    &job,
                    format!("worker {worker} was lost"),
                    Retry::Backoff,
                );
            }
        }

        let ids: Vec<String> = inner.jobs.keys().cloned().collect();
        for id in &ids {
            let job = inner.jobs.get_mut(id).expect("listed");
            let Some(run) = &job.run else { continue };
            job.nodes = run.handle.metrics();
            let rows = run.handle.take_results();
            job.results.merge(rows);
            let events: Vec<AttemptEvent> = run.handle.events().try_iter().collect();
            for ev in events {
                if self.on_event(&mut inner, id, ev) {
                    break;
                }
            }
            if let Some(job) = inner.jobs.get_mut(id) {
                job.note_checkpoint();
            }
        }

        self.measure_cpu(&mut inner);
        let forgotten = self.forget_old_jobs(&mut inner);
        let now = Instant::now();
        let due: Vec<(String, JobDescription)> = inner
            .jobs
            .values()
            .filter(|j| j.record.life.waits_for_attempt(j.run.is_some()) && now >= j.not_before)
            .map(|j| (j.record.id.clone(), j.record.description.clone()))
            .collect();
        let used: Option<HashSet<String>> = (!forgotten.is_empty()).then(|| {
            inner
                .jobs
                .values()
                .map(|j| j.record.artifact.clone())
                .collect()
        });
        self.release(inner);
        for id in forgotten {
            if let Err(e) = self.meta.delete(&id) {
                warn!(job = %id, error = %e, "the record of a forgotten job stays on disk");
            }
        }
        if let Some(used) = used {
            match self.meta.remove_unused_artifacts(&used, ARTIFACT_GRACE) {
                Ok(removed) if !removed.is_empty() => {
                    info!(artifacts = ?removed, "removed binaries no kept job uses");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot remove unused binaries"),
            }
        }
        for (id, description) in due {
            self.try_start(&id, &description);
        }
        self.autoscale();
    }

    /// Applies one attempt event to job `id`; true when the attempt ended
    /// (later events of it mean nothing).
    pub(super) fn on_event(&self, inner: &mut Inner, id: &str, ev: AttemptEvent) -> bool {
        let Some(job) = inner.jobs.get_mut(id) else {
            return true;
        };
        match ev {
            AttemptEvent::Running => {
                if job.record.life.state == JobState::Scheduling {
                    info!(job = %id, attempt = job.record.life.attempt, "job running");
                }
                if let Err(e) = job.record.life.running() {
                    warn!(job = %id, error = %e, "running event ignored");
                }
                job.changed();
                false
            }
            AttemptEvent::Adopted => {
                info!(job = %id, attempt = job.record.life.attempt, "job running on under this leader");
                false
            }
            AttemptEvent::Finishing => {
                job.record.life.finishing();
                job.changed();
                false
            }
            AttemptEvent::Finished => {
                if let Some(run) = job.run.take() {
                    job.rejected_stale += run.handle.rejected_stale();
                    run.handle.cancel("the job finished");
                }
                job.note_checkpoint();
                let rescale = job.record.rescale.take();
                match job.record.life.attempt_ended(rescale.is_some()) {
                    Ok(JobState::Rescaling) => {
                        let r = rescale.expect("a rescale was pending");
                        // Stopped by the rescale's savepoint: the next
                        // attempt restores it at the new parallelism.
                        info!(job = %id, parallelism = r.parallelism, savepoint = %r.savepoint, "job stopped for a rescale");
                        job.record.parallelism = r.parallelism;
                        job.record.description = r.description;
                        job.nodes.clear();
                        job.not_before = Instant::now();
                        job.failed_at = None;
                    }
                    Ok(_) => info!(job = %id, "job finished"),
                    Err(e) => warn!(job = %id, error = %e, "finish event ignored"),
                }
                job.changed();
                true
            }
            AttemptEvent::Failed { error, retry } => {
                self.fail_attempt(inner, id, error, retry);
                true
            }
        }
    }

    /// Places and starts the next attempt of `id`: too few slots leaves it
    /// waiting; a start that fails otherwise (its checkpoints cannot be
    /// read, they belong to another job) is a failure of the job, which its
    /// restart policy answers.
    pub(super) fn try_start(&self, id: &str, description: &JobDescription) {
        // Placed first, so a job waiting for slots does not scan its
        // checkpoints every tick; the scan runs without the lock.
        let placeable = {
            let mut inner = self.lock();
            match self.assign(&inner, id) {
                Ok(_) => true,
                Err(e) => {
                    if let Some(job) = inner.jobs.get_mut(id) {
                        job.not_before = Instant::now() + Duration::from_millis(100);
                        let waiting = format!("waiting for slots: {e}");
                        if job.waiting.as_deref() != Some(&waiting) {
                            info!(job = %id, reason = %e, "job waits for slots");
                            job.waiting = Some(waiting);
                        }
                    }
                    false
                }
            }
        };
        if !placeable {
            return;
        }
        let start = CheckpointStart::find(description);
        let mut inner = self.lock();
        let started = start.and_then(|start| self.start_attempt(&mut inner, id, start));
        if let Err(e) = started {
            let still_waiting = inner
                .jobs
                .get(id)
                .is_some_and(|j| j.record.life.waits_for_attempt(j.run.is_some()));
            if still_waiting {
                warn!(job = %id, error = %e, "the job's attempt could not start");
                self.after_failure(
                    &mut inner,
                    id,
                    format!("starting an attempt: {e}"),
                    Retry::Backoff,
                );
            }
        }
        self.release(inner);
    }

    /// Forgets the oldest ended jobs beyond `retained_jobs` (whose newest
    /// record is on disk, so no write in flight brings one back); returns
    /// their ids, whose records the caller deletes after the lock.
    pub(super) fn forget_old_jobs(&self, inner: &mut Inner) -> Vec<String> {
        let mut ended: Vec<(i64, String)> = inner
            .jobs
            .values()
            .filter(|j| j.record.life.state.is_terminal())
            .map(|j| (j.record.updated_ms, j.record.id.clone()))
            .collect();
        let keep = self.config.retained_jobs.max(1);
        if ended.len() <= keep {
            return Vec::new();
        }
        ended.sort();
        let excess = ended.len() - keep;
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let mut forgotten = Vec::new();
        // One not written yet waits for a later tick.
        for (_, id) in ended.into_iter().take(excess) {
            let saved = inner
                .jobs
                .get(&id)
                .is_some_and(|j| !j.unsaved && written.get(&id).copied().unwrap_or(0) >= j.version);
            if saved {
                inner.jobs.remove(&id);
                info!(job = %id, "forgetting an old ended job");
                forgotten.push(id);
            }
        }
        forgotten
    }

    /// Ends the current attempt of `id` after a failure and decides what next.
    pub(super) fn fail_attempt(&self, inner: &mut Inner, id: &str, error: String, retry: Retry) {
        let Some(job) = inner.jobs.get_mut(id) else {
            return;
        };
        let Some(run) = job.run.take() else { return };
        run.handle.cancel(&error);
        if job.record.rescale.take().is_some() {
            warn!(job = %id, "the attempt failed during a rescale; restarting at the old parallelism");
        }
        job.rejected_stale += run.handle.rejected_stale();
        job.note_checkpoint();
        // The next attempt only goes to workers heard from since: one
        // whose executor just vanished is likely dead, though not yet
        // declared so.
        job.failed_at = Some(Instant::now());
        self.after_failure(inner, id, error, retry);
    }

    /// What the job's life cycle makes of a failure of its attempt or start.
    pub(super) fn after_failure(&self, inner: &mut Inner, id: &str, error: String, retry: Retry) {
        let Some(job) = inner.jobs.get_mut(id) else {
            return;
        };
        let attempt = job.record.life.attempt;
        let outcome = match job.record.life.failed(error.clone(), retry) {
            AfterFailure::Restart { delay_ms } => {
                warn!(job = %id, attempt, error = %error, restarts = job.record.life.restarts,
                    delay_ms, "attempt failed; restarting from the latest checkpoint");
                job.not_before = Instant::now() + Duration::from_millis(delay_ms);
                format!("restart in {delay_ms} ms")
            }
            AfterFailure::Failed => {
                warn!(job = %id, error = ?job.record.life.error, "job failed");
                "failed".to_string()
            }
            AfterFailure::Ignored => return,
        };
        let history = &mut job.record.exceptions;
        history.push(JobException {
            time_ms: now_ms(),
            attempt,
            error,
            outcome,
        });
        let excess = history.len().saturating_sub(MAX_EXCEPTIONS);
        history.drain(..excess);
        job.changed();
    }

    /// Reads every running executor's reported CPU time into the meter
    /// (every [`SAMPLE_EVERY`](crate::coordinator::load::SAMPLE_EVERY),
    /// not every tick: a reading copies the attempt's figures).
    fn measure_cpu(&self, inner: &mut Inner) {
        let now = Instant::now();
        if !inner.cpu.due(now) {
            return;
        }
        let mut readings = Vec::new();
        for job in inner.jobs.values() {
            let Some(run) = &job.run else { continue };
            let attempt = job.record.life.attempt;
            for p in run.handle.figures().1 {
                if let Some((worker, _)) = run.launches.get(p.executor) {
                    let key = (job.record.id.clone(), attempt, p.executor);
                    readings.push((key, worker.clone(), p.process.cpu_ms));
                }
            }
        }
        inner.cpu.sample(now, readings);
    }

    /// Where the next attempt of `id` would run, on the workers alive now
    /// (and, after a failure, heard from since).
    pub(super) fn assign(&self, inner: &Inner, id: &str) -> Result<Assignment> {
        let job = inner.jobs.get(id).ok_or_else(|| not_found(id))?;
        let cores = inner.cpu.cores();
        let mut offers: Vec<Offer> = inner
            .workers
            .iter()
            .filter(|(_, w)| w.alive && job.failed_at.is_none_or(|t| w.last_heartbeat > t))
            .map(|(wid, w)| Offer {
                worker: wid.clone(),
                free: w.slots.saturating_sub(used_slots(inner, wid)),
                slots: w.slots,
                capacity: w.capacity,
                cpu_cores: cores.get(wid).copied().unwrap_or(0.0),
            })
            .filter(|o| o.free > 0)
            .collect();
        offers.sort_by(|a, b| a.worker.cmp(&b.worker));
        let assignment = place(
            &job.record.description,
            &offers,
            self.config.scheduling,
            inner.rotation.as_deref(),
        )?;
        Ok(assignment)
    }

    /// Places and starts the next attempt of `id` from `start` (its
    /// checkpoints, scanned without the lock), unless the job no longer
    /// waits for one (cancelled meanwhile, say).
    pub(super) fn start_attempt(
        &self,
        inner: &mut Inner,
        id: &str,
        start: Option<CheckpointStart>,
    ) -> Result<()> {
        if !inner
            .jobs
            .get(id)
            .is_some_and(|j| j.record.life.waits_for_attempt(j.run.is_some()))
        {
            return Ok(());
        }
        let assignment = self.assign(inner, id)?;
        let secret = attempt_secret()?;

        let job = inner.jobs.get_mut(id).expect("checked above");
        let mut life = job.record.life.clone();
        let attempt = life
            .schedule(start.as_ref().map_or(0, |s| s.min_attempt))
            .map_err(|e| Error::Internal(format!("scheduling {id}: {e}")))?;
        // The attempt's own certificate: it names this attempt only, so
        // the job code holding it can pass for nothing else.
        let tls = match &self.signer {
            Some(signer) => {
                let issued =
                    signer.attempt(id, attempt, crate::coordinator::ATTEMPT_CERT_VALIDITY)?;
                Some(AttemptTls {
                    ca: signer.ca_cert().to_string(),
                    cert: issued.cert,
                    key: issued.key,
                })
            }
            None => None,
        };
        let restore = start
            .as_ref()
            .and_then(|s| s.restore.as_ref().map(|l| l.to_string()));
        let restored_from = start.as_ref().and_then(|s| s.restored_from);
        let record = &job.record;
        let handle = self.control.start_attempt(AttemptConfig {
            job_id: id.to_string(),
            attempt,
            description: record.description.clone(),
            placement: assignment.tasks.clone(),
            executors: assignment.executors.len(),
            checkpoint: start.map(|s| s.setup),
            stats: job.stats.clone(),
            secret: secret.clone(),
            adopt: None,
        })?;
        {
            let mut stats = job.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.restored_from = restored_from;
            stats.restarts = life.restarts;
        }
        let launches: Vec<(String, ExecutorLaunch)> = assignment
            .executors
            .iter()
            .enumerate()
            .map(|(e, worker)| {
                let host = inner
                    .workers
                    .get(worker)
                    .map_or("127.0.0.1".into(), |w| w.host.clone());
                (
                    worker.clone(),
                    ExecutorLaunch {
                        artifact: record.artifact.clone(),
                        args: record.args.clone(),
                        workdir: record.workdir.clone(),
                        spec: ExecutorSpec {
                            protocol: sluice_protocol::PROTOCOL_VERSION,
                            job_id: id.to_string(),
                            attempt,
                            term: self.control.term(),
                            executor: e,
                            executors: assignment.executors.len(),
                            control: self.control_addr.clone(),
                            tasks: assignment
                                .tasks
                                .iter()
                                .filter(|(_, x)| *x == e)
                                .map(|(k, _)| *k)
                                .collect(),
                            bind_host: host,
                            parallelism: record.parallelism,
                            restore: restore.clone(),
                            secret: secret.clone(),
                            tls: tls.clone(),
                            rejoin_grace_ms: self.config.rejoin_grace.as_millis() as u64,
                        },
                    },
                )
            })
            .collect();
        let placement = assignment
            .tasks
            .iter()
            .map(|(task, e)| Placement {
                task: *task,
                worker: assignment.executors[*e].clone(),
                executor: *e,
            })
            .collect();
        info!(job = %id, attempt, term = self.control.term(), executors = ?assignment.executors,
            slots = ?assignment.slots, scheduling = self.config.scheduling.name(),
            worker_cpu = ?inner.cpu.cores(), restore = ?restore, "starting attempt");
        let run = adopt::run_record(
            attempt,
            self.control.term(),
            &secret,
            &assignment.tasks,
            &launches,
            &assignment.slots,
        );
        let job = inner.jobs.get_mut(id).expect("checked above");
        job.record.life = life;
        job.record.run = Some(run);
        // Durable before a heartbeat can hand the attempt to a worker.
        job.changed();
        job.unsaved = false;
        if let Err(e) = self.write(job.version, &job.record) {
            handle.cancel("its attempt number could not be recorded");
            return Err(e);
        }
        job.failed_at = None;
        job.waiting = None;
        // Counters are per attempt: the new executors report from zero.
        job.nodes.clear();
        // Round-robin continues after this attempt's last slot (only once
        // it started: a placement that came to nothing moves nothing).
        inner.rotation = Some(assignment.last_worker.clone());
        let job = inner.jobs.get_mut(id).expect("checked above");
        job.run = Some(Run {
            handle,
            placement,
            slots: assignment
                .executors
                .iter()
                .cloned()
                .zip(assignment.slots.iter().copied())
                .collect(),
            launches,
        });
        Ok(())
    }
}

/// The jobs whose running attempt has executors on `worker`.
pub(super) fn jobs_on(inner: &Inner, worker: &str) -> Vec<String> {
    inner
        .jobs
        .values()
        .filter(|j| j.run.as_ref().is_some_and(|r| r.slots.contains_key(worker)))
        .map(|j| j.record.id.clone())
        .collect()
}

pub(super) fn used_slots(inner: &Inner, worker: &str) -> usize {
    inner
        .jobs
        .values()
        .filter_map(|j| j.run.as_ref())
        .filter_map(|r| r.slots.get(worker))
        .sum()
}
