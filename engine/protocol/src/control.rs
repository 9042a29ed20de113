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

use crate::api::SinkRows;
use crate::error::{Error, Result};
use crate::ids::{Barrier, CheckpointId, TaskKey};
use crate::manifest::SubtaskState;
use crate::metrics::ExecutorMetrics;
use crate::version;

/// Largest control frame accepted from a peer that has said a valid hello
/// (acknowledgements list a snapshot's files, results carry rows as text).
pub const MAX_CONTROL_FRAME: usize = 16 << 20;

/// Largest first frame (the hello) accepted from a connection that has not
/// proven anything yet: a hello is a few hundred bytes, so a stranger cannot
/// make the coordinator allocate more than this.
pub const MAX_HELLO_FRAME: usize = 16 << 10;

/// Coordinator → task.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum TaskControl {
    /// (Sources) record the position and emit this barrier.
    Trigger(Barrier),
    /// (Tasks whose input ended) snapshot the final state for this
    /// checkpoint, unless already done for it.
    SnapshotFinished(Barrier),
    /// The checkpoint is durable: commit what was staged for it.
    Complete(CheckpointId),
    /// The checkpoint will not complete.
    Abort(CheckpointId),
}

/// Executor → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// First frame: who this is.
    Hello {
        /// The executor's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION),
        /// checked before anything else in the hello.
        protocol: u32,
        /// Job id.
        job_id: String,
        /// Attempt of the executor.
        attempt: u64,
        /// The term its spec names (`ExecutorSpec::term`).
        term: u64,
        /// Executor index.
        executor: usize,
        /// Where its exchange listener accepts peers.
        exchange: String,
        /// The attempt's secret (`ExecutorSpec::secret`).
        secret: String,
        /// Set when a running executor rejoins a new leader that adopted
        /// its attempt (`term` is then the new leader's, from its relay).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rejoin: Option<Rejoin>,
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
    /// Counters per graph node of this executor's subtasks (cumulative),
    /// figures per subtask and of the process.
    Metrics(ExecutorMetrics),
    /// The newest rows its sinks received since the last report.
    Results(Vec<SinkRows>),
    /// The executor failed (a task error); it exits after sending this.
    Failed {
        /// The error.
        error: String,
        /// Whether restarting can help.
        retry: Retry,
    },
    /// Every task of the executor ended cleanly.
    Done,
}

/// What a running executor tells a new leader that adopted its attempt:
/// where its checkpoints got to under the previous leader, so the new one
/// neither reuses an id whose barriers may still be in flight nor waits
/// for tasks that already finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejoin {
    /// The newest checkpoint id it was told to prepare (0: none).
    pub checkpoint: u64,
    /// Its tasks that consumed all their input.
    pub finished: Vec<TaskKey>,
}

/// A new leader's control address, relayed by the worker to the executors
/// of an attempt that leader adopted: one JSON object per line on the
/// executor's stdin, after its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    /// The new leader's control address (`host:port`).
    pub control: String,
    /// Its Raft term; the executor ignores a relay of an older term than
    /// the one it serves, and of the same term at the same address.
    pub term: u64,
}

impl Relay {
    /// Whether this relay names a newer leader than the one at `control`
    /// serving `term`: a newer term, or the same term at another address
    /// (a restarted leader whose vote survived leads again in its term).
    pub fn supersedes(&self, term: u64, control: &str) -> bool {
        self.term > term || (self.term == term && self.control != control)
    }
}

/// Whether a failure may pass on a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Retry {
    /// Transient (a lost connection, a broker away, storage errors):
    /// restart under the job's restart policy.
    Backoff,
    /// Deterministic (the same input fails the same way: a record that can
    /// never be decoded under the fail policy, a plan error): restarting
    /// would fail again, so the job fails at once.
    Never,
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
        /// The term of the coordinator serving the attempt; the executor
        /// refuses one of another term than its spec.
        term: u64,
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

/// Encodes one frame: a 4-byte big-endian length, then the JSON body.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(msg)
        .map_err(|e| Error::Malformed(format!("encoding a control frame: {e}")))?;
    if body.len() > MAX_CONTROL_FRAME {
        return Err(Error::Malformed(format!(
            "a {}-byte control frame exceeds the {MAX_CONTROL_FRAME}-byte bound",
            body.len()
        )));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Writes one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame)
        .and_then(|()| w.flush())
        .map_err(|e| Error::io("writing a control frame", e))
}

