//! Where the sink's files go, behind one interface: a local directory
//! ([`super::local`]) or an object-store prefix ([`super::bucket`]). The
//! sink asks for the same steps of either: create a file, make what a
//! checkpoint commits durable, finish it, publish it, publish the
//! committed prefix of a file that was open at the checkpoint, and clean
//! up after a failed run.

use std::fs::File;
use std::io::Write;

use sluice_engine::checkpoint::Location;
use sluice_engine::Result;

use super::bucket::{BucketDir, Upload};
use super::local::LocalDir;
use super::names::{self, Name};
use super::state::{Durable, FileEntry};

/// The bytes of one Parquet file as its writer produces them.
#[derive(Debug)]
pub enum FileBytes {
    /// Straight into the in-progress file.
    Local(File),
    /// Buffered until they go up as a part.
    Memory(Vec<u8>),
}

impl Write for FileBytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            FileBytes::Local(f) => f.write(buf),
            FileBytes::Memory(v) => {
                v.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            FileBytes::Local(f) => f.flush(),
            FileBytes::Memory(_) => Ok(()),
        }
    }
}

/// A file being written, backend side.
#[derive(Debug)]
pub enum Live {
    /// The in-progress file's path, relative to the output directory.
    Local(String),
    /// The upload.
    Upload(Upload),
}

/// An opened output location.
#[derive(Debug, Clone)]
pub enum Output {
    /// A local directory.
    Local(LocalDir),
    /// An object-store prefix.
    Bucket(BucketDir),
}

impl Output {
    /// Opens a location: a path or `file://` URL, or `s3://bucket/prefix`.
    pub fn open(location: &Location, part_size: usize) -> Result<Output> {
        match location.local_path() {
            Some(dir) => Ok(Output::Local(LocalDir::open(dir)?)),
            None => Ok(Output::Bucket(BucketDir::open_s3(
                location.as_str(),
                part_size,
            )?)),
        }
    }

    /// Starts the file `stem` in the directory `dir` (relative path).
    pub fn create(&self, dir: &str, stem: &str) -> Result<(FileBytes, Live)> {
        let target = names::join(dir, &format!("{stem}.parquet"));
        match self {
            Output::Local(l) => {
                let rel = names::join(dir, &names::in_progress(stem));
                Ok((FileBytes::Local(l.create(&rel)?), Live::Local(rel)))
            }
            Output::Bucket(b) => Ok((
                FileBytes::Memory(Vec::new()),
                Live::Upload(b.create(&target, stem)?),
            )),
        }
    }

    /// After a write: sends complete parts on their way.
    pub fn after_write(&self, live: &mut Live, bytes: &mut FileBytes) -> Result<()> {
        match (self, live, bytes) {
            (Output::Bucket(b), Live::Upload(up), FileBytes::Memory(buf)) => b.ship(up, buf, false),
            _ => Ok(()),
        }
    }

    /// At a checkpoint, everything the writer produced so far handed to
    /// `bytes`: makes it durable.
    pub fn persist(&self, live: &mut Live, bytes: &mut FileBytes) -> Result<Durable> {
        match (self, live, bytes) {
            (Output::Local(l), Live::Local(rel), FileBytes::Local(f)) => {
                l.sync(f, rel)?;
                Ok(Durable::Local {
                    in_progress: rel.clone(),
                })
            }
            (Output::Bucket(b), Live::Upload(up), FileBytes::Memory(buf)) => b.persist(up, buf),
            _ => Err(mismatch()),
        }
    }

    /// The file is complete (footer written): makes all of it durable.
    /// Returns where it is, its length and staging objects to delete once
    /// it is published.
    pub fn finish(&self, live: Live, bytes: FileBytes) -> Result<(Durable, u64, Vec<String>)> {
        match (self, live, bytes) {
            (Output::Local(l), Live::Local(rel), FileBytes::Local(f)) => {
                l.sync(&f, &rel)?;
                let len = f
                    .metadata()
                    .map_err(|e| sluice_engine::Error::io(format!("inspecting {rel}"), e))?
                    .len();
                Ok((Durable::Local { in_progress: rel }, len, Vec::new()))
            }
            (Output::Bucket(b), Live::Upload(up), FileBytes::Memory(buf)) => b.finish(up, buf),
            _ => Err(mismatch()),
        }
    }

    /// Makes a finished file visible under its final name (idempotent).
    pub fn publish(&self, e: &FileEntry) -> Result<()> {
        match (self, &e.durable) {
            (Output::Local(l), Durable::Local { in_progress }) => l.publish(in_progress, &e.target),
            (Output::Bucket(b), Durable::Upload { .. }) => b.publish(e),
            _ => Err(mismatch()),
        }
    }

    /// Whether this output holds `e`'s bytes: its in-progress file or the
    /// file already published (an output directory copied or moved with
    /// its hidden files). A multipart upload lives where it was started.
    pub fn holds(&self, e: &FileEntry) -> bool {
        match (self, &e.durable) {
            (Output::Local(l), Durable::Local { in_progress }) => {
                l.path(in_progress).exists() || l.path(&e.target).exists()
            }
            _ => false,
        }
    }

    /// Makes the committed prefix of a file open at the checkpoint visible
    /// under its final name (idempotent).
    pub fn publish_prefix(&self, e: &FileEntry) -> Result<()> {
        match self {
            Output::Local(l) => l.publish_prefix(e),
            Output::Bucket(b) => b.publish_prefix(e),
        }
    }

    /// After recovery: removes what the old subtasks `mine` selects left
    /// that checkpoint `restored` does not commit.
    pub fn clean(&self, mine: &dyn Fn(usize) -> bool, restored: u64, current: u64) -> Result<()> {
        match self {
            Output::Local(l) => l.clean(mine, restored, current),
            Output::Bucket(b) => b.clean(mine, restored, current),
        }
    }

    /// The next number of a file of `subtask` without checkpoints.
    pub fn next_plain_seq(&self, subtask: usize) -> Result<u64> {
        match self {
            Output::Local(l) => {
                let mut next = 0;
                for rel in l.walk()? {
                    let name = rel.rsplit('/').next().unwrap_or(&rel);
                    if let Name::Plain { subtask: s, seq } = names::classify(name) {
                        if s == subtask {
                            next = next.max(seq + 1);
                        }
                    }
                }
                Ok(next)
            }
            Output::Bucket(b) => b.next_plain_seq(subtask),
        }
    }
}

fn mismatch() -> sluice_engine::Error {
    sluice_engine::Error::Internal("a file of one backend handed to another".into())
}
