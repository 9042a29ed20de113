//! Parquet files in an object store (S3 or anything speaking its API),
//! exactly once, through `object_store`'s multipart uploads.
//!
//! A file is one multipart upload to its final key, started when the file
//! opens. Its bytes go up as parts (in the background, at most
//! [`IN_FLIGHT`] parts per file at a time, so memory stays bounded) as soon
//! as [`BucketDir::part_size`] of them are buffered. Nothing is visible
//! under the final key until the upload is completed, which happens when
//! the checkpoint that staged the finished file completes (or, without
//! checkpoints, when the file rolls).
//!
//! A checkpoint of a file that stays open waits for its parts and puts the
//! bytes after the last part, which cannot be a part of their own (every
//! part but the last must be at least 5 MiB), into a staging object
//! `_staging/tails/{stem}-{offset}` (as Flink's S3 recoverable writer
//! does); the checkpoint records the upload, its parts and that object.
//! Recovery completes the upload with those parts plus one last part: the
//! recorded tail bytes and the recorded footer. Parts the failed run
//! uploaded after the checkpoint are simply not listed, so S3 drops them.
//! Then it lists the uploads still in progress under the prefix (S3's
//! ListMultipartUploads) and aborts those of the failed run's subtasks,
//! which no checkpoint knows.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sluice_engine::{Error, Result};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::names::{self, Name, STAGING};
use super::state::{Durable, FileEntry};

/// Parts of one file uploading at the same time; a writer that gets
/// further ahead waits (backpressure, bounded memory).
pub const IN_FLIGHT: usize = 2;

/// An object store with multipart uploads under our control.
pub trait Bucket: ObjectStore + MultipartStore {}
impl<T: ObjectStore + MultipartStore> Bucket for T {}

/// The runtime that drives uploads for every sink of the process.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-upload")
            .enable_all()
            .build()
            .expect("starting the upload runtime")
    })
}

/// Runs `f` to completion from a task thread (or, when called inside an
/// async runtime, from a helper thread, so no runtime worker blocks).
fn block<F>(f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| runtime().block_on(f))
                .join()
                .expect("upload helper thread")
        })
    } else {
        runtime().block_on(f)
    }
}

/// Lists the multipart uploads in progress under a key prefix: S3's
/// ListMultipartUploads, which `object_store` has no call for, as a
/// request presigned by it (so credentials, region and endpoint are the
/// store's own).
#[derive(Debug)]
struct UploadLister {
    s3: AmazonS3,
    http: reqwest::Client,
}

impl UploadLister {
    /// (key, upload id) of every upload in progress under `prefix`.
    async fn list(&self, prefix: &str) -> object_store::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        loop {
            let mut query = vec![
                ("uploads".to_string(), String::new()),
                ("prefix".to_string(), prefix.to_string()),
            ];
            if let Some((k, u)) = &marker {
                query.push(("key-marker".into(), k.clone()));
                query.push(("upload-id-marker".into(), u.clone()));
            }
            let url = self
                .s3
                .signed_url_opts(
                    reqwest::Method::GET,
                    &ObjPath::default(),
                    std::time::Duration::from_secs(300),
                    &SignedUrlOptions::new().with_query(query),
                )
                .await?;
            let generic = |e: String| object_store::Error::Generic {
                store: "S3",
                source: e.into(),
            };
            let resp = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| generic(e.to_string()))?;
            let status = resp.status();
            let body = resp.text().await.map_err(|e| generic(e.to_string()))?;
            if !status.is_success() {
                return Err(generic(format!("listing uploads: {status}: {body}")));
            }
            for u in body.split("<Upload>").skip(1) {
                if let (Some(k), Some(id)) = (xml_field(u, "Key"), xml_field(u, "UploadId")) {
                    out.push((k, id));
                }
            }
            let truncated = xml_field(&body, "IsTruncated").is_some_and(|t| t == "true");
            match (
                truncated,
                xml_field(&body, "NextKeyMarker"),
                xml_field(&body, "NextUploadIdMarker"),
            ) {
                (true, Some(k), Some(u)) => marker = Some((k, u)),
                _ => return Ok(out),
            }
        }
    }
}

/// The text of the first `<name>` element in `xml`, unescaped.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let v = xml
        .split(&format!("<{name}>"))
        .nth(1)?
        .split(&format!("</{name}>"))
        .next()?;
    Some(
        v.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// A prefix of a bucket the files go under.
#[derive(Clone)]
pub struct BucketDir {
    store: Arc<dyn Bucket>,
    base: String,
    location: String,
    /// Bytes buffered before they go up as a part (at least 5 MiB for S3).
    pub part_size: usize,
    /// Finds uploads no checkpoint knows (S3 only).
    lister: Option<Arc<UploadLister>>,
}

impl std::fmt::Debug for BucketDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BucketDir({})", self.location)
    }
}

