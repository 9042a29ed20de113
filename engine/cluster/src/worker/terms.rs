//! The newest Raft term a worker has seen in its coordinators' answers,
//! and what that makes of an answer: a coordinator answering under an
//! older term is a deposed leader (cut off from its group, or frozen and
//! woken), and its instructions are refused.

/// What an answer's term makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The term this worker knows.
    Current,
    /// A newer term than any seen before (`from` was the newest).
    Newer { from: u64 },
    /// An older term than `newest`: a deposed leader's answer.
    Stale { newest: u64 },
}

/// The newest term seen. Outside a Raft group coordinators answer under
/// term 0, which is then always current.
#[derive(Debug, Default)]
pub(super) struct Terms {
    newest: u64,
}

impl Terms {
    /// Takes the term of an answer into account.
    pub(super) fn observe(&mut self, term: u64) -> Verdict {
        use std::cmp::Ordering::*;
        match term.cmp(&self.newest) {
            Equal => Verdict::Current,
            Greater => {
                let from = std::mem::replace(&mut self.newest, term);
                Verdict::Newer { from }
            }
            Less => Verdict::Stale {
                newest: self.newest,
            },
        }
    }

    /// Whether an attempt started under `term` may be started here: not
    /// one of a leadership older than the newest seen.
    pub(super) fn may_start(&self, term: u64) -> bool {
        term >= self.newest
    }

    /// The newest term seen.
    pub(super) fn newest(&self) -> u64 {
        self.newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_term_is_refused_once_a_newer_one_was_seen() {
        let mut t = Terms::default();
        assert_eq!(t.observe(0), Verdict::Current);
        assert_eq!(t.observe(3), Verdict::Newer { from: 0 });
        assert_eq!(t.observe(3), Verdict::Current);
        // The deposed leader of term 2 answers again: refused, and the
        // newest term stays.
        assert_eq!(t.observe(2), Verdict::Stale { newest: 3 });
        assert_eq!(t.newest(), 3);
        assert!(!t.may_start(2));
        assert!(t.may_start(3) && t.may_start(4));
        assert_eq!(t.observe(5), Verdict::Newer { from: 3 });
        assert_eq!(t.observe(3), Verdict::Stale { newest: 5 });
    }
}
