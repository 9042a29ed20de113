//! Where checkpoints and savepoints are kept: a local directory or an
//! S3-compatible bucket, both through the `object_store` crate.
//!
//! A [`Location`] is what users write (`/var/ck`, `file:///var/ck`,
//! `s3://bucket/prefix`); [`Storage`] is an opened location, a handle to a
//! "directory" of objects that hands out handles to its children. S3
//! settings come from the usual environment variables (`AWS_ENDPOINT`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP` for a plain-HTTP endpoint such as a local test server).
//!
//! Every object is written whole with one `put`, which both backends make
//! atomic (a temporary file renamed into place, a single S3 PUT), so a
//! reader never sees a partial file. Local writes are also synced, so a
//! completed checkpoint survives a machine crash and not only a process
//! crash.
//!
//! The engine runs on plain threads; the object store is async. Calls
//! block the calling thread on one small shared Tokio runtime, and when the
//! caller is itself inside an async runtime they run on a scoped helper
//! thread instead, so they never block a runtime's worker.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

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

/// An opened location: a directory of objects.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// This directory, inside the store.
    base: ObjPath,
    /// What the user wrote for this directory (for messages).
    location: Location,
    /// The local directory the store is rooted at, for syncing files.
    local_root: Option<PathBuf>,
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
            let store = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| Error::Checkpoint(format!("opening {location}: {e}")))?
                .with_automatic_cleanup(true);
            return Ok(Storage {
                store: Arc::new(store),
                base: ObjPath::default(),
                location: location.clone(),
                local_root: Some(dir),
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
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| Error::Config(format!("configuring S3 for {s}: {e}")))?;
        Ok(Storage {
            store: Arc::new(store),
            base: ObjPath::from(prefix.trim_matches('/')),
            location: location.clone(),
            local_root: None,
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
        Storage {
            store: self.store.clone(),
            base: self.base.clone().join(name),
            location: self.location.join(name),
            local_root: self.local_root.clone(),
        }
    }

    /// The object at `rel`, a `/`-separated path relative to this
    /// directory that may climb out of it with `..` (shared files of
    /// incremental checkpoints live beside the checkpoint directories).
    fn resolve(&self, rel: &str) -> ObjPath {
        let mut parts: Vec<String> = self.base.parts().map(|p| p.as_ref().to_string()).collect();
        for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                parts.pop();
            } else {
                parts.push(part.to_string());
            }
        }
        ObjPath::from_iter(parts)
    }

    /// `rel` as the user would find it (for messages).
    pub fn describe(&self, rel: &str) -> String {
        format!("{}/{rel}", self.location.as_str().trim_end_matches('/'))
    }

    fn fail(&self, what: &str, rel: &str, e: object_store::Error) -> Error {
        Error::Checkpoint(format!("{what} {}: {e}", self.describe(rel)))
    }

    /// Stores `bytes` at `rel`, replacing what was there, atomically.
    pub fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.resolve(rel);
        block(self.store.put(&path, PutPayload::from(bytes)))
            .map_err(|e| self.fail("writing", rel, e))?;
        if let Some(root) = &self.local_root {
            let file = root.join(path.as_ref());
            let synced = std::fs::File::open(&file).and_then(|f| f.sync_all());
            synced.map_err(|e| Error::io(format!("syncing {}", file.display()), e))?;
        }
        Ok(())
    }

    /// Makes the names of files put into this (local) directory durable;
    /// done once per checkpoint, after its last file. Object stores need
    /// nothing.
    pub fn sync_dir(&self) {
        if let Some(root) = &self.local_root {
            let dir = root.join(self.base.as_ref());
            for d in [Some(dir.as_path()), dir.parent()].into_iter().flatten() {
                if let Ok(f) = std::fs::File::open(d) {
                    let _ = f.sync_all();
                }
            }
        }
    }

    /// The contents of `rel`, or `None` when there is no such object.
    pub fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let path = self.resolve(rel);
        let got = block(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| self.fail("reading", rel, e))
    }

    /// The size of `rel`, or `None` when there is no such object.
    pub fn size(&self, rel: &str) -> Result<Option<u64>> {
        match block(self.store.head(&self.resolve(rel))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("looking up", rel, e)),
        }
    }

    /// Names of the child directories and of the objects directly in this
    /// directory. A directory that does not exist is empty.
    pub fn list(&self) -> Result<(Vec<String>, Vec<String>)> {
        let prefix = (!self.base.as_ref().is_empty()).then_some(&self.base);
        let listed = match block(self.store.list_with_delimiter(prefix)) {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(self.fail("listing", "", e)),
        };
        let name = |p: &ObjPath| p.filename().unwrap_or_default().to_string();
        Ok((
            listed.common_prefixes.iter().map(name).collect(),
            listed.objects.iter().map(|o| name(&o.location)).collect(),
        ))
    }

    /// Deletes `rel`; a missing object is not an error.
    pub fn delete(&self, rel: &str) -> Result<()> {
        match block(self.store.delete(&self.resolve(rel))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("deleting", rel, e)),
        }
    }

    /// Deletes this directory and everything under it.
    pub fn delete_all(&self) -> Result<()> {
        let prefix = (!self.base.as_ref().is_empty()).then_some(&self.base);
        let objects: Vec<ObjPath> = block(async {
            self.store
                .list(prefix)
                .map_ok(|o| o.location)
                .try_collect()
                .await
        })
        .or_else(|e| match e {
            object_store::Error::NotFound { .. } => Ok(Vec::new()),
            e => Err(self.fail("listing", "", e)),
        })?;
        for path in objects {
            match block(self.store.delete(&path)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.fail("deleting", path.as_ref(), e)),
            }
        }
        if let Some(root) = &self.local_root {
            // Empty directories are not objects; remove the husk.
            let _ = std::fs::remove_dir_all(root.join(self.base.as_ref()));
        }
        Ok(())
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
