//! The coordinator's REST API: the job routes of [`jobs_api`] over the
//! manager, plus what only a coordinator does (submissions, rescales,
//! executors' logs, artifacts, worker registration and heartbeats, its
//! OpenAPI document).
//! Each handler carries its OpenAPI description (`#[utoipa::path]`);
//! [`crate::routes`] builds the document from them. Handlers take the
//! manager's lock only briefly; anything that waits (savepoints, artifact
//! files) runs off the lock, and blocking work goes to `spawn_blocking`.
//! Artifacts stream both ways: no handler holds a whole binary.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

use sluice_engine::error::{Error, Result};
use sluice_protocol::api::{
    AddCoordinator, ApiError, Coordinators, Heartbeat, HeartbeatReply, RegisterWorker, Registered,
    RescaleRequest, Rescaled, SubmitJob, Submitted,
};
use sluice_protocol::logs::JobLogs;
use sluice_web::doc::{Binary, Forbidden, Unauthorized};
use sluice_web::{self as jobs_api, Access, Answer, Failure, JsonBody};

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

/// The API's routes over `manager` behind `access`: with a token, every
/// route but the web UI's page and script and this document requires one,
/// and only the operator token may change anything. Heartbeats, twice a
/// second per worker, stay out of the audit log; a worker's registration
/// is in it.
pub fn router(manager: Arc<Manager>, access: Access) -> Router {
    // The UI's charts read what this samples, for as long as this manager lives.
    jobs_api::spawn_sampler(&manager);
    let api = jobs_api::routes::<Manager>()
        .route("/api/v1/jobs", post(submit))
        .route("/api/v1/jobs/{id}/rescale", post(rescale))
        .route("/api/v1/jobs/{id}/logs", get(logs))
        .route(
            "/api/v1/artifacts/{sha256}",
            put(upload)
                .get(download)
                .head(exists)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/workers", post(register))
        .route(
            "/api/v1/coordinators",
            get(coordinators).post(add_coordinator),
        )
        .route(
            "/api/v1/coordinators/{id}",
            axum::routing::delete(remove_coordinator),
        );
    let heartbeats = Router::new().route("/api/v1/workers/{id}/heartbeat", post(heartbeat));
    jobs_api::secure(heartbeats, access.unaudited())
        .merge(jobs_api::secure(api, access))
        .merge(jobs_api::ui_routes())
        .route("/api/v1/openapi.json", get(openapi))
        .with_state(manager)
}

/// The OpenAPI document of this API.
///
/// Generated from the handlers. Like the web UI it holds nothing of the
/// cluster's, so it needs no token.
#[utoipa::path(
    get, path = "/api/v1/openapi.json", tag = "api", operation_id = "getOpenApi",
    responses((status = 200, description = "This document.", body = Object, content_type = "application/json")),
)]
async fn openapi() -> Response {
    static DOCUMENT: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(crate::routes::document);
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// This coordinator's Raft group, or 409 when it has none (a manager on
/// plain files, in tests).
fn replica(m: &Manager) -> std::result::Result<super::raft::Replica, Failure> {
    m.meta().replica().cloned().ok_or_else(|| {
        Failure(
            StatusCode::CONFLICT,
            "this coordinator is not in a Raft group".into(),
        )
    })
}

fn membership_failure(e: super::raft::membership::MembershipError) -> Failure {
    use super::raft::membership::MembershipError as M;
    let status = match &e {
        M::Invalid(_) => StatusCode::BAD_REQUEST,
        M::Conflict(_) => StatusCode::CONFLICT,
        M::Unreachable(_) => StatusCode::BAD_GATEWAY,
        M::NotMade(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    Failure(status, e.to_string())
}

/// The coordinators of the Raft group.
///
/// As the leader knows them: voters, and learners being brought up to
/// date before they vote.
#[utoipa::path(
    get, path = "/api/v1/coordinators", tag = "coordinators", operation_id = "listCoordinators",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The group.", body = Coordinators),
        Unauthorized,
    ),
)]
async fn coordinators(State(m): Shared) -> Answer<Coordinators> {
    Ok(Json(replica(&m)?.coordinators()))
}

