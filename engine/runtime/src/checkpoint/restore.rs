//! Resuming from a checkpoint or savepoint: checking that it belongs to the
//! job graph being started, and handing each new subtask the state it owns
//! at the new parallelism (keyed rows by key group, operator-state entries
//! as a union).

use super::manifest::Manifest;
use super::storage::{Location, Storage};
use super::store::{load_verified, pinned_savepoint, read_db, read_entries, read_keyed, scan};
use crate::data::CheckpointId;
use crate::error::{Error, Result};
use crate::graph::LogicalGraph;
use crate::state::key_group::range_of;
use crate::state::snapshot::filter_key_groups;
use crate::state::RestoredState;
use tracing::{info, warn};

/// A verified checkpoint to start from.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// Where it is stored.
    pub dir: Storage,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Where a job resumes, found in its checkpoint location.
#[derive(Debug)]
pub struct StartPoint {
    /// The newest checkpoint there that verifies, else the `restore_from`
    /// checkpoint or savepoint, else nothing.
    pub restore: Option<RestorePlan>,
    /// The first checkpoint id to use: past every id in the location and
    /// past the restored one.
    pub next_id: u64,
    /// The least attempt number to use: above every attempt the location's
    /// manifests record, so it fences them.
    pub min_attempt: u64,
}

impl StartPoint {
    /// Looks at `root` for checkpoints of `job`.
    pub fn find(root: &Storage, job: &str, restore_from: Option<&Location>) -> Result<StartPoint> {
        let found = scan(root, job)?;
        let mut restore = match (found.latest, restore_from) {
            (Some((dir, manifest)), _) => Some(RestorePlan { dir, manifest }),
            (None, Some(location)) => {
                let dir = Storage::open_in_parent(location)?;
                let manifest = load_verified(&dir)?;
                Some(RestorePlan { dir, manifest })
            }
            (None, None) => None,
        };
        let mut min_attempt = found.max_attempt.map_or(0, |a| a + 1);
        // Savepoint ids continue the job's checkpoint ids: a pinned one
        // newer than every checkpoint holds the latest committed state.
        if let Some(p) = pinned(root, job) {
            if restore
                .as_ref()
                .is_none_or(|r| r.manifest.id < p.manifest.id)
            {
                info!(savepoint = p.manifest.id, location = %p.dir.location(),
                    "the pinned savepoint is newer than every checkpoint");
                min_attempt = min_attempt.max(p.manifest.attempt + 1);
                restore = Some(p);
            }
        }
        let next_id = (found.max_id + 1).max(restore.as_ref().map_or(0, |r| r.manifest.id + 1));
        Ok(StartPoint {
            restore,
            next_id,
            min_attempt,
        })
    }
}

/// The savepoint pinned in `root` if it holds a verified one of `job`. A
/// pin whose savepoint never completed (or is damaged) is passed over,
/// with a warning: the checkpoints are consistent too, only older.
fn pinned(root: &Storage, job: &str) -> Option<RestorePlan> {
    let location = match pinned_savepoint(root) {
        Ok(Some(l)) => l,
        Ok(None) => return None,
        Err(e) => {
            warn!(error = %e, "the pinned savepoint cannot be read; ignoring it");
            return None;
        }
    };
    let dir = match Storage::open_in_parent(&location) {
        Ok(d) => d,
        Err(e) => {
            warn!(%location, error = %e, "the pinned savepoint cannot be opened; ignoring it");
            return None;
        }
    };
    match load_verified(&dir) {
        Ok(manifest) if manifest.job == job => Some(RestorePlan { dir, manifest }),
        Ok(manifest) => {
            warn!(%location, other = %manifest.job, "the pinned savepoint belongs to another job; ignoring it");
            None
        }
        Err(e) => {
            warn!(%location, error = %e, "the pinned savepoint is not restorable; ignoring it");
            None
        }
    }
}

impl RestorePlan {
    /// The checkpoint id.
    pub fn id(&self) -> CheckpointId {
        CheckpointId(self.manifest.id)
    }

    /// Refuses a checkpoint taken from another job graph.
    pub fn check_compatible(&self, graph: &LogicalGraph, max_parallelism: usize) -> Result<()> {
        let m = &self.manifest;
        let mismatch = |what: String| {
            Err(Error::Checkpoint(format!(
                "{} does not belong to this job: {what}",
                self.dir.location()
            )))
        };
        if m.max_parallelism != max_parallelism {
            return mismatch(format!(
                "it has {} key groups, the job {max_parallelism}",
                m.max_parallelism
            ));
        }
        if m.graph_nodes != graph.nodes.len() {
            return mismatch(format!(
                "it has {} operators, the job {}",
                m.graph_nodes,
                graph.nodes.len()
            ));
        }
        // Operators are matched by position and kind; a name's arguments
        // (a sink's path, say) may change between runs.
        let stem = |s: &str| s.split('(').next().unwrap_or(s).to_string();
        for n in &m.nodes {
            let name = graph.nodes.get(n.node).map(|g| g.name.as_str());
            if name.map(stem) != Some(stem(&n.name)) {
                return mismatch(format!(
                    "operator {} is '{}' there and '{}' here",
                    n.node,
                    n.name,
                    name.unwrap_or("missing")
                ));
            }
        }
        Ok(())
    }

    /// The state subtask `subtask` of `parallelism` restores for `node`;
    /// databases are copied under `local_dir`.
    pub fn state_for(
        &self,
        node: usize,
        subtask: usize,
        parallelism: usize,
        local_dir: &std::path::Path,
    ) -> Result<RestoredState> {
        let mut out = RestoredState {
            checkpoint: self.id(),
            ..RestoredState::default()
        };
        let Some(ns) = self.manifest.nodes.iter().find(|n| n.node == node) else {
            return Ok(out);
        };
        let groups = range_of(subtask, self.manifest.max_parallelism, parallelism);
        for s in &ns.subtasks {
            for f in s.keyed.iter().chain(s.keyed_more.iter()) {
                for b in read_keyed(&self.dir, f)? {
                    let b = filter_key_groups(&b, &groups)?;
                    if b.num_rows() > 0 {
                        out.keyed.push(b);
                    }
                }
            }
            if let Some(f) = &s.entries {
                out.entries.extend(read_entries(&self.dir, f)?);
            }
            if let Some(db) = &s.db {
                let overlaps = db.key_groups[0] < groups.end && groups.start < db.key_groups[1];
                if overlaps {
                    let into = local_dir.join(format!(
                        "restore-n{node}-s{subtask}-from{}-{}",
                        s.subtask, self.manifest.id
                    ));
                    out.dbs.push(read_db(&self.dir, db, &into)?);
                }
            }
        }
        Ok(out)
    }
}
