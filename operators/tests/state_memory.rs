//! State larger than the memory a process may use: an unbounded join and
//! a session window whose state is several times what an address-space
//! limit (`prlimit --as`, RLIMIT_AS, on a child process) leaves for it run
//! to completion on RocksDB, with the right result, and fail on the heap
//! backend under the same limit.
//!
//! The test binary runs each job in a child process of itself (the test
//! function, with `SLUICE_MEMORY_JOB` set, is the child). The limit is the
//! child's peak address space on a small run of the same job on RocksDB
//! plus a fixed headroom; the heap run's state alone (measured without a
//! limit) must be several times that headroom, so the heap backend cannot
//! fit however the allocator behaves.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use sluice_engine::operator::{OperatorContext, Sink, Source, SourcePoll};
use sluice_engine::state::rocks::RocksConfig;
use sluice_engine::state::StateBackend;
use sluice_engine::{Env, Result, Stream, WatermarkStrategy};
use sluice_operators::prelude::*;

const JOB_ENV: &str = "SLUICE_MEMORY_JOB";
const STATE_ENV: &str = "SLUICE_MEMORY_STATE";
const ROWS_ENV: &str = "SLUICE_MEMORY_ROWS";
const DIR_ENV: &str = "SLUICE_MEMORY_DIR";

/// Address space the limit leaves above the small RocksDB run's peak.
const HEADROOM: u64 = 128 << 20;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("payload", DataType::Utf8, false),
    ]))
}

/// The key of row `i`.
#[derive(Clone, Copy)]
enum Key {
    Times(u64),
    Modulo(u64),
}

impl Key {
    fn of(self, i: u64) -> i64 {
        match self {
            Key::Times(n) => (i * n) as i64,
            Key::Modulo(n) => (i % n) as i64,
        }
    }
}

/// Rows `k = key(i)`, `ts = i / 1000` ms, a 100-byte payload, generated a
/// batch at a time (nothing of the input is held in memory).
struct Generator {
    next: u64,
    end: u64,
    key: Key,
}

impl Source for Generator {
    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        if self.next >= self.end {
            return Ok(SourcePoll::End);
        }
        let to = (self.next + 4096).min(self.end);
        let ids = self.next..to;
        self.next = to;
        let key = self.key;
        let k = Int64Array::from_iter_values(ids.clone().map(|i| key.of(i)));
        let ts = Int64Array::from_iter_values(ids.clone().map(|i| (i / 1000) as i64));
        let payload = StringArray::from_iter_values(ids.map(|i| format!("{i:0>100}")));
        Ok(SourcePoll::Batch {
            split: 0,
            batch: RecordBatch::try_new(
                schema(),
                vec![Arc::new(k), Arc::new(ts), Arc::new(payload)],
            )?,
        })
    }
}

/// Counts rows and sums a column (the result without keeping it).
struct Tally {
    rows: Arc<AtomicU64>,
    sum: Arc<AtomicU64>,
    column: Option<usize>,
}

