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
use sluice_engine::data::{event_times_in_range, CheckpointId, Watermark};
use sluice_engine::state::table::{BytesCodec, KeyRef};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Error, Operator, OperatorContext, Result};
use tracing::debug;

use super::rows::{append, elements, joined};
use super::sides::Sides;
use crate::snapshot::{encode_progress, restored_progress};

/// A two-input interval join (input 0 left, 1 right).
pub(crate) struct IntervalJoinOperator {
    lower: i64,
    upper: i64,
    /// Width of the time buckets rows are stored in (the namespaces).
    width: i64,
    time: [usize; 2],
    sides: Sides,
    output: SchemaRef,
    watermark: i64,
    /// Per side, the lowest bucket that may still hold rows.
    floors: [i64; 2],
    late: u64,
}

impl IntervalJoinOperator {
    /// Pairs with `right.ts - left.ts` in `[lower, upper]`; `keys`, `time`
    /// and `inputs` describe the left and right inputs.
    pub(crate) fn new(
        (lower, upper): (i64, i64),
        keys: [Vec<usize>; 2],
        time: [usize; 2],
        inputs: [SchemaRef; 2],
        types: &[DataType],
        output: SchemaRef,
    ) -> Result<Self> {
        // A probe looks up the buckets overlapping an interval-wide range,
        // and state is freed a bucket at a time: one interval per bucket
        // keeps both costs small (1 s minimum so point intervals do not
        // make a bucket per millisecond).
        let width = upper.saturating_sub(lower).max(1000);
        Ok(IntervalJoinOperator {
            lower,
            upper,
            width,
            time,
            sides: Sides::new(keys, types, inputs)?,
            output,
            watermark: i64::MIN,
            floors: [i64::MIN; 2],
            late: 0,
        })
    }

    fn bucket_of(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.width)
    }

    /// Drops side `side`'s buckets whose every row is before `end`.
    fn drop_before(&mut self, side: usize, end: i64) -> Result<()> {
        let last = end.saturating_sub(self.width);
        if last < self.floors[side] {
            return Ok(());
        }
        let floor = self.floors[side];
        self.sides.tables()?[side].remove_range(&mut BytesCodec, floor..=last)?;
        self.floors[side] = last.saturating_add(1);
        Ok(())
    }
}

impl Operator for IntervalJoinOperator {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.sides.open(ctx)
    }

    fn snapshot(&mut self, _id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        self.sides
            .snapshot(vec![encode_progress(&[self.watermark], ctx)])
    }

    fn restore(&mut self, state: RestoredState, ctx: &OperatorContext) -> Result<()> {
        if let Some(t) = restored_progress(&state.entries, 1, ctx)? {
            self.watermark = t[0];
        }
        self.sides.restore(state);
        Ok(())
    }

    fn process(
        &mut self,
        input: usize,
        batch: RecordBatch,
        ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_in_range(&batch, self.time[input])?;
        let keys = self.sides.keys[input].encode(&batch, ctx.max_parallelism)?;
        // Partner times relative to this row's time.
        let (lo, hi) = if input == 0 {
            (self.lower, self.upper)
        } else {
            (-self.upper, -self.lower)
        };
        let mut own = Vec::with_capacity(ts.len());
        let mut probes: Vec<(usize, i64)> = Vec::new();
        let mut late = 0u64;
        for (i, t) in ts.iter().enumerate() {
            if keys.is_null(i) {
                own.push(None); // a null key joins nothing
                continue;
            }
            if *t <= self.watermark {
                late += 1;
                own.push(None);
                continue;
            }
            own.push(Some(KeyRef::new(
                keys.groups[i],
                self.bucket_of(*t),
                keys.key(i),
            )));
            let (from, to) = (t.saturating_add(lo), t.saturating_add(hi));
            let mut b = self.bucket_of(from);
            while b <= to {
                probes.push((i, b));
                b = b.saturating_add(self.width);
                if b == i64::MAX {
                    break;
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
        let rows = &self.sides.rows;
        let [left, right] = self
            .sides
            .tables
            .as_mut()
            .ok_or_else(|| Error::Internal("interval join used before open".into()))?;
        let (mine, other) = if input == 0 {
            (left, right)
        } else {
            (right, left)
        };
        let found = other.get_many(
            &mut BytesCodec,
            probes
                .iter()
                .map(|(i, b)| Some(KeyRef::new(keys.groups[*i], *b, keys.key(*i)))),
        )?;
        let (mut here, mut there): (Vec<u32>, Vec<&[u8]>) = (Vec::new(), Vec::new());
        for ((i, _), h) in probes.iter().zip(&found) {
            let Some(list) = h.and_then(|h| other.value(h)) else {
                continue;
            };
            let (from, to) = (ts[*i].saturating_add(lo), ts[*i].saturating_add(hi));
            for e in elements(list) {
                let (pt, row) = e?;
                if pt >= from && pt <= to {
                    here.push(*i as u32);
                    there.push(row);
                }
            }
        }
        if !here.is_empty() {
            let idx = arrow::array::UInt32Array::from(here);
            let here_cols = batch
                .columns()
                .iter()
                .map(|c| arrow::compute::take(c, &idx, None))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let there_cols = rows[1 - input].decode(there)?;
            let parts = if input == 0 {
                vec![here_cols, there_cols]
            } else {
                vec![there_cols, here_cols]
            };
            out.emit(joined(&self.output, parts)?);
        }
        let encoded = rows[input].encode(&batch)?;
        let stored = mine.upsert_many(&mut BytesCodec, own, |_| Ok(Vec::new()))?;
        for (i, h) in stored.into_iter().enumerate() {
            if let Some(h) = h {
                mine.update(h, &mut BytesCodec, |list, _| {
                    append(list, ts[i], encoded.row(i).data())
                });
            }
        }
        self.sides.maintain()
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
        self.drop_before(0, t.saturating_sub(self.upper))?;
        self.drop_before(1, t.saturating_add(self.lower))?;
        self.sides.maintain()?;
        if t == i64::MAX {
            return Ok(Some(Watermark::MAX));
        }
        Ok(Some(Watermark::EventTime(
            t.saturating_sub(self.upper.max(0)),
        )))
    }
}
