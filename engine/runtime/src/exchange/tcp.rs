//! The TCP transport: one connection per process pair, carrying any number
//! of channels in both directions. Owns sockets, the handshake (job,
//! attempt fencing, peer identity) and the two threads of a connection;
//! the byte format is [`super::frame`]'s and the flow-control arithmetic
//! [`super::credit`]'s.
//!
//! - **Sending** ([`NetSender`], a [`ChannelSender`]): the task thread waits
//!   for a credit of its channel, encodes the message (Arrow IPC for
//!   batches, so encoding runs on the producing task's thread) and queues
//!   the frame for the connection's writer. A frame is only queued with a
//!   credit, so the bytes waiting to be written are bounded by what the
//!   receiver granted.
//! - **Receiving**: every inbound channel is a bounded crossbeam queue whose
//!   `Receiver` the task loop selects on, as for local channels. The reader
//!   thread decodes frames and pushes each message into its channel's
//!   queue, which always has room (credits are free slots), so the reader
//!   never blocks on one slow channel and other channels, and their
//!   barriers, keep flowing.
//! - **Writer thread**: writes queued frames through a buffer, grants
//!   credits as the local queues drain (it polls their lengths every
//!   100 µs to 4 ms while a grant may be due, and sends grants at once),
//!   and flushes at most once per `flush_interval` while frames keep
//!   coming, never holding a frame longer than that; a frame after a quiet
//!   spell is flushed at once. Small frames coalesce under load with a
//!   bounded added latency.
//! - **Failure**: a malformed or truncated frame, a credit breach or an I/O
//!   error closes that connection only: the peer gets an error frame with
//!   the reason, blocked senders return the error, inbound queues
//!   disconnect, and [`ConnectionHandle::failure`] reports it. A cancelled
//!   job (the shared flag) closes its connections within 50 ms.
//!
//! Plain threads and `std::net`, not tokio: the producers and consumers are
//! blocking task threads with crossbeam queues, a process has one
//! connection per peer (so two threads each), and this keeps any blocking
//! off an async runtime's workers.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use crossbeam_channel::{Receiver, Sender};
use tracing::{debug, info, warn};

mod io;
use io::{reader_loop, writer_loop};

use super::credit::{RecvCredit, SendCredit};
use super::frame::{
    encode, proto, BatchDecoder, BatchEncoder, ChannelId, Frame, FrameDecoder, Hello,
    DEFAULT_MAX_FRAME, VERSION,
};
use super::ChannelSender;
use crate::data::StreamMessage;
use crate::error::{Error, Result};
use crate::tls::stream::{StreamReader, StreamWriter};
use crate::tls::{check_peer_attempt, ClusterTls, SecureStream};
use sluice_protocol::secret::same_secret;

/// How often blocked senders and an idle writer check for cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(50);
/// How often the writer looks at local queue lengths while a grant may be
/// due: every 100 µs while queues are draining (the credit round trip caps
/// a channel at capacity × batch size per poll), backing off to 4 ms while
/// nothing moves (a stalled consumer costs few wakeups).
const CREDIT_POLL_MIN: Duration = Duration::from_micros(100);
const CREDIT_POLL_MAX: Duration = Duration::from_millis(4);
/// Socket read buffer and write buffer sizes.
const READ_CHUNK: usize = 256 << 10;
const WRITE_BUFFER: usize = 256 << 10;
/// Bound on frames before the handshake completes (hello, welcome, error).
const HANDSHAKE_MAX_FRAME: usize = 64 << 10;
/// How long a failing reader waits for the writer to send the error frame.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Settings shared by every connection of one process for one job attempt.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// The job; a peer of another job is refused.
    pub job: String,
    /// This process's attempt of the job; a peer of another attempt is
    /// refused (a stale attempt must not feed a restarted job).
    pub attempt: u64,
    /// This process's identity, sent in the hello.
    pub node: String,
    /// The attempt's secret: sent in the hello, and required of peers.
    pub secret: String,
    /// Messages each inbound channel's local queue holds (= its credit).
    pub channel_capacity: usize,
    /// Upper bound on how long a written frame waits in the buffer.
    pub flush_interval: Duration,
    /// Largest frame body accepted or sent.
    pub max_frame: usize,
    /// Bound on connecting and on the hello/welcome exchange.
    pub handshake_timeout: Duration,
    /// The job's cancellation flag: set, it closes every connection.
    pub cancelled: Arc<AtomicBool>,
    /// Mutual TLS: this process's attempt certificate and the cluster CA;
    /// a peer must present a certificate of that CA naming this job and
    /// attempt. `None`: plaintext.
    pub tls: Option<ClusterTls>,
}