impl Sink for Tally {
    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        self.rows
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        if let Some(c) = self.column {
            let s: i64 = batch
                .column(c)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .sum();
            self.sum.fetch_add(s as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn source(env: &Env, name: &str, rows: u64, key: Key) -> Stream {
    env.source_fn(name, schema(), move |_| {
        Ok(Box::new(Generator {
            next: 0,
            end: rows,
            key,
        }))
    })
}

/// Runs a job in this (child) process; prints `RESULT rows=.. sum=..
/// vmpeak_kb=..`.
fn child(job: &str) {
    let rows: u64 = std::env::var(ROWS_ENV).unwrap().parse().unwrap();
    let dir = std::path::PathBuf::from(std::env::var(DIR_ENV).unwrap());
    let env = Env::new();
    env.set_parallelism(1);
    env.configure(|c| {
        c.state.local_dir = dir.clone();
        if std::env::var(STATE_ENV).unwrap() == "rocksdb" {
            c.state.backend = StateBackend::RocksDb(RocksConfig {
                cache_bytes: 8 << 20,
                block_cache_bytes: 4 << 20,
                write_buffer_bytes: 8 << 20,
            });
        }
    });
    let (n, sum) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (n2, sum2) = (n.clone(), sum.clone());
    let out = match job {
        // Every left row is kept; one in a hundred has a right partner.
        "join" => {
            let left = source(&env, "left", rows, Key::Times(1));
            let right = source(&env, "right", rows / 100, Key::Times(100));
            left.join(right, &["k"], &["k"])
        }
        // Two records per key, an hour's gap: every session stays open
        // until the input ends.
        "session" => source(&env, "events", 2 * rows, Key::Modulo(rows))
            .watermarks(WatermarkStrategy::bounded_out_of_orderness(
                "ts",
                Duration::ZERO,
            ))
            .key_by(["k"])
            .window(WindowSpec::session(Duration::from_secs(3600)))
            .aggregate([count()]),
        other => panic!("unknown job {other}"),
    };
    let column = (job == "session").then_some(3);
    out.sink_fn("tally", move |_| {
        Ok(Box::new(Tally {
            rows: n2.clone(),
            sum: sum2.clone(),
            column,
        }))
    });
    if let Err(e) = env.execute() {
        eprintln!("job failed: {e}");
        std::process::exit(2);
    }
    println!(
        "RESULT rows={} sum={} vmpeak_kb={}",
        n.load(Ordering::Relaxed),
        sum.load(Ordering::Relaxed),
        vm_peak_kb()
    );
}

fn vm_peak_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmPeak:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The outcome of a child run: its result line, or `None` if it failed.
struct Outcome {
    rows: u64,
    sum: u64,
    vm_peak: u64,
}

fn run_child(test: &str, job: &str, state: &str, rows: u64, limit: Option<u64>) -> Option<Outcome> {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = match limit {
        Some(bytes) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--as={bytes}")).arg("--").arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let out = cmd
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(JOB_ENV, job)
        .env(STATE_ENV, state)
        .env(ROWS_ENV, rows.to_string())
        .env(DIR_ENV, dir.path())
        // One malloc arena: per-thread arenas reserve 64 MiB of address
        // space each and would make the limit measure threads, not state.
        .env("MALLOC_ARENA_MAX", "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running the child (is prlimit from util-linux installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The harness prints "test <name> ... " before the child's own line.
    let line = stdout
        .lines()
        .find_map(|l| l.find("RESULT ").map(|at| &l[at..]));
    match (out.status.success(), line) {
        (true, Some(line)) => {
            let field = |name: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            Some(Outcome {
                rows: field("rows"),
                sum: field("sum"),
                vm_peak: field("vmpeak_kb") << 10,
            })
        }
        _ => {
            eprintln!(
                "{job} on {state} ({rows} rows, limit {limit:?}) failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            None
        }
    }
}

/// The parent side: calibrate, then the full job on both backends under
/// the limit.
fn larger_than_memory(test: &str, job: &str, rows: u64, check: impl Fn(&Outcome)) {
    let small = run_child(test, job, "rocksdb", rows / 20, None).expect("small RocksDB run");
    check_scaled(&small, job, rows / 20);
    let limit = small.vm_peak + HEADROOM;
    let heap = run_child(test, job, "memory", rows, None).expect("unlimited heap run");
    check(&heap);
    let state = heap.vm_peak.saturating_sub(small.vm_peak);
    assert!(
        state >= 3 * HEADROOM,
        "the heap run's state ({} MiB) must be several times the headroom ({} MiB)",
        state >> 20,
        HEADROOM >> 20
    );
    let rocks = run_child(test, job, "rocksdb", rows, Some(limit))
        .expect("RocksDB must run within the limit");
    check(&rocks);
    assert!(
        run_child(test, job, "memory", rows, Some(limit)).is_none(),
        "the heap backend must not fit in {} MiB",
        limit >> 20
    );
}

fn check_scaled(o: &Outcome, job: &str, rows: u64) {
    match job {
        "join" => assert_eq!(o.rows, rows / 100),
        _ => assert_eq!((o.rows, o.sum), (rows, 2 * rows)),
    }
}

const JOIN_ROWS: u64 = 2_000_000;
const SESSION_KEYS: u64 = 1_500_000;

#[test]
fn a_join_larger_than_memory_runs_on_rocksdb_only() {
    if let Ok(job) = std::env::var(JOB_ENV) {
        return child(&job);
    }
    larger_than_memory(
        "a_join_larger_than_memory_runs_on_rocksdb_only",
        "join",
        JOIN_ROWS,
        |o| assert_eq!(o.rows, JOIN_ROWS / 100, "one match per hundred left rows"),
    );
}

#[test]
fn a_session_window_larger_than_memory_runs_on_rocksdb_only() {
    if let Ok(job) = std::env::var(JOB_ENV) {
        return child(&job);
    }
    larger_than_memory(
        "a_session_window_larger_than_memory_runs_on_rocksdb_only",
        "session",
        SESSION_KEYS,
        |o| {
            assert_eq!(o.rows, SESSION_KEYS, "one session per key");
            assert_eq!(o.sum, 2 * SESSION_KEYS, "two records per session");
        },
    );
}
