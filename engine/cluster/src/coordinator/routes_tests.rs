//! Tests of the coordinator's routes: requests through the router, as clients send them.

use super::*;
use crate::coordinator::CoordinatorConfig;
use crate::routes::routes;

/// A manager on plain files in `dir`, opened off the async workers.
async fn open_manager(dir: &std::path::Path) -> Arc<Manager> {
    let config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), dir);
    tokio::task::spawn_blocking(move || Manager::open(config))
        .await
        .unwrap()
        .unwrap()
}

/// Serves `manager`'s routes on a loopback port; returns its address.
async fn serve(manager: Arc<Manager>, access: Access) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(manager, access)).await });
    addr
}

/// Every route the OpenAPI document describes is served: none gets
/// axum's answer for a path or method it does not route (an empty
/// 404, or 405).
#[tokio::test]
async fn every_documented_route_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let manager = open_manager(dir.path()).await;
    let addr = serve(manager, Access::open()).await;
    let http = reqwest::Client::new();
    let routes = routes();
    assert!(routes.len() >= 20, "{routes:?}");
    for (method, path) in &routes {
        let route = format!("{method} {path}");
        let path = path
            .replace("{id}", "x")
            .replace("{sha256}", &"0".repeat(64));
        assert!(
            !path.contains('{'),
            "{route}: a parameter the test does not fill"
        );
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = http.request(method.clone(), format!("http://{addr}{path}"));
        if method == reqwest::Method::POST || method == reqwest::Method::PUT {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body("{}");
        }
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let body = answer.bytes().await.unwrap();
        // A HEAD answer has no body to tell the two 404s apart.
        let unrouted_404 =
            status == StatusCode::NOT_FOUND && body.is_empty() && method != reqwest::Method::HEAD;
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !unrouted_404,
            "{route} is not routed: {status}"
        );
    }
    // And the check can fail: an unrouted path gets the empty 404.
    let answer = http
        .get(format!("http://{addr}/api/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert!(answer.bytes().await.unwrap().is_empty());
}

/// The coordinator serves its generated document without a token; a
/// JSON body that does not parse gets a 400 with an `ApiError` naming
/// what is wrong, as the document says of every failure.
#[tokio::test]
async fn the_document_is_served_and_bad_bodies_get_api_errors() {
    let dir = tempfile::tempdir().unwrap();
    let manager = open_manager(dir.path()).await;
    let token = sluice_web::Token::new("t0ken").unwrap();
    let access = Access::new(Some(token), None).unwrap();
    let addr = serve(manager, access).await;
    let http = reqwest::Client::new();

    let answer = http
        .get(format!("http://{addr}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), crate::routes::document());

    for (path, body, want) in [
        ("/api/v1/workers", "{}", "slots"),
        (
            "/api/v1/workers/w-1/heartbeat",
            "[]",
            "malformed request body",
        ),
        (
            "/api/v1/jobs/x/savepoint",
            "not json",
            "malformed request body",
        ),
    ] {
        let answer = http
            .post(format!("http://{addr}{path}"))
            .bearer_auth("t0ken")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{path}");
        let error: ApiError = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        assert!(error.error.contains(want), "{path}: {}", error.error);
    }
    let answer = http
        .get(format!("http://{addr}/api/v1/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        StatusCode::UNAUTHORIZED,
        "the API still wants the token"
    );
}

/// A job's log lines are answered from `since` on, within `limit`;
/// parameters that are not numbers, or out of range, get 400 with an
/// `ApiError`, an unknown job 404, and other parameters (the
/// consistency a client asks of a Raft group) are left alone.
#[tokio::test]
async fn logs_are_read_by_seq_and_garbage_parameters_are_refused() {
    use sluice_protocol::api::{RegisterWorker, RestartPolicy, SubmitJob};
    use sluice_protocol::logs::LogChunk;
    let dir = tempfile::tempdir().unwrap();
    let manager = open_manager(dir.path()).await;
    let m = manager.clone();
    let job = tokio::task::spawn_blocking(move || {
        let sha = crate::client::sha256_hex(b"binary");
        std::fs::write(m.meta().artifact_path(&sha), b"binary").unwrap();
        let description =
            crate::coordinator::manager::tests::description(None, RestartPolicy::None);
        let submission: SubmitJob = serde_json::from_value(serde_json::json!({
            "artifact": sha, "args": [], "description": description,
        }))
        .unwrap();
        let job = m.submit(submission).unwrap();
        let worker = m
            .register(RegisterWorker {
                worker_id: None,
                slots: 1,
                capacity: 1.0,
                host: "127.0.0.1".into(),
            })
            .unwrap()
            .worker_id;
        let chunk = LogChunk {
            job_id: job.clone(),
            attempt: 1,
            executor: 0,
            lines: (0..5).map(|i| format!("line {i}")).collect(),
            time_ms: 7,
            complete: false,
        };
        let heartbeat = Heartbeat {
            executors: Vec::new(),
            logs: vec![chunk],
            process: None,
        };
        m.heartbeat(&worker, heartbeat).unwrap();
        job
    })
    .await
    .unwrap();
    let addr = serve(manager, Access::open()).await;
    let http = reqwest::Client::new();
    let get = |query: String| {
        let http = http.clone();
        async move {
            let answer = http
                .get(format!("http://{addr}{query}"))
                .send()
                .await
                .unwrap();
            (answer.status(), answer.text().await.unwrap())
        }
    };

    let (status, body) = get(format!(
        "/api/v1/jobs/{job}/logs?since=1&limit=2&consistency=leader"
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let logs: JobLogs = serde_json::from_str(&body).unwrap();
    let texts: Vec<&str> = logs.lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["line 1", "line 2"]);
    assert_eq!((logs.next, logs.dropped), (3, 0));
    assert_eq!(logs.lines[0].seq, 1);
    assert_eq!(logs.lines[0].time_ms, Some(7));
    let (_, body) = get(format!("/api/v1/jobs/{job}/logs?tail=1")).await;
    let logs: JobLogs = serde_json::from_str(&body).unwrap();
    assert_eq!(logs.lines.len(), 1);
    assert_eq!((logs.lines[0].seq, logs.next), (4, 5));
    let (status, _) = get(format!("/api/v1/jobs/{job}/logs")).await;
    assert_eq!(status, StatusCode::OK);

    for query in [
        "since=abc",
        "since=-1",
        "since=1.5",
        "since=99999999999999999999999",
        "limit=0",
        "limit=5001",
        "limit=ten",
        "tail=-3",
        "tail=%ZZ",
        "since=1&since=2",
    ] {
        let (status, body) = get(format!("/api/v1/jobs/{job}/logs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let error: ApiError =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{query}: {e}: {body}"));
        assert!(!error.error.is_empty());
    }
    let (status, body) = get("/api/v1/jobs/job-404/logs?since=0".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no job job-404"), "{body}");
}

/// A submission whose job description is of another protocol version
/// is refused naming both versions, before anything else in it is read.
#[tokio::test]
async fn a_description_of_another_version_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let manager = open_manager(dir.path()).await;
    let addr = serve(manager, Access::open()).await;
    let http = reqwest::Client::new();
    let ours = format!("version {}", sluice_protocol::PROTOCOL_VERSION);
    for (body, want) in [
        (
            r#"{"artifact":"x","args":[],"description":{"protocol":2,"name":"old","vertices":7}}"#,
            &["version 2", ours.as_str()][..],
        ),
        (
            r#"{"artifact":"x","args":[],"description":{"name":"older"}}"#,
            &["version 0", ours.as_str()][..],
        ),
        (r#"{"artifact":"x"}"#, &["malformed submission"][..]),
        ("not json", &["malformed submission"][..]),
    ] {
        let answer = http
            .post(format!("http://{addr}/api/v1/jobs"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{body}");
        let text = answer.text().await.unwrap();
        for w in want {
            assert!(text.contains(w), "{body}: {text}");
        }
    }
}
