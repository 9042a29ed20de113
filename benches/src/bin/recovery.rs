//! Checkpoint benchmarks, one Markdown table each:
//!
//! - recovery: a q5-shaped job (Nexmark bids → sliding count per auction →
//!   hottest auction per window) with checkpoints; a task fails once
//!   part-way; measured is the time from the failure to the first record
//!   processed again after the job restored its latest checkpoint (restart
//!   delay zero), median of several runs per state backend;
//! - sizes (`--sizes`): a job whose state grows (sum per bidder in one-hour
//!   windows) checkpointing every 500 ms: each checkpoint's state size,
//!   bytes uploaded, duration and alignment, per backend.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use sluice_connectors::nexmark::{NexmarkConfig, NexmarkSource};
use sluice_connectors::sinks::DiscardSink;
use sluice_engine::state::rocks::RocksConfig;
use sluice_engine::state::StateBackend;
use sluice_engine::{CheckpointConfig, Env, RestartStrategy, WatermarkStrategy};
use sluice_operators::prelude::*;

#[derive(Parser, Debug)]
struct Args {
    /// Generator events per run.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Bid records after which a task fails.
    #[arg(long, default_value_t = 5_000_000)]
    fail_after: u64,
    /// Checkpoint interval, ms.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Runs per backend.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Measure checkpoint duration against state size instead.
    #[arg(long)]
    sizes: bool,
}

struct Measured {
    recovery: Duration,
    total: Duration,
    restored_from: Option<u64>,
}

fn run(args: &Args, rocks: bool) -> anyhow::Result<Measured> {
    let dir =
        std::env::temp_dir().join(format!("sluice-recovery-{}-{}", std::process::id(), rocks));
    let _ = std::fs::remove_dir_all(&dir);
    let env = Env::new();
    env.set_parallelism(2);
    env.configure(|c| {
        c.name = "recovery-bench".into();
        let mut ck = CheckpointConfig::new(&dir);
        ck.interval = Duration::from_millis(args.interval_ms);
        c.checkpoint = Some(ck);
        c.restart = RestartStrategy::FixedDelay {
            attempts: 1,
            delay: Duration::ZERO,
        };
        if rocks {
            c.state.backend = StateBackend::RocksDb(RocksConfig::default());
        }
    });
    let cfg = NexmarkConfig {
        events: args.events,
        ..Default::default()
    };
    let seen = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let failed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let resumed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let bids = env.source(NexmarkSource::bids(cfg.clone()));
    let schema = bids.schema().clone();
    let fail_after = args.fail_after;
    let (f2, r2) = (failed_at.clone(), resumed_at.clone());
    let bids = bids
        .map_batches(schema, move |b| {
            if failed.load(Ordering::SeqCst) {
                r2.lock().expect("lock").get_or_insert_with(Instant::now);
            } else if seen.fetch_add(b.num_rows() as u64, Ordering::SeqCst) >= fail_after
                && !failed.swap(true, Ordering::SeqCst)
            {
                *f2.lock().expect("lock") = Some(Instant::now());
                return Err(sluice_engine::Error::User("injected failure".into()));
            }
            Ok(b)
        })
        .watermarks(WatermarkStrategy::bounded_out_of_orderness(
            "date_time",
            Duration::from_millis(cfg.max_out_of_orderness_ms as u64),
        ));
    bids.key_by(["auction"])
        .window(WindowSpec::sliding(
            Duration::from_secs(10),
            Duration::from_secs(2),
        ))
        .aggregate([count()])
        .top_by_time("count")
        .sink(DiscardSink);
    let start = Instant::now();
    let res = env.execute()?;
    let _ = std::fs::remove_dir_all(&dir);
    let f = failed_at
        .lock()
        .expect("lock")
        .expect("the failure happened");
    let r = resumed_at
        .lock()
        .expect("lock")
        .ok_or_else(|| anyhow::anyhow!("no record after the restart"))?;
    Ok(Measured {
        recovery: r - f,
        total: start.elapsed(),
        restored_from: res.checkpoints.restored_from,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Checkpoint figures of a job whose keyed state grows with the input.
fn sizes(args: &Args, rocks: bool) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("sluice-sizes-{}-{rocks}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let env = Env::new();
    env.set_parallelism(2);
    env.configure(|c| {
        c.name = "sizes-bench".into();
        let mut ck = CheckpointConfig::new(&dir);
        ck.interval = Duration::from_millis(500);
        c.checkpoint = Some(ck);
        if rocks {
            c.state.backend = StateBackend::RocksDb(RocksConfig::default());
        }
    });
    let cfg = NexmarkConfig {
        events: args.events,
        ..Default::default()
    };
    env.source(NexmarkSource::bids(cfg.clone()))
        .watermarks(WatermarkStrategy::bounded_out_of_orderness(
            "date_time",
            Duration::from_millis(cfg.max_out_of_orderness_ms as u64),
        ))
        .key_by(["bidder"])
        .window(WindowSpec::tumbling(Duration::from_secs(3600)))
        .aggregate([count(), sum("price"), max("price")])
        .sink(DiscardSink);
    let res = env.execute()?;
    let _ = std::fs::remove_dir_all(&dir);
    let backend = if rocks { "rocksdb" } else { "memory" };
    for r in &res.checkpoints.recent {
        let f = &r.figures;
        println!(
            "| {backend} | {} | {:.1} | {:.1} | {} | {} |",
            r.id,
            f.bytes as f64 / 1048576.0,
            f.uploaded_bytes as f64 / 1048576.0,
            f.duration_ms,
            f.alignment_ms
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.sizes {
        println!("| state | checkpoint | state MiB | uploaded MiB | duration ms | alignment ms |");
        println!("|---|---|---|---|---|---|");
        sizes(&args, false)?;
        return sizes(&args, true);
    }
    println!("| state | failure → first record after restore (median) | all runs | job wall time (median) | restored from checkpoint |");
    println!("|---|---|---|---|---|");
    for rocks in [false, true] {
        let runs = (0..args.repeat.max(1))
            .map(|_| run(&args, rocks))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let all: Vec<String> = runs
            .iter()
            .map(|m| format!("{:.0}", m.recovery.as_secs_f64() * 1e3))
            .collect();
        println!(
            "| {} | {:.0} ms | {} ms | {:.2} s | {} |",
            if rocks { "rocksdb" } else { "memory" },
            median(runs.iter().map(|m| m.recovery).collect()).as_secs_f64() * 1e3,
            all.join(", "),
            median(runs.iter().map(|m| m.total).collect()).as_secs_f64(),
            runs.iter()
                .map(|m| m.restored_from.map_or("-".into(), |c| c.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
