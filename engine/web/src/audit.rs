//! The audit log: one JSON line per state-changing API request (every
//! method but GET, HEAD and OPTIONS), refused ones included: when, which
//! role and token id (never the token), from which address, the method,
//! the path and the status answered.
//!
//! Lines go through a bounded channel to a thread of their own, which
//! appends them to the file: the file is never written from the async
//! workers, and a slow disk slows the state-changing requests (they wait
//! for room in the channel) instead of growing memory. Each line is one
//! `write`, so concurrent requests never interleave within a line.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tracing::warn;

use crate::error::{Error, Result};

/// Lines waiting for the writer thread before requests wait.
const PENDING_LINES: usize = 1024;

/// One state-changing request, as the audit log keeps it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// When it was answered (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// The role its token granted (`operator`, `read`); none when the
    /// token was missing or wrong.
    pub role: Option<String>,
    /// The id of the token it carried ([`Token::id`](crate::Token::id));
    /// none on an open API or without a valid token.
    pub token: Option<String>,
    /// The client's address, when the server knows it.
    pub client: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path (without the query).
    pub path: String,
    /// Status answered.
    pub status: u16,
}

/// An open audit log; clones write to the same file.
#[derive(Debug, Clone)]
pub struct AuditLog {
    lines: tokio::sync::mpsc::Sender<String>,
    path: PathBuf,
}

impl AuditLog {
    /// Opens (creating it, mode 0600) `path` for appending and starts its
    /// writer thread, which ends when the last clone is dropped.
    pub fn open(path: &Path) -> Result<AuditLog> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(path)
            .map_err(|e| Error::io(format!("opening the audit log {}", path.display()), e))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(PENDING_LINES);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                while let Some(line) = rx.blocking_recv() {
                    if let Err(e) = file.write_all(line.as_bytes()) {
                        warn!(file = %shown, error = %e, "cannot write the audit log");
                    }
                }
            })
            .map_err(|e| Error::io("starting the audit log's thread", e))?;
        Ok(AuditLog {
            lines: tx,
            path: path.to_path_buf(),
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` (waiting while the writer is behind).
    pub async fn record(&self, entry: &AuditEntry) {
        let mut line = match serde_json::to_string(entry) {
            Ok(line) => line,
            Err(e) => {
                warn!(error = %e, "an audit entry does not serialize");
                return;
            }
        };
        line.push('\n');
        if self.lines.send(line).await.is_err() {
            warn!(file = %self.path.display(), "the audit log's writer has stopped");
        }
    }
}

/// Now, as the audit log writes times.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u16) -> AuditEntry {
        AuditEntry {
            time: now(),
            role: Some("operator".into()),
            token: None,
            client: Some("127.0.0.1:1".into()),
            method: "POST".into(),
            path: format!("/api/v1/jobs/\"{i}\"\n/cancel"),
            status: 200 + i,
        }
    }

    /// Lines from many tasks at once arrive whole, each a JSON object,
    /// even with quotes and newlines in the path; the file is private.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_entries_stay_whole_lines() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let tasks: Vec<_> = (0..200u16)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.record(&entry(i)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        drop(log);
        let mut read = Vec::new();
        for _ in 0..100 {
            let text = std::fs::read_to_string(&path).unwrap();
            read = text
                .lines()
                .map(|l| serde_json::from_str::<AuditEntry>(l).unwrap())
                .collect();
            if read.len() == 200 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut statuses: Vec<u16> = read.iter().map(|e| e.status).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, (200..400).collect::<Vec<u16>>());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
