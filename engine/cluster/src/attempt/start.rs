//! Where a checkpointing job's next attempt starts: its checkpoint
//! directory is scanned (off the manager's lock) for the newest restorable
//! checkpoint, a pinned savepoint, or the job's `restore_from`.

use sluice_engine::checkpoint::restore::StartPoint;
use sluice_engine::checkpoint::{CheckpointConfig, Location, Storage};
use sluice_engine::error::{Error, Result};
use sluice_protocol::api::JobDescription;

/// Checkpointing of an attempt.
pub struct CheckpointSetup {
    /// Interval, timeout, retention, guarantee.
    pub config: CheckpointConfig,
    /// The opened checkpoint location.
    pub root: Storage,
    /// First checkpoint id of this attempt (after every id in `root`).
    pub next_id: u64,
}

/// Where a checkpointing job's next attempt starts, found as the embedded
/// driver finds it: the newest restorable checkpoint in the job's
/// checkpoint directory (falling back past corrupted ones), else the
/// job's `restore_from`, else nothing. A pinned savepoint (a rescale's)
/// wins over them while it is newer than the checkpoints there.
pub struct CheckpointStart {
    /// The setup to start the attempt with (ids continue after every id
    /// in the directory).
    pub setup: CheckpointSetup,
    /// What the executors restore (`ExecutorSpec::restore`), if anything;
    /// a local directory is absolute.
    pub restore: Option<Location>,
    /// The id of that checkpoint.
    pub restored_from: Option<u64>,
    /// The attempt number must be at least this: above every attempt the
    /// directory's manifests record, so it fences them.
    pub min_attempt: u64,
}

impl CheckpointStart {
    /// Looks at the checkpoint directory of `d`; `None` when the job does
    /// not checkpoint. A relative directory is taken relative to this
    /// process's working directory.
    pub fn find(d: &JobDescription) -> Result<Option<CheckpointStart>> {
        let Some(ck) = &d.checkpoint else {
            return Ok(None);
        };
        let config = sluice_engine::executor::describe::checkpoint_config(ck);
        let root = Storage::open(&config.dir)?;
        let found = StartPoint::find(&root, &d.name, config.restore_from.as_ref())?;
        let manifest = found.restore.as_ref().map(|r| &r.manifest);
        // Executors run in other directories: a local location is made absolute.
        let restore = found
            .restore
            .as_ref()
            .map(|r| Location::from(absolute(r.dir.location())));
        if let Some(m) = manifest {
            // The executors check operators by name when they restore.
            if m.max_parallelism != d.max_parallelism || m.graph_nodes != d.graph_nodes {
                return Err(Error::Checkpoint(format!(
                    "{} does not belong to job '{}': {} key groups and {} operators there, \
                     {} and {} here",
                    restore.as_ref().map_or("?", |l| l.as_str()),
                    d.name,
                    m.max_parallelism,
                    m.graph_nodes,
                    d.max_parallelism,
                    d.graph_nodes
                )));
            }
        }
        Ok(Some(CheckpointStart {
            restored_from: manifest.map(|m| m.id),
            setup: CheckpointSetup {
                config,
                root,
                next_id: found.next_id,
            },
            restore,
            min_attempt: found.min_attempt,
        }))
    }
}

/// `l` as executors must see it: they run in other working directories,
/// so a relative local directory is made absolute against this process's.
pub(crate) fn absolute(l: &Location) -> String {
    match l.local_path() {
        Some(p) if p.is_relative() => std::env::current_dir()
            .map(|cwd| cwd.join(&p).display().to_string())
            .unwrap_or_else(|_| l.as_str().to_string()),
        _ => l.as_str().to_string(),
    }
}
