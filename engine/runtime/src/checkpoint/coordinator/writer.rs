//! The snapshot writer: a thread that turns the state copies tasks hand
//! over at a barrier into files in the checkpoint's directory (sharing the
//! SST files of periodic checkpoints, copying everything for savepoints)
//! and acknowledges or declines each to the coordinator, so a task never
//! waits for storage.

use crossbeam_channel::{Receiver, Sender};

use super::{CheckpointDirs, CoordinatorMsg, TaskSnapshot};
use crate::checkpoint::manifest::SubtaskState;
use crate::checkpoint::storage::Storage;
use crate::checkpoint::store::{write_db, write_in_flight, write_snapshot, UploadCache};
use crate::error::Result;

/// Removes the native database checkpoints of a snapshot not written.
fn discard(snap: &TaskSnapshot) {
    for (_, s) in &snap.states {
        if let Some(db) = &s.db {
            let _ = std::fs::remove_dir_all(&db.dir);
        }
    }
}

/// What the writer stored for one task: files per node, bytes, bytes uploaded.
type Written = (Vec<(usize, SubtaskState)>, u64, u64);

fn write_task(
    snap: &TaskSnapshot,
    dir: &Storage,
    shared: bool,
    cache: &mut UploadCache,
) -> Result<Written> {
    let mut files = Vec::new();
    let (mut bytes, mut uploaded) = (0, 0);
    let sub = snap.task.subtask;
    for (node, state) in &snap.states {
        if state.is_empty() {
            continue;
        }
        let (mut keyed, entries) = write_snapshot(dir, *node, sub, state)?;
        let in_flight = write_in_flight(dir, *node, sub, state)?;
        let small = keyed
            .iter()
            .chain(entries.iter())
            .chain(in_flight.iter().map(|f| &f.file))
            .map(|f| f.bytes)
            .sum::<u64>();
        bytes += small;
        uploaded += small;
        let db = match &state.db {
            Some(db) => {
                let (d, up) = write_db(dir, shared, *node, sub, db, cache)?;
                bytes += d.files.iter().map(|f| f.file.bytes).sum::<u64>();
                uploaded += up;
                Some(d)
            }
            None => None,
        };
        files.push((
            *node,
            SubtaskState {
                subtask: sub,
                keyed_more: keyed.split_off(keyed.len().min(1)),
                keyed: keyed.pop(),
                entries,
                db,
                in_flight,
            },
        ));
    }
    Ok((files, bytes, uploaded))
}

/// Writes task snapshots until every sender is gone. SST files of periodic
/// checkpoints are shared between them; savepoints copy everything.
pub fn run_writer(
    rx: Receiver<TaskSnapshot>,
    dirs: CheckpointDirs,
    coordinator: Sender<CoordinatorMsg>,
) {
    let mut cache = UploadCache::new();
    for snap in rx {
        let target = dirs
            .lock()
            .expect("checkpoint dirs lock")
            .get(&snap.id.0)
            .cloned();
        let Some((dir, savepoint)) = target else {
            discard(&snap); // aborted meanwhile
            continue;
        };
        let msg = match write_task(&snap, &dir, !savepoint, &mut cache) {
            Ok((files, bytes, uploaded)) => CoordinatorMsg::Ack {
                id: snap.id,
                task: snap.task,
                files,
                bytes,
                uploaded,
                alignment: snap.alignment,
            },
            Err(e) => {
                discard(&snap);
                CoordinatorMsg::Decline {
                    id: snap.id,
                    error: e.to_string(),
                }
            }
        };
        if coordinator.send(msg).is_err() {
            return;
        }
    }
}
