//! `kafka_to_parquet` end to end against a real broker (tansu): the job
//! process is SIGKILLed at random moments and started again with the same
//! command; its Parquet output must hold every record of the topic exactly
//! once and equal the output of a run without failures. The schema is
//! inferred on the first start and must survive the restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_connectors::kafka::schema_from_checkpoint;
use sluice_connectors::kafka::testing::Broker;

mod common;
use common::{assert_exactly_once, rows, OutputWithin, RUN_LIMIT};

const RECORDS: usize = 150_000;
const PARTITIONS: i32 = 4;

fn produce(broker: &Broker, topic: &str) {
    let values = (0..RECORDS).map(|i| {
        format!(
            r#"{{"id": {i}, "user": "u{}", "amount": {}.5, "ok": {}, "geo": {{"lat": {}, "city": "c{}"}}}}"#,
            i % 97,
            i % 1000,
            i % 2 == 0,
            i % 90,
            i % 13
        )
    });
    broker.produce(topic, PARTITIONS, values).unwrap();
}

fn job(broker: &Broker, topic: &str, out: &Path, ck: Option<&Path>, p: usize) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kafka_to_parquet"));
    c.args(["--brokers", &broker.address(), "--topic", topic])
        .args(["--format", "json", "--until-end", "--parallelism"])
        .arg(p.to_string())
        .arg("--output")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(ck) = ck {
        c.arg("--checkpoint-dir")
            .arg(ck)
            .args(["--checkpoint-interval", "100ms"]);
    }
    c
}

/// Completed checkpoint directories under `ck`.
fn completed_checkpoints(ck: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ck)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("_manifest.json").exists())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Kills the job `kills` times at random moments (parallelism 2), then
/// lets it finish at parallelism `last_p`: positions move to the subtasks
/// that own their partitions after the rescale.
fn killed_run(
    broker: &Broker,
    dir: &Path,
    seed: u64,
    kills: usize,
    last_p: usize,
) -> (BTreeMap<String, usize>, PathBuf, bool) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let out = dir.join(format!("out-{seed}"));
    let ck = dir.join(format!("ck-{seed}"));
    for _ in 0..kills {
        let mut child = job(broker, "events", &out, Some(&ck), 2).spawn().unwrap();
        // Kill at a random moment after the run's first checkpoint (so the
        // next run has something newer to resume from, however slowly this
        // machine starts the process).
        let first = completed_checkpoints(&ck);
        let start = Instant::now();
        while completed_checkpoints(&ck) == first
            && start.elapsed() < Duration::from_secs(30)
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let after = Duration::from_millis(rng.random_range(0..800));
        let start = Instant::now();
        while start.elapsed() < after && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        // SIGKILL: nothing gets flushed or cleaned up.
        let _ = child.kill();
        let _ = child.wait();
    }
    let run = job(broker, "events", &out, Some(&ck), last_p)
        .stderr(Stdio::piped())
        .output_within(RUN_LIMIT);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "seed {seed}: restarted job failed: {log}"
    );
    // Whether the last run resumed from a checkpoint of a killed one.
    let resumed = !log.contains("restored_from=-");
    (rows(&out), out, resumed)
}

#[test]
fn sigkilled_kafka_to_parquet_writes_every_record_exactly_once() {
    let broker = Broker::start().unwrap();
    broker.create_topic("events", PARTITIONS).unwrap();
    produce(&broker, "events");
    let dir = tempfile::tempdir().unwrap();

    // The failure-free reference (no checkpoints).
    let reference = dir.path().join("reference");
    let status = job(&broker, "events", &reference, None, 2)
        .output_within(RUN_LIMIT)
        .status;
    assert!(status.success());
    let want = rows(&reference);
    assert_eq!(want.values().sum::<usize>(), RECORDS);
    assert_eq!(want.len(), RECORDS, "rows are distinct (partition, offset)");
    // Inferred columns: metadata, then the JSON fields with nested geo.
    let first = want.keys().next().unwrap();
    assert_eq!(first.split('|').count(), 3 + 5, "row {first}");
    assert!(
        first.contains("{city: c"),
        "nested object became a struct: {first}"
    );

    let mut resumes = 0;
    // Seed 3 finishes at parallelism 3, seed 4 at 1.
    for (seed, kills, last_p) in [(1, 1, 2), (2, 2, 2), (3, 3, 3), (4, 1, 1)] {
        let (got, out, resumed) = killed_run(&broker, dir.path(), seed, kills, last_p);
        resumes += usize::from(resumed);
        assert_exactly_once(&want, &got, &out, &format!("seed {seed}"));
        // The inferred schema is in the checkpoints, for the restarts.
        let ck = dir.path().join(format!("ck-{seed}"));
        let schema = schema_from_checkpoint(&ck, "kafka_to_parquet", "events")
            .unwrap()
            .expect("the schema is recorded");
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["amount", "geo", "id", "ok", "user"]);
    }
    assert!(
        resumes >= 2,
        "kills landed mid-run: {resumes} of 4 runs resumed"
    );
}

