//! Kafka → Apache Iceberg, end to end against the real broker (tansu):
//! `kafka_to_parquet --iceberg-table` SIGKILLed at random moments after
//! checkpoints, then run to the end; the table is read back by PyIceberg
//! (an independent reader) through the SQL catalog on SQLite, and every
//! record is in it exactly once, one snapshot per committed checkpoint,
//! partitioned by Iceberg transforms. A stream that gains a field evolves
//! the table's schema.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_connectors::kafka::testing::Broker;

mod common;
use common::{OutputWithin, S3Server, RUN_LIMIT};

/// 2026-12-06T07:00:00Z.
const HOUR_07: i64 = 1_796_540_400_000;
const HOUR: i64 = 3_600_000;

/// Records `ids` as JSON, their event times spread over two days.
fn records(ids: std::ops::Range<i64>, extra: &str) -> Vec<String> {
    ids.map(|i| {
        format!(
            r#"{{"id": {i}, "country": "{}", "ts": {}{extra}}}"#,
            ["DE", "FR", "US"][(i % 3) as usize],
            HOUR_07 + (i % 48) * HOUR
        )
    })
    .collect()
}

/// What PyIceberg reads: rows (as sorted-key JSON) by count, and the
/// table's description (columns, spec, snapshots, files).
fn read_table(
    dir: &Path,
    table: &str,
    s3: Option<&S3Server>,
) -> (BTreeMap<String, usize>, serde_json::Value) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python");
    let mut c = Command::new(python);
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_iceberg.py"))
        .arg(dir.join("catalog.db"))
        .args(["sluice", table]);
    if let Some(s3) = s3 {
        s3.configure(&mut c);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "reading {table} with PyIceberg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        *rows.entry(line.to_string()).or_default() += 1;
    }
    let stderr = String::from_utf8(out.stderr).unwrap();
    let info = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no table description from the reader: {stderr}"));
    (rows, info)
}

/// Where the table's files go: a local warehouse, or a bucket.
#[derive(Clone, Copy)]
enum Warehouse<'a> {
    Local,
    Bucket(&'a S3Server),
}

impl Warehouse<'_> {
    fn s3(&self) -> Option<&S3Server> {
        match self {
            Warehouse::Local => None,
            Warehouse::Bucket(s3) => Some(s3),
        }
    }
}

/// `kafka_to_parquet` into table `lake.events`, its catalog `dir/catalog.db`.
fn job(broker: &Broker, dir: &Path, at: Warehouse<'_>, topic: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kafka_to_parquet"));
    c.args(["--brokers", &broker.address(), "--topic", topic])
        .args(["--parallelism", "2", "--iceberg-table", "lake.events"])
        .arg("--iceberg-catalog")
        .arg(dir.join("catalog.db"))
        .arg("--checkpoint-dir")
        .arg(dir.join("ck"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match at {
        Warehouse::Local => c.arg("--iceberg-warehouse").arg(dir.join("lake")),
        Warehouse::Bucket(s3) => {
            s3.configure(&mut c);
            c.args(["--iceberg-warehouse", &s3.url("warehouse")])
                .args(["--upload-part-size", PART])
        }
    };
    c
}

/// Parts of 64 KiB (moto is told to accept them), so files span parts.
const PART: &str = "65536";

fn run_to_end(mut c: Command, what: &str) -> String {
    let out = c.output_within(RUN_LIMIT);
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{what} failed: {log}");
    log
}

/// Completed checkpoints under `ck` (their manifests).
fn checkpoints(ck: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        walk(&path)
                    } else {
                        usize::from(e.file_name() == "_manifest.json")
                    }
                })
                .sum()
        })
    }
    walk(ck)
}

/// The `id` of every row read, with how often it was read.
fn ids(rows: &BTreeMap<String, usize>) -> BTreeMap<i64, usize> {
    let mut out = BTreeMap::new();
    for (row, n) in rows {
        let v: serde_json::Value = serde_json::from_str(row).unwrap();
        *out.entry(v["id"].as_i64().unwrap()).or_default() += n;
    }
    out
}

