//! Per-subtask figures a running job measures for operators: Flink's
//! time accounting (idle, backpressured, busy), records and bytes in and
//! out, the input watermark and the source's backlog ([`TaskMeter`], one
//! per subtask, written by its task thread only), the sampling that turns
//! them into the protocol's [`SubtaskMetrics`] with per-second rates
//! ([`Sampler`]), and the CPU time and resident memory of this process
//! ([`process`]). It knows nothing of Prometheus or the REST API: the
//! executor reports samples to the coordinator, an embedded job's web UI
//! samples them at each request.
//!
//! Cost: a task reads the clock twice around each wait (a select on its
//! inputs, a send into a full channel) and updates a few relaxed atomics
//! per batch; nothing is done per record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use sluice_protocol::metrics::{Latency, ProcessMetrics, SplitPending, SubtaskMetrics};

/// What a task waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Input (a select on its channels, a source with nothing to read).
    Idle = 1,
    /// Room in an output channel (a full queue, no credit).
    Backpressured = 2,
}

/// No watermark yet.
const NO_WATERMARK: i64 = i64::MIN;

/// The figures of one subtask. Only its task thread writes them (so sums
/// are plain loads and stores); any thread may read them. The wait in
/// progress is visible to readers, so a task stuck on a full channel shows
/// as backpressured while it is stuck, not only once the send returns.
#[derive(Debug)]
pub struct TaskMeter {
    vertex: usize,
    subtask: usize,
    epoch: Instant,
    /// Nanoseconds since `epoch` at which the task ended; 0 while it runs.
    ended_ns: AtomicU64,
    idle_ns: AtomicU64,
    backpressured_ns: AtomicU64,
    /// The wait in progress: `start_ns << 2 | kind`, 0 when none.
    waiting: AtomicU64,
    records_in: AtomicU64,
    records_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    watermark: AtomicI64,
    pending: Mutex<Vec<SplitPending>>,
    /// What the source has still to read; [`UNKNOWN`] when it cannot say.
    remaining: AtomicU64,
    /// `records_in` when `remaining` was set: the source says what remains
    /// only every tick, and records read since then no longer do.
    remaining_at: AtomicU64,
    /// Input channels' fill at the last tick: `queued << 32 | capacity`.
    input_fill: AtomicU64,
    /// Output channels' fill (local queues, network credit in use).
    output_fill: AtomicU64,
    /// Latency markers that reached this (sink) task: when, and how long
    /// they took, ms; the last [`LATENCY_WINDOW`].
    latencies: Mutex<VecDeque<(Instant, i64)>>,
}

/// The span a sink's latency figures cover.
const LATENCY_WINDOW: Duration = Duration::from_secs(60);
/// At most this many markers are kept (a minute of 16 sources' markers).
const LATENCY_KEPT: usize = 1024;

/// Wall-clock time, ms since the epoch (latency markers carry it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn pack_fill((queued, capacity): (usize, usize)) -> u64 {
    let clamp = |n: usize| n.min(u32::MAX as usize) as u64;
    clamp(queued) << 32 | clamp(capacity)
}

/// The share of a packed fill in use; none for no channels.
fn usage(fill: u64) -> Option<f64> {
    let (queued, capacity) = (fill >> 32, fill & u64::from(u32::MAX));
    (capacity > 0).then(|| (queued as f64 / capacity as f64).min(1.0))
}

/// A source's remaining records it cannot tell.
const UNKNOWN: u64 = u64::MAX;

impl TaskMeter {
    /// The meter of subtask `subtask` of vertex `vertex`, its clock started.
    pub fn new(vertex: usize, subtask: usize) -> TaskMeter {
        TaskMeter {
            vertex,
            subtask,
            epoch: Instant::now(),
            ended_ns: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            backpressured_ns: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            watermark: AtomicI64::new(NO_WATERMARK),
            pending: Mutex::new(Vec::new()),
            remaining: AtomicU64::new(UNKNOWN),
            remaining_at: AtomicU64::new(0),
            input_fill: AtomicU64::new(0),
            output_fill: AtomicU64::new(0),
            latencies: Mutex::new(VecDeque::new()),
        }
    }

