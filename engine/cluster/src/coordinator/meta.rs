//! Durable metadata of the coordinator: one JSON file per job under
//! `DATA_DIR/jobs/` and the id counters in `DATA_DIR/ids.json`, each
//! replaced atomically (write, sync, rename) on every change, and the
//! shipped binaries under `DATA_DIR/artifacts/<sha256>`. A restarted
//! coordinator reads the jobs back and resumes the ones that had not ended
//! from their latest checkpoint; ids continue from the counters, so no id
//! is ever handed out twice, even for a job forgotten since. The binaries
//! are the [`ArtifactStore`]'s.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::warn;

use sluice_engine::error::{Error, Result};
use sluice_protocol::api::JobDescription;

use super::artifacts::{ArtifactLimits, ArtifactStore};
use super::lifecycle::Lifecycle;
use super::raft::{Command, Replica};

/// What survives a coordinator restart of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// State, attempt, restarts, last error and restart policy.
    #[serde(flatten)]
    pub life: Lifecycle,
    /// SHA-256 of the binary.
    pub artifact: String,
    /// Arguments of the binary.
    pub args: Vec<String>,
    /// Submitted parallelism.
    pub parallelism: usize,
    /// Working directory of the executors.
    pub workdir: Option<String>,
    /// The job's plan.
    pub description: JobDescription,
    /// Submission time, ms since the epoch.
    pub submitted_ms: i64,
    /// Last change, ms since the epoch.
    pub updated_ms: i64,
    /// Latest completed checkpoint seen.
    pub latest_checkpoint: Option<u64>,
    /// A rescale whose stop-with-savepoint was asked for: written before
    /// the savepoint, so a coordinator that takes over before the switch
    /// still makes it.
    pub rescale: Option<PendingRescale>,
    /// The newest failures ([`sluice_protocol::api::MAX_EXCEPTIONS`]).
    #[serde(default)]
    pub exceptions: Vec<sluice_protocol::api::JobException>,
    /// The autoscaler of a job submitted with a range: the range and its
    /// newest decisions (absent in records of jobs without one, and of
    /// releases before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<sluice_protocol::api::AutoscalerStatus>,
    /// The attempt started last, as a new leader needs it to adopt the
    /// attempt's running executors instead of restarting the job (absent
    /// in records of releases before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunRecord>,
}

/// An attempt as the log keeps it for the next leader: where it runs and
/// what its executors prove themselves with. The attempt's secret is in
/// it (coordinators' disks only); its TLS key is not (executors that
/// rejoin hold theirs).
#[derive(Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Its number.
    pub attempt: u64,
    /// The term of the leader serving it: a completion asked under an
    /// older term is refused (a deposed leader's).
    pub term: u64,
    /// The attempt's secret.
    pub secret: String,
    /// The executor of every subtask.
    pub tasks: Vec<(sluice_protocol::ids::TaskKey, usize)>,
    /// Per executor: its worker, the slots it takes there, its launch.
    pub executors: Vec<RunExecutor>,
}

impl std::fmt::Debug for RunRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRecord")
            .field("attempt", &self.attempt)
            .field("term", &self.term)
            .field("executors", &self.executors.len())
            .finish_non_exhaustive()
    }
}

/// One executor of a [`RunRecord`].
#[derive(Clone, Serialize, Deserialize)]
pub struct RunExecutor {
    /// The worker running it.
    pub worker: String,
    /// Slots it takes there.
    pub slots: usize,
    /// What the worker was told to run.
    pub launch: sluice_protocol::api::ExecutorLaunch,
}

/// The next number of each kind of id. Job ids are never reused, across
/// restarts and after a job is forgotten; worker ids are numbered apart
/// from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdCounters {
    /// The next job is `job-{next_job}`.
    pub next_job: u64,
    /// The next new worker is `worker-{next_worker}`.
    pub next_worker: u64,
}

impl Default for IdCounters {
    fn default() -> Self {
        IdCounters {
            next_job: 1,
            next_worker: 1,
        }
    }
}

/// What a job runs as once its rescale savepoint stopped it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRescale {
    /// The new parallelism.
    pub parallelism: usize,
    /// The plan at it.
    pub description: JobDescription,
    /// Where the savepoint goes.
    pub savepoint: String,
}

