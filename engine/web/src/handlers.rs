//! The handlers of the job routes and of the web UI. With the `openapi`
//! feature each carries its OpenAPI description (`#[utoipa::path]`): its
//! method, path, parameters, bodies and answers are declared here, beside
//! the code, and the coordinator's document is generated from them.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;

#[cfg(feature = "openapi")]
use sluice_protocol::api::ApiError;
use sluice_protocol::api::{
    Checkpoints, ClusterInfo, JobResults, JobStatus, SavepointRequest, SavepointTaken, WorkerInfo,
};
use sluice_protocol::metrics::{JobHistory, JobMetrics, WorkersLoad};

#[cfg(feature = "openapi")]
use crate::doc::{Forbidden, Unauthorized};
use crate::error::Error;
use crate::routes::{blocking, Answer, JobsView, JsonBody};
use crate::ui;

fn found<T>(value: Option<T>, id: &str) -> Answer<T> {
    value
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("no job {id}")).into())
}

/// Lists every job, oldest first.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/api/v1/jobs", tag = "jobs", operation_id = "listJobs",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every job, oldest first.", body = [JobStatus]),
        Unauthorized,
    ),
))]
pub async fn jobs<V: JobsView>(State(v): State<Arc<V>>) -> Json<Vec<JobStatus>> {
    Json(v.jobs())
}

/// Shows one job: state, attempt, placement, records per operator.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/api/v1/jobs/{id}", tag = "jobs", operation_id = "getJob",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "The job.", body = JobStatus),
        (status = 404, description = "No such job.", body = ApiError),
        Unauthorized,
    ),
))]
pub async fn job<V: JobsView>(
    State(v): State<Arc<V>>,
    Path(id): Path<String>,
) -> Answer<JobStatus> {
    found(v.job(&id), &id)
}

/// Cancels a job that has not ended.
#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", operation_id = "cancelJob",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "The job, cancelled.", body = JobStatus),
        (status = 404, description = "No such job.", body = ApiError),
        (status = 409, description = "The job has already ended.", body = ApiError),
        (status = 500, description = "The cancellation could not be recorded (in a Raft group: not committed); it may or may not hold.", body = ApiError),
        Unauthorized,
        Forbidden,
    ),
))]
pub async fn cancel<V: JobsView>(
    State(v): State<Arc<V>>,
    Path(id): Path<String>,
) -> Answer<JobStatus> {
    Ok(Json(blocking(move || v.cancel(&id)).await?))
}

/// Takes a savepoint of a running job.
///
/// With `stop` the job stops after it. Answers once the savepoint is
/// complete.
#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/api/v1/jobs/{id}/savepoint", tag = "jobs", operation_id = "takeSavepoint",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id.")),
    request_body(content = SavepointRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The savepoint is complete.", body = SavepointTaken),
        (status = 400, description = "Malformed request, or a location that cannot be used.", body = ApiError),
        (status = 404, description = "No such job.", body = ApiError),
        (status = 409, description = "The job is not running, or does not checkpoint.", body = ApiError),
        (status = 500, description = "The savepoint failed.", body = ApiError),
        Unauthorized,
        Forbidden,
    ),
))]
pub async fn savepoint<V: JobsView>(
    State(v): State<Arc<V>>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SavepointRequest>,
) -> Answer<SavepointTaken> {
    Ok(Json(blocking(move || v.savepoint(&id, req)).await?))
}

/// A job's checkpoint location, counts and most recent checkpoints.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/api/v1/jobs/{id}/checkpoints", tag = "jobs", operation_id = "getCheckpoints",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "The job's checkpoints.", body = Checkpoints),
        (status = 404, description = "No such job.", body = ApiError),
        Unauthorized,
    ),
))]
pub async fn checkpoints<V: JobsView>(
    State(v): State<Arc<V>>,
    Path(id): Path<String>,
) -> Answer<Checkpoints> {
    found(v.checkpoints(&id), &id)
}

/// The newest rows each sink of a job received.
///
/// Rows a sink received are not necessarily committed yet.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/api/v1/jobs/{id}/results", tag = "jobs", operation_id = "getResults",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "Rows per sink.", body = JobResults),
        (status = 404, description = "No such job.", body = ApiError),
        Unauthorized,
    ),
))]
pub async fn results<V: JobsView>(
    State(v): State<Arc<V>>,
    Path(id): Path<String>,
) -> Answer<JobResults> {
    found(v.results(&id), &id)
}

