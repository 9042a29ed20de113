//! The coordinator service as a member of a Raft group. One listener
//! serves Raft's internal routes and the API; which API depends on the
//! member's role, and changes with it:
//! - the **leader** opens a [`Manager`] from the state machine (after a
//!   read index, so it has applied everything committed before it led),
//!   starts its manager thread and serves the full API;
//! - a **follower** answers reads asked with `?consistency=local` from
//!   its copy of the job records, and everything else with 503 naming the
//!   leader (`x-sluice-leader`), which the CLI and workers follow;
//! - a leader that loses its leadership stops its manager thread and
//!   cancels the attempts it ran (their executors lose their control
//!   connections and stop) before the next leader starts its own.
//!
//! Reads take `?consistency=linearizable|leader|local` (default
//! `leader`): `linearizable` confirms the leadership with a majority and
//! waits for the read index to be applied first, then answers job
//! records from the state machine (only what is committed; live figures
//! such as counters and placement are the leader's); `leader` answers
//! from the leader's state as it is (a change being committed shows
//! already); `local` answers from any member's copy.
//! Every answer carries `x-sluice-raft-term`, `x-sluice-raft-applied`
//! (the index of the last entry this member applied) and, when one is
//! known, `x-sluice-leader`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower::ServiceExt;
use tracing::{info, warn};

use sluice_engine::error::{Error, Result};
use sluice_protocol::api::JobStatus;
use sluice_web::{self as jobs_api, Access, AuditLog, Failure};

use super::{network, Replica};
use crate::coordinator::artifacts::ArtifactStore;
use crate::coordinator::jobs::Job;
use crate::coordinator::manager::Manager;
use crate::coordinator::meta::MetaStore;
use crate::coordinator::{routes, CoordinatorConfig, AUDIT_LOG, TICK};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed with a majority, read index applied (linearizable).
    Linearizable,
    /// The leader's state as it is (the default).
    Leader,
    /// This member's copy, perhaps stale: the answer says how stale.
    Local,
}

impl Consistency {
    fn of(request: &Request) -> std::result::Result<Consistency, Failure> {
        let query = request.uri().query().unwrap_or("");
        for pair in query.split('&') {
            if let Some(v) = pair.strip_prefix("consistency=") {
                return match v {
                    "linearizable" => Ok(Consistency::Linearizable),
                    "leader" => Ok(Consistency::Leader),
                    "local" => Ok(Consistency::Local),
                    other => Err(Failure(
                        StatusCode::BAD_REQUEST,
                        format!("consistency={other}: use linearizable, leader or local"),
                    )),
                };
            }
        }
        Ok(Consistency::Leader)
    }
}

/// What the listener dispatches to.
struct Serving {
    replica: Replica,
    /// The full API while this member leads.
    leading: RwLock<Option<Router>>,
    /// Local reads of a follower.
    local: Router,
}

