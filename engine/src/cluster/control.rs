//! The control connection between a task executor and the coordinator:
//! one TCP connection per executor, frames of a 4-byte big-endian length
//! and a JSON body.
//!
//! The executor dials the coordinator and says [`ToCoordinator::Hello`]
//! with its job, attempt and exchange address. The coordinator refuses a
//! stale attempt ([`ToExecutor::Rejected`]), and once every executor of the
//! attempt has said hello sends each the exchange addresses of the others
//! ([`ToExecutor::Peers`]). From then on it forwards checkpoint control to
//! tasks and receives acknowledgements, declines and task ends. A lost
//! connection fences the executor: it cancels its tasks, since nothing it
//! stages can be committed without the coordinator.

use std::io::{ErrorKind, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::checkpoint::coordinator::{TaskControl, TaskKey};
use crate::checkpoint::manifest::SubtaskState;
use crate::cluster::api::{NodeCounters, SinkRows};
use crate::error::{Error, Result};

/// Largest control frame accepted.
pub const MAX_CONTROL_FRAME: usize = 64 << 20;

/// Executor → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// First frame: who this is.
    Hello {
        /// Job id.
        job_id: String,
        /// Attempt of the executor.
        attempt: u64,
        /// Executor index.
        executor: usize,
        /// Where its exchange listener accepts peers.
        exchange: String,
        /// The attempt's secret (`ExecutorSpec::secret`).
        #[serde(default)]
        secret: String,
    },
    /// A task's snapshot is stored.
    Ack {
        /// Checkpoint id.
        id: u64,
        /// Which task.
        task: TaskKey,
        /// Files per graph node.
        files: Vec<(usize, SubtaskState)>,
        /// Bytes of the snapshot.
        bytes: u64,
        /// Bytes uploaded for it.
        uploaded: u64,
        /// Alignment time, ms.
        alignment_ms: u64,
    },
    /// A snapshot could not be taken or written.
    Decline {
        /// Checkpoint id.
        id: u64,
        /// Why.
        error: String,
    },
    /// A task consumed all its input and waits for the final checkpoint.
    Finished(TaskKey),
    /// Counters per graph node of this executor's subtasks (cumulative).
    Metrics(Vec<NodeCounters>),
    /// The newest rows its sinks received since the last report.
    Results(Vec<SinkRows>),
    /// The executor failed (a task error); it exits after sending this.
    Failed {
        /// The error.
        error: String,
    },
    /// Every task of the executor ended cleanly.
    Done,
}

/// Coordinator → executor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToExecutor {
    /// Every executor said hello: their exchange addresses by index.
    Peers {
        /// Exchange address of each executor, by index.
        exchange: Vec<String>,
        /// Which executor runs each subtask.
        placement: Vec<(TaskKey, usize)>,
    },
    /// Checkpoint `id` will be written to `dir` (before its trigger).
    Prepare {
        /// Checkpoint id.
        id: u64,
        /// Its directory.
        dir: String,
        /// Whether it is a savepoint (self-contained).
        savepoint: bool,
    },
    /// A control message for one task.
    Task {
        /// Which task.
        task: TaskKey,
        /// The message.
        msg: TaskControl,
    },
    /// Stop everything (job cancelled, or the attempt is superseded).
    Cancel {
        /// Why.
        reason: String,
    },
    /// The hello was refused (stale attempt, unknown job).
    Rejected {
        /// Why.
        reason: String,
    },
}

/// Writes one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let body = serde_json::to_vec(msg)
        .map_err(|e| Error::Protocol(format!("encoding a control frame: {e}")))?;
    if body.len() > MAX_CONTROL_FRAME {
        return Err(Error::Protocol(format!(
            "a {}-byte control frame exceeds the {MAX_CONTROL_FRAME}-byte bound",
            body.len()
        )));
    }
    w.write_all(&(body.len() as u32).to_be_bytes())
        .and_then(|()| w.write_all(&body))
        .and_then(|()| w.flush())
        .map_err(|e| Error::io("writing a control frame", e))
}

/// Reads one frame; `None` at a clean end of the stream (before a frame).
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io("reading a control frame", e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(Error::Protocol(format!(
            "a control frame announces {len} bytes, over the {MAX_CONTROL_FRAME}-byte bound"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| Error::io("reading a control frame", e))?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| Error::Protocol(format!("malformed control frame: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Barrier, BarrierKind, CheckpointId};

    #[test]
    fn frames_round_trip_and_bad_ones_are_errors() {
        let mut buf = Vec::new();
        let msg = ToExecutor::Task {
            task: TaskKey {
                vertex: 1,
                subtask: 2,
            },
            msg: TaskControl::Trigger(Barrier {
                id: CheckpointId(7),
                timestamp: 5,
                kind: BarrierKind::Checkpoint,
            }),
        };
        write_frame(&mut buf, &msg).unwrap();
        write_frame(&mut buf, &ToCoordinator::Done).unwrap();
        let mut r = &buf[..];
        let a: ToExecutor = read_frame(&mut r).unwrap().unwrap();
        assert!(matches!(a, ToExecutor::Task { task, .. } if task.subtask == 2));
        let b: ToCoordinator = read_frame(&mut r).unwrap().unwrap();
        assert!(matches!(b, ToCoordinator::Done));
        assert!(read_frame::<_, ToCoordinator>(&mut r).unwrap().is_none());

        // Truncated body, oversized length, garbage JSON.
        let mut r = &buf[..6];
        assert!(read_frame::<_, ToExecutor>(&mut r).is_err());
        let huge = (u32::MAX).to_be_bytes();
        assert!(read_frame::<_, ToExecutor>(&mut &huge[..]).is_err());
        let mut bad = 3u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{x}");
        assert!(read_frame::<_, ToExecutor>(&mut &bad[..]).is_err());
    }
}
