//! What users ask of a job: submit it, cancel it, take a savepoint,
//! rescale it. Each checks the request against the job's state under the
//! lock and writes the records it changed after releasing it.

use sluice_protocol::api::{AutoscaleRange, AutoscalerStatus};

use super::*;

impl Manager {
    /// Accepts a job whose binary was uploaded.
    pub fn submit(&self, req: SubmitJob) -> Result<String> {
        if !is_sha256(&req.artifact) {
            return Err(Error::Config(format!(
                "{:?} is not an artifact: name a binary by the lowercase hex SHA-256 it was uploaded under",
                req.artifact
            )));
        }
        // Verified (hashed again only if its file changed since): a job
        // must not be accepted for a binary that can never be served.
        match self.meta.artifacts().open_verified(&req.artifact) {
            Ok(_) => {}
            Err(ArtifactError::NotFound(_)) => {
                return Err(Error::Config(format!(
                    "artifact {} was not uploaded (PUT /api/v1/artifacts/{{sha256}} first)",
                    req.artifact
                )))
            }
            Err(ArtifactError::Io(e)) => return Err(e),
            Err(e) => return Err(Error::Config(e.to_string())),
        }
        // In a Raft group, on a majority of coordinators (a new leader
        // must be able to serve it) before the job is accepted; an upload
        // pushes it already, this covers one the client did not send
        // again because this coordinator had it.
        if let Some(replica) = self.meta.replica() {
            if !replica.read(|m| m.artifacts.contains(&req.artifact)) {
                replica
                    .runtime()
                    .block_on(replica.replicate_artifact(self.meta.artifacts(), &req.artifact))?;
            }
        }
        req.description
            .check()
            .map_err(|e| Error::Config(e.to_string()))?;
        if req.parallelism == Some(0) {
            return Err(Error::Config("the parallelism must be at least 1".into()));
        }
        let parallelism = req.parallelism.unwrap_or(req.description.parallelism);
        if let Some(range) = req.autoscale {
            check_autoscale(&req.description, parallelism, range)?;
        }
        // Relative locations mean the submitter's directory, for the
        // coordinator as for the executors.
        let mut req = req;
        if let Some(c) = &mut req.description.checkpoint {
            c.dir = resolve(&c.dir, req.workdir.as_deref()).to_string();
            if let Some(r) = &mut c.restore_from {
                *r = resolve(r, req.workdir.as_deref()).to_string();
            }
        }
        let id = {
            let mut inner = self.lock();
            let ids = IdCounters {
                next_job: inner.ids.next_job + 1,
                ..inner.ids
            };
            // Durable before the id is used: never handed out twice.
            self.meta.save_ids(&ids)?;
            let id = format!("job-{}", inner.ids.next_job);
            inner.ids = ids;
            id
        };
        let now = now_ms();
        let life = Lifecycle::new(
            req.description.restart,
            req.description.checkpoint.is_some(),
        );
        let record = JobRecord {
            id: id.clone(),
            life,
            artifact: req.artifact,
            args: req.args,
            parallelism,
            workdir: req.workdir,
            description: req.description,
            submitted_ms: now,
            updated_ms: now,
            latest_checkpoint: None,
            rescale: None,
            exceptions: Vec::new(),
            autoscaler: req.autoscale.map(|r| AutoscalerStatus {
                min: r.min,
                max: r.max,
                decisions: Vec::new(),
                pending: None,
            }),
            run: None,
        };
        // Written before the job is visible, and without the lock: the
        // write waits for the disk.
        self.meta.save(&record)?;
        info!(job = %id, name = %record.description.name, slots = record.description.slots(),
            autoscale = ?req.autoscale.map(|r| r.to_string()), "job submitted");
        self.lock().jobs.insert(id.clone(), Job::new(record));
        Ok(id)
    }

