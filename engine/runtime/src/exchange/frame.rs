//! The network exchange's wire format, sans-IO: an incremental
//! [`FrameDecoder`] (feed it whatever bytes arrived, get whole frames out),
//! frame encoders, and the per-channel Arrow IPC codec ([`BatchEncoder`],
//! [`BatchDecoder`]). Owns byte layouts and their validation; knows nothing
//! of sockets, threads or credits beyond the credit frame's layout.
//!
//! Every frame is an 8-byte header — body length (`u32`, little endian),
//! kind (`u8`), three reserved zero bytes — and a body. Channel frames start
//! their body with the channel id (`u32`) and four reserved zero bytes, so an
//! Arrow IPC payload begins 8-byte aligned in the body buffer and arrow can
//! use its buffers without realigning them.
//!
//! | kind | body |
//! |---|---|
//! | 1 hello | version `u16`, attempt `u64`, job (`u16` length + UTF-8), peer (`u16` length + UTF-8) |
//! | 2 welcome | empty |
//! | 3 error | UTF-8 reason (the sender closes the connection after it) |
//! | 16 schema | channel, IPC stream bytes of a schema message |
//! | 17 batch | channel, IPC stream bytes of (dictionaries and) one record batch |
//! | 18 watermark | channel, tag `u8` (0 event time, 1 idle), time `i64` |
//! | 19 barrier | channel, checkpoint `u64`, timestamp `i64`, kind `u8` |
//! | 20 end of stream | channel |
//! | 21 latency marker | channel, emitted at `i64` (ms since the epoch) |
//! | 32 credit | channel, credits `u32` (> 0) |
//!
//! Anything else — an unknown kind, non-zero reserved bytes, a body longer
//! than the bound or of the wrong size, bad UTF-8, IPC bytes that do not
//! decode to exactly one schema or batch — is a [`FrameError`] or a
//! [`Error::Protocol`]; decoding never panics on peer input.

use std::panic::{catch_unwind, AssertUnwindSafe};

use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::convert::try_schema_from_ipc_buffer;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;

use crate::data::{Barrier, BarrierKind, CheckpointId, StreamMessage, Watermark};
use crate::error::{Error, Result};

/// Protocol version carried in the hello frame: the cluster's
/// [`PROTOCOL_VERSION`](sluice_protocol::PROTOCOL_VERSION) (version 2 was
/// the exchange's own, before the control plane was versioned).
pub const VERSION: u16 = sluice_protocol::PROTOCOL_VERSION as u16;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// Bytes before the payload in a channel frame's body.
const CHANNEL_PREFIX: usize = 8;
/// Default bound on a frame body: a batch larger than this must be split.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// One channel of a connection (per direction: a data frame names the
/// sender's outbound channel, a credit frame the credit receiver's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

mod kind {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const ERROR: u8 = 3;
    pub const SCHEMA: u8 = 16;
    pub const BATCH: u8 = 17;
    pub const WATERMARK: u8 = 18;
    pub const BARRIER: u8 = 19;
    pub const END: u8 = 20;
    pub const LATENCY: u8 = 21;
    pub const CREDIT: u8 = 32;
}

/// The first frame on a connection, from the dialing side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version.
    pub version: u16,
    /// Job the dialer belongs to.
    pub job: String,
    /// Attempt (restart generation) of that job; a stale attempt is refused.
    pub attempt: u64,
    /// The dialer's identity (worker or process name).
    pub peer: String,
    /// The attempt's secret, which the accepting side must share.
    pub secret: String,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Handshake from the dialer.
    Hello(Hello),
    /// The acceptor took the connection.
    Welcome,
    /// The sender refuses or closes the connection for this reason.
    Error(String),
    /// A message on one channel.
    Data {
        /// The sender's outbound channel.
        channel: ChannelId,
        /// What it carries.
        payload: Payload,
    },
    /// The receiver of a channel grants room for more messages.
    Credit {
        /// The credit receiver's outbound channel.
        channel: ChannelId,
        /// How many more messages may be sent.
        credits: u32,
    },
}

