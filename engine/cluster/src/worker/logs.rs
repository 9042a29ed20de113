//! The executors' logs a worker forwards to the coordinator. Each
//! executor's stdout and stderr go to its file under `logs/` (see the
//! worker); every heartbeat carries the whole lines written to those files
//! since the coordinator last took some ([`LogChunk`]), so a user can read
//! them from the coordinator (`sluice logs`) without logging in here.
//!
//! Bounds, so a chatty executor can neither blow up a heartbeat nor starve
//! the others: at most [`HEARTBEAT_LOG_BYTES`] of text per heartbeat
//! (counting [`LINE_COST`] per line besides its text), shared among the
//! executors, the first served rotating; a line longer than
//! [`MAX_LINE_BYTES`] is cut there and marked, and the rest of it skipped;
//! a partial last line waits until it is complete or its executor ended.
//!
//! A position only moves once the coordinator answered the heartbeat that
//! carried the lines before it: lines of a heartbeat that failed are read
//! and sent again (a heartbeat the coordinator took but whose answer was
//! lost sends them twice). Files are read on the blocking pool.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::warn;

use sluice_protocol::logs::{LogChunk, HEARTBEAT_LOG_BYTES, MAX_LINE_BYTES, TRUNCATED};

use super::{lock, ExecutorKey, ExecutorStatus};

/// What a line costs of a heartbeat's budget besides its text (its tags
/// and JSON), so that a flood of empty lines is bounded too.
pub(super) const LINE_COST: usize = 32;
/// The least budget an executor is given when it is its turn: one line of
/// the longest kind always fits.
const MIN_SHARE: usize = MAX_LINE_BYTES + TRUNCATED.len() + LINE_COST;
/// Bytes read from a file at a time.
const BLOCK: usize = 64 * 1024;
/// Bytes of an over-long line skipped per heartbeat (the rest next time),
/// so that one endless line cannot hold a heartbeat up.
const SKIP_PER_READ: u64 = 16 * 1024 * 1024;

/// Where reading one log file stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Position {
    /// The first byte not sent yet.
    offset: u64,
    /// In the middle of a line that was cut: skip to its end.
    skipping: bool,
}

/// One executor's log being followed.
struct Tail {
    path: PathBuf,
    status: Arc<Mutex<ExecutorStatus>>,
    /// `None` until the executor started (its file exists).
    pos: Option<Position>,
}

/// The logs of the executors this worker started, followed until each
/// executor ended and its file was sent to the end.
#[derive(Default)]
pub(super) struct LogTails {
    tails: BTreeMap<ExecutorKey, Tail>,
    /// Rotates the executor served first.
    turn: usize,
}

/// What a read produced, to be made the tails' positions once the
/// coordinator has the lines ([`LogTails::delivered`]).
#[derive(Debug, Default)]
pub(super) struct Pending {
    moved: Vec<(ExecutorKey, Position, bool)>,
    /// Tails that cannot be read (their file is gone): forgotten.
    broken: Vec<ExecutorKey>,
}

/// The outcome of reading one file.
#[derive(Debug, PartialEq, Eq)]
struct Tailed {
    lines: Vec<String>,
    pos: Position,
    /// Everything in the file was consumed.
    at_end: bool,
    /// Budget used.
    used: usize,
}

impl LogTails {
    /// Follows the log at `path` of the executor `key`, whose process
    /// `status` tells when it started (and from which offset its log is
    /// its own) and when it ended.
    pub(super) fn watch(
        &mut self,
        key: ExecutorKey,
        path: PathBuf,
        status: Arc<Mutex<ExecutorStatus>>,
    ) {
        self.tails.insert(
            key,
            Tail {
                path,
                status,
                pos: None,
            },
        );
    }

    /// Stops following an executor that never started (unlisted before
    /// its process was spawned): it has no log.
    pub(super) fn forget(&mut self, key: &ExecutorKey) {
        self.tails.remove(key);
    }

