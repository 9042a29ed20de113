//! Tumbling and sliding windows by *panes*: a record updates exactly one
//! pane (width gcd(size, slide)) per key, and a window is the merge of its
//! size/pane panes when it fires. Per-record cost does not depend on how many
//! windows overlap (unlike Flink, which copies a record into each of
//! size/slide windows). Tumbling windows are the one-pane case.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use hashbrown::HashMap;
use sluice_engine::data::{event_times_ms, CheckpointId, Watermark};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Error, Operator, OperatorContext, Result};

use super::state::{output, state_batch, Keys, Slots};
use crate::snapshot::{encode_times, restored_times, without_key_group};

/// Key → slot within one pane.
#[derive(Default)]
struct Pane {
    slots: HashMap<u32, u32>,
}

/// Rows of one output batch being assembled: (key, slot, start, end) per
/// row, plus the temporary slots holding merged panes.
#[derive(Default)]
struct Firing {
    keys: Vec<u32>,
    slots: Vec<u32>,
    starts: Vec<i64>,
    ends: Vec<i64>,
    temps: Vec<u32>,
}

impl Firing {
    fn push(&mut self, key: u32, slot: u32, start: i64, end: i64) {
        self.keys.push(key);
        self.slots.push(slot);
        self.starts.push(start);
        self.ends.push(end);
    }
}

/// Event-time tumbling/sliding window aggregation.
pub(crate) struct PaneWindowOperator {
    pub(crate) size: i64,
    pub(crate) slide: i64,
    pub(crate) pane: i64,
    pub(crate) lateness: i64,
    pub(crate) time: usize,
    pub(crate) keys: Keys,
    pub(crate) slots: Slots,
    pub(crate) output: SchemaRef,
    panes: BTreeMap<i64, Pane>,
    watermark: i64,
    fired_upto: i64,
}

