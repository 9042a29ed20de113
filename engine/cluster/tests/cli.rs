//! The `sluice` binary's user-facing failures (bad flags, missing settings,
//! bad config files, unreachable coordinator, unusable job binaries) and
//! the submit path against a stand-in for the coordinator's two submit
//! routes. End-to-end runs with the real coordinator live elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use sluice_protocol::api::{ApiError, SubmitJob, Submitted};

/// Every variable the CLI reads: a developer's shell must not leak into
/// the tests.
const VARS: &[&str] = &[
    "SLUICE_CONFIG",
    "SLUICE_COORDINATOR",
    "SLUICE_DATA_DIR",
    "SLUICE_SLOTS",
    "SLUICE_LISTEN",
    "SLUICE_CAPACITY",
    "SLUICE_PARALLELISM",
    "SLUICE_CONTROL_LISTEN",
    "SLUICE_HEARTBEAT_TIMEOUT",
    "SLUICE_HEARTBEAT_INTERVAL",
    "SLUICE_SCHEDULING",
    "SLUICE_MAX_RESTARTS",
    "SLUICE_RESTART_DELAY",
    "SLUICE_SAVEPOINT_DIR",
    "SLUICE_DESCRIBE",
    "SLUICE_EXECUTOR",
];

fn sluice(args: &[&str]) -> Output {
    sluice_with(args, &[])
}

fn sluice_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    for v in VARS {
        cmd.env_remove(v);
    }
    cmd.env("RUST_LOG", "warn")
        .args(args)
        .envs(env.iter().copied());
    cmd.output().expect("sluice runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_fails_with(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "should fail; stdout: {}", stdout(o));
    let err = stderr(o);
    for n in needles {
        assert!(err.contains(n), "stderr lacks '{n}':\n{err}");
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    path
}

#[test]
fn bad_flag_is_a_usage_error() {
    let o = sluice(&["jobs", "--bogus"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--bogus"), "{}", stderr(&o));

    let o = sluice(&["coordinator", "--heartbeat-timeout", "soon"]);
    assert_fails_with(&o, &["--heartbeat-timeout"]);

    let o = sluice(&["frobnicate"]);
    assert_fails_with(&o, &["frobnicate"]);
}

#[test]
fn missing_settings_say_where_they_can_come_from() {
    let o = sluice(&["jobs"]);
    assert_fails_with(&o, &["--coordinator", "SLUICE_COORDINATOR", "[client]"]);
    let o = sluice(&[
        "worker",
        "--coordinator",
        "http://127.0.0.1:1",
        "--slots",
        "2",
    ]);
    assert_fails_with(&o, &["--data-dir", "SLUICE_DATA_DIR"]);
    let o = sluice(&["jobs", "--coordinator", "localhost:8080"]);
    assert_fails_with(&o, &["http://host:port"]);
}

#[test]
fn unreachable_coordinator_is_a_clear_error() {
    for args in [
        &["jobs", "--coordinator", "http://127.0.0.1:1"][..],
        &["status", "j1", "--coordinator", "http://127.0.0.1:1"][..],
    ] {
        let o = sluice(args);
        assert_fails_with(
            &o,
            &["cannot talk to the coordinator at http://127.0.0.1:1"],
        );
    }
    // The environment configures it as well as the flag does.
    let o = sluice_with(
        &["workers"],
        &[("SLUICE_COORDINATOR", "http://127.0.0.1:1")],
    );
    assert_fails_with(
        &o,
        &["cannot talk to the coordinator at http://127.0.0.1:1"],
    );
}

#[test]
fn config_file_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, "[client]\ncoordinatr = \"http://x:1\"\n").expect("write");
    let o = sluice(&["--config", file.to_str().expect("utf-8"), "jobs"]);
    assert_fails_with(&o, &["coordinatr", "sluice.toml"]);

    let o = sluice(&["jobs", "--config", "/nonexistent/sluice.toml"]);
    assert_fails_with(&o, &["/nonexistent/sluice.toml"]);

    // A valid file is used: its coordinator is the one that cannot be reached.
    std::fs::write(&file, "[client]\ncoordinator = \"http://127.0.0.1:1\"\n").expect("write");
    let o = sluice_with(
        &["jobs"],
        &[("SLUICE_CONFIG", file.to_str().expect("utf-8"))],
    );
    assert_fails_with(&o, &["http://127.0.0.1:1"]);
}

#[test]
fn submit_refuses_unusable_binaries() {
    let url = "http://127.0.0.1:1";
    let o = sluice(&["submit", "--coordinator", url, "/nonexistent/job"]);
    assert_fails_with(&o, &["/nonexistent/job", "not found"]);

    let dir = tempfile::tempdir().expect("tempdir");
    let failing = script(dir.path(), "failing", "echo 'no --input given' >&2\nexit 3");
    let o = sluice(&[
        "submit",
        "--coordinator",
        url,
        failing.to_str().expect("utf-8"),
    ]);
    assert_fails_with(&o, &["describing the job failed", "no --input given"]);

    let silent = script(dir.path(), "silent", "exit 0");
    let o = sluice(&[
        "submit",
        "--coordinator",
        url,
        silent.to_str().expect("utf-8"),
    ]);
    assert_fails_with(&o, &["without writing a job description"]);
}

/// What the stand-in coordinator saw.
#[derive(Default)]
struct Seen {
    artifacts: Vec<(String, Vec<u8>)>,
    jobs: Vec<SubmitJob>,
}

type Shared = Arc<Mutex<Seen>>;

async fn put_artifact(
    State(seen): State<Shared>,
    UrlPath(sha): UrlPath<String>,
    body: Bytes,
) -> Result<(), (StatusCode, Json<ApiError>)> {
    let actual: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != sha {
        return Err((
            StatusCode::BAD_REQUEST,
            Json(ApiError {
                error: format!("content hashes to {actual}"),
            }),
        ));
    }
    seen.lock()
        .expect("lock")
        .artifacts
        .push((sha, body.to_vec()));
    Ok(())
}

/// Stored artifacts answer 200, others 404 (the client then uploads).
async fn head_artifact(State(seen): State<Shared>, UrlPath(sha): UrlPath<String>) -> StatusCode {
    let stored = seen
        .lock()
        .expect("lock")
        .artifacts
        .iter()
        .any(|(s, _)| *s == sha);
    if stored {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn post_job(
    State(seen): State<Shared>,
    Json(job): Json<SubmitJob>,
) -> Result<Json<Submitted>, (StatusCode, Json<ApiError>)> {
    if job.description.name == "refuse-me" {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ApiError {
                error: "not enough slots for parallelism 64".into(),
            }),
        ));
    }
    seen.lock().expect("lock").jobs.push(job);
    Ok(Json(Submitted {
        job_id: "job-1".into(),
    }))
}

