//! The web UI and the job routes for a job embedded in this process
//! (`SLUICE_UI=ADDR`, or [`JobConfig::ui`]): the page and API the
//! coordinator serves ([`jobs_api`]), over this one job, on a thread of
//! its own with a small async runtime, until the job ends. A token in
//! `SLUICE_TOKEN` is required of API calls as on a coordinator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use super::{cancel, counters, request_savepoint, Current, JobConfig};
use crate::checkpoint::coordinator::CompletionHook;
use crate::checkpoint::{CheckpointRecord, CheckpointStats, Location};
use sluice_protocol::api::{
    Checkpoints, ClusterInfo, JobDescription, JobResults, JobState, JobStatus, Placement,
    SavepointRequest, SavepointTaken, WorkerInfo,
};
use sluice_protocol::metrics::{ExecutorProcess, JobMetrics};
use sluice_protocol::results::LatestRows;
use sluice_web::{self as jobs_api, Access, History, JobsView, Metrics, Token};

use crate::error::{Error, Result};
use crate::executor::describe::describe;
use crate::executor::results::render;
use crate::graph::LogicalGraph;
use crate::metrics::Sampler;
use crate::plan::PhysicalPlan;

/// The id the embedded job has in the API.
pub const EMBEDDED_JOB_ID: &str = "embedded";
/// The one "worker": this process.
const THIS_PROCESS: &str = "this-process";

/// One embedded job as the job routes see it.
pub(crate) struct EmbeddedView {
    description: JobDescription,
    parallelism: usize,
    args: Vec<String>,
    workdir: Option<String>,
    started_ms: i64,
    current: Arc<Mutex<Current>>,
    user_cancel: Arc<AtomicBool>,
    stats: Arc<Mutex<CheckpointStats>>,
    results: Mutex<LatestRows>,
    metrics: Arc<Metrics>,
    /// Rates of the subtasks' meters, between requests.
    sampler: Sampler,
    /// The recent figures behind the UI's charts.
    history: History,
}

/// The UI's thread; dropping it stops the server.
pub(crate) struct UiServer {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for UiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl EmbeddedView {
    pub(crate) fn new(
        graph: &LogicalGraph,
        plan: &PhysicalPlan,
        config: &JobConfig,
        current: Arc<Mutex<Current>>,
        user_cancel: Arc<AtomicBool>,
        stats: Arc<Mutex<CheckpointStats>>,
    ) -> Self {
        EmbeddedView {
            description: describe(graph, plan, config),
            parallelism: config.parallelism,
            args: std::env::args().skip(1).collect(),
            workdir: std::env::current_dir()
                .ok()
                .map(|d| d.to_string_lossy().into_owned()),
            started_ms: now_ms(),
            current,
            user_cancel,
            stats,
            results: Mutex::default(),
            metrics: Arc::default(),
            sampler: Sampler::default(),
            history: History::new(std::time::Duration::from_secs(1)),
        }
    }

    /// What the checkpoint coordinator calls for each completed
    /// checkpoint: the histograms `/metrics` shows.
    pub(crate) fn completion_hook(&self) -> CompletionHook {
        let metrics = self.metrics.clone();
        Arc::new(move |r: &CheckpointRecord| {
            metrics.checkpoint_completed(EMBEDDED_JOB_ID, &r.figures);
        })
    }