    /// Cancels a job that has not ended.
    pub fn cancel(&self, id: &str) -> Result<JobStatus> {
        let mut inner = self.lock();
        let job = inner.jobs.get_mut(id).ok_or_else(|| not_found(id))?;
        job.record
            .life
            .cancel()
            .map_err(|e| Error::Config(format!("cannot cancel {id}: {e}")))?;
        if let Some(run) = job.run.take() {
            run.handle.cancel("cancelled by a user");
            job.rejected_stale += run.handle.rejected_stale();
        }
        job.record.rescale = None;
        job.changed();
        info!(job = %id, "job cancelled");
        let status = job.status();
        self.release_reporting(inner, Some(id)).map_err(|e| {
            Error::Internal(format!(
                "the cancellation of {id} could not be recorded, so it may not hold: {e}"
            ))
        })?;
        Ok(status)
    }

    /// Takes a savepoint of a running job (the job is SAVEPOINTING while
    /// it is in flight). Requests are served in the order they came.
    pub fn savepoint(&self, id: &str, request: SavepointRequest) -> Result<SavepointTaken> {
        let (handle, dir) = {
            let mut inner = self.lock();
            let job = inner.jobs.get_mut(id).ok_or_else(|| not_found(id))?;
            if job.record.description.checkpoint.is_none() {
                return Err(Error::Config(format!(
                    "job {id} does not checkpoint, so it cannot take savepoints"
                )));
            }
            let handle = match &job.run {
                Some(run) => run.handle.clone(),
                None => {
                    return Err(Error::Config(format!(
                        "job {id} is {}; only a running job can take a savepoint",
                        job.record.life.state.name()
                    )))
                }
            };
            job.record
                .life
                .savepoint_requested()
                .map_err(|e| Error::Config(format!("no savepoint of {id}: {e}")))?;
            job.changed();
            let dir = resolve(&request.dir, job.record.workdir.as_deref());
            self.release(inner);
            (handle, dir)
        };
        let taken = handle.savepoint(dir, request.stop);
        let mut inner = self.lock();
        if let Some(job) = inner.jobs.get_mut(id) {
            if job
                .run
                .as_ref()
                .is_some_and(|r| r.handle.attempt() == handle.attempt())
            {
                job.record.life.savepoint_answered();
                job.changed();
            }
        }
        self.release(inner);
        Ok(SavepointTaken {
            location: taken?.to_string(),
        })
    }

    /// Stops job `id` with a savepoint and runs it on from there with
    /// `req`'s plan; returns the savepoint once it is taken. The switch
    /// happens when the stopped attempt ends ([`Manager::tick`]); if the
    /// attempt fails first, the job restarts at its old parallelism and
    /// this returns the error.
    pub fn rescale(&self, id: &str, req: RescaleRequest) -> Result<Rescaled> {
        let (handle, location) = {
            let mut inner = self.lock();
            let live_slots: usize = inner
                .workers
                .iter()
                .filter(|(_, w)| w.alive)
                .map(|(_, w)| w.slots)
                .sum();
            let job = inner.jobs.get_mut(id).ok_or_else(|| not_found(id))?;
            let Some(run) = &job.run else {
                return Err(Error::Config(format!(
                    "job {id} is {}; only a running job can be rescaled",
                    job.record.life.state.name()
                )));
            };
            let handle = run.handle.clone();
            let mut description = req.description;
            same_operators(&job.record.description, &description)?;
            description
                .check()
                .map_err(|e| Error::Config(e.to_string()))?;
            if req.parallelism == 0 {
                return Err(Error::Config("the parallelism must be at least 1".into()));
            }
            if description.slots() > live_slots {
                return Err(Error::Config(format!(
                    "the job would need {} slots; the live workers offer {live_slots}",
                    description.slots()
                )));
            }
            job.record
                .life
                .rescale_requested()
                .map_err(|e| Error::Config(format!("cannot rescale {id}: {e}")))?;
            let checkpoint = job
                .record
                .description
                .checkpoint
                .clone()
                .expect("the life cycle refuses a rescale of a job without checkpoints");
            // The checkpoint settings stay the job's (the plan was
            // described in another directory, perhaps).
            description.checkpoint = Some(checkpoint.clone());
            let savepoint = format!(
                "{}/rescale-a{}-{}",
                checkpoint.dir.trim_end_matches('/'),
                job.record.life.attempt,
                now_ms()
            );
            // Durable before the savepoint is asked for (written below).
            job.record.rescale = Some(PendingRescale {
                parallelism: req.parallelism,
                description,
                savepoint: savepoint.clone(),
            });
            job.changed();
            info!(job = %id, parallelism = req.parallelism, %savepoint, "rescale: taking a savepoint and stopping");
            self.release(inner);
            (handle, Location::from(savepoint.as_str()))
        };
        // The checkpoint coordinator pins the savepoint before taking it,
        // so whatever restarts the job next resumes from it.
        match handle.savepoint(location, true) {
            Ok(taken) => Ok(Rescaled {
                savepoint: taken.to_string(),
                parallelism: req.parallelism,
            }),
            Err(e) => {
                let mut inner = self.lock();
                if let Some(job) = inner.jobs.get_mut(id) {
                    if job
                        .run
                        .as_ref()
                        .is_some_and(|r| r.handle.attempt() == handle.attempt())
                    {
                        job.record.rescale = None;
                        job.record.life.rescale_abandoned();
                        job.changed();
                    }
                }
                self.release(inner);
                Err(e)
            }
        }
    }
}