impl ExchangeConfig {
    /// Defaults: 8-message channels, 1 ms flush interval, 64 MiB frames.
    pub fn new(job: impl Into<String>, attempt: u64, node: impl Into<String>) -> Self {
        ExchangeConfig {
            job: job.into(),
            attempt,
            node: node.into(),
            secret: String::new(),
            channel_capacity: 8,
            flush_interval: Duration::from_millis(1),
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
            cancelled: Arc::default(),
            tls: None,
        }
    }
}

/// The channels a connection carries, declared by both sides before data
/// flows.
#[derive(Debug, Clone, Default)]
pub struct ConnectionSpec {
    outbound: Vec<ChannelId>,
    inbound: Vec<(ChannelId, Option<SchemaRef>)>,
}

impl ConnectionSpec {
    /// No channels yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// This side sends on `channel`.
    pub fn outbound(mut self, channel: ChannelId) -> Self {
        self.outbound.push(channel);
        self
    }
    /// This side receives on `channel`, whose batches must have `schema`'s
    /// fields (`None`: any schema).
    pub fn inbound(mut self, channel: ChannelId, schema: Option<SchemaRef>) -> Self {
        self.inbound.push((channel, schema));
        self
    }
}

/// An established connection: its senders and receivers, to be handed to
/// tasks, and a handle to watch or close it.
pub struct Connection {
    senders: HashMap<ChannelId, NetSender>,
    receivers: HashMap<ChannelId, Receiver<StreamMessage>>,
    handle: ConnectionHandle,
}

impl Connection {
    /// The sender of an outbound channel (once).
    pub fn take_sender(&mut self, channel: ChannelId) -> Option<NetSender> {
        self.senders.remove(&channel)
    }
    /// The local queue of an inbound channel (once).
    pub fn take_receiver(&mut self, channel: ChannelId) -> Option<Receiver<StreamMessage>> {
        self.receivers.remove(&channel)
    }
    /// A handle on the connection.
    pub fn handle(&self) -> ConnectionHandle {
        self.handle.clone()
    }
}

/// Watches or closes a connection.
#[derive(Clone)]
pub struct ConnectionHandle {
    shared: Arc<Shared>,
}

