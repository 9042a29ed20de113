//! Savepoints and restore: a job stopped with a savepoint at parallelism 2
//! and resumed at 4 and at 1 ends with the same output as a run without
//! interruption, with state on the heap and in RocksDB; a corrupted newest
//! checkpoint is skipped for the one before it, without wrong output.
//! State is matched to operators by operator id: a savepoint restores into
//! a job edited around its stateful operators (a filter added in front of
//! the windows) with the output of a failure-free run of the edited job,
//! and into a job that lost a stateful operator only when the user allows
//! non-restored state.

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

/// How a job differs from the one that took the savepoint.
#[derive(Clone, Copy, PartialEq)]
enum Edit {
    /// The job as it was.
    None,
    /// A filter (keeping every bid) in front of both windows.
    FilterAdded,
    /// The tumbling window per bidder (and its sink) removed.
    BidderWindowRemoved,
    /// `max(price)` added at the end of the aggregates per bidder.
    AggregateAdded,
    /// The aggregates per bidder in another order.
    AggregatesReordered,
}

/// Sliding counts per auction and tumbling sums per bidder, into Parquet.
fn job(
    out: &Path,
    checkpoints: Option<(&Path, Option<&Location>)>,
    p: usize,
    rate: Option<u64>,
    rocks: bool,
) -> Env {
    edited_job(out, checkpoints, p, rate, rocks, Edit::None)
}

/// [`job`], edited as `edit` says.
fn edited_job(
    out: &Path,
    checkpoints: Option<(&Path, Option<&Location>)>,
    p: usize,
    rate: Option<u64>,
    rocks: bool,
    edit: Edit,
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
                cache_bytes: 256 << 10,
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
    let bids = if edit == Edit::FilterAdded {
        bids.filter(col("price").gt_eq(lit(0)))
    } else {
        bids
    };
    bids.clone()
        .key_by(["auction"])
        .window(WindowSpec::sliding(
            Duration::from_secs(10),
            Duration::from_secs(2),
        ))
        .aggregate([count(), max("price")])
        .sink(ParquetSink::new(out.join("by_auction")));
    let per_bidder = bids
        .key_by(["bidder"])
        .window(WindowSpec::tumbling(Duration::from_secs(5)));
    let per_bidder = match edit {
        Edit::BidderWindowRemoved => None,
        Edit::AggregateAdded => {
            Some(per_bidder.aggregate([sum("price"), min("price"), max("price")]))
        }
        Edit::AggregatesReordered => Some(per_bidder.aggregate([min("price"), sum("price")])),
        Edit::None | Edit::FilterAdded => Some(per_bidder.aggregate([sum("price"), min("price")])),
    };
    if let Some(s) = per_bidder {
        s.sink(ParquetSink::new(out.join("by_bidder")));
    }
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

/// Runs the original job at parallelism 2 into `d/a` and stops it with a
/// savepoint mid-run.
fn savepoint_mid_run(d: &Path, rocks: bool) -> Location {
    let a = d.join("a");
    let handle = job(&a, Some((&d.join("ck-a"), None)), 2, Some(150_000), rocks)
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(250));
    let sp = handle.stop_with_savepoint(d.join("savepoint")).unwrap();
    assert!(handle.join().unwrap().stopped, "stopped with its savepoint");
    sp
}

#[test]
fn a_savepoint_restores_into_a_job_with_a_filter_added_by_operator_id() {
    for rocks in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        edited_job(
            &d.join("reference"),
            None,
            2,
            None,
            rocks,
            Edit::FilterAdded,
        )
        .execute()
        .unwrap();
        let want = outputs(&d.join("reference"));
        let sp = savepoint_mid_run(d, rocks);
        assert!(
            outputs(&d.join("a")).0.len() < want.0.len(),
            "savepoint mid-run"
        );

        // The edited job at another parallelism, from the savepoint.
        let b = d.join("b");
        copy_dir(&d.join("a/by_auction"), &b.join("by_auction"));
        copy_dir(&d.join("a/by_bidder"), &b.join("by_bidder"));
        let res = edited_job(
            &b,
            Some((&d.join("ck-b"), Some(&sp))),
            3,
            None,
            rocks,
            Edit::FilterAdded,
        )
        .execute()
        .unwrap();
        assert!(res.checkpoints.restored_from.is_some());
        assert_eq!(outputs(&b), want, "edited job restored (rocksdb: {rocks})");
    }
}

#[test]
fn state_of_a_removed_operator_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    edited_job(
        &d.join("reference"),
        None,
        2,
        None,
        false,
        Edit::BidderWindowRemoved,
    )
    .execute()
    .unwrap();
    let want = rows(&d.join("reference/by_auction"));
    let sp = savepoint_mid_run(d, false);

    let b = d.join("b");
    copy_dir(&d.join("a/by_auction"), &b.join("by_auction"));
    let err = edited_job(
        &b,
        Some((&d.join("ck-b"), Some(&sp))),
        2,
        None,
        false,
        Edit::BidderWindowRemoved,
    )
    .execute()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("holds state of operators this job does not have")
            && err.contains("--allow-non-restored-state"),
        "{err}"
    );
    assert_eq!(
        rows(&b.join("by_auction")),
        rows(&d.join("a/by_auction")),
        "a refused restore writes nothing"
    );

    let env = edited_job(
        &b,
        Some((&d.join("ck-b"), Some(&sp))),
        2,
        None,
        false,
        Edit::BidderWindowRemoved,
    );
    env.configure(|c| {
        if let Some(ck) = c.checkpoint.as_mut() {
            ck.allow_non_restored_state = true;
        }
    });
    let res = env.execute().unwrap();
    assert!(res.checkpoints.restored_from.is_some());
    assert_eq!(
        rows(&b.join("by_auction")),
        want,
        "the windows per auction kept their state"
    );
}

#[test]
fn a_window_keeps_its_state_when_an_aggregate_is_added_at_the_end_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    job(&d.join("reference"), None, 2, None, false)
        .execute()
        .unwrap();
    let want = rows(&d.join("reference/by_bidder"));
    let sp = savepoint_mid_run(d, false);

    let refused = d.join("refused");
    let err = edited_job(
        &refused,
        Some((&d.join("ck-r"), Some(&sp))),
        2,
        None,
        false,
        Edit::AggregatesReordered,
    )
    .execute()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("aggregates were") && err.contains("added at the end"),
        "{err}"
    );

    let b = d.join("b");
    copy_dir(&d.join("a/by_auction"), &b.join("by_auction"));
    copy_dir(&d.join("a/by_bidder"), &b.join("by_bidder"));
    let res = edited_job(
        &b,
        Some((&d.join("ck-b"), Some(&sp))),
        2,
        None,
        false,
        Edit::AggregateAdded,
    )
    .execute()
    .unwrap();
    assert!(res.checkpoints.restored_from.is_some());
    // Rows written after the restore carry the new aggregate as a last
    // column; without it, the output is the unedited job's: the sums and
    // minimums kept their restored state.
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let mut with_max = 0;
    for (row, n) in rows(&b.join("by_bidder")) {
        let fields: Vec<&str> = row.split('|').collect();
        let row = if fields.len() == 6 {
            with_max += n;
            fields[..5].join("|")
        } else {
            row
        };
        *got.entry(row).or_default() += n;
    }
    assert!(
        with_max > 0,
        "windows fired after the restore have the new aggregate"
    );
    assert_eq!(got, want);
}
