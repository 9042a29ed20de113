//! The executor's end of the control connection to the coordinator:
//! frames written whole from any thread, the coordinator's messages
//! relayed to the tasks, acknowledgements and metrics sent back.

use super::*;

/// The executor's end of the control connection; frames are written
/// whole under the lock, from any thread.
#[derive(Clone)]
pub(super) struct ControlLink {
    stream: Arc<SecureStream>,
    writer: Arc<Mutex<StreamWriter>>,
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
            stream: Arc::new(stream),
            writer: Arc::new(Mutex::new(writer)),
        })
    }

    pub(super) fn reader(&self) -> Result<StreamReader> {
        self.stream
            .reader()
            .map_err(|e| Error::io("control socket", e))
    }

    pub(super) fn send(&self, msg: &ToCoordinator) -> Result<()> {
        let mut s = self.writer.lock().expect("control link lock");
        Ok(write_frame(&mut *s, msg)?)
    }

    pub(super) fn shutdown_write(&self) {
        let mut s = self.writer.lock().expect("control link lock");
        let _ = s.shutdown_write();
    }

    pub(super) fn close(&self) {
        let mut s = self.writer.lock().expect("control link lock");
        let _ = s.flush();
        let _ = self.stream.socket().shutdown(Shutdown::Both);
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
                    CoordinatorMsg::Finished(task) => ToCoordinator::Finished(task),
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

/// Reads the coordinator's frames: task messages to the tasks, checkpoint
/// directories to the writer; a cancel, a refusal or a lost connection
/// cancels every local task.
pub(super) fn spawn_control_reader(
    mut reader: StreamReader,
    ports: HashMap<TaskKey, Sender<TaskControl>>,
    dirs: CheckpointDirs,
    control: Arc<JobControl>,
    fence: Arc<Fence>,
    link: ControlLink,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("control-read".into())
        .spawn(move || {
            let reason = loop {
                match read_frame::<_, ToExecutor>(&mut reader) {
                    Ok(Some(ToExecutor::Task { task, msg })) => {
                        if let TaskControl::Complete(id) | TaskControl::Abort(id) = msg {
                            // The writer is done with it: every snapshot was
                            // acknowledged, or the checkpoint is abandoned.
                            dirs.lock().expect("checkpoint dirs lock").remove(&id.0);
                            // Ids rise: the first task told of one counts it.
                            let (count, last) = match msg {
                                TaskControl::Complete(_) => {
                                    (&fence.completed, &fence.last_completed)
                                }
                                _ => (&fence.aborted, &fence.last_aborted),
                            };
                            if last.fetch_max(id.0, Ordering::SeqCst) < id.0 {
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        match ports.get(&task) {
                            Some(tx) => {
                                let _ = tx.send(msg);
                            }
                            None => warn!(?task, "control message for a task not run here"),
                        }
                    }
                    Ok(Some(ToExecutor::Prepare { id, dir, savepoint })) => {
                        match Storage::open_in_parent(&Location::from(dir.as_str())) {
                            Ok(s) => {
                                dirs.lock()
                                    .expect("checkpoint dirs lock")
                                    .insert(id, (s, savepoint));
                            }
                            Err(e) => {
                                let _ = link.send(&ToCoordinator::Decline {
                                    id,
                                    error: format!("opening {dir}: {e}"),
                                });
                            }
                        }
                    }
                    Ok(Some(ToExecutor::Cancel { reason })) => break Some(reason),
                    Ok(Some(ToExecutor::Rejected { reason })) => break Some(reason),
                    Ok(Some(ToExecutor::Peers { .. })) => {}
                    Ok(None) => break None,
                    Err(e) => {
                        debug!(error = %e, "control connection failed");
                        break None;
                    }
                }
            };
            fence.closed.store(true, Ordering::SeqCst);
            if control.is_cancelled() {
                return; // ending anyway
            }
            let reason = reason.unwrap_or_else(|| "the control connection was lost".into());
            *fence.reason.lock().expect("fence lock") = Some(reason);
            control.fail(Error::Cancelled);
        })
        .map_err(|e| Error::io("spawning the control reader", e))
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