/// The coordinator's data directory, or, in a Raft group, the group's
/// log: the same calls write a file or commit an entry.
#[derive(Clone)]
pub struct MetaStore {
    root: PathBuf,
    artifacts: Arc<ArtifactStore>,
    replica: Option<Replica>,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore")
            .field("root", &self.root)
            .field("replicated", &self.replica.is_some())
            .finish()
    }
}

impl MetaStore {
    /// Opens (creating) `root`, with the default artifact limits.
    pub fn open(root: &Path) -> Result<Self> {
        MetaStore::open_limited(root, ArtifactLimits::default())
    }

    /// Opens (creating) `root`; its artifact store takes at most `limits`.
    pub fn open_limited(root: &Path, limits: ArtifactLimits) -> Result<Self> {
        fs::create_dir_all(root.join("jobs"))
            .map_err(|e| Error::io(format!("creating {}", root.join("jobs").display()), e))?;
        let artifacts = Arc::new(ArtifactStore::open(&root.join("artifacts"), limits)?);
        Ok(MetaStore {
            root: root.to_path_buf(),
            artifacts,
            replica: None,
        })
    }

    /// The metadata of a Raft group's member: records and counters are
    /// entries of the group's log (committed before a call returns), read
    /// back from its state machine; binaries are in `artifacts`.
    pub fn replicated(root: &Path, artifacts: Arc<ArtifactStore>, replica: Replica) -> Self {
        MetaStore {
            root: root.to_path_buf(),
            artifacts,
            replica: Some(replica),
        }
    }

    /// Moves the job records and id counters a coordinator of an earlier
    /// release kept as files in the data directory into the Raft log, if
    /// the log holds no job and no id yet (a group never takes files over
    /// its own metadata); the files are renamed `jobs.imported` and
    /// `ids.json.imported` afterwards, so they are imported once. Returns
    /// how many records were imported.
    pub fn import_files(&self) -> Result<usize> {
        let Some(replica) = &self.replica else {
            return Ok(0);
        };
        let (jobs, ids) = (self.root.join("jobs"), self.root.join("ids.json"));
        if !jobs.is_dir() && !ids.is_file() {
            return Ok(0);
        }
        if !replica.read(|m| m.jobs.is_empty() && m.ids == IdCounters::default()) {
            warn!(dir = %self.root.display(),
                "job record files beside a Raft log that has jobs: left alone");
            return Ok(0);
        }
        let files = MetaStore {
            root: self.root.clone(),
            artifacts: self.artifacts.clone(),
            replica: None,
        };
        let records = if jobs.is_dir() {
            files.load()?
        } else {
            Vec::new()
        };
        // Counters first: no id a record holds is ever handed out again.
        self.save_ids(&files.load_ids(&records)?)?;
        for r in &records {
            self.save(r)?;
        }
        for (from, to) in [(jobs, "jobs.imported"), (ids, "ids.json.imported")] {
            if from.exists() {
                fs::rename(&from, self.root.join(to))
                    .map_err(|e| Error::io(format!("renaming {}", from.display()), e))?;
            }
        }
        tracing::info!(
            jobs = records.len(),
            "job records of the data directory moved into the Raft log"
        );
        Ok(records.len())
    }

    /// The Raft group's member, when the metadata is replicated.
    pub fn replica(&self) -> Option<&Replica> {
        self.replica.as_ref()
    }

    /// The shipped binaries.
    pub fn artifacts(&self) -> &Arc<ArtifactStore> {
        &self.artifacts
    }

    /// Where the binary with this hash is kept.
    pub fn artifact_path(&self, sha256: &str) -> PathBuf {
        self.artifacts.path(sha256)
    }

    /// Marks an artifact as just uploaded (again), so it is not removed
    /// as unused before the submission that follows refers to it.
    pub fn touch_artifact(&self, sha256: &str) -> Result<()> {
        let path = self.artifact_path(sha256);
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .map_err(|e| Error::io(format!("touching {}", path.display()), e))
    }

