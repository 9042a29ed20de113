//! Barrier alignment for tasks with several input channels, as a pure state
//! machine (no I/O): the task loop reports barriers and channel ends, and
//! asks which channels it may read. In exactly-once mode a channel that
//! delivered barrier n is blocked until every open channel has delivered n
//! (Flink's aligned checkpoints); in at-least-once mode nothing is blocked
//! and the barrier completes when the last channel delivers it (Flink's
//! barrier tracker). A channel that ends counts as aligned, so an input that
//! finishes mid-checkpoint cannot deadlock it. The checkpoint runtime wires
//! this into the task loop.

use crate::data::{Barrier, CheckpointId};

/// Checkpointing guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Align barriers: block channels that are ahead.
    ExactlyOnce,
    /// Do not block; records after a barrier may enter the snapshot's epoch.
    AtLeastOnce,
}

/// What the task must do after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// Keep going.
    Pending,
    /// Every channel delivered the barrier: snapshot, forward it, unblock.
    Complete(Barrier),
    /// A newer barrier superseded an unfinished one, which is abandoned.
    Aborted(CheckpointId),
}

/// Tracks barrier arrival over a task's input channels.
#[derive(Debug)]
pub struct Aligner {
    guarantee: Guarantee,
    ended: Vec<bool>,
    arrived: Vec<bool>,
    current: Option<Barrier>,
}

impl Aligner {
    /// An aligner over `channels` input channels.
    pub fn new(channels: usize, guarantee: Guarantee) -> Self {
        Aligner {
            guarantee,
            ended: vec![false; channels],
            arrived: vec![false; channels],
            current: None,
        }
    }

    /// Whether the task may read channel `c` now.
    pub fn is_blocked(&self, c: usize) -> bool {
        self.guarantee == Guarantee::ExactlyOnce && self.arrived[c] && !self.ended[c]
    }

    /// The checkpoint being aligned, if any.
    pub fn in_progress(&self) -> Option<CheckpointId> {
        self.current.map(|b| b.id)
    }

    /// Channel `c` delivered `barrier`.
    pub fn on_barrier(&mut self, c: usize, barrier: Barrier) -> Alignment {
        let mut outcome = Alignment::Pending;
        match self.current {
            Some(cur) if barrier.id < cur.id => return Alignment::Pending, // stale
            Some(cur) if barrier.id > cur.id => {
                outcome = Alignment::Aborted(cur.id);
                self.reset();
                self.current = Some(barrier);
            }
            Some(_) => {}
            None => self.current = Some(barrier),
        }
        self.arrived[c] = true;
        match self.try_complete() {
            Alignment::Pending => outcome,
            done => done,
        }
    }

    /// Channel `c` ended; it no longer takes part in alignment.
    pub fn on_end(&mut self, c: usize) -> Alignment {
        self.ended[c] = true;
        if self.current.is_some() {
            self.try_complete()
        } else {
            Alignment::Pending
        }
    }

    fn try_complete(&mut self) -> Alignment {
        let done = self.arrived.iter().zip(&self.ended).all(|(a, e)| *a || *e);
        match (done, self.current) {
            (true, Some(b)) => {
                self.reset();
                Alignment::Complete(b)
            }
            _ => Alignment::Pending,
        }
    }

    fn reset(&mut self) {
        self.current = None;
        self.arrived.iter_mut().for_each(|a| *a = false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::BarrierKind;

    fn b(id: u64) -> Barrier {
        Barrier {
            id: CheckpointId(id),
            timestamp: 0,
            kind: BarrierKind::Checkpoint,
        }
    }

    /// Every permutation of 0..n.
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn completes_once_whatever_the_order_and_blocks_early_channels() {
        for order in permutations(4) {
            let mut a = Aligner::new(4, Guarantee::ExactlyOnce);
            for (k, c) in order.iter().enumerate() {
                let r = a.on_barrier(*c, b(1));
                if k + 1 < order.len() {
                    assert_eq!(r, Alignment::Pending);
                    assert!(a.is_blocked(*c), "channel {c} is ahead and must wait");
                    let waiting: Vec<_> = order[k + 1..].to_vec();
                    assert!(waiting.iter().all(|w| !a.is_blocked(*w)));
                } else {
                    assert_eq!(r, Alignment::Complete(b(1)));
                }
            }
            assert!(
                (0..4).all(|c| !a.is_blocked(c)),
                "all unblocked after completion"
            );
            assert_eq!(a.in_progress(), None);
        }
    }

    #[test]
    fn an_input_ending_mid_checkpoint_completes_it() {
        let mut a = Aligner::new(3, Guarantee::ExactlyOnce);
        assert_eq!(a.on_barrier(0, b(7)), Alignment::Pending);
        assert_eq!(a.on_barrier(2, b(7)), Alignment::Pending);
        assert_eq!(a.on_end(1), Alignment::Complete(b(7)));
        // The ended channel never blocks later checkpoints.
        assert_eq!(a.on_barrier(0, b(8)), Alignment::Pending);
        assert_eq!(a.on_barrier(2, b(8)), Alignment::Complete(b(8)));
    }

    #[test]
    fn at_least_once_never_blocks_but_completes_on_the_last_barrier() {
        let mut a = Aligner::new(2, Guarantee::AtLeastOnce);
        assert_eq!(a.on_barrier(1, b(1)), Alignment::Pending);
        assert!(!a.is_blocked(1));
        assert_eq!(a.on_barrier(0, b(1)), Alignment::Complete(b(1)));
    }

    #[test]
    fn a_newer_barrier_aborts_the_unfinished_one_and_stale_ones_are_ignored() {
        let mut a = Aligner::new(2, Guarantee::ExactlyOnce);
        a.on_barrier(0, b(1));
        assert_eq!(a.on_barrier(0, b(2)), Alignment::Aborted(CheckpointId(1)));
        assert_eq!(a.in_progress(), Some(CheckpointId(2)));
        assert_eq!(a.on_barrier(1, b(1)), Alignment::Pending, "stale barrier");
        assert_eq!(a.on_barrier(1, b(2)), Alignment::Complete(b(2)));
    }
}
