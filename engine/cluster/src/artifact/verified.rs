//! Knowing that a stored binary still is what its name says. A file's
//! SHA-256 is remembered per file identity ([`FileKey`]: device, inode,
//! length, modification and change times), so a file is hashed again only
//! when something may have changed it, and concurrent checks of one file
//! hash it once. Also the temporary files downloads and uploads are
//! written to, each under a name no other writer can share. Used by the
//! coordinator's store, the workers' caches and the CLI's cache; it knows
//! nothing of HTTP.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::client::hex;

/// One version of a file's content, told apart without reading it. The
/// change time cannot be set from user space, so a write in place is
/// noticed even when the modification time is put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileKey {
    /// The key of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether both keys name the same file (whatever its content).
    pub fn same_file(&self, other: &FileKey) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// What a check found at a path.
#[derive(Debug)]
pub enum Checked {
    /// The file holds the content its name says, open and at its start.
    Valid {
        /// The verified file: serve or run this one, not the path again.
        file: File,
        /// Its key when it was verified.
        key: FileKey,
    },
    /// No file there.
    Missing,
    /// The file's content hashes to something else.
    Corrupt {
        /// What it hashes to.
        actual: String,
        /// The file found corrupt (to quarantine exactly that one).
        key: FileKey,
    },
}

/// Remembers which file versions were verified; see the module comment.
#[derive(Debug, Default)]
pub struct Verifier {
    /// The key of each artifact's file when it last hashed right.
    known: Mutex<HashMap<String, FileKey>>,
    /// One gate per artifact being hashed: a second check waits for the
    /// first instead of hashing the same bytes again.
    gates: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Whole-file hashes done (for tests and logs).
    hashes: AtomicU64,
}

/// A file that changes under every read is reported corrupt after this
/// many tries.
const TRIES: usize = 3;

impl Verifier {
    /// Opens `path` and checks that it holds the content whose SHA-256
    /// (lowercase hex) is `sha256`, reading it only if its key differs
    /// from the one last verified. Blocking: call it off the async
    /// runtime.
    pub fn check(&self, sha256: &str, path: &Path) -> std::io::Result<Checked> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checked::Missing),
            Err(e) => return Err(e),
        };
        let mut key = FileKey::of(&file.metadata()?);
        if self.is_known(sha256, &key) {
            return Ok(Checked::Valid { file, key });
        }
        let gate = self.gate(sha256);
        let held = lock(&gate);
        let mut result = None;
        for _ in 0..TRIES {
            // Whoever held the gate before may just have hashed this file.
            if self.is_known(sha256, &key) {
                result = Some(Checked::Valid { file, key });
                break;
            }
            self.hashes.fetch_add(1, Ordering::Relaxed);
            file.seek(SeekFrom::Start(0))?;
            let actual = sha256_of_reader(&mut file)?;
            let after = FileKey::of(&file.metadata()?);
            if after != key {
                // Written while it was read: what was hashed is not what
                // is there now. Look again.
                key = after;
                continue;
            }
            if actual == sha256 {
                self.remember(sha256, key);
                file.seek(SeekFrom::Start(0))?;
                result = Some(Checked::Valid { file, key });
            } else {
                self.forget(sha256);
                result = Some(Checked::Corrupt { actual, key });
            }
            break;
        }
        drop(held);
        self.release(sha256, gate);
        Ok(result.unwrap_or(Checked::Corrupt {
            actual: "(a different content at every read)".into(),
            key,
        }))
    }

    /// Records that the file with `key` holds `sha256`'s content (its
    /// writer hashed every byte it wrote).
    pub fn remember(&self, sha256: &str, key: FileKey) {
        lock(&self.known).insert(sha256.to_string(), key);
    }

    /// Forgets what was verified of `sha256` (its file was removed).
    pub fn forget(&self, sha256: &str) {
        lock(&self.known).remove(sha256);
    }

    /// Whole-file hashes done so far.
    pub fn hashes(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }

    fn is_known(&self, sha256: &str, key: &FileKey) -> bool {
        lock(&self.known).get(sha256) == Some(key)
    }

    fn gate(&self, sha256: &str) -> Arc<Mutex<()>> {
        Arc::clone(lock(&self.gates).entry(sha256.to_string()).or_default())
    }

    /// Drops the gate from the map once nobody else holds it, so ids that
    /// were only asked for once leave nothing behind.
    fn release(&self, sha256: &str, gate: Arc<Mutex<()>>) {
        let mut gates = lock(&self.gates);
        // Clones are made under this lock: 2 = the map's and ours.
        if Arc::strong_count(&gate) == 2 {
            gates.remove(sha256);
        }
    }
}