/// The SIGKILL runs' flags: small files, frequent checkpoints.
const FLAGS: [&str; 7] = [
    "--partition-by",
    "country,dt=date(_timestamp)",
    "--checkpoint-interval",
    "50ms",
    "--until-end",
    "--roll-rows",
    "5000",
];

/// Kills the job twice after checkpoints (the first time mid-run), runs
/// it to the end, and checks the table as PyIceberg reads it: every
/// record once. Returns the rows and the table's description.
fn sigkilled_run(
    dir: &Path,
    at: Warehouse<'_>,
    records_n: i64,
) -> (BTreeMap<String, usize>, serde_json::Value, Broker) {
    let broker = Broker::start().unwrap();
    broker.create_topic("events", 4).unwrap();
    broker
        .produce("events", 4, records(0..records_n, ""))
        .unwrap();
    let ck = dir.join("ck");
    let flags = FLAGS;
    let mut rng = SmallRng::seed_from_u64(11);
    let kills = 2;
    for k in 0..kills {
        let before = checkpoints(&ck);
        let mut child = job(&broker, dir, at, "events", &flags)
            .stderr(std::fs::File::create(dir.join(format!("run-{k}.log"))).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while checkpoints(&ck) == before
            && start.elapsed() < Duration::from_secs(30)
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
        let _ = child.kill();
        let _ = child.wait();
        if k == 0 {
            // The first kill lands mid-run: later runs resume on a table
            // that holds part of the topic.
            let (rows, _) = read_table(dir, "lake.events", at.s3());
            assert!(
                rows.len() < records_n as usize,
                "the first run was not interrupted"
            );
        }
    }
    let log = run_to_end(
        job(&broker, dir, at, "events", &flags),
        "the run after the kills",
    );
    assert!(log.contains("Iceberg table lake.events"), "{log}");

    let (rows, info) = read_table(dir, "lake.events", at.s3());
    let got = ids(&rows);
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "ids read more than once: {twice:?}");
    assert_eq!(
        got.len(),
        records_n as usize,
        "every record once (missing: {:?})",
        (0..records_n)
            .filter(|i| !got.contains_key(i))
            .take(10)
            .collect::<Vec<_>>()
    );
    // The table's partition spec is Iceberg's: identity and day.
    assert_eq!(
        info["spec"],
        serde_json::json!([["country", "identity"], ["dt", "day"]])
    );
    // A row keeps its columns, Kafka's position among them.
    let first: serde_json::Value = serde_json::from_str(rows.keys().next().unwrap()).unwrap();
    for k in ["id", "country", "ts", "_partition", "_offset", "_timestamp"] {
        assert!(first.get(k).is_some(), "{k} in {first}");
    }
    // Snapshots: appends by this job, each naming its checkpoint, chained.
    let snapshots = info["snapshots"].as_array().unwrap();
    assert!(snapshots.len() >= 2, "{info}");
    for s in snapshots {
        assert_eq!(s["summary"]["operation"], "Operation.APPEND", "{s}");
        assert_eq!(s["summary"]["sluice.writer"], "kafka_to_parquet:events");
        assert!(s["summary"]["sluice.checkpoint"].as_str().is_some(), "{s}");
    }
    let total: u64 = snapshots
        .last()
        .and_then(|s| s["summary"]["total-records"].as_str())
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert_eq!(total, records_n as u64);

    (rows, info, broker)
}

#[test]
fn sigkilled_kafka_to_a_partitioned_iceberg_table_is_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let at = Warehouse::Local;
    let (rows, _, broker) = sigkilled_run(dir, at, 200_000);
    let flags = FLAGS;
    // Run again: nothing new, nothing committed twice.
    let log = run_to_end(
        job(&broker, dir, at, "events", &flags),
        "a run with nothing new",
    );
    assert!(log.contains("nothing new"), "{log}");
    let (again, info) = read_table(dir, "lake.events", at.s3());
    assert_eq!(again, rows);
    compact_and_check(dir, at, &rows, &info);
}

