//! The sink's two-phase commit driven call by call, the way the task
//! runtime drives it, with "crashes" (a subtask dropped without closing)
//! between any two steps, on a local directory and (with the `s3` feature)
//! on an in-memory object store (the S3 server tests are end to end, in
//! `jobs/tests/`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
#[cfg(feature = "s3")]
use object_store::memory::InMemory;
#[cfg(feature = "s3")]
use object_store::path::Path as ObjPath;
#[cfg(feature = "s3")]
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_engine::data::CheckpointId;
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{OperatorContext, Sink};

#[cfg(feature = "s3")]
use super::bucket::BucketDir;
use super::local::LocalDir;
use super::output::Output;
use super::sink::ParquetWriterTask;
use super::{ParquetSink, PartitionSpec};

pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, false),
        Field::new("k", DataType::Utf8, false),
    ]))
}

/// Rows `from..to`, key `k{x % keys}`.
pub(crate) fn rows(from: i64, to: i64, keys: i64) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(from..to)),
            Arc::new(StringArray::from_iter_values(
                (from..to).map(|i| format!("k{}", i % keys)),
            )),
        ],
    )
    .unwrap()
}

pub(crate) fn ctx(subtask: usize, parallelism: usize, attempt: u64) -> OperatorContext {
    OperatorContext {
        operator: "parquet".into(),
        subtask,
        parallelism,
        max_parallelism: 128,
        input_schemas: vec![schema()],
        watermark: None,
        attempt,
        checkpointing: true,
        state: Default::default(),
    }
}

/// Where a test writes, and how it reads back what is visible.
enum Target {
    Local(tempfile::TempDir),
    #[cfg(feature = "s3")]
    Memory(Arc<InMemory>),
}

impl Target {
    fn output(&self) -> Output {
        match self {
            Target::Local(d) => Output::Local(LocalDir::open(d.path().join("out")).unwrap()),
            #[cfg(feature = "s3")]
            // Tiny parts: files span several parts and tails.
            Target::Memory(m) => Output::Bucket(BucketDir::new(m.clone(), "lake/t", "mem", 700)),
        }
    }

    /// Every visible file: relative path → x values; and the hidden names.
    fn read(&self) -> (BTreeMap<String, Vec<i64>>, Vec<String>) {
        let mut files = BTreeMap::new();
        let mut hidden = Vec::new();
        let mut add = |rel: String, bytes: bytes::Bytes| {
            let r = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .build()
                .unwrap();
            let mut xs = Vec::new();
            for b in r {
                let b = b.unwrap();
                let col = b.column_by_name("x").unwrap();
                xs.extend(
                    col.as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .iter(),
                );
            }
            files.insert(rel, xs);
        };
        match self {
            Target::Local(d) => {
                let dir = LocalDir::open(d.path().join("out")).unwrap();
                for rel in dir.walk().unwrap() {
                    let name = rel.rsplit('/').next().unwrap();
                    if name.starts_with('.') || !name.ends_with(".parquet") {
                        hidden.push(rel);
                        continue;
                    }
                    let bytes = std::fs::read(dir.path(&rel)).unwrap();
                    add(rel, bytes::Bytes::from(bytes));
                }
            }
            #[cfg(feature = "s3")]
            Target::Memory(m) => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let keys: Vec<ObjPath> = rt.block_on(async {
                    use futures::TryStreamExt;
                    m.list(Some(&ObjPath::from("lake/t")))
                        .map_ok(|o| o.location)
                        .try_collect()
                        .await
                        .unwrap()
                });
                for k in keys {
                    let rel = k.as_ref().strip_prefix("lake/t/").unwrap().to_string();
                    if rel.starts_with('_') {
                        hidden.push(rel);
                        continue;
                    }
                    let bytes =
                        rt.block_on(async { m.get(&k).await.unwrap().bytes().await.unwrap() });
                    add(rel, bytes);
                }
            }
        }
        (files, hidden)
    }

    fn all_x(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.read().0.into_values().flatten().collect();
        v.sort();
        v
    }
}

fn targets() -> Vec<Target> {
    vec![
        Target::Local(tempfile::tempdir().unwrap()),
        #[cfg(feature = "s3")]
        Target::Memory(Arc::new(InMemory::new())),
    ]
}

