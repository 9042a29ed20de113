//! Exactly-once end to end. Jobs fail at random (seeded) moments — a real
//! OS process started with the job's command line and killed with SIGKILL,
//! then started again with the same command; or a task panicking inside a
//! running job, which restarts itself from its latest checkpoint — and
//! every output, read back with the parquet crate's reader, must equal the
//! output of a run without failure: no row lost, none duplicated.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_connectors::nexmark::{NexmarkConfig, NexmarkSource};
use sluice_connectors::parquet::ParquetSink;
use sluice_engine::{CheckpointConfig, Env, RestartStrategy, WatermarkStrategy};
use sluice_operators::prelude::*;

mod common;
use common::{assert_exactly_once, hidden_files, rows, OutputWithin, S3Server, RUN_LIMIT};

const EVENTS: &str = "400000";

fn nexmark(
    query: &str,
    output: &Path,
    checkpoints: Option<&OsStr>,
    rate: Option<u64>,
    p: usize,
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nexmark"));
    c.args(["--query", query, "--events", EVENTS, "--parallelism"])
        .arg(p.to_string())
        .arg("--output")
        .arg(output)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(ck) = checkpoints {
        c.arg("--checkpoint-dir")
            .arg(ck)
            .args(["--checkpoint-interval", "100ms"]);
    }
    if let Some(r) = rate {
        c.args(["--rate", &r.to_string()]);
    }
    c
}

fn reference(dir: &Path, query: &str) -> BTreeMap<String, usize> {
    let out = dir.join(format!("reference-{query}"));
    let status = nexmark(query, &out, None, None, 2)
        .output_within(RUN_LIMIT)
        .status;
    assert!(status.success());
    let r = rows(&out);
    assert!(r.len() >= 10, "reference output is too small to test with");
    r
}

/// Runs the job with checkpoints, SIGKILLs it `kills` times at random
/// moments, then lets the same command finish.
fn killed_run(
    dir: &Path,
    query: &str,
    seed: u64,
    kills: usize,
    state: &str,
) -> (BTreeMap<String, usize>, PathBuf) {
    let ck = dir.join(format!("ck-{seed}"));
    let (rows, out, _) = killed_run_at(dir, query, seed, kills, state, ck.as_os_str(), |_| {});
    (rows, out)
}

/// [`killed_run`] checkpointing to location `ck`, each command adjusted by
/// `setup`; also returns what the final run printed.
fn killed_run_at(
    dir: &Path,
    query: &str,
    seed: u64,
    kills: usize,
    state: &str,
    ck: &OsStr,
    setup: impl Fn(&mut Command),
) -> (BTreeMap<String, usize>, PathBuf, String) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let out = dir.join(format!("out-{seed}"));
    // 200k events/s: a run takes about two seconds.
    let rate = Some(200_000);
    let command = || {
        let mut c = nexmark(query, &out, Some(ck), rate, 2);
        c.args(["--state", state]);
        setup(&mut c);
        c
    };
    for _ in 0..kills {
        let mut child = command().spawn().unwrap();
        let after = Duration::from_millis(rng.random_range(150..1600));
        let start = Instant::now();
        while start.elapsed() < after {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SIGKILL: no chance to clean up or flush.
        let _ = child.kill();
        let _ = child.wait();
    }
    let run = command().stdout(Stdio::piped()).output_within(RUN_LIMIT);
    assert!(run.status.success(), "seed {seed}: restarted job failed");
    let printed = String::from_utf8_lossy(&run.stdout).into_owned();
    (rows(&out), out, printed)
}

#[test]
fn sigkilled_process_resumes_with_exactly_once_output() {
    let dir = tempfile::tempdir().unwrap();
    // q5 checkpoints sliding-window and top state, q1 (a map) sends every
    // row through the sink, q11 checkpoints session windows, q8 a window join.
    let want: BTreeMap<&str, _> = ["q5", "q1", "q11", "q8"]
        .into_iter()
        .map(|q| (q, reference(dir.path(), q)))
        .collect();
    // 10 processes killed at random moments (seed 7's twice); q5's windows
    // keep their state in RocksDB for seeds 5 and 7; seeds 8 (q5) and 9
    // (q8's join) take unaligned checkpoints.
    for (seed, kills) in [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 1),
        (6, 1),
        (7, 2),
        (8, 1),
        (9, 1),
    ] {
        let query = match seed {
            4 => "q11",
            6 | 9 => "q8",
            s if s % 2 == 1 || s == 8 => "q5",
            _ => "q1",
        };
        let state = if seed >= 5 && query == "q5" {
            "rocksdb"
        } else {
            "memory"
        };
        let want = &want[query];
        let (got, out) = if seed >= 8 {
            let ck = dir.path().join(format!("ck-{seed}"));
            let (got, out, _) =
                killed_run_at(dir.path(), query, seed, kills, state, ck.as_os_str(), |c| {
                    c.arg("--unaligned-checkpoints");
                });
            (got, out)
        } else {
            killed_run(dir.path(), query, seed, kills, state)
        };
        assert_exactly_once(want, &got, &out, &format!("seed {seed}"));
    }
}

