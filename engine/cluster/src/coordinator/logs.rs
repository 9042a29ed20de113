//! The executors' log lines a coordinator keeps per job, as workers send
//! them with their heartbeats (see the worker's `logs` module): a bounded
//! ring, the newest [`MAX_LINES`] lines or [`MAX_BYTES`], whichever is
//! less, the oldest dropped first and counted. Each line is numbered
//! (`seq`, from 0, in the order received) and tagged with its attempt,
//! executor and worker, so a reader can ask for what follows the last
//! line it has (`GET /api/v1/jobs/{id}/logs?since=SEQ`).
//!
//! Kept in the leader's memory only, beside the job's record and for as
//! long as it is retained; never in the Raft log or on disk: a new leader
//! starts with no lines (and numbers its own from 0) and shows what the
//! workers send from then on.

use std::collections::{BTreeMap, VecDeque};

use sluice_protocol::logs::{LogChunk, LogLine, MAX_LINE_BYTES, TRUNCATED};

/// Lines kept per job.
pub(crate) const MAX_LINES: usize = 5000;
/// Bytes kept per job (text and tags, plus [`LINE_OVERHEAD`] per line).
pub(crate) const MAX_BYTES: usize = 2 * 1024 * 1024;
/// What a kept line costs besides its text and worker id.
const LINE_OVERHEAD: usize = 64;

/// One job's newest log lines.
#[derive(Debug)]
pub(crate) struct LogRing {
    lines: VecDeque<LogLine>,
    /// What `lines` cost, counted as [`MAX_BYTES`] counts.
    bytes: usize,
    /// The `seq` of the next line.
    next: u64,
    max_lines: usize,
    max_bytes: usize,
    /// The newest attempt that sent lines, and per executor of it whether
    /// its log was sent to the end.
    attempt: u64,
    ended: BTreeMap<usize, bool>,
}

impl Default for LogRing {
    fn default() -> Self {
        LogRing::with_bounds(MAX_LINES, MAX_BYTES)
    }
}

impl LogRing {
    /// A ring of at most `max_lines` lines and `max_bytes`.
    pub(crate) fn with_bounds(max_lines: usize, max_bytes: usize) -> LogRing {
        LogRing {
            lines: VecDeque::new(),
            bytes: 0,
            next: 0,
            max_lines,
            max_bytes,
            attempt: 0,
            ended: BTreeMap::new(),
        }
    }

    /// Adds the lines `worker` sent, numbering them, and drops the oldest
    /// beyond the bounds.
    pub(crate) fn add(&mut self, worker: &str, chunk: LogChunk) {
        if chunk.attempt > self.attempt {
            self.attempt = chunk.attempt;
            self.ended.clear();
        }
        if chunk.attempt == self.attempt {
            let ended = self.ended.entry(chunk.executor).or_default();
            *ended |= chunk.complete;
        }
        for mut text in chunk.lines {
            // A worker keeps to this; a line that does not is cut here,
            // so one report cannot hold more than the bounds say.
            if text.len() > MAX_LINE_BYTES + TRUNCATED.len() {
                let mut end = MAX_LINE_BYTES;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push_str(TRUNCATED);
            }
            self.bytes += cost(&text, worker);
            self.lines.push_back(LogLine {
                seq: self.next,
                time_ms: Some(chunk.time_ms).filter(|&t| t > 0),
                attempt: chunk.attempt,
                executor: chunk.executor,
                worker: worker.to_string(),
                text,
            });
            self.next += 1;
        }
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= cost(&old.text, &old.worker);
        }
    }

    /// Lines dropped before the oldest kept (the oldest kept line's `seq`).
    pub(crate) fn dropped(&self) -> u64 {
        self.lines.front().map_or(self.next, |l| l.seq)
    }

    /// The lines from `since` on, at most `limit`: the first of them, or
    /// with `tail` the last `tail` (at most `limit`). Returns them and the
    /// `since` to ask with next. A `since` beyond every line numbered
    /// (another coordinator's numbering, before a change of leader) reads
    /// from the oldest line kept.
    pub(crate) fn read(
        &self,
        since: u64,
        limit: usize,
        tail: Option<usize>,
    ) -> (Vec<LogLine>, u64) {
        let since = if since > self.next { 0 } else { since };
        // Lines are numbered without gaps: the first at or after `since`
        // is found by arithmetic.
        let first = since.saturating_sub(self.dropped()) as usize;
        let from = first.min(self.lines.len());
        let available = self.lines.len() - from;
        let (skip, take) = match tail {
            Some(n) => {
                let take = n.min(limit).min(available);
                (available - take, take)
            }
            None => (0, limit.min(available)),
        };
        let lines: Vec<LogLine> = self
            .lines
            .range(from + skip..from + skip + take)
            .cloned()
            .collect();
        // Without a line answered, nothing from `since` on is kept: the
        // next to ask for is the next line to come.
        let next = lines.last().map_or(self.next, |l| l.seq + 1);
        (lines, next)
    }

    /// Whether every executor of `attempt` that sent lines had its log
    /// sent to the end (true when none of it sent any).
    pub(crate) fn ended(&self, attempt: u64) -> bool {
        self.attempt != attempt || self.ended.values().all(|&e| e)
    }
}