impl ConnectionHandle {
    /// The peer's identity (its hello's `peer`, or the address dialed).
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }
    /// Why the connection failed, if it did.
    pub fn failure(&self) -> Option<Error> {
        lock(&self.shared.failure).as_ref().map(Failure::to_error)
    }
    /// Closes the connection now; blocked senders return an error.
    pub fn close(&self) {
        self.shared.fail(Failure::Exchange("closed locally".into()));
    }
    /// Waits until both threads of the connection ended (clean end or
    /// failure); false if `timeout` passed first.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut done = lock(&self.shared.done);
        while *done < 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = self
                .shared
                .done_cv
                .wait_timeout(done, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

#[derive(Debug, Clone)]
enum Failure {
    Protocol(String),
    Exchange(String),
    Cancelled,
}

impl Failure {
    fn from_error(e: Error) -> Self {
        match e {
            Error::Protocol(m) => Failure::Protocol(m),
            Error::Cancelled => Failure::Cancelled,
            Error::Exchange(m) => Failure::Exchange(m),
            e => Failure::Exchange(e.to_string()),
        }
    }
    fn to_error(&self) -> Error {
        match self {
            Failure::Protocol(m) => Error::Protocol(m.clone()),
            Failure::Exchange(m) => Error::Exchange(m.clone()),
            Failure::Cancelled => Error::Cancelled,
        }
    }
}

enum Out {
    /// Encoded frames, in channel order.
    Frames(Vec<u8>),
    /// Something changed (a message arrived): look at credits now.
    Wake,
    /// Send this reason in an error frame and stop.
    Abort(String),
}

struct OutChannel {
    state: Mutex<OutState>,
    cv: Condvar,
}

struct OutState {
    credit: SendCredit,
    encoder: BatchEncoder,
    ended: bool,
}

struct InChannel {
    credit: RecvCredit,
    /// Dropped at end of stream or failure, which disconnects the task's
    /// receiver.
    tx: Option<Sender<StreamMessage>>,
}

struct Shared {
    peer: String,
    socket: TcpStream,
    closed: AtomicBool,
    failure: Mutex<Option<Failure>>,
    out_tx: Sender<Out>,
    outbound: HashMap<ChannelId, Arc<OutChannel>>,
    inbound: HashMap<ChannelId, Mutex<InChannel>>,
    outbound_open: AtomicUsize,
    inbound_open: AtomicUsize,
    writer_idle: AtomicBool,
    writer_done: Mutex<bool>,
    writer_done_cv: Condvar,
    done: Mutex<u8>,
    done_cv: Condvar,
    max_frame: usize,
    cancelled: Arc<AtomicBool>,
}

/// A poisoned lock only means another thread panicked holding it; the
/// state under it is counters that stay meaningful, and the connection is
/// failing anyway.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn check(&self) -> Result<()> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(lock(&self.failure).as_ref().map_or_else(
                || Error::Exchange("connection closed".into()),
                Failure::to_error,
            ));
        }
        Ok(())
    }

    /// Records the first failure, closes the socket and releases everyone
    /// waiting on the connection.
    fn fail(&self, f: Failure) {
        {
            let mut slot = lock(&self.failure);
            if slot.is_none() {
                match &f {
                    Failure::Cancelled => {
                        debug!(peer = %self.peer, "exchange connection cancelled")
                    }
                    f => {
                        warn!(peer = %self.peer, error = %f.to_error(), "exchange connection failed")
                    }
                }
                *slot = Some(f);
            }
        }
        self.closed.store(true, Ordering::Release);
        for ch in self.outbound.values() {
            let _guard = lock(&ch.state);
            ch.cv.notify_all();
        }
        for ch in self.inbound.values() {
            lock(ch).tx = None;
        }
        let _ = self.out_tx.send(Out::Wake);
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    /// A failure the reader found in the peer's bytes: the writer tells the
    /// peer why before the socket closes.
    fn abort(&self, e: Error) {
        let f = Failure::from_error(e);
        {
            let mut slot = lock(&self.failure);
            if slot.is_none() {
                *slot = Some(f.clone());
                warn!(peer = %self.peer, error = %f.to_error(), "exchange connection failed");
            }
        }
        if self
            .out_tx
            .send(Out::Abort(f.to_error().to_string()))
            .is_ok()
        {
            let deadline = Instant::now() + ABORT_GRACE;
            let mut done = lock(&self.writer_done);
            while !*done && Instant::now() < deadline {
                done = self
                    .writer_done_cv
                    .wait_timeout(done, Duration::from_millis(10))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        self.fail(f);
    }

    fn thread_done(&self) {
        *lock(&self.done) += 1;
        self.done_cv.notify_all();
    }
}

/// The sending end of one outbound channel of a connection.
pub struct NetSender {
    channel: ChannelId,
    ch: Arc<OutChannel>,
    shared: Arc<Shared>,
}

impl NetSender {
    /// Sends `msg`; without credit, waits for it, or with `wait` false
    /// gives the message back.
    fn send_or_return(&self, msg: StreamMessage, wait: bool) -> Result<Option<StreamMessage>> {
        let mut st = lock(&self.ch.state);
        if st.ended {
            return Err(Error::Internal(format!(
                "send on channel {} after its end of stream",
                self.channel.0
            )));
        }
        loop {
            self.shared.check()?;
            if st.credit.try_take() {
                break;
            }
            if !wait {
                return Ok(Some(msg));
            }
            st = self
                .ch
                .cv
                .wait_timeout(st, CANCEL_POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let mut frames = Vec::new();
        let largest = match st.encoder.encode(self.channel, &msg, &mut frames) {
            Ok(n) => n,
            Err(e) => {
                st.credit.grant(1).expect("returning a credit just taken");
                return Err(e);
            }
        };
        if largest > self.shared.max_frame {
            st.credit.grant(1).expect("returning a credit just taken");
            // The frames are dropped, schema included: start the IPC stream
            // afresh with the next batch.
            st.encoder = BatchEncoder::default();
            return Err(Error::Exchange(format!(
                "a {largest}-byte frame on channel {} exceeds the {}-byte bound; send smaller batches",
                self.channel.0, self.shared.max_frame
            )));
        }
        if matches!(msg, StreamMessage::EndOfStream) {
            st.ended = true;
            self.shared.outbound_open.fetch_sub(1, Ordering::AcqRel);
        }
        // Queued under the channel lock, so frames keep the channel's order.
        self.shared
            .out_tx
            .send(Out::Frames(frames))
            .map_err(|_| Error::Exchange("connection writer stopped".into()))?;
        Ok(None)
    }
}

impl ChannelSender for NetSender {
    fn send(&self, msg: StreamMessage) -> Result<()> {
        self.send_or_return(msg, true).map(|_| ())
    }

    fn try_send(&self, msg: StreamMessage) -> Result<Option<StreamMessage>> {
        self.send_or_return(msg, false)
    }

    fn backlog(&self) -> usize {
        lock(&self.ch.state).credit.backlog()
    }
}

/// Accepts connections from peers of the same job attempt.
pub struct NetListener {
    listener: TcpListener,
    config: ExchangeConfig,
}

impl NetListener {
    /// Listens on `addr` (port 0 picks a free port).
    pub fn bind(addr: SocketAddr, config: ExchangeConfig) -> Result<Self> {
        let listener = TcpListener::bind(addr).map_err(|e| Error::io("exchange listen", e))?;
        Ok(NetListener { listener, config })
    }

    /// The address peers dial.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("exchange listen address", e))
    }

    /// Accepts one connection and runs its handshake ([`Self::accept_raw`]
    /// then [`Self::handshake`]) on this thread.
    pub fn accept(
        &self,
        spec_for: impl FnOnce(&Hello) -> Result<ConnectionSpec>,
    ) -> Result<Connection> {
        let stream = self.accept_raw()?;
        self.handshake(stream, spec_for)
    }

    /// Accepts one TCP connection, nothing read from it yet: the caller
    /// runs [`Self::handshake`] off the accepting thread, so a silent
    /// stranger delays nobody.
    pub fn accept_raw(&self) -> Result<TcpStream> {
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|e| Error::io("exchange accept", e))?;
        Ok(stream)
    }

    /// The handshake of an accepted connection, done within the
    /// configured handshake timeout: TLS (the peer's certificate must name
    /// this job and attempt), then the hello, which must name this job and
    /// attempt with its secret; `spec_for` then declares the channels for
    /// that peer (an error refuses it). A refused or broken handshake
    /// returns an error.
    pub fn handshake(
        &self,
        stream: TcpStream,
        spec_for: impl FnOnce(&Hello) -> Result<ConnectionSpec>,
    ) -> Result<Connection> {
        let from = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let cfg = &self.config;
        let deadline = Instant::now() + cfg.handshake_timeout;
        prepare(&stream, cfg)?;
        let stream = match secure(stream, cfg, deadline, true) {
            Ok(s) => s,
            Err(e) => {
                warn!(%from, error = %e, "exchange connection refused");
                return Err(e);
            }
        };
        let mut writer = stream
            .writer()
            .map_err(|e| Error::io("exchange socket", e))?;
        let mut refuse = |e: Error| -> Error {
            let mut buf = Vec::new();
            encode(&Frame::Error(e.to_string()), &mut buf);
            let _ = writer.write_all(&buf).and_then(|()| writer.flush());
            let _ = writer.shutdown_write();
            writer.abort();
            warn!(%from, error = %e, "exchange connection refused");
            e
        };
        let (first, decoder, rest) = match first_frame(&stream, deadline) {
            Ok(x) => x,
            Err(e) => return Err(refuse(e)),
        };
        let hello = match first {
            Frame::Hello(h) => h,
            _ => return Err(refuse(proto("the first frame is not a hello"))),
        };
        if let Err(reason) = check_hello(&hello, cfg) {
            return Err(refuse(Error::Exchange(reason)));
        }
        let spec = match spec_for(&hello) {
            Ok(s) => s,
            Err(e) => return Err(refuse(e)),
        };
        let mut buf = Vec::new();
        encode(&Frame::Welcome, &mut buf);
        writer
            .write_all(&buf)
            .and_then(|()| writer.flush())
            .map_err(|e| Error::io("exchange welcome", e))?;
        start(stream, cfg, spec, hello.peer, decoder, rest)
    }
}

/// Decides the channels of a peer from its hello: the peer's index and
/// its connection's channels, or an error that refuses it.
pub type PeerSpecs = Arc<dyn Fn(&Hello) -> Result<(usize, ConnectionSpec)> + Send + Sync>;

/// Handshakes waiting at once on one listener, at most; a new connection
/// closes the one that has waited longest (a real peer finishes within
/// milliseconds, so strangers cannot keep it out).
pub const MAX_PENDING_HANDSHAKES: usize = 16;

impl NetListener {
    /// Accepts peers until `stop` is set (and a connection arrives to
    /// notice it), sending each established connection with its index to
    /// `tx`. Each connection's handshake (TLS, hello) runs on a thread of
    /// its own within the handshake timeout, so a silent, slow or garbled
    /// stranger delays no real peer.
    pub fn accept_until(
        self: &Arc<Self>,
        spec_for: PeerSpecs,
        stop: &AtomicBool,
        tx: &Sender<(usize, Connection)>,
    ) {
        let pending: Arc<Mutex<std::collections::VecDeque<(u64, TcpStream)>>> = Arc::default();
        let mut next = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let stream = match self.accept_raw() {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "exchange accept failed");
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let id = next;
            next += 1;
            {
                let mut p = lock(&pending);
                while p.len() >= MAX_PENDING_HANDSHAKES {
                    if let Some((_, oldest)) = p.pop_front() {
                        debug!("too many exchange handshakes at once: closed the oldest");
                        let _ = oldest.shutdown(Shutdown::Both);
                    }
                }
                if let Ok(c) = stream.try_clone() {
                    p.push_back((id, c));
                }
            }
            let (me, spec_for, pending, tx) =
                (self.clone(), spec_for.clone(), pending.clone(), tx.clone());
            let spawned = thread::Builder::new()
                .name("exchange-handshake".into())
                .spawn(move || {
                    let mut who = None;
                    let r = me.handshake(stream, |h| {
                        let (j, s) = spec_for(h)?;
                        who = Some(j);
                        Ok(s)
                    });
                    lock(&pending).retain(|(i, _)| *i != id);
                    match (r, who) {
                        (Ok(c), Some(j)) => {
                            let _ = tx.send((j, c));
                        }
                        (Err(e), _) => debug!(error = %e, "exchange handshake failed"),
                        (Ok(_), None) => {}
                    }
                });
            if let Err(e) = spawned {
                warn!(error = %e, "no thread for an exchange handshake");
            }
        }
    }
}

/// Dials `addr` and performs the handshake as `config.node`.
pub fn connect(
    addr: SocketAddr,
    config: &ExchangeConfig,
    spec: ConnectionSpec,
) -> Result<Connection> {
    let deadline = Instant::now() + config.handshake_timeout;
    let stream = TcpStream::connect_timeout(&addr, config.handshake_timeout)
        .map_err(|e| Error::io(format!("exchange connect to {addr}"), e))?;
    prepare(&stream, config)?;
    let stream = secure(stream, config, deadline, false)?;
    let mut writer = stream
        .writer()
        .map_err(|e| Error::io("exchange socket", e))?;
    let mut buf = Vec::new();
    encode(
        &Frame::Hello(Hello {
            version: VERSION,
            job: config.job.clone(),
            attempt: config.attempt,
            peer: config.node.clone(),
            secret: config.secret.clone(),
        }),
        &mut buf,
    );
    writer
        .write_all(&buf)
        .and_then(|()| writer.flush())
        .map_err(|e| Error::io("exchange hello", e))?;
    let (first, decoder, rest) = first_frame(&stream, deadline)?;
    match first {
        Frame::Welcome => {}
        Frame::Error(reason) => {
            return Err(Error::Exchange(format!(
                "{addr} refused the connection: {reason}"
            )))
        }
        _ => return Err(proto("the answer to hello is neither welcome nor error")),
    }
    start(stream, config, spec, addr.to_string(), decoder, rest)
}

fn prepare(stream: &TcpStream, cfg: &ExchangeConfig) -> Result<()> {
    // Frames are coalesced by the writer; Nagle would only add delay.
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(cfg.handshake_timeout)))
        .map_err(|e| Error::io("exchange socket options", e))
}

