//! The autoscaler's decisions, with no I/O: from a job's per-subtask
//! figures (busy time, records in, a source's backlog) over a metric
//! window it computes the parallelism each vertex needs for a target
//! utilization, the way Flink's autoscaler does, and says when the job
//! should be rescaled to it. The manager
//! (`manager/autoscale.rs`) feeds it samples and carries its decisions
//! out through the same rescale `sluice rescale` asks for.
//!
//! Per vertex, over the window:
//! - busy seconds and records in are differences of cumulative counters,
//!   so the figures cover the whole window, not the last report;
//! - the *true processing rate* is records per busy second of one subtask
//!   (what a subtask would do at 100 % busy);
//! - a source's *input rate* is what it read plus the growth of its
//!   backlog (records not yet read); the ratio of the two, over all
//!   sources, scales the input rate of the vertices downstream (they
//!   would get that much more once the sources kept up);
//! - needed = ceil(input rate / (true rate × target utilization)).
//!
//! Parallelism is job-wide, so the job needs the most any vertex needs,
//! clamped to the job's range. A recommendation is acted on only once it
//! has pointed the same way for the whole stabilization window (scaling
//! up to the least it asked for in that time, down to the most), never
//! within the cooldown after an attempt started (a start, restart or
//! rescale) or after a decision, and only while the manager says the job
//! may (RUNNING, no checkpoint in flight).

use std::collections::VecDeque;
use std::time::Duration;

use sluice_protocol::api::{AutoscaleDecision, AutoscaleRange, VertexInfo};
use sluice_protocol::metrics::SubtaskMetrics;

/// The coordinator's autoscaler settings (the same for every autoscaled
/// job).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoscaleSettings {
    /// The busy fraction each vertex should run at after a rescale (0..1].
    pub target_utilization: f64,
    /// Rates and busy time are averaged over this long.
    pub metric_window: Duration,
    /// A recommendation must hold this long before it is acted on.
    pub stabilization: Duration,
    /// Nothing is decided this long after an attempt started or a rescale
    /// was decided.
    pub cooldown: Duration,
}

impl Default for AutoscaleSettings {
    /// 70 % utilization, a one-minute window, two minutes of stabilization
    /// and five of cooldown.
    fn default() -> Self {
        AutoscaleSettings {
            target_utilization: 0.7,
            metric_window: Duration::from_secs(60),
            stabilization: Duration::from_secs(120),
            cooldown: Duration::from_secs(300),
        }
    }
}

/// One vertex's cumulative figures at one moment, summed over its
/// subtasks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VertexTotals {
    /// Plan index.
    pub vertex: usize,
    /// Its chained operators.
    pub name: String,
    /// Whether its head is a source.
    pub source: bool,
    /// Subtasks.
    pub parallelism: usize,
    /// Busy time since the attempt's subtasks started, ms.
    pub busy_ms: u64,
    /// Records that entered it.
    pub records_in: u64,
    /// A source's records not read yet, over its splits.
    pub pending: u64,
}

/// Every vertex's figures at `time_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// By vertex.
    pub vertices: Vec<VertexTotals>,
}

impl Sample {
    /// The sample of `subtasks` (the executors' latest reports) for the
    /// plan's `vertices`; `None` unless every subtask reported.
    pub fn of(
        time_ms: i64,
        vertices: &[VertexInfo],
        subtasks: &[SubtaskMetrics],
    ) -> Option<Sample> {
        let mut out = Vec::with_capacity(vertices.len());
        for v in vertices {
            let mut t = VertexTotals {
                vertex: v.id,
                name: v.name.clone(),
                source: v.source,
                parallelism: v.parallelism,
                ..VertexTotals::default()
            };
            let mut reported = 0;
            for s in subtasks.iter().filter(|s| s.vertex == v.id) {
                reported += 1;
                t.busy_ms += s.busy_ms;
                t.records_in += s.records_in;
                t.pending += s.pending.iter().map(|p| p.records).sum::<u64>();
            }
            if reported < v.parallelism {
                return None;
            }
            out.push(t);
        }
        Some(Sample {
            time_ms,
            vertices: out,
        })
    }
}