    /// Executors followed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tails.len()
    }

    /// Reads what is new in every followed log, within the heartbeat's
    /// budget, on the blocking pool. Nothing moves until
    /// [`delivered`](Self::delivered) is told the coordinator took it.
    pub(super) async fn read(&mut self) -> (Vec<LogChunk>, Pending) {
        let mut jobs = Vec::new();
        for (key, tail) in &mut self.tails {
            let status = *lock(&tail.status);
            // Not started yet (one that could not start is pid 0, ended,
            // its log holding the worker's note of why).
            if status.pid.is_none() {
                continue;
            }
            let pos = *tail.pos.get_or_insert(Position {
                offset: status.log_from,
                skipping: false,
            });
            jobs.push((key.clone(), tail.path.clone(), pos, status.exit.is_some()));
        }
        if jobs.is_empty() {
            return (Vec::new(), Pending::default());
        }
        let first = self.turn % jobs.len();
        self.turn = self.turn.wrapping_add(1);
        jobs.rotate_left(first);
        tokio::task::spawn_blocking(move || read_all(jobs, HEARTBEAT_LOG_BYTES))
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "reading executors' logs failed");
                (Vec::new(), Pending::default())
            })
    }

    /// The coordinator took the lines of `pending`: their positions are
    /// the tails' now, and executors whose logs were sent to the end are
    /// no longer followed.
    pub(super) fn delivered(&mut self, pending: Pending) {
        for (key, pos, complete) in pending.moved {
            if complete {
                self.tails.remove(&key);
            } else if let Some(tail) = self.tails.get_mut(&key) {
                tail.pos = Some(pos);
            }
        }
        for key in pending.broken {
            self.tails.remove(&key);
        }
    }
}

/// Appends `note` (a line of the worker's own) to the log at `path`;
/// returns where it starts, where the executor's part of the log begins
/// (0 if it could not be written: the tail then finds nothing or gives
/// up).
pub(super) async fn note(path: &std::path::Path, note: String) -> u64 {
    use tokio::io::AsyncWriteExt;
    let write = async {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .await?;
        let from = file.metadata().await?.len();
        file.write_all(note.as_bytes()).await?;
        Ok::<u64, std::io::Error>(from)
    };
    write.await.unwrap_or_else(|e| {
        warn!(log = %path.display(), error = %e, "cannot write to an executor's log");
        0
    })
}

/// Reads the logs of `jobs` (executor, file, position, whether it ended),
/// in that order, sharing `budget` among them.
fn read_all(
    jobs: Vec<(ExecutorKey, PathBuf, Position, bool)>,
    budget: usize,
) -> (Vec<LogChunk>, Pending) {
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let share = (budget / jobs.len()).max(MIN_SHARE);
    let mut left = budget;
    let mut chunks = Vec::new();
    let mut pending = Pending::default();
    for (key, path, pos, ended) in jobs {
        if left < MIN_SHARE {
            break;
        }
        let read = std::fs::File::open(&path)
            .and_then(|mut file| read_lines(&mut file, pos, ended, share.min(left)));
        match read {
            Ok(t) => {
                left -= t.used;
                let complete = ended && t.at_end;
                if t.pos != pos || complete {
                    pending.moved.push((key.clone(), t.pos, complete));
                }
                if !t.lines.is_empty() || complete {
                    chunks.push(LogChunk {
                        job_id: key.job_id,
                        attempt: key.attempt,
                        executor: key.executor,
                        lines: t.lines,
                        time_ms,
                        complete,
                    });
                }
            }
            Err(e) => {
                warn!(log = %path.display(), error = %e, "cannot read an executor's log; no longer forwarding it");
                pending.broken.push(key);
            }
        }
    }
    (chunks, pending)
}

/// Reads whole lines from `pos` on, at most `budget` of them (text plus
/// [`LINE_COST`] each; `budget` must be at least [`MIN_SHARE`]). A line
/// longer than [`MAX_LINE_BYTES`] is sent cut as soon as that much of it
/// is there; a shorter partial last line only once `ended` (the writer
/// is gone, so it will never be completed).
fn read_lines<R: Read + Seek>(
    r: &mut R,
    mut pos: Position,
    ended: bool,
    budget: usize,
) -> std::io::Result<Tailed> {
    let mut lines = Vec::new();
    let mut used = 0;
    let mut skipped = 0u64;
    let mut buf = Vec::with_capacity(BLOCK);
    let tailed = |lines, pos, at_end, used| Tailed {
        lines,
        pos,
        at_end,
        used,
    };
    loop {
        r.seek(SeekFrom::Start(pos.offset))?;
        buf.clear();
        r.by_ref().take(BLOCK as u64).read_to_end(&mut buf)?;
        let eof = buf.len() < BLOCK;
        let mut start = 0;
        if pos.skipping {
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    start = i + 1;
                    pos.skipping = false;
                }
                None => {
                    pos.offset += buf.len() as u64;
                    skipped += buf.len() as u64;
                    if eof || skipped >= SKIP_PER_READ {
                        return Ok(tailed(lines, pos, eof, used));
                    }
                    continue;
                }
            }
        }
        while let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
            let text = render(&buf[start..start + i]);
            if used + text.len() + LINE_COST > budget {
                pos.offset += start as u64;
                return Ok(tailed(lines, pos, false, used));
            }
            used += text.len() + LINE_COST;
            lines.push(text);
            start += i + 1;
        }
        pos.offset += start as u64;
        let rest = &buf[start..];
        // Too long to wait for its end, or the last one of an executor
        // that ended.
        let cut = rest.len() > MAX_LINE_BYTES;
        if cut || (eof && ended && !rest.is_empty()) {
            let text = render(rest);
            if used + text.len() + LINE_COST > budget {
                return Ok(tailed(lines, pos, false, used));
            }
            used += text.len() + LINE_COST;
            lines.push(text);
            pos.offset += rest.len() as u64;
            pos.skipping = cut;
            if !cut {
                return Ok(tailed(lines, pos, true, used));
            }
        } else if eof {
            return Ok(tailed(lines, pos, rest.is_empty(), used));
        }
        // Otherwise the next block starts with the partial line.
    }
}

