//! One subtask of the Kafka source: owns the partitions `p` with
//! `p % parallelism == subtask` (explicit assignment, no group
//! rebalancing), polls them with a `BaseConsumer` on the source thread,
//! decodes one partition's records per batch (each partition is a split
//! with its own watermark), records per-partition positions at barriers,
//! commits them to the consumer group when a checkpoint completes, picks
//! up partitions added while it runs, and in bounded mode stops every
//! partition at an end offset: the high watermark when the read started,
//! or, resuming a bounded read that had not reached its ends, the ends
//! that read fixed (kept in its checkpoints), so a restart stops where the
//! interrupted run would have. Whether a run is bounded is decided by the
//! run (`until_end`), never by ends found in a checkpoint. It logs where
//! each partition starts or resumes and where a bounded read stops
//! ([`super::progress`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow::datatypes::SchemaRef;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_engine::data::CheckpointId;
use sluice_engine::protocol::metrics::SplitPending;
use sluice_engine::{Error, OperatorContext, Result, Source, SourcePoll};
use tracing::{debug, info, warn};

use super::client::{self, kafka_err, WatchedConsumer};
use super::dlq::BadRecords;
use super::evolve::Evolution;
use super::format::{Decoder, Format, RawRecords};
use super::progress::PartitionProgress;
use super::state::{Entry, StartFrom};
use super::KafkaSource;

#[path = "source_notices.rs"]
mod notices;

/// One owned partition.
#[derive(Debug)]
struct Part {
    partition: i32,
    /// Next offset to emit; `None` = from the earliest record (nothing
    /// emitted yet).
    next: Option<i64>,
    /// Bounded mode: stop here. While `None` in bounded mode the end is
    /// pending: it is the high watermark of the first Fetch response for
    /// the partition, read from the consumer when the partition's first
    /// record or end-of-partition event arrives (a separate probe consumer
    /// per subtask cost seconds at start-up).
    end: Option<i64>,
    /// Everything up to `end` was emitted.
    finished: bool,
    /// The fetch position at the last end-of-partition event: records
    /// before it were all delivered (it moves past transaction markers,
    /// which never arrive as records).
    eof_at: Option<i64>,
    /// Records polled, not yet emitted.
    pending: RawRecords,
}

/// A restored partition position: (next offset, bounded end).
type Position = (Option<i64>, Option<i64>);

pub(crate) struct KafkaSubtask {
    spec: KafkaSource,
    consumer: Option<WatchedConsumer>,
    decoder: Decoder,
    /// JSON with schema evolution: the schemas used.
    evolution: Option<Evolution>,
    bad: Option<BadRecords>,
    /// Owned partitions; the index is the split.
    parts: Vec<Part>,
    by_partition: HashMap<i32, usize>,
    /// Positions restored from a checkpoint, by partition (ends only
    /// where they bind this run: see [`KafkaSubtask::restore`]).
    restored: Option<BTreeMap<i32, Position>>,
    /// A bounded run resuming a bounded read that had not reached its
    /// ends: it keeps them, and reads only the partitions it had.
    resume_ends: bool,
    /// The raw records of the batch emitted last, so records the runtime
    /// rejects (their event time) can go to the bad-record policy whole.
    last: Option<RawRecords>,
    /// Whether the end of a bounded read was reported.
    told_end: bool,
    /// Splits that finished and still have to be reported.
    ended: VecDeque<usize>,
    /// Positions recorded per checkpoint, committed when it completes.
    uncommitted: Vec<(u64, Vec<(i32, i64)>)>,
    pending: usize,
    rr: usize,
    last_discovery: Instant,
    emitted: Arc<AtomicU64>,
    local_emitted: u64,
    subtask: usize,
    parallelism: usize,
}

/// Bounded mode: takes the partition's end from the high watermark the
/// consumer's first Fetch response reported (every record it delivered
/// lies below it). Until the consumer has one, the end stays pending, and
/// the records delivered meanwhile are below it anyway.
fn learn_end(consumer: &WatchedConsumer, topic: &str, part: &mut Part) {
    if let Some(h) = client::cached_high_watermark(consumer, topic, part.partition) {
        part.end = Some(h);
        debug!(
            partition = part.partition,
            end = h,
            "kafka partition end fixed"
        );
    }
}

