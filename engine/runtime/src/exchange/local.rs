//! In-process channels: crossbeam bounded queues. Sends wait for room but
//! wake regularly to notice a cancelled job, so a failure elsewhere never
//! leaves a thread blocked on a full queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};

use super::ChannelSender;
use crate::data::StreamMessage;
use crate::error::{Error, Result};

/// How often a blocked sender checks for cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// Sending end of a local channel.
pub struct LocalSender {
    tx: Sender<StreamMessage>,
    cancelled: Arc<AtomicBool>,
}

/// Creates a bounded local channel of `capacity` messages.
pub fn channel(
    capacity: usize,
    cancelled: Arc<AtomicBool>,
) -> (LocalSender, Receiver<StreamMessage>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    (LocalSender { tx, cancelled }, rx)
}

impl ChannelSender for LocalSender {
    fn send(&self, msg: StreamMessage) -> Result<()> {
        let mut msg = msg;
        loop {
            match self.tx.send_timeout(msg, CANCEL_POLL) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(m)) => {
                    if self.cancelled.load(Ordering::Relaxed) {
                        return Err(Error::Cancelled);
                    }
                    msg = m;
                }
                Err(SendTimeoutError::Disconnected(_)) => return Err(Error::Cancelled),
            }
        }
    }

    fn try_send(&self, msg: StreamMessage) -> Result<Option<StreamMessage>> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(m)) => Ok(Some(m)),
            Err(TrySendError::Disconnected(_)) => Err(Error::Cancelled),
        }
    }

    fn backlog(&self) -> usize {
        self.tx.len()
    }

    fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(0)
    }
}
