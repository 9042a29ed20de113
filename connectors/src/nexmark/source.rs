//! One subtask of a Nexmark source: walks its share of the event numbers of
//! one type and builds Arrow columns straight from the generator's parts
//! (strings are copied from static text into the builders, never allocated
//! per row). Owns pacing against the wall clock when a rate limit is set
//! (reporting how far behind its schedule it is as its backlog), and the
//! synthetic work per event a config may ask for.

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow::record_batch::RecordBatch;
use sluice_engine::data::CheckpointId;
use sluice_engine::{Error, OperatorContext, Result, Source, SourcePoll};

use sluice_engine::protocol::metrics::SplitPending;

use super::generator::{auction, bid, card_digits, person, Channels, Clock, CARD_LEN};
use super::model::{auction_schema, bid_schema, person_schema};
use super::pace::Pace;
use super::{count_of, event_of, Kind, NexmarkConfig};

/// Longest a rate-limited subtask asks to sleep between polls (the
/// runtime ends the sleep early for a barrier, and takes at most 100 ms).
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// A rate-limited subtask sleeps until this long's worth of events is
/// due, then emits them back to back (full batches), and sleeps again.
/// Emitting each event as it came due meant batches of one or two events
/// and wake-ups every few microseconds (a paced run cost some 25 times the
/// CPU per event of an unpaced one). Bursts rather than a batch at a time:
/// after every idle gap the first batch runs with cold caches (the
/// generator's tables, the operators' state), several times slower per
/// event than the next ones.
const MAX_PACE: Duration = Duration::from_millis(200);

/// With synthetic work per event, a batch holds at most this long's
/// worth of it, so barriers and metrics are not held up behind one batch.
const MAX_WORK_PER_BATCH: Duration = Duration::from_millis(10);

/// One subtask of a [`super::NexmarkSource`].
pub(crate) struct NexmarkSubtask {
    kind: Kind,
    clock: Clock,
    batch_size: usize,
    rate_limit: Option<Pace>,
    /// Spun per event emitted.
    work_per_event: Duration,
    channels: Option<Arc<Channels>>,
    /// Strided ordinal sequences this subtask generates (one at a fresh
    /// start; several, or none, after a restore at another parallelism).
    /// Each is a split with its own watermark.
    seqs: Vec<Seq>,
    /// The sequence `next`/`step` belong to (polled round robin).
    current: usize,
    /// Next ordinal (within the type) this subtask emits.
    next: u64,
    /// Ordinals advance by the parallelism.
    step: u64,
    /// Ordinals of this type among all events.
    total: u64,
    started: Instant,
    backoff: Duration,
    /// Paced: the last event number of the burst being emitted.
    burst_until: u64,
    emitted: u64,
}

impl NexmarkSubtask {
    pub(crate) fn new(
        kind: Kind,
        cfg: &NexmarkConfig,
        channels: Option<Arc<Channels>>,
        subtask: usize,
        parallelism: usize,
    ) -> Self {
        NexmarkSubtask {
            kind,
            clock: cfg.clock(),
            batch_size: batch_size(cfg),
            rate_limit: cfg.rate_limit.map(|r| Pace::new(r, &cfg.rate_steps)),
            work_per_event: cfg.work_per_event,
            channels,
            seqs: vec![Seq {
                next: subtask as u64,
                step: parallelism.max(1) as u64,
                ended: false,
            }],
            current: 0,
            next: subtask as u64,
            step: parallelism.max(1) as u64,
            total: count_of(kind, cfg.events),
            started: Instant::now(),
            backoff: MAX_BACKOFF,
            burst_until: 0,
            emitted: 0,
        }
    }

    /// The next ordinal of sequence `i` (the current one's lives in
    /// `self.next` while it is being emitted).
    fn next_of(&self, i: usize, seq: &Seq) -> u64 {
        if i == self.current {
            self.next
        } else {
            seq.next
        }
    }

