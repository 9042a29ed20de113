//! Where an Iceberg table's files live: a local directory, or (with the
//! `s3` feature) a prefix of a bucket, through the Parquet sink's bucket
//! code. Paths inside the table are relative (`metadata/…`,
//! `_sluice/…`); what the metadata records are full URLs (`file:///…`,
//! `s3://bucket/…`), as Iceberg readers expect.

use std::path::PathBuf;
use std::time::SystemTime;

use sluice_engine::checkpoint::Location;
use sluice_engine::{Error, Result};

use crate::parquet::bucket::BucketDir;

/// The local path of a `file://` location (or of a plain path).
pub fn local_path(location: &str) -> PathBuf {
    PathBuf::from(
        location
            .strip_prefix("file://")
            .or_else(|| location.strip_prefix("file:"))
            .unwrap_or(location),
    )
}

fn is_bucket(location: &str) -> bool {
    location.starts_with("s3://") || location.starts_with("s3a://")
}

/// A table's directory.
#[derive(Debug)]
pub enum TableFiles {
    Local(PathBuf),
    Bucket { dir: BucketDir, url: String },
}

impl TableFiles {
    /// The table at `location` (`file:///…`, a path, or `s3://…`).
    pub fn at(location: &str) -> Result<Self> {
        let location = location.trim_end_matches('/');
        if is_bucket(location) {
            Ok(TableFiles::Bucket {
                dir: BucketDir::open_s3(location, 8 << 20)?,
                url: location.to_string(),
            })
        } else {
            Ok(TableFiles::Local(local_path(location)))
        }
    }

    /// The full URL of `rel`.
    pub fn url(&self, rel: &str) -> String {
        match self {
            TableFiles::Local(dir) => format!("file://{}", dir.join(rel).display()),
            TableFiles::Bucket { url, .. } => format!("{url}/{rel}"),
        }
    }

    /// `rel` as a location (where the Parquet sink writes data files).
    pub fn location(&self, rel: &str) -> Location {
        match self {
            TableFiles::Local(dir) => Location::from(dir.join(rel)),
            TableFiles::Bucket { url, .. } => Location::from(format!("{url}/{rel}")),
        }
    }

    /// Writes `rel` whole: readers see all of it or nothing (a local file
    /// is written beside and renamed; an object put is atomic).
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        match self {
            TableFiles::Local(dir) => {
                let path = dir.join(rel);
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let tmp = path.with_file_name(format!(".{name}.tmp"));
                let write = || -> std::io::Result<()> {
                    let parent = path.parent().unwrap_or(dir);
                    std::fs::create_dir_all(parent)?;
                    let mut f = std::fs::File::create(&tmp)?;
                    std::io::Write::write_all(&mut f, bytes)?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &path)?;
                    std::fs::File::open(parent)?.sync_all()
                };
                write().map_err(|e| Error::io(format!("writing {}", path.display()), e))
            }
            TableFiles::Bucket { dir, .. } => dir.put(rel, bytes.to_vec()),
        }
    }

    /// Deletes `rel`; a file already gone is fine, another failure is
    /// only logged (what is left is garbage no snapshot names).
    pub fn delete(&self, rel: &str) {
        let failed = match self {
            TableFiles::Local(dir) => match std::fs::remove_file(dir.join(rel)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Some(e.to_string()),
                _ => None,
            },
            TableFiles::Bucket { dir, .. } => dir.delete(rel).err().map(|e| e.to_string()),
        };
        if let Some(e) = failed {
            tracing::warn!(file = %self.url(rel), error = %e, "could not delete");
        }
    }

    /// The files directly in directory `rel`: names and when each was
    /// written.
    pub fn list(&self, rel: &str) -> Result<Vec<(String, SystemTime)>> {
        match self {
            TableFiles::Local(dir) => {
                let Ok(entries) = std::fs::read_dir(dir.join(rel)) else {
                    return Ok(Vec::new());
                };
                Ok(entries
                    .flatten()
                    .filter_map(|e| {
                        let modified = e.metadata().ok()?.modified().ok()?;
                        Some((e.file_name().to_string_lossy().to_string(), modified))
                    })
                    .collect())
            }
            TableFiles::Bucket { dir, .. } => Ok(dir
                .list_modified(rel)?
                .into_iter()
                .filter_map(|(r, t)| {
                    let name = r.strip_prefix(rel)?.trim_start_matches('/');
                    (!name.contains('/')).then(|| (name.to_string(), t))
                })
                .collect()),
        }
    }

    /// The relative path of `url` if it is inside this table.
    pub fn rel<'a>(&self, url: &'a str) -> Option<&'a str> {
        let base = match self {
            TableFiles::Local(dir) => format!("file://{}", dir.display()),
            TableFiles::Bucket { url, .. } => url.clone(),
        };
        url.strip_prefix(&base)?.strip_prefix('/')
    }

    /// The bytes at `url` (in the table, or anywhere `read_url` reaches).
    pub fn read(&self, url: &str) -> Result<Vec<u8>> {
        match (self, self.rel(url)) {
            (TableFiles::Bucket { dir, .. }, Some(rel)) => dir
                .get(rel)?
                .ok_or_else(|| Error::Checkpoint(format!("{url} is missing"))),
            _ => read_url(url),
        }
    }
}

impl TableFiles {
    /// Bytes `range` of the file at `url` in the table (a Parquet
    /// footer, without reading the rest).
    pub fn read_range(&self, url: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        match (self, self.rel(url)) {
            (TableFiles::Bucket { dir, .. }, Some(rel)) => dir.get_range(rel, range),
            _ => {
                use std::io::{Read, Seek, SeekFrom};
                let path = local_path(url);
                let mut buf = vec![0; (range.end - range.start) as usize];
                std::fs::File::open(&path)
                    .and_then(|mut f| {
                        f.seek(SeekFrom::Start(range.start))?;
                        f.read_exact(&mut buf)
                    })
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                Ok(buf)
            }
        }
    }
}

/// The bytes at `url`: a local file or an object.
pub fn read_url(url: &str) -> Result<Vec<u8>> {
    if is_bucket(url) {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let scheme = url.split_once("://").map_or("s3", |(s, _)| s);
        let dir = BucketDir::open_s3(&format!("{scheme}://{bucket}"), 8 << 20)?;
        return dir
            .get(key)?
            .ok_or_else(|| Error::Checkpoint(format!("{url} is missing")));
    }
    let path = local_path(url);
    std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}
