//! Unaligned checkpoints in a task with input channels (Flink's unaligned
//! checkpoints, built on what the runtime has): the task snapshots its
//! operators as soon as the checkpoint reaches it — the coordinator's
//! trigger, which every task gets in this mode, or the first barrier on any
//! input, whichever comes first — and forwards the barrier at once. Nothing
//! it processed before the snapshot can lie after an upstream barrier (no
//! barrier of this checkpoint had been taken off that channel yet), so the
//! cut is consistent once the records between the snapshot and each
//! channel's barrier are added to it: the [`Recording`] logs them. To find
//! the barriers without processing what is queued ahead of them, the task
//! takes what its channels already hold into look-ahead queues (bounded by
//! [`LOOKAHEAD_LIMIT`] per channel), so the checkpoint completes as soon as
//! every barrier has been *seen*, not when the backlog before it has been
//! processed; the queued records are then processed as usual. No input is
//! ever blocked. On restore the logged records are replayed before any new
//! input.

use std::collections::VecDeque;

use arrow::record_batch::RecordBatch;
use crossbeam_channel::Receiver;

use super::checkpointer::Checkpointer;
use super::Chain;
use crate::checkpoint::coordinator::TaskControl;
use crate::data::{Barrier, CheckpointId, StreamMessage};
use crate::error::Result;
use crate::state::OperatorSnapshot;

/// How many messages a channel's look-ahead queue may hold: the barrier
/// search takes at most this much from a channel beyond its own queue.
pub(super) const LOOKAHEAD_LIMIT: usize = 1024;

/// A snapshot taken, waiting for the barrier of each open input channel;
/// meanwhile the records taken off those channels are its in-flight part.
pub(super) struct Recording {
    barrier: Barrier,
    states: Vec<(usize, OperatorSnapshot)>,
    waiting: Vec<bool>,
    logged: Vec<(usize, RecordBatch)>,
}

impl Recording {
    /// A recording for `barrier` whose operator copies are `states`, over
    /// the channels still `open`.
    pub(super) fn new(
        barrier: Barrier,
        states: Vec<(usize, OperatorSnapshot)>,
        open: &[bool],
    ) -> Self {
        Recording {
            barrier,
            states,
            waiting: open.to_vec(),
            logged: Vec::new(),
        }
    }

    /// The checkpoint recorded.
    pub(super) fn id(&self) -> CheckpointId {
        self.barrier.id
    }

    /// A message taken off channel `c` (of logical input `input`) after the
    /// snapshot. Returns whether the task is to process it: this
    /// checkpoint's own barrier is consumed here.
    pub(super) fn observe(&mut self, c: usize, input: usize, msg: &StreamMessage) -> bool {
        if !self.waiting[c] {
            return true;
        }
        match msg {
            StreamMessage::Batch(b) => {
                self.logged.push((input, b.clone()));
                true
            }
            StreamMessage::Barrier(b) if b.id == self.barrier.id => {
                self.waiting[c] = false;
                false
            }
            StreamMessage::EndOfStream => {
                self.waiting[c] = false;
                true
            }
            _ => true,
        }
    }

    /// Whether every channel delivered its barrier (or ended).
    pub(super) fn is_complete(&self) -> bool {
        !self.waiting.iter().any(|w| *w)
    }

    /// Whether channel `c` has not delivered the barrier yet.
    pub(super) fn is_waiting(&self, c: usize) -> bool {
        self.waiting[c]
    }

    /// The task's copies with the logged records added to its head
    /// member's (the one that reads the inputs).
    pub(super) fn into_states(mut self) -> (CheckpointId, Vec<(usize, OperatorSnapshot)>) {
        if let Some((_, head)) = self.states.first_mut() {
            head.in_flight = std::mem::take(&mut self.logged);
        }
        (self.barrier.id, self.states)
    }