    /// Binds `addr` (failing here if it cannot) and serves on a thread.
    pub(crate) fn serve(self, addr: SocketAddr) -> Result<UiServer> {
        let token = Token::from_file_or_env(None).map_err(|e| Error::Config(e.to_string()))?;
        let access = Access::new(token, None).map_err(|e| Error::Config(e.to_string()))?;
        let (listener, local) =
            jobs_api::bind(addr, "the web UI").map_err(|e| Error::Config(e.to_string()))?;
        let view = Arc::new(self);
        let app = jobs_api::secure(jobs_api::routes::<EmbeddedView>(), access)
            .merge(jobs_api::ui_routes())
            .with_state(view.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the web UI's runtime", e))?;
        let thread = std::thread::Builder::new()
            .name("web-ui".into())
            .spawn(move || {
                let stop = async {
                    let _ = rx.await;
                };
                let served = runtime.block_on(async {
                    let _sampler = jobs_api::spawn_sampler(&view);
                    jobs_api::serve(listener, app, None, stop).await
                });
                if let Err(e) = served {
                    warn!(error = %e, "the web UI stopped");
                }
            })
            .map_err(|e| Error::io("spawning the web UI's thread", e))?;
        info!(ui = %format!("http://{local}/ui"), "web UI of the embedded job");
        Ok(UiServer {
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    fn state(&self, cur: &Current) -> (JobState, Option<String>) {
        let cancelled = self.user_cancel.load(Ordering::SeqCst);
        match (&cur.ended, &cur.restarting) {
            (Some(None), _) => (JobState::Finished, None),
            (Some(Some(_)), _) if cancelled => (JobState::Canceled, None),
            (Some(Some(e)), _) => (JobState::Failed, Some(e.clone())),
            (None, Some(e)) => (JobState::Restarting, Some(e.clone())),
            (None, None) if cur.control.is_some() => (JobState::Running, None),
            (None, None) => (JobState::Created, None),
        }
    }

    /// The job's state alone (no counters or plan copied).
    fn job_state(&self) -> JobState {
        self.state(&self.current.lock().expect("job handle lock")).0
    }

    fn status(&self) -> JobStatus {
        let cur = self.current.lock().expect("job handle lock");
        let (state, error) = self.state(&cur);
        let stats = self.stats.lock().expect("stats lock");
        let running = state == JobState::Running;
        JobStatus {
            id: EMBEDDED_JOB_ID.into(),
            name: self.description.name.clone(),
            state,
            attempt: cur.attempt,
            restarts: stats.restarts,
            artifact: String::new(),
            args: self.args.clone(),
            submitted_ms: self.started_ms,
            updated_ms: now_ms(),
            error,
            latest_checkpoint: stats
                .recent
                .iter()
                .filter(|r| !r.savepoint)
                .map(|r| r.id)
                .max(),
            rejected_stale: 0,
            placement: if running {
                self.description
                    .tasks()
                    .into_iter()
                    .map(|task| Placement {
                        task,
                        worker: THIS_PROCESS.into(),
                        executor: 0,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            nodes: counters(&cur.metrics),
            vertices: self.description.vertices.clone(),
            parallelism: self.parallelism,
            workdir: self.workdir.clone(),
            rescaling_to: None,
            restart: self.description.restart,
            // An embedded run logs its failures; the history is kept by
            // a coordinator.
            exceptions: Vec::new(),
            // Rescaling needs a coordinator.
            autoscaler: None,
        }
    }

    fn this_job(&self, id: &str) -> Result<()> {
        if id == EMBEDDED_JOB_ID {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "no job {id} (this process runs job '{EMBEDDED_JOB_ID}')"
            )))
        }
    }
}

impl JobsView for EmbeddedView {
    fn jobs(&self) -> Vec<JobStatus> {
        vec![self.status()]
    }

    fn job(&self, id: &str) -> Option<JobStatus> {
        self.this_job(id).ok().map(|()| self.status())
    }

    fn checkpoints(&self, id: &str) -> Option<Checkpoints> {
        self.this_job(id).ok()?;
        let stats = self.stats.lock().expect("stats lock").clone();
        Some(Checkpoints {
            job_id: EMBEDDED_JOB_ID.into(),
            dir: self.description.checkpoint.as_ref().map(|c| c.dir.clone()),
            latest: stats
                .recent
                .iter()
                .filter(|r| !r.savepoint)
                .map(|r| r.id)
                .max(),
            stats,
        })
    }

    fn results(&self, id: &str) -> Option<JobResults> {
        self.this_job(id).ok()?;
        // Sinks keep the tail of their last batch until it is taken; this
        // is the only taker in an embedded run.
        let metrics = self
            .current
            .lock()
            .expect("job handle lock")
            .metrics
            .clone();
        let mut kept = self.results.lock().expect("results lock");
        let now = now_ms();
        for (node, m) in metrics.iter().enumerate() {
            if let Some(tail) = m.take_tail() {
                match render(node, &tail) {
                    Ok(rows) => kept.add(rows, now),
                    Err(e) => warn!(node, error = %e, "a sink's rows cannot be shown"),
                }
            }
        }
        Some(kept.to_results(EMBEDDED_JOB_ID, &self.description))
    }

    fn job_metrics(&self, id: &str) -> Option<JobMetrics> {
        self.this_job(id).ok()?;
        let meters = self.current.lock().expect("job handle lock").meters.clone();
        let running = self.job_state() == JobState::Running;
        let (subtasks, executors) = if running {
            let process = crate::metrics::process().map(|process| ExecutorProcess {
                executor: 0,
                process,
            });
            (self.sampler.sample(&meters), process.into_iter().collect())
        } else {
            (Vec::new(), Vec::new())
        };
        Some(JobMetrics::new(
            EMBEDDED_JOB_ID,
            now_ms(),
            &self.description.vertices,
            subtasks,
            executors,
        ))
    }

    fn workers(&self) -> Vec<WorkerInfo> {
        let slots = self.description.slots();
        let running = self.job_state() == JobState::Running;
        vec![WorkerInfo {
            id: THIS_PROCESS.into(),
            slots,
            used_slots: if running { slots } else { 0 },
            capacity: 1.0,
            host: "localhost".into(),
            alive: true,
            since_heartbeat_ms: 0,
            // The job's process is the executor; its figures are the job's.
            process: None,
        }]
    }

    fn cluster(&self) -> ClusterInfo {
        let slots = self.description.slots();
        let state = self.job_state();
        ClusterInfo {
            workers_alive: 1,
            slots,
            used_slots: if state == JobState::Running { slots } else { 0 },
            jobs: [(state, 1)].into(),
            heartbeat_timeout_ms: 0,
            control: String::new(),
        }
    }

    fn cancel(&self, id: &str) -> sluice_web::Result<JobStatus> {
        self.this_job(id)?;
        let state = self.job_state();
        if state.is_terminal() {
            return Err(sluice_web::Error::Conflict(format!(
                "job {id} already ended ({})",
                state.name()
            )));
        }
        cancel(&self.user_cancel, &self.current);
        Ok(self.status())
    }

    fn savepoint(&self, id: &str, request: SavepointRequest) -> sluice_web::Result<SavepointTaken> {
        self.this_job(id)?;
        let location = request_savepoint(
            &self.current,
            Location::from(request.dir.as_str()),
            request.stop,
        )?;
        Ok(SavepointTaken {
            location: location.to_string(),
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn history(&self) -> &History {
        &self.history
    }
}
