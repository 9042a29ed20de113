//! Checkpoint layout, checksums, fallback and retention, over a
//! [`Storage`] (a local directory or an S3-compatible bucket):
//!
//! ```text
//! ROOT/chk-000007/_manifest.json          written last: marks completion
//! ROOT/chk-000007/n003-s001.keyed.arrow   keyed state, Arrow IPC file
//! ROOT/chk-000007/n003-s001.entries       operator-state entries
//! ROOT/chk-000007/n003-s001.db/...        small RocksDB files (MANIFEST, OPTIONS)
//! ROOT/shared/<db instance>-000123.sst    SST files shared by checkpoints
//! ```
//!
//! A savepoint is the same layout in a location of its own, with every
//! file inside it. Every checkpoint is a full snapshot, so any retained one
//! can also be restored as a savepoint (with another parallelism). Finding
//! the checkpoint to resume from verifies every file against the manifest's
//! size and CRC-32 and falls back to the previous checkpoint, with a
//! warning, when one does not match.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use tracing::{info, warn};

use super::manifest::{
    DbFile, DbState, FileRef, InFlightFile, Manifest, FORMAT_VERSION, MANIFEST_FILE,
};
use super::storage::{Location, Storage};
use crate::error::{Error, Result};
use crate::state::rocks::{DbCheckpoint, RestoredDb};
use crate::state::OperatorSnapshot;

/// Directory (under the checkpoint root) of SST files shared by checkpoints.
pub const SHARED_DIR: &str = "shared";

/// Directory name of periodic checkpoint `id`.
pub fn checkpoint_dir_name(id: u64) -> String {
    format!("chk-{id:06}")
}

fn parse_checkpoint_dir(name: &str) -> Option<u64> {
    name.strip_prefix("chk-")?.parse().ok()
}

fn file_ref(name: String, bytes: &[u8]) -> FileRef {
    FileRef {
        path: name,
        bytes: bytes.len() as u64,
        crc32: crc32fast::hash(bytes),
    }
}

/// Stores `bytes` as `rel` in `dir` and returns its reference.
fn store(dir: &Storage, rel: String, bytes: Vec<u8>) -> Result<FileRef> {
    let f = file_ref(rel, &bytes);
    dir.put(&f.path, bytes)?;
    Ok(f)
}

/// Encodes entries as `u32` count then `u32` length + bytes each (little endian).
fn encode_entries(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.iter().map(|e| e.len() + 4).sum::<usize>());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

fn decode_entries(bytes: &[u8], what: &str) -> Result<Vec<Vec<u8>>> {
    let bad = || Error::Checkpoint(format!("{what}: truncated or malformed entries file"));
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = bytes.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        Ok(s)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        out.push(take(len)?.to_vec());
    }
    if pos != bytes.len() {
        return Err(bad());
    }
    Ok(out)
}

/// Writes one operator subtask's snapshot into `dir`; returns the keyed
/// files (one Arrow IPC file per distinct schema, in order of first
/// appearance) and the entries file.
pub fn write_snapshot(
    dir: &Storage,
    node: usize,
    subtask: usize,
    snap: &OperatorSnapshot,
) -> Result<(Vec<FileRef>, Option<FileRef>)> {
    let stem = format!("n{node:03}-s{subtask:03}");
    let groups = group_by_schema(snap.keyed.iter().filter(|b| b.num_rows() > 0));
    let mut keyed = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let name = if i == 0 {
            format!("{stem}.keyed.arrow")
        } else {
            format!("{stem}.keyed-{i}.arrow")
        };
        keyed.push(store(dir, name, ipc_file(g)?)?);
    }
    let mut entries = None;
    if !snap.entries.is_empty() {
        let name = format!("{stem}.entries");
        entries = Some(store(dir, name, encode_entries(&snap.entries))?);
    }
    Ok((keyed, entries))
}

/// Batches grouped by schema, in order of first appearance.
fn group_by_schema<'a>(
    batches: impl Iterator<Item = &'a RecordBatch>,
) -> Vec<Vec<&'a RecordBatch>> {
    let mut groups: Vec<Vec<&RecordBatch>> = Vec::new();
    for b in batches {
        match groups.iter_mut().find(|g| g[0].schema() == b.schema()) {
            Some(g) => g.push(b),
            None => groups.push(vec![b]),
        }
    }
    groups
}

/// One Arrow IPC file of `batches` (all of one schema).
fn ipc_file(batches: &[&RecordBatch]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = FileWriter::try_new(&mut buf, &batches[0].schema())?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    drop(w);
    Ok(buf)
}

