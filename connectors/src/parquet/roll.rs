//! When an open Parquet file is finished ("rolled"): the policy a user
//! configures and the pure decision over one file's figures. The sink asks
//! after every write, at every tick of wall time, at every watermark and at
//! every barrier; nothing here does I/O.

use std::time::{Duration, Instant};

/// When files roll. A file that does not roll stays open across
/// checkpoints: each checkpoint commits the rows written so far as finished
/// row groups of it, and the file becomes visible when it rolls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollPolicy {
    /// Roll once the file holds this many bytes (encoded, plus the
    /// estimate of the row group being built).
    pub max_bytes: usize,
    /// Roll once the file holds this many rows.
    pub max_rows: Option<u64>,
    /// Roll a file this long after it was opened.
    pub max_age: Option<Duration>,
    /// Roll a file that received nothing for this long (a quiet input still
    /// becomes visible).
    pub inactivity: Option<Duration>,
    /// Roll every file at every checkpoint (one file per checkpoint per
    /// subtask and partition: the behaviour of sinks without files that
    /// span checkpoints, visible as soon as the checkpoint completes).
    pub at_checkpoint: bool,
}

impl Default for RollPolicy {
    fn default() -> Self {
        RollPolicy {
            max_bytes: 128 * 1024 * 1024,
            max_rows: None,
            max_age: Some(Duration::from_secs(60)),
            inactivity: Some(Duration::from_secs(30)),
            at_checkpoint: false,
        }
    }
}

/// What is known about one open file.
#[derive(Debug, Clone, Copy)]
pub struct FileFigures {
    /// Bytes written plus the estimate of the row group in progress.
    pub bytes: usize,
    /// Rows written.
    pub rows: u64,
    /// When it was opened.
    pub opened: Instant,
    /// When rows were last written to it.
    pub last_write: Instant,
    /// Event time (ms) after which no row of the file's partition can be
    /// on time: the end of its newest time bucket (time-partitioned output).
    pub closes_at: Option<i64>,
}

/// Why a file rolled (logged, and counted in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollReason {
    /// `max_bytes` reached.
    Size,
    /// `max_rows` reached.
    Rows,
    /// `max_age` reached.
    Age,
    /// Nothing written for `inactivity`.
    Inactive,
    /// The watermark passed the end of the file's time partition.
    Watermark,
    /// A checkpoint (with `at_checkpoint`).
    Checkpoint,
    /// The input ended, or more partitions are open than allowed.
    Close,
    /// The input's schema changed (files have one schema each).
    Schema,
}

impl RollPolicy {
    /// Whether the file rolls now, by its size, rows or age, the time it
    /// has been quiet, or the watermark `watermark` (ms).
    pub fn due(&self, f: &FileFigures, now: Instant, watermark: Option<i64>) -> Option<RollReason> {
        if f.bytes >= self.max_bytes {
            return Some(RollReason::Size);
        }
        if self.max_rows.is_some_and(|m| f.rows >= m) {
            return Some(RollReason::Rows);
        }
        if self
            .max_age
            .is_some_and(|a| now.saturating_duration_since(f.opened) >= a)
        {
            return Some(RollReason::Age);
        }
        if self
            .inactivity
            .is_some_and(|d| now.saturating_duration_since(f.last_write) >= d)
        {
            return Some(RollReason::Inactive);
        }
        if let (Some(end), Some(wm)) = (f.closes_at, watermark) {
            // The window's last on-time millisecond is end - 1 (as windows
            // fire at end - 1).
            if wm >= end - 1 {
                return Some(RollReason::Watermark);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(now: Instant) -> FileFigures {
        FileFigures {
            bytes: 10,
            rows: 5,
            opened: now,
            last_write: now,
            closes_at: None,
        }
    }

    #[test]
    fn each_limit_rolls_on_its_own() {
        let t0 = Instant::now();
        let p = RollPolicy {
            max_bytes: 100,
            max_rows: Some(50),
            max_age: Some(Duration::from_secs(60)),
            inactivity: Some(Duration::from_secs(10)),
            at_checkpoint: false,
        };
        let f = figures(t0);
        assert_eq!(p.due(&f, t0, None), None);
        assert_eq!(
            p.due(&FileFigures { bytes: 100, ..f }, t0, None),
            Some(RollReason::Size)
        );
        assert_eq!(
            p.due(&FileFigures { rows: 50, ..f }, t0, None),
            Some(RollReason::Rows)
        );
        // Written to a second ago, opened a minute ago.
        let later = t0 + Duration::from_secs(60);
        let busy = FileFigures {
            last_write: later - Duration::from_secs(1),
            ..f
        };
        assert_eq!(p.due(&busy, later, None), Some(RollReason::Age));
        let quiet = t0 + Duration::from_secs(10);
        assert_eq!(p.due(&f, quiet, None), Some(RollReason::Inactive));
        assert_eq!(p.due(&f, quiet - Duration::from_millis(1), None), None);
    }

    #[test]
    fn a_time_partition_closes_when_the_watermark_passes_its_end() {
        let t0 = Instant::now();
        let p = RollPolicy {
            max_age: None,
            inactivity: None,
            ..RollPolicy::default()
        };
        let f = FileFigures {
            closes_at: Some(3_600_000),
            ..figures(t0)
        };
        assert_eq!(p.due(&f, t0, None), None);
        assert_eq!(p.due(&f, t0, Some(3_599_998)), None);
        assert_eq!(p.due(&f, t0, Some(3_599_999)), Some(RollReason::Watermark));
        // No time partition: the watermark never rolls it.
        assert_eq!(p.due(&figures(t0), t0, Some(i64::MAX)), None);
    }
}
