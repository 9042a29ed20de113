//! The job routes (jobs, status, checkpoints, results, figures per
//! subtask, workers, cluster, metrics, cancel, savepoint) over any [`JobsView`], the web UI's routes,
//! the guard in front of them (token, role, audit log), and how a failure
//! is answered. The handlers and their
//! OpenAPI descriptions are in [`handlers`](crate::handlers).

use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use sluice_protocol::api::{
    ApiError, Checkpoints, ClusterInfo, JobResults, JobStatus, SavepointRequest, SavepointTaken,
    WorkerInfo,
};
use sluice_protocol::metrics::JobMetrics;

use crate::audit::{self, AuditEntry};
use crate::error::{Error, Result};
use crate::handlers::{
    cancel, charts, checkpoints, cluster, job, job_history, job_metrics, jobs, metrics, page,
    results, root, savepoint, script, workers, workers_load,
};
use crate::history::History;
use crate::metrics::Metrics;
use crate::security::{Access, Role};

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
    /// A job's figures per subtask and executor process (current attempt).
    fn job_metrics(&self, id: &str) -> Option<JobMetrics>;
    /// The workers.
    fn workers(&self) -> Vec<WorkerInfo>;
    /// Cluster summary.
    fn cluster(&self) -> ClusterInfo;
    /// Cancels a job that has not ended.
    fn cancel(&self, id: &str) -> Result<JobStatus>;
    /// Takes a savepoint (stopping the job after it if asked).
    fn savepoint(&self, id: &str, request: SavepointRequest) -> Result<SavepointTaken>;
    /// The recent figures behind the UI's charts, sampled by
    /// [`spawn_sampler`](crate::history::spawn_sampler).
    fn history(&self) -> &History;
    /// The histograms observed as things happened (checkpoints); `/metrics`
    /// adds what the view shows at the time of the scrape.
    fn metrics(&self) -> &Metrics;
}

/// An error answer: status from the error's kind, body `{"error": ...}`.
pub struct Failure(pub StatusCode, pub String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Invalid(_) | Error::Config(_) => StatusCode::BAD_REQUEST,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Internal(_) | Error::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(status, e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

/// A JSON request body whose rejection is answered like every other
/// failure: 400 with an [`ApiError`] naming what is wrong (axum's own
/// rejections are plain text, with 415 or 422 for some).
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request(request: Request, state: &S) -> std::result::Result<Self, Failure> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(e) => Err(Failure(
                StatusCode::BAD_REQUEST,
                format!("malformed request body: {}", e.body_text()),
            )),
        }
    }
}

/// A handler's answer: JSON, or an error with its status.
pub type Answer<T> = std::result::Result<Json<T>, Failure>;

/// Runs `f`, which may wait on storage or executors, off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(Failure::from)
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
        .route("/api/v1/jobs/{id}/metrics", get(job_metrics::<V>))
        .route("/api/v1/jobs/{id}/history", get(job_history::<V>))
        .route("/api/v1/workers", get(workers::<V>))
        .route("/api/v1/workers/load", get(workers_load::<V>))
        .route("/api/v1/cluster", get(cluster::<V>))
        .route("/metrics", get(metrics::<V>))
}

/// `api` behind `access`: with a token, every route requires one, and
/// only the operator's may change anything; with an audit log, every
/// state-changing request is written to it. An open, unaudited rule
/// leaves `api` as it is.
pub fn secure<S: Clone + Send + Sync + 'static>(api: Router<S>, access: Access) -> Router<S> {
    if access.is_open() && access.audit().is_none() {
        return api;
    }
    api.route_layer(middleware::from_fn_with_state(Arc::new(access), guard))
}

/// The web UI: `/` leads to `/ui`, its page and its script. They carry no
/// data, so they need no token (the page asks for it).
pub fn ui_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(root))
        .route("/ui", get(page))
        .route("/ui/app.js", get(script))
        .route("/ui/charts.js", get(charts))
}

/// Whether a request may change something: every method but the reading
/// ones. The read role is refused these, and the audit log keeps them.
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Passes requests whose token grants what they ask (401 without a valid
/// token, 403 for a reader's state-changing request) and writes the
/// state-changing ones, passed or not, to the audit log.
async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let granted = access.role_of(presented);
    let changes = changes_state(request.method());
    let audited = changes.then(|| {
        let client = request
            .extensions()
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.to_string());
        (
            client,
            request.method().to_string(),
            request.uri().path().to_string(),
        )
    });
    let answer = match granted {
        None => {
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
        Some((Role::Read, _)) if changes => Failure(
            StatusCode::FORBIDDEN,
            "the read-only token cannot change anything; this needs the operator token".into(),
        )
        .into_response(),
        Some(_) => next.run(request).await,
    };
    if let (Some(log), Some((client, method, path))) = (access.audit(), audited) {
        let entry = AuditEntry {
            time: audit::now(),
            role: granted.map(|(r, _)| r.name().to_string()),
            token: granted.and_then(|(_, t)| t).map(|t| t.id()),
            client,
            method,
            path,
            status: answer.status().as_u16(),
        };
        log.record(&entry).await;
    }
    answer
}
