//! The Iceberg commit protocol driven call by call, as the task runtime
//! drives a sink, with "crashes" (subtasks dropped without closing)
//! between steps; the table is read back through its own metadata,
//! manifest list and manifests (PyIceberg reads it in `jobs/tests/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_engine::data::CheckpointId;
use sluice_engine::{OperatorContext, Sink, SinkSpec};

use super::files::local_path;
use super::manifest::{read_list, read_manifest};
use super::metadata::TableMetadata;
use super::IcebergSink;
use crate::parquet::tests::{self as parquet_tests, restored, schema};
use crate::parquet::{PartitionSpec, RollPolicy};

/// Rows `from..to` over three keys (`k0`, `k1`, `k2`).
fn rows(from: i64, to: i64) -> RecordBatch {
    parquet_tests::rows(from, to, 3)
}

fn ctx(subtask: usize, parallelism: usize, attempt: u64, checkpointing: bool) -> OperatorContext {
    OperatorContext {
        checkpointing,
        ..parquet_tests::ctx(subtask, parallelism, attempt)
    }
}

fn sink(dir: &Path) -> IcebergSink {
    IcebergSink::new(dir.join("catalog.db"), dir.join("wh"), "lake.t")
        .partition_by(PartitionSpec::parse("k").unwrap())
        .roll_policy(RollPolicy {
            max_age: None,
            inactivity: None,
            max_rows: Some(250),
            ..Default::default()
        })
}

/// A subtask's sink as a fresh process would build it (its own table
/// handle, as after a crash).
fn task(dir: &Path, c: &OperatorContext) -> Box<dyn Sink> {
    let spec = sink(dir);
    spec.validate(&schema()).unwrap();
    (spec.factory(schema()))(c).unwrap()
}

#[test]
fn planning_creates_nothing_and_refuses_what_iceberg_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    sink(dir.path()).validate(&schema()).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let odd = Arc::new(Schema::new(vec![Field::new(
        "d",
        DataType::Duration(arrow::datatypes::TimeUnit::Second),
        true,
    )]));
    let err = IcebergSink::new(dir.path().join("c.db"), dir.path(), "lake.t")
        .validate(&odd)
        .unwrap_err()
        .to_string();
    assert!(err.contains("column 'd' is Duration(s)"), "{err}");
    let err = IcebergSink::new(dir.path().join("c.db"), dir.path(), "nodot")
        .validate(&schema())
        .unwrap_err()
        .to_string();
    assert!(err.contains("NAMESPACE.TABLE"), "{err}");
}

fn metadata(dir: &Path) -> TableMetadata {
    let catalog = super::catalog::SqlCatalog::open(&dir.join("catalog.db"), "sluice").unwrap();
    let loc = catalog.location("lake", "t").unwrap().unwrap();
    serde_json::from_slice(&std::fs::read(local_path(&loc)).unwrap()).unwrap()
}

/// The x values of the table's current snapshot, sorted, and its
/// snapshot count.
fn table_x(dir: &Path) -> (Vec<i64>, usize) {
    let meta = metadata(dir);
    let Some(current) = meta.current() else {
        return (Vec::new(), 0);
    };
    let mut xs = Vec::new();
    let list = std::fs::read(local_path(&current.manifest_list)).unwrap();
    for m in read_list(&list).unwrap() {
        let manifest = std::fs::read(local_path(&m)).unwrap();
        for (file, size) in read_manifest(&manifest).unwrap() {
            let bytes = bytes::Bytes::from(
                std::fs::read(local_path(&file)).unwrap_or_else(|e| panic!("{file}: {e}")),
            );
            // Readers find the footer by the recorded size.
            assert_eq!(bytes.len() as i64, size, "{file}");
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
            // Iceberg readers find columns by these ids.
            let ids: Vec<_> = builder
                .parquet_schema()
                .root_schema()
                .get_fields()
                .iter()
                .map(|f| f.get_basic_info().id())
                .collect();
            assert_eq!(ids, [1, 2], "{file}");
            for b in builder.build().unwrap() {
                let b = b.unwrap();
                let col = b.column_by_name("x").unwrap();
                xs.extend(col.as_any().downcast_ref::<Int64Array>().unwrap().values());
            }
        }
    }
    xs.sort();
    (xs, meta.snapshots.len())
}

