//! Credit-based flow control for one channel, as pure accounting (no
//! locks, no I/O). A credit is one message's room in the receiver's local
//! queue: the receiver grants what its queue can still hold, the sender
//! spends one credit per message and waits at zero. The connection's reader
//! therefore never meets a full queue, so one slow channel cannot block the
//! others sharing the connection (Flink's FLINK-7282; Arroyo lacks this).
//!
//! Invariant on the receiver: `queued + outstanding <= capacity`, where
//! `outstanding` counts credits granted and not yet used by an arrived
//! message. A sender that sends without credit breaks it and is a protocol
//! error.

/// A breach of the credit protocol by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// A message arrived on a channel with no credit outstanding.
    #[error("message sent without credit")]
    Overrun,
    /// Grants would overflow the sender's counter.
    #[error("credit grants overflow")]
    Overflow,
}

/// The sending side of a channel: credits available to spend.
#[derive(Debug, Clone, Default)]
pub struct SendCredit {
    available: u32,
    window: u32,
}

impl SendCredit {
    /// No credit until the receiver grants some.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a grant from the receiver.
    pub fn grant(&mut self, n: u32) -> Result<(), CreditError> {
        self.available = self.available.checked_add(n).ok_or(CreditError::Overflow)?;
        self.window = self.window.max(self.available);
        Ok(())
    }

    /// Spends one credit if there is one.
    pub fn try_take(&mut self) -> bool {
        if self.available == 0 {
            return false;
        }
        self.available -= 1;
        true
    }

    /// Credits available now.
    pub fn available(&self) -> u32 {
        self.available
    }

    /// Messages sent whose room has not been granted back: the receiver's
    /// queue length plus messages in flight. The window is the most credit
    /// ever held at once, which is the receiver's capacity (it grants its
    /// whole empty queue first).
    pub fn backlog(&self) -> usize {
        (self.window - self.available) as usize
    }

    /// The most credit ever held at once: the receiver's queue capacity.
    pub fn window(&self) -> usize {
        self.window as usize
    }
}

/// The receiving side of a channel: decides what to grant as its queue
/// drains.
#[derive(Debug, Clone)]
pub struct RecvCredit {
    capacity: u32,
    outstanding: u32,
}

impl RecvCredit {
    /// A channel whose local queue holds `capacity` messages.
    pub fn new(capacity: u32) -> Self {
        RecvCredit {
            capacity: capacity.max(1),
            outstanding: 0,
        }
    }

    /// A message arrived: it uses one outstanding credit.
    pub fn on_message(&mut self) -> Result<(), CreditError> {
        self.outstanding = self
            .outstanding
            .checked_sub(1)
            .ok_or(CreditError::Overrun)?;
        Ok(())
    }

    /// Credits to grant now, given `queued` messages in the local queue;
    /// records them as outstanding. Grants wait until a quarter of the
    /// queue is free so a busy channel does not cost a credit frame per
    /// message, except when the sender has nothing left to spend.
    pub fn grant(&mut self, queued: usize) -> u32 {
        let used = (queued as u64 + self.outstanding as u64).min(self.capacity as u64) as u32;
        let room = self.capacity - used;
        let threshold = (self.capacity / 4).max(1);
        if room == 0 || (room < threshold && self.outstanding > 0) {
            return 0;
        }
        self.outstanding += room;
        room
    }

    /// Credits granted and not yet used.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Whether every slot is granted (nothing to do until a message arrives).
    pub fn fully_granted(&self) -> bool {
        self.outstanding == self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_waits_at_zero_and_tracks_backlog() {
        let mut s = SendCredit::new();
        assert!(!s.try_take());
        s.grant(3).unwrap();
        assert!(s.try_take() && s.try_take());
        assert_eq!(s.backlog(), 2);
        assert!(s.try_take());
        assert!(!s.try_take());
        assert_eq!(s.backlog(), 3);
        s.grant(2).unwrap();
        assert_eq!(s.backlog(), 1);
        assert_eq!(s.available(), 2);
        s.grant(u32::MAX).unwrap_err();
    }

    #[test]
    fn receiver_grants_free_room_once() {
        let mut r = RecvCredit::new(8);
        assert_eq!(r.grant(0), 8);
        assert!(r.fully_granted());
        // Nothing more until messages arrive and are consumed.
        assert_eq!(r.grant(0), 0);
        for _ in 0..8 {
            r.on_message().unwrap();
        }
        assert_eq!(r.on_message(), Err(CreditError::Overrun));
        // All 8 queued: no room.
        assert_eq!(r.grant(8), 0);
        // One consumed: the sender is out of credit, so even one slot goes.
        assert_eq!(r.grant(7), 1);
        r.on_message().unwrap();
        // Queue drained to 3 of 8 with nothing outstanding: 5 granted.
        assert_eq!(r.grant(3), 5);
        assert_eq!(r.outstanding(), 5);
    }

    #[test]
    fn small_grants_wait_for_a_quarter_while_sender_has_credit() {
        let mut r = RecvCredit::new(16);
        assert_eq!(r.grant(0), 16);
        for _ in 0..10 {
            r.on_message().unwrap();
        }
        // 10 queued, 6 outstanding: no room.
        assert_eq!(r.grant(10), 0);
        // 2 consumed: 2 free, below 4, sender still holds 6.
        assert_eq!(r.grant(8), 0);
        // 4 free: granted.
        assert_eq!(r.grant(6), 4);
    }

    /// Any interleaving of grants, sends and consumption keeps the queue
    /// within capacity and never overruns, as long as the sender only
    /// sends with credit.
    #[test]
    fn invariant_holds_over_a_long_random_walk() {
        let cap = 5u32;
        let (mut s, mut r) = (SendCredit::new(), RecvCredit::new(cap));
        let (mut queued, mut in_flight_credit, mut in_flight_msgs) = (0usize, 0u32, 0usize);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 5 {
                0 => in_flight_credit += r.grant(queued),
                1 if in_flight_credit > 0 => {
                    s.grant(in_flight_credit).unwrap();
                    in_flight_credit = 0;
                }
                2 if s.try_take() => in_flight_msgs += 1,
                3 if in_flight_msgs > 0 => {
                    in_flight_msgs -= 1;
                    r.on_message().unwrap();
                    queued += 1;
                }
                4 if queued > 0 => queued -= 1,
                _ => {}
            }
            assert!(queued + r.outstanding() as usize <= cap as usize);
            assert!(s.backlog() <= cap as usize);
        }
    }
}