impl KafkaSubtask {
    pub(crate) fn new(spec: KafkaSource, schema: SchemaRef) -> Result<Self> {
        let decoder = Decoder::new(spec.format.clone())?;
        if decoder.schema() != &schema {
            return Err(Error::Internal(
                "Kafka source schema changed between planning and running".into(),
            ));
        }
        let evolution = match &spec.format {
            Format::Json(s) if spec.evolve => Some(Evolution::new(s.clone())),
            _ => None,
        };
        Ok(KafkaSubtask {
            emitted: spec.emitted.clone(),
            spec,
            consumer: None,
            decoder,
            evolution,
            bad: None,
            parts: Vec::new(),
            by_partition: HashMap::new(),
            restored: None,
            resume_ends: false,
            last: None,
            told_end: false,
            ended: VecDeque::new(),
            uncommitted: Vec::new(),
            pending: 0,
            rr: 0,
            last_discovery: Instant::now(),
            local_emitted: 0,
            subtask: 0,
            parallelism: 1,
        })
    }

    fn consumer(&self) -> &WatchedConsumer {
        self.consumer.as_ref().expect("consumer created in open")
    }

    fn mine(&self, partition: i32) -> bool {
        partition.rem_euclid(self.parallelism as i32) as usize == self.subtask
    }

