//! File connectors through real jobs: the Parquet sink read back with the
//! parquet crate's own reader (round trip, rolling by size and age, nothing
//! partial left behind, no overwrite across runs) and the file sources over
//! CSV, JSON lines and Parquet files and directories, with clear errors.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_connectors::file::FileSource;
use sluice_connectors::nexmark::{bid_schema, NexmarkConfig, NexmarkSource};
use sluice_connectors::parquet::ParquetSink;
use sluice_engine::{Env, OperatorContext, SourceSpec, Stream};

fn int_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, false),
        Field::new("y", DataType::Int64, false),
    ]))
}

/// `batches` batches of 1,000 rows, x = 0.., y = x % 7, dealt round-robin
/// to the subtasks of a source.
fn ints(env: &Env, batches: i64) -> Stream {
    let schema = int_schema();
    let all: Vec<RecordBatch> = (0..batches)
        .map(|b| {
            let x: Vec<i64> = (b * 1000..(b + 1) * 1000).collect();
            let y: Vec<i64> = x.iter().map(|v| v % 7).collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(x)), Arc::new(Int64Array::from(y))],
            )
            .unwrap()
        })
        .collect();
    env.source_fn("ints", schema.clone(), move |ctx| {
        struct S(Vec<RecordBatch>);
        impl sluice_engine::Source for S {
            fn poll(
                &mut self,
                _c: &OperatorContext,
            ) -> sluice_engine::Result<sluice_engine::SourcePoll> {
                Ok(match self.0.pop() {
                    Some(batch) => sluice_engine::SourcePoll::Batch { split: 0, batch },
                    None => sluice_engine::SourcePoll::End,
                })
            }
        }
        let mine = all
            .iter()
            .skip(ctx.subtask)
            .step_by(ctx.parallelism)
            .cloned()
            .collect();
        Ok(Box::new(S(mine)))
    })
}

/// Names of the files in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// Every row of every `*.parquet` file in `dir`, read with the parquet crate.
fn read_back(dir: &Path) -> (Vec<RecordBatch>, Vec<PathBuf>) {
    let mut batches = Vec::new();
    let mut files = Vec::new();
    for name in names(dir) {
        let path = dir.join(&name);
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(|b| b.unwrap()));
        files.push(path);
    }
    (batches, files)
}

fn column_x(batches: &[RecordBatch]) -> Vec<i64> {
    let mut xs: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    xs.sort();
    xs
}

fn is_final_name(name: &str) -> bool {
    // part-{subtask:03}-{seq:05}.parquet
    let Some(rest) = name
        .strip_prefix("part-")
        .and_then(|r| r.strip_suffix(".parquet"))
    else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() == 2
        && parts[0].len() == 3
        && parts[1].len() == 5
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn parquet_sink_round_trips_nexmark_bids() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new/bids");
    let env = Env::new();
    env.set_parallelism(1);
    let bids = env.source(NexmarkSource::bids(NexmarkConfig {
        events: 5_000,
        batch_size: 500,
        ..Default::default()
    }));
    let expected = bids.collect();
    bids.sink(ParquetSink::new(&out));
    env.execute().unwrap();
    assert_eq!(names(&out), ["part-000-00000.parquet"]);
    let (batches, _) = read_back(&out);
    assert_eq!(batches[0].schema().fields(), bid_schema().fields());
    let got = concat_batches(&bid_schema(), &batches).unwrap();
    assert_eq!(got, expected.concat(), "same rows in the same order");
}

#[test]
fn parquet_sink_rolls_by_size_and_leaves_nothing_partial() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let env = Env::new();
    env.set_parallelism(2);
    ints(&env, 20).sink(
        ParquetSink::new(&out)
            .max_file_size(20_000)
            .row_group_size(500),
    );
    env.execute().unwrap();
    let all = names(&out);
    assert!(all.iter().all(|n| is_final_name(n)), "{all:?}");
    for subtask in ["part-000-", "part-001-"] {
        let mine = all.iter().filter(|n| n.starts_with(subtask)).count();
        assert!(
            mine >= 2,
            "subtask {subtask} rolled into {mine} files: {all:?}"
        );
    }
    for name in &all {
        let r =
            ParquetRecordBatchReaderBuilder::try_new(File::open(out.join(name)).unwrap()).unwrap();
        assert!(r
            .metadata()
            .row_groups()
            .iter()
            .all(|g| g.num_rows() <= 500));
    }
    let (batches, _) = read_back(&out);
    assert_eq!(column_x(&batches), (0..20_000).collect::<Vec<_>>());
}

