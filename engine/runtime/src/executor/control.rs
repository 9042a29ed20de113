//! The executor's end of the control connection to the coordinator:
//! frames written whole from any thread, the coordinator's messages
//! relayed to the tasks, acknowledgements and metrics sent back.

use super::*;

/// The executor's end of the control connection; frames are written
/// whole under the lock, from any thread. A new leader that adopts the
/// attempt replaces the connection underneath ([`ControlLink::replace`]):
/// every clone then writes to the new one.
#[derive(Clone)]
pub(super) struct ControlLink {
    inner: Arc<Mutex<LinkInner>>,
}

struct LinkInner {
    stream: Arc<SecureStream>,
    writer: StreamWriter,
}

impl ControlLink {
    /// Connects, retrying for a while: a coordinator that just restarted
    /// may not listen yet. With `tls`, the coordinator's certificate must
    /// name the host of `addr` (and the CA sign it), and this executor
    /// presents its attempt's certificate.
    pub(super) fn dial(addr: &str, tls: Option<&ClusterTls>) -> Result<Self> {
        let to = resolve_addr(addr)?;
        let deadline = Instant::now() + CONTROL_DIAL_TIMEOUT;
        let stream = loop {
            match TcpStream::connect_timeout(&to, CONTROL_DIAL_TIMEOUT) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    debug!(%addr, error = %e, "coordinator not reachable yet");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("connecting to the coordinator at {addr}"),
                        e,
                    ))
                }
            }
        };
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(30))))
            .map_err(|e| Error::io("control socket options", e))?;
        let stream = match tls {
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                tls.connect(stream, Some(host), Instant::now() + CONTROL_DIAL_TIMEOUT)
                    .map_err(|e| {
                        Error::Exchange(format!("the coordinator at {addr} failed TLS: {e}"))
                    })?
            }
            None => SecureStream::plain(stream),
        };
        let writer = stream
            .writer()
            .map_err(|e| Error::io("control socket", e))?;
        Ok(ControlLink {
            inner: Arc::new(Mutex::new(LinkInner {
                stream: Arc::new(stream),
                writer,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bounds (or, with `None`, unbounds) how long a read of the current
    /// connection waits.
    pub(super) fn set_read_timeout(&self, timeout: Option<Duration>) {
        let _ = self.lock().stream.socket().set_read_timeout(timeout);
    }

    /// Makes `new` (a connection to a new leader) the one every clone of
    /// this link writes to, and shuts the old one down, which ends a read
    /// of it.
    pub(super) fn replace(&self, new: &ControlLink) -> Result<()> {
        let stream = new.lock().stream.clone();
        let writer = stream
            .writer()
            .map_err(|e| Error::io("control socket", e))?;
        let old = std::mem::replace(&mut *self.lock(), LinkInner { stream, writer });
        let _ = old.stream.socket().shutdown(Shutdown::Both);
        Ok(())
    }

    pub(super) fn reader(&self) -> Result<StreamReader> {
        self.lock()
            .stream
            .reader()
            .map_err(|e| Error::io("control socket", e))
    }

    pub(super) fn send(&self, msg: &ToCoordinator) -> Result<()> {
        let mut s = self.lock();
        Ok(write_frame(&mut s.writer, msg)?)
    }

    pub(super) fn shutdown_write(&self) {
        let _ = self.lock().writer.shutdown_write();
    }

    pub(super) fn close(&self) {
        let mut s = self.lock();
        let _ = s.writer.flush();
        let _ = s.stream.socket().shutdown(Shutdown::Both);
    }
}

/// What the executor reports of its subtasks: counters per graph node,
/// and each local subtask's meter with the sampler that rates them.
#[derive(Clone)]
pub(super) struct Reported {
    pub(super) nodes: Vec<Arc<NodeMetrics>>,
    pub(super) meters: Vec<Arc<TaskMeter>>,
    pub(super) sampler: Arc<Sampler>,
}

/// Sends the counters and figures, then the rows sinks received since the
/// last report.
pub(super) fn report(r: &Reported, link: &ControlLink) -> Result<()> {
    link.send(&ToCoordinator::Metrics(ExecutorMetrics {
        nodes: counters(&r.nodes),
        subtasks: r.sampler.sample(&r.meters),
        process: crate::metrics::process(),
    }))?;
    let mut rows = Vec::new();
    for (node, m) in r.nodes.iter().enumerate() {
        if let Some(tail) = m.take_tail() {
            match results::render(node, &tail) {
                Ok(r) => rows.push(r),
                Err(e) => debug!(node, "a sink's rows cannot be shown: {e}"),
            }
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    link.send(&ToCoordinator::Results(rows))
}

/// Sends the writer's and tasks' messages to the coordinator as frames,
/// until every sender is gone.
pub(super) fn spawn_forwarder(
    rx: Receiver<CoordinatorMsg>,
    link: ControlLink,
    fence: Arc<Fence>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("control-forward".into())
        .spawn(move || {
            for msg in rx {
                let frame = match msg {
                    CoordinatorMsg::Ack {
                        id,
                        task,
                        files,
                        bytes,
                        uploaded,
                        alignment,
                    } => ToCoordinator::Ack {
                        id: id.0,
                        task,
                        files,
                        bytes,
                        uploaded,
                        alignment_ms: alignment.as_millis() as u64,
                    },
                    CoordinatorMsg::Decline { id, error } => {
                        ToCoordinator::Decline { id: id.0, error }
                    }
                    CoordinatorMsg::Finished(task) => {
                        // Told again to a leader that adopts the attempt.
                        fence.finished.lock().expect("fence lock").insert(task);
                        ToCoordinator::Finished(task)
                    }
                    CoordinatorMsg::Savepoint(req) => {
                        let _ = req.reply.send(Err(Error::Config(
                            "savepoints of a distributed job are taken through the coordinator"
                                .into(),
                        )));
                        continue;
                    }
                };
                if let Err(e) = link.send(&frame) {
                    // The reader notices the lost connection and fences.
                    debug!(error = %e, "control frame not sent");
                }
            }
        })
        .map_err(|e| Error::io("spawning the control forwarder", e))
}

/// How a connection's reading ended.
enum Ended {
    /// The coordinator cancelled or refused the executor.
    Stopped(String),
    /// The connection broke or closed, or a newer leader's replaced it.
    Lost,
}

/// What the control reader needs besides the connection.
pub(super) struct ReaderParts {
    pub(super) ports: HashMap<TaskKey, Sender<TaskControl>>,
    pub(super) dirs: CheckpointDirs,
    pub(super) control: Arc<JobControl>,
    pub(super) fence: Arc<Fence>,
    pub(super) link: ControlLink,
    /// Connections to new leaders, with their terms, and how long to wait
    /// for one once the current connection is lost; `None`: a lost
    /// connection fences at once.
    pub(super) rejoined: Option<(Receiver<(StreamReader, u64)>, Duration)>,
}

/// Reads the coordinator's frames: task messages to the tasks, checkpoint
/// directories to the writer. A cancel or a refusal cancels every local
/// task; so does a lost connection, unless a new leader adopts the attempt
/// within the grace (its connection then takes over).
pub(super) fn spawn_control_reader(
    mut reader: StreamReader,
    term: u64,
    parts: ReaderParts,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("control-read".into())
        .spawn(move || {
            let p = parts;
            let mut term = term;
            let reason = loop {
                match read_connection(&mut reader, term, &p) {
                    Ended::Stopped(reason) => break Some(reason),
                    // Ending anyway, or done: nothing to rejoin for.
                    Ended::Lost
                        if p.control.is_cancelled() || p.fence.done.load(Ordering::SeqCst) =>
                    {
                        break None
                    }
                    Ended::Lost => {}
                }
                p.fence.closed.store(true, Ordering::SeqCst);
                let Some((rejoined, grace)) = &p.rejoined else {
                    break None;
                };
                info!(grace_ms = grace.as_millis() as u64,
                    "the control connection was lost; the tasks run on while a new leader may adopt the attempt");
                match wait_rejoined(rejoined, *grace, &p.control) {
                    Some((r, t)) => {
                        (reader, term) = (r, t);
                        p.fence.closed.store(false, Ordering::SeqCst);
                    }
                    None if p.control.is_cancelled() => break None,
                    None => {
                        break Some(format!(
                            "the control connection was lost and no leader adopted the attempt \
                             within {grace:?}"
                        ))
                    }
                }
            };
            p.fence.closed.store(true, Ordering::SeqCst);
            if p.control.is_cancelled() {
                return; // ending anyway
            }
            let reason = reason.unwrap_or_else(|| "the control connection was lost".into());
            *p.fence.reason.lock().expect("fence lock") = Some(reason);
            p.control.fail(Error::Cancelled);
        })
        .map_err(|e| Error::io("spawning the control reader", e))
}

/// A new leader's connection, once the executor rejoined one within
/// `grace`; `None` at the deadline, or at once when the executor ends
/// anyway (it finished: the coordinator closing after `Done` is no loss).
fn wait_rejoined(
    rejoined: &Receiver<(StreamReader, u64)>,
    grace: Duration,
    control: &JobControl,
) -> Option<(StreamReader, u64)> {
    let deadline = Instant::now() + grace;
    while !control.is_cancelled() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        if let Ok(r) = rejoined.recv_timeout(left.min(TICK)) {
            return Some(r);
        }
    }
    None
}

/// Relays one connection's frames (served under `term`) until it ends, or
/// until the executor has turned to a newer leader.
fn read_connection(reader: &mut StreamReader, term: u64, p: &ReaderParts) -> Ended {
    loop {
        let frame = match read_frame::<_, ToExecutor>(reader) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ended::Lost,
            Err(e) => {
                debug!(error = %e, "control connection failed");
                return Ended::Lost;
            }
        };
        // Frames are handled under the gate, so what a rejoin reports of
        // the checkpoints is final once it holds the gate with a newer term.
        let gate = p.fence.gate();
        if *gate != term {
            debug!(
                term,
                newest = *gate,
                "a frame of a deposed leader's connection dropped"
            );
            return Ended::Lost;
        }
        match frame {
            ToExecutor::Task { task, msg } => {
                if let TaskControl::Complete(id) | TaskControl::Abort(id) = msg {
                    // The writer is done with it: every snapshot was
                    // acknowledged, or the checkpoint is abandoned.
                    p.dirs.lock().expect("checkpoint dirs lock").remove(&id.0);
                    // Ids rise: the first task told of one counts it.
                    let fence = &p.fence;
                    let (count, last) = match msg {
                        TaskControl::Complete(_) => (&fence.completed, &fence.last_completed),
                        _ => (&fence.aborted, &fence.last_aborted),
                    };
                    if last.fetch_max(id.0, Ordering::SeqCst) < id.0 {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
                match p.ports.get(&task) {
                    Some(tx) => {
                        let _ = tx.send(msg);
                    }
                    None => warn!(?task, "control message for a task not run here"),
                }
            }
            ToExecutor::Prepare { id, dir, savepoint } => {
                p.fence.prepared.fetch_max(id, Ordering::SeqCst);
                match Storage::open_in_parent(&Location::from(dir.as_str())) {
                    Ok(s) => {
                        p.dirs
                            .lock()
                            .expect("checkpoint dirs lock")
                            .insert(id, (s, savepoint));
                    }
                    Err(e) => {
                        let _ = p.link.send(&ToCoordinator::Decline {
                            id,
                            error: format!("opening {dir}: {e}"),
                        });
                    }
                }
            }
            ToExecutor::Cancel { reason } | ToExecutor::Rejected { reason } => {
                return Ended::Stopped(reason)
            }
            ToExecutor::Peers { .. } => {}
        }
    }
}

/// Reports counters and sink rows every 250 ms and turns a user's cancel into the job's.
pub(super) fn spawn_metrics(
    metrics: Reported,
    link: ControlLink,
    control: Arc<JobControl>,
    user_cancel: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("executor-metrics".into())
        .spawn(move || {
            let mut next = Instant::now() + METRICS_INTERVAL;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(TICK);
                if user_cancel.load(Ordering::SeqCst) && !control.is_cancelled() {
                    control.fail(Error::Cancelled);
                }
                if Instant::now() >= next {
                    next += METRICS_INTERVAL;
                    let _ = report(&metrics, &link);
                }
            }
        })
        .map_err(|e| Error::io("spawning the metrics thread", e))
}
