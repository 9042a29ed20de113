//! Moving messages between subtasks. [`partition`] decides which downstream
//! channel each record goes to (vectorized, `take`-based); [`local`] is the
//! in-process transport (bounded channels of `Arc`-backed batches, so nothing
//! is copied). A network transport implements [`ChannelSender`] and feeds a
//! local receiver, so the task loop never knows where its input comes from.

pub mod local;
pub mod partition;

use crate::data::StreamMessage;
use crate::error::Result;

/// The sending end of one channel (one upstream subtask to one downstream
/// subtask on one edge). `send` blocks while the channel is full: that is
/// backpressure.
pub trait ChannelSender: Send {
    /// Sends a message, waiting for room.
    fn send(&self, msg: StreamMessage) -> Result<()>;
    /// Messages queued and not yet taken by the receiver.
    fn backlog(&self) -> usize;
}
