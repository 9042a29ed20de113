//! The job binaries as a new user runs them, against a real broker
//! (tansu): `kafka_to_parquet` run twice, resumed, rerun with and without
//! `--until-end` and with `--fresh`; bad records; a wrong broker address;
//! `--help` of every binary. Each test reproduces a defect of issue 17
//! (in its doc comment) and checks what the user sees: exit status,
//! stderr, and the Parquet output read back with the parquet crate.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sluice_connectors::kafka::testing::Broker;

mod common;
use common::{rows, OutputWithin, RUN_LIMIT};

fn kafka_to_parquet(broker: &str, topic: &str, out: &Path, ck: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kafka_to_parquet"));
    c.args(["--brokers", broker, "--topic", topic, "--format", "json"])
        .arg("--output")
        .arg(out)
        .arg("--checkpoint-dir")
        .arg(ck)
        .args(["--checkpoint-interval", "200ms", "--parallelism", "2"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run(c: &mut Command) -> (bool, String) {
    let Output { status, stderr, .. } = c.output_within(RUN_LIMIT);
    (
        status.success(),
        String::from_utf8_lossy(&stderr).to_string(),
    )
}

fn records(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            format!(
                r#"{{"id": {i}, "user": "u{}", "ts": {}}}"#,
                i % 7,
                1_700_000_000_000i64 + i as i64
            )
        })
        .collect()
}

fn total(out: &Path) -> usize {
    rows(out).values().sum()
}

/// No log line of a healthy run is an ERROR (librdkafka's end-of-partition
/// events were logged as `ERROR rdkafka::client: … PartitionEOF`).
fn assert_no_errors(log: &str, what: &str) {
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "{what}: a healthy run logged errors:\n{}",
        errors.join("\n")
    );
}

/// Issue 17 items 1, 2 and 12: the flags of a run decide whether it is
/// bounded (a run without `--until-end` after a bounded one never ended
/// and wrote nothing; a bounded rerun read nothing new and said only
/// "0 records"); a resumed run says where it resumes; `--fresh` starts over
/// and moves the old checkpoints and output aside; no ERROR lines.
#[test]
fn kafka_to_parquet_reruns_resume_visibly_and_obey_their_flags() {
    let broker = Broker::start().unwrap();
    broker.create_topic("events", 2).unwrap();
    broker.produce("events", 2, records(0, 1000)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (out, ck) = (dir.path().join("out"), dir.path().join("ck"));
    let addr = broker.address();

    // First bounded run: reads everything, says it starts from the beginning.
    let (ok, log) = run(kafka_to_parquet(&addr, "events", &out, &ck).arg("--until-end"));
    assert!(ok, "{log}");
    assert_no_errors(&log, "first run");
    assert!(
        log.contains("holds no checkpoint yet: starting from the beginning"),
        "{log}"
    );
    assert!(log.contains("kafka_to_parquet: 1000 records"), "{log}");
    assert!(log.contains("started from the beginning"), "{log}");
    assert_eq!(total(&out), 1000);

    // More records; the same bounded command reads the new ones, and says
    // where it resumes and where it stopped.
    broker.produce("events", 2, records(1000, 500)).unwrap();
    let (ok, log) = run(kafka_to_parquet(&addr, "events", &out, &ck).arg("--until-end"));
    assert!(ok, "{log}");
    assert_no_errors(&log, "second run");
    assert!(
        log.contains("resuming job 'kafka_to_parquet' from checkpoint"),
        "{log}"
    );
    assert!(
        log.contains("--fresh starts from the beginning instead"),
        "{log}"
    );
    assert!(
        log.contains("kafka source resuming from the checkpoint"),
        "{log}"
    );
    assert!(log.contains("partition 0: 500 → 750 (end 750)"), "{log}");
    assert!(log.contains("kafka_to_parquet: 500 records"), "{log}");
    assert!(log.contains("resumed from checkpoint"), "{log}");
    assert_eq!(total(&out), 1500);
    assert_eq!(rows(&out).len(), 1500, "every record once");

    // Nothing new: the rerun says so instead of a bare "0 records".
    let (ok, log) = run(kafka_to_parquet(&addr, "events", &out, &ck).arg("--until-end"));
    assert!(ok, "{log}");
    assert!(log.contains("0 records (nothing new"), "{log}");
    assert!(
        log.contains("nothing new after the checkpointed offsets"),
        "{log}"
    );

    // Without --until-end the job is unbounded whatever the checkpoint
    // holds: it reads new records (it wrote nothing before) until stopped.
    broker.produce("events", 2, records(1500, 200)).unwrap();
    let mut child = kafka_to_parquet(&addr, "events", &out, &ck)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while total(&out) < 1700 && start.elapsed() < Duration::from_secs(120) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "an unbounded run ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(total(&out), 1700, "the unbounded run read the new records");
    assert_eq!(rows(&out).len(), 1700);

    // --fresh: the old checkpoints and output are moved aside, not deleted,
    // and the run reads the topic from the beginning.
    let (ok, log) =
        run(kafka_to_parquet(&addr, "events", &out, &ck).args(["--until-end", "--fresh"]));
    assert!(ok, "{log}");
    assert!(log.contains("--fresh: moved"), "{log}");
    assert!(log.contains("kafka_to_parquet: 1700 records"), "{log}");
    assert_eq!(total(&out), 1700);
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".old-"))
        .collect();
    assert_eq!(aside.len(), 2, "ck and out moved aside: {aside:?}");
    let old_out = aside
        .iter()
        .find(|p| p.to_string_lossy().contains("out.old-"))
        .unwrap();
    assert_eq!(total(old_out), 1700, "the earlier output is kept");
}