/// Stores the records in flight into a subtask at an unaligned
/// checkpoint: one file per logical input (its channels share a schema).
pub fn write_in_flight(
    dir: &Storage,
    node: usize,
    subtask: usize,
    snap: &OperatorSnapshot,
) -> Result<Vec<InFlightFile>> {
    let mut inputs: Vec<usize> = snap.in_flight.iter().map(|(i, _)| *i).collect();
    inputs.sort_unstable();
    inputs.dedup();
    let mut files = Vec::new();
    for input in inputs {
        let batches: Vec<&RecordBatch> = snap
            .in_flight
            .iter()
            .filter(|(i, b)| *i == input && b.num_rows() > 0)
            .map(|(_, b)| b)
            .collect();
        if batches.is_empty() {
            continue;
        }
        let name = format!("n{node:03}-s{subtask:03}.in-flight-{input}.arrow");
        files.push(InFlightFile {
            input,
            file: store(dir, name, ipc_file(&batches)?)?,
        });
    }
    Ok(files)
}

/// SST files the writer already stored, by shared path: reused by later
/// checkpoints of the same database without uploading them again.
pub type UploadCache = HashMap<String, FileRef>;

/// Stores a RocksDB native checkpoint into checkpoint directory `dir`.
/// When `shared` (periodic checkpoints), SST files go to the root's
/// `shared/` directory once and are referenced afterwards; otherwise
/// (savepoints) every file is stored inside `dir` so the savepoint stands
/// alone. Returns the database's manifest entry and the bytes actually
/// uploaded. The native checkpoint's local directory is removed afterwards.
pub fn write_db(
    dir: &Storage,
    shared: bool,
    node: usize,
    subtask: usize,
    db: &DbCheckpoint,
    cache: &mut UploadCache,
) -> Result<(DbState, u64)> {
    let private = format!("n{node:03}-s{subtask:03}.db");
    let mut files = Vec::new();
    let mut uploaded = 0u64;
    let mut entries: Vec<_> = std::fs::read_dir(&db.dir)
        .map_err(|e| Error::io(format!("listing {}", db.dir.display()), e))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        let read = || {
            std::fs::read(e.path())
                .map_err(|err| Error::io(format!("reading {}", e.path().display()), err))
        };
        let file = if shared && name.ends_with(".sst") {
            let rel = format!("../{SHARED_DIR}/{}-{name}", db.instance);
            // An SST file never changes once written, so one stored with the
            // same size is the same file.
            let cached = match cache.get(&rel) {
                Some(f) if dir.size(&rel)? == Some(f.bytes) => Some(f.clone()),
                _ => None,
            };
            match cached {
                Some(f) => f,
                None => {
                    let f = store(dir, rel.clone(), read()?)?;
                    uploaded += f.bytes;
                    cache.insert(rel, f.clone());
                    f
                }
            }
        } else {
            let f = store(dir, format!("{private}/{name}"), read()?)?;
            uploaded += f.bytes;
            f
        };
        files.push(DbFile { name, file });
    }
    let _ = std::fs::remove_dir_all(&db.dir);
    Ok((
        DbState {
            key_groups: [db.key_groups.start, db.key_groups.end],
            files,
        },
        uploaded,
    ))
}