    /// Takes what channel `c` already holds into `lookahead`, until this
    /// checkpoint's barrier on it is found, the channel is empty or the
    /// look-ahead is full.
    pub(super) fn search(
        &mut self,
        c: usize,
        input: usize,
        rx: &Receiver<StreamMessage>,
        lookahead: &mut VecDeque<StreamMessage>,
    ) {
        while self.waiting[c] && lookahead.len() < LOOKAHEAD_LIMIT {
            let Ok(msg) = rx.try_recv() else { break };
            if self.observe(c, input, &msg) {
                lookahead.push_back(msg);
            }
        }
    }
}

/// A task's unaligned-checkpoint side: the recording in progress and the
/// look-ahead queues its barrier search filled.
pub(super) struct Unaligned {
    recording: Option<Recording>,
    lookahead: Vec<VecDeque<StreamMessage>>,
    /// The logical input of each channel.
    input_of: Vec<usize>,
}

impl Unaligned {
    /// For channels feeding the logical inputs `input_of`.
    pub(super) fn new(input_of: Vec<usize>) -> Self {
        Unaligned {
            recording: None,
            lookahead: vec![VecDeque::new(); input_of.len()],
            input_of,
        }
    }

    /// The next message taken ahead, from a channel `readable` allows
    /// (alignment of a savepoint may block some): it comes before anything
    /// more is read from that channel.
    pub(super) fn next_ahead(
        &mut self,
        readable: impl Fn(usize) -> bool,
    ) -> Option<(usize, StreamMessage)> {
        let c =
            (0..self.lookahead.len()).find(|c| !self.lookahead[*c].is_empty() && readable(*c))?;
        self.lookahead[c].pop_front().map(|m| (c, m))
    }

    /// A control message for the task.
    pub(super) fn control(
        &mut self,
        msg: TaskControl,
        k: &Checkpointer,
        chain: &mut Chain,
        open: &[bool],
    ) -> Result<()> {
        match msg {
            TaskControl::Trigger(b) if k.last.get().is_none_or(|l| l < b.id) => {
                self.start(b, k, chain, open)
            }
            TaskControl::Complete(id) => k.complete(id, None, chain),
            // An aborted checkpoint's copies go to the writer, which drops
            // them (and any native database checkpoint among them).
            TaskControl::Abort(id) if self.recording.as_ref().is_some_and(|r| r.id() == id) => {
                self.hand_over(k)
            }
            _ => Ok(()),
        }
    }

    /// Snapshots the chain for `b` now (forwarding the barrier) and starts
    /// recording what is in flight to it, beginning with what earlier
    /// searches took ahead and the task has not processed yet.
    pub(super) fn start(
        &mut self,
        b: Barrier,
        k: &Checkpointer,
        chain: &mut Chain,
        open: &[bool],
    ) -> Result<()> {
        // A recording of an older checkpoint still open was superseded:
        // the coordinator has one in flight, so it aborted that one.
        self.hand_over(k)?;
        let states = k.snapshot(b, None, chain, true)?;
        let mut rec = Recording::new(b, states, open);
        for (c, q) in self.lookahead.iter_mut().enumerate() {
            let ahead = std::mem::take(q);
            for msg in ahead {
                if rec.observe(c, self.input_of[c], &msg) {
                    q.push_back(msg);
                }
            }
        }
        self.recording = Some(rec);
        Ok(())
    }

    /// A message read directly off channel `c`: whether to process it.
    pub(super) fn observe(&mut self, c: usize, msg: &StreamMessage) -> bool {
        match self.recording.as_mut() {
            Some(rec) => rec.observe(c, self.input_of[c], msg),
            None => true,
        }
    }

    /// Looks for the recording's barriers in what the channels hold.
    pub(super) fn search(&mut self, inputs: &[(Receiver<StreamMessage>, usize)]) {
        let Some(rec) = self.recording.as_mut() else {
            return;
        };
        for (c, (rx, input)) in inputs.iter().enumerate() {
            if rec.is_waiting(c) {
                rec.search(c, *input, rx, &mut self.lookahead[c]);
            }
        }
    }

