//! The coordinator's store of shipped job binaries,
//! `DATA_DIR/artifacts/<sha256>`: uploads streamed to a temporary file of
//! their own (never shared with another upload), hashed as they arrive,
//! within the size limits, and renamed into place only when the content
//! matches its address; stored binaries verified against their name when
//! they are served or submitted (once per file version, see
//! [`crate::artifact::verified`]), a corrupt one moved aside. It knows
//! nothing of HTTP: the routes turn its errors into answers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{error, info, warn};

use crate::artifact::verified::{self, Checked, FileKey, TempFile, Verifier};
use crate::client::hex;
use sluice_engine::error::Error;

/// How much the store takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactLimits {
    /// Largest single binary accepted (`--max-artifact-bytes`).
    pub max_artifact_bytes: u64,
    /// Largest total of stored binaries and uploads in progress
    /// (`--max-artifact-store-bytes`).
    pub max_store_bytes: u64,
}

impl Default for ArtifactLimits {
    /// 2 GiB per binary (a release job binary with full debug info is
    /// about 0.6 GiB, stripped about 0.05 GiB), 20 GiB in all.
    fn default() -> Self {
        ArtifactLimits {
            max_artifact_bytes: 2 << 30,
            max_store_bytes: 20 << 30,
        }
    }
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The name is not a SHA-256.
    #[error("{0:?} is not an artifact id (a lowercase hex SHA-256)")]
    BadId(String),
    /// Nothing is stored under the name.
    #[error("no artifact {0}")]
    NotFound(String),
    /// The binary is larger than one binary may be.
    #[error(
        "artifact {sha256} is larger than the limit of {limit} bytes per binary \
         (the coordinator's --max-artifact-bytes){}",
        size.map(|s| format!("; it has {s} bytes")).unwrap_or_default()
    )]
    TooLarge {
        /// The upload's name.
        sha256: String,
        /// Its size, if it said.
        size: Option<u64>,
        /// The limit.
        limit: u64,
    },
    /// The store would grow past its total limit.
    #[error(
        "the artifact store is full: it holds {used} bytes (uploads in progress included) of \
         its limit of {limit} bytes (the coordinator's --max-artifact-store-bytes), and \
         artifact {sha256} needs {needed} more; cancel or wait for jobs to be forgotten, \
         or raise the limit"
    )]
    StoreFull {
        /// The upload's name.
        sha256: String,
        /// Bytes stored and being uploaded.
        used: u64,
        /// Bytes the upload still needs.
        needed: u64,
        /// The limit.
        limit: u64,
    },
    /// The uploaded bytes are not the content the name says.
    #[error("the uploaded content hashes to {actual}, not {expected}")]
    Mismatch {
        /// The name it was uploaded under.
        expected: String,
        /// What it hashes to.
        actual: String,
    },
    /// The upload ended before its body did.
    #[error("upload interrupted: {0}")]
    Interrupted(String),
    /// A stored binary no longer matches its name.
    #[error(
        "stored artifact {sha256} is corrupt: its content hashes to {actual}; it was moved \
         aside{} and must be uploaded again",
        aside.as_ref().map(|p| format!(" to {}", p.display())).unwrap_or_default()
    )]
    Corrupt {
        /// The artifact.
        sha256: String,
        /// What its file hashed to.
        actual: String,
        /// Where the corrupt file went.
        aside: Option<PathBuf>,
    },
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] Error),
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// The binary is stored now.
    Created,
    /// A verified copy was stored already; the upload was not kept.
    AlreadyStored,
}

/// The store; see the module comment.
#[derive(Debug)]
pub struct ArtifactStore {
    dir: PathBuf,
    limits: ArtifactLimits,
    verifier: Verifier,
    /// Bytes received by uploads in progress (counted against the total).
    in_flight: AtomicU64,
}

/// Bytes read from disk per chunk of a download.
pub const DOWNLOAD_CHUNK: usize = 256 * 1024;