    /// Event numbers of the next batch: up to `batch_size` of them, and
    /// under a rate limit only those of a burst that is due.
    fn take_ids(&mut self) -> Vec<u64> {
        if self.next >= self.total {
            return Vec::new();
        }
        let last_due = match &self.rate_limit {
            None => u64::MAX,
            Some(pace) => {
                let first = event_of(self.kind, self.next);
                if first > self.burst_until {
                    // Between bursts: wait until MAX_PACE's worth of events
                    // (or the last of this sequence) is due, then emit all
                    // that are, a batch per poll, before waiting again.
                    let rate = pace.rate_at(first);
                    let span = ((rate as f64 * MAX_PACE.as_secs_f64()) as u64).max(1);
                    let left = (self.total - 1 - self.next) / self.step;
                    let last_here = event_of(self.kind, self.next + left * self.step);
                    let wait_for = (first + span - 1).min(last_here);
                    let due = pace.due(wait_for);
                    let elapsed = self.started.elapsed();
                    if due > elapsed {
                        self.backoff = (due - elapsed).min(MAX_BACKOFF);
                        return Vec::new();
                    }
                    self.burst_until = pace.due_by(elapsed);
                }
                self.burst_until
            }
        };
        let mut ids = Vec::with_capacity(self.batch_size.min(65_536));
        while ids.len() < self.batch_size && self.next < self.total {
            let i = event_of(self.kind, self.next);
            if i > last_due && !ids.is_empty() {
                break;
            }
            ids.push(i);
            self.next += self.step;
        }
        ids
    }

    fn bids(&self, ids: &[u64]) -> Result<RecordBatch> {
        let channels = self
            .channels
            .as_deref()
            .ok_or_else(|| Error::Internal("bid source without a channel table".into()))?;
        let n = ids.len();
        let mut auction = Int64Builder::with_capacity(n);
        let mut bidder = Int64Builder::with_capacity(n);
        let mut price = Int64Builder::with_capacity(n);
        let mut channel = StringBuilder::with_capacity(n, n * 8);
        let mut url = StringBuilder::with_capacity(n, n * 64);
        let mut time = TimestampMillisecondBuilder::with_capacity(n);
        let mut extra = StringBuilder::with_capacity(n, n * 72);
        for &i in ids {
            let b = bid(&self.clock, i);
            let (c, u) = channels.get(b.channel);
            auction.append_value(b.auction);
            bidder.append_value(b.bidder);
            price.append_value(b.price);
            channel.append_value(c);
            url.append_value(u);
            time.append_value(b.date_time);
            extra.append_value(b.extra);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(auction.finish()),
            Arc::new(bidder.finish()),
            Arc::new(price.finish()),
            Arc::new(channel.finish()),
            Arc::new(url.finish()),
            Arc::new(time.finish()),
            Arc::new(extra.finish()),
        ];
        Ok(RecordBatch::try_new(bid_schema(), cols)?)
    }

    fn persons(&self, ids: &[u64]) -> Result<RecordBatch> {
        let n = ids.len();
        let mut id = Int64Builder::with_capacity(n);
        let mut name = StringBuilder::with_capacity(n, n * 12);
        let mut email = StringBuilder::with_capacity(n, n * 14);
        let mut card = StringBuilder::with_capacity(n, n * CARD_LEN);
        let mut city = StringBuilder::with_capacity(n, n * 8);
        let mut state = StringBuilder::with_capacity(n, n * 2);
        let mut time = TimestampMillisecondBuilder::with_capacity(n);
        let mut extra = StringBuilder::with_capacity(n, n * 140);
        let mut digits = [0u8; CARD_LEN];
        for &i in ids {
            let p = person(&self.clock, i);
            id.append_value(p.id);
            // Pieces go straight into the builders' value buffers; the
            // empty append then ends the row. Writing to a builder cannot fail.
            let _ = name
                .write_str(p.first)
                .and_then(|_| name.write_char(' '))
                .and_then(|_| name.write_str(p.last));
            name.append_value("");
            let _ = email
                .write_str(p.email.0)
                .and_then(|_| email.write_char('@'))
                .and_then(|_| email.write_str(p.email.1));
            email.append_value(".com");
            card_digits(&p.card, &mut digits);
            card.append_value(std::str::from_utf8(&digits).expect("ASCII digits"));
            city.append_value(p.city);
            state.append_value(p.state);
            time.append_value(p.date_time);
            extra.append_value(p.extra);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(name.finish()),
            Arc::new(email.finish()),
            Arc::new(card.finish()),
            Arc::new(city.finish()),
            Arc::new(state.finish()),
            Arc::new(time.finish()),
            Arc::new(extra.finish()),
        ];
        Ok(RecordBatch::try_new(person_schema(), cols)?)
    }

