//! The describe and task-executor modes of a job binary.
//!
//! - [`describe`]: the job's plan as a [`JobDescription`](sluice_protocol::api::JobDescription).
//! - [`results`]: a sink's newest rows rendered as text.
//!
//! The task-executor mode of a job binary: run the subtasks an
//! [`ExecutorSpec`] assigns, wired to the other executors of the attempt
//! over the TCP exchange and driven by the coordinator over the control
//! connection.
//!
//! It owns the executor's life cycle: plan (the same planner as embedded
//! runs), listen for exchange peers, say hello to the coordinator and wait
//! for the peers' addresses, connect (executor `i` dials every `j > i` it
//! shares a channel with and accepts the `j < i`), start the local subtask
//! threads exactly as an embedded run does, and relay checkpointing: the
//! coordinator's task messages go to the tasks' control channels, a local
//! snapshot writer stores snapshots where `Prepare` said, and its
//! acknowledgements go back as frames. It must not commit anything on its
//! own: commits follow `TaskControl::Complete`, which only the coordinator
//! sends, so an executor that loses its control connection (fenced, or the
//! coordinator is gone) cancels its tasks.

mod control;
pub mod describe;
mod peers;
mod rejoin;
pub mod results;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tracing::{debug, info, warn};

use crate::checkpoint::coordinator::{CheckpointDirs, CoordinatorMsg, TaskControl, TaskKey};
use crate::checkpoint::restore::RestorePlan;
use crate::checkpoint::store::load_verified;
use crate::checkpoint::{CheckpointStats, Location, Storage};
use crate::data::StreamMessage;
use crate::error::{Error, Result};
use crate::exchange::frame::ChannelId;
use crate::exchange::frame::Hello;
use crate::exchange::tcp::{
    connect, Connection, ConnectionHandle, ConnectionSpec, ExchangeConfig, NetListener, PeerSpecs,
};
use crate::exchange::ChannelSender;
use crate::graph::LogicalGraph;
use crate::metrics::{Sampler, TaskMeter};
use crate::plan::{plan, PhysicalPlan};
use crate::runtime::{
    checkpoint_channels, counters, node_metrics, plan_channels, run_state, spawn_tasks,
    spawn_writer, summaries, task_meters, wire, ErrorHook, ExecutorShare, JobConfig, JobControl,
    JobResult, NodeMetrics, RemoteEnds, TaskContext,
};
use crate::tls::stream::{StreamReader, StreamWriter};
use crate::tls::{ClusterTls, SecureStream};
use control::{
    report, spawn_control_reader, spawn_forwarder, spawn_metrics, ControlLink, ReaderParts,
    Reported,
};
use peers::{host_port, peer_name, resolve, resolve_addr, Conns};
use sluice_protocol::api::ExecutorSpec;
use sluice_protocol::control::{read_frame, write_frame, ToCoordinator, ToExecutor};
use sluice_protocol::metrics::ExecutorMetrics;

/// How often counters go to the coordinator.
const METRICS_INTERVAL: Duration = Duration::from_millis(250);
/// How often the metrics thread looks at cancellation.
const TICK: Duration = Duration::from_millis(100);
/// Bound on waiting for exchange peers to connect.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the clean end: exchange connections flushing their last
/// frames, and the coordinator closing after `Done`.
const END_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on reaching the coordinator's control address.
const CONTROL_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for the coordinator to take a failure report.
const FAILED_LINGER: Duration = Duration::from_secs(2);

/// The `SLUICE_EXECUTOR` value that means the spec comes on stdin (as a
/// worker hands it over: the attempt's secret never touches a file).
pub const SPEC_ON_STDIN: &str = "-";

/// Reads an [`ExecutorSpec`] from a JSON file, or from the first line of
/// stdin when `path` is [`SPEC_ON_STDIN`]; the lines after it are the
/// worker's relays of new leaders ([`rejoin`]), read from then on.
pub fn read_spec(path: &str) -> Result<ExecutorSpec> {
    let bytes = if path == SPEC_ON_STDIN {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line)
            .map_err(|e| Error::io("reading the executor spec from stdin", e))?;
        rejoin::read_relays()?;
        line.into_bytes()
    } else {
        std::fs::read(path).map_err(|e| Error::io(format!("reading {path}"), e))?
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Config(format!("{path} is not an executor spec: {e}")))
}

/// Runs the executor's share of `graph` until its tasks end, it fails, or
/// the coordinator cancels it. The result's counters are this executor's.
pub fn run(graph: &LogicalGraph, config: &JobConfig, spec: &ExecutorSpec) -> Result<JobResult> {
    run_until(graph, config, spec, Arc::default())
}