fn cost(text: &str, worker: &str) -> usize {
    text.len() + worker.len() + LINE_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(attempt: u64, executor: usize, lines: std::ops::Range<usize>) -> LogChunk {
        LogChunk {
            job_id: "job-1".into(),
            attempt,
            executor,
            lines: lines.map(|i| format!("line {i}")).collect(),
            time_ms: 1000,
            complete: false,
        }
    }

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn lines_are_numbered_tagged_and_read_from_a_seq() {
        let mut ring = LogRing::default();
        ring.add("w-1", chunk(1, 0, 0..3));
        ring.add("w-2", chunk(1, 1, 3..5));
        let (lines, next) = ring.read(0, 100, None);
        assert_eq!(
            texts(&lines),
            ["line 0", "line 1", "line 2", "line 3", "line 4"]
        );
        assert_eq!(
            lines.iter().map(|l| l.seq).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(next, 5);
        let l = &lines[3];
        assert_eq!(
            (l.attempt, l.executor, l.worker.as_str(), l.time_ms),
            (1, 1, "w-2", Some(1000))
        );

        // Paging with limit, then nothing new.
        let (lines, next) = ring.read(1, 2, None);
        assert_eq!(texts(&lines), ["line 1", "line 2"]);
        assert_eq!(next, 3);
        let (lines, next) = ring.read(5, 2, None);
        assert!(lines.is_empty());
        assert_eq!(next, 5);

        // The last lines, and their next.
        let (lines, next) = ring.read(0, 100, Some(2));
        assert_eq!(texts(&lines), ["line 3", "line 4"]);
        assert_eq!(next, 5);
        let (lines, next) = ring.read(0, 100, Some(0));
        assert!(lines.is_empty());
        assert_eq!(next, 5, "tail 0: only what comes from now on");
        let (lines, _) = ring.read(0, 1, Some(3));
        assert_eq!(texts(&lines), ["line 4"], "limit bounds tail too");

        // Another coordinator's numbering: from the oldest kept.
        let (lines, next) = ring.read(9000, 2, None);
        assert_eq!(texts(&lines), ["line 0", "line 1"]);
        assert_eq!(next, 2);
    }

    #[test]
    fn the_ring_is_bounded_and_counts_what_it_dropped() {
        let mut ring = LogRing::with_bounds(10, usize::MAX);
        for i in 0..5 {
            ring.add("w-1", chunk(1, 0, i * 7..(i + 1) * 7));
        }
        assert_eq!(ring.lines.len(), 10);
        assert_eq!(ring.dropped(), 25);
        let (lines, next) = ring.read(3, 100, None);
        assert_eq!(lines.first().unwrap().seq, 25, "dropped lines are skipped");
        assert_eq!(texts(&lines).last(), Some(&"line 34"));
        assert_eq!(next, 35);

        // By bytes: a line costs its text, its worker and the overhead.
        let one = cost("line 10", "w-1");
        let mut ring = LogRing::with_bounds(usize::MAX, one * 3);
        ring.add("w-1", chunk(1, 0, 10..20));
        assert_eq!(
            texts(&ring.read(0, 100, None).0),
            ["line 17", "line 18", "line 19"]
        );
        assert_eq!(ring.dropped(), 7);
        assert!(ring.bytes <= one * 3);

        // A line longer than a worker sends is cut.
        let mut ring = LogRing::default();
        let mut long = chunk(1, 0, 0..0);
        long.lines.push("é".repeat(MAX_LINE_BYTES));
        ring.add("w-1", long);
        let text = &ring.read(0, 1, None).0[0].text;
        assert!(text.ends_with(TRUNCATED));
        assert!(text.len() <= MAX_LINE_BYTES + TRUNCATED.len());
    }

    #[test]
    fn an_attempt_has_ended_once_every_executor_that_logged_is_complete() {
        let mut ring = LogRing::default();
        assert!(ring.ended(1), "nothing logged");
        ring.add("w-1", chunk(1, 0, 0..1));
        ring.add("w-1", chunk(1, 1, 1..2));
        assert!(!ring.ended(1));
        let mut last = chunk(1, 0, 2..3);
        last.complete = true;
        ring.add("w-1", last);
        assert!(!ring.ended(1), "executor 1 still logs");
        ring.add(
            "w-1",
            LogChunk {
                complete: true,
                ..chunk(1, 1, 0..0)
            },
        );
        assert!(ring.ended(1));
        // A newer attempt starts over; an older one's lines are kept but
        // say nothing of the newest.
        ring.add("w-2", chunk(2, 0, 3..4));
        assert!(!ring.ended(2));
        ring.add(
            "w-1",
            LogChunk {
                complete: true,
                ..chunk(1, 0, 0..0)
            },
        );
        assert!(!ring.ended(2));
        assert!(ring.ended(3), "an attempt that logged nothing");
    }
}