/// A job's figures per subtask and executor process.
///
/// Per subtask of the current attempt: busy, idle and backpressured
/// milliseconds per second (Flink's definitions) and their totals, records
/// and bytes in and out, the input watermark and its lag behind the wall
/// clock, and per source split the records not read yet; per executor
/// process its CPU time and resident memory. Empty while no attempt runs.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/api/v1/jobs/{id}/metrics", tag = "jobs", operation_id = "getJobMetrics",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "Figures per subtask and process.", body = JobMetrics),
        (status = 404, description = "No such job.", body = ApiError),
        Unauthorized,
    ),
))]
pub async fn job_metrics<V: JobsView>(
    State(v): State<Arc<V>>,
    Path(id): Path<String>,
) -> Answer<JobMetrics> {
    found(v.job_metrics(&id), &id)
}

/// Shows a job's figures over the last minutes (the web UI's charts).
///
/// One point per second, oldest first, for up to ten minutes: records
/// read by its sources and reaching its last vertices per second, the
/// largest watermark lag, the sources' unread records (Kafka consumer
/// lag), the checkpoints completed since the previous point with their
/// durations, and per vertex its rates and its busiest and most
/// backpressured subtask. Kept in the serving process's memory only.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/api/v1/jobs/{id}/history", tag = "jobs", operation_id = "getJobHistory",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "The job's recent figures, oldest first.", body = JobHistory),
        (status = 404, description = "No such job.", body = ApiError),
        Unauthorized,
    ),
))]
pub async fn job_history<V: JobsView>(
    State(v): State<Arc<V>>,
    Path(id): Path<String>,
) -> Answer<JobHistory> {
    found(v.job(&id), &id).map(drop)?;
    let history = v.history();
    Ok(Json(history.job(&id).unwrap_or_else(|| JobHistory {
        job_id: id,
        interval_ms: history.interval().as_millis() as u64,
        points: Vec::new(),
    })))
}

/// Shows each worker's load over the last minutes: slots in use, the CPU
/// cores and resident memory of the executors it runs, one point per
/// second, oldest first.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/api/v1/workers/load", tag = "cluster", operation_id = "getWorkersLoad",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The workers' recent load, oldest first.", body = WorkersLoad),
        Unauthorized,
    ),
))]
pub async fn workers_load<V: JobsView>(State(v): State<Arc<V>>) -> Json<WorkersLoad> {
    Json(v.history().workers())
}

/// Lists the workers, live and recently dead.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/api/v1/workers", tag = "cluster", operation_id = "listWorkers",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every worker.", body = [WorkerInfo]),
        Unauthorized,
    ),
))]
pub async fn workers<V: JobsView>(State(v): State<Arc<V>>) -> Json<Vec<WorkerInfo>> {
    Json(v.workers())
}

/// The cluster: live workers, slots, jobs per state.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/api/v1/cluster", tag = "cluster", operation_id = "getCluster",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cluster summary.", body = ClusterInfo),
        Unauthorized,
    ),
))]
pub async fn cluster<V: JobsView>(State(v): State<Arc<V>>) -> Json<ClusterInfo> {
    Json(v.cluster())
}

/// Prometheus metrics.
///
/// Text exposition format 0.0.4: the cluster's and each job's state, each
/// subtask's time accounting, records, bytes and watermark lag, each
/// source split's backlog, each executor process's CPU and memory, and
/// histograms of checkpoint duration, size and alignment per job.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/metrics", tag = "cluster", operation_id = "getMetrics",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every metric.", body = String, content_type = "text/plain; version=0.0.4"),
        Unauthorized,
    ),
))]
pub async fn metrics<V: JobsView>(State(v): State<Arc<V>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        v.metrics().render(v.as_ref()),
    )
        .into_response()
}

/// Leads to the web UI.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/", tag = "ui", operation_id = "root",
    responses((status = 303, description = "To `/ui`.", headers(("location" = String)))),
))]
pub async fn root() -> Redirect {
    Redirect::to("/ui")
}

/// The web UI's page.
///
/// The page asks for the token, if there is one.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/ui", tag = "ui", operation_id = "uiPage",
    responses((status = 200, description = "The page.", body = String, content_type = "text/html")),
))]
pub async fn page() -> Response {
    ui::page()
}

/// The web UI's script.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/ui/app.js", tag = "ui", operation_id = "uiScript",
    responses((status = 200, description = "The script.", body = String, content_type = "text/javascript")),
))]
pub async fn script() -> Response {
    ui::script()
}

/// The web UI's drawing (the job graph and charts, in SVG).
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/ui/charts.js", tag = "ui", operation_id = "uiCharts",
    responses((status = 200, description = "The script.", body = String, content_type = "text/javascript")),
))]
pub async fn charts() -> Response {
    ui::charts()
}