#[test]
fn parquet_sink_rolls_by_age_and_never_overwrites_earlier_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    for run in 1..=2 {
        let env = Env::new();
        env.set_parallelism(1);
        // A zero interval rolls after every batch: 5 batches, 5 files per run.
        ints(&env, 5).sink(ParquetSink::new(&out).rollover_interval(Duration::ZERO));
        env.execute().unwrap();
        let all = names(&out);
        assert_eq!(all.len(), 5 * run, "{all:?}");
        assert!(all.iter().all(|n| is_final_name(n)), "{all:?}");
    }
    let (batches, _) = read_back(&out);
    let mut want: Vec<i64> = (0..5_000).chain(0..5_000).collect();
    want.sort();
    assert_eq!(column_x(&batches), want);
}

fn write_inputs(root: &Path, files: usize) -> (PathBuf, PathBuf, PathBuf) {
    let csv = root.join("csv");
    let json = root.join("json");
    std::fs::create_dir_all(&csv).unwrap();
    std::fs::create_dir_all(&json).unwrap();
    for f in 0..files {
        let mut c = File::create(csv.join(format!("{f}.csv"))).unwrap();
        let mut j = File::create(json.join(format!("{f}.jsonl"))).unwrap();
        writeln!(c, "x,y").unwrap();
        for i in 0..100 {
            writeln!(c, "{},{}", f * 100 + i, i).unwrap();
            writeln!(j, r#"{{"x":{},"y":{}}}"#, f * 100 + i, i).unwrap();
        }
    }
    // Hidden files (e.g. a writer's in-progress file) are not inputs.
    std::fs::write(csv.join(".partial.csv"), "x,y\nnot,numbers\n").unwrap();
    // Parquet input written by the sink from the CSV, read back by the source.
    let pq = root.join("pq");
    let env = Env::new();
    env.set_parallelism(2);
    env.source(FileSource::csv(&csv))
        .sink(ParquetSink::new(&pq));
    env.execute().unwrap();
    (csv, json, pq)
}

#[test]
fn file_sources_read_csv_json_and_parquet_directories() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, json, pq) = write_inputs(dir.path(), 3);
    assert_eq!(names(&pq).len(), 2, "one file per writing subtask");
    for source in [
        FileSource::csv(&csv),
        FileSource::jsonl(&json),
        FileSource::parquet(&pq),
        FileSource::csv(csv.join("1.csv")),
    ] {
        let want: Vec<i64> = if source.files().unwrap().len() == 1 {
            (100..200).collect()
        } else {
            (0..300).collect()
        };
        assert_eq!(
            source.schema().unwrap().field(0).data_type(),
            &DataType::Int64
        );
        for p in [1, 2] {
            let env = Env::new();
            env.set_parallelism(p);
            let out = env.source(source.clone().with_batch_size(64)).collect();
            env.execute().unwrap();
            assert!(out.batches().iter().all(|b| b.num_rows() <= 64));
            assert_eq!(column_x(&out.batches()), want, "{source:?} at p={p}");
        }
    }
}

#[test]
fn files_are_dealt_round_robin_one_split_each() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, _, _) = write_inputs(dir.path(), 3);
    let factory = FileSource::csv(&csv).factory();
    let ctx = |subtask, parallelism| OperatorContext {
        operator: "files".into(),
        subtask,
        parallelism,
        max_parallelism: 128,
        input_schemas: Vec::new(),
        watermark: None,
        attempt: 0,
        checkpointing: false,
        state: Default::default(),
    };
    let splits = |s, p| factory(&ctx(s, p)).unwrap().splits();
    assert_eq!((splits(0, 2), splits(1, 2)), (2, 1));
    assert_eq!((splits(0, 4), splits(3, 4)), (1, 0));
}

#[test]
fn a_given_schema_replaces_inference() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, "x,y\n1,007\n2,010\n").unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, false),
        Field::new("y", DataType::Utf8, false),
    ]));
    let env = Env::new();
    let out = env
        .source(FileSource::csv(&path).with_schema(schema.clone()))
        .collect();
    env.execute().unwrap();
    let b = out.concat();
    assert_eq!(b.schema(), schema);
    let y: Vec<&str> = b.column(1).as_string::<i32>().iter().flatten().collect();
    assert_eq!(y, ["007", "010"]);
}

