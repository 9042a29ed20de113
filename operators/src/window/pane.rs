//! Tumbling and sliding windows by *panes*: a record updates exactly one
//! pane (width gcd(size, slide)) per key, and a window is the merge of its
//! size/pane panes when it fires. Per-record cost does not depend on how many
//! windows overlap (unlike Flink, which copies a record into each of
//! size/slide windows). Tumbling windows are the one-pane case.
//!
//! State is one table (`panes`) of `(key group, pane start, key) →
//! accumulator slot`: on the heap backend the slots are the state; on
//! RocksDB the table is a write-back cache and slots spill as encoded
//! accumulator state. A batch looks up (or creates) one entry per row with
//! one table call, updates the accumulators vectorized, and lets the table
//! evict what exceeds the cache. A window fires by scanning its panes.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use hashbrown::{HashMap, HashSet};
use sluice_engine::data::{event_times_in_range, CheckpointId, Watermark};
use sluice_engine::state::store::StateStore;
use sluice_engine::state::table::{KeyRef, StateTable};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Error, Operator, OperatorContext, Result};

use super::state::{output, Slots};
use crate::snapshot::{encode_progress, encode_times, restored_progress};
use crate::table_keys::TableKeys;

/// Name of the pane table.
const PANES: &str = "panes";
/// Tags of the operator-state entries.
const PROGRESS: u8 = b'W';
const PANE_LIST: u8 = b'P';
const LAYOUT: u8 = b'A';
/// Rows per output batch at most (a watermark that closes windows over
/// very many keys emits several batches rather than one huge one).
const OUTPUT_ROWS: usize = 65_536;

/// Rows of one output batch being assembled: (key, slot, start, end) per
/// row, plus the temporary slots holding merged panes.
#[derive(Default)]
struct Firing {
    keys: Vec<Box<[u8]>>,
    slots: Vec<u32>,
    starts: Vec<i64>,
    ends: Vec<i64>,
    temps: Vec<u32>,
}

