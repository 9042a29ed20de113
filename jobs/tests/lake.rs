//! Kafka → Parquet as a data lake wants it, end to end against the real
//! broker (tansu) and a real S3 server (moto): partitioned output in a
//! bucket, exactly once across SIGKILLs, files that span checkpoints
//! instead of a file per checkpoint, time partitions closed by the
//! watermark, a quiet topic flushed by inactivity. Output is read back by
//! PyArrow (Hive partitioning), an independent reader.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_connectors::kafka::testing::Broker;

mod common;
use common::{dataset_rows, OutputWithin, S3Server, RUN_LIMIT};

/// 2026-12-06T07:00:00Z.
const HOUR_07: i64 = 1_796_540_400_000;
const HOUR: i64 = 3_600_000;
/// Parts of 64 KiB (moto is told to accept them as S3 accepts 5 MiB ones,
/// and still refuses a smaller part that is not the last): files of a few
/// hundred KiB span several parts and checkpoint tails.
const PART: &str = "65536";

const SCHEMA: &str = r#"[
  {"name": "id", "type": "int64", "nullable": false},
  {"name": "country", "type": "string", "nullable": false},
  {"name": "ts", "type": "timestamp_ms", "nullable": false},
  {"name": "payload", "type": "string", "nullable": false}
]"#;

/// Records `ids`, their event times spread evenly over `[from, from + span)`.
fn records(ids: std::ops::Range<i64>, from: i64, span: i64) -> Vec<String> {
    let n = (ids.end - ids.start).max(1);
    ids.clone()
        .map(|i| {
            // Payload that compresses poorly, so files have some size.
            let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let payload: String = (0..4)
                .map(|_| {
                    x ^= x >> 29;
                    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    format!("{x:016x}")
                })
                .collect();
            format!(
                r#"{{"id": {i}, "country": "{}", "ts": {}, "payload": "{payload}"}}"#,
                ["DE", "FR", "US"][(i % 3) as usize],
                from + (i - ids.start) * span / n
            )
        })
        .collect()
}

struct Job<'a> {
    broker: &'a Broker,
    s3: &'a S3Server,
    schema: &'a Path,
}

impl Job<'_> {
    /// The job's command line; `extra` flags last.
    fn command(&self, topic: &str, output: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kafka_to_parquet"));
        c.args(["--brokers", &self.broker.address(), "--topic", topic])
            .args(["--format", "json", "--schema"])
            .arg(self.schema)
            .args(["--parallelism", "2", "--output", output])
            .args(["--upload-part-size", PART])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        self.s3.configure(&mut c);
        c
    }
}

fn s3_server() -> S3Server {
    S3Server::start_with(&[("S3_UPLOAD_PART_MIN_SIZE", PART)])
}

