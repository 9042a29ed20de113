//! The TCP transport: one connection per process pair, carrying any number
//! of channels in both directions. Owns sockets, the handshake (job,
//! attempt fencing, peer identity) and the two threads of a connection;
//! the byte format is [`super::frame`]'s and the flow-control arithmetic
//! [`super::credit`]'s.
//!
//! - **Sending** ([`NetSender`], a [`ChannelSender`](super::ChannelSender)): the task thread waits
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
//!
//! Files: `config` (the settings and the channels a connection declares),
//! `handshake` (listening, dialing and the handshake both sides run),
//! `connection` (an established connection, its senders and the start of
//! its threads), `io` (the reader and writer threads). This module holds
//! the state a connection's threads and senders share.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tracing::{debug, warn};

mod config;
mod connection;
mod handshake;
mod io;

pub use config::{ConnectionSpec, ExchangeConfig};

/// Bytes this process wrote to and read from exchange connections (frames
/// as encoded, before TLS): the executor's network traffic in its metrics.
static SENT: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// Exchange bytes this process has (sent, received) so far.
pub fn traffic() -> (u64, u64) {
    (
        SENT.load(Ordering::Relaxed),
        RECEIVED.load(Ordering::Relaxed),
    )
}
pub use connection::{Connection, ConnectionHandle, NetSender};
pub use handshake::{connect, NetListener, PeerSpecs, MAX_PENDING_HANDSHAKES};

use super::credit::{RecvCredit, SendCredit};
use super::frame::{BatchEncoder, ChannelId};
use crate::data::StreamMessage;
use crate::error::{Error, Result};

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
