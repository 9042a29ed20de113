//! Resuming from a checkpoint or savepoint: checking that it belongs to the
//! job graph being started, and handing each new subtask the state it owns
//! at the new parallelism (keyed rows by key group, operator-state entries
//! as a union).

use super::manifest::Manifest;
use super::storage::Storage;
use super::store::{read_db, read_entries, read_keyed};
use crate::data::CheckpointId;
use crate::error::{Error, Result};
use crate::graph::LogicalGraph;
use crate::state::key_group::range_of;
use crate::state::snapshot::filter_key_groups;
use crate::state::RestoredState;

/// A verified checkpoint to start from.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// Where it is stored.
    pub dir: Storage,
    /// Its manifest.
    pub manifest: Manifest,
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