    /// Adds partitions to the assignment, resolving where each starts.
    fn add_partitions(&mut self, new: &[i32], start: StartFrom) -> Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let topic = self.spec.topic.clone();
        let consumer = self.consumer();
        let mut starts: BTreeMap<i32, Option<i64>> = BTreeMap::new();
        let mut ends: BTreeMap<i32, Option<i64>> = BTreeMap::new();
        let mut unresolved = Vec::new();
        for &p in new {
            match self.restored.as_ref().and_then(|r| r.get(&p)) {
                Some(&(next, end)) => {
                    starts.insert(p, next);
                    ends.insert(p, end);
                }
                None => unresolved.push(p),
            }
        }
        if !unresolved.is_empty() {
            let resolved: BTreeMap<i32, Option<i64>> = match start {
                StartFrom::Earliest => unresolved.iter().map(|&p| (p, None)).collect(),
                StartFrom::Latest => {
                    client::high_watermarks(&self.spec.config, &topic, &unresolved)?
                        .into_iter()
                        .map(|(p, h)| (p, Some(h)))
                        .collect()
                }
                StartFrom::Timestamp(ts) => {
                    let found = client::offsets_for_timestamp(consumer, &topic, &unresolved, ts)?;
                    let missing: Vec<i32> = found
                        .iter()
                        .filter(|(_, o)| o.is_none())
                        .map(|(p, _)| *p)
                        .collect();
                    let highs = client::high_watermarks(&self.spec.config, &topic, &missing)?;
                    found
                        .into_iter()
                        .map(|(p, o)| (p, o.or_else(|| highs.get(&p).copied())))
                        .collect()
                }
                StartFrom::Committed => client::committed_offsets(consumer, &topic, &unresolved)?,
            };
            for p in unresolved {
                starts.insert(p, resolved.get(&p).copied().flatten());
                ends.insert(p, None);
            }
        }
        let mut tpl = TopicPartitionList::new();
        for &p in new {
            let next = starts.get(&p).copied().flatten();
            let end = ends.get(&p).copied().flatten();
            let finished = match end {
                Some(e) => e <= 0 || next.is_some_and(|n| n >= e),
                None => false,
            };
            let split = self.parts.len();
            debug!(topic = %topic, partition = p, ?next, ?end, split, "kafka partition assigned");
            self.by_partition.insert(p, split);
            self.spec.progress.set(
                p,
                PartitionProgress {
                    from: next,
                    next,
                    end,
                    resumed: self.restored.as_ref().is_some_and(|r| r.contains_key(&p)),
                },
            );
            self.parts.push(Part {
                partition: p,
                next,
                end,
                finished,
                eof_at: None,
                pending: RawRecords::default(),
            });
            if finished {
                self.ended.push_back(split);
            } else {
                let off = next.map_or(Offset::Beginning, Offset::Offset);
                tpl.add_partition_offset(&topic, p, off)
                    .map_err(|e| kafka_err("assigning partitions", e))?;
            }
        }
        if tpl.count() > 0 {
            self.consumer()
                .incremental_assign(&tpl)
                .map_err(|e| kafka_err("assigning partitions", e))?;
        }
        Ok(())
    }

    /// Looks for partitions added to the topic since the last look; they
    /// are read from their earliest record.
    fn discover(&mut self) -> Result<()> {
        self.last_discovery = Instant::now();
        // Partitions are assigned: polling here could swallow records.
        let all = match client::partitions(self.consumer(), &self.spec.topic, false) {
            Ok(ps) => ps,
            Err(e) => {
                // Discovery is retried at the next interval; the partitions
                // already assigned keep being read meanwhile.
                warn!(error = %e, "kafka partition discovery failed");
                return Ok(());
            }
        };
        let new: Vec<i32> = all
            .into_iter()
            .filter(|p| self.mine(*p) && !self.by_partition.contains_key(p))
            .collect();
        if !new.is_empty() {
            info!(topic = %self.spec.topic, partitions = ?new, "new kafka partitions found");
        }
        self.add_partitions(&new, StartFrom::Earliest)
    }

    /// Marks `split` finished once its position reached its end.
    fn check_end(&mut self, split: usize, position: Option<i64>) {
        let part = &mut self.parts[split];
        if part.finished {
            return;
        }
        if position.is_some() {
            part.eof_at = position;
        }
        let reached = [part.next, part.eof_at].into_iter().flatten().max();
        if let Some(end) = part.end {
            // An end of 0 is an empty partition: reached whatever the
            // fetch position says (it may be unknown without records).
            let at_end = end <= 0 || reached.is_some_and(|pos| pos >= end);
            if at_end && part.pending.is_empty() {
                part.finished = true;
                part.next = Some(end);
                let partition = part.partition;
                self.spec.progress.update(partition, part.next, part.end);
                self.ended.push_back(split);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.spec.topic, partition);
                // Nothing more is wanted from it.
                let _ = self.consumer().incremental_unassign(&tpl);
                debug!(partition, end, "kafka partition reached its end");
            }
        }
    }

    /// Bounded mode, nothing to emit: learns ends still pending from the
    /// consumer's cache and finishes partitions whose end was fixed after
    /// their last record or end-of-partition event (by a later Fetch
    /// response, or by a checkpoint's probe). Without this a partition
    /// read to its end before its end was known was never finished: one
    /// run in a few checkpointed forever and never ended.
    fn settle_ends(&mut self) {
        for split in 0..self.parts.len() {
            let part = &mut self.parts[split];
            if part.finished || !part.pending.is_empty() {
                continue;
            }
            if part.end.is_none() {
                // Before the first Fetch response nothing is cached and
                // the end stays pending.
                let consumer = self.consumer.as_ref().expect("consumer created in open");
                learn_end(consumer, &self.spec.topic, part);
            }
            if part.end.is_some() {
                self.check_end(split, None);
            }
        }
    }

    /// The consumer's fetch position of `partition` (moves past
    /// transaction markers, which never arrive as records).
    fn position(&self, partition: i32) -> Option<i64> {
        let tpl = self.consumer().position().ok()?;
        let e = tpl.find_partition(&self.spec.topic, partition)?;
        match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    /// Polls the consumer until `batch_size` records are pending or none
    /// is ready.
    fn fill(&mut self) -> Result<()> {
        let batch_size = self.spec.batch_size;
        // Messages come in runs of one partition (a fetch's worth): the
        // split of the last one is kept rather than hashed per message.
        let mut last: Option<(i32, usize)> = None;
        while self.pending < batch_size {
            let consumer = self.consumer.as_ref().expect("consumer created in open");
            let msg = match consumer.poll(Duration::ZERO) {
                None => break,
                Some(m) => m,
            };
            match msg {
                Ok(m) => {
                    let partition = m.partition();
                    let split = match last {
                        Some((p, split)) if p == partition => split,
                        _ => match self.by_partition.get(&partition) {
                            Some(&split) => {
                                last = Some((partition, split));
                                split
                            }
                            None => continue,
                        },
                    };
                    let part = &mut self.parts[split];
                    if self.spec.bounded && part.end.is_none() {
                        learn_end(consumer, &self.spec.topic, part);
                    }
                    let offset = m.offset();
                    if part.finished || part.end.is_some_and(|e| offset >= e) {
                        continue; // past the bounded end
                    }
                    if part.next.is_some_and(|n| offset < n) {
                        continue; // already emitted (re-delivered fetch)
                    }
                    let ts = m.timestamp().to_millis();
                    part.pending.push(offset, ts, m.key(), m.payload());
                    self.pending += 1;
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    if let Some(&split) = self.by_partition.get(&p) {
                        if self.spec.bounded && self.parts[split].end.is_none() {
                            learn_end(consumer, &self.spec.topic, &mut self.parts[split]);
                        }
                        // The position is kept even while the end is
                        // unknown: librdkafka reports an end-of-partition
                        // once, and the end may be learnt after it.
                        let pos = self.position(p);
                        self.check_end(split, pos);
                    }
                }
                Err(e) => {
                    // Transport and broker errors are retried by librdkafka;
                    // they surface here for information.
                    warn!(topic = %self.spec.topic, error = %e, "kafka consumer error");
                }
            }
        }
        Ok(())
    }

    /// Ends still pending at a checkpoint are fixed now, by a probe, so a
    /// restart stops at the same offsets as the first run.
    fn fix_pending_ends(&mut self) -> Result<()> {
        if !self.spec.bounded {
            return Ok(());
        }
        let pending: Vec<i32> = self
            .parts
            .iter()
            .filter(|p| p.end.is_none())
            .map(|p| p.partition)
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let highs = client::high_watermarks(&self.spec.config, &self.spec.topic, &pending)?;
        for part in self.parts.iter_mut().filter(|p| p.end.is_none()) {
            if let Some(&h) = highs.get(&part.partition) {
                part.end = Some(h);
            }
        }
        Ok(())
    }

    /// Decodes the pending records of the next partition that has some.
    fn emit_one(&mut self) -> Result<Option<(usize, arrow::record_batch::RecordBatch)>> {
        let n = self.parts.len();
        for k in 0..n {
            let split = (self.rr + k) % n;
            if self.parts[split].pending.is_empty() {
                continue;
            }
            self.rr = split + 1;
            // The records of the batch before are done with (rejects come
            // right after their batch): their buffers take the next ones.
            let mut spare = self.last.take().unwrap_or_default();
            spare.clear();
            let recs = std::mem::replace(&mut self.parts[split].pending, spare);
            self.pending -= recs.len();
            let partition = self.parts[split].partition;
            let bad = self.bad.as_mut().expect("bad-record policy set in open");
            let mut on_bad = |i: usize, err: String| {
                bad.handle(
                    partition,
                    recs.offsets[i],
                    recs.keys.get(i),
                    recs.values.get(i),
                    &err,
                )
            };
            let batch = match &mut self.evolution {
                Some(ev) => ev.decode(&mut self.decoder, partition, &recs, &mut on_bad)?,
                None => self.decoder.decode(partition, &recs, &mut on_bad)?,
            };
            let last = *recs.offsets.last().expect("non-empty");
            self.parts[split].next = Some(last + 1);
            self.spec
                .progress
                .update(partition, Some(last + 1), self.parts[split].end);
            self.last = Some(recs);
            self.check_end(split, None);
            let rows = batch.num_rows() as u64;
            self.local_emitted += rows;
            self.emitted.fetch_add(rows, Ordering::Relaxed);
            if rows > 0 {
                return Ok(Some((split, batch)));
            }
        }
        Ok(None)
    }
}

