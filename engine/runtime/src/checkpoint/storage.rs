//! Where checkpoints and savepoints are kept: a local directory (plain
//! files) or, with the `s3` feature (on by default), an S3-compatible
//! bucket through the `object_store` crate.
//!
//! A [`Location`] is what users write (`/var/ck`, `file:///var/ck`,
//! `s3://bucket/prefix`); [`Storage`] is an opened location, a handle to a
//! "directory" of objects that hands out handles to its children. S3
//! settings come from the usual environment variables (`AWS_ENDPOINT`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP` for a plain-HTTP endpoint such as a local test server).
//! A build without `s3` links no HTTP client, TLS library or async
//! runtime, and an `s3://` location is a configuration error.
//!
//! Every object is written whole and atomically (a synced temporary file
//! renamed into place, a single S3 PUT), so a reader never sees a partial
//! file. Local writes are synced, so a completed checkpoint survives a
//! machine crash and not only a process crash.
//!
//! The engine runs on plain threads; the object store is async. S3 calls
//! block the calling thread on one small shared Tokio runtime, and when the
//! caller is itself inside an async runtime they run on a scoped helper
//! thread instead, so they never block a runtime's worker.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A checkpoint or savepoint location as a user writes it: a local path,
/// a `file://` URL or an `s3://bucket/prefix` URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location(String);

impl Location {
    /// The location as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A location inside this one.
    pub fn join(&self, name: &str) -> Location {
        Location(format!("{}/{name}", self.0.trim_end_matches('/')))
    }

    /// The enclosing location and this one's last name, when there is an
    /// enclosing one (not for a bucket root or a bare name).
    pub fn split_last(&self) -> Option<(Location, String)> {
        let (parent, name) = self.0.trim_end_matches('/').rsplit_once('/')?;
        let root = parent.is_empty() || parent.ends_with(':') || parent.ends_with(":/");
        if root || matches!(name, "" | "." | "..") {
            return None;
        }
        Some((Location(parent.to_string()), name.to_string()))
    }

    /// Whether this build can open the location: an `s3://` one needs
    /// sluice-engine's `s3` feature (on by default).
    pub fn check_available(&self) -> Result<()> {
        let s3 = self.0.starts_with("s3://") || self.0.starts_with("s3a://");
        if s3 && !cfg!(feature = "s3") {
            return Err(s3_unavailable(&self.0));
        }
        Ok(())
    }