/// `compact_parquet --iceberg-table` merges the small files; readers see
/// the same rows once, in fewer files, after a `replace` snapshot.
fn compact_and_check(
    dir: &Path,
    at: Warehouse<'_>,
    rows: &BTreeMap<String, usize>,
    info: &serde_json::Value,
) {
    let before = info["files"].as_u64().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_compact_parquet"));
    c.args(["--iceberg-table", "lake.events", "--iceberg-catalog"])
        .arg(dir.join("catalog.db"))
        .args(["--min-age", "0s", "--target-size", "64MiB"]);
    if let Some(s3) = at.s3() {
        s3.configure(&mut c);
    }
    let out = c.output_within(RUN_LIMIT);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "compact_parquet failed: {log}");
    let (compacted, info) = read_table(dir, "lake.events", at.s3());
    assert_eq!(&compacted, rows);
    let after = info["files"].as_u64().unwrap();
    assert!(
        after < before,
        "{before} files before, {after} after: {log}"
    );
    let last = info["snapshots"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["summary"]["operation"], "Operation.REPLACE", "{last}");
}

#[test]
fn sigkilled_kafka_to_an_iceberg_table_in_s3_is_exactly_once() {
    let s3 = S3Server::start_with(&[("S3_UPLOAD_PART_MIN_SIZE", PART)]);
    let dir = tempfile::tempdir().unwrap();
    let at = Warehouse::Bucket(&s3);
    let (rows, info, _) = sigkilled_run(dir.path(), at, 100_000);
    // Metadata, manifests and data are objects; nothing is left half
    // uploaded.
    let objects = s3.list("warehouse/lake/events/");
    assert!(objects
        .iter()
        .any(|k| k.contains("/metadata/") && k.ends_with(".metadata.json")));
    assert!(objects
        .iter()
        .any(|k| k.contains("/data/") && k.ends_with(".parquet")));
    assert_eq!(s3.uploads_in_progress(), Vec::<String>::new());
    assert!(info["snapshots"].as_array().unwrap().len() >= 2, "{info}");
    // Compaction works in the bucket too: the swap is the table's commit.
    compact_and_check(dir.path(), at, &rows, &info);
}

#[test]
fn a_stream_that_gains_a_field_evolves_the_iceberg_table() {
    let broker = Broker::start().unwrap();
    broker.create_topic("events", 2).unwrap();
    broker.produce("events", 2, records(0..600, "")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--evolve-schema",
        "--until-end",
        "--checkpoint-interval",
        "200ms",
    ];
    let at = Warehouse::Local;
    run_to_end(
        job(&broker, dir.path(), at, "events", &flags),
        "the first run",
    );
    let (_, info) = read_table(dir.path(), "lake.events", None);
    let columns = |info: &serde_json::Value| -> Vec<String> {
        info["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c[1].as_str().unwrap().to_string())
            .collect()
    };
    assert!(!columns(&info).contains(&"city".to_string()), "{info}");

    broker
        .produce("events", 2, records(600..1200, r#", "city": "Berlin""#))
        .unwrap();
    run_to_end(
        job(&broker, dir.path(), at, "events", &flags),
        "the second run",
    );
    let (rows, info) = read_table(dir.path(), "lake.events", None);
    assert!(columns(&info).contains(&"city".to_string()), "{info}");
    let got = ids(&rows);
    assert_eq!(got.len(), 1200);
    assert!(got.values().all(|n| *n == 1));
    // Old rows read the new column as null, new rows have it.
    let cities: BTreeMap<bool, usize> = rows.keys().fold(BTreeMap::new(), |mut m, r| {
        let v: serde_json::Value = serde_json::from_str(r).unwrap();
        *m.entry(v["city"].is_null()).or_default() += 1;
        m
    });
    assert_eq!(cities, BTreeMap::from([(false, 600), (true, 600)]));
}