/// Copies a checkpointed database back to local disk (verifying every
/// file) for restore.
pub fn read_db(dir: &Storage, db: &DbState, into: &Path) -> Result<RestoredDb> {
    std::fs::create_dir_all(into)
        .map_err(|e| Error::io(format!("creating {}", into.display()), e))?;
    for f in &db.files {
        let bytes = read_verified(dir, &f.file)?;
        let path = into.join(&f.name);
        std::fs::write(&path, bytes)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(RestoredDb {
        dir: into.to_path_buf(),
        key_groups: db.key_groups[0]..db.key_groups[1],
    })
}

/// Reads a file and checks it against its reference.
fn read_verified(dir: &Storage, f: &FileRef) -> Result<Vec<u8>> {
    let what = dir.describe(&f.path);
    let bytes = dir
        .get(&f.path)?
        .ok_or_else(|| Error::Checkpoint(format!("{what} is missing")))?;
    if bytes.len() as u64 != f.bytes {
        return Err(Error::Checkpoint(format!(
            "{what} has {} bytes, the manifest says {}",
            bytes.len(),
            f.bytes
        )));
    }
    let crc = crc32fast::hash(&bytes);
    if crc != f.crc32 {
        return Err(Error::Checkpoint(format!(
            "{what} fails its checksum (crc32 {crc:08x}, manifest {:08x})",
            f.crc32
        )));
    }
    Ok(bytes)
}

/// Reads keyed-state batches from a verified file.
///
/// The checksum only says the file is what was written; a file written by
/// a buggy build or edited by hand can still be inconsistent Arrow IPC, on
/// which arrow's decoder may panic (it asserts in `Buffer::slice`; the
/// `untrusted_checkpoints` test finds such files). A restore must fail
/// with an error naming the file instead, so the panic is caught here, as
/// the exchange's decoder does for peers' bytes. This relies on
/// unwinding: the workspace must not set `panic = "abort"`.
pub fn read_keyed(dir: &Storage, f: &FileRef) -> Result<Vec<RecordBatch>> {
    let bytes = read_verified(dir, f)?;
    let bad = |e: &dyn std::fmt::Display| Error::Checkpoint(format!("{}: {e}", f.path));
    let decoded = std::panic::catch_unwind(move || -> Result<Vec<RecordBatch>> {
        let reader = FileReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| bad(&e))?;
        reader.map(|b| b.map_err(|e| bad(&e))).collect()
    });
    decoded.unwrap_or_else(|_| Err(bad(&"malformed Arrow IPC (the decoder panicked)")))
}

/// Reads operator-state entries from a verified file.
pub fn read_entries(dir: &Storage, f: &FileRef) -> Result<Vec<Vec<u8>>> {
    let bytes = read_verified(dir, f)?;
    decode_entries(&bytes, &f.path)
}

/// Writes the manifest, which marks the checkpoint complete.
pub fn write_manifest(dir: &Storage, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::Internal(format!("encoding a manifest: {e}")))?;
    dir.put(MANIFEST_FILE, json)?;
    dir.sync_dir();
    Ok(())
}

/// Whether `dir` holds a manifest (a completed checkpoint or savepoint).
pub fn has_manifest(dir: &Storage) -> Result<bool> {
    Ok(dir.size(MANIFEST_FILE)?.is_some())
}

/// Reads a checkpoint's manifest without checking its files.
fn read_manifest(dir: &Storage) -> Result<Manifest> {
    let what = dir.describe(MANIFEST_FILE);
    let bytes = dir
        .get(MANIFEST_FILE)?
        .ok_or_else(|| Error::Checkpoint(format!("{what} is missing")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Checkpoint(format!("{what} is not a valid manifest: {e}")))
}

/// Reads and checks a checkpoint or savepoint: the manifest parses, is of
/// a known format, and every file matches its checksum.
pub fn load_verified(dir: &Storage) -> Result<Manifest> {
    let m = read_manifest(dir)?;
    if m.format != FORMAT_VERSION {
        return Err(Error::Checkpoint(format!(
            "{} has format {}, this build reads {FORMAT_VERSION}",
            dir.describe(MANIFEST_FILE),
            m.format
        )));
    }
    for f in m.files() {
        read_verified(dir, f)?;
    }
    Ok(m)
}

/// What a checkpoint root holds when a job starts.
#[derive(Debug, Default)]
pub struct Scan {
    /// Highest checkpoint id of any directory, complete or not.
    pub max_id: u64,
    /// Highest attempt recorded in any readable manifest.
    pub max_attempt: Option<u64>,
    /// The newest checkpoint that verifies, with its directory.
    pub latest: Option<(Storage, Manifest)>,
}

/// Checkpoint ids under `root`, newest first.
fn checkpoint_ids(root: &Storage) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = root
        .list()?
        .0
        .iter()
        .filter_map(|name| parse_checkpoint_dir(name))
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    Ok(ids)
}

/// The manifest of the newest completed checkpoint in `root`, read
/// without checking its files (cheap: one small file), and the number of
/// completed checkpoints there: what a job started on `root` would
/// resume from, unless that checkpoint turns out damaged. For notices
/// before a job starts; [`scan`] is what decides.
pub fn newest_manifest(root: &Storage) -> Result<Option<(Manifest, usize)>> {
    let mut newest = None;
    let mut complete = 0;
    for id in checkpoint_ids(root)? {
        let dir = root.child(&checkpoint_dir_name(id));
        if !has_manifest(&dir)? {
            continue;
        }
        complete += 1;
        if newest.is_none() {
            newest = read_manifest(&dir).ok();
        }
    }
    Ok(newest.map(|m| (m, complete)))
}

