//! The part of the REST API that shows and steers jobs (jobs, status,
//! checkpoints, results, workers, cluster, metrics, cancel, savepoint),
//! the web UI's routes and the token check, over any [`JobsView`]: the
//! coordinator's manager, or a job embedded in this process
//! (`SLUICE_UI`). One set of handlers, so the UI and the CLI's reading
//! commands behave the same against both.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::cluster::api::{
    ApiError, Checkpoints, ClusterInfo, JobResults, JobStatus, SavepointRequest, SavepointTaken,
    WorkerInfo,
};
use crate::cluster::security::Token;
use crate::cluster::ui;
use crate::error::{Error, Result};

/// What the job routes read and do. `cancel` and `savepoint` may block
/// (storage, a checkpoint round); they run off the async workers.
pub trait JobsView: Send + Sync + 'static {
    /// Every job, oldest first.
    fn jobs(&self) -> Vec<JobStatus>;
    /// One job.
    fn job(&self, id: &str) -> Option<JobStatus>;
    /// A job's checkpoints.
    fn checkpoints(&self, id: &str) -> Option<Checkpoints>;
    /// The newest rows a job's sinks received.
    fn results(&self, id: &str) -> Option<JobResults>;
    /// The workers.
    fn workers(&self) -> Vec<WorkerInfo>;
    /// Cluster summary.
    fn cluster(&self) -> ClusterInfo;
    /// Prometheus text exposition.
    fn metrics_text(&self) -> String;
    /// Cancels a job that has not ended.
    fn cancel(&self, id: &str) -> Result<JobStatus>;
    /// Takes a savepoint (stopping the job after it if asked).
    fn savepoint(&self, id: &str, request: SavepointRequest) -> Result<SavepointTaken>;
}

/// An error answer: status from the error's kind, body `{"error": ...}`.
pub(crate) struct Failure(pub(crate) StatusCode, pub(crate) String);

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

pub(crate) type Answer<T> = std::result::Result<Json<T>, Failure>;

/// Runs `f`, which may wait on storage or executors, off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(Failure::from)
}

fn found<T>(value: Option<T>, id: &str) -> Answer<T> {
    value
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("no job {id}")).into())
}

/// The job routes over a `V`.
pub fn routes<V: JobsView>() -> Router<Arc<V>> {
    Router::new()
        .route("/api/v1/jobs", get(jobs::<V>))
        .route("/api/v1/jobs/{id}", get(job::<V>))
        .route("/api/v1/jobs/{id}/cancel", post(cancel::<V>))
        .route("/api/v1/jobs/{id}/savepoint", post(savepoint::<V>))
        .route("/api/v1/jobs/{id}/checkpoints", get(checkpoints::<V>))
        .route("/api/v1/jobs/{id}/results", get(results::<V>))
        .route("/api/v1/workers", get(workers::<V>))
        .route("/api/v1/cluster", get(cluster::<V>))
        .route("/metrics", get(metrics::<V>))
}

/// `api` with `token` required on every route (none: `api` as it is).
pub fn secure<S: Clone + Send + Sync + 'static>(
    api: Router<S>,
    token: Option<Arc<Token>>,
) -> Router<S> {
    match token {
        Some(token) => api.route_layer(middleware::from_fn_with_state(token, require_token)),
        None => api,
    }
}

/// The web UI: `/` leads to `/ui`, its page and its script. They carry no
/// data, so they need no token (the page asks for it).
pub fn ui_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(|| async { ui::page() }))
        .route("/ui/app.js", get(|| async { ui::script() }))
}

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

async fn jobs<V: JobsView>(State(v): State<Arc<V>>) -> Json<Vec<JobStatus>> {
    Json(v.jobs())
}

async fn job<V: JobsView>(State(v): State<Arc<V>>, Path(id): Path<String>) -> Answer<JobStatus> {
    found(v.job(&id), &id)
}

async fn cancel<V: JobsView>(State(v): State<Arc<V>>, Path(id): Path<String>) -> Answer<JobStatus> {
    Ok(Json(blocking(move || v.cancel(&id)).await?))
}

async fn savepoint<V: JobsView>(
    State(v): State<Arc<V>>,
    Path(id): Path<String>,
    Json(req): Json<SavepointRequest>,
) -> Answer<SavepointTaken> {
    Ok(Json(blocking(move || v.savepoint(&id, req)).await?))
}

async fn checkpoints<V: JobsView>(
    State(v): State<Arc<V>>,
    Path(id): Path<String>,
) -> Answer<Checkpoints> {
    found(v.checkpoints(&id), &id)
}

async fn results<V: JobsView>(
    State(v): State<Arc<V>>,
    Path(id): Path<String>,
) -> Answer<JobResults> {
    found(v.results(&id), &id)
}

async fn workers<V: JobsView>(State(v): State<Arc<V>>) -> Json<Vec<WorkerInfo>> {
    Json(v.workers())
}

async fn cluster<V: JobsView>(State(v): State<Arc<V>>) -> Json<ClusterInfo> {
    Json(v.cluster())
}

async fn metrics<V: JobsView>(State(v): State<Arc<V>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        v.metrics_text(),
    )
}