/// What a data frame carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Arrow IPC schema message: starts (or restarts) the channel's IPC stream.
    Schema(Buffer),
    /// Arrow IPC messages holding one record batch.
    Batch(Buffer),
    /// A watermark.
    Watermark(Watermark),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The channel ended.
    EndOfStream,
    /// A latency marker: when its source emitted it, ms since the epoch.
    Latency(i64),
}

impl Payload {
    /// Whether this payload is a stream message (uses a credit); schema
    /// frames only prepare the decoder.
    pub fn is_message(&self) -> bool {
        !matches!(self, Payload::Schema(_))
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces a body over the bound.
    #[error("frame body of {len} bytes exceeds the bound of {max} bytes")]
    TooLarge {
        /// Announced body length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Reserved header or channel-prefix bytes are not zero.
    #[error("reserved bytes of a frame are not zero")]
    Reserved,
    /// The body does not have the layout its kind requires.
    #[error("malformed {kind} frame ({len}-byte body): {what}")]
    Malformed {
        /// Frame kind name.
        kind: &'static str,
        /// Body length.
        len: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The stream ended inside a frame.
    #[error("connection ended inside a frame ({0} bytes of it received)")]
    Truncated(usize),
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        Error::Protocol(e.to_string())
    }
}

/// An incremental frame decoder: feed bytes in any split, get whole frames.
/// After an error it stays failed (the connection must be closed).
pub struct FrameDecoder {
    max_frame: usize,
    header: [u8; HEADER_LEN],
    have: usize,
    pending: Option<Pending>,
    failed: Option<FrameError>,
}

struct Pending {
    kind: u8,
    len: usize,
    body: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder refusing bodies over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            max_frame,
            header: [0; HEADER_LEN],
            have: 0,
            pending: None,
            failed: None,
        }
    }

    /// Changes the bound for frames whose header has not arrived yet (the
    /// handshake uses a small one, so an unauthenticated peer cannot make
    /// the process allocate much).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Consumes `data`, appending every frame it completes to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Frame>) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.feed_inner(data, out);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn feed_inner(&mut self, mut data: &[u8], out: &mut Vec<Frame>) -> Result<(), FrameError> {
        while !data.is_empty() {
            match &mut self.pending {
                None => {
                    let n = (HEADER_LEN - self.have).min(data.len());
                    self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                    self.have += n;
                    data = &data[n..];
                    if self.have == HEADER_LEN {
                        self.have = 0;
                        let len = u32::from_le_bytes(self.header[..4].try_into().expect("4 bytes"))
                            as usize;
                        let kind = self.header[4];
                        // Checked before any body arrives, so garbage is
                        // refused at once and never makes us allocate.
                        if kind_name(kind).is_none() {
                            return Err(FrameError::UnknownKind(kind));
                        }
                        if self.header[5..] != [0, 0, 0] {
                            return Err(FrameError::Reserved);
                        }
                        if len > self.max_frame {
                            return Err(FrameError::TooLarge {
                                len,
                                max: self.max_frame,
                            });
                        }
                        if len == 0 {
                            out.push(parse_body(kind, Vec::new())?);
                        } else {
                            self.pending = Some(Pending {
                                kind,
                                len,
                                body: Vec::with_capacity(len),
                            });
                        }
                    }
                }
                Some(p) => {
                    let n = (p.len - p.body.len()).min(data.len());
                    p.body.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if p.body.len() == p.len {
                        let p = self.pending.take().expect("pending frame");
                        out.push(parse_body(p.kind, p.body)?);
                    }
                }
            }
        }
        Ok(())
    }

    /// Called at end of input: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let partial = self.have
            + self
                .pending
                .as_ref()
                .map_or(0, |p| HEADER_LEN + p.body.len());
        if partial > 0 {
            return Err(FrameError::Truncated(partial));
        }
        Ok(())
    }
}

fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        kind::HELLO => "hello",
        kind::WELCOME => "welcome",
        kind::ERROR => "error",
        kind::SCHEMA => "schema",
        kind::BATCH => "batch",
        kind::WATERMARK => "watermark",
        kind::BARRIER => "barrier",
        kind::END => "end-of-stream",
        kind::LATENCY => "latency",
        kind::CREDIT => "credit",
        _ => return None,
    })
}