/// What the job needs, and which vertex says so.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The parallelism to run at, within the job's range.
    pub parallelism: usize,
    /// What the driving vertex needs, before clamping.
    pub wanted: usize,
    /// The vertex that needs the most subtasks.
    pub vertex: usize,
    /// Its name.
    pub name: String,
    /// Its mean busy time per subtask, ms per second.
    pub busy_ms_per_s: u64,
    /// Records per second it must take.
    pub input_rate: f64,
    /// Growth of its sources' backlog, records per second (its own, for a
    /// source vertex).
    pub backlog_growth: f64,
    /// Records per busy second of one subtask.
    pub true_rate: f64,
}

/// The parallelism each vertex needs between samples `first` and `last`
/// at `target` utilization; the most any needs, clamped to `range`. `None`
/// when the samples say nothing (no time between them, or no vertex
/// received records).
pub fn recommend(
    first: &Sample,
    last: &Sample,
    range: AutoscaleRange,
    target: f64,
) -> Option<Recommendation> {
    let secs = (last.time_ms - first.time_ms) as f64 / 1000.0;
    if secs <= 0.0 || target <= 0.0 {
        return None;
    }
    let pairs: Vec<(&VertexTotals, &VertexTotals)> = last
        .vertices
        .iter()
        .filter_map(|l| {
            first
                .vertices
                .iter()
                .find(|f| f.vertex == l.vertex)
                .map(|f| (f, l))
        })
        .collect();
    // How much more the sources should read than they did: what arrived
    // over what was read. Downstream vertices would get that much more.
    let mut factor: f64 = 1.0;
    let mut growth_all = 0.0;
    for (f, l) in pairs.iter().filter(|(_, l)| l.source) {
        let read = l.records_in.saturating_sub(f.records_in) as f64 / secs;
        let growth = (l.pending as f64 - f.pending as f64) / secs;
        growth_all += growth;
        if read > 0.0 {
            factor = factor.max((read + growth).max(0.0) / read);
        }
    }
    let mut best: Option<Recommendation> = None;
    for (f, l) in pairs {
        let records = l.records_in.saturating_sub(f.records_in) as f64;
        let busy_s = l.busy_ms.saturating_sub(f.busy_ms) as f64 / 1000.0;
        let parallelism = l.parallelism.max(1);
        let busy_ms_per_s = (busy_s * 1000.0 / (secs * parallelism as f64)).round() as u64;
        if records <= 0.0 {
            // Nothing arrived: no evidence of what it can do.
            continue;
        }
        let read = records / secs;
        let (input_rate, backlog_growth) = if l.source {
            let growth = (l.pending as f64 - f.pending as f64) / secs;
            ((read + growth).max(0.0), growth)
        } else {
            (read * factor, growth_all)
        };
        let (true_rate, wanted) = if busy_s <= 0.0 {
            (f64::INFINITY, 1)
        } else {
            let true_rate = records / busy_s;
            let need = (input_rate / (true_rate * target)).ceil();
            (true_rate, (need as usize).max(1))
        };
        let better = best.as_ref().is_none_or(|b| {
            wanted > b.wanted || (wanted == b.wanted && busy_ms_per_s > b.busy_ms_per_s)
        });
        if better {
            best = Some(Recommendation {
                parallelism: wanted.clamp(range.min, range.max),
                wanted,
                vertex: l.vertex,
                name: l.name.clone(),
                busy_ms_per_s,
                input_rate,
                backlog_growth,
                true_rate,
            });
        }
    }
    best
}

