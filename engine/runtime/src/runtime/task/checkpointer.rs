//! A task's checkpoint duties: snapshots when a barrier is aligned (or
//! injected at a source), commits when the coordinator says a checkpoint
//! completed, and the waits at the end of input and after a
//! stop-with-savepoint barrier.

use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;

use super::{Chain, Outcome, SourceHead, TaskCheckpointing, CANCEL_POLL};
use crate::checkpoint::coordinator::{CoordinatorMsg, TaskControl, TaskSnapshot};
use crate::data::{Barrier, BarrierKind, CheckpointId};
use crate::error::{Error, Result};
use crate::metrics::Wait;
use crate::runtime::JobControl;
use crate::state::OperatorSnapshot;

/// A task's checkpoint duties: snapshots at barriers, commits on completion.
pub(super) struct Checkpointer {
    pub(super) ck: TaskCheckpointing,
    /// The newest checkpoint this task has snapshotted.
    pub(super) last: std::cell::Cell<Option<CheckpointId>>,
}

impl Checkpointer {
    /// Barrier `b` is aligned: snapshot the source (if any) and the chain,
    /// forwarding the barrier, and hand the copies to the writer.
    pub(super) fn take(
        &self,
        b: Barrier,
        source: Option<&mut SourceHead>,
        chain: &mut Chain,
        forward: bool,
        alignment: Duration,
    ) -> Result<()> {
        let states = self.snapshot(b, source, chain, forward)?;
        self.hand_over(b.id, states, alignment)
    }

    /// Snapshots the source (if any) and the chain for `b`, forwarding the
    /// barrier when `forward`; the copies are the caller's to hand over.
    pub(super) fn snapshot(
        &self,
        b: Barrier,
        source: Option<&mut SourceHead>,
        chain: &mut Chain,
        forward: bool,
    ) -> Result<Vec<(usize, OperatorSnapshot)>> {
        self.last.set(Some(b.id));
        let mut states = Vec::new();
        if let Some(s) = source {
            states.push((s.node, OperatorSnapshot::entries(s.src.snapshot(b.id)?)));
        }
        chain.snapshot(b, forward, &mut states)?;
        Ok(states)
    }

    /// Hands a task's state copies for checkpoint `id` to the writer.
    pub(super) fn hand_over(
        &self,
        id: CheckpointId,
        states: Vec<(usize, OperatorSnapshot)>,
        alignment: Duration,
    ) -> Result<()> {
        self.ck
            .writer
            .send(TaskSnapshot {
                id,
                task: self.ck.key,
                states,
                alignment,
            })
            .map_err(|_| Error::Cancelled)
    }

    pub(super) fn complete(
        &self,
        id: CheckpointId,
        source: Option<&mut SourceHead>,
        chain: &mut Chain,
    ) -> Result<()> {
        if let Some(s) = source {
            s.src.checkpoint_complete(id)?;
        }
        chain.checkpoint_complete(id)
    }

    /// After a stop-with-savepoint barrier: wait for its completion, commit, stop.
    pub(super) fn await_stop(
        &self,
        id: CheckpointId,
        mut source: Option<&mut SourceHead>,
        chain: &mut Chain,
        control: &JobControl,
    ) -> Result<Outcome> {
        loop {
            let received = {
                let _idle = chain.meter.wait(Wait::Idle);
                self.ck.control.recv_timeout(CANCEL_POLL)
            };
            match received {
                Ok(TaskControl::Complete(c)) => {
                    self.complete(c, source.as_deref_mut(), chain)?;
                    if c == id {
                        return Ok(Outcome::Stopped);
                    }
                }
                Ok(TaskControl::Abort(c)) if c == id => {
                    return Err(Error::Checkpoint(format!(
                        "stop-with-savepoint {} was aborted",
                        id.0
                    )))
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if control.is_cancelled() => {
                    return Err(Error::Cancelled)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Cancelled),
            }
        }
    }

    /// Input is done: report it, take part in the final checkpoint, commit it.
    pub(super) fn finish(
        &self,
        mut source: Option<&mut SourceHead>,
        chain: &mut Chain,
        control: &JobControl,
    ) -> Result<()> {
        self.ck
            .coordinator
            .send(CoordinatorMsg::Finished(self.ck.key))
            .map_err(|_| Error::Cancelled)?;
        // The checkpoint after which this task exits: the end-of-input one,
        // or a stop-with-savepoint taken while other tasks still ran.
        let mut final_id = None;
        loop {
            let received = {
                let _idle = chain.meter.wait(Wait::Idle);
                self.ck.control.recv_timeout(CANCEL_POLL)
            };
            match received {
                // Checkpoints go on while other tasks still run; this task
                // contributes its final state (once per checkpoint).
                Ok(TaskControl::SnapshotFinished(b) | TaskControl::Trigger(b)) => {
                    if matches!(
                        b.kind,
                        BarrierKind::EndOfInput | BarrierKind::StopWithSavepoint
                    ) {
                        final_id = Some(b.id);
                    }
                    if self.last.get().is_none_or(|l| l < b.id) {
                        self.take(b, source.as_deref_mut(), chain, false, Duration::ZERO)?;
                    }
                }
                Ok(TaskControl::Complete(c)) => {
                    self.complete(c, source.as_deref_mut(), chain)?;
                    if Some(c) == final_id {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if control.is_cancelled() => {
                    return Err(Error::Cancelled)
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The coordinator gave up (job failing): nothing to commit.
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Cancelled),
            }
        }
    }
}