/// A file's upload while it is being written.
#[derive(Debug)]
pub struct Upload {
    key: ObjPath,
    stem: String,
    upload_id: String,
    /// ETags of the parts known to be uploaded, in order.
    parts: Vec<String>,
    /// Parts on their way up, in order after `parts`.
    pending: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    /// Bytes handed to parts (done or pending).
    uploaded: u64,
    /// The staging object with the bytes after `uploaded`, as of the last
    /// checkpoint.
    tail: Option<String>,
    /// Staging objects to delete once the file is published.
    garbage: Vec<String>,
}

impl BucketDir {
    /// Opens `s3://bucket/prefix` with the `AWS_*` settings of the
    /// environment (as checkpoint storage does).
    pub fn open_s3(url: &str, part_size: usize) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .or_else(|| url.strip_prefix("s3a://"))
            .ok_or_else(|| Error::Config(format!("'{url}' is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Config(format!("'{url}' names no bucket")));
        }
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| Error::Config(format!("configuring S3 for {url}: {e}")))?;
        let mut dir = Self::new(Arc::new(store.clone()), prefix, url, part_size);
        dir.lister = Some(Arc::new(UploadLister {
            s3: store,
            http: reqwest::Client::new(),
        }));
        Ok(dir)
    }

    /// Files under `prefix` of `store`.
    pub fn new(store: Arc<dyn Bucket>, prefix: &str, location: &str, part_size: usize) -> Self {
        BucketDir {
            store,
            base: prefix.trim_matches('/').to_string(),
            location: location.to_string(),
            part_size,
            lister: None,
        }
    }

    fn key(&self, rel: &str) -> Result<ObjPath> {
        ObjPath::parse(names::join(&self.base, rel))
            .map_err(|e| Error::Config(format!("'{rel}' cannot be an object name: {e}")))
    }

    fn rel(&self, key: &ObjPath) -> String {
        let k = key.as_ref();
        if self.base.is_empty() {
            k.to_string()
        } else {
            k.strip_prefix(&self.base)
                .map(|r| r.trim_start_matches('/').to_string())
                .unwrap_or_else(|| k.to_string())
        }
    }

    fn fail(&self, what: &str, rel: &str, e: impl std::fmt::Display) -> Error {
        Error::connector(
            "parquet",
            format!("{what} {}/{rel}: {e}", self.location.trim_end_matches('/')),
        )
    }

    /// Starts the upload of the file `target` (named `stem`).
    pub fn create(&self, target: &str, stem: &str) -> Result<Upload> {
        let key = self.key(target)?;
        let upload_id = block(self.store.create_multipart(&key))
            .map_err(|e| self.fail("starting an upload to", target, e))?;
        Ok(Upload {
            key,
            stem: stem.to_string(),
            upload_id,
            parts: Vec::new(),
            pending: VecDeque::new(),
            uploaded: 0,
            tail: None,
            garbage: Vec::new(),
        })
    }

    /// Writes object `rel` whole (a put is atomic: readers see all of it
    /// or nothing).
    pub(crate) fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        let key = self.key(rel)?;
        block(self.store.put(&key, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.fail("writing", rel, e))
    }

    /// Object `rel`, if it exists.
    pub(crate) fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let key = self.key(rel)?;
        let got = block(async {
            match self.store.get(&key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| self.fail("reading", rel, e))
    }

    /// Bytes `range` of object `rel`.
    #[cfg(feature = "iceberg")]
    pub(crate) fn get_range(&self, rel: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let key = self.key(rel)?;
        let got = block(self.store.get_ranges(&key, std::slice::from_ref(&range)))
            .map_err(|e| self.fail("reading", rel, e))?;
        Ok(got
            .into_iter()
            .next()
            .map(|b| b.to_vec())
            .unwrap_or_default())
    }

    fn size(&self, rel: &str) -> Result<Option<u64>> {
        let key = self.key(rel)?;
        match block(self.store.head(&key)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("looking up", rel, e)),
        }
    }