/// Reads fixed-size fields off a body, failing (not panicking) when short.
struct Cursor<'a> {
    buf: &'a [u8],
    kind: &'static str,
    len: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], kind: &'static str) -> Self {
        Cursor {
            buf,
            kind,
            len: buf.len(),
        }
    }
    fn err(&self, what: &'static str) -> FrameError {
        FrameError::Malformed {
            kind: self.kind,
            len: self.len,
            what,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(self.err("body too short"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn string(&mut self) -> Result<String, FrameError> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }
    fn channel(&mut self) -> Result<ChannelId, FrameError> {
        let c = self.u32()?;
        if self.u32()? != 0 {
            return Err(FrameError::Reserved);
        }
        Ok(ChannelId(c))
    }
    fn done(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

fn parse_body(k: u8, body: Vec<u8>) -> Result<Frame, FrameError> {
    let name = kind_name(k).ok_or(FrameError::UnknownKind(k))?;
    let mut c = Cursor::new(&body, name);
    let frame = match k {
        kind::HELLO => Frame::Hello(Hello {
            version: c.u16()?,
            attempt: c.u64()?,
            job: c.string()?,
            peer: c.string()?,
            // Version 1 peers send none; their version is refused after.
            secret: if c.buf.is_empty() {
                String::new()
            } else {
                c.string()?
            },
        }),
        kind::WELCOME => Frame::Welcome,
        kind::ERROR => {
            let s = c.take(body.len())?;
            Frame::Error(String::from_utf8(s.to_vec()).map_err(|_| c.err("reason is not UTF-8"))?)
        }
        kind::SCHEMA | kind::BATCH => {
            let channel = c.channel()?;
            if c.buf.is_empty() {
                return Err(c.err("no IPC bytes"));
            }
            // Zero copy: the payload is a slice of the body allocation.
            let ipc = Buffer::from_vec(body).slice(CHANNEL_PREFIX);
            let payload = if k == kind::SCHEMA {
                Payload::Schema(ipc)
            } else {
                Payload::Batch(ipc)
            };
            return Ok(Frame::Data { channel, payload });
        }
        kind::WATERMARK => {
            let channel = c.channel()?;
            let tag = c.u8()?;
            let t = c.u64()? as i64;
            let w = match (tag, t) {
                (0, t) => Watermark::EventTime(t),
                (1, 0) => Watermark::Idle,
                _ => return Err(c.err("bad watermark tag")),
            };
            Frame::Data {
                channel,
                payload: Payload::Watermark(w),
            }
        }
        kind::BARRIER => {
            let channel = c.channel()?;
            let id = CheckpointId(c.u64()?);
            let timestamp = c.u64()? as i64;
            let kind = match c.u8()? {
                0 => BarrierKind::Checkpoint,
                1 => BarrierKind::Savepoint,
                2 => BarrierKind::StopWithSavepoint,
                3 => BarrierKind::EndOfInput,
                _ => return Err(c.err("bad barrier kind")),
            };
            Frame::Data {
                channel,
                payload: Payload::Barrier(Barrier {
                    id,
                    timestamp,
                    kind,
                }),
            }
        }
        kind::END => Frame::Data {
            channel: c.channel()?,
            payload: Payload::EndOfStream,
        },
        kind::LATENCY => Frame::Data {
            channel: c.channel()?,
            payload: Payload::Latency(c.u64()? as i64),
        },
        kind::CREDIT => {
            let channel = ChannelId(c.u32()?);
            let credits = c.u32()?;
            if credits == 0 {
                return Err(c.err("zero credits"));
            }
            Frame::Credit { channel, credits }
        }
        _ => return Err(FrameError::UnknownKind(k)),
    };
    c.done()?;
    Ok(frame)
}

/// Starts a frame of `kind` in `out`; returns where its header begins.
fn begin(out: &mut Vec<u8>, k: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, k, 0, 0, 0]);
    start
}

/// Patches the body length of the frame begun at `start`.
fn end(out: &mut [u8], start: usize) {
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_channel(out: &mut Vec<u8>, c: ChannelId) {
    out.extend_from_slice(&c.0.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    // Identities are short; longer ones are cut at a char boundary so the
    // frame stays decodable.
    let mut n = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..n]);
}

/// Appends the encoding of `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::Hello(h) => {
            let s = begin(out, kind::HELLO);
            out.extend_from_slice(&h.version.to_le_bytes());
            out.extend_from_slice(&h.attempt.to_le_bytes());
            put_string(out, &h.job);
            put_string(out, &h.peer);
            put_string(out, &h.secret);
            end(out, s);
        }
        Frame::Welcome => {
            let s = begin(out, kind::WELCOME);
            end(out, s);
        }
        Frame::Error(reason) => {
            let s = begin(out, kind::ERROR);
            out.extend_from_slice(reason.as_bytes());
            end(out, s);
        }
        Frame::Credit { channel, credits } => {
            let s = begin(out, kind::CREDIT);
            out.extend_from_slice(&channel.0.to_le_bytes());
            out.extend_from_slice(&credits.to_le_bytes());
            end(out, s);
        }
        Frame::Data { channel, payload } => {
            let k = match payload {
                Payload::Schema(_) => kind::SCHEMA,
                Payload::Batch(_) => kind::BATCH,
                Payload::Watermark(_) => kind::WATERMARK,
                Payload::Barrier(_) => kind::BARRIER,
                Payload::EndOfStream => kind::END,
                Payload::Latency(_) => kind::LATENCY,
            };
            let s = begin(out, k);
            put_channel(out, *channel);
            match payload {
                Payload::Schema(b) | Payload::Batch(b) => out.extend_from_slice(b.as_slice()),
                Payload::Watermark(Watermark::EventTime(t)) => {
                    out.push(0);
                    out.extend_from_slice(&t.to_le_bytes());
                }
                Payload::Watermark(Watermark::Idle) => {
                    out.push(1);
                    out.extend_from_slice(&0i64.to_le_bytes());
                }
                Payload::Barrier(b) => {
                    out.extend_from_slice(&b.id.0.to_le_bytes());
                    out.extend_from_slice(&b.timestamp.to_le_bytes());
                    out.push(match b.kind {
                        BarrierKind::Checkpoint => 0,
                        BarrierKind::Savepoint => 1,
                        BarrierKind::StopWithSavepoint => 2,
                        BarrierKind::EndOfInput => 3,
                    });
                }
                Payload::EndOfStream => {}
                Payload::Latency(t) => out.extend_from_slice(&t.to_le_bytes()),
            }
            end(out, s);
        }
    }
}

