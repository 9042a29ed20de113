//! A job on `process_keyed` with value, list and map state and per-second
//! namespaces gives the same output as a run without interruption when it
//! fails and restarts from a checkpoint, and when a checkpoint taken at
//! parallelism 2 is restored at 3 and at 1 — on the heap, in RocksDB, and
//! from one backend into the other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use sluice_engine::data::CheckpointId;
use sluice_engine::state::rocks::RocksConfig;
use sluice_engine::state::{OperatorSnapshot, RestoredState, StateBackend};
use sluice_engine::{
    CheckpointConfig, Env, OperatorContext, RestartStrategy, Sink, WatermarkStrategy,
};
use sluice_operators::prelude::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

const BATCHES: usize = 120;

/// 120 batches of 40 rows over 23 keys; values repeat per key; event time
/// grows 25 ms a row, so each key sees many one-second namespaces.
fn input() -> Vec<RecordBatch> {
    (0..BATCHES as i64)
        .map(|b| {
            let base = b * 40;
            let k = Int64Array::from_iter_values((0..40).map(|i| (base + i) * 7 % 23));
            let v = Int64Array::from_iter_values((0..40).map(|i| (base + i) * 13 % 9));
            let ts = Int64Array::from_iter_values((0..40).map(|i| (base + i) * 25));
            RecordBatch::try_new(schema(), vec![Arc::new(k), Arc::new(v), Arc::new(ts)]).unwrap()
        })
        .collect()
}

#[derive(Deserialize)]
struct Event {
    k: i64,
    v: i64,
    ts: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Out {
    k: i64,
    /// Rows of this key so far (1, 2, ...): with `k`, identifies the row.
    total: i64,
    v: i64,
    /// Distinct values of this key so far.
    distinct: i64,
    /// How often this key has seen `v`.
    times_v: i64,
    /// Sum of the key's last three values.
    recent: i64,
    /// Rows of this key in the current second.
    this_second: i64,
}

/// Adds the keyed-state job between `source` and the returned stream.
fn keyed_job(source: Stream) -> Stream {
    let total = ValueState::<i64>::new("total");
    let distinct = ValueState::<i64>::new("distinct");
    let counts = MapState::<i64, i64>::new("counts");
    let recent = ListState::<i64>::new("recent");
    let second = ValueState::<i64>::new("second");
    let per_second = ValueState::<i64>::new("per_second");
    let declared = [
        total.descriptor(),
        distinct.descriptor(),
        counts.descriptor(),
        recent.descriptor(),
        second.descriptor(),
        per_second.descriptor(),
    ];
    source
        .key_by(["k"])
        .process_keyed(declared, move |e: Event, st, out: &mut Vec<Out>| {
            let n = total.get(st)?.unwrap_or(0) + 1;
            total.set(st, &n)?;
            let times_v = counts.get(st, &e.v)?.unwrap_or(0) + 1;
            counts.put(st, &e.v, &times_v)?;
            let mut d = distinct.get(st)?.unwrap_or(0);
            if times_v == 1 {
                d += 1;
                distinct.set(st, &d)?;
            }
            let mut last = recent.get(st)?;
            last.push(e.v);
            if last.len() > 3 {
                last.remove(0);
            }
            recent.update(st, &last)?;
            // Per-second counts live in namespace 1 + second (namespace 0
            // holds the per-key state above); the previous second's
            // namespace is cleared when the key moves on.
            let sec = 1 + e.ts / 1000;
            match second.get(st)? {
                Some(prev) if prev != sec => {
                    st.set_namespace(prev);
                    st.clear_namespace()?;
                    st.set_namespace(0);
                    second.set(st, &sec)?;
                }
                None => second.set(st, &sec)?,
                Some(_) => {}
            }
            st.set_namespace(sec);
            let this_second = per_second.get(st)?.unwrap_or(0) + 1;
            per_second.set(st, &this_second)?;
            out.push(Out {
                k: e.k,
                total: n,
                v: e.v,
                distinct: d,
                times_v,
                recent: last.iter().sum(),
                this_second,
            });
            Ok(())
        })
}

/// Rows staged per checkpoint and published when it completes (what a
/// transactional sink does), so rows of a failed attempt never show.
#[derive(Default)]
struct Shared {
    /// (attempt, checkpoint, rows).
    staged: Vec<(u64, u64, Vec<RecordBatch>)>,
    published: Vec<RecordBatch>,
    commits: usize,
}

struct StagingSink {
    shared: Arc<Mutex<Shared>>,
    committed: Arc<AtomicBool>,
    pending: Vec<RecordBatch>,
}

impl StagingSink {
    fn publish_upto(&self, id: u64) {
        let mut s = self.shared.lock().unwrap();
        let (done, later): (Vec<_>, Vec<_>) = std::mem::take(&mut s.staged)
            .into_iter()
            .partition(|(_, c, _)| *c <= id);
        s.staged = later;
        for (_, _, b) in done {
            s.published.extend(b);
        }
    }
}

impl Sink for StagingSink {
    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> sluice_engine::Result<()> {
        self.pending.push(batch);
        Ok(())
    }