    /// Which subtask this is: (vertex, subtask).
    pub fn key(&self) -> (usize, usize) {
        (self.vertex, self.subtask)
    }

    fn now_ns(&self) -> u64 {
        // At least 1, so a wait that starts at once is told from none.
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// Starts a wait of `kind`; it ends when the guard drops.
    pub fn wait(&self, kind: Wait) -> Waiting<'_> {
        let start = self.now_ns();
        self.waiting
            .store((start << 2) | kind as u64, Ordering::Release);
        Waiting {
            meter: self,
            kind,
            start,
        }
    }

    fn end_wait(&self, kind: Wait, start: u64) {
        let spent = self.now_ns().saturating_sub(start);
        // Cleared before the sum grows: a reader in between undercounts
        // (the sampler keeps sums from going back), never counts twice.
        self.waiting.store(0, Ordering::Release);
        let sum = match kind {
            Wait::Idle => &self.idle_ns,
            Wait::Backpressured => &self.backpressured_ns,
        };
        sum.store(sum.load(Ordering::Relaxed) + spent, Ordering::Release);
    }

    /// A batch entered the task.
    pub fn batch_in(&self, batch: &RecordBatch) {
        add(&self.records_in, batch.num_rows() as u64);
        add(&self.bytes_in, batch.get_array_memory_size() as u64);
    }

    /// A batch left the task on one output edge.
    pub fn batch_out(&self, batch: &RecordBatch) {
        add(&self.records_out, batch.num_rows() as u64);
        add(&self.bytes_out, batch.get_array_memory_size() as u64);
    }

    /// The task's input watermark moved to `t` (ms).
    pub fn watermark(&self, t: i64) {
        self.watermark.store(t, Ordering::Relaxed);
    }

    /// The source's splits and how far behind each is.
    pub fn pending(&self, pending: Vec<SplitPending>) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = pending;
    }

    /// How full the input channels are: messages queued, and what they
    /// hold at most.
    pub fn input_fill(&self, fill: (usize, usize)) {
        self.input_fill.store(pack_fill(fill), Ordering::Relaxed);
    }

    /// How full the output channels are: messages queued (on a network
    /// channel: sent and not granted back), and what they hold at most.
    pub fn output_fill(&self, fill: (usize, usize)) {
        self.output_fill.store(pack_fill(fill), Ordering::Relaxed);
    }

    /// A latency marker reached this sink task after `ms` (a clock step
    /// between machines can make it negative: counted as 0).
    pub fn latency(&self, ms: i64) {
        let mut kept = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while kept.len() >= LATENCY_KEPT
            || kept
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > LATENCY_WINDOW)
        {
            kept.pop_front();
        }
        kept.push_back((now, ms.max(0)));
    }

    /// The latency figures of the last [`LATENCY_WINDOW`].
    fn latency_figures(&self) -> Option<Latency> {
        let kept = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut ms: Vec<i64> = kept
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= LATENCY_WINDOW)
            .map(|(_, ms)| *ms)
            .collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_unstable();
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Some(Latency {
            markers: ms.len() as u64,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: ms[ms.len() - 1],
        })
    }

    /// What the source has still to read, if it can tell.
    pub fn remaining(&self, remaining: Option<u64>) {
        let v = remaining.map_or(UNKNOWN, |r| r.min(UNKNOWN - 1));
        self.remaining_at
            .store(self.records_in.load(Ordering::Relaxed), Ordering::Relaxed);
        self.remaining.store(v, Ordering::Relaxed);
    }

    /// The source's input ended: nothing remains, if it ever said.
    pub fn read_all(&self) {
        let _ = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                (r != UNKNOWN).then_some(0)
            });
    }

    /// The task ended: its clock stops.
    pub fn end(&self) {
        self.ended_ns.store(self.now_ns(), Ordering::Release);
    }

    /// Time totals now: (elapsed, idle, backpressured), ns.
    fn times(&self) -> (u64, u64, u64) {
        let ended = self.ended_ns.load(Ordering::Acquire);
        let now = if ended > 0 { ended } else { self.now_ns() };
        let mut idle = self.idle_ns.load(Ordering::Acquire);
        let mut back = self.backpressured_ns.load(Ordering::Acquire);
        let waiting = self.waiting.load(Ordering::Acquire);
        if waiting != 0 {
            let spent = now.saturating_sub(waiting >> 2);
            match waiting & 3 {
                1 => idle += spent,
                _ => back += spent,
            }
        }
        (now, idle, back)
    }
}