    /// Deletes object `rel` (gone already is fine).
    pub(crate) fn delete(&self, rel: &str) -> Result<()> {
        let key = self.key(rel)?;
        match block(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("deleting", rel, e)),
        }
    }

    /// Every object under `rel` (relative names) with when it was last
    /// written.
    #[cfg(feature = "iceberg")]
    pub(crate) fn list_modified(&self, rel: &str) -> Result<Vec<(String, std::time::SystemTime)>> {
        let prefix = self.key(rel)?;
        let objects: Vec<object_store::ObjectMeta> =
            block(async { self.store.list(Some(&prefix)).try_collect().await })
                .map_err(|e| self.fail("listing", rel, e))?;
        Ok(objects
            .iter()
            .map(|o| {
                (
                    self.rel(&o.location),
                    std::time::SystemTime::from(o.last_modified),
                )
            })
            .collect())
    }

    /// Every object under `rel` (relative names).
    fn list(&self, rel: &str) -> Result<Vec<String>> {
        let prefix = if rel.is_empty() && self.base.is_empty() {
            None
        } else {
            Some(self.key(rel)?)
        };
        let keys: Vec<ObjPath> = block(async {
            self.store
                .list(prefix.as_ref())
                .map_ok(|m| m.location)
                .try_collect()
                .await
        })
        .map_err(|e| self.fail("listing", rel, e))?;
        Ok(keys.iter().map(|k| self.rel(k)).collect())
    }

    /// Sends buffered bytes up as a part once there are `part_size` of
    /// them (or any, with `last`); waits when too many parts are on their
    /// way.
    pub fn ship(&self, up: &mut Upload, buf: &mut Vec<u8>, last: bool) -> Result<()> {
        if buf.len() >= self.part_size || (last && !buf.is_empty()) {
            let bytes = std::mem::take(buf);
            up.uploaded += bytes.len() as u64;
            let idx = up.parts.len() + up.pending.len();
            let (store, key, id) = (self.store.clone(), up.key.clone(), up.upload_id.clone());
            up.pending.push_back(runtime().spawn(async move {
                store
                    .put_part(&key, &id, idx, PutPayload::from(bytes))
                    .await
            }));
        }
        while up.pending.len() > IN_FLIGHT {
            self.wait_one(up)?;
        }
        Ok(())
    }

    fn wait_one(&self, up: &mut Upload) -> Result<()> {
        let Some(h) = up.pending.pop_front() else {
            return Ok(());
        };
        let part = block(h)
            .map_err(|e| Error::Internal(format!("an upload task failed: {e}")))?
            .map_err(|e| self.fail("uploading a part of", &up.stem, e))?;
        up.parts.push(part.content_id);
        Ok(())
    }

    /// At a checkpoint: every part up, the rest of `buf` in a staging
    /// object; returns where the committed bytes are.
    pub fn persist(&self, up: &mut Upload, buf: &mut Vec<u8>) -> Result<Durable> {
        self.ship(up, buf, false)?;
        while !up.pending.is_empty() {
            self.wait_one(up)?;
        }
        up.tail = if buf.is_empty() {
            None
        } else {
            // Named by where it starts: a later checkpoint before the next
            // part rewrites the same object with more bytes, whose start
            // is the same, so an older checkpoint still reads its own.
            let rel = format!("{STAGING}/tails/{}-{:012}", up.stem, up.uploaded);
            self.put(&rel, buf.clone())?;
            if !up.garbage.contains(&rel) {
                up.garbage.push(rel.clone());
            }
            Some(rel)
        };
        Ok(self.durable(up))
    }

    fn durable(&self, up: &Upload) -> Durable {
        Durable::Upload {
            upload_id: up.upload_id.clone(),
            parts: up.parts.clone(),
            uploaded: up.uploaded,
            tail: up.tail.clone(),
        }
    }

    /// The file is finished (its footer in `buf`): every byte up. Returns
    /// where they are, the file's length and the staging objects to
    /// delete once it is published.
    pub fn finish(&self, mut up: Upload, mut buf: Vec<u8>) -> Result<(Durable, u64, Vec<String>)> {
        self.ship(&mut up, &mut buf, true)?;
        while !up.pending.is_empty() {
            self.wait_one(&mut up)?;
        }
        up.tail = None;
        Ok((self.durable(&up), up.uploaded, up.garbage))
    }

    /// Publishes a finished file: completes its upload. Idempotent: an
    /// upload already completed leaves the object in place, which is
    /// checked by its size.
    pub fn publish(&self, e: &FileEntry) -> Result<()> {
        let Durable::Upload {
            upload_id, parts, ..
        } = &e.durable
        else {
            return Err(Error::Internal("a local entry in a bucket output".into()));
        };
        let key = self.key(&e.target)?;
        let parts = parts
            .iter()
            .map(|p| PartId {
                content_id: p.clone(),
            })
            .collect();
        if let Err(err) = block(self.store.complete_multipart(&key, upload_id, parts)) {
            if self.size(&e.target)? != Some(e.len) {
                return Err(self.fail("completing the upload of", &e.target, err));
            }
            debug!(target = %e.target, "upload was completed before");
        }
        self.collect_garbage(&e.garbage);
        Ok(())
    }

    fn collect_garbage(&self, garbage: &[String]) {
        for g in garbage {
            if let Err(err) = self.delete(g) {
                warn!(object = %g, error = %err, "could not delete a staging object");
            }
        }
    }

    /// Publishes the committed prefix of a file that was open at the
    /// checkpoint: its upload completed with the recorded parts and a last
    /// part of the recorded tail bytes and footer. Idempotent; when an
    /// earlier run published the whole file (only possible if the
    /// checkpoints after this one were lost), the object is replaced by its
    /// prefix.
    pub fn publish_prefix(&self, e: &FileEntry) -> Result<()> {
        let Durable::Upload {
            upload_id,
            parts,
            uploaded,
            tail,
        } = &e.durable
        else {
            return Err(Error::Internal("a local entry in a bucket output".into()));
        };
        let key = self.key(&e.target)?;
        let want = e.len + e.footer.len() as u64;
        let tail_len = usize::try_from(e.len - uploaded)
            .map_err(|_| Error::Checkpoint("tail length out of range".into()))?;
        let mut last = match tail {
            Some(t) => self.get(t)?.unwrap_or_default(),
            None => Vec::new(),
        };
        let completed = if last.len() >= tail_len {
            last.truncate(tail_len);
            last.extend_from_slice(&e.footer);
            let mut ids: Vec<PartId> = parts
                .iter()
                .map(|p| PartId {
                    content_id: p.clone(),
                })
                .collect();
            block(async {
                let p = self
                    .store
                    .put_part(&key, upload_id, ids.len(), PutPayload::from(last))
                    .await?;
                ids.push(p);
                self.store.complete_multipart(&key, upload_id, ids).await
            })
            .map_err(|err| self.fail("completing the upload of", &e.target, err))
        } else {
            // The tail object is gone: only after the upload completed.
            Err(self.fail("reading the tail of", &e.target, "missing"))
        };
        if let Err(err) = completed {
            match self.size(&e.target)? {
                Some(n) if n == want => {
                    debug!(target = %e.target, "upload was completed before");
                }
                Some(_) => {
                    debug!(target = %e.target, "cutting a published object back to its checkpointed rows");
                    let mut bytes = block(self.store.get_range(&key, 0..e.len))
                        .map_err(|err| self.fail("reading", &e.target, err))?
                        .to_vec();
                    bytes.extend_from_slice(&e.footer);
                    self.put(&e.target, bytes)?;
                }
                None => return Err(err),
            }
        }
        self.collect_garbage(&e.garbage);
        Ok(())
    }

    /// After recovery from checkpoint `restored`: aborts the uploads and
    /// deletes the staging objects of the old subtasks `mine` selects
    /// (what the checkpoint needed is published by now, so its uploads are
    /// no longer in progress), and deletes their published files opened
    /// after `restored` (possible only when newer checkpoints were lost),
    /// which the resumed job writes again.
    pub fn clean(&self, mine: &dyn Fn(usize) -> bool, restored: u64, current: u64) -> Result<()> {
        if let Some(lister) = &self.lister {
            let prefix = if self.base.is_empty() {
                String::new()
            } else {
                format!("{}/", self.base)
            };
            let uploads =
                block(lister.list(&prefix)).map_err(|e| self.fail("listing uploads of", "", e))?;
            for (key, id) in uploads {
                let name = key.rsplit('/').next().unwrap_or(&key);
                let Name::Committed {
                    subtask, attempt, ..
                } = names::classify(name)
                else {
                    continue;
                };
                if !mine(subtask) || attempt == current {
                    continue;
                }
                debug!(%key, "aborting an upload no checkpoint knows");
                let path = ObjPath::parse(&key)
                    .map_err(|e| Error::connector("parquet", format!("listed key {key}: {e}")))?;
                match block(self.store.abort_multipart(&path, &id)) {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => warn!(%key, error = %e, "could not abort an upload"),
                }
            }
        }
        for rel in self.list(STAGING)? {
            let name = rel.rsplit('/').next().unwrap_or(&rel);
            if names::staging_subtask(name).is_some_and(mine)
                && !name.contains(&format!("-a{current}-"))
            {
                self.delete(&rel)?;
            }
        }
        if restored == 0 {
            return Ok(());
        }
        for rel in self.list("")? {
            if rel.starts_with(STAGING) {
                continue;
            }
            let name = rel.rsplit('/').next().unwrap_or(&rel);
            if let Name::Committed {
                subtask,
                epoch,
                attempt,
            } = names::classify(name)
            {
                if epoch >= restored && mine(subtask) && attempt != current {
                    debug!(object = %rel, "removing output no checkpoint committed");
                    self.delete(&rel)?;
                }
            }
        }
        Ok(())
    }

    /// The next number of a file of `subtask` without checkpoints (after
    /// those of earlier runs).
    pub fn next_plain_seq(&self, subtask: usize) -> Result<u64> {
        let mut next = 0;
        for rel in self.list("")? {
            let name = rel.rsplit('/').next().unwrap_or(&rel);
            if let Name::Plain { subtask: s, seq } = names::classify(name) {
                if s == subtask {
                    next = next.max(seq + 1);
                }
            }
        }
        Ok(next)
    }
}