impl Recommendation {
    /// The decision to go from `from` to this, in words, as logged and
    /// shown.
    pub fn decision(&self, time_ms: i64, from: usize, target: f64) -> AutoscaleDecision {
        let way = if self.parallelism > from {
            "up"
        } else {
            "down"
        };
        let clamped = if self.wanted != self.parallelism {
            format!(" (needs {}, clamped to the job's range)", self.wanted)
        } else {
            String::new()
        };
        let reason = format!(
            "scale {way} {from} -> {}{clamped}: vertex {} '{}' busy {} ms/s per subtask, \
             input {:.0} records/s (backlog {:+.0}/s), true rate {:.0} records/s per busy subtask: \
             needs ceil({:.0} / ({:.0} x {:.2})) = {}",
            self.parallelism,
            self.vertex,
            self.name,
            self.busy_ms_per_s,
            self.input_rate,
            self.backlog_growth,
            self.true_rate,
            self.input_rate,
            self.true_rate,
            target,
            self.wanted,
        );
        AutoscaleDecision {
            time_ms,
            from,
            to: self.parallelism,
            reason,
            vertex: self.vertex,
            busy_ms_per_s: self.busy_ms_per_s,
            input_rate: self.input_rate,
            true_rate: self.true_rate,
            target_utilization: target,
            error: None,
        }
    }
}

/// A recommendation waiting out the stabilization window.
#[derive(Debug, Clone)]
struct Pending {
    up: bool,
    since_ms: i64,
    /// Up: the least asked for in the window; down: the most.
    bound: usize,
    latest: Recommendation,
}

/// One job's autoscaler: its samples of the current attempt and the
/// recommendation being waited out. In memory only; a new leader starts
/// afresh (its first attempt's cooldown comes first anyway).
#[derive(Debug, Clone)]
pub struct Autoscaler {
    range: AutoscaleRange,
    attempt: Option<u64>,
    /// The later of when the attempt was first seen running and the last
    /// decision.
    quiet_since_ms: i64,
    samples: VecDeque<Sample>,
    pending: Option<Pending>,
}

impl Autoscaler {
    /// An autoscaler keeping a job within `range`.
    pub fn new(range: AutoscaleRange) -> Autoscaler {
        Autoscaler {
            range,
            attempt: None,
            quiet_since_ms: 0,
            samples: VecDeque::new(),
            pending: None,
        }
    }

    /// Its range.
    pub fn range(&self) -> AutoscaleRange {
        self.range
    }

    /// Takes `sample` (if every subtask reported) of running `attempt` at
    /// `now_ms`, the job at `current`; returns the recommendation to act
    /// on now, if any. `may_act` false (a checkpoint in flight) keeps a
    /// due recommendation for a later call.
    pub fn observe(
        &mut self,
        settings: &AutoscaleSettings,
        now_ms: i64,
        attempt: u64,
        current: usize,
        sample: Option<Sample>,
        may_act: bool,
    ) -> Option<Recommendation> {
        if self.attempt != Some(attempt) {
            // Counters start again with every attempt, and its first
            // moments (restores, catching up) are not its steady load.
            self.attempt = Some(attempt);
            self.quiet_since_ms = self.quiet_since_ms.max(now_ms);
            self.samples.clear();
            self.pending = None;
        }
        let cooldown_ends = self.quiet_since_ms + settings.cooldown.as_millis() as i64;
        if now_ms < cooldown_ends {
            return None;
        }
        if let Some(s) = sample {
            if s.time_ms >= cooldown_ends {
                self.samples.push_back(s);
            }
        }
        // Keep the newest sample at or before the window's start, so the
        // window is covered whole.
        let window = settings.metric_window.as_millis() as i64;
        while self.samples.len() > 2 && self.samples[1].time_ms <= now_ms - window {
            self.samples.pop_front();
        }
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        if last.time_ms - first.time_ms < window {
            return None;
        }
        let Some(rec) = recommend(first, last, self.range, settings.target_utilization) else {
            self.pending = None;
            return None;
        };
        if rec.parallelism == current {
            self.pending = None;
            return None;
        }
        let up = rec.parallelism > current;
        match &mut self.pending {
            Some(p) if p.up == up => {
                p.bound = if up {
                    p.bound.min(rec.parallelism)
                } else {
                    p.bound.max(rec.parallelism)
                };
                p.latest = rec;
            }
            _ => {
                self.pending = Some(Pending {
                    up,
                    since_ms: now_ms,
                    bound: rec.parallelism,
                    latest: rec,
                })
            }
        }
        let p = self.pending.as_ref().expect("set above");
        if !may_act || now_ms - p.since_ms < settings.stabilization.as_millis() as i64 {
            return None;
        }
        let mut out = p.latest.clone();
        out.parallelism = p.bound;
        // Whatever follows (a rescale, or a failed one) is judged on
        // figures from after the cooldown only.
        self.pending = None;
        self.samples.clear();
        self.quiet_since_ms = now_ms;
        Some(out)
    }

