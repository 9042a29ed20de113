//! The embedded runtime driven through the public DSL primitives: edge
//! kinds at several parallelisms, failure propagation, backpressure,
//! watermark idleness and emission interval, plan errors, source close.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{AsArray, Int64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_engine::graph::OperatorFactory;
use sluice_engine::{
    Collector, EdgeKind, Env, Error, Operator, OperatorContext, Result, Sink, Source, SourcePoll,
    Watermark, WatermarkStrategy,
};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

fn batch(keys: Vec<i64>, ts: Vec<i64>) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(keys)),
            Arc::new(Int64Array::from(ts)),
        ],
    )
    .unwrap()
}

/// Emits `batches` (split, batch) in order, sleeping `pause` between polls.
struct VecSource {
    batches: Vec<(usize, RecordBatch)>,
    splits: usize,
    pause: Duration,
    produced: Option<Arc<AtomicU64>>,
}

impl Source for VecSource {
    fn splits(&self) -> usize {
        self.splits
    }
    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        std::thread::sleep(self.pause);
        if self.batches.is_empty() {
            return Ok(SourcePoll::End);
        }
        let (split, batch) = self.batches.remove(0);
        if let Some(p) = &self.produced {
            p.fetch_add(1, Ordering::SeqCst);
        }
        Ok(SourcePoll::Batch { split, batch })
    }
}

/// Each source subtask emits keys `0..n` offset by subtask, 10 batches.
fn numbers(env: &Env, per_subtask: i64) -> sluice_engine::Stream {
    env.source_fn("numbers", schema(), move |ctx| {
        let base = ctx.subtask as i64 * 1_000_000;
        let batches = (0..10)
            .map(|b| {
                let keys: Vec<i64> = (0..per_subtask)
                    .map(|i| base + b * per_subtask + i)
                    .collect();
                let ts = keys.clone();
                (0, batch(keys, ts))
            })
            .collect();
        Ok(Box::new(VecSource {
            batches,
            splits: 1,
            pause: Duration::ZERO,
            produced: None,
        }))
    })
}

struct Pass;
impl Operator for Pass {
    fn process(
        &mut self,
        _i: usize,
        b: RecordBatch,
        _c: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        out.emit(b);
        Ok(())
    }
}

fn keys_of(rows: &[RecordBatch]) -> Vec<i64> {
    let mut v: Vec<i64> = rows
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    v.sort();
    v
}

#[test]
fn every_edge_kind_delivers_each_record_once() {
    for p in [1, 4] {
        for kind in [
            EdgeKind::Forward,
            EdgeKind::Hash(vec![0]),
            EdgeKind::Rebalance,
            EdgeKind::LoadAware,
        ] {
            let env = Env::new();
            env.set_parallelism(p);
            let out = numbers(&env, 100)
                .partition(kind.clone())
                .transform("pass", schema(), |_| Ok(Box::new(Pass)))
                .set_parallelism(3)
                .collect();
            env.execute().unwrap();
            let got = keys_of(&out.batches());
            let mut want: Vec<i64> = (0..p as i64)
                .flat_map(|s| (0..1000).map(move |i| s * 1_000_000 + i))
                .collect();
            want.sort();
            assert_eq!(got, want, "kind {kind:?} at parallelism {p}");
        }
    }
}

#[test]
fn broadcast_sends_every_record_to_every_subtask() {
    let env = Env::new();
    env.set_parallelism(1);
    let out = numbers(&env, 10)
        .partition(EdgeKind::Broadcast)
        .transform("pass", schema(), |_| Ok(Box::new(Pass)))
        .set_parallelism(3)
        .collect();
    env.execute().unwrap();
    assert_eq!(out.num_rows(), 300);
}

struct Endless(i64);
impl Source for Endless {
    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        self.0 += 1;
        Ok(SourcePoll::Batch {
            split: 0,
            batch: batch(vec![self.0], vec![self.0]),
        })
    }
}

struct Fail {
    panic: bool,
}
impl Operator for Fail {
    fn process(
        &mut self,
        _i: usize,
        b: RecordBatch,
        ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        if ctx.subtask == 1 {
            if self.panic {
                panic!("boom in user code");
            }
            return Err(Error::User("bad record".into()));
        }
        out.emit(b);
        Ok(())
    }
}

#[test]
fn a_failing_or_panicking_subtask_fails_the_job_with_its_error() {
    for panic in [false, true] {
        let env = Env::new();
        env.set_parallelism(3);
        // An endless source: the job can only end through the failure.
        let endless = env.source_fn("endless", schema(), |_| Ok(Box::new(Endless(0))));
        endless
            .partition(EdgeKind::Rebalance)
            .transform("fail", schema(), move |_| Ok(Box::new(Fail { panic })))
            .collect();
        let err = env.execute().unwrap_err().to_string();
        let want = if panic {
            "boom in user code"
        } else {
            "bad record"
        };
        assert!(err.contains(want), "{err}");
        assert!(err.contains("fail"), "error names the operator: {err}");
    }
}

