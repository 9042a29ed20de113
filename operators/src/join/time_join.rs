//! Event-time joins: the windowed join (pairs whose rows fall in the same
//! tumbling or sliding window, emitted when the window fires) and the
//! interval join (right.ts within [left.ts + lower, left.ts + upper],
//! emitted as soon as both rows are there). State lives in time buckets and
//! is dropped as the watermark passes.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, TimestampMillisecondArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_row::{RowConverter, SortField};
use sluice_engine::data::{event_times_ms, Watermark};
use sluice_engine::{Collector, Operator, OperatorContext, Result};
use tracing::debug;

use super::buckets::{gather, Buckets};

/// Which pairs a time join produces.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    Window { size: i64, slide: i64 },
    Interval { lower: i64, upper: i64 },
}

/// A two-input event-time join (input 0 left, 1 right).
pub struct TimeJoinOperator {
    mode: Mode,
    keys: [Vec<usize>; 2],
    time: [usize; 2],
    widths: [usize; 2],
    converter: RowConverter,
    sides: [Buckets; 2],
    output: SchemaRef,
    watermark: i64,
    fired_upto: i64,
    late: u64,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl TimeJoinOperator {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        mode: Mode,
        keys: [Vec<usize>; 2],
        time: [usize; 2],
        widths: [usize; 2],
        types: Vec<DataType>,
        output: SchemaRef,
    ) -> Result<Self> {
        let width = match mode {
            Mode::Window { size, slide } => gcd(size, slide),
            Mode::Interval { lower, upper } => (upper - lower).max(1000),
        };
        Ok(TimeJoinOperator {
            mode,
            keys,
            time,
            widths,
            converter: RowConverter::new(types.into_iter().map(SortField::new).collect())?,
            sides: [Buckets::new(width), Buckets::new(width)],
            output,
            watermark: i64::MIN,
            fired_upto: i64::MIN,
            late: 0,
        })
    }

    /// Emits pairs; `refs[side]` are (batch, row) into `batches[side]`.
    fn emit(
        &self,
        batches: [&[&RecordBatch]; 2],
        refs: [&[(usize, usize)]; 2],
        window: Option<(i64, i64)>,
        out: &mut Collector,
    ) -> Result<()> {
        if refs[0].is_empty() {
            return Ok(());
        }
        let mut cols = gather(batches[0], refs[0], self.widths[0])?;
        cols.extend(gather(batches[1], refs[1], self.widths[1])?);
        if let Some((s, e)) = window {
            let n = refs[0].len();
            cols.push(Arc::new(TimestampMillisecondArray::from(vec![s; n])) as ArrayRef);
            cols.push(Arc::new(TimestampMillisecondArray::from(vec![e; n])) as ArrayRef);
        }
        out.emit(RecordBatch::try_new(self.output.clone(), cols)?);
        Ok(())
    }

    fn window_ends(&self, bucket: i64, size: i64, slide: i64) -> Vec<i64> {
        let pane = self.sides[0].width;
        let last = bucket - bucket.rem_euclid(slide);
        let mut v = Vec::new();
        let mut s = last;
        while s + size >= bucket + pane {
            v.push(s + size);
            s -= slide;
        }
        v
    }

    fn fire_window(&self, end: i64, size: i64, out: &mut Collector) -> Result<()> {
        let start = end - size;
        let mut lb: Vec<&RecordBatch> = Vec::new();
        let mut rb: Vec<&RecordBatch> = Vec::new();
        let (mut lr, mut rr) = (Vec::new(), Vec::new());
        let right: Vec<_> = self.sides[1].buckets.range(start..end).collect();
        let mut right_base = Vec::new();
        for (_, b) in &right {
            right_base.push(rb.len());
            rb.extend(b.batches.iter());
        }
        for (_, lbucket) in self.sides[0].buckets.range(start..end) {
            let base = lb.len();
            lb.extend(lbucket.batches.iter());
            for (key, lrows) in &lbucket.index {
                for (ri, (_, rbucket)) in right.iter().enumerate() {
                    if let Some(rrows) = rbucket.index.get(key) {
                        for l in lrows {
                            for r in rrows {
                                lr.push((base + l.0 as usize, l.1 as usize));
                                rr.push((right_base[ri] + r.0 as usize, r.1 as usize));
                            }
                        }
                    }
                }
            }
        }
        self.emit([&lb, &rb], [&lr, &rr], Some((start, end)), out)
    }
}