/// `window_agg --source kafka:TOPIC` computes the same windows as the same
/// records read from a JSON-lines file.
#[test]
fn window_agg_over_kafka_matches_the_file_job() {
    let broker = Broker::start().unwrap();
    broker.create_topic("agg", 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..5000)
        .map(|i| {
            format!(
                r#"{{"user": "u{}", "ts": {}, "amount": {}}}"#,
                i % 17,
                1_700_000_000_000i64 + i * 37,
                i % 101
            )
        })
        .collect();
    let file = dir.path().join("input.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    broker.produce("agg", 3, &lines).unwrap();

    let run = |source: &str, out: &Path| {
        let status = Command::new(env!("CARGO_BIN_EXE_window_agg"))
            .args([
                "--source",
                source,
                "--brokers",
                &broker.address(),
                "--until-end",
            ])
            .args(["--time", "ts", "--key", "user", "--window", "tumbling:10s"])
            .args([
                "--agg",
                "count",
                "--agg",
                "sum:amount",
                "--agg",
                "max:amount",
            ])
            .args(["--watermark-delay", "1h", "--parallelism", "2", "--output"])
            .arg(out)
            .output_within(RUN_LIMIT)
            .status;
        assert!(status.success(), "window_agg --source {source}");
        rows(out)
    };
    let want = run(file.to_str().unwrap(), &dir.path().join("from-file"));
    assert!(
        want.len() > 100,
        "enough windows to compare: {}",
        want.len()
    );
    let got = run("kafka:agg", &dir.path().join("from-kafka"));
    assert_eq!(got, want);
}

/// The README's walkthrough: a file's rows into a topic with
/// `file_to_kafka` (the topic created by the broker on first write), read
/// into Parquet with `--until-end`; the same two commands again put the
/// file in twice and read only what is new.
#[test]
fn the_readme_walkthrough_runs_as_written() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (1..=1000)
        .map(|i| format!("{{\"user\": \"u{}\", \"amount\": {i}}}\n", i % 7))
        .collect();
    std::fs::write(dir.path().join("events.jsonl"), lines).unwrap();
    let run = |bin: &str, args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .current_dir(dir.path())
            .output_within(RUN_LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{bin}: {stderr}");
        assert!(
            !stderr.contains("ERROR"),
            "a healthy run logs no error: {stderr}"
        );
        stderr
    };
    let address = broker.address();
    let produce = [
        "--brokers",
        &address,
        "--topic",
        "events",
        "--source",
        "events.jsonl",
    ];
    let read = [
        "--brokers",
        &address,
        "--topic",
        "events",
        "--format",
        "json",
        "--output",
        "out/",
        "--checkpoint-dir",
        "ck/",
        "--until-end",
    ];
    let said = run(env!("CARGO_BIN_EXE_file_to_kafka"), &produce);
    assert!(said.contains("1000 records"), "{said}");
    let said = run(env!("CARGO_BIN_EXE_kafka_to_parquet"), &read);
    assert!(said.contains("1000 records"), "{said}");
    run(env!("CARGO_BIN_EXE_file_to_kafka"), &produce);
    let said = run(env!("CARGO_BIN_EXE_kafka_to_parquet"), &read);
    assert!(said.contains("1000 records"), "only the new ones: {said}");
    assert!(said.contains("resumed from checkpoint"), "{said}");
    let got = rows(&dir.path().join("out"));
    assert_eq!(got.values().sum::<usize>(), 2000, "every record once");

    // librdkafka properties pass through to every client (a third round,
    // with the security protocol said explicitly)...
    let option = ["--kafka-option", "security.protocol=plaintext"];
    run(
        env!("CARGO_BIN_EXE_file_to_kafka"),
        &[&produce[..], &option[..]].concat(),
    );
    let said = run(
        env!("CARGO_BIN_EXE_kafka_to_parquet"),
        &[&read[..], &option[..]].concat(),
    );
    assert!(said.contains("1000 records"), "{said}");
    // ...and one librdkafka does not know fails every job before it
    // starts, naming it; a malformed one is a usage error.
    let bad = ["--kafka-option", "no.such.property=1"];
    for (bin, args) in [
        (env!("CARGO_BIN_EXE_file_to_kafka"), &produce[..]),
        (env!("CARGO_BIN_EXE_kafka_to_parquet"), &read[..]),
    ] {
        let out = Command::new(bin)
            .args(args)
            .args(bad)
            .current_dir(dir.path())
            .output_within(RUN_LIMIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin}: {err}");
        assert!(err.contains("no.such.property"), "{bin}: {err}");
        let out = Command::new(bin)
            .args(args)
            .args(["--kafka-option", "no-equals-sign"])
            .current_dir(dir.path())
            .output_within(RUN_LIMIT);
        assert_eq!(out.status.code(), Some(2), "{bin}");
    }
    assert_eq!(
        rows(&dir.path().join("out")).values().sum::<usize>(),
        3000,
        "nothing more was written"
    );
}