/// Reads a connection's first frame, the hello: at most
/// [`MAX_HELLO_FRAME`] bytes, its version checked first ([`decode_hello`]).
pub fn read_hello<R: Read>(r: &mut R) -> Result<Option<ToCoordinator>> {
    match read_body(r, MAX_HELLO_FRAME)? {
        Some(body) => decode_hello(&body).map(Some),
        None => Ok(None),
    }
}

/// Reads one frame of at most `max` bytes; `None` at a clean end of the
/// stream (before a frame).
pub fn read_frame_bounded<R: Read, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<Option<T>> {
    match read_body(r, max)? {
        Some(body) => decode_body(&body).map(Some),
        None => Ok(None),
    }
}

fn read_body<R: Read>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io("reading a control frame", e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(Error::Malformed(format!(
            "a control frame announces {len} bytes, over the {max}-byte bound"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| Error::io("reading a control frame", e))?;
    Ok(Some(body))
}

/// Reads one frame of at most [`MAX_CONTROL_FRAME`] bytes.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>> {
    read_frame_bounded(r, MAX_CONTROL_FRAME)
}

/// Decodes a frame's body.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::Malformed(format!("malformed control frame: {e}")))
}

/// Decodes the first frame of a connection: its protocol version is read
/// and checked before the rest, so a hello of another release is refused
/// naming both versions.
pub fn decode_hello(body: &[u8]) -> Result<ToCoordinator> {
    #[derive(serde::Deserialize)]
    enum Probe {
        Hello {
            #[serde(default)]
            protocol: u32,
        },
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe::Hello { protocol }) => version::check("the executor's control hello", protocol)?,
        Err(e) => {
            return Err(Error::Malformed(format!(
                "the first control frame is not a hello: {e}"
            )))
        }
    }
    decode_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::BarrierKind;

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

    #[test]
    fn a_relay_supersedes_an_older_term_or_another_address_in_the_same_term() {
        let relay = |term: u64, control: &str| Relay {
            control: control.into(),
            term,
        };
        assert!(relay(3, "a:1").supersedes(2, "a:1"));
        // A restarted leader whose vote survived: same term, new port.
        assert!(relay(3, "a:2").supersedes(3, "a:1"));
        assert!(!relay(3, "a:1").supersedes(3, "a:1"));
        assert!(!relay(2, "b:1").supersedes(3, "a:1"));
    }

    #[test]
    fn a_hello_of_another_version_is_refused_naming_both() {
        let hello = |protocol: u32| ToCoordinator::Hello {
            protocol,
            job_id: "job-1".into(),
            attempt: 1,
            term: 1,
            executor: 0,
            exchange: "127.0.0.1:1".into(),
            secret: "s".into(),
            rejoin: None,
        };
        let ok = serde_json::to_vec(&hello(crate::PROTOCOL_VERSION)).unwrap();
        assert!(matches!(
            decode_hello(&ok).unwrap(),
            ToCoordinator::Hello { .. }
        ));
        let old = serde_json::to_vec(&hello(2)).unwrap();
        let e = decode_hello(&old).unwrap_err().to_string();
        let ours = format!("version {}", crate::PROTOCOL_VERSION);
        assert!(e.contains("version 2") && e.contains(&ours), "{e}");
        // A hello of a release without versions, with other fields.
        let e = decode_hello(br#"{"Hello":{"job_id":"j","attempt":"x"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 0"), "{e}");
        assert!(decode_hello(br#""Done""#).is_err());
        // A rejoining executor's hello keeps what it says of its checkpoints.
        let mut rejoin = hello(crate::PROTOCOL_VERSION);
        if let ToCoordinator::Hello { rejoin: r, .. } = &mut rejoin {
            *r = Some(Rejoin {
                checkpoint: 4,
                finished: vec![TaskKey {
                    vertex: 0,
                    subtask: 1,
                }],
            });
        }
        let bytes = serde_json::to_vec(&rejoin).unwrap();
        match decode_hello(&bytes).unwrap() {
            ToCoordinator::Hello {
                rejoin: Some(r), ..
            } => assert_eq!((r.checkpoint, r.finished.len()), (4, 1)),
            other => panic!("{other:?}"),
        }
        assert!(decode_hello(b"\xff\x00").is_err());
    }
}
