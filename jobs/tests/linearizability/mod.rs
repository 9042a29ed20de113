//! A linearizability checker: Wing and Gong's search for an order of a
//! recorded history's calls that a sequential model accepts, with Lowe's
//! memoization of (calls linearized, model state). A call that never
//! answered (a timeout, a lost connection, an error that does not say
//! whether the change was made) may take effect at any point after it was
//! made, or never. Histories are checked per object (linearizability is
//! a local property), so each search is small.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Instant;

/// A sequential specification.
pub trait Model: Clone + Eq + Hash {
    /// What a call asks.
    type Op;
    /// What a call answered.
    type Out;
    /// The states `self` may move to when `op` takes effect with answer
    /// `out` (`None`: the answer is not known); empty when the model
    /// cannot give that answer from this state.
    fn step(&self, op: &Self::Op, out: Option<&Self::Out>) -> Vec<Self>;
}

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call<O, R> {
    pub op: O,
    /// `None`: the answer is not known (the call may or may not have
    /// taken effect).
    pub out: Option<R>,
    pub invoked: Instant,
    /// `None` with an unknown answer: it may take effect any time after
    /// it was invoked.
    pub returned: Option<Instant>,
}

/// Whether some order of `calls` consistent with their real-time order
/// (a call that returned before another was invoked comes first) is
/// accepted by the model from `init`, every call with a known answer
/// taking effect once and the others at most once.
pub fn linearizable<M: Model>(init: M, calls: &[Call<M::Op, M::Out>]) -> bool {
    assert!(
        calls.len() <= 128,
        "a history of {} calls per object is more than this search takes",
        calls.len()
    );
    let mut seen = HashSet::new();
    search(&init, 0u128, calls, &mut seen)
}

fn search<M: Model>(
    state: &M,
    done: u128,
    calls: &[Call<M::Op, M::Out>],
    seen: &mut HashSet<(u128, M)>,
) -> bool {
    let open = |i: usize| done & (1u128 << i) == 0;
    // Calls with a known answer still to place, and the earliest of
    // their returns: no call invoked after it can come next.
    let deadline = (0..calls.len())
        .filter(|&i| open(i) && calls[i].out.is_some())
        .filter_map(|i| calls[i].returned)
        .min();
    if (0..calls.len()).all(|i| !open(i) || calls[i].out.is_none()) {
        return true;
    }
    for (i, call) in calls.iter().enumerate() {
        if !open(i) || deadline.is_some_and(|d| call.invoked > d) {
            continue;
        }
        for next in state.step(&call.op, call.out.as_ref()) {
            // A call without an answer need not take effect at all, so
            // placing it where it changes nothing never helps: skipping
            // such placements keeps a history with many unanswered calls
            // from growing the search exponentially.
            if call.out.is_none() && next == *state {
                continue;
            }
            let placed = done | (1u128 << i);
            if seen.insert((placed, next.clone())) && search(&next, placed, calls, seen) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A register holding a number.
    #[derive(Clone, PartialEq, Eq, Hash)]
    struct Register(u8);

    enum Op {
        Write(u8),
        Read,
    }

    impl Model for Register {
        type Op = Op;
        type Out = u8;
        fn step(&self, op: &Op, out: Option<&u8>) -> Vec<Register> {
            match (op, out) {
                (Op::Write(v), _) => vec![Register(*v)],
                (Op::Read, Some(v)) if *v == self.0 => vec![self.clone()],
                (Op::Read, _) => vec![],
            }
        }
    }

    fn call(op: Op, out: Option<u8>, from: u64, to: Option<u64>) -> Call<Op, u8> {
        let t0 = Instant::now();
        Call {
            op,
            out,
            invoked: t0 + Duration::from_millis(from),
            returned: to.map(|t| t0 + Duration::from_millis(t)),
        }
    }

    #[test]
    fn overlapping_calls_may_take_either_order() {
        // The read overlaps the write: it may see the old or the new value.
        for seen in [0, 1] {
            let h = vec![
                call(Op::Write(1), Some(0), 0, Some(10)),
                call(Op::Read, Some(seen), 5, Some(15)),
            ];
            assert!(linearizable(Register(0), &h), "read {seen}");
        }
    }

    #[test]
    fn a_stale_read_after_a_write_returned_is_caught() {
        let h = vec![
            call(Op::Write(1), Some(0), 0, Some(10)),
            call(Op::Read, Some(1), 11, Some(12)),
            call(Op::Read, Some(0), 13, Some(14)),
        ];
        assert!(!linearizable(Register(0), &h));
    }

    #[test]
    fn an_unanswered_write_may_take_effect_late_or_never() {
        let late = vec![
            call(Op::Write(1), None, 0, None),
            call(Op::Read, Some(0), 20, Some(21)),
            call(Op::Read, Some(1), 30, Some(31)),
        ];
        assert!(linearizable(Register(0), &late));
        let never = vec![
            call(Op::Write(1), None, 0, None),
            call(Op::Read, Some(0), 20, Some(21)),
        ];
        assert!(linearizable(Register(0), &never));
        // But once seen it cannot be undone.
        let undone = vec![
            call(Op::Write(1), None, 0, None),
            call(Op::Read, Some(1), 20, Some(21)),
            call(Op::Read, Some(0), 30, Some(31)),
        ];
        assert!(!linearizable(Register(0), &undone));
    }

    #[test]
    fn many_unanswered_calls_that_change_nothing_are_passed_over() {
        // Forty unanswered writes of the value the register holds, beside
        // a read: each subset of them is an order to try unless writes
        // that change nothing are skipped.
        let mut h: Vec<Call<Op, u8>> = (0..40).map(|i| call(Op::Write(0), None, i, None)).collect();
        h.push(call(Op::Read, Some(0), 50, Some(51)));
        assert!(linearizable(Register(0), &h));
        h.push(call(Op::Read, Some(1), 60, Some(61)));
        assert!(!linearizable(Register(0), &h));
    }
}