/// Issue 17 item 4: a record that can never be decoded failed the job
/// only after 10 restarts over 35 s; now at once, naming topic, partition
/// and offset and the flags that get past it. Item 10: a record with an
/// out-of-range event time is such a record too (it panicked the window).
#[test]
fn bad_records_fail_at_once_with_the_way_out() {
    let broker = Broker::start().unwrap();
    broker.create_topic("bad", 1).unwrap();
    let mut values = records(0, 20);
    values.insert(7, r#"{"id": "seven", "user": "u0", "ts": 1}"#.to_string());
    values.insert(
        12,
        format!(r#"{{"id": 12, "user": "u5", "ts": {}}}"#, i64::MAX),
    );
    broker.produce("bad", 1, &values).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = broker.address();
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        r#"[{"name": "id", "type": "int64"}, {"name": "user", "type": "string"}, {"name": "ts", "type": "int64"}]"#,
    )
    .unwrap();

    let job = |name: &str| {
        let mut c = kafka_to_parquet(
            &addr,
            "bad",
            &dir.path().join(name),
            &dir.path().join(format!("ck-{name}")),
        );
        c.arg("--until-end").arg("--schema").arg(&schema);
        c
    };
    let (ok, log) = run(&mut job("fail"));
    assert!(!ok, "{log}");
    assert!(log.contains("topic 'bad' partition 0 offset 7"), "{log}");
    assert!(
        log.contains("--skip-bad-records") && log.contains("--dead-letter-topic"),
        "{log}"
    );
    assert!(
        !log.contains("restarting from the latest checkpoint"),
        "a bad record is not retried:\n{log}"
    );

    let (ok, log) = run(job("skip").arg("--skip-bad-records"));
    assert!(ok, "{log}");
    // The record at i64::MAX decodes: kafka_to_parquet has no event time.
    assert!(
        log.contains("21 records") && log.contains("skipped=1"),
        "{log}"
    );

    // The event time: window_agg over the topic rejects the record at
    // i64::MAX under the same policy.
    let agg = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_window_agg"));
        c.args(["--source", "kafka:bad", "--brokers", &addr, "--until-end"])
            .arg("--schema")
            .arg(&schema)
            .args([
                "--time",
                "ts",
                "--key",
                "user",
                "--window",
                "tumbling:10s",
                "--agg",
                "count",
            ])
            .arg("--output")
            .arg(dir.path().join(format!("agg{}", extra.len())))
            .arg("--checkpoint-dir")
            .arg(dir.path().join(format!("ck-agg{}", extra.len())))
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        run(&mut c)
    };
    let (ok, log) = agg(&[]);
    assert!(!ok, "{log}");
    assert!(
        log.contains("offset 7") || log.contains("offset 12"),
        "the first bad record is named: {log}"
    );
    assert!(
        !log.contains("panicked") && !log.contains("restarting from the latest checkpoint"),
        "{log}"
    );
    let (ok, log) = agg(&["--skip-bad-records"]);
    assert!(ok, "{log}");
    assert!(
        log.contains("20 input records") && log.contains("skipped=2"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// Issue 17 item 5: a wrong broker address meant 30 s of silence before
/// an error. Now a warning that the brokers cannot be reached comes first
/// (after two seconds without an answer), and the final error names them.
#[test]
fn an_unreachable_broker_is_reported_while_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, r#"[{"name": "id", "type": "int64"}]"#).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kafka_to_parquet"))
        .args(["--brokers", "127.0.0.1:1", "--topic", "t"])
        .arg("--schema")
        .arg(&schema)
        .arg("--output")
        .arg(dir.path().join("out"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(|l| l.ok())
        .collect();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let warning = lines
        .iter()
        .position(|l| l.contains("WARN") && l.contains("cannot reach the Kafka brokers"))
        .unwrap_or_else(|| panic!("no warning while retrying:\n{}", lines.join("\n")));
    assert!(
        lines[warning].contains("127.0.0.1:1") && lines[warning].contains("still trying"),
        "{}",
        lines[warning]
    );
    let error = lines
        .iter()
        .position(|l| {
            l.contains("Error:") && l.contains("cannot reach the Kafka brokers at 127.0.0.1:1")
        })
        .unwrap_or_else(|| panic!("no final error:\n{}", lines.join("\n")));
    assert!(warning < error, "the warning comes while it still tries");
}

/// Issue 17 item 8: every job binary's `--help` opened with the crate's
/// description, and `example --help` ran the job.
#[test]
fn every_job_binary_has_its_own_help_and_parses_its_arguments() {
    for (bin, opening) in [
        (
            env!("CARGO_BIN_EXE_kafka_to_parquet"),
            "Every record of a Kafka topic into Parquet",
        ),
        (
            env!("CARGO_BIN_EXE_window_agg"),
            "Windowed aggregation of files or a Kafka topic",
        ),
        (
            env!("CARGO_BIN_EXE_nexmark"),
            "Runs a Nexmark benchmark query",
        ),
        (env!("CARGO_BIN_EXE_example"), "The README example"),
        (
            env!("CARGO_BIN_EXE_file_to_kafka"),
            "Every row of a file (JSON lines, CSV or Parquet",
        ),
        (
            env!("CARGO_BIN_EXE_compact_parquet"),
            "Merges the small Parquet files",
        ),
    ] {
        let out = Command::new(bin).arg("--help").output_within(RUN_LIMIT);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin} --help: {help}");
        assert!(help.starts_with(opening), "{bin} --help opens with: {help}");
        assert!(help.contains("Usage:"), "{help}");
        assert!(!help.contains("Sluice reference jobs"), "{bin}: {help}");
        // `-h` shows the short about, which came from the crate too.
        let out = Command::new(bin).arg("-h").output_within(RUN_LIMIT);
        let short = String::from_utf8_lossy(&out.stdout);
        assert!(short.starts_with(opening), "{bin} -h opens with: {short}");
        let out = Command::new(bin).arg("--version").output_within(RUN_LIMIT);
        assert!(out.status.success());
        let out = Command::new(bin)
            .arg("--no-such-flag")
            .output_within(RUN_LIMIT);
        assert_eq!(out.status.code(), Some(2), "{bin} rejects a wrong flag");
        if !bin.ends_with("example") {
            // A parallelism of 0 ran at 1 without a word.
            let out = Command::new(bin)
                .args(["--parallelism", "0"])
                .output_within(RUN_LIMIT);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{bin}: {err}");
            assert!(err.contains("--parallelism"), "{err}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_example"))
        .arg("--help")
        .output_within(RUN_LIMIT);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("processed"),
        "example --help must not run the job"
    );
}

/// Issue 17 item 12 for a job without Kafka: nexmark rerun on the same
/// checkpoint directory says that it resumes (it printed only a tiny
/// event count before), and `--fresh` runs it again from the start.
#[test]
fn nexmark_says_when_it_resumes_and_fresh_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let nexmark = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nexmark"));
        c.args(["--query", "q1", "--events", "20000", "--parallelism", "1"])
            .arg("--checkpoint-dir")
            .arg(&ck)
            .args(extra)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::piped());
        let out = c.output_within(RUN_LIMIT);
        assert!(out.status.success());
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let records = |line: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("source_records="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no source_records in {line}"))
    };
    let (first, _) = nexmark(&[]);
    assert!(records(&first) > 10_000, "{first}");
    assert!(first.contains("started from the beginning"), "{first}");
    let (again, log) = nexmark(&[]);
    assert!(
        log.contains("resuming job 'nexmark-q1' from checkpoint"),
        "{log}"
    );
    assert!(again.contains("resumed from checkpoint"), "{again}");
    assert_eq!(records(&again), 0, "{again}");
    let (fresh, log) = nexmark(&["--fresh"]);
    assert!(log.contains("--fresh: moved"), "{log}");
    assert_eq!(records(&fresh), records(&first), "{fresh}");
}

/// A bounded job shows how far it is: a bar on a terminal (records read
/// of the total, rate, time left), a line in the log every interval with
/// `--progress log`, and nothing in a pipe by default (a log file stays
/// clean).
#[test]
fn a_bounded_job_shows_its_progress() {
    let dir = tempfile::tempdir().unwrap();
    // q5 reads bids only: 92% of the events.
    let args = |out: &str| {
        vec![
            "--query".to_string(),
            "q5".into(),
            "--events".into(),
            "600000".into(),
            "--rate".into(),
            "200000".into(),
            "--output".into(),
            dir.path().join(out).to_string_lossy().into_owned(),
        ]
    };
    let total = "552,000";
    let run = |out: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_nexmark"))
            .args(args(out))
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output_within(RUN_LIMIT)
    };

    // In the log, on request.
    let out = run(
        "log",
        &["--progress", "log", "--progress-interval", "500ms"],
    );
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("progress: ")).collect();
    assert!(lines.len() >= 2, "{log}");
    let mut last = 0u64;
    for l in &lines {
        assert!(l.contains(&format!("of {total} records (")), "{l}");
        assert!(l.contains("records/s"), "{l}");
        let pct: u64 = l
            .split(" records (")
            .nth(1)
            .and_then(|r| r.split('%').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no percentage in {l}"));
        assert!(pct >= last && pct <= 100, "{lines:?}");
        last = pct;
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("source_records=552000"));

    // Nothing by default when stderr is not a terminal.
    let out = run("pipe", &[]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("records"), "a pipe got progress: {log}");

    // A bar on a terminal: `script` gives the job a pseudo-terminal.
    let command = std::iter::once(env!("CARGO_BIN_EXE_nexmark").to_string())
        .chain(args("tty"))
        .collect::<Vec<_>>()
        .join(" ");
    let typescript = dir.path().join("typescript");
    let out = Command::new("script")
        .args(["-qec", &command])
        .arg(&typescript)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output_within(RUN_LIMIT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert!(
        seen.contains(&format!("/{total} records, ")),
        "no bar: {seen}"
    );
    assert!(
        seen.contains("records/s, about "),
        "no rate or time left: {seen}"
    );
    assert!(seen.contains("source_records=552000"), "{seen}");
}

#[test]
fn explain_prints_the_plan_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let out = Command::new(env!("CARGO_BIN_EXE_nexmark"))
        .args([
            "--query",
            "q5",
            "--events",
            "1000000",
            "--parallelism",
            "2",
            "--explain",
        ])
        .arg("--checkpoint-dir")
        .arg(&ck)
        .env_remove("RUST_LOG")
        .output_within(RUN_LIMIT);
    let (plan, log) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{log}");
    assert!(plan.contains("parallelism 2"), "{plan}");
    assert!(plan.contains("checkpoints: every 1s into"), "{plan}");
    // q5's window is fed through a hash exchange on the auction key.
    assert!(plan.contains("<- [") && plan.contains("Hash"), "{plan}");
    assert!(!plan.contains("source_records="), "nothing ran: {plan}");
    assert!(!ck.exists(), "the checkpoint location is not touched");
    // --explain and --fresh together are refused.
    let both = Command::new(env!("CARGO_BIN_EXE_nexmark"))
        .args(["--query", "q1", "--explain", "--fresh"])
        .output_within(RUN_LIMIT);
    assert!(!both.status.success());
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
}

