//! The coordinator's REST API: the job routes of [`jobs_api`] over the
//! manager, plus what only a coordinator does (submissions, rescales,
//! artifacts, worker registration and heartbeats). Handlers take the
//! manager's lock only briefly; anything that waits (savepoints, artifact
//! files) runs off the lock, and blocking work goes to `spawn_blocking`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use sluice_engine::error::{Error, Result};
use sluice_protocol::api::{
    Heartbeat, RegisterWorker, RescaleRequest, Rescaled, SubmitJob, Submitted,
};
use sluice_web::{self as jobs_api, Answer, Failure, Token};

use super::manager::Manager;

/// An engine error as the API answers it.
fn failure(e: Error) -> Failure {
    sluice_web::Error::from(e).into()
}

/// Runs `f`, which may wait on storage, off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<T, Failure> {
    jobs_api::blocking(move || f().map_err(sluice_web::Error::from)).await
}

/// A request body that carries a job description: its protocol version is
/// checked before the rest is read, so a CLI of another release gets an
/// answer naming both versions.
fn versioned<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &[u8],
) -> std::result::Result<T, Failure> {
    #[derive(serde::Deserialize)]
    struct Probe {
        description: serde_json::Value,
    }
    let probe: Probe = serde_json::from_slice(body)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("malformed {what}: {e}")))?;
    let description = serde_json::to_vec(&probe.description)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("malformed {what}: {e}")))?;
    sluice_protocol::version::decode::<serde_json::Value>("the job description", &description)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, e.to_string()))?;
    serde_json::from_slice(body)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("malformed {what}: {e}")))
}

type Shared = State<Arc<Manager>>;

/// The API's routes over `manager`; with a `token`, every route but the
/// web UI's page and script requires it.
pub fn router(manager: Arc<Manager>, token: Option<Arc<Token>>) -> Router {
    let api = jobs_api::routes::<Manager>()
        .route("/api/v1/jobs", post(submit))
        .route("/api/v1/jobs/{id}/rescale", post(rescale))
        .route(
            "/api/v1/artifacts/{sha256}",
            put(upload)
                .get(download)
                .head(exists)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/workers", post(register))
        .route("/api/v1/workers/{id}/heartbeat", post(heartbeat));
    jobs_api::secure(api, token)
        .merge(jobs_api::ui_routes())
        .with_state(manager)
}

/// A standby's routes: every request gets 503, naming the leader.
pub fn standby(data_dir: std::path::PathBuf) -> Router {
    Router::new().fallback(move || {
        let dir = data_dir.clone();
        async move {
            let leader = tokio::task::spawn_blocking(move || super::leader::leader_url(&dir))
                .await
                .ok()
                .flatten();
            let message = match &leader {
                Some(url) => format!("this coordinator is a standby; the leader is at {url}"),
                None => "this coordinator is a standby".to_string(),
            };
            let mut answer = Failure(StatusCode::SERVICE_UNAVAILABLE, message).into_response();
            if let Some(v) = leader.and_then(|u| header::HeaderValue::from_str(&u).ok()) {
                answer.headers_mut().insert("x-sluice-leader", v);
            }
            answer
        }
    })
}

async fn submit(
    State(m): Shared,
    body: axum::body::Bytes,
) -> std::result::Result<(StatusCode, Json<Submitted>), Failure> {
    let req: SubmitJob = versioned("submission", &body)?;
    let job_id = blocking(move || m.submit(req)).await?;
    Ok((StatusCode::CREATED, Json(Submitted { job_id })))
}

async fn rescale(
    State(m): Shared,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Answer<Rescaled> {
    let req: RescaleRequest = versioned("rescale request", &body)?;
    // Waits for the savepoint; the switch writes the job's metadata.
    Ok(Json(blocking(move || m.rescale(&id, req)).await?))
}

fn valid_hash(sha: &str) -> std::result::Result<(), Failure> {
    if sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("{sha:?} is not a lowercase hex SHA-256"),
        ))
    }
}