fn add(counter: &AtomicU64, n: u64) {
    // One writer: a load and a store, no locked instruction.
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// A wait in progress; dropping it ends the wait.
#[must_use = "the wait ends when this drops"]
pub struct Waiting<'a> {
    meter: &'a TaskMeter,
    kind: Wait,
    start: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.meter.end_wait(self.kind, self.start);
    }
}

/// Rates are computed over at least this much time (the newest sample
/// against the newest that is this old, or the oldest kept).
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Time totals of one sample of one subtask, ns.
#[derive(Debug, Clone, Copy, Default)]
struct Times {
    elapsed: u64,
    idle: u64,
    back: u64,
}

/// Samples a set of meters: cumulative figures as they are, and busy, idle
/// and backpressured time per second over the last [`RATE_WINDOW`] or so.
/// Sums never go back between samples (a reader can catch a wait as it
/// ends and miss it once).
#[derive(Debug, Default)]
pub struct Sampler {
    state: Mutex<SamplerState>,
}

#[derive(Debug, Default)]
struct SamplerState {
    /// The meters the history is of (held, so a new attempt's meters are
    /// never mistaken for them).
    meters: Vec<Arc<TaskMeter>>,
    /// Per sample: when, and the times of each meter (by position).
    history: VecDeque<(Instant, Vec<Times>)>,
}

impl Sampler {
    /// Samples `meters` now.
    pub fn sample(&self, meters: &[Arc<TaskMeter>]) -> Vec<SubtaskMetrics> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Another set of meters (a new attempt) starts a new history.
        let same = state.meters.len() == meters.len()
            && state
                .meters
                .iter()
                .zip(meters)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            state.meters = meters.to_vec();
            state.history.clear();
        }
        let history = &mut state.history;
        let last = history.back().map(|(_, t)| t.clone());
        let times: Vec<Times> = meters
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (elapsed, idle, back) = m.times();
                let prev = last.as_ref().map_or(Times::default(), |l| l[i]);
                let idle = idle.max(prev.idle);
                let back = back.max(prev.back);
                Times {
                    elapsed: elapsed.max(prev.elapsed).max(idle + back),
                    idle,
                    back,
                }
            })
            .collect();
        // The base: the newest sample at least RATE_WINDOW old, else the
        // oldest; older ones are no longer needed.
        while history.len() > 1 && now.duration_since(history[1].0) >= RATE_WINDOW {
            history.pop_front();
        }
        let base = history.front().map(|(_, t)| t.clone());
        let out = meters
            .iter()
            .zip(&times)
            .enumerate()
            .map(|(i, (m, t))| {
                let b = base.as_ref().map_or(Times::default(), |b| b[i]);
                figures(m, t, &b)
            })
            .collect();
        history.push_back((now, times));
        out
    }
}

const MS: u64 = 1_000_000;