fn manifests(s3: &S3Server, prefix: &str) -> usize {
    s3.list(prefix)
        .iter()
        .filter(|k| k.ends_with("_manifest.json"))
        .count()
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `c` to its end; returns what it printed (stdout, then stderr).
fn run_to_end(mut c: Command, what: &str) -> String {
    let out = c.output_within(RUN_LIMIT);
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {log}");
    log
}

#[test]
fn sigkilled_kafka_to_partitioned_parquet_on_s3_is_exactly_once() {
    const RECORDS: i64 = 60_000;
    let broker = Broker::start().unwrap();
    broker.create_topic("events", 4).unwrap();
    // Three hours of event time, three countries: nine directories.
    broker
        .produce("events", 4, records(0..RECORDS, HOUR_07, 3 * HOUR))
        .unwrap();
    let s3 = s3_server();
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, SCHEMA).unwrap();
    let job = Job {
        broker: &broker,
        s3: &s3,
        schema: &schema,
    };
    let layout = ["--partition-by", "country,dt=date(ts),hour=hour(ts)"];

    // The reference: one uninterrupted run without checkpoints, locally.
    let reference = dir.path().join("reference");
    run_to_end(
        job.command(
            "events",
            reference.to_str().unwrap(),
            &[&layout[..], &["--until-end"]].concat(),
        ),
        "the reference run",
    );
    let (want, _) = dataset_rows(reference.to_str().unwrap(), None);
    assert_eq!(want.values().sum::<usize>(), RECORDS as usize);
    let first: serde_json::Value = serde_json::from_str(want.keys().next().unwrap()).unwrap();
    for k in ["country", "dt", "hour", "id", "ts", "_offset"] {
        assert!(first.get(k).is_some(), "{k} in {first}");
    }

    // Checkpoints and output in the bucket; killed twice at random moments
    // after a checkpoint completed, then run to the end.
    let output = s3.url("lake/events");
    let ck = s3.url("checkpoints/events");
    let checkpointed = [
        &layout[..],
        &["--checkpoint-dir", &ck, "--checkpoint-interval", "100ms"],
    ]
    .concat();
    let mut rng = SmallRng::seed_from_u64(7);
    let kills = 2;
    let logs: Vec<_> = (0..=kills)
        .map(|k| dir.path().join(format!("run-{k}.log")))
        .collect();
    for log in logs.iter().take(kills) {
        let before = manifests(&s3, "checkpoints/events/");
        let mut child = job
            .command(
                "events",
                &output,
                &[&checkpointed[..], &["--until-end"]].concat(),
            )
            .env("RUST_LOG", "warn,sluice_connectors::parquet=debug")
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while manifests(&s3, "checkpoints/events/") == before
            && start.elapsed() < Duration::from_secs(30)
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..600)));
        kill(child);
    }
    let mut last = job.command(
        "events",
        &output,
        &[&checkpointed[..], &["--until-end"]].concat(),
    );
    last.env("RUST_LOG", "warn,sluice_connectors::parquet=debug");
    let log = run_to_end(last, "the run after the kills");
    assert!(
        !log.contains("restored_from=-"),
        "the last run resumed from a checkpoint: {log}"
    );

    let (got, files) = dataset_rows(&output, Some(&s3));
    let missing = want.iter().filter(|(k, n)| got.get(*k) != Some(n)).count();
    let extra = got.iter().filter(|(k, n)| want.get(*k) != Some(n)).count();
    assert_eq!(
        (missing, extra),
        (0, 0),
        "rows missing and extra after SIGKILLs (of {})",
        want.len()
    );
    // Nothing left behind: no staging objects, no open uploads.
    assert_eq!(s3.list("lake/events/_staging/"), Vec::<String>::new());
    let open = s3.uploads_in_progress();
    assert!(
        open.is_empty(),
        "uploads left open: {open:?}\n{}",
        logs.iter()
            .take(kills)
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    // Files span checkpoints: a few per directory and subtask (each
    // recovery publishes what was open), not one per checkpoint.
    let checkpoints = manifests(&s3, "checkpoints/events/");
    assert!(
        files <= 9 * 2 * (kills + 2),
        "{files} files for 9 directories, 2 subtasks, {kills} kills"
    );
    let objects = s3.objects("lake/events/");
    assert!(
        objects
            .iter()
            .all(|(k, _)| k.contains("/dt=2026-12-06/hour=0")),
        "Hive layout: {objects:?}"
    );
    assert!(
        objects.iter().any(|(_, etag)| etag
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse::<u32>().ok())
            .is_some_and(|n| n > 1)),
        "some file went up in several parts: {objects:?}"
    );
    let _ = checkpoints;
}