impl Source for KafkaSubtask {
    fn splits(&self) -> usize {
        self.parts.len()
    }

    fn supports_checkpoints(&self) -> bool {
        true
    }

    fn idle_backoff(&self) -> Duration {
        Duration::from_millis(2)
    }

    fn records_emitted(&self) -> u64 {
        self.local_emitted
    }

    /// Consumer lag per owned partition: the high watermark librdkafka
    /// cached from its last Fetch response minus the next offset to emit
    /// (records fetched but not emitted yet count as behind). A partition
    /// with nothing emitted counts from its low watermark, once known.
    fn pending(&self) -> Vec<SplitPending> {
        let Some(consumer) = &self.consumer else {
            return Vec::new();
        };
        let topic = &self.spec.topic;
        self.parts
            .iter()
            .filter_map(|p| {
                let (low, high) = client::cached_watermarks(consumer, topic, p.partition)?;
                let next = p.next.or((low >= 0).then_some(low))?;
                Some(SplitPending {
                    split: format!("{topic}-{}", p.partition),
                    records: u64::try_from(high - next).unwrap_or(0),
                })
            })
            .collect()
    }

    /// A bounded read's offsets left before its ends (the fixed end, or
    /// until it is fixed the cached high watermark it will be fixed at),
    /// once every owned partition's position and end are known; an
    /// unbounded read has no end to count to.
    fn remaining(&self) -> Option<u64> {
        if !self.spec.bounded {
            return None;
        }
        let consumer = self.consumer.as_ref()?;
        let topic = &self.spec.topic;
        self.parts
            .iter()
            .map(|p| {
                if p.finished {
                    return Some(0);
                }
                let cached = client::cached_watermarks(consumer, topic, p.partition);
                let end = p.end.or(cached.map(|c| c.1))?;
                let next = p.next.or(cached.map(|c| c.0).filter(|low| *low >= 0))?;
                Some(u64::try_from(end - next).unwrap_or(0))
            })
            .sum()
    }

