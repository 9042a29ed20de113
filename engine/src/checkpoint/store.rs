//! Checkpoint storage on a local (or mounted) directory:
//!
//! ```text
//! DIR/chk-000007/_manifest.json          written last: marks completion
//! DIR/chk-000007/n003-s001.keyed.arrow   keyed state, Arrow IPC file
//! DIR/chk-000007/n003-s001.entries       operator-state entries
//! ```
//!
//! A savepoint is the same layout in a directory of its own. Every
//! checkpoint is a full snapshot, so any retained one can also be restored
//! as a savepoint (with another parallelism). Finding the checkpoint to
//! resume from verifies every file against the manifest's size and CRC-32
//! and falls back to the previous checkpoint, with a warning, when one does
//! not match.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use tracing::{info, warn};

use std::collections::{HashMap, HashSet};

use super::manifest::{DbFile, DbState, FileRef, Manifest, FORMAT_VERSION, MANIFEST_FILE};
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

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

/// Writes `bytes` to `path` and syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io(format!("creating {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(format!("writing {}", path.display())))
}

fn file_ref(name: String, bytes: &[u8]) -> FileRef {
    FileRef {
        path: name,
        bytes: bytes.len() as u64,
        crc32: crc32fast::hash(bytes),
    }
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
    dir: &Path,
    node: usize,
    subtask: usize,
    snap: &OperatorSnapshot,
) -> Result<(Vec<FileRef>, Option<FileRef>)> {
    let stem = format!("n{node:03}-s{subtask:03}");
    let mut groups: Vec<Vec<&RecordBatch>> = Vec::new();
    for b in snap.keyed.iter().filter(|b| b.num_rows() > 0) {
        match groups.iter_mut().find(|g| g[0].schema() == b.schema()) {
            Some(g) => g.push(b),
            None => groups.push(vec![b]),
        }
    }
    let mut keyed = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let mut buf = Vec::new();
        {
            let mut w = FileWriter::try_new(&mut buf, &g[0].schema())?;
            for b in g {
                w.write(b)?;
            }
            w.finish()?;
        }
        let name = if i == 0 {
            format!("{stem}.keyed.arrow")
        } else {
            format!("{stem}.keyed-{i}.arrow")
        };
        write_synced(&dir.join(&name), &buf)?;
        keyed.push(file_ref(name, &buf));
    }
    let mut entries = None;
    if !snap.entries.is_empty() {
        let buf = encode_entries(&snap.entries);
        let name = format!("{stem}.entries");
        write_synced(&dir.join(&name), &buf)?;
        entries = Some(file_ref(name, &buf));
    }
    Ok((keyed, entries))
}

/// Copies `src` to `dst` (via a temporary name, synced) and returns its
/// reference (`rel` is the path recorded in the manifest).
fn copy_file(src: &Path, dst: &Path, rel: String) -> Result<FileRef> {
    let bytes = std::fs::read(src).map_err(io(format!("reading {}", src.display())))?;
    let tmp = dst.with_extension("uploading");
    write_synced(&tmp, &bytes)?;
    std::fs::rename(&tmp, dst).map_err(io(format!("storing {}", dst.display())))?;
    Ok(file_ref(rel, &bytes))
}

/// SST files the writer already stored, by shared path: reused by later
/// checkpoints of the same database without uploading them again.
pub type UploadCache = HashMap<String, FileRef>;