/// The q5-like pipeline of these tests on `env`: bids (at `rate` events/s),
/// `map` on every batch, sliding counts per auction into `sink`.
fn q5_like(
    env: &Env,
    rate: u64,
    map: impl Fn(&arrow::array::RecordBatch) + Send + Sync + 'static,
    sink: ParquetSink,
) {
    q5_like_slowed(env, rate, map, None, sink)
}

/// [`q5_like`], with `slow`: the bids rebalanced to a stage that sleeps
/// that long per batch, so the queues into it fill (backpressure) and
/// unaligned checkpoints store records in flight.
fn q5_like_slowed(
    env: &Env,
    rate: u64,
    map: impl Fn(&arrow::array::RecordBatch) + Send + Sync + 'static,
    slow: Option<Duration>,
    sink: ParquetSink,
) {
    let cfg = NexmarkConfig {
        events: 300_000,
        rate_limit: Some(rate),
        ..Default::default()
    };
    let bids = env.source(NexmarkSource::bids(cfg.clone())).watermarks(
        WatermarkStrategy::bounded_out_of_orderness(
            "date_time",
            Duration::from_millis(cfg.max_out_of_orderness_ms as u64),
        ),
    );
    let schema = bids.schema().clone();
    let bids = bids.map_batches(schema.clone(), move |b| {
        map(&b);
        Ok(b)
    });
    let mut bids = bids.watermarks(WatermarkStrategy::bounded_out_of_orderness(
        "date_time",
        Duration::from_millis(cfg.max_out_of_orderness_ms as u64),
    ));
    if let Some(pause) = slow {
        // After the watermarks are assigned: the slow stage's subtasks see
        // both sources' records interleaved, and forward their watermarks.
        bids = bids
            .rebalance()
            .map_batches(schema, move |b| {
                std::thread::sleep(pause);
                Ok(b)
            })
            .with_event_time(Some("date_time".into()));
    }
    bids.key_by(["auction"])
        .window(WindowSpec::sliding(
            Duration::from_secs(10),
            Duration::from_secs(2),
        ))
        .aggregate([count(), max("price"), sum("price")])
        .sink(sink);
}

/// A q5-like pipeline (sliding count per auction, hottest per window) whose
/// map panics once, after `fail_after` records, in the first attempt.
fn in_process_job(
    out: &Path,
    ck: Option<&Path>,
    fail_after: Option<u64>,
    p: usize,
) -> sluice_engine::JobResult {
    in_process_job_with(out, ck, fail_after, p, false)
}

/// [`in_process_job`]; `unaligned`: unaligned checkpoints, and a slow
/// stage after a rebalance that backpressures the source.
fn in_process_job_with(
    out: &Path,
    ck: Option<&Path>,
    fail_after: Option<u64>,
    p: usize,
    unaligned: bool,
) -> sluice_engine::JobResult {
    let env = Env::new();
    env.set_parallelism(p);
    env.configure(|c| {
        c.name = "exactly-once-test".into();
        if let Some(ck) = ck {
            let mut cfg = CheckpointConfig::new(ck);
            cfg.interval = Duration::from_millis(20);
            cfg.unaligned = unaligned;
            c.checkpoint = Some(cfg);
            c.restart = RestartStrategy::FixedDelay {
                attempts: 3,
                delay: Duration::from_millis(10),
            };
        }
    });
    let seen = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let inject = move |b: &arrow::array::RecordBatch| {
        let n = seen.fetch_add(b.num_rows() as u64, Ordering::SeqCst);
        if let Some(k) = fail_after {
            if n >= k && !failed.swap(true, Ordering::SeqCst) {
                panic!("injected failure after {n} records");
            }
        }
    };
    let slow = unaligned.then_some(Duration::from_millis(2));
    q5_like_slowed(&env, 1_000_000, inject, slow, ParquetSink::new(out));
    env.execute().unwrap()
}