    /// The local directory, when the location is one.
    pub fn local_path(&self) -> Option<PathBuf> {
        match self.0.split_once("://") {
            None => Some(PathBuf::from(&self.0)),
            Some(("file", rest)) => Some(PathBuf::from(rest)),
            Some(_) => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&Location> for Location {
    fn from(l: &Location) -> Self {
        l.clone()
    }
}

impl From<&str> for Location {
    fn from(s: &str) -> Self {
        Location(s.to_string())
    }
}

impl From<String> for Location {
    fn from(s: String) -> Self {
        Location(s)
    }
}

impl From<&String> for Location {
    fn from(s: &String) -> Self {
        Location(s.clone())
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Self {
        Location(p.to_string_lossy().into_owned())
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::from(p.as_path())
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Self {
        Location::from(p.as_path())
    }
}

impl std::str::FromStr for Location {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Location::from(s))
    }
}

/// An opened location: a directory of objects.
#[derive(Clone)]
pub struct Storage {
    backend: Backend,
    /// This directory inside the backend, as `/`-free names.
    base: Vec<String>,
    /// What the user wrote for this directory (for messages).
    location: Location,
}

#[derive(Clone)]
enum Backend {
    /// Files under this local directory.
    Local(PathBuf),
    /// Objects in a bucket.
    #[cfg(feature = "s3")]
    S3(s3::Bucket),
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Storage({})", self.location)
    }
}

impl Storage {
    /// Opens a location. Local directories are created.
    pub fn open(location: &Location) -> Result<Storage> {
        if let Some(dir) = location.local_path() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            return Ok(Storage {
                backend: Backend::Local(dir),
                base: Vec::new(),
                location: location.clone(),
            });
        }
        let s = location.as_str();
        let rest = s
            .strip_prefix("s3://")
            .or_else(|| s.strip_prefix("s3a://"))
            .ok_or_else(|| {
                Error::Config(format!(
                    "unsupported storage location '{s}': use a path, file:// or s3://bucket/prefix"
                ))
            })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Config(format!("'{s}' names no bucket")));
        }
        Ok(Storage {
            backend: open_bucket(s, bucket)?,
            base: names(prefix),
            location: location.clone(),
        })
    }

    /// Opens `location` as a child of the location enclosing it, so its
    /// relative paths may climb out with `..`: a retained incremental
    /// checkpoint refers to SST files in the `shared/` directory beside it,
    /// which a store rooted at the checkpoint itself could not reach.
    pub fn open_in_parent(location: &Location) -> Result<Storage> {
        match location.split_last() {
            Some((parent, name)) => Ok(Storage::open(&parent)?.child(&name)),
            None => Storage::open(location),
        }
    }

    /// The location of this directory.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// A handle to the child directory `name`.
    pub fn child(&self, name: &str) -> Storage {
        let mut base = self.base.clone();
        base.extend(names(name));
        Storage {
            backend: self.backend.clone(),
            base,
            location: self.location.join(name),
        }
    }

    /// The object at `rel`, a `/`-separated path relative to this
    /// directory that may climb out of it with `..` (shared files of
    /// incremental checkpoints live beside the checkpoint directories).
    fn resolve(&self, rel: &str) -> Vec<String> {
        let mut parts = self.base.clone();
        for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                parts.pop();
            } else {
                parts.push(part.to_string());
            }
        }
        parts
    }

    /// `rel` as the user would find it (for messages).
    pub fn describe(&self, rel: &str) -> String {
        format!("{}/{rel}", self.location.as_str().trim_end_matches('/'))
    }

    fn fail(&self, what: &str, rel: &str, e: impl fmt::Display) -> Error {
        Error::Checkpoint(format!("{what} {}: {e}", self.describe(rel)))
    }

    /// Stores `bytes` at `rel`, replacing what was there, atomically.
    pub fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        let parts = self.resolve(rel);
        match &self.backend {
            Backend::Local(root) => local::put(&local::path(root, &parts), &bytes)
                .map_err(|e| self.fail("writing", rel, e)),
            #[cfg(feature = "s3")]
            Backend::S3(b) => b
                .put(&parts, bytes)
                .map_err(|e| self.fail("writing", rel, e)),
        }
    }

    /// Makes the names of files put into this (local) directory durable;
    /// done once per checkpoint, after its last file. Object stores need
    /// nothing.
    pub fn sync_dir(&self) {
        if let Some(root) = self.local_root() {
            let dir = local::path(root, &self.base);
            for d in [Some(dir.as_path()), dir.parent()].into_iter().flatten() {
                if let Ok(f) = std::fs::File::open(d) {
                    let _ = f.sync_all();
                }
            }
        }
    }

    fn local_root(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local(root) => Some(root),
            #[cfg(feature = "s3")]
            Backend::S3(_) => None,
        }
    }

    /// The contents of `rel`, or `None` when there is no such object.
    pub fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let parts = self.resolve(rel);
        match &self.backend {
            Backend::Local(root) => match std::fs::read(local::path(root, &parts)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.fail("reading", rel, e)),
            },
            #[cfg(feature = "s3")]
            Backend::S3(b) => b.get(&parts).map_err(|e| self.fail("reading", rel, e)),
        }
    }

    /// The size of `rel`, or `None` when there is no such object.
    pub fn size(&self, rel: &str) -> Result<Option<u64>> {
        let parts = self.resolve(rel);
        match &self.backend {
            Backend::Local(root) => match std::fs::metadata(local::path(root, &parts)) {
                Ok(m) if m.is_file() => Ok(Some(m.len())),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.fail("looking up", rel, e)),
            },
            #[cfg(feature = "s3")]
            Backend::S3(b) => b.size(&parts).map_err(|e| self.fail("looking up", rel, e)),
        }
    }

    /// Names of the child directories and of the objects directly in this
    /// directory, each sorted. A directory that does not exist is empty.
    pub fn list(&self) -> Result<(Vec<String>, Vec<String>)> {
        let (mut dirs, mut files) = match &self.backend {
            Backend::Local(root) => local::list(&local::path(root, &self.base))
                .map_err(|e| self.fail("listing", "", e))?,
            #[cfg(feature = "s3")]
            Backend::S3(b) => b
                .list(&self.base)
                .map_err(|e| self.fail("listing", "", e))?,
        };
        dirs.sort();
        files.sort();
        Ok((dirs, files))
    }

    /// Deletes `rel`; a missing object is not an error.
    pub fn delete(&self, rel: &str) -> Result<()> {
        let parts = self.resolve(rel);
        match &self.backend {
            Backend::Local(root) => {
                local::delete(root, &parts).map_err(|e| self.fail("deleting", rel, e))
            }
            #[cfg(feature = "s3")]
            Backend::S3(b) => b.delete(&parts).map_err(|e| self.fail("deleting", rel, e)),
        }
    }

    /// Deletes this directory and everything under it.
    pub fn delete_all(&self) -> Result<()> {
        match &self.backend {
            Backend::Local(root) => match std::fs::remove_dir_all(local::path(root, &self.base)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.fail("deleting", "", e)),
            },
            #[cfg(feature = "s3")]
            Backend::S3(b) => b
                .delete_all(&self.base)
                .map_err(|(path, e)| self.fail("deleting", &path, e)),
        }
    }
}

