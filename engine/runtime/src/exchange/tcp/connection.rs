//! An established connection: the [`Connection`] whose senders and
//! receivers go to tasks, the [`ConnectionHandle`] that watches or closes
//! it, the [`NetSender`] a task sends through (credit, encode, queue), and
//! `start`, which builds the channel state once the handshake is done and
//! spawns the connection's two threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tracing::info;

use super::io::{reader_loop, writer_loop};
use super::{
    lock, ConnectionSpec, ExchangeConfig, Failure, InChannel, Out, OutChannel, OutState, Shared,
    CANCEL_POLL,
};
use crate::data::StreamMessage;
use crate::error::{Error, Result};
use crate::exchange::credit::{RecvCredit, SendCredit};
use crate::exchange::frame::{BatchDecoder, BatchEncoder, ChannelId, Frame, FrameDecoder};
use crate::exchange::ChannelSender;
use crate::tls::stream::{StreamReader, StreamWriter};
use crate::tls::SecureStream;

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

    fn capacity(&self) -> usize {
        lock(&self.ch.state).credit.window()
    }
}

/// Starts an established connection (its handshake done): builds the
/// channel state, spawns the writer and reader threads and hands out the
/// senders and receivers.
pub(super) fn start(
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