    /// Hands the recording over once every barrier was seen.
    pub(super) fn finish(&mut self, k: &Checkpointer) -> Result<()> {
        if self.recording.as_ref().is_some_and(|r| r.is_complete()) {
            self.hand_over(k)?;
        }
        Ok(())
    }

    /// Hands over the recording in progress, complete or not (an
    /// incomplete one belongs to an aborted checkpoint).
    pub(super) fn hand_over(&mut self, k: &Checkpointer) -> Result<()> {
        match self.recording.take() {
            Some(rec) => {
                let (id, states) = rec.into_states();
                k.hand_over(id, states, std::time::Duration::ZERO)
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::BarrierKind;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn barrier(id: u64) -> Barrier {
        Barrier {
            id: CheckpointId(id),
            timestamp: 0,
            kind: BarrierKind::Checkpoint,
        }
    }

    fn batch(v: i64) -> StreamMessage {
        let s = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        StreamMessage::Batch(
            RecordBatch::try_new(s, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap(),
        )
    }

    fn value(b: &RecordBatch) -> i64 {
        use arrow::array::AsArray;
        b.column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
    }

    /// The records ahead of each channel's barrier are logged and kept for
    /// processing; the barrier is consumed; what follows it is neither
    /// logged nor searched past.
    #[test]
    fn the_search_logs_what_precedes_each_barrier_and_stops_there() {
        let (tx0, rx0) = crossbeam_channel::unbounded();
        let (tx1, rx1) = crossbeam_channel::unbounded();
        for m in [
            batch(1),
            batch(2),
            StreamMessage::Barrier(barrier(3)),
            batch(9),
        ] {
            tx0.send(m).unwrap();
        }
        tx1.send(batch(5)).unwrap();
        let states = vec![(4, OperatorSnapshot::default())];
        let mut rec = Recording::new(barrier(3), states, &[true, true]);
        let mut ahead = [VecDeque::new(), VecDeque::new()];
        rec.search(0, 0, &rx0, &mut ahead[0]);
        rec.search(1, 1, &rx1, &mut ahead[1]);
        assert!(!rec.is_waiting(0));
        assert!(rec.is_waiting(1), "channel 1's barrier has not come");
        assert_eq!(ahead[0].len(), 2, "the barrier is consumed");
        assert_eq!(rx0.len(), 1, "nothing after the barrier is taken");
        // Channel 1's barrier arrives after more records, read directly.
        assert!(rec.observe(1, 1, &batch(6)));
        assert!(!rec.observe(1, 1, &StreamMessage::Barrier(barrier(3))));
        assert!(rec.is_complete());
        // Records after a channel's barrier are not in flight.
        assert!(rec.observe(0, 0, &batch(9)));
        let (id, states) = rec.into_states();
        assert_eq!(id, CheckpointId(3));
        let logged: Vec<(usize, i64)> = states[0]
            .1
            .in_flight
            .iter()
            .map(|(i, b)| (*i, value(b)))
            .collect();
        assert_eq!(logged, vec![(0, 1), (0, 2), (1, 5), (1, 6)]);
    }

    #[test]
    fn an_ended_channel_stops_waiting_and_the_search_is_bounded() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..(LOOKAHEAD_LIMIT as i64 + 10) {
            tx.send(batch(i)).unwrap();
        }
        let mut rec = Recording::new(barrier(1), vec![], &[true, true, false]);
        let mut ahead = VecDeque::new();
        rec.search(0, 0, &rx, &mut ahead);
        assert_eq!(ahead.len(), LOOKAHEAD_LIMIT);
        assert!(rec.is_waiting(0));
        assert!(rec.observe(1, 0, &StreamMessage::EndOfStream));
        assert!(!rec.is_waiting(1));
        assert!(!rec.is_waiting(2), "a channel closed before never waits");
    }
}
