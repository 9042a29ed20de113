//! Establishing connections: [`NetListener`] accepts peers (each
//! handshake on a thread of its own, a bounded number at once),
//! [`connect`] dials one; both run the handshake — socket options, TLS with
//! the peer's certificate checked against this job and attempt, then the
//! hello (job, attempt, secret, protocol version) answered by a welcome or
//! an error frame — before `connection::start` takes over.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tracing::{debug, warn};

use super::connection::start;
use super::{lock, Connection, ConnectionSpec, ExchangeConfig, HANDSHAKE_MAX_FRAME};
use crate::error::{Error, Result};
use crate::exchange::frame::{encode, proto, Frame, FrameDecoder, Hello, VERSION};
use crate::tls::{check_peer_attempt, SecureStream};
use sluice_protocol::secret::same_secret;

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
        let pending: Arc<Mutex<VecDeque<(u64, TcpStream)>>> = Arc::default();
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