/// Adds a coordinator to the Raft group.
///
/// The new coordinator runs with `--join` and the group's token. It is
/// added as a learner, brought up to date and sent the stored binaries,
/// then made a voter; the answer comes once it votes.
#[utoipa::path(
    post, path = "/api/v1/coordinators", tag = "coordinators", operation_id = "addCoordinator",
    security(("bearer" = [])),
    request_body(content = AddCoordinator, content_type = "application/json"),
    responses(
        (status = 200, description = "A voter now; the group after the change.", body = Coordinators),
        (status = 400, description = "Malformed request or not an http(s) URL.", body = ApiError),
        (status = 409, description = "The id is a voter already, or a learner at another URL.", body = ApiError),
        (status = 502, description = "Nothing answers at the URL, or it did not catch up in time.", body = ApiError),
        (status = 503, description = "The change could not be committed.", body = ApiError),
        Unauthorized,
        Forbidden,
    ),
)]
async fn add_coordinator(
    State(m): Shared,
    JsonBody(req): JsonBody<AddCoordinator>,
) -> Answer<Coordinators> {
    let replica = replica(&m)?;
    replica
        .add_member(req.id, &req.url, m.meta().artifacts())
        .await
        .map_err(membership_failure)?;
    Ok(Json(replica.coordinators()))
}

/// Removes a coordinator from the Raft group.
///
/// The group's last voter cannot be removed. A leader that removes itself
/// steps down once the change is committed.
#[utoipa::path(
    delete, path = "/api/v1/coordinators/{id}", tag = "coordinators", operation_id = "removeCoordinator",
    security(("bearer" = [])),
    params(("id" = u64, Path, description = "Node id.")),
    responses(
        (status = 200, description = "Removed; the group after the change.", body = Coordinators),
        (status = 400, description = "Not a node id, or the last voter.", body = ApiError),
        (status = 409, description = "No such member.", body = ApiError),
        (status = 503, description = "The change could not be committed.", body = ApiError),
        Unauthorized,
        Forbidden,
    ),
)]
async fn remove_coordinator(State(m): Shared, Path(id): Path<String>) -> Answer<Coordinators> {
    let id: u64 = id.parse().map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a node id: {e}"),
        )
    })?;
    let replica = replica(&m)?;
    replica
        .remove_member(id)
        .await
        .map_err(membership_failure)?;
    Ok(Json(replica.coordinators()))
}

/// Submits a job whose binary was uploaded.
///
/// The binary goes first to `PUT /api/v1/artifacts/{sha256}`. The body is
/// read as bytes and its job description's protocol version checked
/// before the rest, so a client of another release is told both versions.
#[utoipa::path(
    post, path = "/api/v1/jobs", tag = "jobs", operation_id = "submitJob",
    security(("bearer" = [])),
    request_body(content = SubmitJob, content_type = "application/json"),
    responses(
        (status = 201, description = "Accepted; the job waits for slots.", body = Submitted),
        (status = 400, description = "Malformed request, a description of another protocol version, or a plan that cannot run.", body = ApiError),
        (status = 404, description = "The artifact was not uploaded.", body = ApiError),
        Unauthorized,
        Forbidden,
    ),
)]
async fn submit(
    State(m): Shared,
    body: axum::body::Bytes,
) -> std::result::Result<(StatusCode, Json<Submitted>), Failure> {
    let req: SubmitJob = versioned("submission", &body)?;
    let job_id = blocking(move || m.submit(req)).await?;
    Ok((StatusCode::CREATED, Json(Submitted { job_id })))
}