/// One meter's figures at times `t`, rates against the earlier `base`.
fn figures(m: &TaskMeter, t: &Times, base: &Times) -> SubtaskMetrics {
    let span = t.elapsed.saturating_sub(base.elapsed);
    let per_s = |now: u64, then: u64| {
        if span == 0 {
            0
        } else {
            ((now.saturating_sub(then) as u128 * 1000) / span as u128).min(1000) as u64
        }
    };
    let idle = per_s(t.idle, base.idle);
    let back = per_s(t.back, base.back);
    let busy = if span == 0 {
        0
    } else {
        1000u64.saturating_sub(idle + back)
    };
    let wm = m.watermark.load(Ordering::Relaxed);
    SubtaskMetrics {
        vertex: m.vertex,
        subtask: m.subtask,
        busy_ms_per_s: busy,
        idle_ms_per_s: idle,
        backpressured_ms_per_s: back,
        busy_ms: t.elapsed.saturating_sub(t.idle + t.back) / MS,
        idle_ms: t.idle / MS,
        backpressured_ms: t.back / MS,
        records_in: m.records_in.load(Ordering::Relaxed),
        records_out: m.records_out.load(Ordering::Relaxed),
        bytes_in: m.bytes_in.load(Ordering::Relaxed),
        bytes_out: m.bytes_out.load(Ordering::Relaxed),
        watermark_ms: (wm != NO_WATERMARK).then_some(wm),
        pending: m.pending.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        remaining: Some(m.remaining.load(Ordering::Relaxed))
            .filter(|r| *r != UNKNOWN)
            .map(|r| {
                let since = (m.records_in.load(Ordering::Relaxed))
                    .saturating_sub(m.remaining_at.load(Ordering::Relaxed));
                r.saturating_sub(since)
            }),
        input_queue_usage: usage(m.input_fill.load(Ordering::Relaxed)),
        output_queue_usage: usage(m.output_fill.load(Ordering::Relaxed)),
        latency: m.latency_figures(),
    }
}

/// CPU time and resident memory of this process, from `/proc/self/stat`
/// and `/proc/self/status`; none where those cannot be read (not Linux).
pub fn process() -> Option<ProcessMetrics> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let (net_sent_bytes, net_received_bytes) = crate::exchange::tcp::traffic();
    Some(ProcessMetrics {
        cpu_ms: cpu_ms(&stat)?,
        rss_bytes: rss_bytes(&status)?,
        net_sent_bytes,
        net_received_bytes,
    })
}

/// Clock ticks per second of `/proc`'s times: `USER_HZ`, which the kernel
/// fixes at 100 for user space on every architecture Sluice builds for.
const USER_HZ: u64 = 100;

/// User plus system time of all threads, from a `/proc/PID/stat` line.
fn cpu_ms(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: fields
    // count from after its closing one (state is field 3, utime 14).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 1000 / USER_HZ)
}