#[test]
fn task_failures_restart_from_the_latest_checkpoint_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("reference");
    in_process_job(&r, None, None, 2);
    let want = rows(&r);
    assert!(want.len() > 1000);
    let mut rng = SmallRng::seed_from_u64(99);
    // 12 failure points spread over the run (bids are ~92% of 300k events).
    for i in 0..12u64 {
        let k = rng.random_range(1_000..270_000);
        let out = dir.path().join(format!("out-{i}"));
        let ck = dir.path().join(format!("ck-{i}"));
        let res = in_process_job(&out, Some(&ck), Some(k), 2);
        assert_eq!(
            res.checkpoints.restarts, 1,
            "failure point {k}: no restart happened"
        );
        assert_eq!(rows(&out), want, "failure point {k}: output differs");
        assert!(hidden_files(&out).is_empty());
    }
}

/// Unaligned checkpoints of a backpressured job: tasks snapshot at once
/// and store the records queued between them; a failure restarts from such
/// a checkpoint (its in-flight records replayed before new input) and the
/// output is exactly that of a run without checkpoints or failures.
#[test]
fn unaligned_checkpoints_restart_exactly_once_with_records_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("reference");
    in_process_job_with(&r, None, None, 2, true);
    let want = rows(&r);
    assert!(want.len() > 1000);
    let mut rng = SmallRng::seed_from_u64(7);
    let mut restored_in_flight = 0;
    for i in 0..6u64 {
        let k = rng.random_range(20_000..250_000);
        let out = dir.path().join(format!("out-{i}"));
        let ck = dir.path().join(format!("ck-{i}"));
        let res = in_process_job_with(&out, Some(&ck), Some(k), 2, true);
        assert_eq!(res.checkpoints.restarts, 1, "failure point {k}: no restart");
        let got = rows(&out);
        assert_exactly_once(&want, &got, &out, &format!("failure point {k}"));
        let from = res.checkpoints.restored_from;
        let held = res
            .checkpoints
            .recent
            .iter()
            .find(|c| Some(c.id) == from)
            .map_or(0, |c| c.figures.in_flight_bytes);
        if held > 0 {
            restored_in_flight += 1;
        }
    }
    // The slow stage keeps its input queues full: restarts come from
    // checkpoints that hold records in flight, which were replayed.
    assert!(
        restored_in_flight > 0,
        "no restart came from a checkpoint with records in flight"
    );
}

/// An unaligned checkpoint restores only at the parallelism it was taken
/// at: a restart at another parallelism is refused with the reason, before
/// anything is written, and the same command at the old parallelism then
/// finishes exactly once.
#[test]
fn an_unaligned_checkpoint_is_not_restored_at_another_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path(), "q5");
    let out = dir.path().join("out");
    let ck = dir.path().join("ck");
    let command = |p: usize| {
        let mut c = nexmark("q5", &out, Some(ck.as_os_str()), Some(200_000), p);
        c.arg("--unaligned-checkpoints");
        c
    };
    let mut child = command(2).spawn().unwrap();
    let start = Instant::now();
    while newest_checkpoint(&ck).is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let refused = command(3).stderr(Stdio::piped()).output_within(RUN_LIMIT);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("unaligned checkpoint")
            && err.contains("parallelism 2")
            && err.contains("savepoint"),
        "{err}"
    );
    let done = command(2).output_within(RUN_LIMIT);
    assert!(done.status.success());
    assert_exactly_once(
        &want,
        &rows(&out),
        &out,
        "unaligned, resumed at parallelism 2",
    );
}