fn task(target: &Target, sink: &ParquetSink) -> ParquetWriterTask {
    let mut t = ParquetWriterTask::new(sink.clone(), schema()).unwrap();
    t.set_output(target.output());
    t
}

/// A sink that rolls only when told (or by rows, if set).
fn quiet_sink() -> ParquetSink {
    ParquetSink::new("unused").roll_policy(super::RollPolicy {
        max_age: None,
        inactivity: None,
        ..Default::default()
    })
}

pub(crate) fn restored(id: u64, snaps: &[&OperatorSnapshot]) -> RestoredState {
    RestoredState {
        checkpoint: CheckpointId(id),
        keyed: Vec::new(),
        entries: snaps.iter().flat_map(|s| s.entries.clone()).collect(),
        ..RestoredState::default()
    }
}

#[test]
fn an_open_file_spans_checkpoints_and_is_one_file_at_the_end() {
    for target in targets() {
        let c = ctx(0, 1, 0);
        let mut t = task(&target, &quiet_sink());
        t.open(&c).unwrap();
        for n in 1..=20 {
            t.write(rows((n - 1) * 10, n * 10, 3), &c).unwrap();
            t.snapshot(CheckpointId(n as u64), &c).unwrap();
            t.checkpoint_complete(CheckpointId(n as u64), &c).unwrap();
            assert!(target.read().0.is_empty(), "nothing visible while open");
        }
        t.close(&c).unwrap();
        t.snapshot(CheckpointId(21), &c).unwrap();
        t.checkpoint_complete(CheckpointId(21), &c).unwrap();
        let (files, hidden) = target.read();
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(hidden.is_empty(), "{hidden:?}");
        assert_eq!(target.all_x(), (0..200).collect::<Vec<_>>());
    }
}

#[test]
fn a_crash_publishes_exactly_the_rows_of_the_restored_checkpoint() {
    for target in targets() {
        let c = ctx(0, 1, 0);
        let sink = quiet_sink().max_file_rows(250);
        let mut t = task(&target, &sink);
        t.open(&c).unwrap();
        // 0..300: file A rolls at 250 rows (staged at 1), file B open.
        t.write(rows(0, 200, 3), &c).unwrap();
        t.write(rows(200, 300, 3), &c).unwrap();
        let s1 = t.snapshot(CheckpointId(1), &c).unwrap();
        // Checkpoint 1 completes but the commit never happens; more rows
        // and a checkpoint 2 that never completes.
        t.write(rows(300, 400, 3), &c).unwrap();
        t.snapshot(CheckpointId(2), &c).unwrap();
        t.write(rows(400, 450, 3), &c).unwrap();
        drop(t);
        assert!(target.read().0.is_empty());

        let c = ctx(0, 1, 1);
        let mut t = task(&target, &sink);
        t.restore(restored(1, &[&s1]), &c).unwrap();
        t.open(&c).unwrap();
        assert_eq!(
            target.all_x(),
            (0..300).collect::<Vec<_>>(),
            "as of checkpoint 1"
        );
        assert!(target.read().1.is_empty(), "nothing hidden left");
        // The resumed run goes on from checkpoint 1.
        t.write(rows(300, 400, 3), &c).unwrap();
        t.close(&c).unwrap();
        t.snapshot(CheckpointId(2), &c).unwrap();
        t.checkpoint_complete(CheckpointId(2), &c).unwrap();
        assert_eq!(target.all_x(), (0..400).collect::<Vec<_>>());
        let (files, hidden) = target.read();
        assert_eq!(files.len(), 3, "A, B's prefix, the resumed file: {files:?}");
        assert!(hidden.is_empty());
    }
}

#[test]
fn recovery_is_idempotent_across_repeated_crashes() {
    for target in targets() {
        let c = ctx(0, 1, 0);
        let mut t = task(&target, &quiet_sink());
        t.open(&c).unwrap();
        t.write(rows(0, 100, 3), &c).unwrap();
        let s1 = t.snapshot(CheckpointId(1), &c).unwrap();
        t.write(rows(100, 200, 3), &c).unwrap();
        drop(t);
        for attempt in 1..=3 {
            let c = ctx(0, 1, attempt);
            let mut t = task(&target, &quiet_sink());
            t.restore(restored(1, &[&s1]), &c).unwrap();
            t.open(&c).unwrap();
            t.write(rows(100, 150, 3), &c).unwrap();
            drop(t);
            assert_eq!(target.all_x(), (0..100).collect::<Vec<_>>());
        }
    }
}