/// A line as sent: without a carriage return before its end, invalid
/// UTF-8 replaced, cut at a character boundary at [`MAX_LINE_BYTES`] and
/// marked if it was longer.
fn render(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() <= MAX_LINE_BYTES {
        return String::from_utf8_lossy(line).into_owned();
    }
    let mut end = MAX_LINE_BYTES;
    // Not in the middle of a character (an invalid sequence earlier is
    // replaced anyway).
    if let Err(e) = std::str::from_utf8(&line[..end]) {
        if e.error_len().is_none() {
            end = e.valid_up_to();
        }
    }
    let mut text = String::from_utf8_lossy(&line[..end]).into_owned();
    text.push_str(TRUNCATED);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn read(data: &[u8], pos: Position, ended: bool, budget: usize) -> Tailed {
        read_lines(&mut Cursor::new(data), pos, ended, budget).unwrap()
    }

    #[test]
    fn a_partial_last_line_waits_until_it_is_complete_or_the_executor_ended() {
        let t = read(b"one\ntwo\nthr", Position::default(), false, MIN_SHARE);
        assert_eq!(t.lines, ["one", "two"]);
        assert_eq!(t.pos.offset, 8, "the partial line is read again next time");
        assert!(!t.at_end);
        // Completed later.
        let t = read(b"one\ntwo\nthree\r\n", t.pos, false, MIN_SHARE);
        assert_eq!(t.lines, ["three"]);
        assert!(t.at_end);
        // Or its writer is gone: the rest is a line.
        let t = read(
            b"one\ntwo\nthr",
            Position {
                offset: 8,
                ..Default::default()
            },
            true,
            MIN_SHARE,
        );
        assert_eq!(t.lines, ["thr"]);
        assert_eq!((t.pos.offset, t.at_end), (11, true));
        // Nothing new.
        let t = read(
            b"one\n",
            Position {
                offset: 4,
                ..Default::default()
            },
            true,
            MIN_SHARE,
        );
        assert!(t.lines.is_empty() && t.at_end);
    }

    #[test]
    fn a_huge_line_is_cut_marked_and_the_rest_of_it_skipped() {
        let mut data = b"before\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 200_000));
        data.extend(b"\nafter\n");
        let t = read(&data, Position::default(), false, MIN_SHARE * 2);
        assert_eq!(
            t.lines.len(),
            3,
            "{:?}",
            t.lines.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(t.lines[0], "before");
        assert_eq!(t.lines[1].len(), MAX_LINE_BYTES + TRUNCATED.len());
        assert!(t.lines[1].ends_with(TRUNCATED));
        assert_eq!(t.lines[2], "after");
        assert!(t.at_end && !t.pos.skipping);

        // Cut while it is still being written: sent at once, the rest
        // skipped as it comes.
        let partial = &data[..7 + 100_000];
        let t = read(partial, Position::default(), false, MIN_SHARE * 2);
        assert_eq!(t.lines.len(), 2);
        assert!(t.lines[1].ends_with(TRUNCATED));
        assert!(t.pos.skipping);
        let t = read(&data, t.pos, false, MIN_SHARE * 2);
        assert_eq!(t.lines, ["after"]);

        // A multi-byte character is not split.
        let mut wide = "é".repeat(MAX_LINE_BYTES).into_bytes();
        wide.push(b'\n');
        let t = read(&wide, Position::default(), false, MIN_SHARE);
        let text = t.lines[0].strip_suffix(TRUNCATED).unwrap();
        assert_eq!(text.len(), MAX_LINE_BYTES);
        assert!(text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_budget_bounds_a_read_and_the_rest_comes_next_time() {
        let line = "y".repeat(1000);
        let data: String = (0..1000).map(|_| format!("{line}\n")).collect();
        let budget = MIN_SHARE * 2;
        let t = read(data.as_bytes(), Position::default(), true, budget);
        assert!(t.used <= budget);
        assert_eq!(t.lines.len(), budget / (1000 + LINE_COST));
        assert!(!t.at_end);
        assert_eq!(t.pos.offset, 1001 * t.lines.len() as u64);
        // Empty lines count too.
        let empty = "\n".repeat(100_000);
        let t = read(empty.as_bytes(), Position::default(), true, budget);
        assert_eq!(t.lines.len(), budget / LINE_COST);
    }

    fn key(executor: usize) -> ExecutorKey {
        ExecutorKey {
            job_id: "job-1".into(),
            attempt: 2,
            executor,
        }
    }

    #[tokio::test]
    async fn tails_move_only_when_delivered_and_end_with_their_executor() {
        let dir = tempfile::tempdir().unwrap();
        let mut tails = LogTails::default();
        let mut statuses = Vec::new();
        for e in 0..2 {
            let path = dir.path().join(format!("e{e}.log"));
            let mut f = std::fs::File::create(&path).unwrap();
            // Bytes before the executor started are not its own.
            f.write_all(b"old\n").unwrap();
            let status = Arc::new(Mutex::new(ExecutorStatus::default()));
            tails.watch(key(e), path, status.clone());
            statuses.push((f, status));
        }
        let (chunks, _) = tails.read().await;
        assert!(chunks.is_empty(), "not started");
        for (f, status) in &mut statuses {
            *lock(status) = ExecutorStatus {
                pid: Some(7),
                exit: None,
                log_from: 4,
            };
            f.write_all(b"hello\nwor").unwrap();
        }
        let (chunks, pending) = tails.read().await;
        assert_eq!(chunks.len(), 2);
        assert!(chunks.iter().all(|c| c.lines == ["hello"] && !c.complete));
        // Not delivered (the heartbeat failed): the same lines again.
        drop(pending);
        let (chunks, pending) = tails.read().await;
        assert!(chunks.iter().all(|c| c.lines == ["hello"]));
        tails.delivered(pending);
        let (chunks, _) = tails.read().await;
        assert!(chunks.is_empty(), "nothing new, the partial line waits");

        // Executor 0 ends: its partial line is sent and it is complete.
        lock(&statuses[0].1).exit = Some(0);
        let (chunks, pending) = tails.read().await;
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            (chunks[0].executor, &chunks[0].lines[..]),
            (0, &["wor".to_string()][..])
        );
        assert!(chunks[0].complete);
        tails.delivered(pending);
        assert_eq!(tails.len(), 1);

        // One unlisted before it started is forgotten; one that could not
        // start sends the worker's note of why.
        tails.forget(&key(1));
        let path = dir.path().join("e2.log");
        std::fs::write(&path, "old\n").unwrap();
        let status = Arc::new(Mutex::new(ExecutorStatus::default()));
        tails.watch(key(2), path.clone(), status.clone());
        let from = note(&path, "sluice worker: cannot start\n".into()).await;
        assert_eq!(from, 4, "after what was there");
        *lock(&status) = ExecutorStatus {
            pid: Some(0),
            exit: Some(-1),
            log_from: from,
        };
        let (chunks, pending) = tails.read().await;
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].lines, ["sluice worker: cannot start"]);
        assert!(chunks[0].complete);
        tails.delivered(pending);
        assert_eq!(tails.len(), 0);
    }

    #[test]
    fn executors_share_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let line = "z".repeat(500);
        let data: String = (0..1000).map(|_| format!("{line}\n")).collect();
        let jobs: Vec<_> = (0..3)
            .map(|e| {
                let path = dir.path().join(format!("e{e}.log"));
                std::fs::write(&path, &data).unwrap();
                (key(e), path, Position::default(), false)
            })
            .collect();
        let (chunks, pending) = read_all(jobs, HEARTBEAT_LOG_BYTES);
        assert_eq!(chunks.len(), 3, "each gets a share");
        let bytes: usize = chunks
            .iter()
            .flat_map(|c| &c.lines)
            .map(|l| l.len() + LINE_COST)
            .sum();
        assert!(bytes <= HEARTBEAT_LOG_BYTES, "{bytes}");
        assert_eq!(pending.moved.len(), 3);
    }
}
