//! The two threads of a connection: the reader (decode frames, fill the
//! local queues, apply credit grants) and the writer (coalesce and flush
//! frames, grant credits as local queues drain).

use std::collections::HashMap;
use std::io::{BufWriter, ErrorKind, Read, Write};

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TrySendError};
use tracing::debug;

use super::{
    lock, Out, Shared, CANCEL_POLL, CREDIT_POLL_MAX, CREDIT_POLL_MIN, READ_CHUNK, WRITE_BUFFER,
};
use crate::data::StreamMessage;
use crate::error::{Error, Result};
use crate::exchange::frame::{encode, proto, BatchDecoder, ChannelId, Frame, FrameDecoder};
use crate::tls::stream::{StreamReader, StreamWriter};

pub(super) fn reader_loop(
    shared: &Shared,
    mut stream: StreamReader,
    mut decoder: FrameDecoder,
    mut frames: Vec<Frame>,
    mut decoders: HashMap<ChannelId, BatchDecoder>,
) -> Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut fed = Ok(());
    loop {
        // Frames decoded before a malformed one are delivered first: they
        // were valid, and the error then closes the connection.
        let arrived = !frames.is_empty();
        for f in frames.drain(..) {
            on_frame(shared, f, &mut decoders)?;
        }
        if arrived && shared.writer_idle.swap(false, Ordering::AcqRel) {
            let _ = shared.out_tx.send(Out::Wake);
        }
        std::mem::replace(&mut fed, Ok(()))?;
        let n = match stream.read(&mut buf) {
            Ok(0) if shared.closed.load(Ordering::Acquire) => return Ok(()),
            Ok(0) => {
                decoder.finish()?;
                let open = shared.inbound_open.load(Ordering::Acquire);
                if open > 0 {
                    return Err(Error::Exchange(format!(
                        "peer closed the connection with {open} inbound channels open"
                    )));
                }
                debug!(peer = %shared.peer, "exchange peer finished sending");
                return Ok(());
            }
            Ok(n) => {
                super::RECEIVED.fetch_add(n as u64, Ordering::Relaxed);
                n
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) if shared.closed.load(Ordering::Acquire) => return Ok(()),
            Err(e) => return Err(Error::io("exchange read", e)),
        };
        fed = decoder.feed(&buf[..n], &mut frames).map_err(Error::from);
    }
}

fn on_frame(
    shared: &Shared,
    frame: Frame,
    decoders: &mut HashMap<ChannelId, BatchDecoder>,
) -> Result<()> {
    match frame {
        Frame::Hello(_) | Frame::Welcome => Err(proto("handshake frame after the handshake")),
        Frame::Error(reason) => Err(Error::Exchange(format!(
            "peer {} closed the connection: {reason}",
            shared.peer
        ))),
        Frame::Credit { channel, credits } => {
            let ch = shared.outbound.get(&channel).ok_or_else(|| {
                Error::Protocol(format!("credit for unknown channel {}", channel.0))
            })?;
            let mut st = lock(&ch.state);
            st.credit
                .grant(credits)
                .map_err(|e| Error::Protocol(format!("channel {}: {e}", channel.0)))?;
            ch.cv.notify_all();
            Ok(())
        }
        Frame::Data { channel, payload } => {
            let (ch, dec) = match (shared.inbound.get(&channel), decoders.get_mut(&channel)) {
                (Some(ch), Some(dec)) => (ch, dec),
                _ => {
                    return Err(Error::Protocol(format!(
                        "data on unknown channel {}",
                        channel.0
                    )))
                }
            };
            let Some(msg) = dec.decode(payload)? else {
                return Ok(());
            };
            let mut st = lock(ch);
            st.credit
                .on_message()
                .map_err(|e| Error::Protocol(format!("channel {}: {e}", channel.0)))?;
            let end = matches!(msg, StreamMessage::EndOfStream);
            let Some(tx) = &st.tx else {
                if shared.closed.load(Ordering::Acquire) {
                    return Ok(());
                }
                return Err(Error::Protocol(format!(
                    "data on channel {} after its end of stream",
                    channel.0
                )));
            };
            match tx.try_send(msg) {
                Ok(()) => {}
                // The task dropped its receiver (it ended or failed); its
                // job's failure handling owns that, the connection goes on.
                Err(TrySendError::Disconnected(_)) => {
                    debug!(
                        channel = channel.0,
                        "exchange message for a dropped receiver"
                    )
                }
                Err(TrySendError::Full(_)) => {
                    return Err(Error::Internal(format!(
                        "channel {} queue full despite credit accounting",
                        channel.0
                    )))
                }
            }
            if end {
                st.tx = None;
                shared.inbound_open.fetch_sub(1, Ordering::AcqRel);
            }
            Ok(())
        }
    }
}