    /// Records whose event time the runtime cannot process go to the
    /// decode policy like records that do not decode, with their original
    /// bytes (from the batch emitted last).
    fn reject(
        &mut self,
        _split: usize,
        batch: &arrow::record_batch::RecordBatch,
        rows: &[(usize, String)],
    ) -> Result<()> {
        let partitions = batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int32Type>();
        let offsets = batch.column(1).as_primitive::<Int64Type>();
        let bad = self.bad.as_mut().expect("bad-record policy set in open");
        let raw = self.last.as_ref();
        for (row, why) in rows {
            let (partition, offset) = (partitions.value(*row), offsets.value(*row));
            let i = raw.and_then(|r| r.offsets.binary_search(&offset).ok());
            let key = i.and_then(|i| raw.and_then(|r| r.keys.get(i)));
            let value = i.and_then(|i| raw.and_then(|r| r.values.get(i)));
            bad.handle(partition, offset, key, value, why)?;
        }
        let n = rows.len() as u64;
        self.local_emitted = self.local_emitted.saturating_sub(n);
        self.emitted.fetch_sub(n, Ordering::Relaxed);
        Ok(())
    }

    fn restore(&mut self, entries: Vec<Vec<u8>>, ctx: &OperatorContext) -> Result<()> {
        self.subtask = ctx.subtask;
        self.parallelism = ctx.parallelism.max(1);
        let mut restored = BTreeMap::new();
        // Whether the checkpoint is of a bounded read that had not reached
        // every end (over all partitions, so every subtask decides alike).
        let mut unfinished = false;
        for e in &entries {
            match Entry::decode(e)? {
                Entry::Partition {
                    topic,
                    partition,
                    next,
                    end,
                } => {
                    if topic != self.spec.topic {
                        return Err(Error::plan(
                            super::source_name(&self.spec.topic),
                            format!(
                                "the checkpoint holds positions of topic '{topic}', the job reads '{}'; \
                                 use another checkpoint directory (or start fresh)",
                                self.spec.topic
                            ),
                        ));
                    }
                    let reached = end.is_some_and(|e| e <= 0 || next.is_some_and(|n| n >= e));
                    unfinished |= end.is_some() && !reached;
                    if self.mine(partition) {
                        restored.insert(partition, (next, end));
                    }
                }
                Entry::Schema { fields, .. } => {
                    let was = super::format::schema_from_json(&fields)?;
                    if let Some(ev) = &mut self.evolution {
                        if ev.absorb(&was)? {
                            self.decoder = Decoder::new(Format::Json(ev.current().clone()))?;
                        }
                    } else if let Format::Json(now) = &self.spec.format {
                        if was.fields() != now.fields() {
                            return Err(Error::plan(
                                super::source_name(&self.spec.topic),
                                format!(
                                    "the checkpoint decoded topic '{}' with schema {was:?}, the job now uses {now:?}",
                                    self.spec.topic
                                ),
                            ));
                        }
                    }
                }
            }
        }
        // The flags of this run decide whether it is bounded: an unbounded
        // run ignores ends in the checkpoint, and a bounded one keeps them
        // only to finish a bounded read that was interrupted (so it stops
        // where that read would have); otherwise it reads to the topic's
        // current end, like a first start.
        self.resume_ends = self.spec.bounded && unfinished;
        if !self.resume_ends {
            for (_, end) in restored.values_mut() {
                *end = None;
            }
        }
        self.restored = Some(restored);
        Ok(())
    }

    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.subtask = ctx.subtask;
        self.parallelism = ctx.parallelism.max(1);
        let consumer: WatchedConsumer = self
            .spec
            .config
            .consumer(self.spec.group.as_deref())
            .create_with_context(self.spec.config.watch("the Kafka source"))
            .map_err(|e| kafka_err("creating the consumer", e))?;
        self.consumer = Some(consumer);
        self.bad = Some(BadRecords::new(
            self.spec.policy.clone(),
            self.spec.stats.clone(),
            &self.spec.config,
            &self.spec.topic,
        )?);
        let mine: Vec<i32> = match &self.restored {
            // Finishing an interrupted bounded read: the partitions it saw
            // when it started, and only those.
            Some(r) if self.resume_ends => r.keys().copied().collect(),
            _ => client::partitions(self.consumer(), &self.spec.topic, true)?
                .into_iter()
                .filter(|p| self.mine(*p))
                .collect(),
        };
        self.add_partitions(&mine, self.spec.start)?;
        self.last_discovery = Instant::now();
        self.tell_start();
        Ok(())
    }

    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        if let Some(b) = &self.bad {
            b.check()?;
        }
        if let Some(split) = self.ended.pop_front() {
            return Ok(SourcePoll::SplitEnd(split));
        }
        if !self.spec.bounded
            && self
                .spec
                .discovery_interval
                .is_some_and(|d| self.last_discovery.elapsed() >= d)
        {
            self.discover()?;
        }
        self.fill()?;
        if let Some((split, batch)) = self.emit_one()? {
            return Ok(SourcePoll::Batch { split, batch });
        }
        if self.spec.bounded {
            self.settle_ends();
        }
        if let Some(split) = self.ended.pop_front() {
            return Ok(SourcePoll::SplitEnd(split));
        }
        if self.spec.bounded && self.parts.iter().all(|p| p.finished) {
            // Dead letters are durable before the job can report success
            // (without checkpoints nothing else flushes them).
            if let Some(b) = &self.bad {
                b.flush()?;
            }
            self.tell_end();
            return Ok(SourcePoll::End);
        }
        Ok(SourcePoll::Idle)
    }

    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<Vec<Vec<u8>>> {
        // Dead letters of every record before this position must be durable
        // before the position is.
        if let Some(b) = &self.bad {
            b.flush()?;
        }
        self.fix_pending_ends()?;
        let mut entries = Vec::with_capacity(self.parts.len() + 1);
        let mut offsets = Vec::new();
        for p in &self.parts {
            entries.push(
                Entry::Partition {
                    topic: self.spec.topic.clone(),
                    partition: p.partition,
                    next: p.next,
                    end: p.end,
                }
                .encode()?,
            );
            if let Some(n) = p.next {
                offsets.push((p.partition, n));
            }
        }
        match (&self.evolution, &self.spec.format) {
            (Some(ev), _) => {
                for s in ev.history() {
                    entries.push(Entry::schema(&self.spec.topic, s)?.encode()?);
                }
            }
            (None, Format::Json(s)) => {
                entries.push(Entry::schema(&self.spec.topic, s)?.encode()?);
            }
            (None, _) => {}
        }
        if self.spec.group.is_some() {
            self.uncommitted.push((checkpoint.0, offsets));
        }
        Ok(entries)
    }

    /// Commits the positions of `checkpoint` to the consumer group (for
    /// monitoring and for jobs that start from committed offsets; the
    /// checkpoint, not the group, is what a restart resumes from).
    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<()> {
        let Some(i) = self
            .uncommitted
            .iter()
            .rposition(|(id, _)| *id <= checkpoint.0)
        else {
            return Ok(());
        };
        let (_, offsets) = self.uncommitted.swap_remove(i);
        self.uncommitted.retain(|(id, _)| *id > checkpoint.0);
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(&self.spec.topic, p, Offset::Offset(o))
                .map_err(|e| kafka_err("committing offsets", e))?;
        }
        if let Err(e) = self.consumer().commit(&tpl, CommitMode::Sync) {
            // The group's offsets are informational: a failed commit loses
            // nothing, the next checkpoint commits again.
            warn!(checkpoint = checkpoint.0, error = %e, "committing kafka offsets failed");
        }
        Ok(())
    }
}