#[test]
fn restoring_an_older_checkpoint_cuts_a_published_file_back() {
    for target in targets() {
        let c = ctx(0, 1, 0);
        let mut t = task(&target, &quiet_sink());
        t.open(&c).unwrap();
        t.write(rows(0, 100, 3), &c).unwrap();
        let s1 = t.snapshot(CheckpointId(1), &c).unwrap();
        t.checkpoint_complete(CheckpointId(1), &c).unwrap();
        t.write(rows(100, 200, 3), &c).unwrap();
        t.close(&c).unwrap();
        t.snapshot(CheckpointId(2), &c).unwrap();
        t.checkpoint_complete(CheckpointId(2), &c).unwrap();
        // A file opened after checkpoint 2 and published at 3.
        t.write(rows(200, 250, 3), &c).unwrap();
        t.close(&c).unwrap();
        t.snapshot(CheckpointId(3), &c).unwrap();
        t.checkpoint_complete(CheckpointId(3), &c).unwrap();
        drop(t);
        assert_eq!(target.all_x(), (0..250).collect::<Vec<_>>());
        // Checkpoints 2 and 3 were lost: the job resumes from 1.
        let c = ctx(0, 1, 1);
        let mut t = task(&target, &quiet_sink());
        t.restore(restored(1, &[&s1]), &c).unwrap();
        t.open(&c).unwrap();
        assert_eq!(target.all_x(), (0..100).collect::<Vec<_>>());
    }
}

#[test]
fn a_rescale_hands_each_old_subtask_to_one_new_one() {
    for target in targets() {
        // Three subtasks write and checkpoint, then crash.
        let mut snaps = Vec::new();
        for s in 0..3 {
            let c = ctx(s, 3, 0);
            let mut t = task(&target, &quiet_sink());
            t.open(&c).unwrap();
            let base = s as i64 * 1000;
            t.write(rows(base, base + 100, 3), &c).unwrap();
            snaps.push(t.snapshot(CheckpointId(1), &c).unwrap());
            t.write(rows(base + 100, base + 200, 3), &c).unwrap();
        }
        // Two resume.
        let all: Vec<&OperatorSnapshot> = snaps.iter().collect();
        for s in 0..2 {
            let c = ctx(s, 2, 1);
            let mut t = task(&target, &quiet_sink());
            t.restore(restored(1, &all), &c).unwrap();
            t.open(&c).unwrap();
        }
        let want: Vec<i64> = (0..3).flat_map(|s| s * 1000..s * 1000 + 100).collect();
        assert_eq!(target.all_x(), want);
        assert!(target.read().1.is_empty());
    }
}

#[test]
fn partitions_get_their_own_files_and_directories() {
    for target in targets() {
        let c = ctx(0, 1, 0);
        let sink = quiet_sink().partition_by(PartitionSpec::new().column("k"));
        let mut t = task(&target, &sink);
        t.open(&c).unwrap();
        t.write(rows(0, 90, 3), &c).unwrap();
        let s1 = t.snapshot(CheckpointId(1), &c).unwrap();
        t.write(rows(90, 120, 3), &c).unwrap();
        drop(t);
        let c = ctx(0, 1, 1);
        let mut t = task(&target, &sink);
        t.restore(restored(1, &[&s1]), &c).unwrap();
        t.open(&c).unwrap();
        let (files, hidden) = target.read();
        assert!(hidden.is_empty(), "{hidden:?}");
        let dirs: Vec<&str> = files.keys().map(|k| k.split('/').next().unwrap()).collect();
        assert_eq!(dirs, ["k=k0", "k=k1", "k=k2"]);
        for (rel, xs) in &files {
            let k: i64 = rel[3..4].parse().unwrap();
            assert_eq!(xs.len(), 30);
            assert!(xs.iter().all(|x| x % 3 == k), "{rel}: {xs:?}");
        }
    }
}

