//! Tokens with roles and the audit log, against a real `sluice
//! coordinator` process over real HTTP: the read-only token reads and is
//! refused (403) every state-changing route; the operator token does
//! both; a token file open to other users stops the coordinator at start;
//! every state-changing request, refused ones included, is one JSON line
//! in `DATA_DIR/audit.log` (no GETs, never a token), and garbage or
//! concurrent requests neither break the log nor the API.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_cluster::local::{LocalCluster, LocalClusterConfig, LocalSecurity};
use sluice_web::AuditEntry;

const OPERATOR: &str = "operator-0123456789abcdef";
const READER: &str = "reader-0123456789abcdef";
/// A syntactically valid artifact address (SHA-256 of nothing).
const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

fn private_file(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A coordinator with both tokens (no workers: nothing here runs a job).
fn coordinator(dir: &Path) -> LocalCluster {
    let operator = dir.join("operator.token");
    let reader = dir.join("read.token");
    private_file(&operator, &format!("{OPERATOR}\n"), 0o600);
    private_file(&reader, &format!("{READER}\n"), 0o600);
    LocalCluster::start(LocalClusterConfig {
        sluice: sluice_bin(),
        dir: dir.join("cluster"),
        host: "127.0.0.1".into(),
        coordinator_args: vec!["--read-token-file".into(), reader.display().to_string()],
        workers: Vec::new(),
        slots: 1,
        security: Some(LocalSecurity {
            token_file: operator,
        }),
        // Raw HTTP requests: these tests are about tokens, not TLS.
        plaintext: true,
        coordinators: 1,
    })
    .expect("coordinator starts")
}

fn audit_log(c: &LocalCluster) -> PathBuf {
    c.dir().join("coordinator").join("audit.log")
}

/// The audit log's entries; every line must be one whole entry.
fn entries(c: &LocalCluster) -> Vec<AuditEntry> {
    let text = std::fs::read_to_string(audit_log(c)).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
        .collect()
}

/// Waits until the log has `n` entries (it is written by a thread of its
/// own, just after the answer), then returns them.
fn wait_for_entries(c: &LocalCluster, n: usize) -> Vec<AuditEntry> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = entries(c);
        if e.len() >= n || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: &'static str,
) -> u16 {
    let mut request = http.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if !body.is_empty() {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    request
        .send()
        .await
        .expect("the API answers")
        .status()
        .as_u16()
}

/// Every state-changing route, with a body that gets past parsing where
/// that is cheap (the operator's answer just must not be 401 or 403).
const CHANGES: &[(&str, &str, &str)] = &[
    ("POST", "/api/v1/jobs", "{}"),
    ("POST", "/api/v1/jobs/j-none/cancel", ""),
    ("POST", "/api/v1/jobs/j-none/savepoint", "{}"),
    ("POST", "/api/v1/jobs/j-none/rescale", "{\"parallelism\":2}"),
    ("PUT", "/api/v1/artifacts/{EMPTY}", ""),
    ("POST", "/api/v1/workers", "{\"slots\":1}"),
    (
        "POST",
        "/api/v1/workers/w-none/heartbeat",
        "{\"executors\":[]}",
    ),
];

const READS: &[&str] = &[
    "/api/v1/jobs",
    "/api/v1/workers",
    "/api/v1/cluster",
    "/metrics",
    "/ui",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_token_reads_and_only_the_operator_token_changes_things() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let base = c.coordinator_url(0);
    let http = reqwest::Client::new();

    for path in READS {
        for token in [READER, OPERATOR] {
            let s = call(&http, &base, reqwest::Method::GET, path, Some(token), "").await;
            assert_eq!(s, 200, "GET {path}");
        }
        if *path != "/ui" {
            let s = call(&http, &base, reqwest::Method::GET, path, None, "").await;
            assert_eq!(s, 401, "GET {path} without a token");
        }
    }
    // A job's executors' logs are a read like its results: the read token
    // gets past the guard (to 404, no such job), no token does not.
    let logs = "/api/v1/jobs/j-none/logs?since=0&limit=10";
    for token in [READER, OPERATOR] {
        let s = call(&http, &base, reqwest::Method::GET, logs, Some(token), "").await;
        assert_eq!(s, 404, "GET {logs}");
    }
    let s = call(&http, &base, reqwest::Method::GET, logs, None, "").await;
    assert_eq!(s, 401, "GET {logs} without a token");
    assert!(
        entries(&c).is_empty(),
        "reads are not audited: {:?}",
        entries(&c)
    );

    let mut audited = 0;
    let mut answered = std::collections::HashMap::new();
    for (method, path, body) in CHANGES {
        let path = path.replace("{EMPTY}", EMPTY_SHA);
        let method: reqwest::Method = method.parse().unwrap();
        let read = call(&http, &base, method.clone(), &path, Some(READER), body).await;
        assert_eq!(read, 403, "{method} {path} with the read token");
        let none = call(&http, &base, method.clone(), &path, None, body).await;
        assert_eq!(none, 401, "{method} {path} without a token");
        let op = call(&http, &base, method.clone(), &path, Some(OPERATOR), body).await;
        assert!(
            op != 401 && op != 403,
            "{method} {path} with the operator token: {op}"
        );
        if !path.ends_with("/heartbeat") {
            audited += 3;
        }
        answered.insert(path, op);
    }
    // The operator's upload of the empty binary and its registration went
    // through; the audit log has every state-changing request but the
    // heartbeats, in order, each naming who asked and what came of it.
    let log = wait_for_entries(&c, audited);
    assert_eq!(log.len(), audited, "{log:#?}");
    let text = std::fs::read_to_string(audit_log(&c)).unwrap();
    assert!(
        !text.contains(OPERATOR) && !text.contains(READER),
        "no token in the log"
    );
    let mode = std::fs::metadata(audit_log(&c))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the audit log is private");
    let upload = format!("/api/v1/artifacts/{EMPTY_SHA}");
    let by = |path: &str, role: Option<&str>| {
        log.iter()
            .find(|e| e.path == path && e.role.as_deref() == role)
            .unwrap_or_else(|| panic!("no entry for {path} by {role:?}: {log:#?}"))
    };
    for (path, status) in &answered {
        if !path.ends_with("/heartbeat") {
            assert_eq!(by(path, Some("operator")).status, *status, "{path}");
        }
    }
    let e = by(&upload, Some("operator"));
    assert_eq!(e.method, "PUT", "{e:?}");
    assert!(e.token.as_deref().is_some_and(|t| t.starts_with("sha256:")));
    assert!(e
        .client
        .as_deref()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    let r = by(&upload, Some("read"));
    assert_eq!(r.status, 403);
    assert_ne!(r.token, e.token, "the two tokens have different ids");
    let anonymous = by(&upload, None);
    assert_eq!((anonymous.status, anonymous.token.as_ref()), (401, None));
    assert!(log.iter().all(|e| !e.path.ends_with("/heartbeat")));
    assert!(log.iter().all(|e| e.method != "GET"));

    // The CLI with the read token: `jobs` works, `cancel` says why not.
    let reader_file = dir.path().join("read.token");
    let cli = |args: &[&str]| {
        Command::new(sluice_bin())
            .args(args)
            .args(["--coordinator", &base, "--token-file"])
            .arg(&reader_file)
            .output()
            .unwrap()
    };
    let out = cli(&["jobs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["cancel", "j-none"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("403") && err.contains("operator token"),
        "{err}"
    );
}

/// Raw bytes to the API port: whatever comes back, the coordinator keeps
/// serving and the log keeps whole lines.
fn raw(port: u16, bytes: &[u8]) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_concurrent_requests_keep_the_log_whole() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let base = c.coordinator_url(0);
    let port = c.port();

    let garbage: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02garbage\r\n\r\n".to_vec(),
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{".to_vec(),
        b"POST /api/v1/jobs/%22%0A%7B/cancel HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \"\n\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"POST /api/v1/jobs/x\"y/cancel HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nContent-Length: 0\r\n\r\n".to_vec(),
        format!("DELETE /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READER}\r\nContent-Length: 0\r\n\r\n").into_bytes(),
    ];
    let threads: Vec<_> = garbage
        .into_iter()
        .map(|g| std::thread::spawn(move || raw(port, &g)))
        .collect();
    let http = reqwest::Client::new();
    let mut calls = Vec::new();
    for i in 0..60 {
        let http = http.clone();
        let base = base.clone();
        calls.push(tokio::spawn(async move {
            let token = [Some(OPERATOR), Some(READER), None][i % 3];
            call(
                &http,
                &base,
                reqwest::Method::POST,
                &format!("/api/v1/jobs/j-{i}/cancel"),
                token,
                "",
            )
            .await
        }));
    }
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(statuses.iter().filter(|s| **s == 404).count(), 20);
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 20);
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 20);

    // 60 cancels, and at least the garbage that reached a route; every
    // line parses (entries() panics otherwise).
    let log = wait_for_entries(&c, 60);
    for i in 0..60 {
        let path = format!("/api/v1/jobs/j-{i}/cancel");
        assert_eq!(
            log.iter().filter(|e| e.path == path).count(),
            1,
            "{path}: {log:#?}"
        );
    }
    // And the API still answers.
    let s = call(
        &http,
        &base,
        reqwest::Method::GET,
        "/api/v1/jobs",
        Some(READER),
        "",
    )
    .await;
    assert_eq!(s, 200);
}

/// As ssh with a private key: a token file others may read stops the
/// coordinator (and a worker, and the CLI) with an error naming the file
/// and the fix.
#[test]
fn a_token_file_open_to_others_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let read = dir.path().join("read-token");
    private_file(&read, "reader-token\n", 0o600);
    for (flag, file) in [("--token-file", &token), ("--read-token-file", &read)] {
        private_file(&token, "operator-token\n", 0o600);
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = Command::new(sluice_bin())
            .args(["coordinator", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--token-file")
            .arg(&token)
            .arg("--read-token-file")
            .arg(&read)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: started with a 0644 token");
        assert!(
            err.contains(&file.display().to_string())
                && err.contains("0644")
                && err.contains("chmod 600"),
            "{flag}: {err}"
        );
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = Command::new(sluice_bin())
        .args([
            "jobs",
            "--coordinator",
            "http://127.0.0.1:9",
            "--token-file",
        ])
        .arg(&token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("0640"), "{err}");
    // A read token without an operator token would leave the API open.
    let out = Command::new(sluice_bin())
        .args(["coordinator", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--read-token-file")
        .arg(&read)
        .env_remove("SLUICE_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--read-token-file needs --token-file"),
        "{err}"
    );
}
