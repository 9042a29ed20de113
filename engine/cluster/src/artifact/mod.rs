//! A cache of job binaries (the worker's, and the CLI's when it describes
//! a running job's binary for a rescale): stored under their SHA-256,
//! downloaded once, verified before they are installed and again (by file
//! identity, see [`verified`]) each time one is handed out to run,
//! executable. It owns the files under its directory, nothing about
//! processes.

pub mod verified;

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{debug, warn};

use crate::client::Client;
use sluice_engine::error::{Error, Result};
use verified::{Checked, TempFile, Verifier};

/// Job binaries by SHA-256, each fetched once and verified before use.
pub struct ArtifactCache {
    dir: PathBuf,
    /// One lock per artifact, so executors of one job starting together
    /// download it once.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What was verified of the cached files.
    verifier: Arc<Verifier>,
}

impl ArtifactCache {
    /// A cache in `dir` (created by the first download).
    pub fn new(dir: PathBuf) -> Self {
        ArtifactCache {
            dir,
            fetching: Mutex::new(HashMap::new()),
            verifier: Arc::default(),
        }
    }

    /// This user's own cache (see [`user_cache_dir`]), for the CLI: never
    /// a directory others can write, such as the shared temporary one.
    pub fn for_user() -> Result<Self> {
        Ok(ArtifactCache::new(user_cache_dir()?))
    }

