//! The CPU each worker's executors use, measured in the coordinator from
//! the CPU time the executors report (`ExecutorMetrics::process`), for the
//! least-loaded placement. Each executor's readings are kept for a short
//! window; its cores are the CPU time it gained over the window divided by
//! the wall time the window spans, and a worker's are the sum over the
//! executors placed on it.
//!
//! Why here rather than in the worker's heartbeat: the executors already
//! report their process CPU time to the coordinator, so no protocol
//! change is needed, and it counts exactly the load Sluice placed. What it
//! cannot see is CPU used on a worker's host by anything else.
//!
//! Pure bookkeeping (the caller passes the time), so it is tested with
//! made-up readings.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How far back the cores are measured.
pub const WINDOW: Duration = Duration::from_secs(5);
/// How often the manager samples the executors' readings.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Readings spanning less than this give no figure yet: executors report
/// their CPU time about once a second, so a shorter span is mostly noise.
const MIN_SPAN: Duration = Duration::from_millis(900);

/// An executor of one attempt: (job, attempt, executor index).
pub type ExecutorKey = (String, u64, usize);

/// One executor's recent readings.
#[derive(Debug)]
struct Track {
    worker: String,
    /// (when read, its CPU time then in ms), oldest first.
    readings: VecDeque<(Instant, u64)>,
}

/// The recent CPU time readings of every running executor.
#[derive(Debug)]
pub struct CpuMeter {
    window: Duration,
    last_sample: Option<Instant>,
    executors: HashMap<ExecutorKey, Track>,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter::new(WINDOW)
    }
}

impl CpuMeter {
    /// An empty meter measuring over `window`.
    pub fn new(window: Duration) -> CpuMeter {
        CpuMeter {
            window,
            last_sample: None,
            executors: HashMap::new(),
        }
    }

    /// Whether a sample is due at `now` (one every [`SAMPLE_EVERY`]).
    pub fn due(&self, now: Instant) -> bool {
        self.last_sample
            .is_none_or(|t| now.saturating_duration_since(t) >= SAMPLE_EVERY)
    }

    /// Records every running executor's CPU time (ms) at `now`, with the
    /// worker it runs on. Executors not in `readings` ended (or their
    /// attempt did) and are forgotten.
    pub fn sample(
        &mut self,
        now: Instant,
        readings: impl IntoIterator<Item = (ExecutorKey, String, u64)>,
    ) {
        self.last_sample = Some(now);
        let mut seen = HashMap::with_capacity(self.executors.len());
        for (key, worker, cpu_ms) in readings {
            let mut track = self.executors.remove(&key).unwrap_or_else(|| Track {
                worker: worker.clone(),
                readings: VecDeque::new(),
            });
            track.worker = worker;
            // The same report read again adds nothing but a later time,
            // which is still a true reading: the CPU time had not grown
            // past it when the executor last reported.
            track.readings.push_back((now, cpu_ms));
            // Keep the newest reading at or before the window's start, so
            // the figure spans the whole window once it can.
            while track.readings.len() > 2
                && now.saturating_duration_since(track.readings[1].0) >= self.window
            {
                track.readings.pop_front();
            }
            seen.insert(key, track);
        }
        self.executors = seen;
    }

    /// CPU cores used per worker over the window (workers with no
    /// measured executor are absent).
    pub fn cores(&self) -> HashMap<String, f64> {
        let mut out: HashMap<String, f64> = HashMap::new();
        for track in self.executors.values() {
            let (Some(&(t0, c0)), Some(&(t1, c1))) =
                (track.readings.front(), track.readings.back())
            else {
                continue;
            };
            let span = t1.saturating_duration_since(t0);
            if span < MIN_SPAN {
                continue;
            }
            let cores = c1.saturating_sub(c0) as f64 / 1000.0 / span.as_secs_f64();
            *out.entry(track.worker.clone()).or_default() += cores;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(job: &str, executor: usize) -> ExecutorKey {
        (job.to_string(), 1, executor)
    }

    #[test]
    fn cores_per_worker_over_the_window() {
        let mut m = CpuMeter::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // Job a: one core on w1; job b: a quarter core on w1 and half on w2.
        for i in 0..=20 {
            let s = i as f64 * 0.5;
            let ms = |cores: f64| (s * cores * 1000.0) as u64;
            m.sample(
                at(s),
                [
                    (key("a", 0), "w1".to_string(), ms(1.0)),
                    (key("b", 0), "w1".to_string(), ms(0.25)),
                    (key("b", 1), "w2".to_string(), ms(0.5)),
                ],
            );
            if i == 1 {
                assert!(m.cores().is_empty(), "half a second measures nothing");
            }
        }
        let c = m.cores();
        assert!((c["w1"] - 1.25).abs() < 1e-9, "{c:?}");
        assert!((c["w2"] - 0.5).abs() < 1e-9, "{c:?}");
        // Only the window is kept (plus the reading at its start).
        let kept = m.executors[&key("a", 0)].readings.len();
        assert_eq!(kept, 11, "5 s of readings every 0.5 s");
    }

    #[test]
    fn a_burst_long_ago_no_longer_counts_and_ended_executors_are_forgotten() {
        let mut m = CpuMeter::new(Duration::from_secs(2));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Busy for its first two seconds, idle after.
        for (s, ms) in [
            (0, 0),
            (1, 1000),
            (2, 2000),
            (3, 2000),
            (4, 2000),
            (5, 2000),
        ] {
            m.sample(at(s), [(key("a", 0), "w1".to_string(), ms)]);
        }
        assert_eq!(m.cores()["w1"], 0.0);
        // Its attempt ended: not in the next sample, gone from the figures.
        m.sample(at(6), [(key("c", 0), "w2".to_string(), 0)]);
        assert!(!m.cores().contains_key("w1"));
        assert!(!m.due(at(6)) && m.due(at(7)));
    }
}
