//! Which of the coordinators sharing a data directory leads.
//!
//! Coordinators started on one data directory (a shared disk) take an
//! exclusive lock on `DATA_DIR/leader.lock`; the one that holds it leads,
//! the others are standbys that answer every request with 503 naming the
//! leader, and wait for the lock. The operating system releases the lock
//! when the leader's process dies, however it dies, so a standby takes
//! over: it reads the job records and resumes the jobs from their
//! checkpoints, as a restarted coordinator does. A leader that is frozen
//! rather than dead keeps the lock (and its jobs) until it is killed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use sluice_engine::error::{Error, Result};

const LOCK_FILE: &str = "leader.lock";
const LEADER_FILE: &str = "leader";

/// Leadership of a data directory, held while this value lives.
#[derive(Debug)]
pub struct Lease {
    _lock: File,
    dir: PathBuf,
}

fn lock_file(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(LOCK_FILE);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

impl Lease {
    /// Leadership of `dir` if no other coordinator holds it.
    pub fn try_acquire(dir: &Path) -> Result<Option<Lease>> {
        let file = lock_file(dir)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lease {
                _lock: file,
                dir: dir.to_path_buf(),
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(
                format!("locking {}", dir.join(LOCK_FILE).display()),
                e,
            )),
        }
    }

    /// Waits (blocking the thread) until this process leads `dir`.
    pub fn acquire(dir: &Path) -> Result<Lease> {
        let file = lock_file(dir)?;
        file.lock()
            .map_err(|e| Error::io(format!("locking {}", dir.join(LOCK_FILE).display()), e))?;
        Ok(Lease {
            _lock: file,
            dir: dir.to_path_buf(),
        })
    }

    /// Records `url` as where the leader answers, for standbys to name.
    pub fn announce(&self, url: &str) -> Result<()> {
        let path = self.dir.join(LEADER_FILE);
        let tmp = self.dir.join(format!("{LEADER_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(url.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}

/// Where the leader of `dir` said it answers, if it did.
pub fn leader_url(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(LEADER_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_leads_and_the_lease_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Lease::try_acquire(dir.path()).unwrap().expect("free");
        // Another open file description cannot take it while it is held.
        assert!(Lease::try_acquire(dir.path()).unwrap().is_none());
        lease.announce("http://10.0.0.1:7070").unwrap();
        assert_eq!(
            leader_url(dir.path()).as_deref(),
            Some("http://10.0.0.1:7070")
        );
        drop(lease);
        assert!(Lease::try_acquire(dir.path()).unwrap().is_some());
    }
}