/// The newest completed checkpoint of `ck`.
fn newest_checkpoint(ck: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(ck)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("_manifest.json").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

#[test]
fn corrupted_newest_checkpoint_falls_back_without_wrong_output() {
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path(), "q1");
    let out = dir.path().join("out");
    let ck = dir.path().join("ck");
    let mut child = nexmark("q1", &out, Some(ck.as_os_str()), Some(200_000), 2)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let _ = child.kill();
    let _ = child.wait();
    let newest = newest_checkpoint(&ck).expect("checkpoints completed before the kill");
    // Flip a byte in the middle of one of its state files.
    let victim = std::fs::read_dir(&newest)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "entries"))
        .expect("a state file");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&victim, bytes).unwrap();

    let run = nexmark("q1", &out, Some(ck.as_os_str()), Some(200_000), 2)
        .stderr(Stdio::piped())
        .output_within(RUN_LIMIT);
    assert!(run.status.success());
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(
        log.contains("not restorable") && log.contains("checksum"),
        "the fallback is logged: {log}"
    );
    assert_eq!(rows(&out), want, "output after falling back");
    assert!(hidden_files(&out).is_empty());
}

#[test]
fn checkpoints_in_an_s3_bucket_survive_sigkill() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path(), "q5");
    // Windows in RocksDB: SST files go to the bucket's shared/ prefix.
    let (got, out, printed) = killed_run_at(
        dir.path(),
        "q5",
        11,
        2,
        "rocksdb",
        OsStr::new(&s3.url("checkpoints/q5")),
        |c| s3.configure(c),
    );
    assert_eq!(got, want, "output after two kills, checkpoints in S3");
    assert!(hidden_files(&out).is_empty());
    assert!(
        printed.contains("restored_from=") && !printed.contains("restored_from=-"),
        "the last run resumed from a checkpoint in the bucket: {printed}"
    );
    let keys = s3.list("checkpoints/q5/");
    assert!(
        keys.iter().any(|k| k.ends_with("_manifest.json")),
        "manifests in the bucket: {keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.contains("/shared/") && k.ends_with(".sst")),
        "shared SST files in the bucket: {keys:?}"
    );
}

/// A savepoint commits the sinks' output like a checkpoint does, so a
/// failure after it must resume from it (not from an older checkpoint, or
/// from nothing), or the output since would be written twice.
#[test]
fn a_failure_after_a_savepoint_resumes_from_the_savepoint_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    in_process_job(&reference, None, None, 2);
    let want = rows(&reference);

    let out = dir.path().join("out");
    let ck = dir.path().join("ck");
    let savepoint = dir.path().join("savepoint");
    let env = Env::new();
    env.set_parallelism(2);
    env.configure(|c| {
        c.name = "savepoint-then-failure".into();
        // No periodic checkpoint before the failure: only the savepoint.
        let mut cfg = CheckpointConfig::new(&ck);
        cfg.interval = Duration::from_secs(3600);
        c.checkpoint = Some(cfg);
        c.restart = RestartStrategy::FixedDelay {
            attempts: 3,
            delay: Duration::from_millis(10),
        };
    });
    let fail = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let (fail_now, once) = (fail.clone(), failed.clone());
    let inject = move |_: &arrow::array::RecordBatch| {
        if fail_now.load(Ordering::SeqCst) && !once.swap(true, Ordering::SeqCst) {
            panic!("injected failure after the savepoint");
        }
    };
    // Slower than the reference (same events): savepoints come and go
    // well before the input ends, even on a loaded machine.
    // Files finished at every checkpoint, so the savepoint's commit is
    // visible the moment it completes (the test waits for that).
    q5_like(
        &env,
        100_000,
        inject,
        ParquetSink::new(&out).roll_at_checkpoints(),
    );
    let job = env.start().unwrap();
    // Savepoints until one has committed output (windows fire as event
    // time passes; sinks commit a savepoint's files as it completes).
    let mut taken = None;
    for n in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let location = job.savepoint(savepoint.join(n.to_string())).unwrap();
        let deadline = Instant::now() + Duration::from_millis(300);
        while rows(&out).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !job.is_finished(),
            "the input ended before a savepoint committed output"
        );
        if !rows(&out).is_empty() {
            taken = Some(location);
            break;
        }
    }
    let taken = taken.expect("a savepoint committed output");
    // Then a failure, before any checkpoint.
    fail.store(true, Ordering::SeqCst);
    let res = job.join().unwrap();
    assert!(failed.load(Ordering::SeqCst), "the failure happened");
    assert_eq!(res.checkpoints.restarts, 1);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(taken.as_str()).join("_manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        res.checkpoints.restored_from,
        manifest["id"].as_u64(),
        "the restart resumed from the savepoint"
    );
    assert_eq!(rows(&out), want, "output after a savepoint and a failure");
}
