//! The snapshot writer: a thread that turns the state copies tasks hand
//! over at a barrier into files in the checkpoint's directory (sharing the
//! SST files of periodic checkpoints, copying everything for savepoints)
//! and acknowledges or declines each to the coordinator, so a task never
//! waits for storage.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

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

/// How long the writer waits for more snapshots before it looks again at
/// those waiting for their checkpoint's directory.
const PENDING_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Writes task snapshots until every sender is gone. SST files of periodic
/// checkpoints are shared between them; savepoints copy everything.
///
/// On an executor the checkpoint's directory arrives in a frame from the
/// coordinator, and a barrier from another executor can overtake it (an
/// unaligned checkpoint's tasks even snapshot on the first barrier, so a
/// task whose inputs all come from elsewhere can be done before the frame
/// is read). A snapshot of a checkpoint newer than any directory seen so
/// far waits for its directory; one whose directory was seen and is gone
/// belongs to a checkpoint that ended (aborted) and is dropped, as is one
/// still waiting when a newer checkpoint's directory comes or the writer
/// stops.
pub fn run_writer(
    rx: Receiver<TaskSnapshot>,
    dirs: CheckpointDirs,
    coordinator: Sender<CoordinatorMsg>,
) {
    let mut cache = UploadCache::new();
    let mut newest_seen = 0u64;
    let mut waiting: Vec<TaskSnapshot> = Vec::new();
    loop {
        let received = if waiting.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(PENDING_POLL)
        };
        let mut ready = Vec::new();
        match received {
            Ok(snap) => ready.push(snap),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                for snap in waiting.drain(..) {
                    discard(&snap);
                }
                return;
            }
        }
        ready.append(&mut waiting);
        for snap in ready {
            let target = {
                let dirs = dirs.lock().expect("checkpoint dirs lock");
                newest_seen = newest_seen.max(dirs.keys().copied().max().unwrap_or(0));
                dirs.get(&snap.id.0).cloned()
            };
            let Some((dir, savepoint)) = target else {
                if snap.id.0 > newest_seen {
                    waiting.push(snap); // its directory is still on the way
                } else {
                    discard(&snap); // aborted meanwhile
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::coordinator::TaskKey;
    use crate::checkpoint::storage::Location;
    use crate::data::CheckpointId;
    use std::time::Duration;

    fn snapshot(id: u64) -> TaskSnapshot {
        TaskSnapshot {
            id: CheckpointId(id),
            task: TaskKey {
                vertex: 1,
                subtask: 0,
            },
            states: Vec::new(),
            alignment: Duration::ZERO,
        }
    }

    /// A snapshot that overtakes its checkpoint's directory (a barrier
    /// from another executor was faster than the coordinator's frame) is
    /// acknowledged once the directory comes; one of a checkpoint whose
    /// directory came and went is dropped.
    #[test]
    fn a_snapshot_waits_for_its_directory_and_one_of_an_ended_checkpoint_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Location::from(root.path().to_str().unwrap())).unwrap();
        let dirs: CheckpointDirs = std::sync::Arc::default();
        let (tx, rx) = crossbeam_channel::unbounded();
        let (acks_tx, acks) = crossbeam_channel::unbounded();
        let writer = {
            let dirs = dirs.clone();
            std::thread::spawn(move || run_writer(rx, dirs, acks_tx))
        };
        tx.send(snapshot(2)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(acks.try_recv().is_err(), "no directory yet: no answer");
        dirs.lock()
            .unwrap()
            .insert(2, (storage.child("chk-2"), false));
        let ack = acks.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(
            ack,
            CoordinatorMsg::Ack {
                id: CheckpointId(2),
                ..
            }
        ));
        // Checkpoint 2's directory is gone (it ended): a late snapshot of
        // it is dropped, not parked.
        dirs.lock().unwrap().remove(&2);
        tx.send(snapshot(2)).unwrap();
        drop(tx);
        writer.join().unwrap();
        assert!(acks.try_recv().is_err());
    }
}