#[test]
fn missing_empty_and_malformed_inputs_give_clear_errors() {
    // Plan time: the schema of a missing file cannot be read.
    let missing = FileSource::csv("/no/such/file.csv");
    let err = missing.schema().unwrap_err().to_string();
    assert!(err.contains("/no/such/file.csv"), "{err}");
    let env = Env::new();
    env.source(missing).collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(err.contains("/no/such/file.csv"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let empty_dir = dir.path().join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let err = FileSource::parquet(&empty_dir)
        .schema()
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty") && err.contains("no files"), "{err}");

    let empty_file = dir.path().join("empty.csv");
    std::fs::write(&empty_file, "").unwrap();
    let err = FileSource::csv(&empty_file)
        .schema()
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty.csv"), "{err}");

    let not_parquet = dir.path().join("x.parquet");
    std::fs::write(&not_parquet, "x,y\n1,2\n").unwrap();
    let err = FileSource::parquet(&not_parquet)
        .schema()
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.parquet"), "{err}");

    // A malformed line, whether inference or reading meets it.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"x\": 1}\n{\"x\": 2}\nnot json at all\n").unwrap();
    let env = Env::new();
    env.source(FileSource::jsonl(&bad)).collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(err.contains("bad.jsonl"), "{err}");
}

#[test]
fn parquet_sink_skips_dictionaries_for_the_columns_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let env = Env::new();
    env.set_parallelism(1);
    ints(&env, 3).sink(ParquetSink::new(&out).without_dictionary(["x"]));
    env.execute().unwrap();
    let file = names(&out).into_iter().next().expect("one file");
    let reader =
        parquet::file::reader::SerializedFileReader::new(File::open(out.join(file)).unwrap())
            .unwrap();
    use parquet::file::reader::FileReader;
    let rg = reader.metadata().row_group(0);
    let dictionary = |c: usize| rg.column(c).dictionary_page_offset().is_some();
    assert!(!dictionary(0), "x has no dictionary");
    assert!(dictionary(1), "y (7 distinct values) keeps its dictionary");
    // The values are unchanged.
    let (batches, _) = read_back(&out);
    assert_eq!(column_x(&batches), (0..3_000).collect::<Vec<i64>>());
}

/// Issue 17 item 11: JSON lines follow the Kafka source's strict JSON rule
/// (`"12"` became the integer 12, and the last of duplicate keys won);
/// a line that does not fit fails the job naming file and line, or is
/// skipped and counted.
#[test]
fn json_lines_follow_the_strict_rule_of_the_kafka_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    std::fs::write(
        &path,
        "{\"x\": 1, \"y\": 1}\n{\"x\": \"12\", \"y\": 2}\n{\"x\": 3, \"y\": 3, \"y\": 4}\n\n{\"x\": 4, \"y\": 5}\n",
    )
    .unwrap();
    let source = FileSource::jsonl(&path).with_schema(int_schema());
    let env = Env::new();
    env.source(source.clone()).collect();
    let err = env.execute().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("t.jsonl line 2") && msg.contains("'x'"),
        "{msg}"
    );
    assert_eq!(err.retry(), sluice_engine::Retry::Never);

    let skipping = source.skip_bad_records(true);
    let skipped = skipping.skipped();
    let env = Env::new();
    let out = env.source(skipping).collect();
    env.execute().unwrap();
    assert_eq!(column_x(&out.batches()), vec![1, 4]);
    assert_eq!(skipped.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// Issue 17 item 11: a directory mixing `.parquet` and `.csv` files was
/// read in one format; now it is an error naming the odd files.
#[test]
fn a_directory_mixing_formats_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, _, pq) = write_inputs(dir.path(), 1);
    let first_parquet = names(&pq).into_iter().next().unwrap();
    std::fs::copy(pq.join(&first_parquet), csv.join("extra.parquet")).unwrap();
    for err in [
        FileSource::csv(&csv).schema().unwrap_err(),
        FileSource::detect(&csv).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(
            msg.contains("mixes file formats") && msg.contains("extra.parquet"),
            "{msg}"
        );
    }
    // One format per directory is fine, and detected.
    assert_eq!(
        FileSource::detect(&pq).unwrap().format(),
        sluice_connectors::file::Format::Parquet
    );
    assert_eq!(
        FileSource::detect(csv.join("0.csv")).unwrap().format(),
        sluice_connectors::file::Format::Csv
    );
}