/// Streams the body to a temporary file, hashing as it goes; renamed into
/// place only when the content matches its address.
async fn upload(
    State(m): Shared,
    Path(sha): Path<String>,
    body: Body,
) -> std::result::Result<StatusCode, Failure> {
    valid_hash(&sha)?;
    let path = m.meta().artifact_path(&sha);
    if tokio::fs::metadata(&path).await.is_ok() {
        // Fresh again: unused artifacts are removed only once they are old.
        let touched = blocking({
            let m = m.clone();
            let sha = sha.clone();
            move || m.meta().touch_artifact(&sha)
        })
        .await;
        if let Err(Failure(_, e)) = touched {
            tracing::warn!(artifact = %sha, error = %e, "cannot refresh an artifact's time");
        }
        // Read the body anyway: a server that answers before the request
        // is fully sent makes the client fail with a broken pipe.
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
        return Ok(StatusCode::OK);
    }
    let tmp = m.meta().artifact_temp(&sha);
    let io =
        |what: &str, e: std::io::Error| failure(Error::io(format!("{what} {}", tmp.display()), e));
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| io("creating", e))?;
    let mut hasher = Sha256::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(Failure(
                    StatusCode::BAD_REQUEST,
                    format!("upload interrupted: {e}"),
                ));
            }
        };
        hasher.update(&chunk);
        if let Err(e) = file.write_all(&chunk).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io("writing", e));
        }
    }
    let got = format!("{:x}", hasher.finalize());
    if got != sha {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("the uploaded content hashes to {got}, not {sha}"),
        ));
    }
    file.sync_all().await.map_err(|e| io("syncing", e))?;
    drop(file);
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| io("renaming", e))?;
    Ok(StatusCode::CREATED)
}

/// 200 when the artifact is stored, 404 otherwise; no body.
async fn exists(
    State(m): Shared,
    Path(sha): Path<String>,
) -> std::result::Result<StatusCode, Failure> {
    valid_hash(&sha)?;
    match tokio::fs::metadata(m.meta().artifact_path(&sha)).await {
        Ok(_) => Ok(StatusCode::OK),
        Err(_) => Err(failure(Error::NotFound(format!("no artifact {sha}")))),
    }
}

async fn download(
    State(m): Shared,
    Path(sha): Path<String>,
) -> std::result::Result<Response, Failure> {
    valid_hash(&sha)?;
    let path = m.meta().artifact_path(&sha);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| failure(Error::NotFound(format!("no artifact {sha}"))))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

async fn register(
    State(m): Shared,
    Json(req): Json<RegisterWorker>,
) -> Answer<sluice_protocol::api::Registered> {
    Ok(Json(blocking(move || m.register(req)).await?))
}

async fn heartbeat(
    State(m): Shared,
    Path(id): Path<String>,
    Json(hb): Json<Heartbeat>,
) -> Answer<sluice_protocol::api::HeartbeatReply> {
    // A heartbeat that reports a failed executor writes job metadata.
    let reply = blocking({
        let id = id.clone();
        move || Ok(m.heartbeat(&id, hb))
    })
    .await?;
    reply
        .map(Json)
        .ok_or_else(|| failure(Error::NotFound(format!("no worker {id}; register again"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::CoordinatorConfig;
    use crate::routes::ROUTES;

    /// Every route `api::ROUTES` lists (and `openapi.json` describes) is
    /// served: none gets axum's answer for a path or method it does not
    /// route (an empty 404, or 405).
    #[tokio::test]
    async fn every_listed_route_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
        let manager = tokio::task::spawn_blocking(move || Manager::open(config))
            .await
            .unwrap()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(manager, None)).await });
        let http = reqwest::Client::new();
        for route in ROUTES {
            let (method, path) = route.split_once(' ').unwrap();
            let path = path
                .replace("{id}", "x")
                .replace("{sha256}", &"0".repeat(64));
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
            let unrouted_404 = status == StatusCode::NOT_FOUND
                && body.is_empty()
                && method != reqwest::Method::HEAD;
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

    /// A submission whose job description is of another protocol version
    /// is refused naming both versions, before anything else in it is read.
    #[tokio::test]
    async fn a_description_of_another_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
        let manager = tokio::task::spawn_blocking(move || Manager::open(config))
            .await
            .unwrap()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(manager, None)).await });
        let http = reqwest::Client::new();
        for (body, want) in [
            (
                r#"{"artifact":"x","args":[],"description":{"protocol":2,"name":"old","vertices":7}}"#,
                &["version 2", "version 3"][..],
            ),
            (
                r#"{"artifact":"x","args":[],"description":{"name":"older"}}"#,
                &["version 0", "version 3"][..],
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
}