impl Operator for TimeJoinOperator {
    fn process(
        &mut self,
        input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_ms(batch.column(self.time[input]))?;
        let cols: Vec<ArrayRef> = self.keys[input]
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        let keys = self.converter.convert_columns(&cols)?;
        let mut keep = Vec::with_capacity(ts.len());
        match self.mode {
            Mode::Window { size, slide } => {
                for (i, t) in ts.iter().enumerate() {
                    let last_end = t - t.rem_euclid(slide) + size;
                    if last_end.saturating_sub(1) <= self.watermark {
                        self.late += 1;
                    } else {
                        keep.push(i as u32);
                    }
                }
            }
            Mode::Interval { lower, upper } => {
                // Match against the other side's stored rows, then store.
                let other = &self.sides[1 - input];
                let (lo, hi) = if input == 0 {
                    (lower, upper)
                } else {
                    (-upper, -lower)
                };
                let mut ob: Vec<&RecordBatch> = Vec::new();
                let mut bases = std::collections::HashMap::new();
                let (mut mine, mut theirs) = (Vec::new(), Vec::new());
                for (i, t) in ts.iter().enumerate() {
                    if *t < self.watermark {
                        self.late += 1;
                        continue;
                    }
                    keep.push(i as u32);
                    let (from, to) = (t + lo, t + hi);
                    let key = keys.row(i);
                    for (bstart, bucket) in other.buckets.range(other.bucket_of(from)..=to) {
                        let Some(rows) = bucket.index.get(key.as_ref()) else {
                            continue;
                        };
                        let base = *bases.entry(*bstart).or_insert_with(|| {
                            let b = ob.len();
                            ob.extend(bucket.batches.iter());
                            b
                        });
                        for (b, r) in rows {
                            let rt = bucket.times[*b as usize][*r as usize];
                            if rt >= from && rt <= to {
                                mine.push((0usize, i));
                                theirs.push((base + *b as usize, *r as usize));
                            }
                        }
                    }
                }
                let here = [&batch];
                if input == 0 {
                    self.emit([&here, &ob], [&mine, &theirs], None, out)?;
                } else {
                    self.emit([&ob, &here], [&theirs, &mine], None, out)?;
                }
            }
        }
        self.sides[input].insert(&batch, &ts, &keys, &keep)?;
        Ok(())
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
        match self.mode {
            Mode::Window { size, slide } => {
                let limit = t.saturating_add(1);
                let mut ends = BTreeSet::new();
                for side in &self.sides {
                    for b in side.buckets.range(..limit).map(|(b, _)| *b) {
                        ends.extend(
                            self.window_ends(b, size, slide)
                                .into_iter()
                                .filter(|e| *e > self.fired_upto && *e <= limit),
                        );
                    }
                }
                for e in ends {
                    self.fire_window(e, size, out)?;
                }
                self.fired_upto = self.fired_upto.max(limit);
                // A pane is done when the last window containing it fired.
                let last_needed = |b: i64| b - b.rem_euclid(slide) + size;
                for side in &mut self.sides {
                    let done: Vec<i64> = side
                        .buckets
                        .keys()
                        .copied()
                        .take_while(|b| last_needed(*b) <= limit)
                        .collect();
                    for b in done {
                        side.buckets.remove(&b);
                    }
                }
            }
            Mode::Interval { lower, upper } => {
                // Left rows wait for right rows up to t + upper, right rows for left rows up to t - lower.
                self.sides[0].drop_until(t.saturating_sub(upper));
                self.sides[1].drop_until(t.saturating_add(lower));
            }
        }
        if t == i64::MAX && self.late > 0 {
            debug!(late = self.late, "time join dropped late rows");
        }
        Ok(Some(wm))
    }
}
