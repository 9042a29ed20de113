//! Connectors through real jobs: the Nexmark generator's determinism and
//! mix, the Parquet sink read back with the parquet crate's own reader, file
//! sources over CSV, JSON lines and Parquet directories.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_connectors::file::FileSource;
use sluice_connectors::nexmark::{count_of, generate, Event, Kind, NexmarkConfig, NexmarkSource};
use sluice_connectors::parquet::ParquetSink;
use sluice_engine::Env;

fn cfg(events: u64) -> NexmarkConfig {
    NexmarkConfig {
        events,
        seed: 3,
        max_out_of_orderness_ms: 25,
        batch_size: 333,
        ..Default::default()
    }
}

fn bid_rows(p: usize, events: u64) -> Vec<(i64, i64, i64, i64)> {
    let env = Env::new();
    env.set_parallelism(p);
    let out = env.source(NexmarkSource::bids(cfg(events))).collect();
    env.execute().unwrap();
    let mut v = Vec::new();
    for b in out.batches() {
        let i = |c: usize| b.column(c).as_primitive::<Int64Type>().values().to_vec();
        let t = b
            .column(5)
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec();
        let (a, bd, pr) = (i(0), i(1), i(2));
        v.extend((0..b.num_rows()).map(|r| (a[r], bd[r], pr[r], t[r])));
    }
    v.sort();
    v
}

#[test]
fn nexmark_is_deterministic_and_independent_of_parallelism() {
    let events = 20_000;
    let mut reference: Vec<(i64, i64, i64, i64)> = generate(&cfg(events))
        .filter_map(|e| match e {
            Event::Bid(b) => Some((b.auction, b.bidder, b.price, b.date_time)),
            _ => None,
        })
        .collect();
    reference.sort();
    assert_eq!(reference.len() as u64, count_of(Kind::Bid, events));
    assert_eq!(bid_rows(1, events), reference);
    assert_eq!(bid_rows(3, events), reference);
}

#[test]
fn nexmark_mix_ids_and_disorder_follow_the_model() {
    let events: Vec<Event> = generate(&cfg(50_000)).collect();
    let (mut p, mut a, mut b) = (0, 0, 0);
    let mut max_auction = 0;
    let mut max_time = i64::MIN;
    for (i, e) in events.iter().enumerate() {
        let base = 1_436_918_400_000 + (i as i64 * 1000) / 10_000;
        match e {
            Event::Person(x) => {
                p += 1;
                assert!(x.date_time <= base && x.date_time >= base - 25);
                assert!(["AZ", "CA", "ID", "OR", "WA", "WY"].contains(&x.state.as_str()));
            }
            Event::Auction(x) => {
                a += 1;
                max_auction = max_auction.max(x.id);
                assert!(x.expires > x.date_time - 25 && (10..15).contains(&x.category));
                assert!(x.reserve >= x.initial_bid);
            }
            Event::Bid(x) => {
                b += 1;
                assert!(
                    x.auction <= max_auction + 10,
                    "bid for auction {} beyond the lead",
                    x.auction
                );
                assert!(x.date_time >= base - 25 && x.date_time <= base);
            }
        }
        max_time = max_time.max(match e {
            Event::Person(x) => x.date_time,
            Event::Auction(x) => x.date_time,
            Event::Bid(x) => x.date_time,
        });
    }
    assert_eq!((p, a, b), (1_000, 3_000, 46_000));
    assert_eq!(
        generate(&cfg(1000)).collect::<Vec<_>>(),
        generate(&cfg(1000)).collect::<Vec<_>>()
    );
}

fn int_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, false),
        Field::new("y", DataType::Int64, false),
    ]))
}

#[test]
fn parquet_sink_rolls_files_and_leaves_nothing_partial() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let env = Env::new();
    env.set_parallelism(2);
    let schema = int_schema();
    let batches: Vec<RecordBatch> = (0..20)
        .map(|b| {
            let x: Vec<i64> = (0..1000).map(|i| b * 1000 + i).collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(x.clone())),
                    Arc::new(Int64Array::from(x)),
                ],
            )
            .unwrap()
        })
        .collect();
    let src = env.source_fn("ints", schema.clone(), move |ctx| {
        struct S(Vec<RecordBatch>);
        impl sluice_engine::Source for S {
            fn poll(
                &mut self,
                _c: &sluice_engine::OperatorContext,
            ) -> sluice_engine::Result<sluice_engine::SourcePoll> {
                Ok(match self.0.pop() {
                    Some(batch) => sluice_engine::SourcePoll::Batch { split: 0, batch },
                    None => sluice_engine::SourcePoll::End,
                })
            }
        }
        let mine = batches
            .iter()
            .skip(ctx.subtask)
            .step_by(ctx.parallelism)
            .cloned()
            .collect();
        Ok(Box::new(S(mine)))
    });
    src.sink(
        ParquetSink::new(&out)
            .max_file_size(20_000)
            .row_group_size(500),
    );
    env.execute().unwrap();
    let mut seen = Vec::new();
    let mut files = 0;
    for e in std::fs::read_dir(&out).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with("part-") && name.ends_with(".parquet"),
            "unexpected file {name}"
        );
        files += 1;
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        assert!(reader
            .metadata()
            .row_groups()
            .iter()
            .all(|g| g.num_rows() <= 500));
        for b in reader.build().unwrap() {
            seen.extend(
                b.unwrap()
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec(),
            );
        }
    }
    assert!(files > 2, "expected rolled files, got {files}");
    seen.sort();
    assert_eq!(seen, (0..20_000).collect::<Vec<_>>());
}

#[test]
fn file_sources_read_csv_json_and_parquet_directories() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("csv");
    let json = dir.path().join("json");
    std::fs::create_dir_all(&csv).unwrap();
    std::fs::create_dir_all(&json).unwrap();
    for f in 0..3 {
        let mut c = File::create(csv.join(format!("{f}.csv"))).unwrap();
        let mut j = File::create(json.join(format!("{f}.jsonl"))).unwrap();
        writeln!(c, "x,y").unwrap();
        for i in 0..100 {
            writeln!(c, "{},{}", f * 100 + i, i).unwrap();
            writeln!(j, r#"{{"x":{},"y":{}}}"#, f * 100 + i, i).unwrap();
        }
    }
    // Parquet input written by the sink, read back by the source.
    let pq = dir.path().join("pq");
    let env = Env::new();
    env.source(FileSource::csv(&csv))
        .sink(ParquetSink::new(&pq));
    env.execute().unwrap();
    for source in [
        FileSource::csv(&csv),
        FileSource::jsonl(&json),
        FileSource::parquet(&pq),
    ] {
        for p in [1, 2] {
            let env = Env::new();
            env.set_parallelism(p);
            let out = env.source(source.clone().with_batch_size(64)).collect();
            env.execute().unwrap();
            let mut xs: Vec<i64> = out
                .batches()
                .iter()
                .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                .collect();
            xs.sort();
            assert_eq!(xs, (0..300).collect::<Vec<_>>(), "{source:?} at p={p}");
        }
    }
}

#[test]
fn missing_and_malformed_files_give_clear_errors() {
    let env = Env::new();
    env.source(FileSource::csv("/no/such/file.csv")).collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(err.contains("/no/such/file.csv"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"x\": 1}\n{\"x\": 2}\nnot json at all\n").unwrap();
    let env = Env::new();
    env.source(FileSource::jsonl(&bad)).collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(err.contains("bad.jsonl"), "{err}");
}