    /// The binary's path, fetched from the coordinator if not cached yet.
    /// A cached file is verified against its name first (hashed again only
    /// if it changed since it was last verified); one that no longer
    /// matches is removed and fetched again.
    pub async fn get(&self, client: &Client, sha256: &str) -> Result<PathBuf> {
        validate_sha256(sha256)?;
        let path = self.dir.join(sha256);
        let gate = Arc::clone(lock(&self.fetching).entry(sha256.to_string()).or_default());
        let _fetching = gate.lock().await;
        match self.check(sha256).await? {
            Checked::Valid { .. } => return Ok(path),
            Checked::Missing => {}
            Checked::Corrupt { actual, key } => {
                warn!(artifact = sha256, %actual, path = %path.display(),
                    "a cached binary no longer matches its SHA-256; removed, fetching it again");
                let p = path.clone();
                tokio::task::spawn_blocking(move || {
                    // Only the file found corrupt: never one just installed.
                    match std::fs::metadata(&p) {
                        Ok(m) if verified::FileKey::of(&m).same_file(&key) => {
                            std::fs::remove_file(&p)
                        }
                        _ => Ok(()),
                    }
                })
                .await
                .map_err(|e| Error::Internal(format!("removal task failed: {e}")))?
                .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
            }
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let (tmp, mut file) = TempFile::create(&self.dir, sha256, "tmp")
            .await
            .map_err(|e| Error::io(format!("creating a download in {}", self.dir.display()), e))?;
        let bytes = client.download_artifact(sha256, &mut file).await?;
        drop(file);
        debug!(artifact = sha256, bytes, "artifact downloaded");
        self.install(tmp, sha256).await
    }

    /// What the cached file of `sha256` holds, off the async runtime.
    async fn check(&self, sha256: &str) -> Result<Checked> {
        let verifier = Arc::clone(&self.verifier);
        let (sha, path) = (sha256.to_string(), self.dir.join(sha256));
        tokio::task::spawn_blocking(move || verifier.check(&sha, &path))
            .await
            .map_err(|e| Error::Internal(format!("verification task failed: {e}")))?
            .map_err(|e| Error::io(format!("verifying {}", self.dir.join(sha256).display()), e))
    }

    /// Verifies `tmp` holds the artifact `sha256`, then makes it executable
    /// and moves it in place; on any failure `tmp` is removed.
    async fn install(&self, tmp: TempFile, sha256: &str) -> Result<PathBuf> {
        let path = self.dir.join(sha256);
        let hashed = tmp.path().to_path_buf();
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
        tokio::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(|e| Error::io(format!("chmod {}", tmp.path().display()), e))?;
        let written = tokio::fs::metadata(tmp.path())
            .await
            .map(|m| verified::FileKey::of(&m))
            .map_err(|e| Error::io(format!("stat {}", tmp.path().display()), e))?;
        tokio::fs::rename(tmp.path(), &path)
            .await
            .map_err(|e| Error::io(format!("renaming to {}", path.display()), e))?;
        tmp.keep();
        // The file hashed above, if the name still is it (a rename changes
        // the change time, so the key is taken again).
        if let Ok(meta) = tokio::fs::metadata(&path).await {
            let key = verified::FileKey::of(&meta);
            if key.same_file(&written) && key.len() == written.len() {
                self.verifier.remember(sha256, key);
            }
        }
        Ok(path)
    }
}

/// This user's cache of job binaries: `$XDG_CACHE_HOME/sluice/artifacts`,
/// else `$HOME/.cache/sluice/artifacts`, mode 0700 (and `sluice` made
/// writable by its owner only); a directory that is a symbolic link or
/// belongs to another user is refused, since whatever is in it may be run.
pub fn user_cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => match std::env::var_os("HOME").map(PathBuf::from) {
            Some(home) if home.is_absolute() => home.join(".cache"),
            _ => {
                return Err(Error::Config(
                    "no cache directory: set XDG_CACHE_HOME or HOME (or pass --binary)".into(),
                ))
            }
        },
    };
    std::fs::create_dir_all(&base)
        .map_err(|e| Error::io(format!("creating {}", base.display()), e))?;
    let me = std::fs::metadata("/proc/self")
        .map_err(|e| Error::io("finding this process's user in /proc/self", e))?
        .uid();
    let mut dir = base;
    for part in ["sluice", "artifacts"] {
        dir.push(part);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
        let meta = std::fs::symlink_metadata(&dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        if !meta.is_dir() || meta.uid() != me {
            return Err(Error::Config(format!(
                "{} is not a directory of this user's (uid {me}); refusing to run binaries from it",
                dir.display()
            )));
        }
        // `sluice` may hold other things of this user's: only others'
        // write access goes. The binaries are nobody else's business.
        let private = if part == "artifacts" {
            0o700
        } else {
            meta.mode() & 0o755
        };
        if meta.mode() & 0o777 != private {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(private))
                .map_err(|e| Error::io(format!("chmod {private:o} {}", dir.display()), e))?;
        }
    }
    Ok(dir)
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
/// content address. Blocking.
pub fn sha256_of_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    verified::sha256_of_reader(&mut file)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{sha256_hex, Client};

    async fn temp_with(dir: &Path, sha: &str, bytes: &[u8]) -> TempFile {
        let (tmp, _file) = TempFile::create(dir, sha, "tmp").await.expect("temp");
        std::fs::write(tmp.path(), bytes).expect("write temp");
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
        let tmp = temp_with(dir.path(), &claimed, b"something else").await;
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
            .install(temp_with(dir.path(), &sha, bytes).await, &sha)
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

    /// A file planted (or corrupted) under an artifact's name is never
    /// handed out: it is removed and the binary fetched again.
    #[tokio::test]
    async fn a_cached_file_that_does_not_match_its_name_is_not_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ArtifactCache::new(dir.path().to_path_buf());
        let sha = sha256_hex(b"the job");
        std::fs::write(dir.path().join(&sha), b"#!/bin/sh\necho planted\n").expect("write");
        // Nothing listens there: the fetch again fails, and nothing is left.
        let client = Client::new("http://127.0.0.1:1").expect("client");
        let err = cache.get(&client, &sha).await.expect_err("not the job");
        assert!(matches!(err, Error::Unreachable { .. }), "{err}");
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));

        // Verified once; changed in place afterwards: checked again.
        std::fs::write(dir.path().join(&sha), b"the job").expect("write");
        cache.get(&client, &sha).await.expect("matches");
        std::fs::write(dir.path().join(&sha), b"THE JOB").expect("write");
        cache.get(&client, &sha).await.expect_err("changed");
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn the_user_cache_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("cache");
        std::fs::create_dir_all(base.join("sluice")).expect("mkdir");
        std::fs::set_permissions(base.join("sluice"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        // The process environment is shared by the tests of this binary;
        // no other test reads these variables.
        std::env::set_var("XDG_CACHE_HOME", &base);
        let got = user_cache_dir().expect("cache dir");
        assert_eq!(got, base.join("sluice").join("artifacts"));
        let mode = |d: &Path| std::fs::metadata(d).expect("stat").mode() & 0o777;
        assert_eq!(
            mode(&base.join("sluice")),
            0o755,
            "others' write access gone"
        );
        assert_eq!(mode(&got), 0o700);
        // A symbolic link in its place (someone else's directory) is refused.
        std::fs::remove_dir(&got).expect("rmdir");
        std::os::unix::fs::symlink(dir.path(), &got).expect("symlink");
        let err = user_cache_dir().expect_err("a link");
        assert!(err.to_string().contains("refusing"), "{err}");
        std::env::remove_var("XDG_CACHE_HOME");
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
        let stale = temp_with(dir.path(), &sha, b"partial").await;
        stale.keep();
        std::fs::write(dir.path().join(&sha), b"x").expect("write");
        remove_stale_downloads(dir.path()).await;
        assert_eq!(entries(dir.path()), vec![sha]);
    }
}