/// [`run`], also cancelled when `user_cancel` is set.
pub(crate) fn run_until(
    graph: &LogicalGraph,
    config: &JobConfig,
    spec: &ExecutorSpec,
    user_cancel: Arc<AtomicBool>,
) -> Result<JobResult> {
    let started = Instant::now();
    let plan = plan(
        graph,
        spec.parallelism,
        config.max_parallelism,
        config.chaining,
    )?;
    let all: HashSet<TaskKey> = plan.tasks().collect();
    if let Some(t) = spec.tasks.iter().find(|t| !all.contains(t)) {
        return Err(Error::Config(format!(
            "executor {} is assigned subtask {} of vertex {}, which the plan does not have",
            spec.executor, t.subtask, t.vertex
        )));
    }
    let control = Arc::new(JobControl::default());
    let me = spec.executor;
    let mut xcfg = ExchangeConfig::new(&spec.job_id, spec.attempt, peer_name(me));
    xcfg.channel_capacity = config.channel_capacity;
    xcfg.cancelled = control.cancelled.clone();
    xcfg.secret = spec.secret.clone();
    xcfg.tls = spec
        .tls
        .as_ref()
        .map(ClusterTls::from_attempt)
        .transpose()?;
    let bind = resolve(&spec.bind_host, 0)?;
    let listener = NetListener::bind(bind, xcfg.clone())?;
    let exchange = host_port(&spec.bind_host, listener.local_addr()?.port());

    let link = ControlLink::dial(&spec.control, xcfg.tls.as_ref())?;
    let mut reader = link.reader()?;
    link.send(&ToCoordinator::Hello {
        protocol: sluice_protocol::PROTOCOL_VERSION,
        job_id: spec.job_id.clone(),
        attempt: spec.attempt,
        term: spec.term,
        executor: me,
        exchange: exchange.clone(),
        secret: spec.secret.clone(),
        rejoin: None,
    })?;
    let (peers, placement) = peers_of(
        read_frame::<_, ToExecutor>(&mut reader)?,
        &spec.control,
        spec.term,
        &format!("executor {me} of attempt {}", spec.attempt),
    )?;
    if peers.len() != spec.executors {
        return Err(Error::Protocol(format!(
            "the coordinator names {} executors, the spec {}",
            peers.len(),
            spec.executors
        )));
    }
    info!(job = %spec.job_id, attempt = spec.attempt, executor = me, tasks = spec.tasks.len(),
        "executor registered");
    let fence = Arc::new(Fence::new(spec.term));
    {
        let (link, fence) = (link.clone(), fence.clone());
        control.on_first_error(ErrorHook(Box::new(move |e: &Error| {
            if !fence.reported.swap(true, Ordering::SeqCst) {
                let _ = link.send(&ToCoordinator::Failed {
                    error: e.to_string(),
                    retry: e.retry(),
                });
            }
        })));
    }
    let run = Run {
        graph,
        config,
        spec,
        plan: &plan,
        control: &control,
        link: &link,
        fence: &fence,
        user_cancel,
        rejoin: rejoin::Rejoiner::for_spec(spec, exchange, xcfg.tls.clone()),
    };
    match run.run(listener, xcfg, reader, &peers, &placement, started) {
        Ok(r) => Ok(r),
        Err(e) => {
            warn!(job = %spec.job_id, executor = me, error = %e, "executor failed");
            if !fence.reported.swap(true, Ordering::SeqCst) {
                let _ = link.send(&ToCoordinator::Failed {
                    error: e.to_string(),
                    retry: e.retry(),
                });
            }
            // Closing with unread frames would reset the connection and
            // could lose the report: let the coordinator close it first.
            link.shutdown_write();
            if fence.reading.load(Ordering::SeqCst) {
                fence.wait_closed(FAILED_LINGER);
            }
            link.close();
            Err(e)
        }
    }
}

/// Every executor's exchange address, and which executor runs each subtask.
type Peers = (Vec<String>, Vec<(TaskKey, usize)>);

/// The exchange addresses and placement a coordinator answered a hello
/// with. Only a coordinator serving `term` may run the attempt: one of
/// another term is another leadership's.
fn peers_of(answer: Option<ToExecutor>, control: &str, term: u64, who: &str) -> Result<Peers> {
    match answer {
        Some(ToExecutor::Peers {
            exchange,
            placement,
            term: theirs,
        }) if theirs == term => Ok((exchange, placement)),
        Some(ToExecutor::Peers { term: theirs, .. }) => Err(Error::Exchange(format!(
            "the coordinator at {control} serves term {theirs}, but {who} serves term {term}; \
             refusing its instructions"
        ))),
        Some(ToExecutor::Rejected { reason }) | Some(ToExecutor::Cancel { reason }) => {
            Err(Error::Exchange(format!(
                "the coordinator at {control} refused {who}: {reason}"
            )))
        }
        Some(other) => Err(Error::Protocol(format!(
            "expected the peers from the coordinator at {control}, got {other:?}"
        ))),
        None => Err(Error::Exchange(format!(
            "the coordinator at {control} closed the control connection before sending the peers"
        ))),
    }
}