/// Rescales a running job.
///
/// The job stops with a savepoint and runs on from there with the new
/// plan; the answer comes once the savepoint is complete. The body's job
/// description is version-checked first, as a submission's.
#[utoipa::path(
    post, path = "/api/v1/jobs/{id}/rescale", tag = "jobs", operation_id = "rescaleJob",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id.")),
    request_body(content = RescaleRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The job runs on from the savepoint.", body = Rescaled),
        (status = 400, description = "Malformed request, a description of another protocol version, other operators, or more slots than the live workers offer.", body = ApiError),
        (status = 404, description = "No such job.", body = ApiError),
        (status = 409, description = "The job is not running.", body = ApiError),
        (status = 500, description = "The savepoint failed; the job restarts at its old parallelism.", body = ApiError),
        Unauthorized,
        Forbidden,
    ),
)]
async fn rescale(
    State(m): Shared,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Answer<Rescaled> {
    let req: RescaleRequest = versioned("rescale request", &body)?;
    // Waits for the savepoint; the switch writes the job's metadata.
    Ok(Json(blocking(move || m.rescale(&id, req)).await?))
}

/// Lines answered by one request at most (and by default).
const MAX_LOG_LIMIT: usize = 5000;
const DEFAULT_LOG_LIMIT: usize = 1000;

/// The query of `GET /api/v1/jobs/{id}/logs`; other parameters (such as
/// `consistency`) are not its business.
#[derive(Debug, serde::Deserialize)]
struct LogsQuery {
    since: Option<u64>,
    limit: Option<usize>,
    tail: Option<usize>,
}

/// Lines of a job's executors' logs, oldest first.
///
/// What the executors of every attempt wrote to their stdout and stderr,
/// forwarded by their workers with their heartbeats. The coordinator
/// keeps the newest 5000 lines or 2 MiB per job, in memory only (a new
/// leader starts with none), for as long as it keeps the job. Lines are
/// numbered (`seq`) in the order received; ask again with `since` set to
/// the answer's `next` for the lines that came since.
#[utoipa::path(
    get, path = "/api/v1/jobs/{id}/logs", tag = "jobs", operation_id = "getJobLogs",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "Job id."),
        ("since" = Option<u64>, Query, description = "The first `seq` wanted (default 0: from the oldest line kept). One beyond every line numbered (another coordinator's numbering) reads from the oldest line kept.", minimum = 0),
        ("limit" = Option<usize>, Query, description = "At most this many lines (default 1000).", minimum = 1, maximum = 5000),
        ("tail" = Option<usize>, Query, description = "The last this many lines from `since` on, instead of the first (at most `limit`); 0 answers none, with `next` where the next line will be.", minimum = 0),
    ),
    responses(
        (status = 200, description = "Lines, the `since` to ask with next, and how many lines were dropped before the oldest kept.", body = JobLogs),
        (status = 400, description = "A parameter that is not a number, or a limit out of range.", body = ApiError),
        (status = 404, description = "No such job.", body = ApiError),
        Unauthorized,
    ),
)]
async fn logs(
    State(m): Shared,
    Path(id): Path<String>,
    query: std::result::Result<Query<LogsQuery>, QueryRejection>,
) -> Answer<JobLogs> {
    let Query(q) = query.map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("bad query: {}", e.body_text()),
        )
    })?;
    let limit = q.limit.unwrap_or(DEFAULT_LOG_LIMIT);
    if !(1..=MAX_LOG_LIMIT).contains(&limit) {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("limit={limit}: ask for 1 to {MAX_LOG_LIMIT} lines"),
        ));
    }
    let since = q.since.unwrap_or(0);
    // The manager's lock can be held while a write commits: off the
    // async workers.
    let found = blocking(move || Ok(m.logs(&id, since, limit, q.tail).ok_or(id))).await?;
    found
        .map(Json)
        .map_err(|id| failure(Error::NotFound(format!("no job {id}"))))
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
#[utoipa::path(
    put, path = "/api/v1/artifacts/{sha256}", tag = "artifacts", operation_id = "uploadArtifact",
    summary = "Uploads a job binary under its SHA-256.",
    description = "Stored only when the content hashes to its address.",
    security(("bearer" = [])),
    params(("sha256" = String, Path, description = "SHA-256 of the content, lowercase hex.", pattern = "^[0-9a-f]{64}$")),
    request_body(content = Binary, description = "The job binary.", content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored."),
        (status = 200, description = "Stored already (its time is refreshed)."),
        (status = 400, description = "Not a SHA-256, an interrupted upload, or content that hashes to another address.", body = ApiError),
        (status = 413, description = "Larger than --max-artifact-bytes, or the store would exceed --max-artifact-store-bytes.", body = ApiError),
        Unauthorized,
        Forbidden,
    ),
)]
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
    // In a Raft group the upload is acknowledged once a majority of
    // coordinators store it: whichever leads next can serve it.
    if let Some(replica) = m.meta().replica() {
        replica
            .replicate_artifact(m.meta().artifacts(), &sha)
            .await
            .map_err(|e| Failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    }
    Ok(match stored {
        Uploaded::Created => StatusCode::CREATED,
        Uploaded::AlreadyStored => StatusCode::OK,
    })
}