struct SlowSink {
    produced: Arc<AtomicU64>,
    consumed: u64,
    max_gap: Arc<AtomicU64>,
}
impl Sink for SlowSink {
    fn write(&mut self, _b: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        std::thread::sleep(Duration::from_millis(2));
        self.consumed += 1;
        let gap = self.produced.load(Ordering::SeqCst) - self.consumed;
        self.max_gap.fetch_max(gap, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn a_slow_sink_slows_the_source_and_memory_stays_bounded() {
    let produced = Arc::new(AtomicU64::new(0));
    let max_gap = Arc::new(AtomicU64::new(0));
    let env = Env::new();
    env.set_parallelism(1);
    env.configure(|c| c.channel_capacity = 4);
    let p = produced.clone();
    let s = env.source_fn("fast", schema(), move |_| {
        let batches = (0..300).map(|i| (0, batch(vec![i], vec![i]))).collect();
        Ok(Box::new(VecSource {
            batches,
            splits: 1,
            pause: Duration::ZERO,
            produced: Some(p.clone()),
        }))
    });
    let (p2, g2) = (produced.clone(), max_gap.clone());
    // Two exchanges between source and sink: two channels of 4 can hold 8
    // batches, plus one in each task's hands.
    s.partition(EdgeKind::Rebalance)
        .transform("pass", schema(), |_| Ok(Box::new(Pass)))
        .partition(EdgeKind::Rebalance)
        .sink_fn("slow", move |_| {
            Ok(Box::new(SlowSink {
                produced: p2.clone(),
                consumed: 0,
                max_gap: g2.clone(),
            }))
        });
    env.execute().unwrap();
    assert_eq!(produced.load(Ordering::SeqCst), 300);
    let gap = max_gap.load(Ordering::SeqCst);
    assert!(gap <= 12, "source ran {gap} batches ahead of a slow sink");
}

/// Records the last event-time watermark it saw before the end of input.
struct WatermarkProbe(Arc<AtomicI64>);
impl Operator for WatermarkProbe {
    fn process(
        &mut self,
        _i: usize,
        b: RecordBatch,
        _c: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        out.emit(b);
        Ok(())
    }
    fn on_watermark(
        &mut self,
        wm: Watermark,
        _c: &OperatorContext,
        _o: &mut Collector,
    ) -> Result<Option<Watermark>> {
        if let Watermark::EventTime(t) = wm {
            if t != i64::MAX {
                self.0.fetch_max(t, Ordering::SeqCst);
            }
        }
        Ok(Some(wm))
    }
}

fn run_two_splits(idle: Option<Duration>) -> i64 {
    let seen = Arc::new(AtomicI64::new(i64::MIN));
    let env = Env::new();
    env.set_parallelism(1);
    // Split 0 advances; split 1 speaks once at time 0 and then stays silent.
    let s = env.source_fn("splits", schema(), |_| {
        let mut batches = vec![(1, batch(vec![0], vec![0]))];
        batches.extend((1..40).map(|i| (0, batch(vec![i], vec![i * 1000]))));
        Ok(Box::new(VecSource {
            batches,
            splits: 2,
            pause: Duration::from_millis(5),
            produced: None,
        }))
    });
    let mut strategy =
        WatermarkStrategy::bounded_out_of_orderness("ts", Duration::from_millis(100));
    if let Some(t) = idle {
        strategy = strategy.idle_after(t);
    }
    let seen2 = seen.clone();
    s.assign_watermarks(strategy)
        .partition(EdgeKind::Rebalance)
        .transform("probe", schema(), move |_| {
            Ok(Box::new(WatermarkProbe(seen2.clone())))
        })
        .collect();
    env.execute().unwrap();
    seen.load(Ordering::SeqCst)
}

#[test]
fn an_idle_split_holds_time_back_until_declared_idle() {
    // Without idleness the silent split pins the watermark at 0 - 100 - 1.
    assert_eq!(run_two_splits(None), -101);
    // With it, time follows the active split.
    assert_eq!(
        run_two_splits(Some(Duration::from_millis(30))),
        39_000 - 101
    );
}

#[test]
fn plan_errors_name_the_operator_and_column() {
    let env = Env::new();
    numbers(&env, 1).keyed_by(&["nope"]).collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(
        err.contains("key_by after 'numbers'") && err.contains("'nope'"),
        "{err}"
    );

    let env = Env::new();
    numbers(&env, 1).assign_watermarks(WatermarkStrategy::ascending("k2"));
    let err = env.execute().unwrap_err().to_string();
    assert!(err.contains("unknown event-time column 'k2'"), "{err}");

    let env = Env::new();
    numbers(&env, 1).transform("dangling", schema(), |_| Ok(Box::new(Pass)));
    let err = env.execute().unwrap_err().to_string();
    assert!(err.contains("'dangling'") && err.contains("sink"), "{err}");
}

#[test]
fn chained_operators_share_a_task() {
    let env = Env::new();
    env.set_parallelism(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let f: OperatorFactory = Arc::new(move |ctx| {
        s2.lock()
            .unwrap()
            .push(std::thread::current().name().unwrap_or("").to_string() + &ctx.operator);
        Ok(Box::new(Pass))
    });
    numbers(&env, 5)
        .transform_multi("a", &[], vec![schema()], f)
        .collect();
    let r = env.execute().unwrap();
    assert_eq!(r.plan.vertices.len(), 1, "{}", r.plan.describe());
    assert_eq!(r.node("a").unwrap().records_in, 100);
}

/// A source that counts `close` calls; `fail_open` makes `open` fail,
/// `endless` never ends.
struct Closing {
    inner: Box<dyn Source>,
    fail_open: bool,
    closed: Arc<AtomicU64>,
}
impl Source for Closing {
    fn open(&mut self, _ctx: &OperatorContext) -> Result<()> {
        if self.fail_open {
            return Err(Error::Connector {
                connector: "closing".into(),
                message: "cannot connect".into(),
            });
        }
        Ok(())
    }
    fn poll(&mut self, ctx: &OperatorContext) -> Result<SourcePoll> {
        self.inner.poll(ctx)
    }
    fn close(&mut self, _ctx: &OperatorContext) -> Result<()> {
        self.closed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn a_source_is_closed_once_however_its_task_ends() {
    #[derive(Debug, Clone, Copy)]
    enum End {
        Clean,
        DownstreamFails,
        DownstreamPanics,
        OpenFails,
    }
    for end in [
        End::Clean,
        End::DownstreamFails,
        End::DownstreamPanics,
        End::OpenFails,
    ] {
        let closed = Arc::new(AtomicU64::new(0));
        let env = Env::new();
        env.set_parallelism(3);
        let c = closed.clone();
        let s = env.source_fn("closing", schema(), move |_| {
            let inner: Box<dyn Source> = match end {
                End::Clean => Box::new(VecSource {
                    batches: vec![(0, batch(vec![1], vec![1]))],
                    splits: 1,
                    pause: Duration::ZERO,
                    produced: None,
                }),
                _ => Box::new(Endless(0)),
            };
            Ok(Box::new(Closing {
                inner,
                fail_open: matches!(end, End::OpenFails),
                closed: c.clone(),
            }))
        });
        let s = s.partition(EdgeKind::Rebalance);
        match end {
            End::DownstreamFails | End::DownstreamPanics => {
                let panic = matches!(end, End::DownstreamPanics);
                s.transform("fail", schema(), move |_| Ok(Box::new(Fail { panic })))
                    .collect();
            }
            _ => {
                s.collect();
            }
        }
        let result = env.execute();
        assert_eq!(result.is_ok(), matches!(end, End::Clean), "{end:?}");
        assert_eq!(
            closed.load(Ordering::SeqCst),
            3,
            "{end:?}: one close per subtask"
        );
    }
}

/// Counts the event-time watermarks it sees (not the final one).
struct WatermarkCount(Arc<AtomicU64>);
impl Operator for WatermarkCount {
    fn process(
        &mut self,
        _i: usize,
        b: RecordBatch,
        _c: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        out.emit(b);
        Ok(())
    }
    fn on_watermark(
        &mut self,
        wm: Watermark,
        _c: &OperatorContext,
        _o: &mut Collector,
    ) -> Result<Option<Watermark>> {
        if matches!(wm, Watermark::EventTime(t) if t != i64::MAX) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Some(wm))
    }
}

fn watermarks_seen(strategy: WatermarkStrategy) -> u64 {
    let seen = Arc::new(AtomicU64::new(0));
    let env = Env::new();
    env.set_parallelism(1);
    let s = env.source_fn("ticks", schema(), |_| {
        let batches = (1..=20)
            .map(|i| (0, batch(vec![i], vec![i * 1000])))
            .collect();
        Ok(Box::new(VecSource {
            batches,
            splits: 1,
            pause: Duration::ZERO,
            produced: None,
        }))
    });
    let seen2 = seen.clone();
    s.assign_watermarks(strategy)
        .partition(EdgeKind::Rebalance)
        .transform("count", schema(), move |_| {
            Ok(Box::new(WatermarkCount(seen2.clone())))
        })
        .collect();
    env.execute().unwrap();
    seen.load(Ordering::SeqCst)
}

#[test]
fn an_emission_interval_thins_out_watermarks() {
    let every_batch = WatermarkStrategy::ascending("ts");
    assert_eq!(watermarks_seen(every_batch.clone()), 20);
    // Within an hour only the first goes out; the end of input closes time.
    assert_eq!(
        watermarks_seen(every_batch.emit_every(Duration::from_secs(3600))),
        1
    );
}