/// Event-time tumbling/sliding window aggregation.
pub(crate) struct PaneWindowOperator {
    geo: Geometry,
    time: usize,
    keys: TableKeys,
    slots: Slots,
    output: SchemaRef,
    store: Option<StateStore>,
    table: Option<StateTable<u32>>,
    restored: RestoredState,
    /// Pane starts that may hold state (one per pane, not per key).
    panes: BTreeSet<i64>,
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
        key_cols: Vec<usize>,
        key_types: &[DataType],
        slots: Slots,
        output: SchemaRef,
    ) -> Result<Self> {
        Ok(PaneWindowOperator {
            geo: Geometry::new(size, slide, lateness),
            time,
            keys: TableKeys::new(key_cols, key_types)?,
            slots,
            output,
            store: None,
            table: None,
            restored: RestoredState::default(),
            panes: BTreeSet::new(),
            watermark: i64::MIN,
            fired_upto: i64::MIN,
        })
    }

    #[cfg(test)]
    fn table(&mut self) -> Result<&mut StateTable<u32>> {
        self.table
            .as_mut()
            .ok_or_else(|| Error::Internal("window state used before open".into()))
    }

    /// Adds window [end - size, end) for every key (or only those in
    /// `only`) to `firing`, emitting full batches on the way.
    fn fire(
        &mut self,
        end: i64,
        only: Option<&HashSet<Vec<u8>>>,
        firing: &mut Firing,
        out: &mut Collector,
    ) -> Result<()> {
        let start = end - self.geo.size;
        let single = self.geo.pane == self.geo.size;
        let mut merged: HashMap<Box<[u8]>, usize> = HashMap::new();
        let table = self
            .table
            .as_mut()
            .ok_or_else(|| Error::Internal("window fired before open".into()))?;
        let (keys, output) = (&self.keys, &self.output);
        table.scan(&mut self.slots, start..end, |slots, e| {
            let key = &e.key[10..];
            if only.is_some_and(|o| !o.contains(key)) {
                return Ok(());
            }
            if single && e.resident {
                firing.keys.push(key.into());
                firing.slots.push(*e.value);
                firing.starts.push(start);
                firing.ends.push(end);
            } else if let Some(j) = merged.get(key) {
                slots.merge(*e.value, firing.slots[*j]);
            } else {
                let t = slots.alloc();
                slots.merge(*e.value, t);
                if !single {
                    merged.insert(key.into(), firing.slots.len());
                }
                firing.keys.push(key.into());
                firing.slots.push(t);
                firing.starts.push(start);
                firing.ends.push(end);
                firing.temps.push(t);
            }
            if firing.keys.len() >= OUTPUT_ROWS && merged.is_empty() {
                flush(std::mem::take(firing), keys, slots, output, out)?;
            }
            Ok(())
        })
    }

    /// Drops panes no window can use any more.
    fn purge(&mut self) -> Result<()> {
        let (geo, wm) = (self.geo, self.watermark);
        let done: Vec<i64> = self
            .panes
            .iter()
            .copied()
            .take_while(|p| geo.done(*p, wm))
            .collect();
        let (Some(first), Some(last)) = (done.first().copied(), done.last().copied()) else {
            return Ok(());
        };
        let table = self
            .table
            .as_mut()
            .ok_or_else(|| Error::Internal("window purged before open".into()))?;
        table.remove_range(&mut self.slots, first..=last)?;
        for p in done {
            self.panes.remove(&p);
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn live_slots(&self) -> usize {
        self.slots.in_use()
    }
}

/// Emits everything in `firing` as one batch and frees its merge slots.
fn flush(
    firing: Firing,
    keys: &TableKeys,
    slots: &mut Slots,
    schema: &SchemaRef,
    out: &mut Collector,
) -> Result<()> {
    if !firing.keys.is_empty() {
        let key_cols = keys.decode(firing.keys.iter().map(|k| &**k))?;
        let aggs = slots.evaluate(&firing.slots)?;
        out.emit(output(schema, key_cols, firing.starts, firing.ends, aggs)?);
    }
    for t in firing.temps {
        slots.release(t);
    }
    Ok(())
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
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        let restored = std::mem::take(&mut self.restored);
        let mut store = StateStore::open(ctx, &[PANES], restored)?;
        self.table = Some(store.table(PANES, &mut self.slots)?);
        self.store = Some(store);
        Ok(())
    }

    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_in_range(&batch, self.time)?;
        let keys = self.keys.encode(&batch, ctx.max_parallelism)?;
        let geo = self.geo;
        let mut late = Vec::new();
        let mut refire: BTreeMap<i64, HashSet<Vec<u8>>> = BTreeMap::new();
        let mut panes: Vec<Option<i64>> = Vec::with_capacity(ts.len());
        let mut last_pane = None;
        for (i, t) in ts.iter().enumerate() {
            let p = t - t.rem_euclid(geo.pane);
            if geo.is_late(geo.last_window_start(p) + geo.size, self.watermark) {
                late.push(i as u32);
                panes.push(None);
                continue;
            }
            panes.push(Some(p));
            if last_pane != Some(p) {
                self.panes.insert(p);
                last_pane = Some(p);
            }
            // Within allowed lateness, windows that already fired fire again.
            if p < self.fired_upto {
                for e in geo
                    .window_ends(p)
                    .filter(|e| *e <= self.fired_upto && !geo.is_late(*e, self.watermark))
                {
                    refire.entry(e).or_default().insert(keys.key(i).to_vec());
                }
            }
        }
        let table = self
            .table
            .as_mut()
            .ok_or_else(|| Error::Internal("window state used before open".into()))?;
        let handles = table.upsert_many(
            &mut self.slots,
            panes
                .iter()
                .enumerate()
                .map(|(i, p)| p.map(|p| KeyRef::new(keys.groups[i], p, keys.key(i)))),
            |slots| Ok(slots.alloc()),
        )?;
        let (mut rows, mut slots) = (Vec::with_capacity(ts.len()), Vec::with_capacity(ts.len()));
        for (i, h) in handles.iter().enumerate() {
            if let Some(h) = h {
                rows.push(i as u32);
                slots.push(*table.value(*h).expect("upserted entries have values"));
            }
        }
        self.slots.update(&batch, &rows, &slots)?;
        table.maintain(&mut self.slots)?;
        if !late.is_empty() {
            out.emit_side(1, take_record_batch(&batch, &UInt32Array::from(late))?);
        }
        let mut firing = Firing::default();
        for (end, keys) in refire {
            self.fire(end, Some(&keys), &mut firing, out)?;
        }
        flush(firing, &self.keys, &mut self.slots, &self.output, out)
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
            .geo
            .ends_closing(self.panes.iter().copied(), self.fired_upto, limit);
        // One output batch per watermark, however many windows it closes
        // (unless it is very large).
        let mut firing = Firing::default();
        for e in ends {
            self.fire(e, None, &mut firing, out)?;
        }
        flush(firing, &self.keys, &mut self.slots, &self.output, out)?;
        self.fired_upto = self.fired_upto.max(limit);
        self.purge()?;
        let slots = &mut self.slots;
        self.table
            .as_mut()
            .ok_or_else(|| Error::Internal("window state used before open".into()))?
            .maintain(slots)?;
        Ok(Some(wm))
    }

    fn snapshot(&mut self, _id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        let (Some(store), Some(table)) = (&self.store, &mut self.table) else {
            return Err(Error::Internal("snapshot before open".into()));
        };
        let mut snap = store.snapshot();
        snap.add(table, &mut self.slots)?;
        let mut snap = snap.finish()?;
        let mut progress = vec![PROGRESS];
        progress.extend(encode_progress(&[self.watermark, self.fired_upto], ctx));
        let mut panes = vec![PANE_LIST];
        panes.extend(encode_times(
            &self.panes.iter().copied().collect::<Vec<_>>(),
        ));
        let mut layout = vec![LAYOUT];
        layout.extend(self.slots.layout().into_bytes());
        snap.entries = vec![progress, panes, layout];
        Ok(snap)
    }

    fn restore(&mut self, state: RestoredState, ctx: &OperatorContext) -> Result<()> {
        let mut progress = Vec::new();
        for e in &state.entries {
            match e.split_first() {
                Some((&PROGRESS, rest)) => progress.push(rest.to_vec()),
                Some((&LAYOUT, rest)) => self
                    .slots
                    .check_layout(&ctx.operator, &String::from_utf8_lossy(rest))?,
                Some((&PANE_LIST, rest)) => {
                    if rest.len() % 8 != 0 {
                        return Err(Error::Checkpoint("malformed window pane list".into()));
                    }
                    self.panes.extend(
                        rest.chunks_exact(8)
                            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))),
                    );
                }
                _ => return Err(Error::Checkpoint("unknown window state entry".into())),
            }
        }
        if let Some(t) = restored_progress(&progress, 2, ctx)? {
            self.watermark = t[0];
            self.fired_upto = t[1];
        }
        self.restored = state;
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
        let slots = Slots::new(&[count(), sum("ts")], &input).unwrap();
        let ts = DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None);
        let output: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
            Field::new("count", DataType::Int64, false),
            Field::new("sum_ts", DataType::Int64, true),
        ]));
        let mut w = PaneWindowOperator::new(
            size,
            slide,
            0,
            1,
            vec![0],
            &[DataType::Int64],
            slots,
            output,
        )
        .unwrap();
        w.open(&ctx()).unwrap();
        w
    }

    fn ctx() -> OperatorContext {
        crate::snapshot::test_ctx(0, 1)
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
            assert_eq!(
                w.table().unwrap().cached_len(),
                0,
                "entries go with their panes"
            );
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
        assert_eq!(
            w.table().unwrap().cached_len(),
            0,
            "late records leave no state"
        );
        assert_eq!(w.live_slots(), 0);
    }
}