/// Cancels "job-1": answers the job as it is then.
async fn cancel_job(
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, (StatusCode, Json<ApiError>)> {
    if id != "job-1" {
        return Err(no_job().await);
    }
    Ok(Json(serde_json::json!({
        "id": "job-1", "name": "wordcount", "state": "CANCELED", "attempt": 1, "restarts": 0,
        "artifact": "a", "args": [], "submitted_ms": 0, "updated_ms": 0, "error": null,
        "latest_checkpoint": null, "rejected_stale": 0, "placement": [], "nodes": [],
        "vertices": [], "parallelism": 1, "workdir": null, "rescaling_to": null,
        "restart": {"kind": "none"}
    })))
}

async fn no_job() -> (StatusCode, Json<ApiError>) {
    (
        StatusCode::NOT_FOUND,
        Json(ApiError {
            error: "no such job".into(),
        }),
    )
}

/// The job binary's describe mode, as a script: it writes a plan whose
/// name is its first argument and whose parallelism is the one it was given
/// (`CURRENT`: this build's protocol version; `PROTOCOL` overrides it).
const DESCRIBE: &str = r#"
cat > "$SLUICE_DESCRIBE" <<EOF
{"protocol":${PROTOCOL:-CURRENT},"name":"$1","parallelism":${SLUICE_PARALLELISM:-1},"max_parallelism":128,
 "vertices":[{"id":0,"name":"src","parallelism":${SLUICE_PARALLELISM:-1},"source":true,"nodes":[[0,"src"]]}],
 "graph_nodes":1,"checkpoint":null,"restart":{"kind":"none"}}
EOF
"#;

#[test]
fn submit_uploads_the_binary_and_prints_the_job_id() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route(
            "/api/v1/artifacts/{sha256}",
            put(put_artifact).head(head_artifact),
        )
        .route("/api/v1/jobs", post(post_job))
        .route("/api/v1/jobs/{id}", get(no_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .with_state(Arc::clone(&seen));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let describe = DESCRIBE.replace("CURRENT", &sluice_protocol::PROTOCOL_VERSION.to_string());
    let job = script(dir.path(), "job", &describe);
    let job = job.to_str().expect("utf-8");
    let o = sluice(&[
        "submit",
        "--coordinator",
        &url,
        "--parallelism",
        "3",
        job,
        "--",
        "wordcount",
        "--input",
        "x",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "job-1\n", "the job id alone on stdout");

    {
        let seen = seen.lock().expect("lock");
        let bytes = std::fs::read(job).expect("read job");
        assert_eq!(seen.artifacts.len(), 1);
        assert_eq!(seen.artifacts[0].1, bytes);
        let submitted = &seen.jobs[0];
        assert_eq!(submitted.artifact, seen.artifacts[0].0);
        assert_eq!(submitted.args, ["wordcount", "--input", "x"]);
        assert_eq!(submitted.parallelism, Some(3));
        assert_eq!(submitted.description.name, "wordcount");
        assert_eq!(
            submitted.description.parallelism, 3,
            "SLUICE_PARALLELISM reached the binary"
        );
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(submitted.workdir.as_deref(), cwd.to_str());
    }

    // A binary of another release is refused before anything is uploaded,
    // naming both versions.
    let before = seen.lock().expect("lock").artifacts.len();
    let o = sluice_with(
        &["submit", "--coordinator", &url, job, "--", "old"],
        &[("PROTOCOL", "2")],
    );
    let ours = format!("version {}", sluice_protocol::PROTOCOL_VERSION);
    assert_fails_with(&o, &["version 2", &ours, "not a job binary"]);
    assert_eq!(seen.lock().expect("lock").artifacts.len(), before);

    // A refusal carries the coordinator's reason and status.
    let o = sluice(&["submit", "--coordinator", &url, job, "--", "refuse-me"]);
    assert_fails_with(&o, &["not enough slots for parallelism 64", "422"]);
    let o = sluice(&["status", "nope", "--coordinator", &url]);
    assert_fails_with(&o, &["no such job", "404"]);

    // A cancel says what became of the job.
    let o = sluice(&["cancel", "job-1", "--coordinator", &url]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "job-1 CANCELED\n");
    let o = sluice(&["cancel", "job-9", "--coordinator", &url]);
    assert_fails_with(&o, &["no such job", "404"]);
}
