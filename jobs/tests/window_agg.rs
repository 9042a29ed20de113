//! `window_agg` end to end: the binary run as a user runs it, on CSV,
//! JSON-lines and Parquet input; its Parquet output read back with the
//! parquet crate's own reader and compared with a brute-force reference.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// (user, ts, amount) with timestamps out of order by up to 2 s.
fn records(seed: u64, n: usize) -> Vec<(String, i64, i64)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let user = format!("u{}", rng.random_range(0..7));
            let ts = 1_700_000_000_000 + i as i64 * 37 - rng.random_range(0..2_000);
            (user, ts, rng.random_range(-50..1_000))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct Agg {
    count: i64,
    sum: i64,
    min: i64,
    max: i64,
    avg: f64,
}

type Key = (String, i64, i64);

fn reference(
    recs: &[(String, i64, i64)],
    windows: impl Fn(i64) -> Vec<(i64, i64)>,
) -> BTreeMap<Key, Agg> {
    let mut acc: BTreeMap<Key, Vec<i64>> = BTreeMap::new();
    for (u, ts, a) in recs {
        for (s, e) in windows(*ts) {
            acc.entry((u.clone(), s, e)).or_default().push(*a);
        }
    }
    acc.into_iter()
        .map(|(k, v)| {
            let sum: i64 = v.iter().sum();
            let agg = Agg {
                count: v.len() as i64,
                sum,
                min: *v.iter().min().unwrap(),
                max: *v.iter().max().unwrap(),
                avg: sum as f64 / v.len() as f64,
            };
            (k, agg)
        })
        .collect()
}

fn sessions(recs: &[(String, i64, i64)], gap: i64) -> BTreeMap<Key, Agg> {
    let mut by_user: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (u, ts, a) in recs {
        by_user.entry(u.clone()).or_default().push((*ts, *a));
    }
    let mut out = BTreeMap::new();
    for (u, mut v) in by_user {
        v.sort();
        let mut group: Vec<(i64, i64)> = Vec::new();
        let flush = |group: &mut Vec<(i64, i64)>, out: &mut BTreeMap<Key, Agg>| {
            if group.is_empty() {
                return;
            }
            let amounts: Vec<i64> = group.iter().map(|x| x.1).collect();
            let sum: i64 = amounts.iter().sum();
            let start = group[0].0;
            let end = group.last().unwrap().0 + gap;
            out.insert(
                (u.clone(), start, end),
                Agg {
                    count: amounts.len() as i64,
                    sum,
                    min: *amounts.iter().min().unwrap(),
                    max: *amounts.iter().max().unwrap(),
                    avg: sum as f64 / amounts.len() as f64,
                },
            );
            group.clear();
        };
        for (ts, a) in v {
            if let Some(last) = group.last() {
                if ts >= last.0 + gap {
                    flush(&mut group, &mut out);
                }
            }
            group.push((ts, a));
        }
        flush(&mut group, &mut out);
    }
    out
}

fn write_input(dir: &Path, format: &str, recs: &[(String, i64, i64)]) -> std::path::PathBuf {
    let path = dir.join(format!("events.{format}"));
    match format {
        "csv" => {
            let mut f = File::create(&path).unwrap();
            writeln!(f, "user,ts,amount").unwrap();
            for (u, ts, a) in recs {
                writeln!(f, "{u},{ts},{a}").unwrap();
            }
        }
        "jsonl" => {
            let mut f = File::create(&path).unwrap();
            for (u, ts, a) in recs {
                writeln!(f, r#"{{"user":"{u}","ts":{ts},"amount":{a}}}"#).unwrap();
            }
        }
        "parquet" => {
            let schema = Arc::new(Schema::new(vec![
                Field::new("user", DataType::Utf8, false),
                Field::new("ts", DataType::Int64, false),
                Field::new("amount", DataType::Int64, false),
            ]));
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        recs.iter().map(|r| r.0.as_str()),
                    )),
                    Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.1))),
                    Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.2))),
                ],
            )
            .unwrap();
            let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        }
        _ => unreachable!(),
    }
    path
}

fn read_output(dir: &Path) -> BTreeMap<Key, Agg> {
    let mut out = BTreeMap::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !name.contains("inprogress"),
            "partial file left behind: {name}"
        );
        if !name.ends_with(".parquet") {
            continue;
        }
        files += 1;
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let schema = b.schema();
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(
                names,
                [
                    "user",
                    "window_start",
                    "window_end",
                    "count",
                    "sum_amount",
                    "min_amount",
                    "max_amount",
                    "avg_amount"
                ]
            );
            let user = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
            let user = user.as_string::<i32>();
            let ws = b.column(1).as_primitive::<TimestampMillisecondType>();
            let we = b.column(2).as_primitive::<TimestampMillisecondType>();
            let i64s = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
            let (c, s, mn, mx) = (i64s(3), i64s(4), i64s(5), i64s(6));
            let avg = b.column(7).as_primitive::<Float64Type>();
            for r in 0..b.num_rows() {
                let key = (user.value(r).to_string(), ws.value(r), we.value(r));
                let agg = Agg {
                    count: c.value(r),
                    sum: s.value(r),
                    min: mn.value(r),
                    max: mx.value(r),
                    avg: avg.value(r),
                };
                assert!(
                    out.insert(key.clone(), agg).is_none(),
                    "window {key:?} emitted twice"
                );
            }
        }
    }
    assert!(files > 0, "no parquet output in {}", dir.display());
    out
}