impl ArtifactStore {
    /// The store in `dir` (created). Uploads a killed coordinator left
    /// unfinished are removed: only the leader writes here, and it is
    /// opening.
    pub fn open(dir: &Path, limits: ArtifactLimits) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".part") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ArtifactStore {
            dir: dir.to_path_buf(),
            limits,
            verifier: Verifier::default(),
            in_flight: AtomicU64::new(0),
        })
    }

    /// The limits it enforces.
    pub fn limits(&self) -> ArtifactLimits {
        self.limits
    }

    /// Where the binary with this hash is kept.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Whole-file hashes done to verify stored binaries.
    pub fn verifications(&self) -> u64 {
        self.verifier.hashes()
    }

    /// The stored binary, verified against its name and open at its
    /// start, with its length. A stored file that no longer matches is
    /// moved aside (and [`ArtifactError::Corrupt`] says where). Blocking:
    /// reads the whole file the first time.
    pub fn open_verified(&self, sha256: &str) -> Result<(std::fs::File, u64), ArtifactError> {
        check_id(sha256)?;
        let path = self.path(sha256);
        let checked = self
            .verifier
            .check(sha256, &path)
            .map_err(|e| Error::io(format!("verifying {}", path.display()), e))?;
        match checked {
            Checked::Valid { file, key } => Ok((file, key.len())),
            Checked::Missing => Err(ArtifactError::NotFound(sha256.to_string())),
            Checked::Corrupt { actual, key } => {
                let aside = match verified::quarantine(&path, &key) {
                    Ok(aside) => aside,
                    Err(e) => {
                        warn!(artifact = sha256, error = %e, "cannot move a corrupt binary aside");
                        None
                    }
                };
                let e = ArtifactError::Corrupt {
                    sha256: sha256.to_string(),
                    actual,
                    aside,
                };
                error!(artifact = sha256, "{e}");
                Err(e)
            }
        }
    }

    /// [`open_verified`](Self::open_verified) off the async runtime.
    pub async fn open_verified_async(
        self: &Arc<Self>,
        sha256: &str,
    ) -> Result<(tokio::fs::File, u64), ArtifactError> {
        let (store, sha) = (Arc::clone(self), sha256.to_string());
        let (file, len) = tokio::task::spawn_blocking(move || store.open_verified(&sha))
            .await
            .map_err(|e| Error::Internal(format!("verification task failed: {e}")))??;
        Ok((tokio::fs::File::from_std(file), len))
    }

    /// Stores the upload `body` of `sha256` (`declared` bytes long if the
    /// request said). A binary stored and verified already is kept (its
    /// time refreshed, so it is not removed as unused before the
    /// submission that follows) and the body read and dropped; a stored
    /// one that is corrupt is replaced.
    pub async fn upload<S, E>(
        self: &Arc<Self>,
        sha256: &str,
        declared: Option<u64>,
        mut body: S,
    ) -> Result<Uploaded, ArtifactError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        check_id(sha256)?;
        let limit = self.limits.max_artifact_bytes;
        if let Some(size) = declared.filter(|&s| s > limit) {
            drain_refused(&mut body, declared).await;
            return Err(ArtifactError::TooLarge {
                sha256: sha256.to_string(),
                size: Some(size),
                limit,
            });
        }
        match self.open_verified_async(sha256).await {
            Ok(_) => {
                self.refresh(sha256).await;
                // Read the body anyway: a server that answers before the
                // request is fully sent makes the client fail with a
                // broken pipe.
                while let Some(chunk) = body.next().await {
                    if chunk.is_err() {
                        break;
                    }
                }
                return Ok(Uploaded::AlreadyStored);
            }
            // Moved aside: this upload replaces it.
            Err(ArtifactError::NotFound(_) | ArtifactError::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        let stored = self.stored_bytes().await?;
        let mut reserved = Reservation {
            counter: &self.in_flight,
            bytes: 0,
        };
        let fits = |reserved: &Reservation<'_>, more: u64| {
            let used = stored + reserved.counter.load(Ordering::Relaxed);
            if used.saturating_add(more) > self.limits.max_store_bytes {
                Err(ArtifactError::StoreFull {
                    sha256: sha256.to_string(),
                    used,
                    needed: more,
                    limit: self.limits.max_store_bytes,
                })
            } else {
                Ok(())
            }
        };
        if let Err(full) = fits(&reserved, declared.unwrap_or(0)) {
            drain_refused(&mut body, declared).await;
            return Err(full);
        }

        let (tmp, mut file) = TempFile::create(&self.dir, sha256, "part")
            .await
            .map_err(|e| Error::io(format!("creating an upload in {}", self.dir.display()), e))?;
        let io = |what: &str, e: std::io::Error| {
            ArtifactError::Io(Error::io(format!("{what} {}", tmp.path().display()), e))
        };
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ArtifactError::Interrupted(e.to_string()))?;
            let n = chunk.len() as u64;
            received += n;
            if received > limit {
                return Err(ArtifactError::TooLarge {
                    sha256: sha256.to_string(),
                    size: declared,
                    limit,
                });
            }
            fits(&reserved, n)?;
            reserved.add(n);
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| io("writing", e))?;
        }
        if let Some(d) = declared.filter(|&d| d != received) {
            return Err(ArtifactError::Interrupted(format!(
                "{received} of {d} bytes received"
            )));
        }
        let actual = hex(&hasher.finalize());
        if actual != sha256 {
            return Err(ArtifactError::Mismatch {
                expected: sha256.to_string(),
                actual,
            });
        }
        file.sync_all().await.map_err(|e| io("syncing", e))?;
        let written = FileKey::of(&file.metadata().await.map_err(|e| io("reading", e))?);
        drop(file);
        // Atomic: readers see the old file or this one, never a mixture;
        // a corrupt file it replaces was moved aside already.
        let path = self.path(sha256);
        tokio::fs::rename(tmp.path(), &path)
            .await
            .map_err(|e| io("renaming", e))?;
        tmp.keep();
        // Every byte of this file was hashed on its way in. The rename
        // changed its change time: the key is taken again, and kept only
        // if the name still is this file.
        if let Ok(meta) = tokio::fs::metadata(&path).await {
            let key = FileKey::of(&meta);
            if key.same_file(&written) && key.len() == written.len() {
                self.verifier.remember(sha256, key);
            }
        }
        info!(artifact = sha256, bytes = received, "artifact stored");
        Ok(Uploaded::Created)
    }

    /// Marks a stored binary as just uploaded again, so it is not removed
    /// as unused before the submission that follows refers to it. Its
    /// verification is kept: only its times changed, by this process.
    async fn refresh(self: &Arc<Self>, sha256: &str) {
        let (store, sha) = (Arc::clone(self), sha256.to_string());
        let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let path = store.path(&sha);
            let file = std::fs::File::options().write(true).open(&path)?;
            let before = FileKey::of(&file.metadata()?);
            file.set_modified(std::time::SystemTime::now())?;
            let after = FileKey::of(&file.metadata()?);
            if before.same_file(&after) && store.is_verified(&sha, &before) {
                store.verifier.remember(&sha, after);
            }
            Ok(())
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(artifact = sha256, error = %e, "cannot refresh an artifact's time"),
            Err(e) => warn!(artifact = sha256, error = %e, "cannot refresh an artifact's time"),
        }
    }

    fn is_verified(&self, sha256: &str, key: &FileKey) -> bool {
        // Re-checking by key costs no read when it is known.
        matches!(
            self.verifier.check(sha256, &self.path(sha256)),
            Ok(Checked::Valid { key: k, .. }) if k == *key
        )
    }

    /// Bytes of the stored binaries (hidden files are uploads in progress,
    /// counted apart, or corrupt files moved aside).
    async fn stored_bytes(&self) -> Result<u64, ArtifactError> {
        let dir = self.dir.clone();
        let total = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let mut total = 0;
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
            Ok(total)
        })
        .await
        .map_err(|e| Error::Internal(format!("store size task failed: {e}")))?
        .map_err(|e| Error::io(format!("reading {}", self.dir.display()), e))?;
        Ok(total)
    }

    /// Removes the binaries no name in `used` refers to and that were not
    /// uploaded within `grace`; returns the names removed.
    pub fn remove_unused(
        &self,
        used: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> Result<Vec<String>, Error> {
        let removed = crate::artifact::remove_unused(&self.dir, used, grace)?;
        for sha in &removed {
            self.verifier.forget(sha);
        }
        Ok(removed)
    }
}