/// Stores a RocksDB native checkpoint into checkpoint directory `dir`.
/// With `root` (periodic checkpoints), SST files go to `root/shared`
/// once and are referenced afterwards; without (savepoints), every file is
/// copied into `dir` so the savepoint stands alone. Returns the database's
/// manifest entry and the bytes actually uploaded. The native checkpoint's
/// directory is removed afterwards.
pub fn write_db(
    dir: &Path,
    root: Option<&Path>,
    node: usize,
    subtask: usize,
    db: &DbCheckpoint,
    cache: &mut UploadCache,
) -> Result<(DbState, u64)> {
    let private = format!("n{node:03}-s{subtask:03}.db");
    std::fs::create_dir_all(dir.join(&private))
        .map_err(io(format!("creating {}", dir.display())))?;
    let mut files = Vec::new();
    let mut uploaded = 0u64;
    let mut entries: Vec<_> = std::fs::read_dir(&db.dir)
        .map_err(io(format!("listing {}", db.dir.display())))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        let file = match root.filter(|_| name.ends_with(".sst")) {
            Some(root) => {
                let shared = format!("{}-{name}", db.instance);
                let rel = format!("../{SHARED_DIR}/{shared}");
                let dst = root.join(SHARED_DIR).join(&shared);
                let cached = cache
                    .get(&rel)
                    .filter(|f| std::fs::metadata(&dst).is_ok_and(|m| m.len() == f.bytes))
                    .cloned();
                match cached {
                    Some(f) => f,
                    None => {
                        std::fs::create_dir_all(root.join(SHARED_DIR))
                            .map_err(io("creating the shared state directory"))?;
                        let f = copy_file(&e.path(), &dst, rel.clone())?;
                        uploaded += f.bytes;
                        cache.insert(rel, f.clone());
                        f
                    }
                }
            }
            None => {
                let rel = format!("{private}/{name}");
                let f = copy_file(&e.path(), &dir.join(&rel), rel)?;
                uploaded += f.bytes;
                f
            }
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
pub fn read_db(dir: &Path, db: &DbState, into: &Path) -> Result<RestoredDb> {
    std::fs::create_dir_all(into).map_err(io(format!("creating {}", into.display())))?;
    for f in &db.files {
        let bytes = read_verified(dir, &f.file)?;
        write_synced(&into.join(&f.name), &bytes)?;
    }
    Ok(RestoredDb {
        dir: into.to_path_buf(),
        key_groups: db.key_groups[0]..db.key_groups[1],
    })
}

/// Reads a file and checks it against its reference.
fn read_verified(dir: &Path, f: &FileRef) -> Result<Vec<u8>> {
    let path = dir.join(&f.path);
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|file| BufReader::new(file).read_to_end(&mut bytes))
        .map_err(|e| Error::Checkpoint(format!("reading {}: {e}", path.display())))?;
    if bytes.len() as u64 != f.bytes {
        return Err(Error::Checkpoint(format!(
            "{} has {} bytes, the manifest says {}",
            path.display(),
            bytes.len(),
            f.bytes
        )));
    }
    let crc = crc32fast::hash(&bytes);
    if crc != f.crc32 {
        return Err(Error::Checkpoint(format!(
            "{} fails its checksum (crc32 {crc:08x}, manifest {:08x})",
            path.display(),
            f.crc32
        )));
    }
    Ok(bytes)
}

/// Reads keyed-state batches from a verified file.
pub fn read_keyed(dir: &Path, f: &FileRef) -> Result<Vec<RecordBatch>> {
    let bytes = read_verified(dir, f)?;
    let reader = FileReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", f.path)))?;
    reader
        .map(|b| b.map_err(|e| Error::Checkpoint(format!("{}: {e}", f.path))))
        .collect()
}

/// Reads operator-state entries from a verified file.
pub fn read_entries(dir: &Path, f: &FileRef) -> Result<Vec<Vec<u8>>> {
    let bytes = read_verified(dir, f)?;
    decode_entries(&bytes, &f.path)
}

/// Writes the manifest (temp name, sync, rename, sync the directory).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::Internal(format!("encoding a manifest: {e}")))?;
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    write_synced(&tmp, &json)?;
    std::fs::rename(&tmp, dir.join(MANIFEST_FILE))
        .map_err(io(format!("publishing the manifest in {}", dir.display())))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a checkpoint's manifest without checking its files.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path)
        .map_err(|e| Error::Checkpoint(format!("reading {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Checkpoint(format!("{} is not a valid manifest: {e}", path.display())))
}

/// Reads and checks a checkpoint or savepoint directory: the manifest
/// parses, is of a known format, and every file matches its checksum.
pub fn load_verified(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let m = read_manifest(dir)?;
    if m.format != FORMAT_VERSION {
        return Err(Error::Checkpoint(format!(
            "{} has format {}, this build reads {FORMAT_VERSION}",
            path.display(),
            m.format
        )));
    }
    for f in m.files() {
        read_verified(dir, f)?;
    }
    Ok(m)
}

/// What a checkpoint directory holds when a job starts.
#[derive(Debug, Default)]
pub struct Scan {
    /// Highest checkpoint id of any directory, complete or not.
    pub max_id: u64,
    /// Highest attempt recorded in any readable manifest.
    pub max_attempt: Option<u64>,
    /// The newest checkpoint that verifies, with its directory.
    pub latest: Option<(PathBuf, Manifest)>,
}

/// Looks through `root` for checkpoints of `job`, newest first, falling
/// back past any that fail verification.
pub fn scan(root: &Path, job: &str) -> Result<Scan> {
    let mut out = Scan::default();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(format!("listing {}", root.display()), e)),
    };
    let mut ids: Vec<u64> = rd
        .flatten()
        .filter_map(|e| parse_checkpoint_dir(&e.file_name().to_string_lossy()))
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    out.max_id = ids.first().copied().unwrap_or(0);
    for id in ids {
        let dir = root.join(checkpoint_dir_name(id));
        if !dir.join(MANIFEST_FILE).exists() {
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
                    root.display(),
                    m.job
                )))
            }
            Ok(m) => {
                out.max_attempt = Some(out.max_attempt.unwrap_or(0).max(m.attempt));
                if out.latest.is_none() {
                    info!(checkpoint = id, dir = %dir.display(), "found completed checkpoint");
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

/// Deletes periodic checkpoints beyond the newest `retained` completed ones,
/// and abandoned (never completed) ones older than the newest completed.
pub fn retain(root: &Path, retained: usize) -> Result<()> {
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for e in std::fs::read_dir(root)
        .map_err(io(format!("listing {}", root.display())))?
        .flatten()
    {
        if let Some(id) = parse_checkpoint_dir(&e.file_name().to_string_lossy()) {
            if e.path().join(MANIFEST_FILE).exists() {
                complete.push(id);
            } else {
                incomplete.push(id);
            }
        }
    }
    complete.sort_unstable_by(|a, b| b.cmp(a));
    let newest = complete.first().copied().unwrap_or(0);
    let doomed = complete
        .iter()
        .skip(retained.max(1))
        .chain(incomplete.iter().filter(|id| **id < newest));
    for id in doomed {
        let dir = root.join(checkpoint_dir_name(*id));
        // A checkpoint is deleted manifest first, so a half-deleted one is
        // never mistaken for a complete one.
        let _ = std::fs::remove_file(dir.join(MANIFEST_FILE));
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            warn!(dir = %dir.display(), error = %e, "could not delete an old checkpoint");
        }
    }
    collect_shared(root, complete.iter().take(retained.max(1)))
}

/// Deletes shared SST files no retained checkpoint refers to.
fn collect_shared<'a>(root: &Path, kept: impl Iterator<Item = &'a u64>) -> Result<()> {
    let shared = root.join(SHARED_DIR);
    let Ok(rd) = std::fs::read_dir(&shared) else {
        return Ok(());
    };
    let mut referenced = HashSet::new();
    for id in kept {
        let dir = root.join(checkpoint_dir_name(*id));
        let Ok(bytes) = std::fs::read(dir.join(MANIFEST_FILE)) else {
            continue;
        };
        // A manifest that cannot be read pins nothing: it is not restorable.
        if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
            for f in m.files() {
                if let Some(name) = f.path.strip_prefix(&format!("../{SHARED_DIR}/")) {
                    referenced.insert(name.to_string());
                }
            }
        }
    }
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !referenced.contains(&name) && !name.ends_with(".uploading") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::{CheckpointFigures, NodeState, SubtaskState};
    use arrow::array::{ArrayRef, Int64Array};
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
                parallelism: 1,
                subtasks: vec![SubtaskState {
                    subtask: 0,
                    keyed: files.0,
                    keyed_more: Vec::new(),
                    entries: files.1,
                    db: None,
                }],
            }],
            figures: CheckpointFigures::default(),
        }
    }

    fn write(root: &Path, id: u64, value: i64) -> PathBuf {
        let dir = root.join(checkpoint_dir_name(id));
        std::fs::create_dir_all(&dir).unwrap();
        let col: ArrayRef = Arc::new(Int64Array::from(vec![value]));
        let snap = OperatorSnapshot {
            keyed: vec![RecordBatch::try_from_iter([("v", col)]).unwrap()],
            entries: vec![b"pos".to_vec(), Vec::new()],
            db: None,
        };
        let files = write_snapshot(&dir, 0, 0, &snap).unwrap();
        write_manifest(&dir, &manifest(id, (files.0.first().cloned(), files.1))).unwrap();
        dir
    }

    #[test]
    fn round_trip_and_fallback_past_a_corrupted_file() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), 1, 10);
        let d2 = write(root.path(), 2, 20);
        std::fs::create_dir_all(root.path().join(checkpoint_dir_name(3))).unwrap();

        let s = scan(root.path(), "j").unwrap();
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
        let s = scan(root.path(), "j").unwrap();
        assert_eq!(s.latest.unwrap().1.id, 1);
        assert_eq!(s.max_attempt, Some(2));

        // A truncated manifest is skipped too.
        std::fs::write(d2.join(MANIFEST_FILE), b"{\"format\":").unwrap();
        assert_eq!(scan(root.path(), "j").unwrap().latest.unwrap().1.id, 1);
        // Another job's directory is refused.
        assert!(scan(root.path(), "other").is_err());
    }

    #[test]
    fn retention_keeps_the_newest_and_drops_abandoned() {
        let root = tempfile::tempdir().unwrap();
        for id in 1..=4 {
            write(root.path(), id, id as i64);
        }
        std::fs::create_dir_all(root.path().join(checkpoint_dir_name(2)).join("x")).unwrap();
        std::fs::create_dir_all(root.path().join(checkpoint_dir_name(5))).unwrap();
        retain(root.path(), 2).unwrap();
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
