//! Parquet files in a local directory: each file is written to a hidden
//! in-progress file beside its final name and renamed into place when it
//! is published. A checkpoint of an open file syncs it and records its
//! length; recovery copies that many bytes and the recorded footer into a
//! new file and renames it into place.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sluice_engine::{Error, Result};
use tracing::debug;

use super::names::{self, Name};
use super::state::{Durable, FileEntry};

/// An output directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

fn io<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(format!("{what} {}", path.display()), e)
}

impl LocalDir {
    /// The directory `root` (created).
    pub fn open(root: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
        Ok(LocalDir { root })
    }

    /// The absolute path of `rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Creates the in-progress file `rel` (and its directory).
    pub fn create(&self, rel: &str) -> Result<File> {
        let path = self.path(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        File::create(&path).map_err(io("creating", &path))
    }

    /// Makes everything written to `file` durable.
    pub fn sync(&self, file: &File, rel: &str) -> Result<()> {
        file.sync_data().map_err(io("syncing", &self.path(rel)))
    }

    /// Publishes a finished file: renames it to its final name.
    /// Idempotent: a file already published is left alone.
    pub fn publish(&self, in_progress: &str, target: &str) -> Result<()> {
        let (from, to) = (self.path(in_progress), self.path(target));
        if !from.exists() && to.exists() {
            return Ok(());
        }
        std::fs::rename(&from, &to).map_err(|e| {
            Error::io(
                format!("publishing {} (staged as {})", to.display(), from.display()),
                e,
            )
        })
    }

    /// Publishes the committed prefix of an open file: its first `len`
    /// bytes and the recorded footer, as a new file renamed into place.
    /// The in-progress file itself is left alone (a failed run that lives
    /// on, cut off from the job, may still be appending to it; recovery's
    /// clean-up deletes it). Idempotent; when an earlier run published the
    /// whole file (only possible if the checkpoints after this one were
    /// lost), the published file is replaced by its prefix.
    pub fn publish_prefix(&self, e: &FileEntry) -> Result<()> {
        let Durable::Local { in_progress } = &e.durable else {
            return Err(Error::Internal("a bucket entry in a local output".into()));
        };
        let (from, to) = (self.path(in_progress), self.path(&e.target));
        let want = e.len + e.footer.len() as u64;
        let source = match std::fs::metadata(&to).map(|m| m.len()) {
            Ok(n) if n == want => return Ok(()),
            Ok(_) => {
                debug!(file = %to.display(), "cutting a published file back to its checkpointed rows");
                to.clone()
            }
            Err(_) => from,
        };
        let mut src = File::open(&source).map_err(|err| {
            Error::Checkpoint(format!(
                "{} is in the checkpoint but cannot be read: {err}",
                source.display()
            ))
        })?;
        let rebuilt = in_progress.replace(".parquet.inprogress", "-r.parquet.inprogress");
        let tmp = self.path(&rebuilt);
        let mut out = File::create(&tmp).map_err(io("creating", &tmp))?;
        let copied = std::io::copy(&mut (&mut src).take(e.len), &mut out)
            .map_err(io("copying into", &tmp))?;
        if copied != e.len {
            return Err(Error::Checkpoint(format!(
                "{} holds {copied} bytes, the checkpoint committed {}",
                source.display(),
                e.len
            )));
        }
        out.write_all(&e.footer)
            .and_then(|_| out.sync_all())
            .map_err(io("writing", &tmp))?;
        std::fs::rename(&tmp, &to).map_err(io("publishing", &to))
    }

    /// Every file under the directory, as paths relative to it.
    pub fn walk(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut dirs = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = dirs.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
            };
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let child = names::join(&rel, &name);
                match entry.file_type() {
                    Ok(t) if t.is_dir() => dirs.push((entry.path(), child)),
                    Ok(_) => out.push(child),
                    Err(_) => {}
                }
            }
        }
        Ok(out)
    }

    /// After recovery from checkpoint `restored`: deletes in-progress files
    /// of the old subtasks `mine` selects (what the checkpoint needed is
    /// published by now), and their published files opened after
    /// `restored` (possible only when newer checkpoints were lost), which
    /// the resumed job writes again. Files of attempt `current` (the
    /// resumed job's own) are left alone.
    pub fn clean(&self, mine: &dyn Fn(usize) -> bool, restored: u64, current: u64) -> Result<()> {
        for rel in self.walk()? {
            let name = rel.rsplit('/').next().unwrap_or(&rel);
            let doomed = match names::classify(name) {
                Name::InProgress { subtask, attempt } => mine(subtask) && attempt != Some(current),
                Name::Committed {
                    subtask,
                    epoch,
                    attempt,
                } => restored > 0 && epoch >= restored && mine(subtask) && attempt != current,
                Name::Plain { .. } | Name::Other => false,
            };
            if doomed {
                let path = self.path(&rel);
                debug!(file = %path.display(), "removing output no checkpoint committed");
                std::fs::remove_file(&path).map_err(io("removing", &path))?;
            }
        }
        Ok(())
    }
}