pub(super) fn writer_loop(
    shared: &Shared,
    out_rx: Receiver<Out>,
    stream: StreamWriter,
    flush_interval: Duration,
) -> Result<()> {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, stream);
    let mut unflushed_since: Option<Instant> = None;
    let mut last_flush: Option<Instant> = None;
    let mut scratch = Vec::new();
    let mut credits_due = true;
    let mut credit_poll = CREDIT_POLL_MIN;
    loop {
        let now = Instant::now();
        let timeout = match unflushed_since {
            Some(t) => (t + flush_interval).saturating_duration_since(now),
            None if credits_due => credit_poll,
            None => CANCEL_POLL,
        };
        let timeout = if credits_due {
            timeout.min(credit_poll)
        } else {
            timeout
        };
        // A long sleep (idle, or credit polling backed off behind a stalled
        // channel) is cut short by the reader when messages arrive, so other
        // channels' credits are not delayed by the back-off.
        if timeout > CREDIT_POLL_MIN {
            shared.writer_idle.store(true, Ordering::Release);
        }
        let first = match out_rx.recv_timeout(timeout) {
            Ok(o) => Some(o),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Internal("exchange writer queue disconnected".into()))
            }
        };
        shared.writer_idle.store(false, Ordering::Release);
        shared.check()?;
        // Drain what is queued (bounded, so credit grants are not starved).
        let mut woken = false;
        for out in first.into_iter().chain(out_rx.try_iter().take(256)) {
            match out {
                Out::Frames(bytes) => {
                    w.write_all(&bytes)
                        .map_err(|e| Error::io("exchange write", e))?;
                    super::SENT.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    unflushed_since.get_or_insert_with(Instant::now);
                }
                Out::Wake => woken = true,
                Out::Abort(reason) => {
                    encode(&Frame::Error(reason), &mut scratch);
                    let _ = w.write_all(&scratch).and_then(|()| w.flush());
                    return Ok(());
                }
            }
        }
        let granted;
        (credits_due, granted) = grant_credits(shared, &mut scratch);
        credit_poll = if granted || woken {
            CREDIT_POLL_MIN
        } else {
            (credit_poll * 2).min(CREDIT_POLL_MAX)
        };
        if !scratch.is_empty() {
            w.write_all(&scratch)
                .map_err(|e| Error::io("exchange write", e))?;
            super::SENT.fetch_add(scratch.len() as u64, Ordering::Relaxed);
            scratch.clear();
            unflushed_since.get_or_insert_with(Instant::now);
        }
        if let Some(t) = unflushed_since {
            // Flushes are at most one per interval while frames keep coming
            // (they coalesce), and no frame waits longer than the interval.
            // A frame after a quiet spell goes at once, so sparse watermarks
            // and barriers see no added latency. Credits go out at once: a
            // sender may be waiting for them.
            let quiet =
                out_rx.is_empty() && last_flush.is_none_or(|l| l.elapsed() >= flush_interval);
            if granted || quiet || t.elapsed() >= flush_interval {
                w.flush().map_err(|e| Error::io("exchange write", e))?;
                unflushed_since = None;
                last_flush = Some(Instant::now());
            }
        }
        if unflushed_since.is_none()
            && out_rx.is_empty()
            && shared.outbound_open.load(Ordering::Acquire) == 0
            && shared.inbound_open.load(Ordering::Acquire) == 0
        {
            debug!(peer = %shared.peer, "exchange connection finished sending");
            let _ = w.get_mut().shutdown_write();
            return Ok(());
        }
    }
}

/// Appends credit frames for every inbound channel with room to grant;
/// returns whether some channel may need a grant later (not all its room
/// is granted), so the writer keeps polling, and whether it granted any.
fn grant_credits(shared: &Shared, out: &mut Vec<u8>) -> (bool, bool) {
    let mut due = false;
    let mut granted = false;
    for (c, ch) in &shared.inbound {
        let mut st = lock(ch);
        let Some(tx) = &st.tx else { continue };
        let queued = tx.len();
        let n = st.credit.grant(queued);
        if n > 0 {
            granted = true;
            encode(
                &Frame::Credit {
                    channel: *c,
                    credits: n,
                },
                out,
            );
        }
        due |= !st.credit.fully_granted();
    }
    (due, granted)
}
