//! The web UI and job API of an embedded run (`SLUICE_UI`): the nexmark
//! binary started as a user would, watched and cancelled over HTTP.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{http, Exposition};

const TOKEN: &str = "embedded-test-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn json(port: u16, path: &str) -> Value {
    let (status, _, body) = http(port, "GET", path, Some(TOKEN));
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `f` every 100 ms for up to a minute.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_embedded_job_serves_its_ui_and_can_be_cancelled_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A file, not a pipe: nothing reads a pipe while the job runs.
    let log = dir.path().join("job.log");
    let mut job = Command::new(env!("CARGO_BIN_EXE_nexmark"))
        .args([
            "--query", "q5", "--events", "50000000", "--rate", "50000", "--output",
        ])
        .arg(dir.path().join("out"))
        .args(["--checkpoint-interval", "200ms", "--checkpoint-dir"])
        .arg(dir.path().join("ck"))
        .env("SLUICE_UI", format!("127.0.0.1:{port}"))
        .env("SLUICE_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    // The server is up once the job has started; then the job runs.
    wait_for("the web UI", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let mut status = Value::Null;
    wait_for("records to flow", || {
        status = json(port, "/api/v1/jobs/embedded");
        status["state"] == "RUNNING"
            && status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["records_out"].as_u64() > Some(0))
    });
    assert_eq!(status["name"], "nexmark-q5", "{status}");
    assert!(!status["vertices"].as_array().unwrap().is_empty());
    assert_eq!(json(port, "/api/v1/jobs").as_array().unwrap().len(), 1);
    assert_eq!(json(port, "/api/v1/cluster")["workers_alive"], 1);

    // The API wants the token; the page does not (it asks for it).
    let (code, head, _) = http(port, "GET", "/api/v1/jobs", None);
    assert_eq!(code, 401, "{head}");
    let (code, _, page) = http(port, "GET", "/ui", None);
    assert_eq!(code, 200);
    assert!(page.contains("/ui/app.js"));
    let (code, _, _) = http(port, "GET", "/api/v1/jobs/other", Some(TOKEN));
    assert_eq!(code, 404);

    // q5 emits a row per window and auction as the watermark passes.
    let mut results = Value::Null;
    wait_for("rows at the sink", || {
        results = json(port, "/api/v1/jobs/embedded/results");
        results["sinks"][0]["rows"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    let sink = &results["sinks"][0];
    assert_eq!(
        sink["columns"],
        serde_json::json!(["auction", "window_start", "window_end", "count"]),
        "{results}"
    );
    assert!(sink["rows"].as_array().unwrap().len() <= 20);
    // The metrics a coordinator exposes, for this one job; the checkpoint
    // histograms count each completed checkpoint as it completes.
    let scrape = || {
        let (code, head, text) = http(port, "GET", "/metrics", Some(TOKEN));
        assert_eq!(code, 200, "{head}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        Exposition::parse(&text)
    };
    let m = scrape();
    let bids = m.value(
        "sluice_node_records_total",
        &[
            ("job", "embedded"),
            ("node", "nexmark_bids"),
            ("direction", "out"),
        ],
    );
    assert!(bids.is_some_and(|n| n > 0.0), "{m:?}");
    assert_eq!(m.value("sluice_workers_alive", &[]), Some(1.0));
    assert_eq!(m.value("sluice_jobs", &[("state", "RUNNING")]), Some(1.0));
    assert_eq!(m.types["sluice_job_restarts_total"], "counter");
    // The embedded run measures its subtasks as executors do: this
    // process's memory, each subtask's time accounting and watermark lag.
    assert!(
        m.value(
            "sluice_executor_resident_memory_bytes",
            &[("job", "embedded"), ("executor", "0")]
        )
        .is_some_and(|b| b > 0.0),
        "{m:?}"
    );
    assert_eq!(m.types["sluice_task_busy_seconds_total"], "counter");
    assert_eq!(m.types["sluice_task_watermark_lag_seconds"], "gauge");
    let figures = json(port, "/api/v1/jobs/embedded/metrics");
    let subtasks = figures["subtasks"].as_array().unwrap();
    let slots: usize = status["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["parallelism"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(subtasks.len(), slots, "one entry per subtask: {figures}");
    for s in subtasks {
        let total: u64 = ["busy_ms_per_s", "idle_ms_per_s", "backpressured_ms_per_s"]
            .iter()
            .map(|k| s[k].as_u64().unwrap())
            .sum();
        assert!(total <= 1000, "{s}");
    }
    assert!(
        subtasks.iter().any(|s| s["records_in"].as_u64() > Some(0)),
        "{figures}"
    );
    let count = |m: &Exposition| {
        m.histogram("sluice_checkpoint_duration_seconds", "embedded")
            .map_or(0.0, |(count, _)| count)
    };
    let before = count(&m);
    let mut m = scrape();
    wait_for("two more checkpoints in the histograms", || {
        m = scrape();
        count(&m) >= before + 2.0
    });
    let completed = m
        .value(
            "sluice_job_checkpoints_completed_total",
            &[("job", "embedded")],
        )
        .expect("completed checkpoints");
    let (n, _) = m
        .histogram("sluice_checkpoint_duration_seconds", "embedded")
        .unwrap();
    assert!(
        n >= completed && completed >= 2.0,
        "{n} observed, {completed} completed"
    );
    let (sizes, bytes) = m
        .histogram("sluice_checkpoint_size_bytes", "embedded")
        .unwrap();
    assert_eq!(sizes, n);
    assert!(bytes > 0.0, "q5 checkpoints window state");
    let (aligned, _) = m
        .histogram("sluice_checkpoint_alignment_seconds", "embedded")
        .unwrap();
    assert_eq!(aligned, n);
    let (held, in_flight) = m
        .histogram("sluice_checkpoint_in_flight_bytes", "embedded")
        .unwrap();
    assert_eq!(
        (held, in_flight),
        (n, 0.0),
        "aligned checkpoints hold nothing in flight"
    );

    // Cancelling from the UI ends the process.
    let (code, _, body) = http(port, "POST", "/api/v1/jobs/embedded/cancel", Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = job.kill();
            panic!("the job did not stop after a cancel");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!exit.success(), "a cancelled job does not report success");
    assert!(stderr.to_lowercase().contains("cancel"), "{stderr}");
}