#[test]
fn a_checkpoint_of_two_subtasks_is_one_snapshot_after_it_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (c0, c1) = (ctx(0, 2, 0, true), ctx(1, 2, 0, true));
    let (mut t0, mut t1) = (task(dir.path(), &c0), task(dir.path(), &c1));
    t0.open(&c0).unwrap();
    t1.open(&c1).unwrap();
    // 300 rows per key and subtask: a file of 250 rolls in each.
    t0.write(rows(0, 900), &c0).unwrap();
    t1.write(rows(900, 1800), &c1).unwrap();
    t0.snapshot(CheckpointId(1), &c0).unwrap();
    t1.snapshot(CheckpointId(1), &c1).unwrap();
    assert_eq!(
        table_x(dir.path()),
        (vec![], 0),
        "nothing before completion"
    );
    // Subtask 1 commits nothing; subtask 0 commits both lists.
    t1.checkpoint_complete(CheckpointId(1), &c1).unwrap();
    assert_eq!(table_x(dir.path()).1, 0);
    t0.checkpoint_complete(CheckpointId(1), &c0).unwrap();
    let (xs, snapshots) = table_x(dir.path());
    // The rolled files of both subtasks.
    assert_eq!(snapshots, 1);
    assert_eq!(xs.len(), 2 * 3 * 250);
    let meta = metadata(dir.path());
    let summary = &meta.snapshots[0].summary;
    assert_eq!(summary["sluice.checkpoint"], "1");
    assert_eq!(summary["sluice.lists"].split(',').count(), 2, "{summary:?}");
    // At the end everything is in, in one more snapshot.
    t0.close(&c0).unwrap();
    t1.close(&c1).unwrap();
    t0.snapshot(CheckpointId(2), &c0).unwrap();
    t1.snapshot(CheckpointId(2), &c1).unwrap();
    t0.checkpoint_complete(CheckpointId(2), &c0).unwrap();
    assert_eq!(table_x(dir.path()), ((0..1800).collect(), 2));
}

#[test]
fn a_crash_before_the_commit_is_recovered_once_however_often_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(0, 1, 0, true);
    let mut t = task(dir.path(), &c);
    t.open(&c).unwrap();
    t.write(rows(0, 300), &c).unwrap();
    let s1 = t.snapshot(CheckpointId(1), &c).unwrap();
    // Checkpoint 1 completed, but the process died before its commit;
    // checkpoint 2 never completed.
    t.write(rows(300, 400), &c).unwrap();
    t.snapshot(CheckpointId(2), &c).unwrap();
    drop(t);
    assert_eq!(table_x(dir.path()).0, Vec::<i64>::new());
    for attempt in 1..=3 {
        let c = ctx(0, 1, attempt, true);
        let mut t = task(dir.path(), &c);
        t.restore(restored(1, &[&s1]), &c).unwrap();
        t.open(&c).unwrap();
        // The staged files and the open files' prefixes of checkpoint 1.
        assert_eq!(
            table_x(dir.path()).0,
            (0..300).collect::<Vec<_>>(),
            "attempt {attempt}"
        );
        t.write(rows(300, 350), &c).unwrap();
        drop(t);
    }
    let c = ctx(0, 1, 4, true);
    let mut t = task(dir.path(), &c);
    t.restore(restored(1, &[&s1]), &c).unwrap();
    t.open(&c).unwrap();
    t.write(rows(300, 400), &c).unwrap();
    t.close(&c).unwrap();
    t.snapshot(CheckpointId(2), &c).unwrap();
    t.checkpoint_complete(CheckpointId(2), &c).unwrap();
    assert_eq!(table_x(dir.path()).0, (0..400).collect::<Vec<_>>());
    // What the failed attempts wrote and never committed is gone: every
    // data file left is one the table names.
    assert_eq!(on_disk(dir.path()), in_table(dir.path()));
}

/// The data files on disk (hidden in-progress files included).
fn on_disk(dir: &Path) -> std::collections::BTreeSet<String> {
    fn walk(p: &Path, out: &mut std::collections::BTreeSet<String>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else {
                out.insert(e.path().display().to_string());
            }
        }
    }
    let mut out = Default::default();
    walk(&dir.join("wh/lake/t/data"), &mut out);
    out
}