impl PaneWindowOperator {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        size: i64,
        slide: i64,
        lateness: i64,
        time: usize,
        keys: Keys,
        slots: Slots,
        output: SchemaRef,
    ) -> Self {
        PaneWindowOperator {
            size,
            slide,
            pane: gcd(size, slide),
            lateness,
            time,
            keys,
            slots,
            output,
            panes: BTreeMap::new(),
            watermark: i64::MIN,
            fired_upto: i64::MIN,
        }
    }

    fn last_window_start(&self, p: i64) -> i64 {
        self.geo().last_window_start(p)
    }

    fn window_ends(&self, p: i64) -> impl Iterator<Item = i64> {
        self.geo().window_ends(p)
    }

    fn is_late(&self, end: i64) -> bool {
        self.geo().is_late(end, self.watermark)
    }

    fn geo(&self) -> Geometry {
        Geometry {
            size: self.size,
            slide: self.slide,
            pane: self.pane,
            lateness: self.lateness,
        }
    }

    /// Adds window [end - size, end) for `only` keys (all keys when None,
    /// else a sorted list) to `firing`.
    fn fire(&mut self, end: i64, only: Option<&[u32]>, firing: &mut Firing) {
        let start = end - self.size;
        let single = self.pane == self.size;
        let mut merged: HashMap<u32, u32> = HashMap::new();
        for (_, pane) in self.panes.range(start..end) {
            for (k, s) in &pane.slots {
                if only.is_some_and(|o| o.binary_search(k).is_err()) {
                    continue;
                }
                if single {
                    firing.push(*k, *s, start, end);
                    continue;
                }
                let dst = match merged.get(k) {
                    Some(d) => *d,
                    None => {
                        let t = self.slots.alloc();
                        merged.insert(*k, t);
                        firing.push(*k, t, start, end);
                        firing.temps.push(t);
                        t
                    }
                };
                self.slots.merge(*s, dst);
            }
        }
    }

    /// Emits everything in `firing` as one batch and frees its merge slots.
    fn flush(&mut self, firing: Firing, out: &mut Collector) -> Result<()> {
        if !firing.keys.is_empty() {
            let keys = self.keys.columns_of(&firing.keys)?;
            let aggs = self.slots.evaluate(&firing.slots)?;
            out.emit(output(
                &self.output,
                keys,
                firing.starts,
                firing.ends,
                aggs,
            )?);
        }
        for t in firing.temps {
            self.slots.release(t);
        }
        Ok(())
    }

    fn purge(&mut self) {
        let (geo, wm) = (self.geo(), self.watermark);
        let done: Vec<i64> = self
            .panes
            .keys()
            .copied()
            .take_while(|p| geo.done(*p, wm))
            .collect();
        for p in done {
            if let Some(pane) = self.panes.remove(&p) {
                for (k, s) in pane.slots {
                    self.slots.release(s);
                    self.keys.release(k);
                }
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn live_slots(&self) -> usize {
        self.slots.in_use()
    }
}

/// Pane arithmetic of a tumbling or sliding window: panes are
/// gcd(size, slide) wide; a window is size/pane consecutive panes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) size: i64,
    pub(crate) slide: i64,
    pub(crate) pane: i64,
    pub(crate) lateness: i64,
}

impl Geometry {
    // Only the RocksDB window builds a geometry from its parts.
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
    pub(crate) fn new(size: i64, slide: i64, lateness: i64) -> Self {
        Geometry {
            size,
            slide,
            pane: gcd(size, slide),
            lateness,
        }
    }

    /// Start of the last window containing the pane starting at `p`.
    pub(crate) fn last_window_start(&self, p: i64) -> i64 {
        p - p.rem_euclid(self.slide)
    }

    /// Ends of every window containing the pane starting at `p`, ascending.
    pub(crate) fn window_ends(self, p: i64) -> impl Iterator<Item = i64> {
        let last = self.last_window_start(p);
        let first_allowed = p + self.pane - self.size;
        let n = (last - first_allowed).div_euclid(self.slide) + 1;
        (0..n.max(0))
            .rev()
            .map(move |k| last - k * self.slide + self.size)
    }

    /// Whether a window ending at `end` is past its allowed lateness.
    pub(crate) fn is_late(&self, end: i64, watermark: i64) -> bool {
        end.saturating_sub(1).saturating_add(self.lateness) <= watermark
    }

    /// Ends of the windows over `panes` (pane starts, ascending) that close
    /// when event time passes `limit - 1`, not counting those that closed
    /// at or before `fired_upto`.
    pub(crate) fn ends_closing(
        self,
        panes: impl Iterator<Item = i64>,
        fired_upto: i64,
        limit: i64,
    ) -> BTreeSet<i64> {
        let mut ends = BTreeSet::new();
        for p in panes.take_while(|p| *p < limit) {
            ends.extend(
                self.window_ends(p)
                    .filter(|e| *e > fired_upto && *e <= limit),
            );
        }
        ends
    }

    /// Whether no window containing pane `p` can fire or re-fire any more.
    pub(crate) fn done(&self, p: i64, watermark: i64) -> bool {
        self.is_late(self.last_window_start(p) + self.size, watermark)
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Operator for PaneWindowOperator {
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_ms(batch.column(self.time))?;
        let ids = self.keys.intern(&batch)?;
        let (mut rows, mut slots, mut late) = (
            Vec::with_capacity(ts.len()),
            Vec::with_capacity(ts.len()),
            Vec::new(),
        );
        let mut refire: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        let mut cur: Option<(i64, Pane)> = None;
        for (i, (t, k)) in ts.iter().zip(&ids).enumerate() {
            let p = t - t.rem_euclid(self.pane);
            if self.is_late(self.last_window_start(p) + self.size) {
                late.push(i as u32);
                continue;
            }
            if cur.as_ref().is_none_or(|(cp, _)| *cp != p) {
                if let Some((cp, pane)) = cur.take() {
                    self.panes.insert(cp, pane);
                }
                cur = Some((p, self.panes.remove(&p).unwrap_or_default()));
            }
            let pane = &mut cur.as_mut().expect("set above").1;
            let slot = match pane.slots.get(k) {
                Some(s) => *s,
                None => {
                    let s = self.slots.alloc();
                    self.keys.retain(*k);
                    pane.slots.insert(*k, s);
                    s
                }
            };
            rows.push(i as u32);
            slots.push(slot);
            // Within allowed lateness, windows that already fired fire again.
            if p < self.fired_upto {
                for e in self
                    .window_ends(p)
                    .filter(|e| *e <= self.fired_upto && !self.is_late(*e))
                {
                    refire.entry(e).or_default().push(*k);
                }
            }
        }
        if let Some((cp, pane)) = cur.take() {
            self.panes.insert(cp, pane);
        }
        self.slots.update(&batch, &rows, &slots)?;
        if !late.is_empty() {
            out.emit_side(1, take_record_batch(&batch, &UInt32Array::from(late))?);
        }
        self.keys.forget_unused();
        let mut firing = Firing::default();
        for (end, mut keys) in refire {
            keys.sort_unstable();
            keys.dedup();
            self.fire(end, Some(&keys), &mut firing);
        }
        self.flush(firing, out)
    }

    fn on_watermark(
        &mut self,
        wm: Watermark,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        let Some(t) = crate::advance(&mut self.watermark, wm) else {
            return Ok(Some(wm));
        };
        let limit = t.saturating_add(1);
        let ends = self
            .geo()
            .ends_closing(self.panes.keys().copied(), self.fired_upto, limit);
        // One output batch per watermark, however many windows it closes.
        let mut firing = Firing::default();
        for e in ends {
            self.fire(e, None, &mut firing);
        }
        self.flush(firing, out)?;
        self.fired_upto = self.fired_upto.max(limit);
        self.purge();
        Ok(Some(wm))
    }

    fn snapshot(&mut self, _id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        let (mut ids, mut starts, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        for (p, pane) in &self.panes {
            for (k, s) in &pane.slots {
                ids.push(*k);
                starts.push(*p);
                slots.push(*s);
            }
        }
        let mut keyed = Vec::new();
        if !ids.is_empty() {
            keyed.push(state_batch(
                self.keys.columns_of(&ids)?,
                vec![("_pane", starts)],
                self.slots.state(&slots)?,
                ctx.max_parallelism,
            )?);
        }
        Ok(OperatorSnapshot {
            keyed,
            db: None,
            entries: vec![encode_times(&[self.watermark, self.fired_upto])],
        })
    }

    fn restore(&mut self, state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
        if let Some(t) = restored_times(&state.entries, 2)? {
            self.watermark = t[0];
            self.fired_upto = t[1];
        }
        let nk = self.keys.width();
        for batch in &state.keyed {
            let batch = without_key_group(batch)?;
            if batch.num_columns() < nk + 1 {
                return Err(Error::Checkpoint("window state has too few columns".into()));
            }
            let cols = batch.columns();
            let ids = self.keys.intern_columns(&cols[..nk], batch.num_rows())?;
            let starts = event_times_ms(&cols[nk])?;
            let mut slots = Vec::with_capacity(ids.len());
            for (k, p) in ids.iter().zip(starts.iter()) {
                let pane = self.panes.entry(*p).or_default();
                let slot = match pane.slots.get(k) {
                    Some(s) => *s,
                    None => {
                        let s = self.slots.alloc();
                        self.keys.retain(*k);
                        pane.slots.insert(*k, s);
                        s
                    }
                };
                slots.push(slot);
            }
            self.slots.merge_state(&cols[nk + 1..], &slots)?;
            self.keys.forget_unused();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::aggregate::{count, sum};

    fn op(size: i64, slide: i64) -> PaneWindowOperator {
        let input: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("ts", DataType::Int64, false),
        ]));
        let keys = Keys::new(vec![0], vec![DataType::Int64]).unwrap();
        let slots = Slots::new(&[count(), sum("ts")], &input).unwrap();
        let ts = DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None);
        let output: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
            Field::new("count", DataType::Int64, false),
            Field::new("sum_ts", DataType::Int64, true),
        ]));
        PaneWindowOperator::new(size, slide, 0, 1, keys, slots, output)
    }

    fn ctx() -> OperatorContext {
        OperatorContext {
            operator: "w".into(),
            subtask: 0,
            parallelism: 1,
            max_parallelism: 128,
            input_schemas: vec![],
            watermark: None,
            attempt: 0,
            checkpointing: false,
            state: Default::default(),
        }
    }

    #[test]
    fn state_per_record_does_not_grow_with_overlap() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("ts", DataType::Int64, false),
        ]));
        // 1,000 records, 10 keys, all within one 1 s slide.
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values((0..1000).map(|i| i % 10))),
                Arc::new(Int64Array::from_iter_values((0..1000).map(|i| i % 1000))),
            ],
        )
        .unwrap();
        for size in [1_000, 10_000, 600_000] {
            let mut w = op(size, 1_000);
            let mut out = Collector::default();
            w.process(0, batch.clone(), &ctx(), &mut out).unwrap();
            // One slot per key in one pane, whatever size/slide is.
            assert_eq!(w.live_slots(), 10, "size {size}");
            w.on_watermark(Watermark::MAX, &ctx(), &mut out).unwrap();
            let rows: usize = out.take_main().iter().map(|b| b.num_rows()).sum();
            assert_eq!(
                rows as i64,
                10 * size / 1_000,
                "every window of every key fires once"
            );
            assert_eq!(w.live_slots(), 0, "fired panes are freed");
            assert_eq!(w.keys.live(), 0, "keys are forgotten with their panes");
        }
    }

    #[test]
    fn keys_seen_only_on_late_records_are_forgotten() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("ts", DataType::Int64, false),
        ]));
        let mut w = op(1_000, 1_000);
        let mut out = Collector::default();
        w.on_watermark(Watermark::EventTime(5_000), &ctx(), &mut out)
            .unwrap();
        let late = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..100)),
                Arc::new(Int64Array::from_iter_values((0..100).map(|i| i * 10))),
            ],
        )
        .unwrap();
        w.process(0, late, &ctx(), &mut out).unwrap();
        let side: usize = out.take_side().iter().map(|(_, b)| b.num_rows()).sum();
        assert_eq!(side, 100, "every record is late");
        assert_eq!(w.keys.live(), 0, "no key outlives its late records");
        assert_eq!(w.live_slots(), 0);
    }
}
