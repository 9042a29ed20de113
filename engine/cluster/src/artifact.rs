//! A cache of job binaries (the worker's, and the CLI's when it describes
//! a running job's binary for a rescale): stored under their SHA-256,
//! downloaded once, verified before they are installed, executable. It
//! owns the files under `artifacts/`, nothing about processes.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::client::{hex, Client};
use sluice_engine::error::{Error, Result};

/// Job binaries by SHA-256, each fetched once and verified before use.
pub struct ArtifactCache {
    dir: PathBuf,
    /// One lock per artifact, so executors of one job starting together
    /// download it once.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ArtifactCache {
    /// A cache in `dir` (created by the first download).
    pub fn new(dir: PathBuf) -> Self {
        ArtifactCache {
            dir,
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// The binary's path, fetched from the coordinator if not cached yet.
    pub async fn get(&self, client: &Client, sha256: &str) -> Result<PathBuf> {
        validate_sha256(sha256)?;
        let path = self.dir.join(sha256);
        let gate = Arc::clone(lock(&self.fetching).entry(sha256.to_string()).or_default());
        let _fetching = gate.lock().await;
        // Only verified files are ever renamed to this name.
        if tokio::fs::metadata(&path).await.is_ok() {
            return Ok(path);
        }
        let tmp = TempFile::new(&self.dir, sha256);
        let mut file = tokio::fs::File::create(&tmp.path)
            .await
            .map_err(|e| Error::io(format!("creating {}", tmp.path.display()), e))?;
        let bytes = client.download_artifact(sha256, &mut file).await?;
        drop(file);
        debug!(artifact = sha256, bytes, "artifact downloaded");
        self.install(tmp, sha256).await
    }

    /// Verifies `tmp` holds the artifact `sha256`, then makes it executable
    /// and moves it in place; on any failure `tmp` is removed.
    async fn install(&self, tmp: TempFile, sha256: &str) -> Result<PathBuf> {
        let path = self.dir.join(sha256);
        let hashed = tmp.path.clone();
        let actual = tokio::task::spawn_blocking(move || sha256_of_file(&hashed))
            .await
            .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))??;
        if actual != sha256 {
            // A corrupted or substituted binary must never run.
            return Err(Error::io(
                format!("fetching artifact {sha256}"),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("content hashes to {actual}, refused"),
                ),
            ));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(&tmp.path, std::fs::Permissions::from_mode(0o755))
                .await
                .map_err(|e| Error::io(format!("chmod {}", tmp.path.display()), e))?;
        }
        tokio::fs::rename(&tmp.path, &path)
            .await
            .map_err(|e| Error::io(format!("renaming to {}", path.display()), e))?;
        tmp.keep();
        Ok(path)
    }
}

/// Removes the binaries in `dir` no name in `used` refers to and that are
/// older than `grace` (a download or upload may have just finished for a
/// job on its way); returns the names removed. Hidden names (downloads
/// and uploads in progress) are left alone. A running process keeps its
/// binary's contents when the file is removed.
pub fn remove_unused(
    dir: &Path,
    used: &std::collections::HashSet<String>,
    grace: std::time::Duration,
) -> Result<Vec<String>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || used.contains(&name) {
            continue;
        }
        let fresh = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < grace);
        if fresh {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed.push(name),
            Err(e) => warn!(artifact = %name, error = %e, "cannot remove an unused binary"),
        }
    }
    Ok(removed)
}

/// Downloads a killed worker left behind: never installed, never used.
pub async fn remove_stale_downloads(dir: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded map is plain data, valid even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn validate_sha256(s: &str) -> Result<()> {
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "'{s}' is not an artifact id (64 lower-case hex digits)"
        )))
    }
}

/// SHA-256 (hex) of the file at `path`, read in chunks: an artifact's
/// content address.
pub fn sha256_of_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A download in progress, removed unless kept: a failed or cancelled
/// fetch must leave nothing a later run could mistake for the artifact.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn new(dir: &Path, sha256: &str) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        TempFile {
            path: dir.join(format!(".{sha256}.{}.{n}.tmp", std::process::id())),
            keep: false,
        }
    }

    fn keep(mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{sha256_hex, Client};

    fn temp_with(dir: &Path, sha: &str, bytes: &[u8]) -> TempFile {
        let tmp = TempFile::new(dir, sha);
        std::fs::write(&tmp.path, bytes).expect("write temp");
        tmp
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn wrong_hash_is_refused_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ArtifactCache::new(dir.path().to_path_buf());
        let claimed = sha256_hex(b"the real binary");
        let tmp = temp_with(dir.path(), &claimed, b"something else");
        let err = cache
            .install(tmp, &claimed)
            .await
            .expect_err("must be refused");
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[tokio::test]
    async fn verified_artifact_is_installed_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ArtifactCache::new(dir.path().to_path_buf());
        let bytes = b"#!/bin/sh\nexit 0\n";
        let sha = sha256_hex(bytes);
        let path = cache
            .install(temp_with(dir.path(), &sha, bytes), &sha)
            .await
            .expect("installed");
        assert_eq!(path, dir.path().join(&sha));
        assert_eq!(entries(dir.path()), vec![sha.clone()]);
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755);
        }
    }

    #[tokio::test]
    async fn cached_artifact_is_not_fetched_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ArtifactCache::new(dir.path().to_path_buf());
        let sha = sha256_hex(b"cached");
        std::fs::write(dir.path().join(&sha), b"cached").expect("write");
        // Nothing listens there: a fetch would fail.
        let client = Client::new("http://127.0.0.1:1").expect("client");
        let path = cache
            .get(&client, &sha)
            .await
            .expect("served from the cache");
        assert_eq!(path, dir.path().join(&sha));
    }

    #[tokio::test]
    async fn failed_fetch_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ArtifactCache::new(dir.path().to_path_buf());
        let client = Client::new("http://127.0.0.1:1").expect("client");
        let sha = sha256_hex(b"absent");
        let err = cache.get(&client, &sha).await.expect_err("nothing listens");
        assert!(matches!(err, Error::Unreachable { .. }), "{err}");
        assert!(entries(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn artifact_ids_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ArtifactCache::new(dir.path().to_path_buf());
        let client = Client::new("http://127.0.0.1:1").expect("client");
        for bad in ["../etc/passwd", "ABC", &"A".repeat(64)] {
            let err = cache.get(&client, bad).await.expect_err("invalid id");
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
    }

    #[tokio::test]
    async fn stale_downloads_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sha = sha256_hex(b"x");
        let stale = TempFile::new(dir.path(), &sha);
        std::fs::write(&stale.path, b"partial").expect("write");
        stale.keep();
        std::fs::write(dir.path().join(&sha), b"x").expect("write");
        remove_stale_downloads(dir.path()).await;
        assert_eq!(entries(dir.path()), vec![sha]);
    }
}