/// TLS on a fresh connection when the config has it (the peer's
/// certificate must name this job and attempt), by `deadline`; the read
/// timeout is then what is left of it, for the hello.
fn secure(
    stream: TcpStream,
    cfg: &ExchangeConfig,
    deadline: Instant,
    server: bool,
) -> Result<SecureStream> {
    let Some(tls) = &cfg.tls else {
        return Ok(SecureStream::plain(stream));
    };
    let s = if server {
        tls.accept(stream, deadline)?
    } else {
        tls.connect(stream, None, deadline)?
    };
    s.with_ssl(|ssl| match ssl {
        Some(ssl) => check_peer_attempt(ssl, &cfg.job, cfg.attempt),
        None => Ok(()),
    })
    .inspect_err(|_| {
        let _ = s.socket().shutdown(Shutdown::Both);
    })?;
    Ok(s)
}

fn check_hello(h: &Hello, cfg: &ExchangeConfig) -> Result<(), String> {
    if h.version != VERSION {
        return Err(format!(
            "protocol version {} is not supported (this process speaks {VERSION})",
            h.version
        ));
    }
    if h.job != cfg.job {
        return Err(format!(
            "peer belongs to job '{}', not '{}'",
            h.job, cfg.job
        ));
    }
    if h.attempt < cfg.attempt {
        return Err(format!(
            "stale attempt {} of job '{}' (the current attempt is {})",
            h.attempt, cfg.job, cfg.attempt
        ));
    }
    if h.attempt > cfg.attempt {
        return Err(format!(
            "attempt {} of job '{}' is newer than this process's attempt {}",
            h.attempt, cfg.job, cfg.attempt
        ));
    }
    if !same_secret(&cfg.secret, &h.secret) {
        return Err(format!(
            "wrong secret for attempt {} of job '{}'",
            h.attempt, cfg.job
        ));
    }
    Ok(())
}

