//! The coordinator's REST API: the job routes of [`jobs_api`] over the
//! manager, plus what only a coordinator does (submissions, rescales,
//! artifacts, worker registration and heartbeats). Handlers take the
//! manager's lock only briefly; anything that waits (savepoints, artifact
//! files) runs off the lock, and blocking work goes to `spawn_blocking`.
//! Artifacts stream both ways: no handler holds a whole binary.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};

use sluice_engine::error::{Error, Result};
use sluice_protocol::api::{
    Heartbeat, RegisterWorker, RescaleRequest, Rescaled, SubmitJob, Submitted,
};
use sluice_web::{self as jobs_api, Answer, Failure, Token};

use super::artifacts::{ArtifactError, Uploaded, DOWNLOAD_CHUNK};
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
    if super::jobs::is_sha256(sha) {
        Ok(())
    } else {
        Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("{sha:?} is not a lowercase hex SHA-256"),
        ))
    }
}

/// A store error as the API answers it.
fn artifact_failure(e: ArtifactError) -> Failure {
    let status = match &e {
        ArtifactError::BadId(_) | ArtifactError::Mismatch { .. } => StatusCode::BAD_REQUEST,
        ArtifactError::Interrupted(_) => StatusCode::BAD_REQUEST,
        ArtifactError::NotFound(_) => StatusCode::NOT_FOUND,
        ArtifactError::TooLarge { .. } | ArtifactError::StoreFull { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        // The store's fault, not the request's; it was moved aside, so
        // a retry finds nothing and an upload replaces it.
        ArtifactError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        ArtifactError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Failure(status, e.to_string())
}

/// Streams the body to a temporary file of its own, hashing as it goes;
/// renamed into place only when the content matches its address (see
/// [`super::artifacts`]). 201 when stored, 200 when a verified copy was.
async fn upload(
    State(m): Shared,
    Path(sha): Path<String>,
    body: Body,
) -> std::result::Result<StatusCode, Failure> {
    valid_hash(&sha)?;
    // Exact when the request said its Content-Length.
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    let stored = m
        .meta()
        .artifacts()
        .upload(&sha, declared, body.into_data_stream())
        .await
        .map_err(artifact_failure)?;
    Ok(match stored {
        Uploaded::Created => StatusCode::CREATED,
        Uploaded::AlreadyStored => StatusCode::OK,
    })
}

/// 200 when the artifact is stored and verified, 404 otherwise (a corrupt
/// one is moved aside first, so the client uploads it again); no body.
async fn exists(
    State(m): Shared,
    Path(sha): Path<String>,
) -> std::result::Result<StatusCode, Failure> {
    valid_hash(&sha)?;
    match m.meta().artifacts().open_verified_async(&sha).await {
        Ok(_) => Ok(StatusCode::OK),
        Err(ArtifactError::Corrupt { .. }) => Err(failure(Error::NotFound(format!(
            "no artifact {sha} (the stored one was corrupt)"
        )))),
        Err(e) => Err(artifact_failure(e)),
    }
}

/// Streams the verified binary from the file descriptor that was verified,
/// a chunk at a time: memory per download stays at a chunk, whatever the
/// binary's size.
async fn download(
    State(m): Shared,
    Path(sha): Path<String>,
) -> std::result::Result<Response, Failure> {
    valid_hash(&sha)?;
    let (file, len) = m
        .meta()
        .artifacts()
        .open_verified_async(&sha)
        .await
        .map_err(artifact_failure)?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, DOWNLOAD_CHUNK);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
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
