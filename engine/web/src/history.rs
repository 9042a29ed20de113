//! The bounded history behind the web UI's charts: every second a sampler
//! reads the view (jobs, their figures and checkpoints, the workers) and
//! keeps, per job, a point of rates, watermark and source lag, checkpoint
//! durations and per-vertex load, and per worker its slots, CPU and
//! memory. Only the last [`KEEP_POINTS`] points of each series are kept,
//! for at most [`KEEP_JOBS`] jobs, so memory stays bounded however long
//! the server runs. It lives in memory only: a coordinator that becomes
//! leader, or a restarted job process, starts an empty one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_protocol::api::{JobStatus, VertexInfo};
use sluice_protocol::metrics::{
    HistoryPoint, JobHistory, JobMetrics, VertexLoad, WorkerLoad, WorkersLoad, WorkersPoint,
};

use crate::routes::JobsView;

/// Points kept per series: ten minutes at the default interval.
pub const KEEP_POINTS: usize = 600;
/// Jobs whose history is kept; beyond it the ended jobs sampled longest
/// ago lose theirs first.
pub const KEEP_JOBS: usize = 64;

/// The history of the jobs and workers a view shows.
pub struct History {
    interval: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Series>,
    workers: VecDeque<WorkersPoint>,
    /// CPU time per (job, attempt, executor) at the previous sample.
    cpu: HashMap<(String, u64, usize), (i64, u64)>,
}

#[derive(Default)]
struct Series {
    points: VecDeque<HistoryPoint>,
    /// Counters at the previous sample, for rates.
    last: Option<Reading>,
    /// The newest checkpoint id already placed on a point.
    checkpoint_seen: Option<u64>,
    ended: bool,
}

/// Summed counters per vertex at one sample.
struct Reading {
    attempt: u64,
    time_ms: i64,
    vertices: HashMap<usize, (u64, u64)>,
}

impl History {
    /// An empty history sampled every `interval`.
    pub fn new(interval: Duration) -> History {
        History {
            interval,
            inner: Mutex::default(),
        }
    }

    /// How often it is sampled.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while sampling leaves at worst a partial point.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Job `id`'s points, oldest first; none for a job it never sampled.
    pub fn job(&self, id: &str) -> Option<JobHistory> {
        let inner = self.lock();
        let series = inner.jobs.get(id)?;
        Some(JobHistory {
            job_id: id.to_string(),
            interval_ms: self.interval_ms(),
            points: series.points.iter().cloned().collect(),
        })
    }

    /// The workers' points, oldest first.
    pub fn workers(&self) -> WorkersLoad {
        WorkersLoad {
            interval_ms: self.interval_ms(),
            points: self.lock().workers.iter().cloned().collect(),
        }
    }

    fn interval_ms(&self) -> u64 {
        self.interval.as_millis().min(u128::from(u64::MAX)) as u64
    }