/// Reads until the first frame; returns it, the decoder, and any frames
/// that arrived with it.
fn first_frame(
    stream: &SecureStream,
    deadline: Instant,
) -> Result<(Frame, FrameDecoder, Vec<Frame>)> {
    let mut reader = stream
        .reader()
        .map_err(|e| Error::io("exchange socket", e))?;
    let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME);
    let mut frames = Vec::new();
    let mut buf = [0u8; 4096];
    while frames.is_empty() {
        // The whole handshake has one deadline: a peer sending a byte now
        // and then does not stretch it.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Exchange("no hello in time".into()));
        }
        stream
            .socket()
            .set_read_timeout(Some(left))
            .map_err(|e| Error::io("exchange socket options", e))?;
        let n = match reader.read(&mut buf) {
            Ok(0) => {
                decoder.finish()?;
                return Err(Error::Exchange("peer closed during the handshake".into()));
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("exchange handshake", e)),
        };
        decoder.feed(&buf[..n], &mut frames)?;
    }
    let first = frames.remove(0);
    Ok((first, decoder, frames))
}

fn start(
    stream: SecureStream,
    cfg: &ExchangeConfig,
    spec: ConnectionSpec,
    peer: String,
    mut decoder: FrameDecoder,
    early: Vec<Frame>,
) -> Result<Connection> {
    decoder.set_max_frame(cfg.max_frame);
    stream
        .socket()
        .set_read_timeout(None)
        .map_err(|e| Error::io("exchange socket options", e))?;
    let (out_tx, out_rx) = crossbeam_channel::unbounded();
    let mut outbound = HashMap::new();
    for c in &spec.outbound {
        let ch = Arc::new(OutChannel {
            state: Mutex::new(OutState {
                credit: SendCredit::new(),
                encoder: BatchEncoder::default(),
                ended: false,
            }),
            cv: Condvar::new(),
        });
        if outbound.insert(*c, ch).is_some() {
            return Err(Error::Config(format!(
                "outbound channel {} declared twice",
                c.0
            )));
        }
    }
    let mut inbound = HashMap::new();
    let mut receivers = HashMap::new();
    let mut decoders = HashMap::new();
    for (c, schema) in &spec.inbound {
        let (tx, rx) = crossbeam_channel::bounded(cfg.channel_capacity.max(1));
        let ch = InChannel {
            credit: RecvCredit::new(cfg.channel_capacity.max(1) as u32),
            tx: Some(tx),
        };
        if inbound.insert(*c, Mutex::new(ch)).is_some() {
            return Err(Error::Config(format!(
                "inbound channel {} declared twice",
                c.0
            )));
        }
        receivers.insert(*c, rx);
        decoders.insert(*c, BatchDecoder::new(schema.clone()));
    }
    let socket = stream
        .socket()
        .try_clone()
        .map_err(|e| Error::io("exchange socket", e))?;
    let shared = Arc::new(Shared {
        peer,
        socket,
        closed: AtomicBool::new(false),
        failure: Mutex::new(None),
        out_tx,
        outbound_open: AtomicUsize::new(outbound.len()),
        inbound_open: AtomicUsize::new(inbound.len()),
        outbound,
        inbound,
        writer_idle: AtomicBool::new(false),
        writer_done: Mutex::new(false),
        writer_done_cv: Condvar::new(),
        done: Mutex::new(0),
        done_cv: Condvar::new(),
        max_frame: cfg.max_frame,
        cancelled: cfg.cancelled.clone(),
    });
    info!(peer = %shared.peer, outbound = spec.outbound.len(), inbound = spec.inbound.len(),
        "exchange connection established");

    let write_stream: StreamWriter = stream
        .writer()
        .map_err(|e| Error::io("exchange socket", e))?;
    let read_stream: StreamReader = stream
        .reader()
        .map_err(|e| Error::io("exchange socket", e))?;
    let s = shared.clone();
    let flush = cfg.flush_interval;
    thread::Builder::new()
        .name(format!("exchange-w-{}", shared.peer))
        .spawn(move || {
            let r = writer_loop(&s, out_rx, write_stream, flush);
            *lock(&s.writer_done) = true;
            s.writer_done_cv.notify_all();
            if let Err(e) = r {
                s.fail(Failure::from_error(e));
            }
            s.thread_done();
        })
        .map_err(|e| Error::io("exchange writer thread", e))?;
    let s = shared.clone();
    thread::Builder::new()
        .name(format!("exchange-r-{}", shared.peer))
        .spawn(move || {
            if let Err(e) = reader_loop(&s, read_stream, decoder, early, decoders) {
                s.abort(e);
            }
            s.thread_done();
        })
        .map_err(|e| Error::io("exchange reader thread", e))?;

    let senders = shared
        .outbound
        .iter()
        .map(|(c, ch)| {
            (
                *c,
                NetSender {
                    channel: *c,
                    ch: ch.clone(),
                    shared: shared.clone(),
                },
            )
        })
        .collect();
    Ok(Connection {
        senders,
        receivers,
        handle: ConnectionHandle { shared },
    })
}
