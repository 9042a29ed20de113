//! Resuming from a checkpoint or savepoint: matching its state to the
//! operators of the job graph being started — by operator id (explicit
//! `.uid(..)` or derived, see `LogicalGraph::uids`), so a job that changed
//! around its stateful operators keeps their state — and handing each new
//! subtask the state it owns at the new parallelism (keyed rows by key
//! group, operator-state entries as a union).
//!
//! State of an operator the new job does not have is an error unless the
//! job allows non-restored state (then it is dropped, with a warning); an
//! id that now names another kind of operator is an error. Manifests of
//! versions before operator ids restore by position, as they always did.

use std::collections::HashMap;

use super::manifest::{Manifest, SubtaskState};
use super::storage::{Location, Storage};
use super::store::{load_verified, pinned_savepoint, read_db, read_entries, read_keyed, scan};
use crate::data::CheckpointId;
use crate::error::{Error, Result};
use crate::graph::{verb_of, LogicalGraph};
use crate::plan::PhysicalPlan;
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
    /// Graph node → position in `manifest.nodes` of its state (filled by
    /// [`RestorePlan::bind`]).
    pub matched: HashMap<usize, usize>,
}

impl RestorePlan {
    /// The plan of checkpoint `manifest` stored in `dir`, not yet bound to
    /// a job graph.
    pub fn new(dir: Storage, manifest: Manifest) -> Self {
        RestorePlan {
            dir,
            manifest,
            matched: HashMap::new(),
        }
    }
}

/// Whether a subtask left any state.
fn has_state(s: &SubtaskState) -> bool {
    s.keyed.is_some()
        || !s.keyed_more.is_empty()
        || s.entries.is_some()
        || s.db.is_some()
        || !s.in_flight.is_empty()
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
            (Some((dir, manifest)), _) => Some(RestorePlan::new(dir, manifest)),
            (None, Some(location)) => {
                let dir = Storage::open_in_parent(location)?;
                let manifest = load_verified(&dir)?;
                Some(RestorePlan::new(dir, manifest))
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
        Ok(manifest) if manifest.job == job => Some(RestorePlan::new(dir, manifest)),
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

    /// Matches the checkpoint's state to the operators of `graph` by
    /// operator id (or, for manifests without ids, by position and kind),
    /// refusing another job's checkpoint, state of operators the job no
    /// longer has (unless `allow_non_restored`), an id that now names
    /// another kind of operator, and an unaligned checkpoint at another
    /// parallelism.
    pub fn bind(
        &mut self,
        graph: &LogicalGraph,
        plan: &PhysicalPlan,
        allow_non_restored: bool,
    ) -> Result<()> {
        self.match_operators(graph, plan.max_parallelism, allow_non_restored)?;
        if !self.manifest.unaligned {
            return Ok(());
        }
        for (node, i) in &self.matched {
            let was = &self.manifest.nodes[*i];
            let now = plan
                .vertices
                .iter()
                .find(|v| v.chain.iter().any(|n| n.0 == *node))
                .map_or(0, |v| v.parallelism);
            if now != was.parallelism && was.subtasks.iter().any(has_state) {
                return Err(Error::Checkpoint(format!(
                    "{} is an unaligned checkpoint: operator '{}' ran at parallelism {} and \
                     its subtasks took their state at different points of their input, so it \
                     restores only at that parallelism (this run has {now}); run at \
                     parallelism {}, or rescale from a savepoint, which is always aligned",
                    self.dir.location(),
                    was.name,
                    was.parallelism,
                    was.parallelism
                )));
            }
        }
        Ok(())
    }

    fn match_operators(
        &mut self,
        graph: &LogicalGraph,
        max_parallelism: usize,
        allow_non_restored: bool,
    ) -> Result<()> {
        let m = &self.manifest;
        let location = self.dir.location();
        let mismatch = |what: String| {
            Err(Error::Checkpoint(format!(
                "{location} does not belong to this job: {what}"
            )))
        };
        if m.max_parallelism != max_parallelism {
            return mismatch(format!(
                "it has {} key groups, the job {max_parallelism}",
                m.max_parallelism
            ));
        }
        let mut matched = HashMap::new();
        if m.nodes.iter().all(|n| n.uid.is_empty()) {
            // Written before operator ids: positions and kinds must agree.
            if m.graph_nodes != graph.nodes.len() {
                return mismatch(format!(
                    "it has {} operators, the job {}",
                    m.graph_nodes,
                    graph.nodes.len()
                ));
            }
            for (i, n) in m.nodes.iter().enumerate() {
                let name = graph.nodes.get(n.node).map(|g| g.name.as_str());
                if name.map(verb_of) != Some(verb_of(&n.name)) {
                    return mismatch(format!(
                        "operator {} is '{}' there and '{}' here",
                        n.node,
                        n.name,
                        name.unwrap_or("missing")
                    ));
                }
                matched.insert(n.node, i);
            }
            self.matched = matched;
            return Ok(());
        }
        let uids = graph.uids();
        let by_uid: HashMap<&str, usize> = uids
            .iter()
            .enumerate()
            .map(|(i, u)| (u.as_str(), i))
            .collect();
        let mut dropped = Vec::new();
        for (i, n) in m.nodes.iter().enumerate() {
            match by_uid.get(n.uid.as_str()) {
                Some(&node) => {
                    let here = &graph.nodes[node].name;
                    if verb_of(here) != verb_of(&n.name) {
                        return Err(Error::Checkpoint(format!(
                            "{location}: operator id '{}' belonged to '{}' and now to '{here}', \
                             another kind of operator, whose state it cannot restore; give the \
                             new operator its own id with .uid(...)",
                            n.uid, n.name
                        )));
                    }
                    matched.insert(node, i);
                }
                None if n.subtasks.iter().any(has_state) => {
                    dropped.push(format!("'{}' (id '{}')", n.name, n.uid));
                }
                None => {}
            }
        }
        if !dropped.is_empty() {
            if !allow_non_restored {
                return Err(Error::Checkpoint(format!(
                    "{location} holds state of operators this job does not have: {}; \
                     restore with --allow-non-restored-state to drop it, or give the \
                     operators that should take it over their old ids with .uid(...)",
                    dropped.join(", ")
                )));
            }
            warn!(location = %location, operators = %dropped.join(", "),
                "dropping the state of operators the job no longer has");
        }
        self.matched = matched;
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
        let Some(ns) = self.matched.get(&node).map(|i| &self.manifest.nodes[*i]) else {
            return Ok(out);
        };
        let groups = range_of(subtask, self.manifest.max_parallelism, parallelism);
        for s in &ns.subtasks {
            if (self.manifest.unaligned || !s.in_flight.is_empty()) && ns.parallelism != parallelism
            {
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} is unaligned: operator '{}' ran at parallelism {} and its \
                     subtasks took their state at different points of their input; it restores \
                     only at that parallelism (this run has {parallelism}). Rescale from a \
                     savepoint, which is always aligned",
                    self.manifest.id, ns.name, ns.parallelism
                )));
            }
            if s.subtask == subtask {
                for f in &s.in_flight {
                    for b in read_keyed(&self.dir, &f.file)? {
                        out.in_flight.push((f.input, b));
                    }
                }
            }
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