/// Waits until `ready` or panics after `secs` seconds.
fn wait_for(secs: u64, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `id`s of rows read back, by `hour`.
fn ids_by_hour(rows: &BTreeMap<String, usize>) -> BTreeMap<i64, Vec<i64>> {
    let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (line, n) in rows {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let hour = v["hour"].as_i64().unwrap_or(-1);
        for _ in 0..*n {
            out.entry(hour).or_default().push(v["id"].as_i64().unwrap());
        }
    }
    for ids in out.values_mut() {
        ids.sort();
    }
    out
}

#[test]
fn the_watermark_closes_time_partitions_and_a_quiet_topic_flushes() {
    let broker = Broker::start().unwrap();
    let s3 = s3_server();
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, SCHEMA).unwrap();
    let job = Job {
        broker: &broker,
        s3: &s3,
        schema: &schema,
    };

    // Hour 07, then the first half of hour 08, on every partition. The
    // job never ends by itself; nothing but the watermark can roll a file
    // (size, age and inactivity limits are far away).
    broker.create_topic("hours", 2).unwrap();
    broker
        .produce("hours", 2, records(0..2000, HOUR_07, HOUR))
        .unwrap();
    broker
        .produce("hours", 2, records(2000..3000, HOUR_07 + HOUR, HOUR / 2))
        .unwrap();
    let output = s3.url("lake/hours");
    let ck = s3.url("checkpoints/hours");
    let child = job
        .command(
            "hours",
            &output,
            &[
                "--partition-by",
                "dt=date(ts),hour=hour(ts)",
                "--watermark-delay",
                "1s",
                "--event-time",
                "ts",
                "--roll-interval",
                "1h",
                "--roll-inactivity",
                "1h",
                "--checkpoint-dir",
                &ck,
                "--checkpoint-interval",
                "200ms",
            ],
        )
        .stderr(std::fs::File::create(dir.path().join("hours.log")).unwrap())
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    wait_for(60, "hour 07 to be published", || {
        s3.list("lake/hours/dt=2026-12-06/hour=07/")
            .iter()
            .any(|k| k.ends_with(".parquet"))
    });
    // Both subtasks' hour-07 files: the watermark passed 08:00 on both.
    wait_for(30, "both subtasks' hour-07 files", || {
        dataset_rows(&output, Some(&s3)).0.values().sum::<usize>() >= 2000
    });
    let (rows, _) = dataset_rows(&output, Some(&s3));
    kill(child);
    let by_hour = ids_by_hour(&rows);
    assert_eq!(
        by_hour.keys().copied().collect::<Vec<_>>(),
        [7],
        "hour 08 is still open: {}",
        std::fs::read_to_string(dir.path().join("hours.log")).unwrap()
    );
    assert_eq!(by_hour[&7], (0..2000).collect::<Vec<_>>());

    // A topic that goes quiet: its file rolls after 2 s without records,
    // long before any other limit.
    broker.create_topic("quiet", 2).unwrap();
    broker
        .produce("quiet", 2, records(0..500, HOUR_07, 1000))
        .unwrap();
    let output = s3.url("lake/quiet");
    let ck = s3.url("checkpoints/quiet");
    let child = job
        .command(
            "quiet",
            &output,
            &[
                "--roll-interval",
                "1h",
                "--roll-inactivity",
                "2s",
                "--checkpoint-dir",
                &ck,
                "--checkpoint-interval",
                "200ms",
            ],
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut got = BTreeMap::new();
    wait_for(60, "the quiet topic's records to be published", || {
        got = dataset_rows(&output, Some(&s3)).0;
        got.values().sum::<usize>() >= 500
    });
    kill(child);
    let mut ids: Vec<i64> = got
        .keys()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..500).collect::<Vec<_>>());
}

/// Issue 17's small files: q5 into Parquet with a checkpoint every 30 ms
/// wrote a file per checkpoint and subtask. Files now span checkpoints.
#[test]
fn q5_with_frequent_checkpoints_writes_few_files() {
    let dir = tempfile::tempdir().unwrap();
    let nexmark = |out: &Path, ck: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nexmark"));
        c.args(["--query", "q5", "--events", "1500000", "--parallelism", "2"])
            .arg("--output")
            .arg(out);
        if let Some(ck) = ck {
            c.arg("--checkpoint-dir")
                .arg(ck)
                .args(["--checkpoint-interval", "30ms"]);
        }
        run_to_end(c, "nexmark q5")
    };
    let reference = dir.path().join("reference");
    nexmark(&reference, None);
    let out = dir.path().join("out");
    let log = nexmark(&out, Some(&dir.path().join("ck")));
    assert_eq!(common::rows(&out), common::rows(&reference));
    let checkpoints: usize = log
        .split("checkpoints=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("a checkpoint count in {log}"));
    let files = std::fs::read_dir(&out).unwrap().count();
    assert!(
        checkpoints >= 5,
        "the run took several checkpoints: {checkpoints}"
    );
    assert!(
        files <= 2,
        "{files} files for 2 subtasks over {checkpoints} checkpoints"
    );
}

