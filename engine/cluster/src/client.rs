//! The coordinator's REST client, used by the `sluice` CLI and by workers.
//!
//! It owns the mapping of each route in [`ROUTES`](crate::routes::ROUTES)
//! to a typed call, and the translation of HTTP failures into [`Error`]s:
//! a non-2xx answer becomes [`Error::Api`] with the coordinator's
//! `ApiError.error` text, a transport failure [`Error::Unreachable`]. It
//! knows nothing of what the calls mean (no retries, no scheduling).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use sluice_engine::error::{Error, Result};
use sluice_protocol::api::{
    AddCoordinator, ApiError, Checkpoints, ClusterInfo, Coordinators, Heartbeat, HeartbeatReply,
    JobDescription, JobResults, JobStatus, RegisterWorker, Registered, RescaleRequest, Rescaled,
    SavepointRequest, SavepointTaken, SubmitJob, Submitted, WorkerInfo,
};
use sluice_protocol::logs::JobLogs;
use sluice_protocol::metrics::JobMetrics;
use sluice_web::Token;
use std::path::{Path, PathBuf};

/// What a client of the REST API authenticates with and trusts.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// Sent as a bearer token with every request.
    pub token: Option<Token>,
    /// PEM certificates trusted for an `https://` coordinator besides the
    /// system's roots (a private CA, or a self-signed certificate).
    pub ca_cert: Option<PathBuf>,
}

/// Control calls are small; a coordinator that takes longer than this is
/// treated as unreachable rather than hanging a CLI or a heartbeat loop.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting is all that is bounded for artifact transfers, whose
/// duration depends on the binary's size.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the binary per chunk of an upload.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// Error bodies that are not `ApiError` JSON are quoted up to this length.
const MAX_QUOTED_BODY: usize = 512;

/// A typed client of a coordinator's REST API. Given several coordinator
/// URLs (the coordinators of a Raft group), it sends to the one that answered
/// last and moves on to the next when one is unreachable or a follower (503).
#[derive(Debug, Clone)]
pub struct Client {
    bases: Arc<Vec<String>>,
    /// Index in `bases` of the coordinator to try first.
    current: Arc<AtomicUsize>,
    http: reqwest::Client,
    /// `?consistency=` sent with every read (coordinators in a Raft group).
    consistency: Option<&'static str>,
}

/// What `sluice submit` ships: the job binary and how to run it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The file uploaded as the artifact (streamed, never read whole).
    pub binary: PathBuf,
    /// Arguments the binary runs with.
    pub args: Vec<String>,
    /// Parallelism asked for.
    pub parallelism: Option<usize>,
    /// Working directory of the executors.
    pub workdir: Option<String>,
    /// The plan the binary described.
    pub description: JobDescription,
    /// The autoscaler's range, if the coordinator should choose the
    /// parallelism.
    pub autoscale: Option<sluice_protocol::api::AutoscaleRange>,
}

impl Client {
    /// A client of the coordinator at `base_url` (`http://host:port`, with
    /// or without a trailing slash; several, comma-separated, for a leader
    /// and the other members of its group).
    pub fn new(base_url: &str) -> Result<Client> {
        Client::secured(base_url, &ClientSecurity::default())
    }