/// 200 when the artifact is stored and verified, 404 otherwise (a corrupt
/// one is moved aside first, so the client uploads it again); no body.
#[utoipa::path(
    head, path = "/api/v1/artifacts/{sha256}", tag = "artifacts", operation_id = "artifactExists",
    summary = "Whether a job binary is stored.",
    description = "A corrupt stored copy is moved aside and answered 404, so the client uploads it again.",
    security(("bearer" = [])),
    params(("sha256" = String, Path, description = "SHA-256 of the content, lowercase hex.", pattern = "^[0-9a-f]{64}$")),
    responses(
        (status = 200, description = "Stored."),
        (status = 400, description = "Not a SHA-256."),
        (status = 404, description = "Not stored."),
        Unauthorized,
    ),
)]
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
#[utoipa::path(
    get, path = "/api/v1/artifacts/{sha256}", tag = "artifacts", operation_id = "downloadArtifact",
    summary = "A stored job binary.",
    description = "Workers and `sluice rescale` fetch it. Verified against its address before it is served.",
    security(("bearer" = [])),
    params(("sha256" = String, Path, description = "SHA-256 of the content, lowercase hex.", pattern = "^[0-9a-f]{64}$")),
    responses(
        (status = 200, description = "The content.", body = Binary, content_type = "application/octet-stream"),
        (status = 400, description = "Not a SHA-256.", body = ApiError),
        (status = 404, description = "Not stored.", body = ApiError),
        (status = 500, description = "The stored copy was corrupt; it was moved aside, so an upload replaces it.", body = ApiError),
        Unauthorized,
    ),
)]
async fn download(
    State(m): Shared,
    Path(sha): Path<String>,
) -> std::result::Result<Response, Failure> {
    valid_hash(&sha)?;
    let store = m.meta().artifacts();
    let mut opened = store.open_verified_async(&sha).await;
    // A leader that was down when a binary was uploaded fetches it from
    // the coordinators that store it.
    if let (Err(ArtifactError::NotFound(_)), Some(replica)) = (&opened, m.meta().replica()) {
        if replica.read(|r| r.artifacts.contains(&sha)) && replica.fetch_artifact(store, &sha).await
        {
            opened = store.open_verified_async(&sha).await;
        }
    }
    let (file, len) = opened.map_err(artifact_failure)?;
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

/// Registers a worker.
///
/// A worker registers again, under its old id, after a coordinator
/// restart.
#[utoipa::path(
    post, path = "/api/v1/workers", tag = "workers", operation_id = "registerWorker",
    security(("bearer" = [])),
    request_body(content = RegisterWorker, content_type = "application/json"),
    responses(
        (status = 200, description = "Registered.", body = Registered),
        (status = 400, description = "Malformed request.", body = ApiError),
        Unauthorized,
        Forbidden,
    ),
)]
async fn register(State(m): Shared, JsonBody(req): JsonBody<RegisterWorker>) -> Answer<Registered> {
    Ok(Json(blocking(move || m.register(req)).await?))
}

/// A worker's heartbeat.
///
/// It reports the state of the worker's executors; the answer lists every
/// executor wanted on it.
#[utoipa::path(
    post, path = "/api/v1/workers/{id}/heartbeat", tag = "workers", operation_id = "heartbeat",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Worker id.")),
    request_body(content = Heartbeat, content_type = "application/json"),
    responses(
        (status = 200, description = "The executors to run.", body = HeartbeatReply),
        (status = 400, description = "Malformed request.", body = ApiError),
        (status = 404, description = "Unknown worker: register again.", body = ApiError),
        Unauthorized,
        Forbidden,
    ),
)]
async fn heartbeat(
    State(m): Shared,
    Path(id): Path<String>,
    JsonBody(hb): JsonBody<Heartbeat>,
) -> Answer<HeartbeatReply> {
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
#[path = "routes_tests.rs"]
mod tests;