fn window_agg(source: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_window_agg"));
    c.arg("--source")
        .arg(source)
        .args(["--time", "ts", "--key", "user", "--window", "tumbling:10s"])
        .args(["--agg", "count", "--agg", "sum:v", "--parallelism", "1"])
        .arg("--output")
        .arg(out)
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    run(&mut c)
}

/// Issue 17 item 10 with files, as found by feeding `window_agg` malformed
/// files: a record at `i64::MAX` panicked the window operator and one at
/// `i64::MIN` was dropped silently; a sum over UInt64 wrapped to a
/// negative Int64 and the job exited 0.
#[test]
fn window_agg_over_extreme_values_names_the_bad_line_and_never_wraps() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(
        &input,
        format!(
            "{{\"user\": \"a\", \"ts\": 1000, \"v\": 1}}\n\
             {{\"user\": \"a\", \"ts\": {}, \"v\": 2}}\n\
             {{\"user\": \"b\", \"ts\": {}, \"v\": 3}}\n\
             {{\"user\": \"a\", \"ts\": 2000, \"v\": 4}}\n",
            i64::MAX,
            i64::MIN
        ),
    )
    .unwrap();
    let (ok, log) = window_agg(&input, &dir.path().join("out1"), &[]);
    assert!(!ok, "{log}");
    assert!(
        log.contains("events.jsonl line 2") && log.contains("outside the supported range"),
        "{log}"
    );
    assert!(log.contains("--skip-bad-records"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    let out = dir.path().join("out2");
    let (ok, log) = window_agg(&input, &out, &["--skip-bad-records"]);
    assert!(ok, "{log}");
    assert!(log.contains("skipped=2"), "{log}");
    let got: Vec<String> = rows(&out).into_keys().collect();
    assert_eq!(got, ["a|1970-01-01T00:00:00|1970-01-01T00:00:10|2|5"]);

    // UInt64 values near the top: the sum widens to a decimal.
    let pq = dir.path().join("big.parquet");
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("user", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("ts", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("v", arrow::datatypes::DataType::UInt64, false),
    ]));
    let batch = arrow::array::RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(arrow::array::StringArray::from(vec!["a", "a"])),
            std::sync::Arc::new(arrow::array::Int64Array::from(vec![1000, 2000])),
            std::sync::Arc::new(arrow::array::UInt64Array::from(vec![u64::MAX, u64::MAX])),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&pq).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let out = dir.path().join("out3");
    let (ok, log) = window_agg(&pq, &out, &[]);
    assert!(ok, "{log}");
    let got: Vec<String> = rows(&out).into_keys().collect();
    assert_eq!(
        got,
        [format!(
            "a|1970-01-01T00:00:00|1970-01-01T00:00:10|2|{}",
            2 * u128::from(u64::MAX)
        )]
    );
}