    /// Reads `view` once and adds a point to each series: every job not
    /// ended (and a last one for a job that just ended), and the workers.
    pub fn sample<V: JobsView + ?Sized>(&self, view: &V, now_ms: i64) {
        let jobs = view.jobs();
        let mut taken = Vec::new();
        {
            let inner = self.lock();
            for job in &jobs {
                let ended = job.state.is_terminal();
                if ended && inner.jobs.get(&job.id).is_some_and(|s| s.ended) {
                    continue;
                }
                taken.push(job);
            }
        }
        // The view is read without holding the history's lock.
        let readings: Vec<_> = taken
            .into_iter()
            .map(|job| {
                let metrics = view.job_metrics(&job.id);
                let checkpoints = view
                    .checkpoints(&job.id)
                    .map(|c| {
                        c.stats
                            .recent
                            .iter()
                            .map(|r| (r.id, r.figures.duration_ms))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                (job, metrics, checkpoints)
            })
            .collect();
        let workers = view.workers();

        let mut inner = self.lock();
        let listed: HashSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        inner.jobs.retain(|id, _| listed.contains(id.as_str()));
        let mut cpu_now = HashMap::new();
        let mut per_worker: HashMap<String, (Option<f64>, u64)> = HashMap::new();
        for (job, metrics, checkpoints) in readings {
            let series = inner.jobs.entry(job.id.clone()).or_default();
            series.ended = job.state.is_terminal();
            let metrics = metrics.unwrap_or_default();
            let point = series.point(job, &metrics, &checkpoints, now_ms);
            push_bounded(&mut series.points, point);
            if job.state.is_terminal() {
                continue;
            }
            for e in &metrics.executors {
                let Some(p) = job.placement.iter().find(|p| p.executor == e.executor) else {
                    continue;
                };
                let key = (job.id.clone(), job.attempt, e.executor);
                let cores = inner.cpu.get(&key).and_then(|&(t, cpu)| {
                    let secs = (now_ms - t) as f64 / 1000.0;
                    (secs > 0.0)
                        .then(|| e.process.cpu_ms.saturating_sub(cpu) as f64 / 1000.0 / secs)
                });
                cpu_now.insert(key, (now_ms, e.process.cpu_ms));
                let w = per_worker.entry(p.worker.clone()).or_default();
                w.0 = match (w.0, cores) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
                w.1 += e.process.rss_bytes;
            }
        }
        inner.cpu = cpu_now;
        let point = WorkersPoint {
            time_ms: now_ms,
            workers: workers
                .iter()
                .map(|w| {
                    let (cpu_cores, rss_bytes) = per_worker.get(&w.id).copied().unwrap_or_default();
                    WorkerLoad {
                        worker: w.id.clone(),
                        used_slots: w.used_slots,
                        slots: w.slots,
                        cpu_cores,
                        rss_bytes,
                    }
                })
                .collect(),
        };
        push_bounded(&mut inner.workers, point);
        if inner.jobs.len() > KEEP_JOBS {
            let mut ended: Vec<(i64, String)> = inner
                .jobs
                .iter()
                .filter(|(_, s)| s.ended)
                .map(|(id, s)| (s.points.back().map_or(0, |p| p.time_ms), id.clone()))
                .collect();
            ended.sort();
            let excess = inner.jobs.len() - KEEP_JOBS;
            for (_, id) in ended.into_iter().take(excess) {
                inner.jobs.remove(&id);
            }
        }
    }
}

impl Series {
    fn point(
        &mut self,
        job: &JobStatus,
        metrics: &JobMetrics,
        checkpoints: &[(u64, u64)],
        now_ms: i64,
    ) -> HistoryPoint {
        let mut sums: HashMap<usize, (u64, u64)> = HashMap::new();
        let mut loads: HashMap<usize, VertexLoad> = HashMap::new();
        let mut lag = None::<i64>;
        let mut pending = None::<u64>;
        let mut latency = None::<i64>;
        for s in &metrics.subtasks {
            let m = &s.metrics;
            let sum = sums.entry(m.vertex).or_default();
            sum.0 += m.records_in;
            sum.1 += m.records_out;
            let load = loads.entry(m.vertex).or_insert_with(|| VertexLoad {
                vertex: m.vertex,
                ..VertexLoad::default()
            });
            load.busy_ms_per_s = load.busy_ms_per_s.max(m.busy_ms_per_s);
            load.backpressured_ms_per_s = load.backpressured_ms_per_s.max(m.backpressured_ms_per_s);
            if let Some(l) = s.watermark_lag_ms {
                lag = Some(lag.map_or(l, |x| x.max(l)));
            }
            if let Some(l) = m.latency {
                latency = Some(latency.map_or(l.p99_ms, |x| x.max(l.p99_ms)));
            }
            if !m.pending.is_empty() {
                let behind: u64 = m.pending.iter().map(|p| p.records).sum();
                pending = Some(pending.unwrap_or(0) + behind);
            }
        }
        let reading = Reading {
            attempt: job.attempt,
            time_ms: now_ms,
            vertices: sums,
        };
        // Rates only between two readings of one attempt: a new attempt's
        // counters start again from nothing.
        let before = self
            .last
            .as_ref()
            .filter(|b| b.attempt == reading.attempt && now_ms > b.time_ms);
        let rate = |vertex: usize, out: bool| -> Option<f64> {
            let b = before?;
            let secs = (now_ms - b.time_ms) as f64 / 1000.0;
            let pick = |c: &(u64, u64)| if out { c.1 } else { c.0 };
            let now = pick(reading.vertices.get(&vertex)?);
            let then = b.vertices.get(&vertex).map_or(0, pick);
            Some(now.saturating_sub(then) as f64 / secs)
        };
        let mut vertices: Vec<VertexLoad> = loads.into_values().collect();
        vertices.sort_by_key(|v| v.vertex);
        for v in &mut vertices {
            v.records_in_per_s = rate(v.vertex, false);
            v.records_out_per_s = rate(v.vertex, true);
        }
        let total = |ids: &[usize]| -> Option<f64> {
            ids.iter().map(|&v| rate(v, false)).sum::<Option<f64>>()
        };
        let sources: Vec<usize> = job
            .vertices
            .iter()
            .filter(|v| v.source)
            .map(|v| v.id)
            .collect();
        let point = HistoryPoint {
            time_ms: now_ms,
            attempt: job.attempt,
            source_records_per_s: total(&sources),
            sink_records_per_s: total(&last_vertices(&job.vertices)),
            watermark_lag_ms: lag,
            source_pending: pending,
            checkpoints: self.new_checkpoints(checkpoints),
            latency_p99_ms: latency,
            vertices,
        };
        self.last = Some(reading);
        point
    }

    /// The checkpoints completed since the previous sample. At the first
    /// sample those already there are old news (a coordinator that just
    /// became leader): they are not dated now.
    fn new_checkpoints(&mut self, recent: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let newest = recent.iter().map(|c| c.0).max();
        let fresh = match (self.checkpoint_seen, self.points.is_empty()) {
            (_, true) => Vec::new(),
            (seen, false) => recent
                .iter()
                .filter(|c| seen.is_none_or(|s| c.0 > s))
                .copied()
                .collect(),
        };
        self.checkpoint_seen = self.checkpoint_seen.max(newest);
        fresh
    }
}

/// The vertices no other vertex reads from; the last one when the plan
/// does not say how vertices connect.
fn last_vertices(vertices: &[VertexInfo]) -> Vec<usize> {
    if vertices.iter().all(|v| v.inputs.is_empty()) {
        return vertices.iter().map(|v| v.id).max().into_iter().collect();
    }
    let feeding: HashSet<usize> = vertices
        .iter()
        .flat_map(|v| v.inputs.iter().map(|i| i.vertex))
        .collect();
    vertices
        .iter()
        .map(|v| v.id)
        .filter(|id| !feeding.contains(id))
        .collect()
}

fn push_bounded<T>(points: &mut VecDeque<T>, point: T) {
    if points.len() == KEEP_POINTS {
        points.pop_front();
    }
    points.push_back(point);
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Samples `view`'s history every interval, off the async workers (the
/// view's locks are the job manager's), until the view is dropped (a
/// coordinator's manager goes when it stops leading) or the runtime ends.
pub fn spawn_sampler<V: JobsView>(view: &Arc<V>) -> tokio::task::JoinHandle<()> {
    let view = Arc::downgrade(view);
    tokio::spawn(async move {
        let Some(interval) = view.upgrade().map(|v| v.history().interval()) else {
            return;
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(v) = view.upgrade() else { return };
            let sampled =
                tokio::task::spawn_blocking(move || v.history().sample(&*v, now_ms())).await;
            if sampled.is_err() {
                tracing::warn!("sampling the UI's history failed; it stops");
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use sluice_protocol::api::{
        Checkpoints, ClusterInfo, JobResults, JobState, JobStatus, Placement, SavepointRequest,
        SavepointTaken, VertexInput, WorkerInfo,
    };
    use sluice_protocol::ids::TaskKey;
    use sluice_protocol::manifest::CheckpointFigures;
    use sluice_protocol::metrics::{
        ExecutorProcess, JobMetrics, ProcessMetrics, SplitPending, SubtaskMetrics,
    };
    use sluice_protocol::stats::{CheckpointRecord, CheckpointStats};

    use super::*;
    use crate::error::{Error, Result};
    use crate::metrics::tests::{running_job, vertices};
    use crate::Metrics;

    /// A view whose one job's counters a test moves between samples.
    struct Moving {
        job: Mutex<JobStatus>,
        /// Records read by the source, into the sink, CPU ms of executor 0.
        counters: Mutex<(u64, u64, u64)>,
        checkpoints: Mutex<Vec<u64>>,
        metrics: Metrics,
        history: History,
    }

    impl Moving {
        fn new() -> Moving {
            let mut job = running_job();
            job.vertices[1].inputs = vec![VertexInput {
                vertex: 0,
                partitioning: "hash".into(),
            }];
            job.placement = vec![Placement {
                task: TaskKey {
                    vertex: 0,
                    subtask: 0,
                },
                worker: "w1".into(),
                executor: 0,
            }];
            Moving {
                job: Mutex::new(job),
                counters: Mutex::default(),
                checkpoints: Mutex::default(),
                metrics: Metrics::new(),
                history: History::new(Duration::from_secs(1)),
            }
        }
    }

    impl JobsView for Moving {
        fn jobs(&self) -> Vec<JobStatus> {
            vec![self.job.lock().unwrap().clone()]
        }
        fn job(&self, id: &str) -> Option<JobStatus> {
            self.jobs().into_iter().find(|j| j.id == id)
        }
        fn checkpoints(&self, id: &str) -> Option<Checkpoints> {
            let mut stats = CheckpointStats::default();
            for &cp in self.checkpoints.lock().unwrap().iter() {
                stats.record(CheckpointRecord {
                    id: cp,
                    savepoint: false,
                    figures: CheckpointFigures {
                        duration_ms: cp * 10,
                        ..CheckpointFigures::default()
                    },
                });
            }
            Some(Checkpoints {
                job_id: id.into(),
                dir: None,
                latest: None,
                stats,
            })
        }
        fn results(&self, _id: &str) -> Option<JobResults> {
            None
        }
        fn job_metrics(&self, id: &str) -> Option<JobMetrics> {
            let (read, sunk, cpu) = *self.counters.lock().unwrap();
            let source = SubtaskMetrics {
                vertex: 0,
                busy_ms_per_s: 300,
                backpressured_ms_per_s: 600,
                records_in: read,
                records_out: read,
                watermark_ms: Some(1_000),
                pending: vec![SplitPending {
                    split: "t-0".into(),
                    records: 40,
                }],
                ..SubtaskMetrics::default()
            };
            let sink = SubtaskMetrics {
                vertex: 1,
                busy_ms_per_s: 900,
                records_in: sunk,
                watermark_ms: Some(500),
                ..SubtaskMetrics::default()
            };
            let process = ExecutorProcess {
                executor: 0,
                process: ProcessMetrics {
                    cpu_ms: cpu,
                    rss_bytes: 7,
                    ..ProcessMetrics::default()
                },
            };
            Some(JobMetrics::new(
                id,
                2_000,
                &vertices(),
                vec![source, sink],
                vec![process],
            ))
        }
        fn workers(&self) -> Vec<WorkerInfo> {
            vec![WorkerInfo {
                id: "w1".into(),
                slots: 2,
                used_slots: 1,
                capacity: 1.0,
                host: "h".into(),
                alive: true,
                since_heartbeat_ms: 0,
                process: None,
            }]
        }
        fn cluster(&self) -> ClusterInfo {
            unreachable!("the history does not read the cluster summary")
        }
        fn cancel(&self, _id: &str) -> Result<JobStatus> {
            Err(Error::Invalid("not here".into()))
        }
        fn savepoint(&self, _id: &str, _r: SavepointRequest) -> Result<SavepointTaken> {
            Err(Error::Invalid("not here".into()))
        }
        fn metrics(&self) -> &Metrics {
            &self.metrics
        }
        fn history(&self) -> &History {
            &self.history
        }
    }

    #[test]
    fn rates_come_from_two_samples_of_one_attempt() {
        let v = Moving::new();
        *v.checkpoints.lock().unwrap() = vec![1, 2];
        v.history.sample(&v, 10_000);
        *v.counters.lock().unwrap() = (2_000, 500, 1_500);
        v.checkpoints.lock().unwrap().push(3);
        v.history.sample(&v, 12_000);

        let h = v.history.job("j1").unwrap();
        assert_eq!(h.points.len(), 2);
        let (first, second) = (&h.points[0], &h.points[1]);
        assert_eq!(
            first.source_records_per_s, None,
            "no rate at the first point"
        );
        // Checkpoints there before the first sample are not dated then.
        assert!(first.checkpoints.is_empty());
        assert_eq!(second.source_records_per_s, Some(1_000.0));
        assert_eq!(second.sink_records_per_s, Some(250.0));
        assert_eq!(second.checkpoints, vec![(3, 30)]);
        assert_eq!(second.watermark_lag_ms, Some(1_500), "the largest lag");
        assert_eq!(second.source_pending, Some(40));
        assert_eq!(second.vertices[0].busy_ms_per_s, 300);
        assert_eq!(second.vertices[0].backpressured_ms_per_s, 600);
        assert_eq!(second.vertices[1].records_in_per_s, Some(250.0));

        let w = v.history.workers();
        assert_eq!(w.points.len(), 2);
        let w1 = &w.points[1].workers[0];
        assert_eq!((w1.worker.as_str(), w1.used_slots, w1.slots), ("w1", 1, 2));
        assert_eq!(w1.cpu_cores, Some(0.75), "1.5 CPU-s in 2 s");
        assert_eq!(w1.rss_bytes, 7);
    }

    #[test]
    fn a_new_attempt_starts_its_rates_again() {
        let v = Moving::new();
        *v.counters.lock().unwrap() = (5_000, 5_000, 9_000);
        v.history.sample(&v, 1_000);
        // Restarted: counters from nothing, which is no negative rate.
        v.job.lock().unwrap().attempt = 2;
        *v.counters.lock().unwrap() = (100, 100, 100);
        v.history.sample(&v, 2_000);
        let h = v.history.job("j1").unwrap();
        assert_eq!(h.points[1].attempt, 2);
        assert_eq!(h.points[1].source_records_per_s, None);
        assert_eq!(v.history.workers().points[1].workers[0].cpu_cores, None);
        v.history.sample(&v, 3_000);
        assert_eq!(
            v.history.job("j1").unwrap().points[2].source_records_per_s,
            Some(0.0)
        );
    }

    #[test]
    fn it_stays_bounded_and_forgets_jobs_the_view_no_longer_lists() {
        let v = Moving::new();
        for t in 0..(KEEP_POINTS as i64 + 50) {
            v.history.sample(&v, t * 1_000);
        }
        let h = v.history.job("j1").unwrap();
        assert_eq!(h.points.len(), KEEP_POINTS);
        assert_eq!(h.points[0].time_ms, 50_000, "the oldest went first");
        assert_eq!(v.history.workers().points.len(), KEEP_POINTS);

        // Ended: one last point, then no more.
        v.job.lock().unwrap().state = JobState::Finished;
        v.history.sample(&v, 1_000_000);
        v.history.sample(&v, 1_001_000);
        let h = v.history.job("j1").unwrap();
        assert_eq!(h.points.last().unwrap().time_ms, 1_000_000);

        v.job.lock().unwrap().id = "j2".into();
        v.history.sample(&v, 1_002_000);
        assert!(v.history.job("j1").is_none(), "retained no longer");
    }
}
