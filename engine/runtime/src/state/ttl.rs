//! State time-to-live: how long a state entry lives after it was written
//! (or read), measured in processing time or event time, and the stamp
//! that records it.
//!
//! Semantics (Flink's, with event time added):
//! - every stored entry of a state with a TTL carries its expiry time: the
//!   time of its last write plus the TTL (or of its last read too, with
//!   [`TtlUpdate::OnReadAndWrite`]); a map state stamps each map entry, a
//!   value or a list state the whole value (appending to a list renews it);
//! - an expired entry is never returned: a read finds nothing, as if the
//!   entry had been cleared, even before cleanup has removed it;
//! - processing time is the wall clock (ms since the epoch); event time is
//!   the operator's current watermark, so event-time state expires only as
//!   the watermark advances (a stream without watermarks never expires it);
//! - an entry written in event time before the first watermark has no
//!   age yet: it lives until the first sweep after a watermark, which
//!   starts its lifetime then;
//! - cleanup: an expired entry a read meets is deleted; besides, the store
//!   sweeps each state with a TTL once per quarter of the TTL (at least once
//!   a second) of its time, deleting what expired, on either backend (on
//!   RocksDB the sweep reads the column family in key order, a chunk at a
//!   time), so state stays bounded by what was written within about 1.25
//!   TTLs whatever the key set does.
//!
//! The stamp is the entry's first 8 bytes (little-endian `i64`), so turning
//! a TTL on or off changes the state's stored layout: a checkpoint taken
//! without it does not restore into a state declared with it (the restore
//! names the state), as in Flink.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// When an entry's lifetime starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtlUpdate {
    /// On every write (Flink's `OnCreateAndWrite`).
    #[default]
    OnWrite,
    /// On every write and every read that finds it live.
    OnReadAndWrite,
}

/// Which time an entry's lifetime is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtlTime {
    /// The wall clock of the process.
    #[default]
    Processing,
    /// The operator's current watermark.
    Event,
}

/// The stamp of an entry written in event time before the operator's first
/// watermark, when its age cannot be told: live, until the first sweep
/// stamps it with a lifetime from that sweep's time.
pub const UNAGED: i64 = i64::MIN;

/// A state's time-to-live (see the [module docs](self)).
///
/// ```
/// use std::time::Duration;
/// use sluice_engine::state::keyed::ValueState;
/// use sluice_engine::state::ttl::StateTtl;
///
/// // Forget a user's last-seen page an hour after it was last written.
/// let last_page = ValueState::<String>::new("last_page")
///     .ttl(StateTtl::processing_time(Duration::from_secs(3600)));
/// assert_eq!(last_page.descriptor().ttl.unwrap().millis(), 3_600_000);
/// // Or 10 minutes of event time after it was last read or written.
/// let ttl = StateTtl::event_time(Duration::from_secs(600)).update_on_read();
/// assert_eq!(ttl.update, sluice_engine::state::ttl::TtlUpdate::OnReadAndWrite);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTtl {
    /// How long an entry lives after its lifetime (re)starts.
    pub time_to_live: Duration,
    /// When the lifetime restarts.
    pub update: TtlUpdate,
    /// Which time it is measured in.
    pub time: TtlTime,
}

impl StateTtl {
    /// `time_to_live` of processing time after each write.
    pub fn processing_time(time_to_live: Duration) -> Self {
        StateTtl {
            time_to_live,
            update: TtlUpdate::OnWrite,
            time: TtlTime::Processing,
        }
    }

    /// `time_to_live` of event time (the watermark) after each write.
    pub fn event_time(time_to_live: Duration) -> Self {
        StateTtl {
            time_to_live,
            update: TtlUpdate::OnWrite,
            time: TtlTime::Event,
        }
    }

    /// Restarts the lifetime on reads too.
    pub fn update_on_read(mut self) -> Self {
        self.update = TtlUpdate::OnReadAndWrite;
        self
    }

    /// The TTL in milliseconds (at least 1).
    pub fn millis(&self) -> i64 {
        i64::try_from(self.time_to_live.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }

    /// The expiry of an entry whose lifetime starts at `now` ([`UNAGED`]
    /// when `now` is unknown: event time before the first watermark).
    pub fn expiry(&self, now: i64) -> i64 {
        if now == i64::MIN {
            return UNAGED;
        }
        now.saturating_add(self.millis())
    }

    /// How often the store sweeps expired entries (in the TTL's time): a
    /// quarter of the TTL, at least a second.
    pub fn sweep_every(&self) -> i64 {
        (self.millis() / 4).max(1_000)
    }

    /// "now" in this TTL's time, given the operator's watermark.
    pub fn now(&self, watermark: i64) -> i64 {
        match self.time {
            TtlTime::Processing => processing_now(),
            TtlTime::Event => watermark,
        }
    }
}

/// Milliseconds since the epoch by the wall clock.
pub fn processing_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `payload` stamped with `expiry`.
pub fn stamp(expiry: i64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&expiry.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// The expiry and payload of a stamped entry.
pub fn unstamp(bytes: &[u8]) -> Result<(i64, &[u8])> {
    let head = bytes.get(..8).ok_or_else(|| {
        Error::State(format!(
            "a state entry with a TTL is {} bytes, shorter than its 8-byte stamp",
            bytes.len()
        ))
    })?;
    let expiry = i64::from_le_bytes(head.try_into().expect("8 bytes"));
    Ok((expiry, &bytes[8..]))
}

/// Whether an entry stamped `expiry` is live at `now`.
pub fn is_live(expiry: i64, now: i64) -> bool {
    expiry == UNAGED || expiry > now
}

/// The payload of a stamped entry if it is live at `now`.
pub fn live(bytes: &[u8], now: i64) -> Result<Option<&[u8]>> {
    let (expiry, payload) = unstamp(bytes)?;
    Ok(is_live(expiry, now).then_some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips_and_expires_at_its_time() {
        let ttl = StateTtl::processing_time(Duration::from_millis(500));
        let s = stamp(ttl.expiry(1_000), b"abc");
        assert_eq!(unstamp(&s).unwrap(), (1_500, &b"abc"[..]));
        assert_eq!(live(&s, 1_499).unwrap(), Some(&b"abc"[..]));
        assert_eq!(live(&s, 1_500).unwrap(), None, "expired at its expiry");
        assert!(unstamp(b"short").is_err());
        // Written before any watermark: live until a sweep ages it.
        let unaged = stamp(
            StateTtl::event_time(Duration::from_secs(1)).expiry(i64::MIN),
            b"x",
        );
        assert_eq!(live(&unaged, i64::MAX).unwrap(), Some(&b"x"[..]));
    }

    #[test]
    fn event_time_is_the_watermark_and_sweeps_are_bounded_below() {
        let ttl = StateTtl::event_time(Duration::from_millis(100));
        assert_eq!(ttl.now(42), 42);
        assert_eq!(ttl.sweep_every(), 1_000);
        let long = StateTtl::processing_time(Duration::from_secs(3600));
        assert_eq!(long.sweep_every(), 900_000);
        assert!(long.now(0) > 1_600_000_000_000, "the wall clock");
        assert_eq!(
            StateTtl::processing_time(Duration::from_secs(u64::MAX)).expiry(5),
            i64::MAX
        );
    }
}
