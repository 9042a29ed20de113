//! The `sluice worker` service: registers with the coordinator, heartbeats,
//! and runs the executor processes the coordinator asks for.
//!
//! The worker owns processes and files, not decisions: every heartbeat
//! reply lists the executors wanted on this worker, and the worker makes
//! reality match (start what is missing, SIGKILL what is not listed). It
//! never restarts an executor on its own; an executor that ended is
//! reported (pid, exit code) until the coordinator stops listing it, and
//! the coordinator decides what follows.
//!
//! Files under the data directory:
//! - `artifacts/<sha256>`: job binaries, fetched once, verified, mode 755;
//! - `attempts/<job>-a<attempt>-e<executor>/`: an executor's own
//!   directory (mode 0700, its user's), removed when it ends;
//! - `logs/<job>-a<attempt>-e<executor>.log`: its stdout and stderr,
//!   whose new lines each heartbeat forwards to the coordinator
//!   ([`logs`]).
//!
//! An executor starts with a cleared environment and its `ExecutorSpec`
//! (with the attempt's secret) on its stdin, never in a file; see
//! [`crate::confine`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

use crate::client::Client;
use sluice_engine::error::{Error, Result};
use sluice_protocol::api::{
    ExecutorLaunch, ExecutorReport, Heartbeat, HeartbeatReply, RegisterWorker,
};
use sluice_protocol::control::Relay;

use crate::artifact::{remove_stale_downloads, remove_unused, ArtifactCache};
use crate::client::ClientSecurity;
use crate::confine::{self, AttemptDir, RunAs};
use logs::LogTails;
use terms::{Terms, Verdict};

mod launch;
use launch::{fetch_artifact, start_executor};
mod logs;
mod terms;

/// The file in the data directory that keeps the worker's id across its
/// restarts.
const ID_FILE: &str = "worker-id";
/// Used when the coordinator's registration answer gives no interval.
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Cap of the back-off between attempts to reach the coordinator.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Retries of an artifact download that failed for want of a coordinator.
const FETCH_RETRIES: u32 = 3;
/// How long shutdown waits for killed executors to be reaped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the worker removes cached binaries no job needs any more.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// A cached binary is removed only once it is this old: one just fetched
/// may be for a job the coordinator has not listed yet.
const PRUNE_GRACE: Duration = Duration::from_secs(3600);
/// What tells an executor where its spec is, and the value that means
/// "on your stdin".
const EXECUTOR_ENV: &str = sluice_engine::dsl::EXECUTOR_ENV;
const SPEC_ON_STDIN: &str = sluice_engine::executor::SPEC_ON_STDIN;
/// Linux's ETXTBSY: a binary just written may still be open for writing in
/// a child forked concurrently (before its exec closed the descriptor).
const TEXT_FILE_BUSY: i32 = 26;

/// Settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's REST URL (`http://host:port`).
    pub coordinator: String,
    /// Slots offered.
    pub slots: usize,
    /// Artifacts, executors' own directories and logs.
    pub data_dir: PathBuf,
    /// Host the executors' exchange listeners bind (and peers dial).
    pub listen_host: String,
    /// Declared capacity, the weight of the weighted scheduler.
    pub capacity: f64,
    /// Token and trusted certificates for the coordinator's API.
    pub security: ClientSecurity,
    /// Run executors as this user (the worker must be root).
    pub run_as: Option<RunAs>,
}

impl WorkerConfig {
    /// Defaults around the required settings: exchange on 127.0.0.1,
    /// capacity 1, no token, the system's CA roots.
    pub fn new(coordinator: impl Into<String>, slots: usize, data_dir: impl Into<PathBuf>) -> Self {
        WorkerConfig {
            coordinator: coordinator.into(),
            slots,
            data_dir: data_dir.into(),
            listen_host: "127.0.0.1".into(),
            capacity: 1.0,
            security: ClientSecurity::default(),
            run_as: None,
        }
    }
}

/// Runs a worker until SIGTERM or ctrl-c, then kills its executors.
pub async fn run(config: WorkerConfig) -> Result<()> {
    run_until(config, shutdown_signal()).await
}