/// Encodes the stream messages of one outbound channel: batches as Arrow
/// IPC (the schema once, again only if it changes), control messages as
/// their fixed-size frames.
#[derive(Default)]
pub struct BatchEncoder {
    writer: Option<StreamWriter<Vec<u8>>>,
    schema: Option<SchemaRef>,
}

impl BatchEncoder {
    /// Appends the frames for `msg` on `channel` to `out`; returns the size
    /// of the largest frame body written (to check against the bound).
    pub fn encode(
        &mut self,
        channel: ChannelId,
        msg: &StreamMessage,
        out: &mut Vec<u8>,
    ) -> Result<usize> {
        let start = out.len();
        let payload = match msg {
            StreamMessage::Batch(b) => {
                let mut largest = 0;
                if self.schema.as_ref() != Some(b.schema_ref()) {
                    let mut w = StreamWriter::try_new(Vec::new(), b.schema_ref())?;
                    let s = begin(out, kind::SCHEMA);
                    put_channel(out, channel);
                    out.append(w.get_mut());
                    end(out, s);
                    largest = out.len() - s - HEADER_LEN;
                    self.writer = Some(w);
                    self.schema = Some(b.schema());
                }
                let w = self.writer.as_mut().expect("writer set with the schema");
                // The IPC writer appends to its own Vec; lend it `out` so the
                // batch is encoded in place behind the frame header.
                std::mem::swap(w.get_mut(), out);
                let s = begin(w.get_mut(), kind::BATCH);
                put_channel(w.get_mut(), channel);
                let r = w.write(b);
                std::mem::swap(w.get_mut(), out);
                if let Err(e) = r {
                    // A failed write leaves a partial frame: drop it, and
                    // restart the IPC stream (its dictionary state is unknown).
                    out.truncate(start);
                    self.writer = None;
                    self.schema = None;
                    return Err(e.into());
                }
                end(out, s);
                return Ok(largest.max(out.len() - s - HEADER_LEN));
            }
            StreamMessage::Watermark(w) => Payload::Watermark(*w),
            StreamMessage::Barrier(b) => Payload::Barrier(*b),
            StreamMessage::EndOfStream => Payload::EndOfStream,
            StreamMessage::Latency(t) => Payload::Latency(*t),
        };
        encode(&Frame::Data { channel, payload }, out);
        Ok(out.len() - start - HEADER_LEN)
    }
}