/// Why the coordinator side ended the executor, when it did, and what a
/// new leader adopting the attempt is told.
#[derive(Default)]
struct Fence {
    /// The term of the leader served: frames of an older one's connection
    /// are dropped. Held while a frame is handled.
    term: Mutex<u64>,
    /// The newest checkpoint id prepared.
    prepared: AtomicU64,
    /// Local tasks that consumed all their input.
    finished: Mutex<std::collections::BTreeSet<TaskKey>>,
    reason: Mutex<Option<String>>,
    /// The control reader runs.
    reading: AtomicBool,
    /// The coordinator closed the control connection (or it broke).
    closed: AtomicBool,
    /// Every local task ended cleanly and `Done` is being sent: a lost
    /// connection is then the coordinator closing, not a leader lost.
    done: AtomicBool,
    /// `Failed` was sent (once: the first error as it happens, or the
    /// executor's error when it ends).
    reported: AtomicBool,
    /// Checkpoints the coordinator told this executor's tasks completed,
    /// and aborted (each id counted once, though every task hears of it):
    /// the executor's closing figures.
    completed: AtomicU64,
    aborted: AtomicU64,
    last_completed: AtomicU64,
    last_aborted: AtomicU64,
}

impl Fence {
    fn new(term: u64) -> Fence {
        Fence {
            term: Mutex::new(term),
            ..Fence::default()
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, u64> {
        self.term.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (bounded) for the coordinator to close the connection.
    fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.closed.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// An executor after its registration: what it runs and how it talks to
/// the coordinator.
struct Run<'a> {
    graph: &'a LogicalGraph,
    config: &'a JobConfig,
    spec: &'a ExecutorSpec,
    plan: &'a PhysicalPlan,
    control: &'a Arc<JobControl>,
    link: &'a ControlLink,
    fence: &'a Arc<Fence>,
    user_cancel: Arc<AtomicBool>,
    /// Rejoins new leaders, when the worker relays them.
    rejoin: Option<rejoin::Rejoiner>,
}

impl Run<'_> {
    fn run(
        &self,
        listener: NetListener,
        xcfg: ExchangeConfig,
        reader: StreamReader,
        peers: &[String],
        placement: &[(TaskKey, usize)],
        started: Instant,
    ) -> Result<JobResult> {
        let (graph, plan, spec) = (self.graph, self.plan, self.spec);
        let me = spec.executor;
        let placed: HashMap<TaskKey, usize> = placement.iter().copied().collect();
        for t in plan.tasks() {
            match placed.get(&t) {
                None => {
                    return Err(Error::Config(format!(
                        "subtask {} of vertex {} is placed on no executor",
                        t.subtask, t.vertex
                    )))
                }
                Some(e) if *e >= peers.len() => {
                    return Err(Error::Config(format!(
                        "subtask {} of vertex {} is placed on executor {e} of {}",
                        t.subtask,
                        t.vertex,
                        peers.len()
                    )))
                }
                Some(e) if (*e == me) != spec.tasks.contains(&t) => {
                    return Err(Error::Config(format!(
                        "the coordinator's placement of subtask {} of vertex {} disagrees \
                         with this executor's spec",
                        t.subtask, t.vertex
                    )))
                }
                Some(_) => {}
            }
        }
        let local = |k: TaskKey| placed.get(&k) == Some(&me);

        // Restore before anything connects, so a bad checkpoint fails fast.
        let restore =
            match (&self.config.checkpoint, &spec.restore) {
                (Some(_), Some(location)) => {
                    let dir = Storage::open_in_parent(&Location::from(location.as_str()))?;
                    let manifest = load_verified(&dir)?;
                    let mut r = RestorePlan::new(dir, manifest);
                    let allow = self
                        .config
                        .checkpoint
                        .as_ref()
                        .is_some_and(|c| c.allow_non_restored_state);
                    r.bind(graph, plan, allow)?;
                    info!(checkpoint = r.manifest.id, location = %location, "executor restores");
                    Some(Arc::new(r))
                }
                (None, Some(_)) => return Err(Error::Config(
                    "the executor is told to restore a checkpoint, but the job does not checkpoint"
                        .into(),
                )),
                (_, None) => None,
            };

        let mut conns = self.connect(listener, &xcfg, peers, &placed)?;
        let handles: Vec<(usize, ConnectionHandle)> = conns
            .by_peer
            .iter()
            .map(|(j, c)| (*j, c.handle()))
            .collect();
        let metrics = node_metrics(graph);
        let meters = task_meters(plan, &local);
        let reported = Reported {
            nodes: metrics.clone(),
            meters: meters.clone(),
            sampler: Arc::default(),
        };
        let (state, _local_dir) = run_state(self.config, spec.attempt);
        let mut wiring = wire(
            plan,
            self.config.channel_capacity,
            &self.control.cancelled,
            &local,
            &mut conns,
        )?;
        drop(conns);

        // Checkpointing: the tasks' control channels, fed by the control
        // reader, and a local writer whose acknowledgements go upstream.
        let fence = self.fence;
        let dirs: CheckpointDirs = Arc::default();
        let mut ports: HashMap<TaskKey, Sender<TaskControl>> = HashMap::new();
        let mut task_ck = HashMap::new();
        let mut side = Vec::new();
        if let Some(ck) = &self.config.checkpoint {
            let (ctx, crx) = crossbeam_channel::unbounded();
            let (wtx, wrx) = crossbeam_channel::unbounded();
            let (p, t) = checkpoint_channels(graph, plan, &local, &wtx, &ctx, ck, restore.clone());
            ports = p.into_iter().map(|(k, tx, _)| (k, tx)).collect();
            task_ck = t;
            drop(wtx);
            side.push(spawn_writer(wrx, dirs.clone(), ctx)?);
            side.push(spawn_forwarder(crx, self.link.clone(), fence.clone())?);
        }
        let done = Arc::new(AtomicBool::new(false));
        let rejoined = match &self.rejoin {
            Some(r) => Some(r.spawn(self.link.clone(), fence.clone(), done.clone())?),
            None => None,
        };
        let reader_thread = spawn_control_reader(
            reader,
            spec.term,
            ReaderParts {
                ports,
                dirs,
                control: self.control.clone(),
                fence: fence.clone(),
                link: self.link.clone(),
                rejoined,
            },
        )?;
        fence.reading.store(true, Ordering::SeqCst);
        let metrics_thread = spawn_metrics(
            reported.clone(),
            self.link.clone(),
            self.control.clone(),
            self.user_cancel.clone(),
            done.clone(),
        )?;

        let tasks = spawn_tasks(
            &TaskContext {
                graph,
                plan,
                metrics: &metrics,
                meters: &meters,
                attempt: spec.attempt,
                state: &state,
                control: self.control,
            },
            &local,
            &mut wiring,
            &mut task_ck,
        )?;
        drop(wiring);
        for h in tasks {
            let _ = h.join();
        }
        done.store(true, Ordering::SeqCst);
        let _ = metrics_thread.join();

        let failed = self.control.take_error();
        let cancelled = self.control.is_cancelled();
        let outcome = match failed {
            Some(e) => Err(e),
            None if cancelled => Err(self.why_cancelled(fence, &handles)),
            None => Ok(()),
        };
        if let Err(e) = outcome {
            self.control.fail(Error::Cancelled);
            for t in side {
                let _ = t.join();
            }
            return Err(e);
        }
        report(&reported, self.link)?;
        fence.done.store(true, Ordering::SeqCst);
        self.link.send(&ToCoordinator::Done)?;
        // Every local task ended cleanly. Stay until the connections have
        // flushed their last frames (they end once every channel carried
        // its end) or the coordinator closes (every executor is done, so
        // every peer has what it needs; channels stopped by a
        // stop-with-savepoint never carry an end).
        debug!(
            executor = spec.executor,
            "executor done; waiting for the coordinator"
        );
        let deadline = Instant::now() + END_TIMEOUT;
        loop {
            if fence.closed.load(Ordering::SeqCst)
                || handles.iter().all(|(_, h)| h.wait(Duration::ZERO))
            {
                break;
            }
            if Instant::now() >= deadline {
                warn!(
                    executor = spec.executor,
                    "exchange connections did not end in time"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.control.cancelled.store(true, Ordering::SeqCst);
        self.link.close();
        let _ = reader_thread.join();
        for t in side {
            let _ = t.join();
        }
        let duration = started.elapsed();
        info!(job = %spec.job_id, executor = spec.executor, ms = duration.as_millis() as u64,
            "executor finished");
        Ok(JobResult {
            duration,
            nodes: summaries(graph, &metrics),
            plan: plan.clone(),
            checkpoints: CheckpointStats {
                completed: self.fence.completed.load(Ordering::SeqCst),
                aborted: self.fence.aborted.load(Ordering::SeqCst),
                restored_from: restore.as_ref().map(|r| r.manifest.id),
                ..CheckpointStats::default()
            },
            stopped: false,
            executor: Some(ExecutorShare {
                index: spec.executor,
                of: spec.executors,
            }),
        })
    }

    fn why_cancelled(&self, fence: &Fence, handles: &[(usize, ConnectionHandle)]) -> Error {
        if let Some(reason) = fence.reason.lock().expect("fence lock").clone() {
            return Error::Exchange(format!(
                "executor {} stopped by the coordinator: {reason}",
                self.spec.executor
            ));
        }
        if self.user_cancel.load(Ordering::SeqCst) {
            return Error::Cancelled;
        }
        for (j, h) in handles {
            if let Some(e) = h.failure().filter(|e| !matches!(e, Error::Cancelled)) {
                return Error::Exchange(format!(
                    "the exchange connection to executor {j} ({}) failed: {e}",
                    h.peer()
                ));
            }
        }
        Error::Cancelled
    }

    /// Connects to every executor sharing a channel with this one: dials
    /// the higher indexes, accepts the lower ones.
    fn connect(
        &self,
        listener: NetListener,
        xcfg: &ExchangeConfig,
        peers: &[String],
        placed: &HashMap<TaskKey, usize>,
    ) -> Result<Conns> {
        let me = self.spec.executor;
        let mut specs: BTreeMap<usize, ConnectionSpec> = BTreeMap::new();
        for c in plan_channels(self.plan)? {
            let (from, to) = (placed[&c.from], placed[&c.to]);
            if (from == me) == (to == me) {
                continue;
            }
            if from == me {
                let s = specs.remove(&to).unwrap_or_default().outbound(c.id);
                specs.insert(to, s);
            } else {
                let e = &self.plan.edges[c.edge];
                let node = self.plan.vertices[e.from_vertex].chain[e.from_member];
                let schema = self.graph.node(node).outputs[e.port].clone();
                let s = specs
                    .remove(&from)
                    .unwrap_or_default()
                    .inbound(c.id, Some(schema));
                specs.insert(from, s);
            }
        }
        let (accept, dial): (BTreeMap<_, _>, BTreeMap<_, _>) =
            specs.into_iter().partition(|(j, _)| *j < me);
        let expected = accept.len();
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::unbounded();
        let acceptor = {
            let stop = stop.clone();
            let wanted: HashMap<String, (usize, ConnectionSpec)> = accept
                .into_iter()
                .map(|(j, s)| (peer_name(j), (j, s)))
                .collect();
            let wanted = Arc::new(Mutex::new(wanted));
            let listener = Arc::new(listener);
            std::thread::Builder::new()
                .name("exchange-accept".into())
                .spawn(move || {
                    let spec_for: PeerSpecs = Arc::new(move |h: &Hello| {
                        match wanted.lock().expect("wanted peers lock").remove(&h.peer) {
                            Some(js) => Ok(js),
                            None => Err(Error::Exchange(format!(
                                "unexpected exchange peer '{}'",
                                h.peer
                            ))),
                        }
                    });
                    listener.accept_until(spec_for, &stop, &tx)
                })
                .map_err(|e| Error::io("spawning the exchange acceptor", e))?
        };
        let mut by_peer = HashMap::new();
        let dialed = (|| -> Result<()> {
            for (j, s) in dial {
                let addr = resolve_addr(&peers[j])?;
                let c = connect(addr, xcfg, s).map_err(|e| {
                    Error::Exchange(format!("connecting to executor {j} at {addr}: {e}"))
                })?;
                by_peer.insert(j, c);
            }
            Ok(())
        })();
        let deadline = Instant::now() + PEER_TIMEOUT;
        let mut accepted = 0;
        let mut outcome = dialed;
        while outcome.is_ok() && accepted < expected {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((j, c)) => {
                    by_peer.insert(j, c);
                    accepted += 1;
                }
                Err(_) => {
                    outcome = Err(Error::Exchange(format!(
                    "executor {me}: {} of {expected} exchange peers did not connect within {:?}",
                    expected - accepted,
                    PEER_TIMEOUT
                )))
                }
            }
        }
        // Wake the acceptor out of its blocking accept.
        stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&local_addr, Duration::from_secs(1));
        if outcome.is_err() {
            for c in by_peer.values() {
                c.handle().close();
            }
        }
        let _ = acceptor.join();
        outcome?;
        Ok(Conns {
            by_peer,
            placed: placed.clone(),
        })
    }
}