/// Looks through `root` for checkpoints of `job`, newest first, falling
/// back past any that fail verification.
pub fn scan(root: &Storage, job: &str) -> Result<Scan> {
    let mut out = Scan::default();
    let ids = checkpoint_ids(root)?;
    out.max_id = ids.first().copied().unwrap_or(0);
    for id in ids {
        let dir = root.child(&checkpoint_dir_name(id));
        if !has_manifest(&dir)? {
            continue; // never completed
        }
        // Older checkpoints than the one found are only read for the
        // attempts they record; their files are not verified.
        let checked = if out.latest.is_none() {
            load_verified(&dir)
        } else {
            read_manifest(&dir)
        };
        match checked {
            Ok(m) if m.job != job => {
                return Err(Error::Checkpoint(format!(
                    "{} holds checkpoints of job '{}', not '{job}'; use another --checkpoint-dir",
                    root.location(),
                    m.job
                )))
            }
            Ok(m) => {
                out.max_attempt = Some(out.max_attempt.unwrap_or(0).max(m.attempt));
                if out.latest.is_none() {
                    info!(checkpoint = id, location = %dir.location(), "found completed checkpoint");
                    out.latest = Some((dir, m));
                }
            }
            Err(e) => {
                // A manifest that parses still tells which attempts ran.
                if let Ok(m) = read_manifest(&dir) {
                    out.max_attempt = Some(out.max_attempt.unwrap_or(0).max(m.attempt));
                }
                warn!(checkpoint = id, error = %e, "checkpoint is not restorable; falling back to the previous one");
            }
        }
    }
    Ok(out)
}

/// The file in a job's checkpoint location naming its newest savepoint.
pub const PINNED_FILE: &str = "_pinned_savepoint";

/// Records `savepoint` (or, with `None`, no savepoint) as the one a
/// restart must consider beside the checkpoints: a savepoint commits the
/// sinks' output like a checkpoint, so resuming from an older checkpoint
/// would write that output twice. Written before the savepoint is taken.
pub fn pin_savepoint(root: &Storage, savepoint: Option<&Location>) -> Result<()> {
    match savepoint {
        Some(l) => root.put(PINNED_FILE, l.as_str().as_bytes().to_vec()),
        None => root.delete(PINNED_FILE),
    }
}