/// The data files the table's current snapshot names.
fn in_table(dir: &Path) -> std::collections::BTreeSet<String> {
    let meta = metadata(dir);
    let list = std::fs::read(local_path(&meta.current().unwrap().manifest_list)).unwrap();
    read_list(&list)
        .unwrap()
        .iter()
        .flat_map(|m| read_manifest(&std::fs::read(local_path(m)).unwrap()).unwrap())
        .map(|(f, _)| local_path(&f).display().to_string())
        .collect()
}

#[test]
fn a_lost_notification_is_committed_with_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(0, 1, 0, true);
    let mut t = task(dir.path(), &c);
    t.open(&c).unwrap();
    t.write(rows(0, 600), &c).unwrap();
    t.snapshot(CheckpointId(1), &c).unwrap();
    t.write(rows(600, 1200), &c).unwrap();
    t.snapshot(CheckpointId(2), &c).unwrap();
    t.checkpoint_complete(CheckpointId(2), &c).unwrap();
    let (xs, snapshots) = table_x(dir.path());
    assert_eq!(snapshots, 1, "one snapshot for both checkpoints");
    assert!(xs.len() > 600, "{}", xs.len());
    let mut seen = xs.clone();
    seen.dedup();
    assert_eq!(seen, xs, "no row twice");
}

#[test]
fn without_checkpoints_each_finished_file_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(0, 1, 0, false);
    let mut t = task(dir.path(), &c);
    t.open(&c).unwrap();
    t.write(rows(0, 500), &c).unwrap();
    t.close(&c).unwrap();
    let (xs, snapshots) = table_x(dir.path());
    assert_eq!(xs, (0..500).collect::<Vec<_>>());
    assert!(snapshots >= 3, "a snapshot per file: {snapshots}");
    let meta = metadata(dir.path());
    let last = meta.current().unwrap();
    assert_eq!(last.summary["total-records"], "500");
    assert_eq!(meta.spec().unwrap().fields[0].transform, "identity");
}

#[test]
fn compaction_merges_small_files_in_one_replace_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(0, 1, 0, false);
    let mut t = task(dir.path(), &c);
    t.open(&c).unwrap();
    // Files of 250 rows per key: 12 files in 3 partitions.
    for i in 0..4 {
        t.write(rows(i * 750, (i + 1) * 750), &c).unwrap();
    }
    t.close(&c).unwrap();
    let files = |dir: &Path| {
        let meta = metadata(dir);
        let list = std::fs::read(local_path(&meta.current().unwrap().manifest_list)).unwrap();
        read_list(&list)
            .unwrap()
            .iter()
            .map(|m| {
                read_manifest(&std::fs::read(local_path(m)).unwrap())
                    .unwrap()
                    .len()
            })
            .sum::<usize>()
    };
    assert_eq!(files(dir.path()), 12);
    let before = table_x(dir.path()).0;
    let opts = crate::parquet::CompactOptions {
        target_size: 1 << 20,
        min_age: std::time::Duration::ZERO,
        ..Default::default()
    };
    let db = dir.path().join("catalog.db");
    let stats = super::compact_table(&db, "sluice", "lake.t", &opts).unwrap();
    assert_eq!((stats.files_in, stats.files_out, stats.rows), (12, 3, 3000));
    assert_eq!(files(dir.path()), 3);
    assert_eq!(table_x(dir.path()).0, before, "the same rows, once");
    let meta = metadata(dir.path());
    let last = meta.current().unwrap();
    assert_eq!(last.summary["operation"], "replace");
    assert_eq!(last.summary["total-records"], "3000");
    assert_eq!(last.summary["total-data-files"], "3");
    // Nothing more to merge; a partition written just now is not closed.
    let again = super::compact_table(&db, "sluice", "lake.t", &opts).unwrap();
    assert_eq!(again.files_in, 0);
    let c = ctx(0, 1, 1, false);
    let mut t = task(dir.path(), &c);
    t.open(&c).unwrap();
    t.write(rows(3000, 3750), &c).unwrap();
    t.close(&c).unwrap();
    let young = crate::parquet::CompactOptions {
        min_age: std::time::Duration::from_secs(3600),
        ..opts
    };
    assert_eq!(
        super::compact_table(&db, "sluice", "lake.t", &young)
            .unwrap()
            .files_in,
        0
    );
    assert_eq!(table_x(dir.path()).0, (0..3750).collect::<Vec<_>>());
    // Appends after the compaction build on it.
    assert_eq!(files(dir.path()), 6);
    let err = super::compact_table(&db, "sluice", "lake.nope", &opts).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn a_crash_between_the_catalog_swap_and_the_cleanup_commits_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(0, 1, 0, true);
    let mut t = task(dir.path(), &c);
    t.open(&c).unwrap();
    t.write(rows(0, 900), &c).unwrap();
    t.snapshot(CheckpointId(1), &c).unwrap();
    // Keep the staged lists, commit, and put them back: as if the process
    // died after the catalog took the commit, before it deleted them.
    let commits = dir.path().join("wh/lake/t/_sluice/sluice/commits");
    let saved: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&commits)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    assert!(!saved.is_empty());
    t.checkpoint_complete(CheckpointId(1), &c).unwrap();
    let (xs, snapshots) = table_x(dir.path());
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }
    t.write(rows(900, 1000), &c).unwrap();
    t.snapshot(CheckpointId(2), &c).unwrap();
    t.checkpoint_complete(CheckpointId(2), &c).unwrap();
    let (again, after) = table_x(dir.path());
    assert_eq!(
        again, xs,
        "the lists of checkpoint 1 were not committed again"
    );
    assert_eq!(after, snapshots);
    assert_eq!(
        std::fs::read_dir(&commits).unwrap().count(),
        0,
        "cleaned up"
    );
}