/// Refuses an autoscale range the job cannot be rescaled within: one
/// that leaves out the parallelism it starts at, exceeds its key groups,
/// or a plan with a vertex of its own parallelism (the coordinator plans
/// the job at another parallelism itself, which only a plan whose
/// vertices all follow the job's parallelism allows).
pub(super) fn check_autoscale(
    d: &JobDescription,
    parallelism: usize,
    range: AutoscaleRange,
) -> Result<()> {
    if range.min == 0 || range.min > range.max {
        return Err(Error::Config(format!(
            "autoscale range {range}: expected 1 <= MIN <= MAX"
        )));
    }
    if range.max > d.max_parallelism {
        return Err(Error::Config(format!(
            "autoscale range {range}: the job has {} key groups, so at most {} subtasks per vertex",
            d.max_parallelism, d.max_parallelism
        )));
    }
    if !(range.min..=range.max).contains(&parallelism) {
        return Err(Error::Config(format!(
            "the job starts at parallelism {parallelism}, outside its autoscale range {range}"
        )));
    }
    if d.checkpoint.is_none() {
        return Err(Error::Config(
            "an autoscaled job must checkpoint: it is rescaled through a savepoint".into(),
        ));
    }
    if let Some(v) = d.vertices.iter().find(|v| v.parallelism != d.parallelism) {
        return Err(Error::Config(format!(
            "vertex '{}' runs at parallelism {} of its own, not the job's {}: the autoscaler \
             rescales jobs whose vertices all follow the job's parallelism",
            v.name, v.parallelism, d.parallelism
        )));
    }
    Ok(())
}

/// Refuses a plan for a rescale that is not the running one's operators.
pub(super) fn same_operators(running: &JobDescription, new: &JobDescription) -> Result<()> {
    let nodes = |d: &JobDescription| {
        let mut n: Vec<(usize, String)> = d.vertices.iter().flat_map(|v| v.nodes.clone()).collect();
        n.sort();
        n
    };
    if running.name != new.name
        || running.max_parallelism != new.max_parallelism
        || running.graph_nodes != new.graph_nodes
        || nodes(running) != nodes(new)
    {
        return Err(Error::Config(format!(
            "the plan to rescale to is not job '{}' ({} operators, {} key groups): \
             it is '{}' with {} operators and {} key groups",
            running.name,
            running.graph_nodes,
            running.max_parallelism,
            new.name,
            new.graph_nodes,
            new.max_parallelism
        )));
    }
    Ok(())
}

/// A location as given by the job: relative directories are relative to
/// the submitter's working directory.
pub(super) fn resolve(dir: &str, workdir: Option<&str>) -> Location {
    let location = Location::from(dir);
    match (location.local_path(), workdir) {
        (Some(p), Some(w)) if p.is_relative() => Location::from(Path::new(w).join(p)),
        _ => location,
    }
}