    fn auctions(&self, ids: &[u64]) -> Result<RecordBatch> {
        let n = ids.len();
        let mut id = Int64Builder::with_capacity(n);
        let mut item = StringBuilder::with_capacity(n, n * 12);
        let mut desc = StringBuilder::with_capacity(n, n * 52);
        let mut initial = Int64Builder::with_capacity(n);
        let mut reserve = Int64Builder::with_capacity(n);
        let mut time = TimestampMillisecondBuilder::with_capacity(n);
        let mut expires = TimestampMillisecondBuilder::with_capacity(n);
        let mut seller = Int64Builder::with_capacity(n);
        let mut category = Int64Builder::with_capacity(n);
        let mut extra = StringBuilder::with_capacity(n, n * 400);
        for &i in ids {
            let a = auction(&self.clock, i);
            id.append_value(a.id);
            item.append_value(a.item_name);
            desc.append_value(a.description);
            initial.append_value(a.initial_bid);
            reserve.append_value(a.reserve);
            time.append_value(a.date_time);
            expires.append_value(a.expires);
            seller.append_value(a.seller);
            category.append_value(a.category);
            extra.append_value(a.extra);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(item.finish()),
            Arc::new(desc.finish()),
            Arc::new(initial.finish()),
            Arc::new(reserve.finish()),
            Arc::new(time.finish()),
            Arc::new(expires.finish()),
            Arc::new(seller.finish()),
            Arc::new(category.finish()),
            Arc::new(extra.finish()),
        ];
        Ok(RecordBatch::try_new(auction_schema(), cols)?)
    }
}

/// One strided run of ordinals: `next`, `next + step`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seq {
    next: u64,
    step: u64,
    ended: bool,
}

impl Seq {
    fn encode(&self) -> Vec<u8> {
        let mut e = self.next.to_le_bytes().to_vec();
        e.extend_from_slice(&self.step.to_le_bytes());
        e
    }

    fn decode(e: &[u8]) -> Result<Seq> {
        if e.len() != 16 {
            return Err(Error::Checkpoint(format!(
                "nexmark position entry has {} bytes, expected 16",
                e.len()
            )));
        }
        let word = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().expect("8 bytes"));
        let (next, step) = (word(0), word(8));
        if step == 0 {
            return Err(Error::Checkpoint("nexmark position with step 0".into()));
        }
        Ok(Seq {
            next,
            step,
            ended: false,
        })
    }
}

impl NexmarkSubtask {
    /// Makes `seqs[i]` the sequence `take_ids` draws from.
    fn select(&mut self, i: usize) {
        self.seqs[self.current].next = self.next;
        self.current = i;
        self.next = self.seqs[i].next;
        self.step = self.seqs[i].step;
    }
}

impl Source for NexmarkSubtask {
    fn open(&mut self, _ctx: &OperatorContext) -> Result<()> {
        // The pace counts from when the job starts, not from planning; a
        // restored source paces on from where it stopped, not from event 0.
        self.started = Instant::now();
        if let (Some(pace), Some(first)) = (
            &self.rate_limit,
            self.seqs
                .iter()
                .map(|s| s.next)
                .filter(|n| *n < self.total)
                .min(),
        ) {
            let ahead = pace.due(event_of(self.kind, first));
            self.started = self.started.checked_sub(ahead).unwrap_or(self.started);
        }
        Ok(())
    }

    fn splits(&self) -> usize {
        self.seqs.len().max(1)
    }

    fn supports_checkpoints(&self) -> bool {
        true
    }

    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<Vec<Vec<u8>>> {
        if !self.seqs.is_empty() {
            self.seqs[self.current].next = self.next;
        }
        Ok(self.seqs.iter().map(Seq::encode).collect())
    }

