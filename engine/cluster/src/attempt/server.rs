//! The control server executors dial: one listener for every attempt of
//! every job of a coordinator process, on a small tokio runtime of its own
//! (one I/O thread; a connection is a task, never an OS thread).
//!
//! What a stranger can make it do is bounded before anything is proven:
//! at most [`MAX_UNPROVEN`] connections wait for their hello at once (a
//! new one closes the one that has waited longest: a real executor says
//! its hello within milliseconds, so silent connections cannot keep it
//! out), a hello must arrive within [`HELLO_TIMEOUT`] and fit in
//! [`MAX_HELLO_FRAME`] bytes, and its protocol version is checked before
//! the rest of it is read. Only a hello that names the job's current
//! attempt with that attempt's secret gets a connection that may send
//! larger frames ([`MAX_CONTROL_FRAME`]); refusals of hellos for jobs the
//! coordinator runs are counted against those jobs, others in one total,
//! so no map grows with what clients send.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use sluice_engine::error::{Error, Result};
use sluice_engine::tls::{attempt_uri, peer_uris, ClusterTls};
use sluice_protocol::control::{
    decode_body, decode_hello, encode_frame, ToCoordinator, ToExecutor, MAX_CONTROL_FRAME,
    MAX_HELLO_FRAME,
};
use sluice_protocol::secret::same_secret;

use super::Attempt;

/// Connections that have not said a valid hello yet, at most.
pub const MAX_UNPROVEN: usize = 64;
/// Bound on an executor's first frame after connecting.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on writing one frame to an executor.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames (encoded by [`encode_frame`], length prefix included) queued for one executor, at most; a connection whose executor
/// does not read them is closed (the executor is then fenced).
const OUTBOX: usize = 4096;

/// The coordinator's end of one executor's control connection: frames go
/// to a writer task, so sync code (the checkpoint coordinator) never waits
/// on a socket.
#[derive(Clone)]
pub(crate) struct ExecLink {
    outbox: mpsc::Sender<Vec<u8>>,
    closed: CancellationToken,
}

impl ExecLink {
    /// Queues `msg`; an error when the connection is closed or its outbox
    /// is full (then it is closed).
    pub(crate) fn send(&self, msg: &ToExecutor) -> Result<()> {
        let frame = encode_frame(msg)?;
        match self.outbox.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close();
                Err(Error::Exchange(
                    "an executor does not read its control frames; its connection is closed".into(),
                ))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::Exchange(
                "the executor's control connection is closed".into(),
            )),
        }
    }

    /// Closes the connection once the frames queued so far are written.
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }
}

/// The current attempt of each job, and refusal counts.
#[derive(Default)]
pub(crate) struct Attempts {
    /// The current attempt of each job.
    pub(crate) current: Mutex<HashMap<String, Arc<Attempt>>>,
    /// Refused hellos that named no job with an attempt.
    pub(crate) refused_unknown: AtomicU64,
    /// Told of every checkpoint an attempt completes.
    pub(crate) on_checkpoint: std::sync::OnceLock<CheckpointHook>,
    /// Asked before each checkpoint of any attempt completes.
    pub(crate) approve_checkpoint: std::sync::OnceLock<ApproveHook>,
    /// The Raft term of the coordinator this server belongs to (0 outside
    /// a Raft group): attempts started here carry it, and a hello naming
    /// another term is refused.
    pub(crate) term: AtomicU64,
}

/// Asked, with the attempt's job id and number, the checkpoint id and
/// whether it is a savepoint, before a checkpoint completes; a refusal
/// aborts it and fails the attempt (see the engine's `ApprovalHook`).
pub type ApproveHook =
    Arc<dyn Fn(&str, u64, u64, bool) -> std::result::Result<(), String> + Send + Sync>;

/// Told of every checkpoint or savepoint an attempt completes, with the
/// attempt's job id: the coordinator's metrics.
pub type CheckpointHook =
    Arc<dyn Fn(&str, &sluice_engine::checkpoint::CheckpointRecord) + Send + Sync>;