    /// A client that sends `security`'s token and trusts its CA file.
    pub fn secured(base_url: &str, security: &ClientSecurity) -> Result<Client> {
        let mut bases = Vec::new();
        for one in base_url.split(',') {
            let base = one.trim().trim_end_matches('/').to_string();
            let rest = base
                .strip_prefix("http://")
                .or_else(|| base.strip_prefix("https://"));
            match rest {
                Some(host) if !host.is_empty() => bases.push(base),
                _ => {
                    return Err(Error::Config(format!(
                        "coordinator URL '{}' must look like http://host:port",
                        one.trim()
                    )))
                }
            }
        }
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        if let Some(token) = &security.token {
            let mut value = reqwest::header::HeaderValue::from_str(&token.bearer())
                .map_err(|e| Error::Config(format!("the token cannot be sent: {e}")))?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        if let Some(ca) = &security.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::io(format!("reading the CA file {}", ca.display()), e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::Config(format!(
                    "{}: not PEM certificates: {}",
                    ca.display(),
                    chain(&e)
                ))
            })?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "{} holds no PEM certificate",
                    ca.display()
                )));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {}", chain(&e))))?;
        Ok(Client {
            bases: Arc::new(bases),
            current: Arc::default(),
            http,
            consistency: None,
        })
    }

    /// The base URL of the coordinator tried first, without a trailing
    /// slash.
    pub fn base_url(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Makes the next coordinator URL the current one (a worker turning
    /// away from a deposed leader).
    pub fn rotate(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// `POST /api/v1/jobs` with an already uploaded artifact.
    pub async fn submit_job(&self, job: &SubmitJob) -> Result<Submitted> {
        self.call(Method::POST, "/api/v1/jobs", Some(job)).await
    }

    /// Uploads the binary under its SHA-256 and submits the job.
    pub async fn submit(&self, submission: Submission) -> Result<Submitted> {
        let file = submission.binary.clone();
        let artifact = tokio::task::spawn_blocking(move || crate::artifact::sha256_of_file(&file))
            .await
            .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))??;
        self.upload_artifact(&artifact, &submission.binary).await?;
        self.submit_job(&SubmitJob {
            artifact,
            args: submission.args,
            parallelism: submission.parallelism,
            workdir: submission.workdir,
            description: submission.description,
            autoscale: submission.autoscale,
        })
        .await
    }

    /// `GET /api/v1/jobs`.
    pub async fn jobs(&self) -> Result<Vec<JobStatus>> {
        self.call(Method::GET, "/api/v1/jobs", None::<&()>).await
    }

    /// `GET /api/v1/jobs/{id}`.
    pub async fn status(&self, job_id: &str) -> Result<JobStatus> {
        let path = format!("/api/v1/jobs/{}", segment(job_id)?);
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /api/v1/jobs/{id}/cancel`: the job as it is once cancelled.
    pub async fn cancel(&self, job_id: &str) -> Result<JobStatus> {
        let path = format!("/api/v1/jobs/{}/cancel", segment(job_id)?);
        let response = self
            .send(self.request(Method::POST, &path), None::<&()>)
            .await?;
        self.decode(&path, response).await
    }

    /// `POST /api/v1/jobs/{id}/savepoint`: returns once it is taken.
    pub async fn savepoint(
        &self,
        job_id: &str,
        request: &SavepointRequest,
    ) -> Result<SavepointTaken> {
        let path = format!("/api/v1/jobs/{}/savepoint", segment(job_id)?);
        // A savepoint waits for a full checkpoint round, which can take
        // longer than a control call is allowed to.
        let response = self
            .send(self.request(Method::POST, &path), Some(request))
            .await?;
        self.decode(&path, response).await
    }

    /// `POST /api/v1/jobs/{id}/rescale`: returns once the savepoint the
    /// job continues from is taken.
    pub async fn rescale(&self, job_id: &str, request: &RescaleRequest) -> Result<Rescaled> {
        let path = format!("/api/v1/jobs/{}/rescale", segment(job_id)?);
        // Waits for a savepoint, like `savepoint`.
        let response = self
            .send(self.request(Method::POST, &path), Some(request))
            .await?;
        self.decode(&path, response).await
    }

    /// `GET /api/v1/jobs/{id}/checkpoints`.
    pub async fn checkpoints(&self, job_id: &str) -> Result<Checkpoints> {
        let path = format!("/api/v1/jobs/{}/checkpoints", segment(job_id)?);
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /api/v1/jobs/{id}/results`.
    pub async fn results(&self, job_id: &str) -> Result<JobResults> {
        let path = format!("/api/v1/jobs/{}/results", segment(job_id)?);
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /api/v1/jobs/{id}/metrics`.
    pub async fn job_metrics(&self, job_id: &str) -> Result<JobMetrics> {
        let path = format!("/api/v1/jobs/{}/metrics", segment(job_id)?);
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /api/v1/jobs/{id}/logs`: lines of the job's executors' logs
    /// from `since` on, the first `limit` of them, or with `tail` the last
    /// `tail` (at most `limit`).
    pub async fn logs(
        &self,
        job_id: &str,
        since: u64,
        limit: usize,
        tail: Option<usize>,
    ) -> Result<JobLogs> {
        let mut path = format!(
            "/api/v1/jobs/{}/logs?since={since}&limit={limit}",
            segment(job_id)?
        );
        if let Some(tail) = tail {
            path.push_str(&format!("&tail={tail}"));
        }
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /api/v1/workers`.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.call(Method::GET, "/api/v1/workers", None::<&()>).await
    }

    /// `GET /api/v1/coordinators`: the coordinators' Raft group.
    pub async fn coordinators(&self) -> Result<Coordinators> {
        self.call(Method::GET, "/api/v1/coordinators", None::<&()>)
            .await
    }

    /// `POST /api/v1/coordinators`: returns once coordinator `id` at `url`
    /// caught up and votes.
    pub async fn add_coordinator(&self, id: u64, url: &str) -> Result<Coordinators> {
        let body = AddCoordinator {
            id,
            url: url.to_string(),
        };
        // Bringing the new member up to date may take longer than a
        // control call is allowed to; the leader bounds it.
        let response = self
            .send(
                self.request(Method::POST, "/api/v1/coordinators"),
                Some(&body),
            )
            .await?;
        self.decode("/api/v1/coordinators", response).await
    }

    /// `DELETE /api/v1/coordinators/{id}`.
    pub async fn remove_coordinator(&self, id: u64) -> Result<Coordinators> {
        let path = format!("/api/v1/coordinators/{id}");
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `GET /api/v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterInfo> {
        self.call(Method::GET, "/api/v1/cluster", None::<&()>).await
    }

    /// `GET /metrics` (Prometheus text format).
    pub async fn metrics(&self) -> Result<String> {
        let response = self
            .send(
                self.request(Method::GET, "/metrics").timeout(CALL_TIMEOUT),
                None::<&()>,
            )
            .await?;
        response
            .text()
            .await
            .map_err(|e| self.unreachable("/metrics", &e))
    }

    /// `POST /api/v1/workers`.
    pub async fn register(&self, request: &RegisterWorker) -> Result<Registered> {
        self.call(Method::POST, "/api/v1/workers", Some(request))
            .await
    }

    /// `POST /api/v1/workers/{id}/heartbeat`, bounded by `timeout` so a
    /// stalled coordinator cannot stall the worker's loop.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        heartbeat: &Heartbeat,
        timeout: Duration,
    ) -> Result<HeartbeatReply> {
        let path = format!("/api/v1/workers/{}/heartbeat", segment(worker_id)?);
        let response = self
            .send(
                self.request(Method::POST, &path).timeout(timeout),
                Some(heartbeat),
            )
            .await?;
        self.decode(&path, response).await
    }

    /// Whether the coordinator already stores the artifact
    /// (`HEAD /api/v1/artifacts/{sha256}`).
    pub async fn has_artifact(&self, sha256: &str) -> Result<bool> {
        let path = format!("/api/v1/artifacts/{}", segment(sha256)?);
        match self
            .send(self.request(Method::HEAD, &path), None::<&()>)
            .await
        {
            Ok(_) => Ok(true),
            Err(Error::Api { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `PUT /api/v1/artifacts/{sha256}` with the content of `file`,
    /// streamed a chunk at a time (its length announced, so a coordinator
    /// whose limit it exceeds says so at once), unless the coordinator has
    /// it already (job binaries are large, and resubmitting the same one
    /// is common). The coordinator checks the content against `sha256`.
    pub async fn upload_artifact(&self, sha256: &str, file: &Path) -> Result<()> {
        if self.has_artifact(sha256).await? {
            return Ok(());
        }
        let path = format!("/api/v1/artifacts/{}", segment(sha256)?);
        let opened = tokio::fs::File::open(file)
            .await
            .map_err(|e| Error::io(format!("opening {}", file.display()), e))?;
        let len = opened
            .metadata()
            .await
            .map_err(|e| Error::io(format!("reading {}", file.display()), e))?
            .len();
        let chunks = tokio_util::io::ReaderStream::with_capacity(opened, UPLOAD_CHUNK);
        let request = self
            .request(Method::PUT, &path)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(chunks));
        self.send(request, None::<&()>).await.map(drop)
    }

    /// `GET /api/v1/artifacts/{sha256}`, streamed into `out` (not
    /// verified: the caller hashes what it wrote). Returns the bytes written.
    pub async fn download_artifact<W: AsyncWrite + Unpin>(
        &self,
        sha256: &str,
        out: &mut W,
    ) -> Result<u64> {
        let path = format!("/api/v1/artifacts/{}", segment(sha256)?);
        let mut response = self
            .send(self.request(Method::GET, &path), None::<&()>)
            .await?;
        let mut written = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.unreachable(&path, &e))?
        {
            out.write_all(&chunk)
                .await
                .map_err(|e| Error::io(format!("writing artifact {sha256}"), e))?;
            written += chunk.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| Error::io(format!("writing artifact {sha256}"), e))?;
        Ok(written)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let read = method == Method::GET || method == Method::HEAD;
        let query = match self.consistency {
            Some(level) if read => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{sep}consistency={level}")
            }
            _ => String::new(),
        };
        self.http
            .request(method, format!("{}{path}{query}", self.base_url()))
    }

    /// Reads at `level` from coordinators in a Raft group: `linearizable`
    /// (the leader confirms with a majority that it still leads),
    /// `leader` (the default: the leader's state) or `local` (whichever
    /// coordinator answers first, perhaps a follower's stale copy).
    pub fn with_consistency(mut self, level: &str) -> Result<Client> {
        self.consistency = Some(match level {
            "linearizable" => "linearizable",
            "leader" => "leader",
            "local" => "local",
            other => {
                return Err(Error::Config(format!(
                    "consistency {other:?}: use linearizable, leader or local"
                )))
            }
        });
        Ok(self)
    }

    /// A bounded JSON call: request body `body`, JSON answer `T`.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let response = self
            .send(self.request(method, path).timeout(CALL_TIMEOUT), body)
            .await?;
        self.decode(path, response).await
    }

    /// Sends the request; a non-2xx answer becomes [`Error::Api`].
    async fn send<B: Serialize>(
        &self,
        request: RequestBuilder,
        body: Option<&B>,
    ) -> Result<Response> {
        let request = match body {
            Some(body) => request.json(body),
            None => request,
        };
        let request = request.build().map_err(|e| {
            Error::Config(format!("bad request to {}: {}", self.base_url(), chain(&e)))
        })?;
        let response = self.execute(request).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(Error::Api {
            status: status.as_u16(),
            message: error_text(status, &text),
        })
    }

    /// Sends `request` to the current coordinator, then to the others in
    /// turn while one is unreachable or answers as a follower (503); the
    /// one that answers becomes the current one. Requests whose body
    /// cannot be replayed go to the current coordinator only.
    async fn execute(&self, request: reqwest::Request) -> Result<Response> {
        let n = self.bases.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let path = match request.url().query() {
            Some(q) => format!("{}?{q}", request.url().path()),
            None => request.url().path().to_string(),
        };
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let attempt = if k == 0 {
                request.try_clone()
            } else {
                let Some(mut r) = request.try_clone() else {
                    break;
                };
                *r.url_mut() =
                    reqwest::Url::parse(&format!("{}{path}", self.bases[i])).map_err(|e| {
                        Error::Config(format!("coordinator URL {}: {e}", self.bases[i]))
                    })?;
                Some(r)
            };
            let attempt = match attempt {
                Some(r) => r,
                // A streamed body: one try, as is.
                None => return self.execute_once(request).await,
            };
            let url = attempt.url().to_string();
            match self.http.execute(attempt).await {
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE && n > 1 => {
                    let text = r.text().await.unwrap_or_default();
                    last = Some(Error::Api {
                        status: 503,
                        message: error_text(StatusCode::SERVICE_UNAVAILABLE, &text),
                    });
                }
                Ok(r) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e) => {
                    last = Some(Error::Unreachable {
                        url,
                        message: transport(&e),
                    });
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Internal("no coordinator URL".into())))
    }

    async fn execute_once(&self, request: reqwest::Request) -> Result<Response> {
        let url = request.url().to_string();
        self.http
            .execute(request)
            .await
            .map_err(|e| Error::Unreachable {
                url,
                message: transport(&e),
            })
    }

    async fn decode<T: DeserializeOwned>(&self, path: &str, response: Response) -> Result<T> {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.unreachable(path, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Unreachable {
            url: format!("{}{}", self.base_url(), path),
            message: format!("unexpected answer (is this a Sluice coordinator?): {e}"),
        })
    }

    fn unreachable(&self, path: &str, e: &reqwest::Error) -> Error {
        Error::Unreachable {
            url: format!("{}{}", self.base_url(), path),
            message: transport(e),
        }
    }
}

/// reqwest's outer message repeats the URL the error already names; the
/// causes are what tells a user what happened.
fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time".into();
    }
    match std::error::Error::source(e) {
        Some(cause) => chain(cause),
        None => e.to_string(),
    }
}