    /// Old subtasks' sequences are dealt round robin over the new subtasks,
    /// so every ordinal is generated exactly once at any parallelism.
    fn restore(&mut self, entries: Vec<Vec<u8>>, ctx: &OperatorContext) -> Result<()> {
        let mut seqs = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if i % ctx.parallelism.max(1) == ctx.subtask {
                seqs.push(Seq::decode(e)?);
            }
        }
        self.seqs = seqs;
        self.current = 0;
        match self.seqs.first() {
            Some(s) => {
                self.next = s.next;
                self.step = s.step;
            }
            None => self.next = self.total,
        }
        Ok(())
    }

    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        if self.seqs.is_empty() {
            return Ok(SourcePoll::End);
        }
        if self.next >= self.total {
            let cur = self.current;
            if !self.seqs[cur].ended {
                self.seqs[cur].ended = true;
                self.seqs[cur].next = self.next;
                if self.seqs.len() > 1 {
                    return Ok(SourcePoll::SplitEnd(cur));
                }
            }
            match self.seqs.iter().position(|s| !s.ended) {
                Some(i) => self.select(i),
                None => return Ok(SourcePoll::End),
            }
        }
        let split = self.current;
        let ids = self.take_ids();
        // Rotate so several sequences advance together.
        if self.seqs.len() > 1 {
            let n = self.seqs.len();
            if let Some(i) = (1..=n)
                .map(|d| (self.current + d) % n)
                .find(|i| !self.seqs[*i].ended)
            {
                self.select(i);
            }
        }
        if ids.is_empty() {
            return Ok(SourcePoll::Idle);
        }
        let batch = match self.kind {
            Kind::Bid => self.bids(&ids)?,
            Kind::Person => self.persons(&ids)?,
            Kind::Auction => self.auctions(&ids)?,
        };
        self.emitted += batch.num_rows() as u64;
        if !self.work_per_event.is_zero() {
            spin(self.work_per_event * batch.num_rows() as u32);
        }
        Ok(SourcePoll::Batch { split, batch })
    }

    /// A paced source's events that are due and not emitted yet, per
    /// split: how far it is behind its schedule. An unpaced source has no
    /// schedule to be behind (its whole input is there from the start),
    /// so it reports nothing.
    fn pending(&self) -> Vec<SplitPending> {
        let Some(pace) = &self.rate_limit else {
            return Vec::new();
        };
        let due = pace.due_by(self.started.elapsed());
        // Ordinals of this type among events 0..=due.
        let due_ordinals = count_of(self.kind, due.saturating_add(1)).min(self.total);
        self.seqs
            .iter()
            .enumerate()
            .map(|(i, seq)| {
                let next = self.next_of(i, seq);
                let records = if seq.ended || due_ordinals <= next {
                    0
                } else {
                    (due_ordinals - next).div_ceil(seq.step.max(1))
                };
                SplitPending {
                    split: format!("{:?}-{i}", self.kind).to_lowercase(),
                    records,
                }
            })
            .collect()
    }

    fn idle_backoff(&self) -> Duration {
        self.backoff
    }

    fn records_emitted(&self) -> u64 {
        self.emitted
    }

    /// This subtask's events not generated yet, over its sequences.
    fn remaining(&self) -> Option<u64> {
        let left = self
            .seqs
            .iter()
            .enumerate()
            .map(|(i, seq)| {
                let next = self.next_of(i, seq);
                if seq.ended || next >= self.total {
                    0
                } else {
                    (self.total - next).div_ceil(seq.step.max(1))
                }
            })
            .sum();
        Some(left)
    }
}

/// The batch size of a subtask of `cfg`: with synthetic work, small
/// enough that a batch's work stays under [`MAX_WORK_PER_BATCH`].
fn batch_size(cfg: &NexmarkConfig) -> usize {
    let size = cfg.batch_size.max(1);
    if cfg.work_per_event.is_zero() {
        return size;
    }
    let fits = MAX_WORK_PER_BATCH.as_nanos() / cfg.work_per_event.as_nanos().max(1);
    size.min(fits.max(1) as usize)
}