#[test]
fn concurrent_writers_and_a_compaction_lose_no_commit() {
    let dir = tempfile::tempdir().unwrap();
    // Created once, then four writers (own table handles, as separate
    // processes would have) append at the same time while compaction runs.
    task(dir.path(), &ctx(0, 1, 0, false));
    let writers: Vec<_> = (0..4i64)
        .map(|w| {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let c = ctx(0, 1, 0, false);
                let spec = sink(&dir).writer_id(format!("w{w}"));
                let mut t = (spec.factory(schema()))(&c).unwrap();
                t.open(&c).unwrap();
                let base = w * 10_000;
                for i in 0..4 {
                    t.write(rows(base + i * 750, base + (i + 1) * 750), &c)
                        .unwrap();
                }
                t.close(&c).unwrap();
            })
        })
        .collect();
    let opts = crate::parquet::CompactOptions {
        target_size: 1 << 20,
        min_age: std::time::Duration::ZERO,
        ..Default::default()
    };
    let db = dir.path().join("catalog.db");
    let mut compactions = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        // A compaction may lose to another commit's files: it then
        // changes nothing.
        if super::compact_table(&db, "sluice", "lake.t", &opts).is_ok() {
            compactions += 1;
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    let want: Vec<i64> = (0..4).flat_map(|w| w * 10_000..w * 10_000 + 3000).collect();
    assert_eq!(
        table_x(dir.path()).0,
        want,
        "after {compactions} compactions"
    );
    super::compact_table(&db, "sluice", "lake.t", &opts).unwrap();
    assert_eq!(table_x(dir.path()).0, want);
}

#[test]
fn a_file_open_at_the_checkpoint_and_finished_after_it_keeps_its_committed_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(0, 1, 0, true);
    let mut t = task(dir.path(), &c);
    t.open(&c).unwrap();
    // 200 rows per key: every file open at checkpoint 1.
    t.write(rows(0, 600), &c).unwrap();
    let s1 = t.snapshot(CheckpointId(1), &c).unwrap();
    // They reach 250 rows and roll: staged for checkpoint 2, which never
    // completes.
    t.write(rows(600, 900), &c).unwrap();
    t.snapshot(CheckpointId(2), &c).unwrap();
    drop(t);
    let c = ctx(0, 1, 1, true);
    let mut t = task(dir.path(), &c);
    t.restore(restored(1, &[&s1]), &c).unwrap();
    t.open(&c).unwrap();
    // The prefixes (the first 200 rows per key) are the files' contents
    // now, and the table reads them.
    assert_eq!(table_x(dir.path()).0, (0..600).collect::<Vec<_>>());
    t.write(rows(600, 900), &c).unwrap();
    t.close(&c).unwrap();
    t.snapshot(CheckpointId(2), &c).unwrap();
    t.checkpoint_complete(CheckpointId(2), &c).unwrap();
    assert_eq!(table_x(dir.path()).0, (0..900).collect::<Vec<_>>());
    assert_eq!(on_disk(dir.path()), in_table(dir.path()));
}