#[test]
fn files_roll_by_age_and_inactivity_on_ticks() {
    let target = Target::Local(tempfile::tempdir().unwrap());
    let c = ctx(0, 1, 0);
    let sink = ParquetSink::new("unused")
        .rollover_interval(Duration::from_secs(3600))
        .inactivity_interval(Duration::from_millis(50));
    let mut t = task(&target, &sink);
    t.open(&c).unwrap();
    t.write(rows(0, 10, 3), &c).unwrap();
    t.on_tick(&c).unwrap();
    std::thread::sleep(Duration::from_millis(80));
    t.on_tick(&c).unwrap();
    // Rolled; staged at the next checkpoint, visible when it completes.
    t.snapshot(CheckpointId(1), &c).unwrap();
    t.checkpoint_complete(CheckpointId(1), &c).unwrap();
    assert_eq!(target.all_x(), (0..10).collect::<Vec<_>>());
    assert_eq!(t.rolled.get("inactive"), Some(&1));
}

#[test]
fn a_new_input_schema_starts_new_files() {
    for target in targets() {
        let c = ctx(0, 1, 0);
        let mut t = task(&target, &quiet_sink());
        t.open(&c).unwrap();
        t.write(rows(0, 10, 3), &c).unwrap();
        // The same columns and one more (a source evolved its schema).
        let wider = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, false),
            Field::new("k", DataType::Utf8, false),
            Field::new("email", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            wider,
            vec![
                Arc::new(Int64Array::from_iter_values(10..20)),
                Arc::new(StringArray::from_iter_values(
                    (10..20).map(|i| format!("k{i}")),
                )),
                Arc::new(StringArray::from_iter_values(
                    (10..20).map(|i| format!("e{i}")),
                )),
            ],
        )
        .unwrap();
        t.write(b, &c).unwrap();
        t.close(&c).unwrap();
        t.snapshot(CheckpointId(1), &c).unwrap();
        t.checkpoint_complete(CheckpointId(1), &c).unwrap();
        let (files, _) = target.read();
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(target.all_x(), (0..20).collect::<Vec<_>>());
        assert_eq!(t.rolled.get("schema"), Some(&1));
    }
}

#[test]
fn a_job_resumed_with_another_output_publishes_the_checkpoint_where_it_was_written() {
    let (first, second) = (
        Target::Local(tempfile::tempdir().unwrap()),
        Target::Local(tempfile::tempdir().unwrap()),
    );
    let dir = |t: &Target| match t {
        Target::Local(d) => d.path().join("out"),
        #[cfg(feature = "s3")]
        Target::Memory(_) => unreachable!("local targets"),
    };
    let sink = |t: &Target| {
        let s = quiet_sink().max_file_rows(250);
        ParquetSink {
            location: dir(t).as_path().into(),
            ..s
        }
    };
    let c = ctx(0, 1, 0);
    let mut t = ParquetWriterTask::new(sink(&first), schema()).unwrap();
    t.open(&c).unwrap();
    // A rolls at 250 rows (staged), B is open at the checkpoint.
    t.write(rows(0, 300, 3), &c).unwrap();
    let s1 = t.snapshot(CheckpointId(1), &c).unwrap();
    t.write(rows(300, 350, 3), &c).unwrap();
    drop(t);

    // Resumed from checkpoint 1 with the output moved elsewhere.
    let c = ctx(0, 1, 1);
    let mut t = ParquetWriterTask::new(sink(&second), schema()).unwrap();
    t.restore(restored(1, &[&s1]), &c).unwrap();
    t.open(&c).unwrap();
    assert_eq!(
        first.all_x(),
        (0..300).collect::<Vec<_>>(),
        "the checkpoint's rows, where written"
    );
    assert!(
        first.read().1.is_empty(),
        "nothing hidden left: {:?}",
        first.read().1
    );
    t.write(rows(300, 400, 3), &c).unwrap();
    t.close(&c).unwrap();
    t.snapshot(CheckpointId(2), &c).unwrap();
    t.checkpoint_complete(CheckpointId(2), &c).unwrap();
    assert_eq!(
        second.all_x(),
        (300..400).collect::<Vec<_>>(),
        "later rows in the new output"
    );
    assert_eq!(first.all_x(), (0..300).collect::<Vec<_>>());
}