/// `VmRSS` of a `/proc/PID/status`, bytes.
fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep(ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }

    #[test]
    fn waits_are_split_into_idle_and_backpressured_and_the_rest_is_busy() {
        let m = Arc::new(TaskMeter::new(1, 2));
        {
            let _w = m.wait(Wait::Idle);
            sleep(30);
        }
        {
            let _w = m.wait(Wait::Backpressured);
            sleep(20);
        }
        sleep(10); // busy
        m.end();
        let s = &Sampler::default().sample(std::slice::from_ref(&m))[0];
        assert_eq!((s.vertex, s.subtask), (1, 2));
        // Lower bounds only: a loaded machine sleeps longer, never shorter.
        assert!(s.idle_ms >= 30, "{s:?}");
        assert!(s.backpressured_ms >= 20, "{s:?}");
        assert!(s.busy_ms >= 10, "{s:?}");
        // Since the task started: the three fill the whole second.
        assert_eq!(
            s.busy_ms_per_s + s.idle_ms_per_s + s.backpressured_ms_per_s,
            1000,
            "{s:?}"
        );
        assert!(s.idle_ms_per_s > 0 && s.backpressured_ms_per_s > 0);
    }

    #[test]
    fn a_wait_in_progress_is_counted_while_it_lasts() {
        let m = Arc::new(TaskMeter::new(0, 0));
        let sampler = Sampler::default();
        let guard = m.wait(Wait::Backpressured);
        sleep(20);
        let during = sampler.sample(std::slice::from_ref(&m))[0].clone();
        assert!(during.backpressured_ms >= 20, "{during:?}");
        drop(guard);
        let after = sampler.sample(std::slice::from_ref(&m))[0].clone();
        assert!(after.backpressured_ms >= during.backpressured_ms);
        assert_eq!(after.idle_ms, 0);
    }

    #[test]
    fn rates_cover_the_recent_window_not_the_whole_run() {
        let m = Arc::new(TaskMeter::new(0, 0));
        let sampler = Sampler::default();
        {
            let _w = m.wait(Wait::Idle);
            sleep(30);
        }
        let first = sampler.sample(std::slice::from_ref(&m))[0].clone();
        assert!(first.idle_ms_per_s > 0);
        // Busy from here: the next rates are against the first sample.
        sleep(20);
        let second = sampler.sample(std::slice::from_ref(&m))[0].clone();
        assert_eq!(second.idle_ms_per_s, 0, "{second:?}");
        assert_eq!(second.busy_ms_per_s, 1000, "{second:?}");
        assert_eq!(second.idle_ms, first.idle_ms);
    }

    #[test]
    fn counts_watermark_and_backlog_are_reported() {
        let m = Arc::new(TaskMeter::new(0, 0));
        let batch = crate::testing::int_batch(&[("v", &[1, 2, 3])]);
        m.batch_in(&batch);
        m.batch_out(&batch);
        m.batch_out(&batch);
        m.watermark(42);
        m.pending(vec![SplitPending {
            split: "t-0".into(),
            records: 7,
        }]);
        let s = &Sampler::default().sample(&[m])[0];
        assert_eq!((s.records_in, s.records_out), (3, 6));
        assert!(s.bytes_in > 0 && s.bytes_out == 2 * s.bytes_in);
        assert_eq!(s.watermark_ms, Some(42));
        assert_eq!(s.pending[0].records, 7);
    }

    #[test]
    fn what_remains_counts_down_with_records_read_since_the_source_said() {
        let m = Arc::new(TaskMeter::new(0, 0));
        let sample =
            |m: &Arc<TaskMeter>| Sampler::default().sample(std::slice::from_ref(m))[0].remaining;
        assert_eq!(sample(&m), None, "a source that never said");
        let batch = crate::testing::int_batch(&[("v", &[1, 2, 3])]);
        m.batch_in(&batch);
        m.remaining(Some(10));
        assert_eq!(sample(&m), Some(10));
        // Read since: no longer remaining, before the source says again.
        m.batch_in(&batch);
        assert_eq!(sample(&m), Some(7));
        m.remaining(None);
        assert_eq!(sample(&m), None);
        m.remaining(Some(4));
        m.read_all();
        assert_eq!(sample(&m), Some(0), "the input ended");
    }

    #[test]
    fn latency_figures_are_the_markers_of_the_last_minute() {
        let m = Arc::new(TaskMeter::new(1, 0));
        let sample =
            |m: &Arc<TaskMeter>| Sampler::default().sample(std::slice::from_ref(m))[0].latency;
        assert_eq!(sample(&m), None, "no marker yet");
        for ms in 1..=100 {
            m.latency(ms);
        }
        // A clock step between machines: counted as no time.
        m.latency(-5);
        let l = sample(&m).unwrap();
        assert_eq!(l.markers, 101);
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms), (50, 99, 100));
        for _ in 0..2 * LATENCY_KEPT {
            m.latency(7);
        }
        let l = sample(&m).unwrap();
        assert_eq!(l.markers, LATENCY_KEPT as u64, "bounded");
        assert_eq!(l.max_ms, 7, "the oldest went first");
    }

    #[test]
    fn a_new_attempts_meters_start_a_new_history() {
        let sampler = Sampler::default();
        let old = Arc::new(TaskMeter::new(0, 0));
        {
            let _w = old.wait(Wait::Idle);
            sleep(20);
        }
        assert!(sampler.sample(std::slice::from_ref(&old))[0].idle_ms >= 20);
        // The restarted task has a meter of its own, starting from zero.
        let new = Arc::new(TaskMeter::new(0, 0));
        let s = sampler.sample(std::slice::from_ref(&new))[0].clone();
        assert_eq!(s.idle_ms, 0, "{s:?}");
    }

    #[test]
    fn proc_files_are_parsed() {
        let stat = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100";
        assert_eq!(cpu_ms(stat), Some(3000));
        let status = "Name:\tx\nVmPeak:\t 9 kB\nVmRSS:\t    2048 kB\nThreads: 3\n";
        assert_eq!(rss_bytes(status), Some(2 << 20));
        if cfg!(target_os = "linux") {
            let p = process().expect("this process's figures");
            assert!(p.rss_bytes > 0);
        }
    }
}