/// Every dead letter of `topic` (read from the start): (source position,
/// error) from their headers, waiting until at least `expect` arrived.
fn dead_letters(broker: &Broker, topic: &str, expect: usize) -> Vec<(String, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", "verifier")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let header = |m: &rdkafka::message::BorrowedMessage<'_>, key: &str| {
        m.headers()
            .and_then(|h| h.iter().find(|h| h.key == key)?.value)
            .map(|v| String::from_utf8_lossy(v).to_string())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < expect && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let at = format!(
                "{}@{}",
                header(&m, "sluice.partition"),
                header(&m, "sluice.offset")
            );
            out.push((at, header(&m, "sluice.error")));
        }
    }
    out
}

#[test]
fn json_records_that_gain_fields_evolve_the_files_and_incompatible_ones_are_dead_lettered() {
    let broker = Broker::start().unwrap();
    broker.create_topic("evolving", 2).unwrap();
    broker.create_topic("evolving-dlq", 1).unwrap();
    // v1: id, name, score (integer); v2 adds email; v3 makes score a float.
    // Every 50th v3 record has a number for its name: incompatible.
    let v1 = (0..3000).map(|i| format!(r#"{{"id": {i}, "name": "n{i}", "score": {}}}"#, i % 100));
    let v2 = (3000..6000).map(|i| {
        format!(
            r#"{{"id": {i}, "name": "n{i}", "score": {}, "email": "e{i}@x"}}"#,
            i % 100
        )
    });
    const END: i64 = 40_000;
    let bad = |i: i64| i >= 6000 && i % 50 == 0;
    let v3 = (6000..END).map(|i| {
        if bad(i) {
            format!(r#"{{"id": {i}, "name": {i}, "score": 1}}"#)
        } else {
            format!(
                r#"{{"id": {i}, "name": "n{i}", "score": {}.5, "email": "e{i}@x"}}"#,
                i % 100
            )
        }
    });
    broker.produce("evolving", 2, v1).unwrap();
    broker.produce("evolving", 2, v2).unwrap();
    broker.produce("evolving", 2, v3).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ck = dir.path().join("ck");
    let command = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kafka_to_parquet"));
        c.args(["--brokers", &broker.address(), "--topic", "evolving"])
            .args(["--format", "json", "--evolve-schema", "--until-end"])
            .args(["--dead-letter-topic", "evolving-dlq", "--parallelism", "2"])
            .arg("--output")
            .arg(&out)
            .arg("--checkpoint-dir")
            .arg(&ck)
            .args(["--checkpoint-interval", "100ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    // One SIGKILL once a checkpoint holds an evolved schema, then to the
    // end: the restart resumes with it.
    let evolved = || {
        sluice_connectors::kafka::schema_from_checkpoint(&ck, "kafka_to_parquet", "evolving")
            .ok()
            .flatten()
            .is_some_and(|s| s.field_with_name("email").is_ok())
    };
    let mut child = command().stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !evolved()
        && start.elapsed() < Duration::from_secs(30)
        && child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(child);
    let log = run_to_end(command(), "the run after the kill");
    assert!(!log.contains("restored_from=-"), "{log}");

    let (rows, _) = dataset_rows(out.to_str().unwrap(), None);
    let mut seen = BTreeMap::new();
    for (line, n) in &rows {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["id"].as_i64().unwrap();
        *seen.entry(id).or_insert(0) += n;
        let email = v["email"].as_str();
        let score = v["score"].as_f64().unwrap();
        match id {
            ..3000 => assert_eq!((email, score), (None, (id % 100) as f64), "{line}"),
            3000..6000 => assert_eq!(email, Some(format!("e{id}@x").as_str()), "{line}"),
            _ => assert_eq!(score, (id % 100) as f64 + 0.5, "{line}"),
        }
    }
    let good: BTreeMap<i64, usize> = (0..END).filter(|i| !bad(*i)).map(|i| (i, 1)).collect();
    assert_eq!(seen.len(), good.len(), "distinct good records");
    assert_eq!(seen, good, "every compatible record exactly once");

    // Incompatible records went to the dead-letter topic with the reason
    // (at least once: the killed run may have sent some already).
    let incompatible = (0..END).filter(|i| bad(*i)).count();
    let letters = dead_letters(&broker, "evolving-dlq", incompatible);
    let reasons: std::collections::BTreeSet<&str> =
        letters.iter().map(|(_, e)| e.as_str()).collect();
    assert!(
        reasons
            .iter()
            .all(|e| e.contains("incompatible") && e.contains("name")),
        "{reasons:?}"
    );
    let offsets: std::collections::BTreeSet<&str> =
        letters.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        offsets.len(),
        incompatible,
        "one dead letter per incompatible record"
    );

    // The merged schema is in the checkpoint, for restarts.
    let schema =
        sluice_connectors::kafka::schema_from_checkpoint(&ck, "kafka_to_parquet", "evolving")
            .unwrap()
            .unwrap();
    let types: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    assert_eq!(
        types,
        ["id:Int64", "name:Utf8", "score:Float64", "email:Utf8"]
    );
}

/// Small files from the real broker (a row limit per file), compacted
/// while PyArrow keeps reading the dataset: every read sees every row
/// once, before, during and after.
#[test]
fn compaction_merges_small_files_while_readers_see_every_row_once() {
    const RECORDS: i64 = 20_000;
    let broker = Broker::start().unwrap();
    broker.create_topic("small", 4).unwrap();
    broker
        .produce("small", 4, records(0..RECORDS, HOUR_07, 3 * HOUR))
        .unwrap();
    let s3 = s3_server();
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, SCHEMA).unwrap();
    let job = Job {
        broker: &broker,
        s3: &s3,
        schema: &schema,
    };
    let out = dir.path().join("out");
    let out_str = out.to_str().unwrap().to_string();
    run_to_end(
        job.command(
            "small",
            &out_str,
            &[
                "--partition-by",
                "country,dt=date(ts),hour=hour(ts)",
                "--roll-rows",
                "100",
                "--until-end",
                "--checkpoint-dir",
                dir.path().join("ck").to_str().unwrap(),
                "--checkpoint-interval",
                "100ms",
            ],
        ),
        "the job writing small files",
    );
    let (want, before) = dataset_rows(&out_str, None);
    assert_eq!(want.values().sum::<usize>(), RECORDS as usize);
    assert!(before >= 190, "{before} small files");

    // Readers while compacting: each read that succeeds sees exactly the
    // rows (a read may fail when a file it listed is replaced under it:
    // never a wrong answer).
    let done = std::sync::atomic::AtomicBool::new(false);
    let (reads, compacted) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut ok = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || ok == 0 {
                let python =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python");
                let r = Command::new(python)
                    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_dataset.py"))
                    .arg(&out_str)
                    .output_within(RUN_LIMIT);
                if r.status.success() {
                    let mut got = BTreeMap::new();
                    for line in String::from_utf8(r.stdout).unwrap().lines() {
                        *got.entry(line.to_string()).or_insert(0usize) += 1;
                    }
                    assert!(got == want, "a reader saw other rows during compaction");
                    ok += 1;
                }
            }
            ok
        });
        let log = run_to_end(
            {
                let mut c = Command::new(env!("CARGO_BIN_EXE_compact_parquet"));
                c.args([
                    "--path",
                    &out_str,
                    "--min-age",
                    "0s",
                    "--target-size",
                    "64KiB",
                ]);
                c
            },
            "compaction",
        );
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (reader.join().unwrap(), log)
    });
    assert!(reads >= 1);
    let (got, after) = dataset_rows(&out_str, None);
    assert_eq!(got, want, "the rows after compaction");
    assert!(
        after * 5 <= before,
        "{before} files before, {after} after: {compacted}"
    );
}