/// Runs a worker until `shutdown` completes, then kills its executors.
///
/// Returns early with an error only when the worker cannot work at all
/// (its data directory is unusable, or the coordinator refuses its
/// registration); an unreachable coordinator is retried forever.
pub async fn run_until(config: WorkerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut worker = Worker::new(config).await?;
    let result = tokio::select! {
        r = worker.serve() => r,
        () = shutdown => {
            info!("worker shutting down");
            Ok(())
        }
    };
    worker.stop_all().await;
    result
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the worker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Identity of an executor process: one per (job, attempt, executor).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ExecutorKey {
    job_id: String,
    attempt: u64,
    executor: usize,
}

impl ExecutorKey {
    fn of(launch: &ExecutorLaunch) -> Self {
        ExecutorKey {
            job_id: launch.spec.job_id.clone(),
            attempt: launch.spec.attempt,
            executor: launch.spec.executor,
        }
    }

    /// File name stem; the job id comes from the network, so it is kept to
    /// characters that cannot leave the directory.
    fn file_stem(&self) -> String {
        let job: String = self
            .job_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{job}-a{}-e{}", self.attempt, self.executor)
    }

    /// Where the executor's stdout and stderr go.
    fn log_path(&self, data_dir: &std::path::Path) -> PathBuf {
        data_dir
            .join("logs")
            .join(format!("{}.log", self.file_stem()))
    }
}

/// What heartbeats report of an executor. `pid` is unset while the
/// artifact is being fetched; an executor that could not be started is
/// reported as pid 0 with exit -1 so the coordinator does not wait for it
/// (its log then holds the worker's note of why).
#[derive(Debug, Clone, Copy, Default)]
struct ExecutorStatus {
    pid: Option<u32>,
    exit: Option<i32>,
    /// Where its output starts in its log file (set with `pid`).
    log_from: u64,
}

/// An executor this worker started (or is starting).
struct Executor {
    status: Arc<Mutex<ExecutorStatus>>,
    /// Sending, or dropping, kills the process.
    kill: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Where its coordinator is now (term, control address), and the
    /// relay of a new one to its stdin.
    leader: (u64, String),
    relay: mpsc::UnboundedSender<Relay>,
}

impl Executor {
    fn status(&self) -> ExecutorStatus {
        *lock(&self.status)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain data, valid even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What executor tasks share with the worker.
struct Shared {
    client: Client,
    artifacts: ArtifactCache,
    data_dir: PathBuf,
    run_as: Option<RunAs>,
}

struct Worker {
    config: WorkerConfig,
    shared: Arc<Shared>,
    worker_id: Option<String>,
    interval: Duration,
    executors: HashMap<ExecutorKey, Executor>,
    /// Tasks of executors killed because they were no longer listed;
    /// shutdown waits for them too.
    dying: Vec<JoinHandle<()>>,
    /// When cached binaries were last pruned.
    last_prune: std::time::Instant,
    /// Artifacts whose prefetch was started (the cache serializes fetches
    /// of one artifact, so an executor start waits for it rather than
    /// downloading twice).
    prefetched: HashSet<String>,
    /// The newest Raft term seen in the coordinators' answers.
    terms: Terms,
    /// The stale term last warned of (one warning per deposed leader).
    stale_warned: Option<u64>,
    /// The executors' logs, forwarded with the heartbeats.
    logs: LogTails,
}

impl Worker {
    async fn new(config: WorkerConfig) -> Result<Worker> {
        if config.slots == 0 {
            return Err(Error::Config("a worker needs at least one slot".into()));
        }
        if !(config.capacity.is_finite() && config.capacity > 0.0) {
            return Err(Error::Config(format!(
                "worker capacity must be a positive number, not {}",
                config.capacity
            )));
        }
        let client = Client::secured(&config.coordinator, &config.security)?;
        for sub in ["artifacts", confine::ATTEMPTS, "logs"] {
            let dir = config.data_dir.join(sub);
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        // Executors run in other directories: every path handed to them
        // (binary, attempt directory) must be absolute.
        let data_dir = tokio::fs::canonicalize(&config.data_dir)
            .await
            .map_err(|e| Error::io(format!("resolving {}", config.data_dir.display()), e))?;
        let (dir, run_as) = (data_dir.clone(), config.run_as.clone());
        tokio::task::spawn_blocking(move || confine::lock_down(&dir, run_as.as_ref()))
            .await
            .map_err(|e| Error::Internal(format!("setting up {}: {e}", data_dir.display())))??;
        // Attempt directories a previous worker process left: the
        // coordinator fails the attempts a restarted worker had.
        let attempts = data_dir.join(confine::ATTEMPTS);
        let mut stale = tokio::fs::read_dir(&attempts)
            .await
            .map_err(|e| Error::io(format!("reading {}", attempts.display()), e))?;
        while let Ok(Some(entry)) = stale.next_entry().await {
            if let Err(e) = tokio::fs::remove_dir_all(entry.path()).await {
                warn!(dir = %entry.path().display(), error = %e, "cannot remove a stale attempt directory");
            }
        }
        // Earlier releases wrote executor specs, attempt secrets included,
        // to this shared directory.
        let old_specs = data_dir.join("executors");
        if tokio::fs::metadata(&old_specs).await.is_ok() {
            tokio::fs::remove_dir_all(&old_specs)
                .await
                .map_err(|e| Error::io(format!("removing {}", old_specs.display()), e))?;
        }
        remove_stale_downloads(&data_dir.join("artifacts")).await;
        // The id a worker got before on this data directory: registering
        // with it tells the coordinator this worker restarted.
        let worker_id = match tokio::fs::read_to_string(data_dir.join(ID_FILE)).await {
            Ok(id) => Some(id.trim().to_string()).filter(|id| !id.is_empty()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::io(
                    format!("reading {}", data_dir.join(ID_FILE).display()),
                    e,
                ))
            }
        };
        let shared = Arc::new(Shared {
            client,
            artifacts: ArtifactCache::new(data_dir.join("artifacts")),
            data_dir,
            run_as: config.run_as.clone(),
        });
        Ok(Worker {
            config,
            shared,
            worker_id,
            interval: DEFAULT_HEARTBEAT_INTERVAL,
            executors: HashMap::new(),
            dying: Vec::new(),
            prefetched: HashSet::new(),
            last_prune: std::time::Instant::now(),
            terms: Terms::default(),
            stale_warned: None,
            logs: LogTails::default(),
        })
    }

    async fn serve(&mut self) -> Result<()> {
        self.register().await?;
        let mut ticker = self.ticker();
        let mut unreachable = false;
        loop {
            ticker.tick().await;
            let mut heartbeat = self.heartbeat();
            let (logs, pending) = self.logs.read().await;
            heartbeat.logs = logs;
            let id = self
                .worker_id
                .clone()
                .expect("registered before the first heartbeat");
            // A heartbeat that outlives the coordinator's timeout is useless;
            // bounding it keeps the loop (and executor reports) moving.
            let timeout = (self.interval * 2).max(Duration::from_secs(1));
            match self.shared.client.heartbeat(&id, &heartbeat, timeout).await {
                Ok(reply) => {
                    if unreachable {
                        info!(worker = %id, "coordinator reachable again");
                        unreachable = false;
                    }
                    if self.accept_term(reply.term) {
                        // A deposed leader's copy of the lines serves no
                        // one: they go again, to the next coordinator.
                        self.logs.delivered(pending);
                        self.reconcile(reply);
                    }
                }
                Err(Error::Api { status: 404, .. }) => {
                    info!(worker = %id, "the coordinator does not know this worker (a new leader, or a restarted coordinator); registering again");
                    let before = self.interval;
                    self.register().await?;
                    if self.interval != before {
                        ticker = self.ticker();
                    }
                    // A new leader lists this worker's executors in its
                    // first answer (adopted attempts wait for them): at once.
                    ticker.reset_immediately();
                }
                Err(e) => {
                    // Logged once per outage: a dead coordinator would
                    // otherwise fill the log at the heartbeat rate.
                    if unreachable {
                        debug!(worker = %id, error = %e, "heartbeat failed");
                    } else {
                        warn!(worker = %id, error = %e, "heartbeat failed; executors keep running, retrying");
                        unreachable = true;
                    }
                }
            }
            self.dying.retain(|t| !t.is_finished());
        }
    }

    fn ticker(&self) -> tokio::time::Interval {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    }

    /// Registers (again, under the same id, after the coordinator forgot
    /// it), retrying until the coordinator answers. A 4xx answer is final:
    /// retrying the same request cannot change it.
    async fn register(&mut self) -> Result<()> {
        let request = RegisterWorker {
            worker_id: self.worker_id.clone(),
            slots: self.config.slots,
            capacity: self.config.capacity,
            host: self.config.listen_host.clone(),
        };
        let mut delay = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            match self.shared.client.register(&request).await {
                Ok(registered) if !self.accept_term(registered.term) => {
                    tokio::time::sleep(delay).await;
                }
                Ok(registered) => {
                    info!(
                        worker = %registered.worker_id,
                        coordinator = %self.shared.client.base_url(),
                        slots = self.config.slots,
                        "worker registered"
                    );
                    if self.worker_id.as_deref() != Some(registered.worker_id.as_str()) {
                        let path = self.shared.data_dir.join(ID_FILE);
                        tokio::fs::write(&path, format!("{}\n", registered.worker_id))
                            .await
                            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                    }
                    self.worker_id = Some(registered.worker_id);
                    if registered.heartbeat_interval_ms > 0 {
                        self.interval = Duration::from_millis(registered.heartbeat_interval_ms);
                    }
                    return Ok(());
                }
                Err(Error::Api { status, message }) if (400..500).contains(&status) => {
                    return Err(Error::Api { status, message });
                }
                Err(e) => {
                    if failures == 0 {
                        warn!(error = %e, "cannot register with the coordinator; retrying");
                    } else {
                        debug!(error = %e, "registration failed");
                    }
                    failures += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    /// Whether an answer given under `term` may be acted on. A deposed
    /// leader's (an older term than one seen) is not, and the next request
    /// goes to another coordinator.
    fn accept_term(&mut self, term: u64) -> bool {
        let coordinator = self.shared.client.base_url();
        match self.terms.observe(term) {
            Verdict::Current => true,
            Verdict::Newer { from } => {
                if from > 0 {
                    info!(from, to = term, %coordinator, "the coordinators have a new leader");
                }
                true
            }
            Verdict::Stale { newest } => {
                if self.stale_warned != Some(term) {
                    self.stale_warned = Some(term);
                    warn!(term, newest, %coordinator,
                        "refusing the instructions of a deposed coordinator (its term is older than one this worker has seen); asking another");
                }
                self.shared.client.rotate();
                false
            }
        }
    }

    fn heartbeat(&self) -> Heartbeat {
        let mut executors: Vec<ExecutorReport> = self
            .executors
            .iter()
            .filter_map(|(key, e)| {
                let status = e.status();
                Some(ExecutorReport {
                    job_id: key.job_id.clone(),
                    attempt: key.attempt,
                    executor: key.executor,
                    pid: status.pid?,
                    exit: status.exit,
                })
            })
            .collect();
        executors.sort_by(|a, b| {
            (&a.job_id, a.attempt, a.executor).cmp(&(&b.job_id, b.attempt, b.executor))
        });
        Heartbeat {
            executors,
            logs: Vec::new(),
            // Two small files of the kernel's, in memory: no real I/O.
            process: sluice_engine::metrics::process(),
        }
    }

    /// Makes the running executors match the reply.
    /// Removes cached binaries of jobs that ended (the coordinator lists
    /// every job that has not in `prefetch`), off the async workers.
    fn prune(&mut self, reply: &HeartbeatReply) {
        let used: HashSet<String> = reply
            .prefetch
            .iter()
            .cloned()
            .chain(reply.executors.iter().map(|l| l.artifact.clone()))
            .collect();
        self.prefetched.retain(|sha| used.contains(sha));
        let dir = self.shared.data_dir.join("artifacts");
        tokio::task::spawn_blocking(move || match remove_unused(&dir, &used, PRUNE_GRACE) {
            Ok(removed) if !removed.is_empty() => {
                info!(artifacts = ?removed, "removed cached binaries no job needs");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot prune cached binaries"),
        });
    }

    fn reconcile(&mut self, reply: HeartbeatReply) {
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.last_prune = std::time::Instant::now();
            self.prune(&reply);
        }
        for sha in reply.prefetch {
            if self.prefetched.insert(sha.clone()) {
                let shared = Arc::clone(&self.shared);
                tokio::spawn(async move {
                    if let Err(e) = fetch_artifact(&shared, &sha).await {
                        warn!(artifact = %sha, error = %e, "prefetching a job binary failed");
                    }
                });
            }
        }
        let wanted: HashMap<ExecutorKey, ExecutorLaunch> = reply
            .executors
            .into_iter()
            .map(|l| (ExecutorKey::of(&l), l))
            .collect();
        let unwanted: Vec<ExecutorKey> = self
            .executors
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in unwanted {
            let Some(mut executor) = self.executors.remove(&key) else {
                continue;
            };
            if executor.status().pid.is_none() {
                // Never started: no log to forward.
                self.logs.forget(&key);
            }
            if executor.status().exit.is_none() {
                info!(job = %key.job_id, attempt = key.attempt, executor = key.executor, "killing executor the coordinator no longer lists");
                if let Some(kill) = executor.kill.take() {
                    let _ = kill.send(());
                }
                self.dying.push(executor.task);
            }
        }
        for (key, launch) in wanted {
            if let Some(executor) = self.executors.get_mut(&key) {
                // A new leader adopted the attempt: the executor learns
                // where it is.
                let relay = Relay {
                    control: launch.spec.control,
                    term: launch.spec.term,
                };
                let (term, control) = &executor.leader;
                if relay.supersedes(*term, control) && executor.status().exit.is_none() {
                    info!(job = %key.job_id, attempt = key.attempt, executor = key.executor,
                        control = %relay.control, term = relay.term, "relaying the new leader to the executor");
                    executor.leader = (relay.term, relay.control.clone());
                    let _ = executor.relay.send(relay);
                }
                continue;
            }
            if !self.terms.may_start(launch.spec.term) {
                warn!(job = %key.job_id, attempt = key.attempt, term = launch.spec.term,
                    newest = self.terms.newest(), "not starting an attempt of an older term than one seen");
                continue;
            }
            let status = Arc::new(Mutex::new(ExecutorStatus::default()));
            self.logs.watch(
                key.clone(),
                key.log_path(&self.shared.data_dir),
                Arc::clone(&status),
            );
            let (kill, killed) = oneshot::channel();
            let (relay, relays) = mpsc::unbounded_channel();
            let leader = (launch.spec.term, launch.spec.control.clone());
            let task = tokio::spawn(run_executor(
                Arc::clone(&self.shared),
                key.clone(),
                launch,
                Arc::clone(&status),
                (killed, relays),
            ));
            self.executors.insert(
                key,
                Executor {
                    status,
                    kill: Some(kill),
                    task,
                    leader,
                    relay,
                },
            );
        }
    }

    /// Kills every executor and waits (a bounded time) until they are reaped.
    async fn stop_all(&mut self) {
        let mut tasks = std::mem::take(&mut self.dying);
        for (_, mut executor) in self.executors.drain() {
            if let Some(kill) = executor.kill.take() {
                let _ = kill.send(());
            }
            tasks.push(executor.task);
        }
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            warn!("executors still not reaped after {SHUTDOWN_GRACE:?}");
        }
    }
}

/// Starts one executor and watches it until it exits or is killed.
async fn run_executor(
    shared: Arc<Shared>,
    key: ExecutorKey,
    launch: ExecutorLaunch,
    status: Arc<Mutex<ExecutorStatus>>,
    (mut kill, relays): (oneshot::Receiver<()>, mpsc::UnboundedReceiver<Relay>),
) {
    let started = tokio::select! {
        r = start_executor(&shared, &key, &launch, relays) => r,
        // Unlisted before it started: nothing to kill.
        _ = &mut kill => return,
    };
    let (mut child, dir, log_from) = match started {
        Ok(started) => started,
        Err(e) => {
            error!(job = %key.job_id, attempt = key.attempt, executor = key.executor, error = %e, "cannot start executor");
            // Said in the executor's log too, so `sluice logs` tells the
            // user why their executor never ran.
            let note = format!("sluice worker: cannot start the executor: {e}\n");
            let log_from = logs::note(&key.log_path(&shared.data_dir), note).await;
            *lock(&status) = ExecutorStatus {
                pid: Some(0),
                exit: Some(-1),
                log_from,
            };
            return;
        }
    };
    let pid = child.id().unwrap_or(0);
    {
        let mut status = lock(&status);
        status.pid = Some(pid);
        status.log_from = log_from;
    }
    info!(job = %key.job_id, attempt = key.attempt, executor = key.executor, pid, "executor started");
    let exited = tokio::select! {
        s = child.wait() => s,
        _ = &mut kill => {
            // start_kill is SIGKILL on Unix: an unlisted executor belongs to
            // a fenced attempt and must not get to write anything more.
            if let Err(e) = child.start_kill() {
                warn!(pid, error = %e, "kill failed");
            }
            child.wait().await
        }
    };
    let code = match exited {
        Ok(s) => s.code().unwrap_or(-1),
        Err(e) => {
            warn!(pid, error = %e, "cannot wait for executor");
            -1
        }
    };
    info!(job = %key.job_id, attempt = key.attempt, executor = key.executor, pid, exit = code, "executor ended");
    dir.remove().await;
    lock(&status).exit = Some(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_safe() {
        let key = ExecutorKey {
            job_id: "../j 1".into(),
            attempt: 3,
            executor: 2,
        };
        assert_eq!(key.file_stem(), "___j_1-a3-e2");
    }
}