/// The `/`-separated names of `path`, without empty ones.
fn names(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(feature = "s3")]
fn open_bucket(location: &str, bucket: &str) -> Result<Backend> {
    Ok(Backend::S3(s3::Bucket::open(location, bucket)?))
}

#[cfg(not(feature = "s3"))]
fn open_bucket(location: &str, _bucket: &str) -> Result<Backend> {
    Err(s3_unavailable(location))
}

fn s3_unavailable(location: &str) -> Error {
    Error::Config(format!(
        "'{location}' is an S3 location, but this job was built without sluice-engine's \
         `s3` feature; enable it (it is on by default) or use a local directory"
    ))
}

/// Files in a local directory: atomic, synced writes; empty directories
/// left by a delete are removed up to the storage's root, so a local
/// directory looks like a bucket's listing.
mod local {
    use super::*;

    /// Temporary files are `.NAME.PID.N.tmp` beside the file they become.
    const TMP_SUFFIX: &str = ".tmp";
    static TMP: AtomicU64 = AtomicU64::new(0);

    pub(super) fn path(root: &Path, parts: &[String]) -> PathBuf {
        let mut p = root.to_path_buf();
        p.extend(parts);
        p
    }

    fn is_temporary(name: &str) -> bool {
        name.starts_with('.') && name.ends_with(TMP_SUFFIX)
    }