impl Attempts {
    /// Counts a refused hello or frame of `job` against its current
    /// attempt (each refusal counts once over the job's attempts); a job
    /// without an attempt counts in the server's total.
    pub(crate) fn count_refusal(&self, job: &str) {
        let current = self
            .current
            .lock()
            .expect("attempts lock")
            .get(job)
            .cloned();
        match current {
            Some(a) => {
                a.rejected.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.refused_unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Accepts executors' control connections for every attempt of every job
/// of one coordinator process.
pub struct ControlServer {
    addr: SocketAddr,
    pub(crate) attempts: Arc<Attempts>,
    stop: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ControlServer {
    /// Listens on `addr` (port 0: any), plaintext: the attempt's secret
    /// is all that authenticates an executor, and it travels in clear.
    pub fn bind(addr: SocketAddr) -> Result<ControlServer> {
        ControlServer::bind_with(addr, None)
    }

    /// Listens on `addr` (port 0: any); with `tls`, every connection is
    /// mutual TLS: the server presents `tls`'s certificate, and an
    /// executor must present a certificate of the cluster CA naming the
    /// attempt its hello names (as well as that attempt's secret).
    pub fn bind_with(addr: SocketAddr, tls: Option<ClusterTls>) -> Result<ControlServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("control-io")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the control server's runtime", e))?;
        let listener = runtime
            .block_on(TcpListener::bind(addr))
            .map_err(|e| Error::io(format!("control listen on {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("control listen address", e))?;
        let attempts = Arc::new(Attempts::default());
        let stop = CancellationToken::new();
        let tls_on = tls.is_some();
        runtime.spawn(accept(listener, attempts.clone(), stop.clone(), tls));
        info!(%addr, tls = tls_on, "control server listening");
        Ok(ControlServer {
            addr,
            attempts,
            stop,
            runtime: Some(runtime),
        })
    }

    /// The address executors dial.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks `hook` before every checkpoint of the attempts started from
    /// now on completes (once; a second hook is ignored).
    pub fn approve_checkpoints(&self, hook: ApproveHook) {
        if self.attempts.approve_checkpoint.set(hook).is_err() {
            warn!("a checkpoint approval was set already; the new one is ignored");
        }
    }

    /// Tells `hook` of every checkpoint the attempts started from now on
    /// complete (once; a second hook is ignored).
    pub fn on_checkpoint_complete(&self, hook: CheckpointHook) {
        if self.attempts.on_checkpoint.set(hook).is_err() {
            warn!("a checkpoint hook was set already; the new one is ignored");
        }
    }

    /// Sets the term this server's attempts are started under (the
    /// leader's Raft term), before any attempt starts.
    pub fn set_term(&self, term: u64) {
        self.attempts.term.store(term, Ordering::SeqCst);
    }

    /// The term this server's attempts are started under.
    pub fn term(&self) -> u64 {
        self.attempts.term.load(Ordering::SeqCst)
    }

    /// Hellos refused that named no job with an attempt.
    pub fn refused_unknown(&self) -> u64 {
        self.attempts.refused_unknown.load(Ordering::Relaxed)
    }

    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the server")
            .handle()
            .clone()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(rt) = self.runtime.take() {
            // May be dropped inside another runtime (the REST server's):
            // shutting down in the background never blocks there.
            rt.shutdown_background();
        }
    }
}

/// The connections that have not said a valid hello yet, oldest first.
#[derive(Default)]
struct Unproven {
    next: u64,
    waiting: VecDeque<(u64, CancellationToken)>,
}

/// A connection's place among the unproven; leaving it (proven, or gone)
/// frees the place.
struct UnprovenPlace {
    id: u64,
    evicted: CancellationToken,
    all: Arc<Mutex<Unproven>>,
}

impl Drop for UnprovenPlace {
    fn drop(&mut self) {
        let mut u = self.all.lock().expect("unproven lock");
        u.waiting.retain(|(id, _)| *id != self.id);
    }
}

/// Takes a place for a new connection, closing the longest waiting one
/// when all are taken.
fn take_place(all: &Arc<Mutex<Unproven>>) -> (UnprovenPlace, bool) {
    let mut u = all.lock().expect("unproven lock");
    let mut evicted_one = false;
    while u.waiting.len() >= MAX_UNPROVEN {
        if let Some((_, token)) = u.waiting.pop_front() {
            token.cancel();
            evicted_one = true;
        }
    }
    let id = u.next;
    u.next += 1;
    let evicted = CancellationToken::new();
    u.waiting.push_back((id, evicted.clone()));
    (
        UnprovenPlace {
            id,
            evicted,
            all: all.clone(),
        },
        evicted_one,
    )
}

async fn accept(
    listener: TcpListener,
    attempts: Arc<Attempts>,
    stop: CancellationToken,
    tls: Option<ClusterTls>,
) {
    let unproven = Arc::new(Mutex::new(Unproven::default()));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "control accept failed");
                    // Out of descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (place, evicted) = take_place(&unproven);
        if evicted {
            debug!(%peer, "too many control connections without a hello: closed the oldest");
            attempts.refused_unknown.fetch_add(1, Ordering::Relaxed);
        }
        let attempts = attempts.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            serve(stream, peer, attempts, place, stop, tls).await;
        });
    }
}

/// Serves one control connection: TLS first when the server has it (the
/// handshake counts against the hello's time and place), then the hello
/// decides its attempt, then frames flow to that attempt while it is the
/// job's current one.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    attempts: Arc<Attempts>,
    place: UnprovenPlace,
    stop: CancellationToken,
    tls: Option<ClusterTls>,
) {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let Some(tls) = tls else {
        return serve_conn(stream, None, peer, attempts, place, stop, deadline).await;
    };
    let handshake = async {
        let ssl = tls.server_ssl()?;
        let mut s = tokio_openssl::SslStream::new(ssl, stream)
            .map_err(|e| Error::Exchange(format!("TLS session: {e}")))?;
        std::pin::Pin::new(&mut s)
            .accept()
            .await
            .map_err(|e| Error::Exchange(format!("TLS handshake: {e}")))?;
        Ok::<_, Error>(s)
    };
    let done = tokio::select! {
        _ = place.evicted.cancelled() => return,
        done = tokio::time::timeout_at(deadline, handshake) => done,
    };
    match done {
        Ok(Ok(s)) => {
            let names = peer_uris(s.ssl());
            serve_conn(s, Some(names), peer, attempts, place, stop, deadline).await
        }
        Ok(Err(e)) => {
            attempts.refused_unknown.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, error = %e, "control connection refused");
        }
        Err(_) => {
            attempts.refused_unknown.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "control connection closed: no TLS handshake in time");
        }
    }
}

