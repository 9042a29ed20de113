//! The web UI in a real browser (headless Chromium over the DevTools
//! protocol), against a live coordinator and against an embedded job: what
//! a user sees, at the window sizes users have, and what the buttons do.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_cluster::local::{LocalCluster, LocalClusterConfig, WorkerPlace};

mod browser;
mod common;
use browser::Browser;

fn sluice_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_nexmark")).with_file_name("sluice");
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build -p sluice-cluster --bin sluice` (cargo test --workspace does)",
        p.display()
    );
    p
}

/// Where screenshots of a test run go (kept for a person to look at).
fn shots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots")
}

/// No element of the page shows a bare `null` (an optional part that was
/// missing, rendered as text).
const NO_NULL: &str = "![...document.querySelectorAll('body *')].some((e) => \
    [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim() === 'null'))";

#[test]
fn the_coordinator_ui_shows_a_job_fully_and_cancels_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalClusterConfig {
        sluice: sluice_bin(),
        dir: dir.path().to_path_buf(),
        host: "127.0.0.1".into(),
        coordinator_args: ["--heartbeat-timeout", "2s", "--heartbeat-interval", "200ms"]
            .map(String::from)
            .to_vec(),
        workers: vec![WorkerPlace::loopback()],
        slots: 2,
        security: None,
        // The browser is not told of a throwaway CA.
        plaintext: true,
        coordinators: 1,
    })
    .unwrap();
    let out = dir.path().join("out");
    let ck = dir.path().join("ck");
    let job = cluster
        .submit(
            1,
            Path::new(env!("CARGO_BIN_EXE_nexmark")),
            &[
                "--query",
                "q5",
                "--events",
                "50000000",
                "--rate",
                "20000",
                "--output",
                out.to_str().unwrap(),
                "--checkpoint-dir",
                ck.to_str().unwrap(),
                "--checkpoint-interval",
                "500ms",
            ],
        )
        .unwrap();

    // The window of a laptop: 1400 px wide.
    let mut b = Browser::start(1400, 900);
    b.open(&format!("{}/ui#job={job}", cluster.url()));
    b.wait_for(
        "the job to run",
        &format!(
            "document.querySelector('#job .state') !== null && \
             document.querySelector('#job .state').textContent === 'RUNNING' && \
             document.querySelector('tr[data-job=\"{job}\"]') !== null"
        ),
    );
    b.wait_for(
        "a completed checkpoint",
        "/completed [1-9]/.test(document.getElementById('job').innerText)",
    );
    // Nothing shows a literal null (a job without an error has none).
    assert_eq!(b.eval(NO_NULL), true, "{}", b.text("#job"));
    // Nothing is cut off: the page is no wider than the window, and the
    // jobs table fits its section.
    let fits = b.eval(
        "document.documentElement.scrollWidth <= window.innerWidth && \
         [...document.querySelectorAll('section')].every((s) => s.scrollWidth <= s.clientWidth)",
    );
    assert_eq!(fits, true, "something is wider than a 1400 px window");

    // The job graph: a box per vertex of the plan, an arrow per edge.
    let (_, _, status) = common::http(cluster.port(), "GET", &format!("/api/v1/jobs/{job}"), None);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let vertices = status["vertices"].as_array().unwrap();
    let edges: usize = vertices
        .iter()
        .map(|v| v["inputs"].as_array().unwrap().len())
        .sum();
    assert!(vertices.len() >= 2 && edges >= 1, "{status}");
    b.wait_for(
        "the job graph",
        &format!(
            "document.querySelectorAll('svg.graph g.vertex').length === {} && \
             document.querySelectorAll('svg.graph path.edge').length === {edges}",
            vertices.len()
        ),
    );
    let named = b.eval(&format!(
        "[...document.querySelectorAll('svg.graph g.vertex title')].map((t) => t.textContent.split('\\n')[0]).join('|') === {}",
        serde_json::Value::from(
            vertices
                .iter()
                .map(|v| v["name"].as_str().unwrap())
                .collect::<Vec<_>>()
                .join("|")
        )
    ));
    assert_eq!(named, true, "the graph's boxes are the plan's vertices");
    // The charts fill from the coordinator's history: records flowing,
    // checkpoints completing, the worker's CPU, the sink's newest rows.
    b.wait_for(
        "the charts to fill",
        "(() => { const c = (t) => document.querySelector(`svg.chart[data-chart^=\"${t}\"]`); \
           return c('Throughput') && Number(c('Throughput').dataset.points) >= 3 \
             && c('Throughput').querySelector('path.line') !== null \
             && Number(c('Checkpoint duration').dataset.points) >= 1 \
             && Number(c('Busy').dataset.points) >= 3 \
             && Number(c('Latency').dataset.points) >= 1 \
             && Number(c(\"Executors' CPU\").dataset.points) >= 1 \
             && document.querySelector('.results-box svg.bars') !== null \
             && Number(document.querySelector('.results-box svg.bars').dataset.bars) >= 1; })()",
    );
    // Records flow: the newest throughput point is above zero.
    let (_, _, history) = common::http(
        cluster.port(),
        "GET",
        &format!("/api/v1/jobs/{job}/history"),
        None,
    );
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let flowing = history["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["source_records_per_s"].as_f64())
        .any(|r| r > 0.0);
    assert!(flowing, "no source rate in the history: {history}");
    // Per subtask, to spot skew: opened, a row per subtask of the attempt,
    // and it stays open across refreshes.
    let (_, _, metrics) = common::http(
        cluster.port(),
        "GET",
        &format!("/api/v1/jobs/{job}/metrics"),
        None,
    );
    let metrics: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    let subtasks = metrics["subtasks"].as_array().unwrap().len();
    assert!(subtasks >= vertices.len(), "{metrics}");
    b.click("details.subtasks summary", &[]);
    std::thread::sleep(Duration::from_millis(1500));
    b.wait_for(
        "the subtask rows",
        &format!(
            "document.querySelector('details.subtasks').open && \
             document.querySelectorAll('details.subtasks tbody tr').length === {subtasks}"
        ),
    );

    // The executors' logs, forwarded by the worker: lines, or why none.
    b.wait_for(
        "the log view",
        "(() => { const p = document.querySelector('pre.logs'); \
           return p !== null && (/a1\\/e0 /.test(p.textContent) || p.textContent.startsWith('No lines yet')); })()",
    );
    assert_eq!(b.eval(NO_NULL), true, "{}", b.text("#job"));
    b.screenshot(&shots().join("coordinator-job.png"));
    b.screenshot_page(&shots().join("coordinator-job-page.png"));

    // The Cancel button cancels the job.
    b.click("#job .actions button:last-child", &[]);
    b.wait_for(
        "the job to be cancelled",
        "document.querySelector('#job .state') && \
         document.querySelector('#job .state').textContent === 'CANCELED'",
    );
    assert_eq!(b.eval(NO_NULL), true);
    let (_, _, status) = common::http(cluster.port(), "GET", &format!("/api/v1/jobs/{job}"), None);
    assert!(status.contains("\"CANCELED\""), "{status}");
}

#[test]
fn an_embedded_jobs_ui_says_how_it_ended_after_its_process_exits() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut job = Command::new(env!("CARGO_BIN_EXE_nexmark"))
        .args([
            "--query", "q5", "--events", "800000", "--rate", "100000", "--output",
        ])
        .arg(dir.path().join("out"))
        .env("SLUICE_UI", format!("127.0.0.1:{port}"))
        .env_remove("SLUICE_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "no web UI");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut b = Browser::start(1400, 900);
    b.open(&format!("http://127.0.0.1:{port}/ui"));
    // The one job is shown without being picked.
    b.wait_for("the job", "document.querySelector('#job .state') !== null");
    assert_eq!(b.eval(NO_NULL), true, "{}", b.text("#job"));
    assert!(job.wait().unwrap().success());
    // After the process is gone: how the job ended, and that nothing is
    // wrong; never RUNNING, never "coordinator unreachable".
    b.wait_for(
        "the page to notice the end",
        "document.getElementById('status').textContent.includes('the job ended')",
    );
    let state = b.text("#job .state");
    assert_eq!(state, "FINISHED");
    let status = b.text("#status");
    assert!(!status.contains("coordinator"), "{status}");
    b.screenshot(&shots().join("embedded-ended.png"));
}