/// The savepoint pinned in `root`, if any.
pub fn pinned_savepoint(root: &Storage) -> Result<Option<Location>> {
    Ok(root
        .get(PINNED_FILE)?
        .and_then(|b| String::from_utf8(b).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .map(|s| Location::from(s.as_str())))
}

/// Deletes periodic checkpoints beyond the newest `retained` completed ones,
/// and abandoned (never completed) ones older than the newest completed.
pub fn retain(root: &Storage, retained: usize) -> Result<()> {
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for id in checkpoint_ids(root)? {
        if has_manifest(&root.child(&checkpoint_dir_name(id)))? {
            complete.push(id);
        } else {
            incomplete.push(id);
        }
    }
    let newest = complete.first().copied().unwrap_or(0);
    let doomed = complete
        .iter()
        .skip(retained.max(1))
        .chain(incomplete.iter().filter(|id| **id < newest));
    for id in doomed {
        let dir = root.child(&checkpoint_dir_name(*id));
        // A checkpoint is deleted manifest first, so a half-deleted one is
        // never mistaken for a complete one.
        if let Err(e) = dir.delete(MANIFEST_FILE).and_then(|_| dir.delete_all()) {
            warn!(location = %dir.location(), error = %e, "could not delete an old checkpoint");
        }
    }
    collect_shared(root, complete.iter().take(retained.max(1)))
}

/// Deletes shared SST files no retained checkpoint refers to.
fn collect_shared<'a>(root: &Storage, kept: impl Iterator<Item = &'a u64>) -> Result<()> {
    let shared = root.child(SHARED_DIR);
    let stored = shared.list()?.1;
    if stored.is_empty() {
        return Ok(());
    }
    let mut referenced = HashSet::new();
    for id in kept {
        // A manifest that cannot be read pins nothing: it is not restorable.
        if let Ok(m) = read_manifest(&root.child(&checkpoint_dir_name(*id))) {
            for f in m.files() {
                if let Some(name) = f.path.strip_prefix(&format!("../{SHARED_DIR}/")) {
                    referenced.insert(name.to_string());
                }
            }
        }
    }
    for name in stored.iter().filter(|n| !referenced.contains(*n)) {
        shared.delete(name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::{CheckpointFigures, NodeState, SubtaskState};
    use crate::checkpoint::storage::Location;
    use arrow::array::{ArrayRef, Int64Array};
    use std::path::PathBuf;
    use std::sync::Arc;

    fn manifest(id: u64, files: (Option<FileRef>, Option<FileRef>)) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            job: "j".into(),
            id,
            savepoint: false,
            finished: false,
            attempt: id,
            timestamp_ms: 0,
            max_parallelism: 128,
            graph_nodes: 1,
            nodes: vec![NodeState {
                node: 0,
                name: "n".into(),
                uid: "n".into(),
                parallelism: 1,
                subtasks: vec![SubtaskState {
                    subtask: 0,
                    keyed: files.0,
                    keyed_more: Vec::new(),
                    entries: files.1,
                    db: None,
                    in_flight: Vec::new(),
                }],
            }],
            figures: CheckpointFigures::default(),
            unaligned: false,
        }
    }

    fn open(root: &Path) -> Storage {
        Storage::open(&Location::from(root)).unwrap()
    }

    fn write(root: &Path, id: u64, value: i64) -> PathBuf {
        let dir = open(root).child(&checkpoint_dir_name(id));
        let col: ArrayRef = Arc::new(Int64Array::from(vec![value]));
        let snap = OperatorSnapshot {
            keyed: vec![RecordBatch::try_from_iter([("v", col)]).unwrap()],
            entries: vec![b"pos".to_vec(), Vec::new()],
            ..OperatorSnapshot::default()
        };
        let files = write_snapshot(&dir, 0, 0, &snap).unwrap();
        write_manifest(&dir, &manifest(id, (files.0.first().cloned(), files.1))).unwrap();
        root.join(checkpoint_dir_name(id))
    }

    #[test]
    fn round_trip_and_fallback_past_a_corrupted_file() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), 1, 10);
        let d2 = write(root.path(), 2, 20);
        // Checkpoint 3 never completed: a state file, no manifest.
        open(root.path())
            .put("chk-000003/n000-s000.entries", vec![0; 4])
            .unwrap();

        let s = scan(&open(root.path()), "j").unwrap();
        assert_eq!(s.max_id, 3);
        let (dir, m) = s.latest.unwrap();
        assert_eq!(m.id, 2);
        let sub = &m.nodes[0].subtasks[0];
        let entries = read_entries(&dir, sub.entries.as_ref().unwrap()).unwrap();
        assert_eq!(entries, vec![b"pos".to_vec(), Vec::new()]);
        assert_eq!(
            read_keyed(&dir, sub.keyed.as_ref().unwrap()).unwrap()[0].num_rows(),
            1
        );

        // Flip one byte of checkpoint 2's keyed state: 1 is used instead.
        let f = d2.join(&sub.keyed.as_ref().unwrap().path);
        let mut bytes = std::fs::read(&f).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&f, bytes).unwrap();
        let s = scan(&open(root.path()), "j").unwrap();
        assert_eq!(s.latest.unwrap().1.id, 1);
        assert_eq!(s.max_attempt, Some(2));

        // A truncated manifest is skipped too.
        std::fs::write(d2.join(MANIFEST_FILE), b"{\"format\":").unwrap();
        assert_eq!(
            scan(&open(root.path()), "j").unwrap().latest.unwrap().1.id,
            1
        );
        // Another job's directory is refused.
        assert!(scan(&open(root.path()), "other").is_err());
    }

    #[test]
    fn retention_keeps_the_newest_and_drops_abandoned() {
        let root = tempfile::tempdir().unwrap();
        for id in 1..=4 {
            write(root.path(), id, id as i64);
        }
        std::fs::create_dir_all(root.path().join(checkpoint_dir_name(2)).join("x")).unwrap();
        open(root.path())
            .put("chk-000005/partial", vec![1])
            .unwrap();
        retain(&open(root.path()), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, vec!["chk-000003", "chk-000004", "chk-000005"]);
    }

    #[test]
    fn malformed_entries_are_errors() {
        assert!(decode_entries(&[1, 0, 0, 0, 9, 0, 0, 0, 1], "x").is_err());
        assert!(decode_entries(&[0, 0, 0, 0, 1], "x").is_err());
        assert_eq!(
            decode_entries(&encode_entries(&[]), "x").unwrap(),
            Vec::<Vec<u8>>::new()
        );
    }
}