    fn snapshot(
        &mut self,
        id: CheckpointId,
        ctx: &OperatorContext,
    ) -> sluice_engine::Result<OperatorSnapshot> {
        let rows = std::mem::take(&mut self.pending);
        self.shared
            .lock()
            .unwrap()
            .staged
            .push((ctx.attempt, id.0, rows));
        Ok(OperatorSnapshot::default())
    }

    fn restore(
        &mut self,
        state: RestoredState,
        ctx: &OperatorContext,
    ) -> sluice_engine::Result<()> {
        // What the restored checkpoint staged is committed; what failed
        // attempts staged after it is discarded (this attempt's own stages,
        // from subtasks that started earlier, are kept).
        self.publish_upto(state.checkpoint.0);
        self.shared
            .lock()
            .unwrap()
            .staged
            .retain(|(attempt, _, _)| *attempt >= ctx.attempt);
        Ok(())
    }

    fn checkpoint_complete(
        &mut self,
        id: CheckpointId,
        _ctx: &OperatorContext,
    ) -> sluice_engine::Result<()> {
        self.publish_upto(id.0);
        self.shared.lock().unwrap().commits += 1;
        self.committed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Waits until a checkpoint has completed (`done`), for at most a minute.
/// Checkpoints whose barriers left the source before this call complete
/// while it blocks the source's task; the bound keeps a machine too slow to
/// have started one from hanging the test (it then fails on
/// `restored_from`, not by waiting forever).
fn wait_for(done: &AtomicBool) {
    let start = std::time::Instant::now();
    while !done.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

type Rows = BTreeMap<(i64, i64), Out>;

fn rows_of(batches: &[RecordBatch]) -> Rows {
    let mut out = Rows::new();
    for b in batches {
        let rows: Vec<Out> = serde_arrow::from_record_batch(b).unwrap();
        for r in rows {
            let prev = out.insert((r.k, r.total), r.clone());
            assert!(prev.is_none(), "row {r:?} emitted twice");
        }
    }
    out
}

fn rocks() -> StateBackend {
    StateBackend::RocksDb(RocksConfig {
        // Small enough that most keys' state lives only in RocksDB.
        cache_bytes: 16 << 10,
        block_cache_bytes: 1 << 20,
        write_buffer_bytes: 1 << 20,
    })
}

fn reference() -> Rows {
    let env = Env::new();
    env.set_parallelism(2);
    let out = keyed_job(env.from_batches("events", schema(), input())).collect();
    env.execute().unwrap();
    let r = rows_of(&out.batches());
    assert_eq!(r.len(), BATCHES * 40);
    r
}

/// Runs `job` over `input` at parallelism 2 with checkpoints, failing once
/// part-way (after a checkpoint completed, so the restart restores state);
/// returns what the staging sink published and the job's result.
fn run_failing_once(
    name: &str,
    backend: &StateBackend,
    input: Vec<RecordBatch>,
    job: fn(Stream) -> Stream,
) -> (Arc<Mutex<Shared>>, sluice_engine::JobResult) {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new();
    env.set_parallelism(2);
    env.configure(|c| {
        c.name = name.into();
        let mut ck = CheckpointConfig::new(dir.path());
        ck.interval = Duration::from_millis(5);
        c.checkpoint = Some(ck);
        c.restart = RestartStrategy::FixedDelay {
            attempts: 2,
            delay: Duration::from_millis(5),
        };
        c.state.backend = backend.clone();
    });
    let shared = Arc::new(Mutex::new(Shared::default()));
    let committed = Arc::new(AtomicBool::new(false));
    let (failed, seen) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (c, f) = (committed.clone(), failed.clone());
    // Paced so checkpoints are taken while it runs; fails once, at the
    // 30th batch, after waiting for a checkpoint to complete, so the
    // restart restores keyed state rather than starting empty.
    let events = env
        .from_batches("events", schema(), input)
        .map_batches(schema(), move |b| {
            std::thread::sleep(Duration::from_millis(2));
            let n = seen.fetch_add(1, Ordering::SeqCst);
            if n >= 30 && !f.load(Ordering::SeqCst) {
                wait_for(&c);
                if !f.swap(true, Ordering::SeqCst) {
                    panic!("injected failure at batch {n}");
                }
            }
            Ok(b)
        })
        // One subtask, as the source: each key's rows keep their order.
        .set_parallelism(1);
    let s = shared.clone();
    job(events).sink_fn("staging", move |_| {
        Ok(Box::new(StagingSink {
            shared: s.clone(),
            committed: committed.clone(),
            pending: Vec::new(),
        }))
    });
    let res = env.execute().unwrap();
    assert!(
        failed.load(Ordering::SeqCst),
        "{backend:?}: the failure was injected"
    );
    assert_eq!(res.checkpoints.restarts, 1, "{backend:?}");
    (shared, res)
}

#[test]
fn a_failed_job_restarts_from_its_checkpoint_with_identical_output() {
    let want = reference();
    for backend in [StateBackend::Memory, rocks()] {
        let (shared, res) = run_failing_once("keyed-state-failure", &backend, input(), keyed_job);
        assert!(res.checkpoints.restored_from.is_some(), "{backend:?}");
        let got = rows_of(&shared.lock().unwrap().published);
        assert_eq!(got.len(), want.len(), "{backend:?}");
        assert!(
            got == want,
            "{backend:?}: output differs from the run without failure"
        );
    }
}

/// The newest `chk-*` directory under `dir`.
fn newest_checkpoint(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("chk-"))
        .max()
        .expect("a completed checkpoint")
}

/// Runs the job at parallelism `p` over the first `upto` input batches (its
/// source then ends), or, restoring from `from`, over the rest.
fn run_part(
    p: usize,
    backend: &StateBackend,
    ck: &Path,
    from: Option<&Path>,
    upto: usize,
) -> (Vec<RecordBatch>, Option<u64>) {
    let env = Env::new();
    env.set_parallelism(p);
    env.configure(|c| {
        c.name = "keyed-state-rescale".into();
        let mut cfg = CheckpointConfig::new(ck);
        cfg.restore_from = from.map(|f| f.into());
        c.checkpoint = Some(cfg);
        c.state.backend = backend.clone();
    });
    let mut batches = input();
    batches.truncate(upto);
    let out = keyed_job(env.from_batches("events", schema(), batches)).collect();
    let res = env.execute().unwrap();
    (out.batches(), res.checkpoints.restored_from)
}

#[test]
fn a_checkpoint_at_parallelism_2_restores_at_3_and_1_on_either_backend() {
    let want = reference();
    let half = BATCHES / 2;
    for (a, b) in [
        (StateBackend::Memory, StateBackend::Memory),
        (rocks(), rocks()),
        (StateBackend::Memory, rocks()),
        (rocks(), StateBackend::Memory),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ck_a = dir.path().join("a");
        // The first half ends with a final checkpoint holding the source's
        // position and every key's state.
        let (first, restored) = run_part(2, &a, &ck_a, None, half);
        assert_eq!(restored, None);
        let first = rows_of(&first);
        assert_eq!(first.len(), half * 40);
        let chk = newest_checkpoint(&ck_a);
        for p in [3, 1] {
            let ck_b = dir.path().join(format!("b{p}"));
            let (rest, restored) = run_part(p, &b, &ck_b, Some(&chk), BATCHES);
            assert!(restored.is_some(), "{a:?} -> {b:?} at {p}: restored");
            let mut all = first.clone();
            for (k, r) in rows_of(&rest) {
                assert!(
                    all.insert(k, r).is_none(),
                    "a row of the first half came again"
                );
            }
            assert!(
                all == want,
                "{a:?} -> {b:?} at parallelism {p}: output differs from the uninterrupted run"
            );
        }
    }
}

#[test]
fn process_keyed_needs_a_keyed_stream() {
    let env = Env::new();
    let st = ValueState::<i64>::new("n");
    env.from_batches("events", schema(), input())
        .process_keyed([st.descriptor()], |e: Event, _st, out: &mut Vec<Out>| {
            out.push(Out {
                k: e.k,
                total: 0,
                v: e.v,
                distinct: 0,
                times_v: 0,
                recent: 0,
                this_second: 0,
            });
            Ok(())
        })
        .collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(err.contains("process_keyed needs a keyed stream"), "{err}");
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Session {
    k: i64,
    start: i64,
    end: i64,
    rows: i64,
}

const GAP: i64 = 300;

/// Bursts: 50 rows at a time over three keys, then other keys, so every
/// key's activity splits into sessions separated by more than `GAP`.
fn bursts() -> Vec<RecordBatch> {
    (0..BATCHES as i64)
        .map(|b| {
            let base = b * 40;
            let k = Int64Array::from_iter_values((0..40).map(|i| {
                let n = base + i;
                ((n / 50) * 7 + n % 3) % 23
            }));
            let v = Int64Array::from_iter_values(0..40);
            let ts = Int64Array::from_iter_values((0..40).map(|i| (base + i) * 25));
            RecordBatch::try_new(schema(), vec![Arc::new(k), Arc::new(v), Arc::new(ts)]).unwrap()
        })
        .collect()
}

/// Sessions per key, closed by an event-time timer `GAP` after the last
/// row, or by a row that comes more than `GAP` after it.
fn sessions(events: Stream) -> Stream {
    let key = ValueState::<i64>::new("key");
    let start = ValueState::<i64>::new("start");
    let last = ValueState::<i64>::new("last");
    let rows = ValueState::<i64>::new("rows");
    let states = [
        key.descriptor(),
        start.descriptor(),
        last.descriptor(),
        rows.descriptor(),
    ];
    let (k2, s2, l2, r2) = (key.clone(), start.clone(), last.clone(), rows.clone());
    events
        .watermarks(WatermarkStrategy::bounded_out_of_orderness(
            "ts",
            Duration::ZERO,
        ))
        // One subtask: a watermark operator at parallelism 2 would deal
        // batches round robin and let a key's rows overtake each other.
        .set_parallelism(1)
        .key_by(["k"])
        .process_keyed_with_timers(
            states,
            move |e: Event, st, out: &mut Vec<Session>| {
                k2.set(st, &e.k)?;
                // When the watermark arrives relative to rows differs
                // between runs (after a restore it starts again from
                // upstream), so a late row closes the session itself.
                if let (Some(s), Some(l)) = (s2.get(st)?, l2.get(st)?) {
                    if e.ts - l > GAP {
                        let rows = r2.get(st)?.unwrap_or(0);
                        out.push(Session {
                            k: e.k,
                            start: s,
                            end: l + GAP,
                            rows,
                        });
                        s2.clear(st)?;
                        r2.clear(st)?;
                    }
                }
                if s2.get(st)?.is_none() {
                    s2.set(st, &e.ts)?;
                }
                l2.set(st, &e.ts)?;
                r2.set(st, &(r2.get(st)?.unwrap_or(0) + 1))?;
                st.register_timer(e.ts + GAP)
            },
            move |t, st, out| {
                // Only the timer of the latest row closes the session.
                if last.get(st)? != Some(t - GAP) {
                    return Ok(());
                }
                out.push(Session {
                    k: key.get(st)?.unwrap_or(-1),
                    start: start.get(st)?.unwrap_or(-1),
                    end: t,
                    rows: rows.get(st)?.unwrap_or(0),
                });
                start.clear(st)?;
                last.clear(st)?;
                rows.clear(st)
            },
        )
}

fn session_set(batches: &[RecordBatch]) -> std::collections::BTreeSet<Session> {
    let mut out = std::collections::BTreeSet::new();
    for b in batches {
        let rows: Vec<Session> = serde_arrow::from_record_batch(b).unwrap();
        for r in rows {
            assert!(out.insert(r.clone()), "session {r:?} emitted twice");
        }
    }
    out
}

#[test]
fn timers_close_sessions_identically_after_a_failure() {
    let want = {
        let env = Env::new();
        env.set_parallelism(2);
        let out = sessions(env.from_batches("events", schema(), bursts())).collect();
        env.execute().unwrap();
        session_set(&out.batches())
    };
    assert!(want.len() > 50, "{} sessions", want.len());
    assert_eq!(
        want.iter().map(|s| s.rows).sum::<i64>(),
        (BATCHES * 40) as i64
    );
    for backend in [StateBackend::Memory, rocks()] {
        let (shared, res) = run_failing_once("keyed-timers-failure", &backend, bursts(), sessions);
        assert!(res.checkpoints.restored_from.is_some(), "{backend:?}");
        let got = session_set(&shared.lock().unwrap().published);
        assert!(
            got == want,
            "{backend:?}: sessions differ from the run without failure"
        );
    }
}
