//! The interval join (Flink's `intervalJoin(..).between(lower, upper)`):
//! a left row `l` and a right row `r` with equal keys pair when
//! `l.ts + lower <= r.ts <= l.ts + upper`. Each arriving row is matched
//! against the other side's stored rows, then stored, so every pair is
//! emitted exactly once, as soon as its second row arrives.
//!
//! Watermark `t` (no more rows with time <= t) drives everything else:
//! - rows with time <= t are late and dropped (Flink drops them too);
//! - a left row is dropped once `t > l.ts + upper`, a right row once
//!   `t > r.ts - lower` (no future row can pair with it);
//! - the output carries the left row's time, which can trail `t` by up to
//!   `upper`, so the forwarded watermark is held back to `t - max(upper, 0)`
//!   and no output row is ever late downstream.

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use hashbrown::HashMap;
use sluice_engine::data::{event_times_in_range, CheckpointId, Watermark};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Operator, OperatorContext, Result};
use tracing::debug;

use super::buckets::{gather, restored_side, sides_state, Buckets};
use super::keys::KeyEncoder;
use crate::snapshot::{encode_times, restored_times};

/// A two-input interval join (input 0 left, 1 right).
pub(crate) struct IntervalJoinOperator {
    lower: i64,
    upper: i64,
    keys: [Vec<usize>; 2],
    time: [usize; 2],
    widths: [usize; 2],
    encoder: KeyEncoder,
    sides: [Buckets; 2],
    output: SchemaRef,
    watermark: i64,
    late: u64,
}

impl IntervalJoinOperator {
    /// Pairs with `right.ts - left.ts` in `[lower, upper]`; `keys`, `time`
    /// and `widths` describe the left and right inputs.
    pub(crate) fn new(
        (lower, upper): (i64, i64),
        keys: [Vec<usize>; 2],
        time: [usize; 2],
        widths: [usize; 2],
        types: &[DataType],
        output: SchemaRef,
    ) -> Result<Self> {
        // A probe scans the buckets overlapping an interval-wide range, and
        // state is freed a bucket at a time: one interval per bucket keeps
        // both costs small (1 s minimum so point intervals do not make a
        // bucket per millisecond).
        let width = upper.saturating_sub(lower).max(1000);
        Ok(IntervalJoinOperator {
            lower,
            upper,
            keys,
            time,
            widths,
            encoder: KeyEncoder::new(types)?,
            sides: [Buckets::new(width), Buckets::new(width)],
            output,
            watermark: i64::MIN,
            late: 0,
        })
    }
}

impl Operator for IntervalJoinOperator {
    fn snapshot(&mut self, _id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        Ok(OperatorSnapshot {
            keyed: sides_state(&self.sides, &self.keys, ctx.max_parallelism)?,
            entries: vec![encode_times(&[self.watermark])],
            db: None,
        })
    }

    fn restore(&mut self, state: RestoredState, ctx: &OperatorContext) -> Result<()> {
        // Rows go back through the normal path (matches it finds were
        // emitted before the checkpoint, so the output is dropped), before
        // the watermark is restored so none of them counts as late.
        for b in &state.keyed {
            let (side, rows) = restored_side(b)?;
            self.process(side, rows, ctx, &mut Collector::default())?;
        }
        if let Some(t) = restored_times(&state.entries, 1)? {
            self.watermark = t[0];
        }
        Ok(())
    }

    fn process(
        &mut self,
        input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_in_range(&batch, self.time[input])?;
        let keys = self.encoder.encode(&batch, &self.keys[input])?;
        let other = &self.sides[1 - input];
        // Partner times relative to this row's time.
        let (lo, hi) = if input == 0 {
            (self.lower, self.upper)
        } else {
            (-self.upper, -self.lower)
        };
        let mut stored: Vec<&RecordBatch> = Vec::new();
        let mut bases: HashMap<i64, usize> = HashMap::new();
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        let mut keep = Vec::with_capacity(ts.len());
        let mut late = 0u64;
        for (i, t) in ts.iter().enumerate() {
            let Some(key) = keys.get(i) else {
                continue; // a null key joins nothing
            };
            if *t <= self.watermark {
                late += 1;
                continue;
            }
            keep.push(i as u32);
            let (from, to) = (t.saturating_add(lo), t.saturating_add(hi));
            for (start, bucket) in other.buckets.range(other.bucket_of(from)..=to) {
                let Some(rows) = bucket.index.get(key) else {
                    continue;
                };
                let base = *bases.entry(*start).or_insert_with(|| {
                    let b = stored.len();
                    stored.extend(bucket.batches.iter());
                    b
                });
                for (b, r) in rows {
                    let pt = bucket.times[*b as usize][*r as usize];
                    if pt >= from && pt <= to {
                        mine.push((0usize, i));
                        theirs.push((base + *b as usize, *r as usize));
                    }
                }
            }
        }
        if late > 0 {
            self.late += late;
            debug!(
                late,
                total = self.late,
                input,
                "interval_join dropped rows behind the watermark"
            );
        }
        if !mine.is_empty() {
            let here = gather(|_| &batch, &mine, self.widths[input])?;
            let there = gather(|b| stored[b], &theirs, self.widths[1 - input])?;
            let cols = if input == 0 {
                [here, there].concat()
            } else {
                [there, here].concat()
            };
            out.emit(RecordBatch::try_new(self.output.clone(), cols)?);
        }
        self.sides[input].insert(&self.encoder, &batch, &ts, &keys, &keep)
    }

    fn on_watermark(
        &mut self,
        wm: Watermark,
        _ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        let Some(t) = crate::advance(&mut self.watermark, wm) else {
            // Idle passes through; a stale time was already forwarded.
            return Ok(matches!(wm, Watermark::Idle).then_some(wm));
        };
        // Left rows wait for right rows up to l.ts + upper, right rows for
        // left rows up to r.ts - lower.
        self.sides[0].drop_before(t.saturating_sub(self.upper));
        self.sides[1].drop_before(t.saturating_add(self.lower));
        if t == i64::MAX {
            return Ok(Some(Watermark::MAX));
        }
        Ok(Some(Watermark::EventTime(
            t.saturating_sub(self.upper.max(0)),
        )))
    }
}
