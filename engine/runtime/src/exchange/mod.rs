//! Moving messages between subtasks. [`partition`] decides which downstream
//! channel each record goes to (vectorized, `take`-based); [`local`] is the
//! in-process transport (bounded channels of `Arc`-backed batches, so nothing
//! is copied). The network transport is [`tcp`] (connections, threads,
//! handshake) over [`frame`] (the sans-IO wire format and Arrow IPC codec)
//! and [`credit`] (per-channel flow-control accounting): its `NetSender`
//! implements [`ChannelSender`] and it feeds local receivers, so the task
//! loop never knows where its input comes from.

pub mod credit;
pub mod frame;
pub mod local;
pub mod partition;
pub mod tcp;

use crate::data::StreamMessage;
use crate::error::Result;

/// The sending end of one channel (one upstream subtask to one downstream
/// subtask on one edge). `send` blocks while the channel is full: that is
/// backpressure.
pub trait ChannelSender: Send {
    /// Sends a message, waiting for room.
    fn send(&self, msg: StreamMessage) -> Result<()>;
    /// Sends a message if there is room now; gives it back when the
    /// channel is full (so the caller can count the wait that follows as
    /// backpressure). By default it sends, waiting if need be.
    fn try_send(&self, msg: StreamMessage) -> Result<Option<StreamMessage>> {
        self.send(msg).map(|()| None)
    }
    /// Messages queued and not yet taken by the receiver.
    fn backlog(&self) -> usize;
    /// How many messages the channel holds at most (its backlog's bound).
    fn capacity(&self) -> usize;
}