fn run(input: &Path, window: &str, out: &Path, parallelism: usize) {
    let status = Command::new(env!("CARGO_BIN_EXE_window_agg"))
        .args([
            "--source",
            input.to_str().unwrap(),
            "--time",
            "ts",
            "--key",
            "user",
            "--window",
            window,
        ])
        .args([
            "--agg",
            "count",
            "--agg",
            "sum:amount",
            "--agg",
            "min:amount",
            "--agg",
            "max:amount",
            "--agg",
            "avg:amount",
        ])
        .args([
            "--watermark-delay",
            "3s",
            "--parallelism",
            &parallelism.to_string(),
        ])
        .arg("--output")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
}

fn assert_same(got: &BTreeMap<Key, Agg>, want: &BTreeMap<Key, Agg>) {
    assert_eq!(got.len(), want.len(), "number of windows");
    for (k, w) in want {
        let g = got.get(k).unwrap_or_else(|| panic!("missing window {k:?}"));
        assert_eq!(
            (g.count, g.sum, g.min, g.max),
            (w.count, w.sum, w.min, w.max),
            "window {k:?}"
        );
        assert!((g.avg - w.avg).abs() < 1e-9, "avg of {k:?}");
    }
}

#[test]
fn window_agg_matches_a_brute_force_reference_on_every_format_and_window() {
    let recs = records(1, 3_000);
    let dir = tempfile::tempdir().unwrap();
    let tumbling = |ts: i64| {
        let s = ts - ts.rem_euclid(10_000);
        vec![(s, s + 10_000)]
    };
    let sliding = |ts: i64| {
        let last = ts - ts.rem_euclid(2_000);
        (0..5)
            .map(|i| last - i * 2_000)
            .map(|s| (s, s + 10_000))
            .collect::<Vec<_>>()
    };
    let cases: Vec<(&str, &str, BTreeMap<Key, Agg>)> = vec![
        ("csv", "tumbling:10s", reference(&recs, tumbling)),
        ("jsonl", "sliding:10s,2s", reference(&recs, sliding)),
        ("parquet", "session:1s", sessions(&recs, 1_000)),
    ];
    for (format, window, want) in cases {
        let input = write_input(dir.path(), format, &recs);
        for p in [1, 3] {
            let out = dir.path().join(format!("out-{format}-{p}"));
            run(&input, window, &out, p);
            assert_same(&read_output(&out), &want);
        }
    }
}

#[test]
fn bad_arguments_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_window_agg"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let o = dir.path().join("o");
    let o = o.to_str().unwrap();
    let missing = run(&[
        "--source",
        "/nonexistent.csv",
        "--time",
        "ts",
        "--key",
        "u",
        "--window",
        "tumbling:1s",
        "--agg",
        "count",
        "--output",
        o,
    ]);
    assert!(missing.contains("/nonexistent.csv"), "{missing}");
    let input = write_input(dir.path(), "csv", &records(2, 10));
    let input = input.to_str().unwrap();
    let bad_window = run(&[
        "--source",
        input,
        "--time",
        "ts",
        "--key",
        "user",
        "--window",
        "weekly:1s",
        "--agg",
        "count",
        "--output",
        o,
    ]);
    assert!(bad_window.contains("weekly"), "{bad_window}");
    let bad_agg = run(&[
        "--source",
        input,
        "--time",
        "ts",
        "--key",
        "user",
        "--window",
        "tumbling:1s",
        "--agg",
        "median:amount",
        "--output",
        o,
    ]);
    assert!(bad_agg.contains("median"), "{bad_agg}");
    let bad_col = run(&[
        "--source",
        input,
        "--time",
        "ts",
        "--key",
        "nobody",
        "--window",
        "tumbling:1s",
        "--agg",
        "count",
        "--output",
        o,
    ]);
    assert!(bad_col.contains("nobody"), "{bad_col}");
    let bad_time = run(&[
        "--source",
        input,
        "--time",
        "user",
        "--key",
        "user",
        "--window",
        "tumbling:1s",
        "--agg",
        "count",
        "--output",
        o,
    ]);
    assert!(bad_time.contains("'user'"), "{bad_time}");
}