impl Serving {
    fn leading(&self) -> Option<Router> {
        self.leading
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_leading(&self, router: Option<Router>) {
        *self.leading.write().unwrap_or_else(|p| p.into_inner()) = router;
    }
}

/// Serves the coordinator on `listener` as member `config.raft` of its
/// group until the process is stopped.
pub async fn serve(
    config: CoordinatorConfig,
    listener: std::net::TcpListener,
    tls: Option<axum_server::tls_openssl::OpenSSLConfig>,
    access: Access,
) -> Result<()> {
    // Raft's requests to the other members carry the operator token.
    let token = config.token.clone().map(Arc::new);
    // Every member keeps its own audit log of the requests it served.
    let access = access.audited(AuditLog::open(&config.data_dir.join(AUDIT_LOG))?);
    let settings = config
        .raft
        .clone()
        .ok_or_else(|| Error::Internal("a replicated coordinator without Raft settings".into()))?;
    let (dir, limits) = (config.data_dir.join("artifacts"), config.artifact_limits);
    let artifacts = tokio::task::spawn_blocking(move || ArtifactStore::open(&dir, limits))
        .await
        .map_err(|e| Error::Internal(format!("opening the artifact store: {e}")))??;
    let artifacts = Arc::new(artifacts);
    let ca = config.cluster_ca.as_ref().map(|c| c.cert.clone());
    let replica = Replica::start(
        &config.data_dir.join("raft"),
        settings,
        token.clone(),
        ca.as_deref(),
    )
    .await?;
    info!(node = replica.id(), peers = ?replica.peers(), "coordinator in a Raft group");

    let serving = Arc::new(Serving {
        replica: replica.clone(),
        leading: RwLock::new(None),
        local: jobs_api::secure(
            Router::new()
                .route("/api/v1/jobs", get(local_jobs))
                .route("/api/v1/jobs/{id}", get(local_job)),
            access.unaudited(),
        )
        .with_state(replica.clone())
        .fallback({
            let replica = replica.clone();
            move || {
                let replica = replica.clone();
                async move {
                    not_leader(
                        &replica,
                        "a follower answers only job listings and statuses from its own copy",
                    )
                }
            }
        }),
    });
    let app = network::routes(replica.clone(), artifacts.clone(), &access).fallback({
        let serving = serving.clone();
        move |request: Request| dispatch(serving.clone(), request)
    });
    tokio::spawn(lead(config, replica, artifacts, serving, access));
    Ok(jobs_api::serve(listener, app, tls, std::future::pending()).await?)
}

/// Sends a request to the API this member serves in its role, with the
/// asked consistency, and stamps the answer with its position.
async fn dispatch(serving: Arc<Serving>, request: Request) -> Response {
    let replica = &serving.replica;
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    let mut answer = match Consistency::of(&request) {
        Err(f) => f.into_response(),
        Ok(consistency) => match (serving.leading(), consistency) {
            (Some(api), Consistency::Linearizable) if read => {
                match replica.ensure_linearizable().await {
                    // Job records from the state machine: what the log
                    // committed up to the read index, never a change the
                    // manager made that is still being committed (or
                    // never will be).
                    Ok(()) if is_job_read(&request) => {
                        serving.local.clone().oneshot(request).await.into_response()
                    }
                    Ok(()) => api.oneshot(request).await.into_response(),
                    Err(e) => not_leader(replica, &e.to_string()),
                }
            }
            (Some(api), _) => api.oneshot(request).await.into_response(),
            (None, Consistency::Local) if read => {
                serving.local.clone().oneshot(request).await.into_response()
            }
            (None, _) => not_leader(replica, "this coordinator is a follower"),
        },
    };
    let position = replica.position();
    let headers = answer.headers_mut();
    headers.insert("x-sluice-raft-term", HeaderValue::from(position.term));
    headers.insert("x-sluice-raft-applied", HeaderValue::from(position.applied));
    if let Some(url) = replica
        .leader_url()
        .and_then(|u| HeaderValue::from_str(&u).ok())
    {
        headers.insert("x-sluice-leader", url);
    }
    answer
}

/// Whether `request` reads job records (`/api/v1/jobs`,
/// `/api/v1/jobs/{id}`), which a follower's copy of the log can answer.
fn is_job_read(request: &Request) -> bool {
    let path = request.uri().path();
    path == "/api/v1/jobs"
        || path
            .strip_prefix("/api/v1/jobs/")
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// 503 naming the leader, if one is known.
fn not_leader(replica: &Replica, why: &str) -> Response {
    let message = match replica.leader_url() {
        Some(url) if !replica.position().leading => format!("{why}; the leader is at {url}"),
        _ => format!("{why}; no leader is known yet (an election may be under way)"),
    };
    let mut answer = Failure(StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    answer
}

async fn local_jobs(State(replica): State<Replica>) -> Json<Vec<JobStatus>> {
    let mut jobs: Vec<JobStatus> = replica.read(|m| {
        m.jobs
            .values()
            .map(|r| Job::new(r.clone()).status())
            .collect()
    });
    jobs.sort_by_key(|j| j.submitted_ms);
    Json(jobs)
}

async fn local_job(
    State(replica): State<Replica>,
    Path(id): Path<String>,
) -> std::result::Result<Json<JobStatus>, Failure> {
    replica
        .read(|m| m.jobs.get(&id).map(|r| Job::new(r.clone()).status()))
        .map(Json)
        .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no job {id}")))
}

/// The manager while this member leads, and the flag that stops its thread.
struct Leading {
    manager: Arc<Manager>,
    stop: Arc<AtomicBool>,
    ticker: std::thread::JoinHandle<()>,
}

/// Follows this member's role: opens a manager when it becomes leader,
/// closes it when it stops being one.
async fn lead(
    config: CoordinatorConfig,
    replica: Replica,
    artifacts: Arc<ArtifactStore>,
    serving: Arc<Serving>,
    access: Access,
) {
    let mut metrics = replica.raft().metrics();
    let mut leading: Option<Leading> = None;
    loop {
        let leader_now = replica.position().leading;
        match (leader_now, leading.is_some()) {
            (true, false) => match open(&config, &replica, &artifacts).await {
                Ok(manager) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let ticker = (manager.clone(), stop.clone());
                    let spawned = std::thread::Builder::new()
                        .name("coordinator-manager".into())
                        .spawn(move || {
                            while !ticker.1.load(Ordering::SeqCst) {
                                ticker.0.tick();
                                std::thread::sleep(TICK);
                            }
                        });
                    match spawned {
                        Err(e) => warn!(error = %e, "cannot start the manager thread"),
                        Ok(ticker) => {
                            serving
                                .set_leading(Some(routes::router(manager.clone(), access.clone())));
                            info!(
                                node = replica.id(),
                                term = replica.position().term,
                                "leading the coordinators"
                            );
                            leading = Some(Leading {
                                manager,
                                stop,
                                ticker,
                            });
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "elected, but the coordinator could not open; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
            (false, true) => {
                warn!(node = replica.id(), leader = ?replica.position().leader,
                    "no longer the leader: leaving this coordinator's attempts to the next one");
                stop_leading(leading.take().expect("checked"), &serving).await;
            }
            // Elected again in a newer term without this loop seeing the
            // leadership lapse: the manager serves the term it was opened
            // in, which workers and executors must see rise, so it is
            // replaced (its attempts are adopted by the next one).
            (true, true)
                if leading
                    .as_ref()
                    .is_some_and(|l| l.manager.term() != replica.position().term) =>
            {
                info!(
                    node = replica.id(),
                    term = replica.position().term,
                    "leading again in a newer term: reopening the coordinator"
                );
                stop_leading(leading.take().expect("checked"), &serving).await;
                continue;
            }
            _ => {}
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Stops the manager of a leadership that ended: its thread's last tick
/// ends before anything else happens here, so a manager opened after a
/// new election never runs beside it.
async fn stop_leading(leading: Leading, serving: &Serving) {
    let Leading {
        manager,
        stop,
        ticker,
    } = leading;
    serving.set_leading(None);
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || {
        let _ = ticker.join();
        manager.step_down()
    })
    .await;
}

/// The manager of a new leader, from the state machine once everything
/// committed before this term is applied.
async fn open(
    config: &CoordinatorConfig,
    replica: &Replica,
    artifacts: &Arc<ArtifactStore>,
) -> Result<Arc<Manager>> {
    replica.ensure_linearizable().await?;
    if let Err(e) = replica.correct_own_url().await {
        warn!(error = %e, "could not write this coordinator's new URL to the membership");
    }
    let meta = MetaStore::replicated(&config.data_dir, artifacts.clone(), replica.clone());
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        // A data directory of a release before Raft keeps its jobs.
        meta.import_files()?;
        Manager::open_with(config, meta)
    })
    .await
    .map_err(|e| Error::Internal(format!("opening the coordinator: {e}")))?
}