/// [`serve`] past TLS: `names` are the URIs the client's certificate
/// names (`None`: plaintext).
async fn serve_conn<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    names: Option<Vec<String>>,
    peer: SocketAddr,
    attempts: Arc<Attempts>,
    place: UnprovenPlace,
    stop: CancellationToken,
    deadline: tokio::time::Instant,
) {
    let (read, write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(
        read,
        LengthDelimitedCodec::builder()
            .max_frame_length(MAX_HELLO_FRAME)
            .new_codec(),
    );
    let (outbox, rx) = mpsc::channel(OUTBOX);
    let link = ExecLink {
        outbox,
        closed: CancellationToken::new(),
    };
    tokio::spawn(write_frames(write, rx, link.closed.clone()));

    let first = tokio::select! {
        _ = place.evicted.cancelled() => {
            link.close();
            return;
        }
        first = tokio::time::timeout_at(deadline, frames.next()) => first,
    };
    let hello = match first {
        Ok(Some(Ok(body))) => decode_hello(&body),
        Ok(Some(Err(e))) => Err(sluice_protocol::Error::Malformed(format!(
            "reading the hello: {e}"
        ))),
        Ok(None) => {
            link.close();
            return;
        }
        Err(_) => {
            debug!(%peer, "control connection closed: no hello in time");
            attempts.refused_unknown.fetch_add(1, Ordering::Relaxed);
            link.close();
            return;
        }
    };
    let hello = hello.and_then(|h| match h {
        ToCoordinator::Hello {
            protocol: _,
            job_id,
            attempt,
            term,
            executor,
            exchange,
            secret,
            rejoin,
        } => Ok((job_id, attempt, term, executor, exchange, secret, rejoin)),
        _ => Err(sluice_protocol::Error::Malformed(
            "the first control frame must be a hello".into(),
        )),
    });
    let (job_id, attempt_no, hello_term, executor, exchange, secret, rejoin) = match hello {
        Ok(h) => h,
        Err(e) => {
            attempts.refused_unknown.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, error = %e, "control hello refused");
            let _ = link.send(&ToExecutor::Rejected {
                reason: e.to_string(),
            });
            link.close();
            return;
        }
    };
    let current = attempts
        .current
        .lock()
        .expect("attempts lock")
        .get(&job_id)
        .cloned();
    let accepted = match current {
        None => Err(format!("no attempt of job '{job_id}' is running")),
        Some(a) if a.attempt != attempt_no => Err(format!(
            "attempt {attempt_no} of job '{job_id}' is stale (the current attempt is {})",
            a.attempt
        )),
        Some(a) if a.term != hello_term => Err(format!(
            "attempt {attempt_no} of job '{job_id}' was started under term {} of the \
             coordinators, the hello names term {hello_term}",
            a.term
        )),
        Some(_)
            if names
                .as_ref()
                .is_some_and(|n| !n.contains(&attempt_uri(&job_id, attempt_no))) =>
        {
            Err(format!(
                "the client's certificate does not name attempt {attempt_no} of job '{job_id}' \
                 (it names {})",
                names.as_deref().unwrap_or_default().join(", ")
            ))
        }
        Some(a) if !same_secret(&a.secret, &secret) => Err(format!(
            "wrong secret for attempt {attempt_no} of job '{job_id}'"
        )),
        Some(a) => {
            // Registering may start the checkpoint coordinator's thread.
            let (a2, link2, exchange) = (a.clone(), link.clone(), exchange);
            match tokio::task::spawn_blocking(move || {
                a2.register(executor, exchange, link2, rejoin)
            })
            .await
            {
                Ok(r) => r.map(|()| a),
                Err(e) => Err(format!("registering executor {executor}: {e}")),
            }
        }
    };
    let attempt = match accepted {
        Ok(a) => a,
        Err(reason) => {
            attempts.count_refusal(&job_id);
            warn!(%peer, job = %job_id, attempt = attempt_no, executor, %reason, "executor refused");
            let _ = link.send(&ToExecutor::Rejected { reason });
            link.close();
            return;
        }
    };
    // Proven: no longer among the connections a stranger can hold.
    drop(place);
    frames.decoder_mut().set_max_frame_length(MAX_CONTROL_FRAME);
    debug!(%peer, job = %job_id, attempt = attempt_no, executor, "executor connected");
    loop {
        let body = tokio::select! {
            _ = stop.cancelled() => break,
            _ = link.closed.cancelled() => break,
            next = frames.next() => match next {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    debug!(%peer, error = %e, "control connection read failed");
                    break;
                }
                None => break,
            },
        };
        let frame: ToCoordinator = match decode_body(&body) {
            Ok(f) => f,
            Err(e) => {
                warn!(%peer, job = %job_id, executor, error = %e, "malformed control frame; closing");
                break;
            }
        };
        if !attempt.is_current(&attempts) {
            // A superseded attempt: nothing it says counts.
            attempts.count_refusal(&attempt.job_id);
            continue;
        }
        if attempt.ended.load(Ordering::SeqCst) {
            continue; // finished, failed or cancelled: its last words change nothing
        }
        if matches!(frame, ToCoordinator::Failed { .. }) {
            // Failing stops the checkpoint coordinator, which may wait.
            let a = attempt.clone();
            let _ = tokio::task::spawn_blocking(move || a.on_frame(executor, frame)).await;
        } else {
            attempt.on_frame(executor, frame);
        }
    }
    link.close();
    let done = attempt.state.lock().expect("attempt lock").done[executor];
    if !done {
        let a = attempt.clone();
        let _ = tokio::task::spawn_blocking(move || {
            a.fail(
                format!("executor {executor}: the control connection was lost"),
                sluice_protocol::control::Retry::Backoff,
            )
        })
        .await;
    }
}

/// Writes queued frames until the link is closed (then flushes what was
/// queued before, and shuts the write side down) or a write stalls.
async fn write_frames<S: AsyncWrite>(
    mut write: WriteHalf<S>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    closed: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            biased;
            f = rx.recv() => f,
            _ = closed.cancelled() => {
                // Whatever was queued before the close still goes out.
                rx.close();
                rx.recv().await
            }
        };
        let Some(frame) = frame else { break };
        match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "control frame not written");
                break;
            }
            Err(_) => {
                debug!("control frame write timed out");
                break;
            }
        }
    }
    closed.cancel();
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write.shutdown()).await;
}