/// Bytes of an upload in progress, counted in the store's total until the
/// upload ends (stored, the bytes count as a file; failed, as nothing).
struct Reservation<'a> {
    counter: &'a AtomicU64,
    bytes: u64,
}

impl Reservation<'_> {
    fn add(&mut self, n: u64) {
        self.counter.fetch_add(n, Ordering::Relaxed);
        self.bytes += n;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

fn check_id(s: &str) -> Result<(), ArtifactError> {
    if crate::coordinator::jobs::is_sha256(s) {
        Ok(())
    } else {
        Err(ArtifactError::BadId(s.to_string()))
    }
}

/// A refused body still declared this small is read (and dropped) before
/// the answer: a client still sending when a 413 arrives sees a broken
/// pipe instead of the answer, and `sluice submit` could not say why.
const DRAIN_REFUSED_BYTES: u64 = 64 << 20;

/// Reads and drops the rest of a body refused up front, if it declared at
/// most [`DRAIN_REFUSED_BYTES`]; a larger one is not read (its client
/// sees the connection close).
async fn drain_refused<S, E>(body: &mut S, declared: Option<u64>)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    if declared.is_some_and(|n| n <= DRAIN_REFUSED_BYTES) {
        while let Some(Ok(_)) = body.next().await {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::sha256_hex;

    fn body(parts: &[&[u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::copy_from_slice(p)))
                .collect::<Vec<_>>(),
        )
    }

    fn store(dir: &Path, limits: ArtifactLimits) -> Arc<ArtifactStore> {
        Arc::new(ArtifactStore::open(dir, limits).expect("open"))
    }

    fn hidden(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[tokio::test]
    async fn limits_are_enforced_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(
            dir.path(),
            ArtifactLimits {
                max_artifact_bytes: 10,
                max_store_bytes: 15,
            },
        );
        let big = sha256_hex(b"0123456789ab");
        // Said up front, and found while streaming (no length given).
        for declared in [Some(12), None] {
            let e = s
                .upload(&big, declared, body(&[b"012345", b"6789ab"]))
                .await
                .expect_err("too large");
            assert!(
                matches!(e, ArtifactError::TooLarge { limit: 10, .. }),
                "{e}"
            );
            assert!(e.to_string().contains("--max-artifact-bytes"), "{e}");
        }
        let a = sha256_hex(b"0123456789");
        assert_eq!(
            s.upload(&a, Some(10), body(&[b"0123456789"]))
                .await
                .expect("fits"),
            Uploaded::Created
        );
        let b = sha256_hex(b"abcdefgh");
        let e = s
            .upload(&b, Some(8), body(&[b"abcdefgh"]))
            .await
            .expect_err("store full");
        assert!(e.to_string().contains("--max-artifact-store-bytes"), "{e}");
        assert!(e.to_string().contains("holds 10 bytes"), "{e}");
        let e = s
            .upload(&b, None, body(&[b"abc", b"defgh"]))
            .await
            .expect_err("store full while streaming");
        assert!(matches!(e, ArtifactError::StoreFull { .. }), "{e}");
        assert!(hidden(dir.path()).is_empty(), "{:?}", hidden(dir.path()));
        assert_eq!(s.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_corrupt_entry_is_refused_then_replaced_by_a_good_upload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), ArtifactLimits::default());
        let sha = sha256_hex(b"binary");
        s.upload(&sha, None, body(&[b"bin", b"ary"]))
            .await
            .expect("stored");
        assert_eq!(s.verifications(), 0, "hashed on its way in");
        s.open_verified(&sha).expect("verified");
        assert_eq!(s.verifications(), 0, "known by its key");

        std::fs::write(s.path(&sha), b"BINARY").expect("corrupt it");
        let e = s.open_verified(&sha).expect_err("corrupt");
        assert!(matches!(e, ArtifactError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("uploaded again"), "{e}");
        assert!(matches!(
            s.open_verified(&sha),
            Err(ArtifactError::NotFound(_))
        ));
        assert_eq!(hidden(dir.path()), vec![format!(".{sha}.corrupt")]);

        // Corrupted again, then uploaded again: the upload fixes it.
        std::fs::write(s.path(&sha), b"BINARY").expect("corrupt it");
        assert_eq!(
            s.upload(&sha, Some(6), body(&[b"binary"]))
                .await
                .expect("stored"),
            Uploaded::Created
        );
        let (mut f, len) = s.open_verified(&sha).expect("verified");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut back).expect("read");
        assert_eq!((back.as_slice(), len), (&b"binary"[..], 6));
        assert_eq!(
            s.upload(&sha, Some(6), body(&[b"binary"]))
                .await
                .expect("kept"),
            Uploaded::AlreadyStored
        );
    }

    #[tokio::test]
    async fn wrong_or_short_uploads_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), ArtifactLimits::default());
        let sha = sha256_hex(b"binary");
        let e = s
            .upload(&sha, None, body(&[b"other"]))
            .await
            .expect_err("mismatch");
        assert!(matches!(e, ArtifactError::Mismatch { .. }), "{e}");
        let e = s
            .upload(&sha, Some(6), body(&[b"bin"]))
            .await
            .expect_err("short");
        assert!(matches!(e, ArtifactError::Interrupted(_)), "{e}");
        assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none());
    }

    #[test]
    fn stale_uploads_are_removed_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".abc.1.0.part"), b"half").expect("write");
        std::fs::write(dir.path().join(".abc.corrupt"), b"kept").expect("write");
        store(dir.path(), ArtifactLimits::default());
        assert_eq!(hidden(dir.path()), vec![".abc.corrupt".to_string()]);
    }
}