/// Keeps this thread busy for `d` (wall clock): synthetic work.
fn spin(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate_limit: Option<u64>) -> NexmarkConfig {
        NexmarkConfig {
            events: 5_000,
            rate_limit,
            batch_size: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn batches_cover_the_share_of_one_subtask() {
        let mut s = NexmarkSubtask::new(Kind::Auction, &cfg(None), None, 1, 3);
        let mut ids = Vec::new();
        loop {
            let got = s.take_ids();
            if got.is_empty() {
                break;
            }
            assert!(got.len() <= 1000);
            ids.extend(got);
        }
        let want: Vec<u64> = (0..5_000u64)
            .filter(|&i| kind_of_is(i, Kind::Auction))
            .skip(1)
            .step_by(3)
            .collect();
        assert_eq!(ids, want);
    }

    fn kind_of_is(i: u64, k: Kind) -> bool {
        super::super::kind_of(i) == k
    }

    #[test]
    fn rate_limit_holds_back_events_not_yet_due() {
        // 1,000 events/s: right after opening only event 0..=few are due.
        let mut s = NexmarkSubtask::new(Kind::Bid, &cfg(Some(1_000)), None, 0, 1);
        let first = s.take_ids();
        assert!(first.is_empty(), "bid 4 is due after 4 ms, got {first:?}");
        assert!(s.backoff > Duration::ZERO && s.backoff <= MAX_BACKOFF);
        // At this rate a paced batch is what comes due in 200 ms.
        std::thread::sleep(Duration::from_millis(210));
        let due = s.take_ids();
        assert!(!due.is_empty() && due.len() < 250, "{}", due.len());
        assert!(*due.last().unwrap() <= s.started.elapsed().as_millis() as u64 + 1);
    }

    #[test]
    fn a_paced_source_emits_bursts_of_full_batches_not_single_events() {
        // 100,000 events/s: a burst is 200 ms of events, 20,000 of them
        // (18,400 bids): full batches of 8,192 back to back, then a wait.
        let mut s = NexmarkSubtask::new(Kind::Bid, &cfg(Some(100_000)), None, 0, 1);
        s.batch_size = 8192;
        s.total = 1_000_000;
        s.started = Instant::now() - Duration::from_millis(150);
        assert!(
            s.take_ids().is_empty(),
            "15,000 events are due, but not a burst"
        );
        assert!(s.backoff >= Duration::from_millis(19), "{:?}", s.backoff);
        s.started = Instant::now() - Duration::from_millis(205);
        let burst: Vec<usize> = std::iter::from_fn(|| Some(s.take_ids().len()))
            .take_while(|n| *n > 0)
            .collect();
        assert_eq!(&burst[..2], &[8192, 8192], "{burst:?}");
        assert_eq!(burst.len(), 3, "{burst:?}");
        assert!(
            (18_400..19_000).contains(&burst.iter().sum::<usize>()),
            "{burst:?}"
        );
        // 1,000 events/s: a burst of 200 events every 200 ms (the first
        // bid is event 4, due with the 199 after it).
        let mut slow = NexmarkSubtask::new(Kind::Bid, &cfg(Some(1_000)), None, 0, 1);
        slow.started = Instant::now() - Duration::from_millis(150);
        assert!(slow.take_ids().is_empty(), "150 ms is not yet a pace");
        slow.started = Instant::now() - Duration::from_millis(210);
        let due = slow.take_ids();
        assert!((180..=210).contains(&due.len()), "{}", due.len());
        // Near the end of its share a subtask does not wait for events it
        // will never have.
        let mut end = NexmarkSubtask::new(Kind::Bid, &cfg(Some(100_000)), None, 0, 1);
        end.next = end.total - 2;
        let last = event_of(Kind::Bid, end.total - 1);
        end.started = Instant::now() - Duration::from_secs_f64(last as f64 / 100_000.0 + 0.001);
        assert_eq!(end.take_ids().len(), 2);
    }

    #[test]
    fn a_paced_source_reports_how_far_behind_its_schedule_it_is() {
        let mut s = NexmarkSubtask::new(Kind::Bid, &cfg(Some(1_000)), None, 0, 1);
        assert!(NexmarkSubtask::new(Kind::Bid, &cfg(None), None, 0, 1)
            .pending()
            .is_empty());
        // One second in, nothing emitted: the bids among events 0..=1000.
        s.started = Instant::now() - Duration::from_millis(1_000);
        let behind = s.pending();
        assert_eq!(behind.len(), 1);
        assert!((915..=925).contains(&behind[0].records), "{behind:?}");
        // Emitting what is due leaves (almost) nothing behind.
        while !s.take_ids().is_empty() {}
        assert!(s.pending()[0].records <= 2, "{:?}", s.pending());
        // From event 1000 on, 4000 events/s: a second later 5000 are due.
        let mut c = cfg(Some(1_000));
        c.events = 100_000;
        c.rate_steps = vec![(1_000, 4_000)];
        let mut fast = NexmarkSubtask::new(Kind::Bid, &c, None, 0, 1);
        fast.started = Instant::now() - Duration::from_millis(2_000);
        assert!(
            (4_580..=4_620).contains(&fast.pending()[0].records),
            "{:?}",
            fast.pending()
        );
    }

    #[test]
    fn synthetic_work_keeps_batches_short() {
        let mut c = cfg(None);
        c.work_per_event = Duration::from_micros(250);
        assert_eq!(batch_size(&c), 40);
        c.work_per_event = Duration::from_secs(1);
        assert_eq!(batch_size(&c), 1);
        assert_eq!(batch_size(&cfg(None)), 1000);
        let started = Instant::now();
        spin(Duration::from_millis(5));
        assert!(started.elapsed() >= Duration::from_millis(5));
    }
}
