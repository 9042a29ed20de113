//! A connection that is TLS or plain behind one type, split into a
//! reading half and a writing half for two threads.
//!
//! An OpenSSL session must not be read and written at once from two
//! threads, and a reader blocked in `SSL_read` on the socket would hold
//! the session while the writer waits. So the session works on memory
//! buffers ([`MemIo`]) and never touches the socket: the reader reads
//! ciphertext from the socket with no lock held, then takes the session
//! briefly to decrypt; the writer takes it briefly to encrypt and writes
//! the ciphertext with no lock held. Only one writer at a time encrypts
//! and writes (the `gate`), so records reach the socket in the order they
//! were made, and bytes the session wants to send on the reader's behalf
//! go out with the next write or flush.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, Ssl, SslRef, SslStream};

use crate::error::{Error, Result};

/// The session's view of the wire: ciphertext that arrived, and
/// ciphertext to send.
#[derive(Default)]
struct MemIo {
    incoming: Vec<u8>,
    pos: usize,
    eof: bool,
    outgoing: Vec<u8>,
}

impl MemIo {
    fn push(&mut self, bytes: &[u8]) {
        if self.pos == self.incoming.len() {
            self.incoming.clear();
            self.pos = 0;
        } else if self.pos > (64 << 10) {
            self.incoming.drain(..self.pos);
            self.pos = 0;
        }
        self.incoming.extend_from_slice(bytes);
    }
}

impl Read for MemIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = &self.incoming[self.pos..];
        if left.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(ErrorKind::WouldBlock.into())
            };
        }
        let n = left.len().min(buf.len());
        buf[..n].copy_from_slice(&left[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for MemIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Session {
    ssl: Mutex<SslStream<MemIo>>,
    /// Held by the one writer encrypting and writing.
    gate: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ssl_io_error(e: openssl::ssl::Error) -> io::Error {
    match e.into_io_error() {
        Ok(io) => io,
        Err(e) => io::Error::new(ErrorKind::InvalidData, format!("TLS: {e}")),
    }
}

/// A connected socket, with a TLS session over it or none.
pub struct SecureStream {
    socket: TcpStream,
    session: Option<Arc<Session>>,
}

impl SecureStream {
    /// A plaintext connection (the `--insecure-plaintext` clusters).
    pub fn plain(socket: TcpStream) -> SecureStream {
        SecureStream {
            socket,
            session: None,
        }
    }

    /// Runs the handshake of `ssl` over `socket` until `deadline`.
    pub(super) fn handshake(
        socket: TcpStream,
        ssl: Ssl,
        server: bool,
        deadline: Instant,
    ) -> Result<SecureStream> {
        let failed = |e: &dyn std::fmt::Display| {
            Error::Exchange(format!("TLS handshake with {}: {e}", peer(&socket)))
        };
        let mut s = SslStream::new(ssl, MemIo::default()).map_err(|e| failed(&e))?;
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let r = if server { s.accept() } else { s.connect() };
            let out = std::mem::take(&mut s.get_mut().outgoing);
            if !out.is_empty() {
                (&socket).write_all(&out).map_err(|e| failed(&e))?;
            }
            match r {
                Ok(()) => break,
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) => {
                    // A refusal of ours went out above; say what failed.
                    let why = match s.ssl().verify_result() {
                        openssl::x509::X509VerifyResult::OK => e.to_string(),
                        v => format!("{e} ({v})"),
                    };
                    return Err(failed(&why));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(failed(&"no handshake in time"));
            }
            socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| failed(&e))?;
            match (&socket).read(&mut buf) {
                Ok(0) => s.get_mut().eof = true,
                Ok(n) => s.get_mut().push(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    return Err(failed(&"no handshake in time"))
                }
                Err(e) => return Err(failed(&e)),
            }
        }
        socket.set_read_timeout(None).map_err(|e| failed(&e))?;
        Ok(SecureStream {
            socket,
            session: Some(Arc::new(Session {
                ssl: Mutex::new(s),
                gate: Mutex::new(()),
            })),
        })
    }

    /// The socket (for options, addresses and closing it outright).
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.session.is_some()
    }

    /// Runs `f` on the TLS session (`None` for plaintext): the peer's
    /// certificate, say.
    pub fn with_ssl<T>(&self, f: impl FnOnce(Option<&SslRef>) -> T) -> T {
        match &self.session {
            Some(s) => f(Some(lock(&s.ssl).ssl())),
            None => f(None),
        }
    }

    /// A reading half (any number; one thread should read).
    pub fn reader(&self) -> io::Result<StreamReader> {
        Ok(StreamReader {
            socket: self.socket.try_clone()?,
            session: self.session.clone(),
            buf: Vec::new(),
        })
    }

    /// A writing half (any number; writes of several are not interleaved
    /// within one call).
    pub fn writer(&self) -> io::Result<StreamWriter> {
        Ok(StreamWriter {
            socket: self.socket.try_clone()?,
            session: self.session.clone(),
        })
    }
}

fn peer(socket: &TcpStream) -> String {
    socket
        .peer_addr()
        .map_or_else(|_| "the peer".to_string(), |a| a.to_string())
}

/// The reading half of a [`SecureStream`].
pub struct StreamReader {
    socket: TcpStream,
    session: Option<Arc<Session>>,
    buf: Vec<u8>,
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(session) = &self.session else {
            return (&self.socket).read(out);
        };
        loop {
            {
                let mut s = lock(&session.ssl);
                match s.ssl_read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok(0),
                    Err(e) if e.code() == ErrorCode::WANT_READ => {
                        if s.get_ref().eof {
                            return Err(io::Error::new(
                                ErrorKind::UnexpectedEof,
                                "the peer closed the connection without ending the TLS session",
                            ));
                        }
                    }
                    Err(e) => return Err(ssl_io_error(e)),
                }
            }
            if self.buf.is_empty() {
                self.buf = vec![0u8; out.len().clamp(16 << 10, 256 << 10)];
            }
            let n = loop {
                match (&self.socket).read(&mut self.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            let mut s = lock(&session.ssl);
            if n == 0 {
                s.get_mut().eof = true;
            } else {
                s.get_mut().push(&self.buf[..n]);
            }
        }
    }
}

/// The writing half of a [`SecureStream`].
pub struct StreamWriter {
    socket: TcpStream,
    session: Option<Arc<Session>>,
}

impl StreamWriter {
    /// Ends this side: a TLS close_notify, then the socket's write side.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Some(session) = &self.session {
            let _gate = lock(&session.gate);
            let out = {
                let mut s = lock(&session.ssl);
                let _ = s.shutdown();
                std::mem::take(&mut s.get_mut().outgoing)
            };
            (&self.socket).write_all(&out)?;
        }
        self.socket.shutdown(Shutdown::Write)
    }

    /// Closes both directions of the socket at once (no close_notify).
    pub fn abort(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

impl Write for StreamWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(session) = &self.session else {
            return (&self.socket).write(buf);
        };
        let _gate = lock(&session.gate);
        let (n, out) = {
            let mut s = lock(&session.ssl);
            let n = s.ssl_write(buf).map_err(ssl_io_error)?;
            (n, std::mem::take(&mut s.get_mut().outgoing))
        };
        (&self.socket).write_all(&out)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(session) = &self.session {
            let _gate = lock(&session.gate);
            let out = std::mem::take(&mut lock(&session.ssl).get_mut().outgoing);
            if !out.is_empty() {
                (&self.socket).write_all(&out)?;
            }
        }
        (&self.socket).flush()
    }
}
