//! The job routes (jobs, status, checkpoints, results, workers, cluster,
//! metrics, cancel, savepoint) over any [`JobsView`], the web UI's routes,
//! the token check, and the listener and server loop shared by a
//! coordinator, a standby and an embedded job.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use sluice_protocol::api::{
    ApiError, Checkpoints, ClusterInfo, JobResults, JobStatus, SavepointRequest, SavepointTaken,
    WorkerInfo,
};

use crate::error::{Error, Result};
use crate::security::Token;
use crate::ui;

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
    /// Cancels a job that has not ended.
    fn cancel(&self, id: &str) -> Result<JobStatus>;
    /// Takes a savepoint (stopping the job after it if asked).
    fn savepoint(&self, id: &str, request: SavepointRequest) -> Result<SavepointTaken>;
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

/// A non-blocking listener on `addr` (what serves there named in errors)
/// and the address it got.
pub fn bind(
    addr: std::net::SocketAddr,
    what: &str,
) -> Result<(std::net::TcpListener, std::net::SocketAddr)> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::io(format!("serving {what} on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io(format!("the address of {what}"), e))?;
    Ok((listener, local))
}

/// Serves `app` on `listener` (HTTPS with `tls`) until `stop` completes:
/// the coordinator's API, a standby's, or an embedded job's UI.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<axum_server::tls_openssl::OpenSSLConfig>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let failed = |e| Error::io("serving the API", e);
    match tls {
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                stop.await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(1)));
            });
            axum_server::from_tcp(listener)
                .map_err(failed)?
                .acceptor(axum_server::tls_openssl::OpenSSLAcceptor::new(tls))
                .handle(handle)
                .serve(app.into_make_service())
                .await
                .map_err(failed)
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(listener).map_err(failed)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
                .map_err(failed)
        }
    }
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
        exposition(v.as_ref()),
    )
}

/// Prometheus text exposition of what `v` shows: the cluster, and per job
/// its restarts, checkpoints, refused stale messages and records per
/// operator of the current attempt.
pub fn exposition<V: JobsView + ?Sized>(v: &V) -> String {
    let cluster = v.cluster();
    let jobs = v.jobs();
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, rows: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in rows {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    let one = |value: usize| vec![(String::new(), value as f64)];
    metric(
        "sluice_workers_alive",
        "Workers whose heartbeats arrive in time.",
        "gauge",
        one(cluster.workers_alive),
    );
    metric(
        "sluice_slots",
        "Slots on live workers.",
        "gauge",
        one(cluster.slots),
    );
    metric(
        "sluice_slots_used",
        "Slots used by running jobs.",
        "gauge",
        one(cluster.used_slots),
    );
    metric(
        "sluice_jobs",
        "Jobs per state.",
        "gauge",
        cluster
            .jobs
            .iter()
            .map(|(s, n)| (format!("{{state=\"{}\"}}", s.name()), *n as f64))
            .collect(),
    );
    let per_job = |f: &dyn Fn(&JobStatus) -> f64| -> Vec<(String, f64)> {
        jobs.iter()
            .map(|j| (format!("{{job=\"{}\"}}", label(&j.id)), f(j)))
            .collect()
    };
    metric(
        "sluice_job_restarts_total",
        "Restarts after failures.",
        "counter",
        per_job(&|j| j.restarts as f64),
    );
    metric(
        "sluice_job_checkpoints_completed_total",
        "Checkpoints completed.",
        "counter",
        per_job(&|j| v.checkpoints(&j.id).map_or(0, |c| c.stats.completed) as f64),
    );
    metric(
        "sluice_job_rejected_stale_total",
        "Control messages of stale attempts refused.",
        "counter",
        per_job(&|j| j.rejected_stale as f64),
    );
    let mut records = Vec::new();
    for j in &jobs {
        for n in &j.nodes {
            let name = j
                .vertices
                .iter()
                .flat_map(|v| v.nodes.iter())
                .find(|(id, _)| *id == n.node)
                .map_or(String::new(), |(_, name)| label(name));
            for (direction, value) in [("out", n.records_out), ("in", n.records_in)] {
                records.push((
                    format!(
                        "{{job=\"{}\",node=\"{name}\",direction=\"{direction}\"}}",
                        label(&j.id)
                    ),
                    value as f64,
                ));
            }
        }
    }
    metric(
        "sluice_node_records_total",
        "Records per operator, current attempt.",
        "counter",
        records,
    );
    out
}

/// `s` as a Prometheus label value (backslash, quote and newline escaped).
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