    /// Removes the artifacts no name in `used` refers to and that were not
    /// uploaded within `grace` (a submission may be on its way); returns
    /// the names removed.
    pub fn remove_unused_artifacts(
        &self,
        used: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> Result<Vec<String>> {
        let removed = self.artifacts.remove_unused(used, grace)?;
        if let (Some(replica), false) = (&self.replica, removed.is_empty()) {
            replica.write(Command::ArtifactsRemoved(removed.clone()))?;
        }
        Ok(removed)
    }

    /// Writes a job's record atomically.
    pub fn save(&self, job: &JobRecord) -> Result<()> {
        if let Some(replica) = &self.replica {
            return replica.write(Command::PutJob(Box::new(job.clone())));
        }
        let path = self.root.join("jobs").join(format!("{}.json", job.id));
        let body = serde_json::to_vec_pretty(job)
            .map_err(|e| Error::Internal(format!("encoding job {}: {e}", job.id)))?;
        replace(&path, &body)
    }

    /// The id counters (the first ones for a new data directory). Ids above
    /// the counters among `jobs` raise them: a data directory of an older
    /// release has job records but no counters.
    pub fn load_ids(&self, jobs: &[JobRecord]) -> Result<IdCounters> {
        let path = self.root.join("ids.json");
        let mut ids = match (&self.replica, fs::read(&path)) {
            (Some(replica), _) => replica.read(|m| m.ids),
            (None, Ok(b)) => serde_json::from_slice(&b).map_err(|e| {
                Error::Config(format!(
                    "{} is corrupted ({e}); job ids cannot continue safely",
                    path.display()
                ))
            })?,
            (None, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => IdCounters::default(),
            (None, Err(e)) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        for r in jobs {
            if let Some(n) =
                r.id.strip_prefix("job-")
                    .and_then(|n| n.parse::<u64>().ok())
            {
                ids.next_job = ids.next_job.max(n + 1);
            }
        }
        Ok(ids)
    }

    /// Writes the id counters atomically (before an id they hand out is used).
    pub fn save_ids(&self, ids: &IdCounters) -> Result<()> {
        if let Some(replica) = &self.replica {
            return replica.write(Command::SetIds(*ids));
        }
        let body = serde_json::to_vec(ids)
            .map_err(|e| Error::Internal(format!("encoding the id counters: {e}")))?;
        replace(&self.root.join("ids.json"), &body)
    }

    /// Deletes a job's record (gone already is fine).
    pub fn delete(&self, id: &str) -> Result<()> {
        if let Some(replica) = &self.replica {
            return replica.write(Command::DeleteJob(id.to_string()));
        }
        let path = self.root.join("jobs").join(format!("{id}.json"));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("deleting {}", path.display()), e)),
        }
    }

    /// Every job record; unreadable files are logged and skipped (a
    /// corrupted record loses that job's metadata, never the others').
    pub fn load(&self) -> Result<Vec<JobRecord>> {
        if let Some(replica) = &self.replica {
            let mut out: Vec<JobRecord> = replica.read(|m| m.jobs.values().cloned().collect());
            out.sort_by_key(|r| r.submitted_ms);
            return Ok(out);
        }
        let dir = self.root.join("jobs");
        let mut out = Vec::new();
        let entries =
            fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<JobRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "skipping an unreadable job record")
                }
            }
        }
        out.sort_by_key(|r| r.submitted_ms);
        Ok(out)
    }
}

/// Replaces `path` with `body` atomically and durably.
fn replace(path: &Path, body: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(path.parent().expect("a file in a directory"))?.sync_all()
    };
    write().map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn only_old_artifacts_no_job_uses_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(dir.path()).unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(7200);
        for name in ["used", "unused-old", "unused-new", "touched"] {
            let p = m.artifact_path(name);
            fs::write(&p, b"binary").unwrap();
            if name != "unused-new" {
                fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(long_ago)
                    .unwrap();
            }
        }
        let upload = dir.path().join("artifacts").join(".upload.1.0.part");
        fs::write(&upload, b"part").unwrap();
        m.touch_artifact("touched").unwrap();
        let used: HashSet<String> = ["used".to_string()].into();
        let removed = m
            .remove_unused_artifacts(&used, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(removed, ["unused-old"]);
        assert!(m.artifact_path("used").is_file());
        assert!(m.artifact_path("unused-new").is_file());
        assert!(m.artifact_path("touched").is_file());
        assert!(upload.is_file(), "uploads in progress are left alone");
    }
}