    pub(super) fn put(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let dir = file
            .parent()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
        std::fs::create_dir_all(dir)?;
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let n = TMP.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}{TMP_SUFFIX}", std::process::id()));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        match written.and_then(|()| std::fs::rename(&tmp, file)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    pub(super) fn list(dir: &Path) -> std::io::Result<(Vec<String>, Vec<String>)> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()))
            }
            Err(e) => return Err(e),
        };
        let (mut dirs, mut files) = (Vec::new(), Vec::new());
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_dir() {
                dirs.push(name);
            } else if !is_temporary(&name) {
                files.push(name);
            }
        }
        Ok((dirs, files))
    }

    pub(super) fn delete(root: &Path, parts: &[String]) -> std::io::Result<()> {
        match std::fs::remove_file(path(root, parts)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        // Empty parents go too (not the root): a bucket has no empty "directories".
        for depth in (1..parts.len()).rev() {
            if std::fs::remove_dir(path(root, &parts[..depth])).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// Objects in an S3-compatible bucket, through `object_store` on a small
/// shared Tokio runtime.
#[cfg(feature = "s3")]
mod s3 {
    use std::future::Future;
    use std::sync::{Arc, OnceLock};

    use futures::TryStreamExt;
    use object_store::aws::AmazonS3Builder;
    use object_store::path::Path as ObjPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    use crate::error::{Error, Result};

    /// The runtime that drives object-store requests for every job of the
    /// process: one worker thread is plenty, the requests are I/O bound.
    fn runtime() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sluice-storage")
                .enable_all()
                .build()
                .expect("starting the storage runtime")
        })
    }

    /// Runs `f` to completion from synchronous code.
    fn block<F>(f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| runtime().block_on(f))
                    .join()
                    .expect("storage helper thread")
            })
        } else {
            runtime().block_on(f)
        }
    }

    fn obj(parts: &[String]) -> ObjPath {
        ObjPath::from_iter(parts.iter().map(String::as_str))
    }

    fn not_found(e: &object_store::Error) -> bool {
        matches!(e, object_store::Error::NotFound { .. })
    }

    /// One bucket.
    #[derive(Clone)]
    pub(super) struct Bucket(Arc<dyn ObjectStore>);

    impl Bucket {
        pub(super) fn open(location: &str, bucket: &str) -> Result<Bucket> {
            let store = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| Error::Config(format!("configuring S3 for {location}: {e}")))?;
            Ok(Bucket(Arc::new(store)))
        }

        pub(super) fn put(&self, parts: &[String], bytes: Vec<u8>) -> object_store::Result<()> {
            block(self.0.put(&obj(parts), PutPayload::from(bytes))).map(|_| ())
        }

        pub(super) fn get(&self, parts: &[String]) -> object_store::Result<Option<Vec<u8>>> {
            let path = obj(parts);
            block(async {
                match self.0.get(&path).await {
                    Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                    Err(e) if not_found(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            })
        }

        pub(super) fn size(&self, parts: &[String]) -> object_store::Result<Option<u64>> {
            match block(self.0.head(&obj(parts))) {
                Ok(meta) => Ok(Some(meta.size)),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        }

        pub(super) fn list(
            &self,
            base: &[String],
        ) -> object_store::Result<(Vec<String>, Vec<String>)> {
            let base = obj(base);
            let prefix = (!base.as_ref().is_empty()).then_some(&base);
            let listed = match block(self.0.list_with_delimiter(prefix)) {
                Ok(l) => l,
                Err(e) if not_found(&e) => return Ok((Vec::new(), Vec::new())),
                Err(e) => return Err(e),
            };
            let name = |p: &ObjPath| p.filename().unwrap_or_default().to_string();
            Ok((
                listed.common_prefixes.iter().map(name).collect(),
                listed.objects.iter().map(|o| name(&o.location)).collect(),
            ))
        }

        pub(super) fn delete(&self, parts: &[String]) -> object_store::Result<()> {
            match block(self.0.delete(&obj(parts))) {
                Err(e) if !not_found(&e) => Err(e),
                _ => Ok(()),
            }
        }

        /// Deletes every object under `base`; on failure, the path and error.
        pub(super) fn delete_all(
            &self,
            base: &[String],
        ) -> std::result::Result<(), (String, object_store::Error)> {
            let base = obj(base);
            let prefix = (!base.as_ref().is_empty()).then_some(&base);
            let objects: Vec<ObjPath> = match block(async {
                self.0
                    .list(prefix)
                    .map_ok(|o| o.location)
                    .try_collect()
                    .await
            }) {
                Ok(o) => o,
                Err(e) if not_found(&e) => Vec::new(),
                Err(e) => return Err((String::new(), e)),
            };
            for path in objects {
                match block(self.0.delete(&path)) {
                    Err(e) if !not_found(&e) => return Err((path.as_ref().to_string(), e)),
                    _ => {}
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_off_their_last_name() {
        let l = Location::from("s3://bucket/jobs/chk-000002/");
        assert_eq!(
            l.split_last(),
            Some((Location::from("s3://bucket/jobs"), "chk-000002".to_string()))
        );
        assert_eq!(Location::from("s3://bucket").split_last(), None);
        assert_eq!(Location::from("/chk").split_last(), None);
        assert_eq!(Location::from("chk").split_last(), None);
        assert_eq!(
            Location::from("ck/chk-1").split_last(),
            Some((Location::from("ck"), "chk-1".to_string()))
        );
    }

    #[test]
    fn local_round_trip_listing_and_parent_paths() {
        let root = tempfile::tempdir().unwrap();
        let s = Storage::open(&Location::from(root.path())).unwrap();
        let chk = s.child("chk-000001");
        chk.put("a.bin", b"hello".to_vec()).unwrap();
        chk.put("../shared/x.sst", b"sst".to_vec()).unwrap();
        assert!(root.path().join("chk-000001/a.bin").is_file());
        assert!(root.path().join("shared/x.sst").is_file());
        assert_eq!(chk.get("a.bin").unwrap().unwrap(), b"hello");
        assert_eq!(chk.get("missing").unwrap(), None);
        assert_eq!(chk.size("../shared/x.sst").unwrap(), Some(3));
        let (mut dirs, files) = s.list().unwrap();
        dirs.sort();
        assert_eq!(dirs, vec!["chk-000001", "shared"]);
        assert!(files.is_empty());
        assert_eq!(chk.list().unwrap().1, vec!["a.bin"]);
        // Opened on its own (as a restore source), the checkpoint still
        // reaches the shared files beside it.
        let alone =
            Storage::open_in_parent(&Location::from(root.path().join("chk-000001"))).unwrap();
        assert_eq!(alone.get("../shared/x.sst").unwrap().unwrap(), b"sst");
        assert_eq!(alone.get("a.bin").unwrap().unwrap(), b"hello");
        chk.delete_all().unwrap();
        assert!(!root.path().join("chk-000001").exists());
        assert_eq!(s.child("nothing").list().unwrap(), (vec![], vec![]));
    }

    #[test]
    fn local_deletes_leave_no_empty_directories_and_hide_partial_writes() {
        let root = tempfile::tempdir().unwrap();
        let s = Storage::open(&Location::from(root.path())).unwrap();
        let shared = s.child("shared");
        shared.put("a.sst", b"a".to_vec()).unwrap();
        // A write that died half way leaves a temporary file behind.
        std::fs::write(root.path().join("shared/.b.sst.1.0.tmp"), b"b").unwrap();
        assert_eq!(shared.list().unwrap().1, vec!["a.sst"]);
        std::fs::remove_file(root.path().join("shared/.b.sst.1.0.tmp")).unwrap();
        shared.delete("a.sst").unwrap();
        shared.delete("a.sst").unwrap();
        assert!(!root.path().join("shared").exists());
        assert!(root.path().exists(), "the root itself stays");
    }

    #[cfg(not(feature = "s3"))]
    #[test]
    fn s3_without_the_feature_is_a_configuration_error() {
        let e = Storage::open(&Location::from("s3://bucket/ck")).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        assert!(e.to_string().contains("`s3` feature"), "{e}");
    }

    #[test]
    fn locations() {
        assert_eq!(
            Location::from("file:///tmp/x").local_path(),
            Some(PathBuf::from("/tmp/x"))
        );
        assert_eq!(Location::from("s3://b/p").local_path(), None);
        assert_eq!(Location::from("s3://b/p/").join("c").as_str(), "s3://b/p/c");
        assert!(Storage::open(&Location::from("gopher://x")).is_err());
        assert!(Storage::open(&Location::from("s3:///p")).is_err());
    }
}
