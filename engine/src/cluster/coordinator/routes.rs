//! The REST API's handlers (axum). Handlers take the manager's lock only
//! briefly; anything that waits (savepoints, artifact files) runs off the
//! lock, and blocking work goes to `spawn_blocking`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::manager::Manager;
use crate::cluster::api::{
    ApiError, Heartbeat, RegisterWorker, RescaleRequest, Rescaled, SavepointRequest,
    SavepointTaken, SubmitJob, Submitted,
};
use crate::cluster::security::Token;
use crate::cluster::ui;
use crate::error::Error;

type Shared = State<Arc<Manager>>;

/// An error answer: status from the error's kind, body `{"error": ...}`.
struct Failure(StatusCode, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Config(_) | Error::Plan { .. } | Error::Decode(_) => StatusCode::BAD_REQUEST,
            Error::Cancelled => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(status, e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

type Answer<T> = Result<Json<T>, Failure>;

/// Passes requests that carry the token; answers others 401.
async fn require_token(State(token): State<Arc<Token>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if token.matches(p.trim()) => next.run(request).await,
        _ => {
            let mut answer = Failure(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required (Authorization: Bearer TOKEN)".into(),
            )
            .into_response();
            answer.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            answer
        }
    }
}

/// Runs `f`, which may wait on storage or executors, off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(Failure::from)
}

/// The API's routes over `manager`; with a `token`, every route but the
/// web UI's page and script requires it.
pub fn router(manager: Arc<Manager>, token: Option<Arc<Token>>) -> Router {
    let api = Router::new()
        .route("/api/v1/jobs", get(jobs).post(submit))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/savepoint", post(savepoint))
        .route("/api/v1/jobs/{id}/rescale", post(rescale))
        .route("/api/v1/jobs/{id}/checkpoints", get(checkpoints))
        .route("/api/v1/jobs/{id}/results", get(results))
        .route(
            "/api/v1/artifacts/{sha256}",
            put(upload)
                .get(download)
                .head(exists)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/workers", get(workers).post(register))
        .route("/api/v1/workers/{id}/heartbeat", post(heartbeat))
        .route("/api/v1/cluster", get(cluster))
        .route("/metrics", get(metrics));
    let api = match token {
        Some(token) => api.route_layer(middleware::from_fn_with_state(token, require_token)),
        None => api,
    };
    api.route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(|| async { ui::page() }))
        .route("/ui/app.js", get(|| async { ui::script() }))
        .with_state(manager)
}

async fn jobs(State(m): Shared) -> Answer<Vec<crate::cluster::api::JobStatus>> {
    Ok(Json(m.jobs()))
}

async fn submit(
    State(m): Shared,
    Json(req): Json<SubmitJob>,
) -> Result<(StatusCode, Json<Submitted>), Failure> {
    let job_id = blocking(move || m.submit(req)).await?;
    Ok((StatusCode::CREATED, Json(Submitted { job_id })))
}

async fn job(State(m): Shared, Path(id): Path<String>) -> Answer<crate::cluster::api::JobStatus> {
    m.job(&id)
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("no job {id}")).into())
}

async fn cancel(
    State(m): Shared,
    Path(id): Path<String>,
) -> Answer<crate::cluster::api::JobStatus> {
    // Cancelling writes the job's metadata (with fsync).
    Ok(Json(blocking(move || m.cancel(&id)).await?))
}

async fn savepoint(
    State(m): Shared,
    Path(id): Path<String>,
    Json(req): Json<SavepointRequest>,
) -> Answer<SavepointTaken> {
    let handle = m.attempt_handle(&id)?;
    let dir = m.resolve_location(&id, &req.dir)?;
    let location = blocking(move || handle.savepoint(dir, req.stop)).await?;
    Ok(Json(SavepointTaken {
        location: location.to_string(),
    }))
}

async fn rescale(
    State(m): Shared,
    Path(id): Path<String>,
    Json(req): Json<RescaleRequest>,
) -> Answer<Rescaled> {
    // Waits for the savepoint; the switch writes the job's metadata.
    Ok(Json(blocking(move || m.rescale(&id, req)).await?))
}

async fn checkpoints(
    State(m): Shared,
    Path(id): Path<String>,
) -> Answer<crate::cluster::api::Checkpoints> {
    m.checkpoints(&id)
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("no job {id}")).into())
}

async fn results(
    State(m): Shared,
    Path(id): Path<String>,
) -> Answer<crate::cluster::api::JobResults> {
    m.results(&id)
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("no job {id}")).into())
}

fn valid_hash(sha: &str) -> Result<(), Failure> {
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
) -> Result<StatusCode, Failure> {
    valid_hash(&sha)?;
    let path = m.meta().artifact_path(&sha);
    if tokio::fs::metadata(&path).await.is_ok() {
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
    let io = |what: &str, e: std::io::Error| {
        Failure::from(Error::io(format!("{what} {}", tmp.display()), e))
    };
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
async fn exists(State(m): Shared, Path(sha): Path<String>) -> Result<StatusCode, Failure> {
    valid_hash(&sha)?;
    match tokio::fs::metadata(m.meta().artifact_path(&sha)).await {
        Ok(_) => Ok(StatusCode::OK),
        Err(_) => Err(Error::NotFound(format!("no artifact {sha}")).into()),
    }
}

async fn download(State(m): Shared, Path(sha): Path<String>) -> Result<Response, Failure> {
    valid_hash(&sha)?;
    let path = m.meta().artifact_path(&sha);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| Failure::from(Error::NotFound(format!("no artifact {sha}"))))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

async fn workers(State(m): Shared) -> Answer<Vec<crate::cluster::api::WorkerInfo>> {
    Ok(Json(m.workers()))
}

async fn register(
    State(m): Shared,
    Json(req): Json<RegisterWorker>,
) -> Answer<crate::cluster::api::Registered> {
    Ok(Json(m.register(req)?))
}

async fn heartbeat(
    State(m): Shared,
    Path(id): Path<String>,
    Json(hb): Json<Heartbeat>,
) -> Answer<crate::cluster::api::HeartbeatReply> {
    // A heartbeat that reports a failed executor writes job metadata.
    let reply = blocking({
        let id = id.clone();
        move || Ok(m.heartbeat(&id, hb))
    })
    .await?;
    reply
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("no worker {id}; register again")).into())
}

async fn cluster(State(m): Shared) -> Answer<crate::cluster::api::ClusterInfo> {
    Ok(Json(m.cluster()))
}

async fn metrics(State(m): Shared) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.metrics_text(),
    )
}