/// Moves the corrupt file at `path` aside to `.NAME.corrupt` in the same
/// directory (replacing an earlier one, so at most one per artifact is
/// kept), if `path` still is the file found corrupt; a good file that
/// replaced it meanwhile stays. Blocking. Returns where it went.
pub fn quarantine(path: &Path, corrupt: &FileKey) -> std::io::Result<Option<PathBuf>> {
    match std::fs::metadata(path) {
        Ok(m) if FileKey::of(&m).same_file(corrupt) => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = path.with_file_name(format!(".{name}.corrupt"));
    std::fs::rename(path, &aside)?;
    Ok(Some(aside))
}

/// SHA-256 (lowercase hex) of everything `reader` yields, read in chunks.
pub fn sha256_of_reader(reader: &mut impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A file being written (a download or an upload), removed unless kept: a
/// failed or cancelled transfer leaves nothing a later run could mistake
/// for the artifact. Its name is `.STEM.PID.N.SUFFIX`, created with
/// `O_EXCL`, so no two writers (of this process or another on a shared
/// disk) ever write one file.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// Creates a new, empty temporary file in `dir`.
    pub async fn create(
        dir: &Path,
        stem: &str,
        suffix: &str,
    ) -> std::io::Result<(TempFile, tokio::fs::File)> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{stem}.{}.{n}.{suffix}", std::process::id()));
            match tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
            {
                Ok(file) => return Ok((TempFile { path, keep: false }, file)),
                // Left by an earlier process with the same id: next name.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the file alone from now on (it was renamed into place).
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            // One unlink; cheap enough not to need the blocking pool.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded data is plain, valid even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::sha256_hex;

    #[test]
    fn a_file_is_hashed_once_until_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a");
        std::fs::write(&path, b"content").expect("write");
        let sha = sha256_hex(b"content");
        let v = Verifier::default();
        for _ in 0..3 {
            assert!(matches!(
                v.check(&sha, &path).expect("check"),
                Checked::Valid { .. }
            ));
        }
        assert_eq!(v.hashes(), 1, "verified once, then known by its key");

        // Same length, different bytes: the change time tells.
        std::fs::write(&path, b"CONTENT").expect("write");
        match v.check(&sha, &path).expect("check") {
            Checked::Corrupt { actual, .. } => assert_eq!(actual, sha256_hex(b"CONTENT")),
            other => panic!("not refused: {other:?}"),
        }
        assert_eq!(v.hashes(), 2);
        assert!(matches!(
            v.check(&sha, &dir.path().join("absent")).expect("check"),
            Checked::Missing
        ));
    }

    #[test]
    fn concurrent_checks_hash_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        let bytes = vec![7u8; 8 << 20];
        std::fs::write(&path, &bytes).expect("write");
        let sha = sha256_hex(&bytes);
        let v = Arc::new(Verifier::default());
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (v, sha, path) = (Arc::clone(&v), sha.clone(), path.clone());
                std::thread::spawn(move || {
                    matches!(v.check(&sha, &path), Ok(Checked::Valid { .. }))
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().expect("thread"));
        }
        assert_eq!(v.hashes(), 1);
        assert!(lock(&v.gates).is_empty(), "no gate left behind");
    }

    #[test]
    fn quarantine_moves_only_the_corrupt_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x");
        std::fs::write(&path, b"bad").expect("write");
        let bad = FileKey::of(&std::fs::metadata(&path).expect("stat"));
        // Replaced by another file since: left alone.
        std::fs::remove_file(&path).expect("rm");
        std::fs::write(&path, b"good").expect("write");
        let good = FileKey::of(&std::fs::metadata(&path).expect("stat"));
        if !good.same_file(&bad) {
            assert_eq!(quarantine(&path, &bad).expect("quarantine"), None);
            assert!(path.exists());
        }
        let moved = quarantine(&path, &good).expect("quarantine");
        assert_eq!(moved, Some(dir.path().join(".x.corrupt")));
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn temp_files_never_share_a_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, _fa) = TempFile::create(dir.path(), "s", "part").await.expect("a");
        let (b, _fb) = TempFile::create(dir.path(), "s", "part").await.expect("b");
        assert_ne!(a.path(), b.path());
        let kept = b.path().to_path_buf();
        b.keep();
        drop(a);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(left, vec![kept]);
    }
}