    /// The recommendation being waited out: the parallelism and since
    /// when (ms since the epoch).
    pub fn pending(&self) -> Option<(usize, i64)> {
        self.pending.as_ref().map(|p| (p.bound, p.since_ms))
    }
}

/// The plan of a job whose vertices all run at the job's parallelism,
/// at parallelism `p`; `None` when a vertex has a parallelism of its own
/// (planning it at another parallelism needs the binary).
pub fn plan_at(
    d: &sluice_protocol::api::JobDescription,
    p: usize,
) -> Option<sluice_protocol::api::JobDescription> {
    if d.vertices.iter().any(|v| v.parallelism != d.parallelism) {
        return None;
    }
    let mut out = d.clone();
    out.parallelism = p;
    for v in &mut out.vertices {
        v.parallelism = p;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn settings() -> AutoscaleSettings {
        AutoscaleSettings {
            target_utilization: 0.7,
            metric_window: Duration::from_secs(3),
            stabilization: Duration::from_secs(5),
            cooldown: Duration::from_secs(10),
        }
    }

    fn range(min: usize, max: usize) -> AutoscaleRange {
        AutoscaleRange { min, max }
    }

    /// A job of a source and a window vertex. The source reads `rate`
    /// records/s and each record costs `cost_ms` of busy time in it; its
    /// backlog grows by `backlog` records/s. Cumulative figures go on
    /// from `prev`.
    struct Load {
        parallelism: usize,
        busy: u64,
        records: u64,
        pending: u64,
    }

    impl Load {
        fn new(parallelism: usize) -> Load {
            Load {
                parallelism,
                busy: 0,
                records: 0,
                pending: 0,
            }
        }

        /// One second of `rate` records/s read at `cost_us` per record,
        /// with the backlog growing by `backlog`/s.
        fn second(&mut self, t: i64, rate: u64, cost_us: u64, backlog: u64) -> Sample {
            self.records += rate;
            self.busy += rate * cost_us / 1000;
            self.pending += backlog;
            let p = self.parallelism;
            Sample {
                time_ms: t,
                vertices: vec![
                    VertexTotals {
                        vertex: 0,
                        name: "source".into(),
                        source: true,
                        parallelism: p,
                        busy_ms: self.busy,
                        records_in: self.records,
                        pending: self.pending,
                    },
                    VertexTotals {
                        vertex: 1,
                        name: "window".into(),
                        source: false,
                        parallelism: p,
                        busy_ms: self.busy / 10,
                        records_in: self.records,
                        pending: 0,
                    },
                ],
            }
        }
    }

    /// Drives an autoscaler second by second from `start` for `secs`;
    /// returns the decisions (second, parallelism) and the load.
    fn drive(
        a: &mut Autoscaler,
        load: &mut Load,
        start: i64,
        secs: i64,
        mut per_second: impl FnMut(i64, usize) -> (u64, u64, u64),
    ) -> Vec<(i64, usize)> {
        let mut out = Vec::new();
        for i in 0..secs {
            let t = (start + i) * S;
            let (rate, cost, backlog) = per_second(start + i, load.parallelism);
            let sample = load.second(t, rate, cost, backlog);
            if let Some(r) = a.observe(&settings(), t, 1, load.parallelism, Some(sample), true) {
                out.push((start + i, r.parallelism));
            }
        }
        out
    }

    #[test]
    fn steady_load_changes_nothing() {
        let mut a = Autoscaler::new(range(1, 4));
        let mut load = Load::new(2);
        // 2000 records/s at 500 µs each over 2 subtasks: 50 % busy.
        let d = drive(&mut a, &mut load, 0, 120, |_, _| (2000, 500, 0));
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn a_step_up_scales_up_once_the_window_has_held() {
        let mut a = Autoscaler::new(range(1, 8));
        let mut load = Load::new(1);
        // 20 % busy, then four times the load with a growing backlog.
        let d = drive(&mut a, &mut load, 0, 30, |_, _| (400, 500, 0));
        assert!(d.is_empty(), "{d:?}");
        let d = drive(&mut a, &mut load, 30, 40, |_, _| (1800, 500, 200));
        // Busy 900 ms/s, 1800 read + 200 backlog = 2000/s against a true
        // rate of 2000/s per subtask: ceil(2000 / (2000 × 0.7)) = 2. The
        // window (3 s) asks for 2 from second 32, when most of it is the
        // new load; the recommendation holds for the stabilization (5 s)
        // from then.
        let (when, to) = d[0];
        assert_eq!(to, 2);
        assert!((36..=38).contains(&when), "decided at {when}");
        // Not rescaled here, so it decides again, but only after the
        // cooldown (10 s), a fresh window (3 s) and the stabilization.
        assert!(d.iter().skip(1).all(|(t, _)| t - when >= 18), "{d:?}");
    }

    #[test]
    fn noisy_oscillation_never_flaps() {
        let mut a = Autoscaler::new(range(1, 4));
        let mut load = Load::new(2);
        // Around the boundary: alternating 4 s above and 4 s below the
        // target, never the same way for the 5 s stabilization window.
        let d = drive(&mut a, &mut load, 0, 200, |t, _| {
            if (t / 4) % 2 == 0 {
                (4000, 500, 0) // 100 % busy: wants 3
            } else {
                (800, 500, 0) // 20 % busy: wants 1
            }
        });
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn recommendations_are_clamped_to_the_range() {
        let mut a = Autoscaler::new(range(2, 3));
        let mut load = Load::new(2);
        // Far too much (wants 8): up to the maximum.
        let d = drive(&mut a, &mut load, 0, 30, |_, _| (8000, 500, 4000));
        assert_eq!(d.first().map(|d| d.1), Some(3), "{d:?}");
        // Nothing at all (wants 1): down to the minimum, never below.
        let mut a = Autoscaler::new(range(2, 3));
        let mut load = Load::new(3);
        let d = drive(&mut a, &mut load, 0, 30, |_, _| (10, 500, 0));
        assert_eq!(d.first().map(|d| d.1), Some(2), "{d:?}");
        let mut load = Load::new(2);
        let mut a = Autoscaler::new(range(2, 3));
        let d = drive(&mut a, &mut load, 0, 60, |_, _| (10, 500, 0));
        assert!(d.is_empty(), "already at the minimum: {d:?}");
    }

    #[test]
    fn nothing_is_decided_in_the_cooldown_after_a_start_or_a_decision() {
        let s = settings();
        let mut a = Autoscaler::new(range(1, 4));
        let mut load = Load::new(1);
        let mut decided = Vec::new();
        for i in 0..60 {
            let sample = load.second(i * S, 4000, 500, 0);
            // The first attempt, then the rescaled one from second 30.
            let attempt = if i < 30 { 1 } else { 2 };
            if let Some(r) = a.observe(&s, i * S, attempt, load.parallelism, Some(sample), true) {
                decided.push(i);
                assert!(r.parallelism > 1);
            }
        }
        // Cooldown 10 s, window 3 s, stabilization 5 s: 18 s after each
        // start at the earliest; the load stays too much for 1 subtask,
        // and the rescale was not done here (parallelism stays 1), so the
        // second attempt decides again after its own cooldown.
        assert_eq!(decided, vec![18, 48]);
    }

    #[test]
    fn a_checkpoint_in_flight_defers_a_due_decision() {
        let s = settings();
        let mut a = Autoscaler::new(range(1, 4));
        let mut load = Load::new(1);
        let mut decided = None;
        for i in 0..40 {
            let sample = load.second(i * S, 4000, 500, 0);
            let may_act = i >= 25;
            if let Some(r) = a.observe(&s, i * S, 1, 1, Some(sample), may_act) {
                decided = Some((i, r.parallelism));
                break;
            }
        }
        assert_eq!(decided, Some((25, 3)));
        assert_eq!(a.pending(), None, "acted on");
        // Held back, it showed what it waited to do.
        let mut b = Autoscaler::new(range(1, 4));
        let mut load = Load::new(1);
        for i in 0..22 {
            let sample = load.second(i * S, 4000, 500, 0);
            assert_eq!(b.observe(&s, i * S, 1, 1, Some(sample), false), None);
        }
        assert_eq!(b.pending(), Some((3, 13 * S)));
    }

    #[test]
    fn a_lagging_source_counts_its_backlog_and_scales_downstream_alike() {
        let first = Sample {
            time_ms: 0,
            vertices: vec![
                VertexTotals {
                    vertex: 0,
                    name: "source".into(),
                    source: true,
                    parallelism: 1,
                    ..VertexTotals::default()
                },
                VertexTotals {
                    vertex: 1,
                    name: "heavy".into(),
                    source: false,
                    parallelism: 1,
                    ..VertexTotals::default()
                },
            ],
        };
        let mut last = first.clone();
        last.time_ms = 10 * S;
        // The source reads 1000/s (100 ms/s busy) while 3000/s more
        // pile up: it is held back by the heavy vertex, busy all the
        // time at 1000/s.
        last.vertices[0].records_in = 10_000;
        last.vertices[0].busy_ms = 1_000;
        last.vertices[0].pending = 30_000;
        last.vertices[1].records_in = 10_000;
        last.vertices[1].busy_ms = 10_000;
        let r = recommend(&first, &last, range(1, 16), 0.7).unwrap();
        // 4000/s arrive; the heavy vertex does 1000/s per subtask:
        // ceil(4000 / 700) = 6.
        assert_eq!((r.vertex, r.wanted, r.parallelism), (1, 6, 6));
        assert!((r.input_rate - 4000.0).abs() < 1e-6, "{r:?}");
        let d = r.decision(5, 1, 0.7);
        assert!(d.reason.contains("scale up 1 -> 6"), "{}", d.reason);
        assert!(d.reason.contains("'heavy'"), "{}", d.reason);
    }

    #[test]
    fn samples_need_every_subtask_and_plans_need_uniform_parallelism() {
        // As JSON: the plan's types grow fields.
        let plan = |p0: usize, p1: usize| -> sluice_protocol::api::JobDescription {
            serde_json::from_value(serde_json::json!({
                "protocol": sluice_protocol::PROTOCOL_VERSION,
                "name": "job",
                "parallelism": 2,
                "max_parallelism": 128,
                "graph_nodes": 2,
                "checkpoint": null,
                "restart": {"kind": "none"},
                "vertices": [
                    {"id": 0, "name": "v0", "parallelism": p0, "source": true, "nodes": [[0, "n0"]]},
                    {"id": 1, "name": "v1", "parallelism": p1, "source": false, "nodes": [[1, "n1"]]},
                ],
            }))
            .unwrap()
        };
        let m = |vertex, subtask| SubtaskMetrics {
            vertex,
            subtask,
            busy_ms: 10,
            records_in: 5,
            ..SubtaskMetrics::default()
        };
        let uniform = plan(2, 2);
        let vertices = &uniform.vertices;
        assert!(Sample::of(1, vertices, &[m(0, 0), m(0, 1), m(1, 0)]).is_none());
        let s = Sample::of(1, vertices, &[m(0, 0), m(0, 1), m(1, 0), m(1, 1)]).unwrap();
        assert_eq!(s.vertices[1].busy_ms, 20);
        assert_eq!(s.vertices[0].records_in, 10);

        let at3 = plan_at(&uniform, 3).unwrap();
        assert_eq!(at3.parallelism, 3);
        assert!(at3.vertices.iter().all(|v| v.parallelism == 3));
        assert_eq!(at3.vertices[1].nodes, uniform.vertices[1].nodes);
        assert!(
            plan_at(&plan(2, 1), 3).is_none(),
            "a vertex of its own parallelism"
        );
    }
}