/// Decodes the stream messages of one inbound channel, checking batches
/// against the schema the edge was planned with.
pub struct BatchDecoder {
    decoder: Option<StreamDecoder>,
    expected: Option<SchemaRef>,
}

impl BatchDecoder {
    /// A decoder for a channel whose batches must have `expected`'s fields
    /// (`None` accepts any schema).
    pub fn new(expected: Option<SchemaRef>) -> Self {
        BatchDecoder {
            decoder: None,
            expected,
        }
    }

    /// Turns a payload into the message it carries (`None` for a schema).
    pub fn decode(&mut self, payload: Payload) -> Result<Option<StreamMessage>> {
        Ok(Some(match payload {
            Payload::Schema(mut buf) => {
                // arrow's stream decoder completes a body-less schema message
                // only when the next bytes arrive, so the schema is parsed
                // here on its own, and the payload must be exactly that
                // one message (continuation marker, length, flatbuffer).
                let bytes = buf.as_slice();
                let whole = bytes.len() >= 8
                    && bytes[..4] == [0xff; 4]
                    && u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize + 8
                        == bytes.len();
                if !whole {
                    return Err(proto("schema frame does not hold exactly one IPC message"));
                }
                let schema = guarded(|| try_schema_from_ipc_buffer(bytes))?;
                if let Some(e) = &self.expected {
                    if e.fields() != schema.fields() {
                        return Err(Error::Protocol(format!(
                            "peer announced schema {schema:?}, the channel carries {e:?}"
                        )));
                    }
                }
                let mut d = StreamDecoder::new();
                match guarded(|| d.decode(&mut buf))? {
                    None if buf.is_empty() => {}
                    _ => return Err(proto("schema frame does not hold exactly one schema")),
                }
                self.decoder = Some(d);
                return Ok(None);
            }
            Payload::Batch(mut buf) => {
                let d = self
                    .decoder
                    .as_mut()
                    .ok_or_else(|| proto("batch frame before any schema frame"))?;
                match guarded(|| d.decode(&mut buf))? {
                    Some(b) if buf.is_empty() => StreamMessage::Batch(b),
                    _ => return Err(proto("batch frame does not hold exactly one record batch")),
                }
            }
            Payload::Watermark(w) => StreamMessage::Watermark(w),
            Payload::Barrier(b) => StreamMessage::Barrier(b),
            Payload::EndOfStream => StreamMessage::EndOfStream,
            Payload::Latency(t) => StreamMessage::Latency(t),
        }))
    }
}

pub(crate) fn proto(msg: &str) -> Error {
    Error::Protocol(msg.to_string())
}

/// Runs arrow's IPC decoder on peer bytes. It validates what it builds, but
/// it can panic on inconsistent buffer offsets (arrow 60 asserts in
/// `Buffer::slice_with_length`; `mutated_ipc_payloads_never_panic` finds
/// such inputs), and a peer's bytes must only close the connection, so the
/// panic is caught here and the decoder is discarded with the connection.
/// This relies on unwinding: the workspace must not set `panic = "abort"`.
fn guarded<T>(f: impl FnOnce() -> Result<T, arrow::error::ArrowError>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Protocol(format!("invalid Arrow IPC data: {e}"))),
        Err(_) => Err(proto("Arrow IPC decoder panicked on malformed data")),
    }
}

#[cfg(test)]
mod tests;