/// SHA-256 of `bytes`, lower-case hex: the artifact's content address.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of a digest.
pub(crate) fn hex(digest: &[u8]) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The message of a failed answer: `ApiError.error` when the body is one,
/// else the (shortened) body, else the status's reason.
fn error_text(status: StatusCode, body: &str) -> String {
    if let Ok(e) = serde_json::from_str::<ApiError>(body) {
        return e.error;
    }
    let body = body.trim();
    if body.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string();
    }
    match body.char_indices().nth(MAX_QUOTED_BODY) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_string(),
    }
}

/// reqwest's top-level message ("error sending request") hides the cause
/// ("Connection refused"), which is what a user needs to see.
fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !message.contains(&next) {
            message.push_str(": ");
            message.push_str(&next);
        }
        source = s.source();
    }
    message
}

/// Percent-encodes a path segment, so an id cannot change the route.
fn segment(s: &str) -> Result<String> {
    // URL parsers resolve these (even percent-encoded) as dot segments.
    if matches!(s, "" | "." | "..") {
        return Err(Error::Config(format!("'{s}' is not a valid id")));
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_prefers_api_error() {
        let s = StatusCode::CONFLICT;
        assert_eq!(
            error_text(s, r#"{"error":"job is finished"}"#),
            "job is finished"
        );
        assert_eq!(error_text(s, "  plain text\n"), "plain text");
        assert_eq!(error_text(s, ""), "Conflict");
    }

    #[test]
    fn urls_and_segments() {
        assert!(Client::new("localhost:8080").is_err());
        assert!(Client::new("http://").is_err());
        let c = Client::new("http://127.0.0.1:8080/").expect("valid url");
        assert_eq!(c.base_url(), "http://127.0.0.1:8080");
        assert_eq!(segment("job-1_a.b").expect("valid"), "job-1_a.b");
        assert_eq!(segment("../x y").expect("valid"), "..%2Fx%20y");
        assert!(segment("..").is_err());
        assert!(segment("").is_err());
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
