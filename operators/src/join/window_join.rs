//! The window join (Flink's `join(..).window(..)`): rows of both inputs with
//! equal keys whose event times fall in the same tumbling or sliding window
//! are paired, once per window holding both, when the window fires (combined
//! watermark >= window end - 1). Each row is stored once, in the pane of
//! width gcd(size, slide) holding its time; windows are enumerated over
//! panes at fire time, and a pane is dropped once the last window holding it
//! fired. Rows whose windows have all fired are late and dropped.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, TimestampMillisecondArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_engine::data::{event_times_in_range, CheckpointId, Watermark};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Operator, OperatorContext, Result};
use tracing::debug;

use super::buckets::{gather, restored_side, sides_state, Buckets};
use super::keys::KeyEncoder;
use crate::snapshot::{encode_times, restored_times};

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A two-input window join (input 0 left, 1 right).
pub(crate) struct WindowJoinOperator {
    size: i64,
    slide: i64,
    keys: [Vec<usize>; 2],
    time: [usize; 2],
    widths: [usize; 2],
    encoder: KeyEncoder,
    sides: [Buckets; 2],
    output: SchemaRef,
    watermark: i64,
    /// Every window ending at or before this has fired.
    fired_upto: i64,
    late: u64,
}

impl WindowJoinOperator {
    /// Windows of `size` ms every `slide` ms (tumbling when equal); `keys`,
    /// `time` and `widths` describe the left and right inputs.
    pub(crate) fn new(
        (size, slide): (i64, i64),
        keys: [Vec<usize>; 2],
        time: [usize; 2],
        widths: [usize; 2],
        types: &[DataType],
        output: SchemaRef,
    ) -> Result<Self> {
        let pane = gcd(size, slide).max(1);
        Ok(WindowJoinOperator {
            size,
            slide,
            keys,
            time,
            widths,
            encoder: KeyEncoder::new(types)?,
            sides: [Buckets::new(pane), Buckets::new(pane)],
            output,
            watermark: i64::MIN,
            fired_upto: i64::MIN,
            late: 0,
        })
    }

    /// Rows dropped as late so far.
    #[cfg(test)]
    pub(crate) fn late_rows(&self) -> u64 {
        self.late
    }

    /// End of the last window holding time `t`.
    fn last_end(&self, t: i64) -> i64 {
        (t - t.rem_euclid(self.slide)).saturating_add(self.size)
    }

    /// Ends of every window holding the pane starting at `pane`.
    fn window_ends(&self, pane: i64) -> impl Iterator<Item = i64> + '_ {
        let width = self.sides[0].width;
        let first = self.last_end(pane);
        (0..)
            .map(move |i| first - i * self.slide)
            .take_while(move |end| *end >= pane + width)
    }

    /// Emits the pairs of window `[end - size, end)`.
    fn fire(&self, end: i64, out: &mut Collector) -> Result<()> {
        let start = end - self.size;
        let panes = |side: usize| self.sides[side].buckets.range(start..end);
        // Flatten both sides' batches in the window into numbered lists.
        let mut batches: [Vec<&RecordBatch>; 2] = [Vec::new(), Vec::new()];
        let mut right = Vec::new();
        for (_, pane) in panes(1) {
            right.push((batches[1].len(), pane));
            batches[1].extend(pane.batches.iter());
        }
        if right.is_empty() {
            return Ok(());
        }
        let (mut lrefs, mut rrefs) = (Vec::new(), Vec::new());
        for (_, lpane) in panes(0) {
            let lbase = batches[0].len();
            batches[0].extend(lpane.batches.iter());
            for (key, lrows) in lpane.index.iter() {
                for (rbase, rpane) in &right {
                    let Some(rrows) = rpane.index.get(key) else {
                        continue;
                    };
                    for (lb, lr) in lrows {
                        for (rb, rr) in rrows {
                            lrefs.push((lbase + *lb as usize, *lr as usize));
                            rrefs.push((rbase + *rb as usize, *rr as usize));
                        }
                    }
                }
            }
        }
        if lrefs.is_empty() {
            return Ok(());
        }
        let mut cols = gather(|b| batches[0][b], &lrefs, self.widths[0])?;
        cols.extend(gather(|b| batches[1][b], &rrefs, self.widths[1])?);
        let n = lrefs.len();
        cols.push(Arc::new(TimestampMillisecondArray::from(vec![start; n])) as ArrayRef);
        cols.push(Arc::new(TimestampMillisecondArray::from(vec![end; n])) as ArrayRef);
        out.emit(RecordBatch::try_new(self.output.clone(), cols)?);
        Ok(())
    }
}

impl Operator for WindowJoinOperator {
    fn snapshot(&mut self, _id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        Ok(OperatorSnapshot {
            keyed: sides_state(&self.sides, &self.keys, ctx.max_parallelism)?,
            entries: vec![encode_times(&[self.watermark, self.fired_upto])],
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
        if let Some(t) = restored_times(&state.entries, 2)? {
            self.watermark = t[0];
            self.fired_upto = t[1];
        }
        Ok(())
    }

    fn process(
        &mut self,
        input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_in_range(&batch, self.time[input])?;
        let keys = self.encoder.encode(&batch, &self.keys[input])?;
        let mut keep = Vec::with_capacity(ts.len());
        let mut late = 0u64;
        for (i, t) in ts.iter().enumerate() {
            if keys.get(i).is_none() {
                continue; // a null key joins nothing
            }
            if self.last_end(*t) - 1 <= self.watermark {
                late += 1;
            } else {
                keep.push(i as u32);
            }
        }
        if late > 0 {
            self.late += late;
            debug!(
                late,
                total = self.late,
                input,
                "window_join dropped rows whose windows all fired"
            );
        }
        self.sides[input].insert(&self.encoder, &batch, &ts, &keys, &keep)
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
        // Windows [end - size, end) with end - 1 <= t fire.
        let limit = t.saturating_add(1);
        let mut ends = BTreeSet::new();
        for side in &self.sides {
            for pane in side.buckets.range(..limit).map(|(b, _)| *b) {
                ends.extend(
                    self.window_ends(pane)
                        .filter(|e| *e > self.fired_upto && *e <= limit),
                );
            }
        }
        for end in ends {
            self.fire(end, out)?;
        }
        self.fired_upto = self.fired_upto.max(limit);
        // A pane is done when the last window holding it fired; panes are
        // sorted and their last window end grows with them.
        for side in 0..2 {
            while let Some((&pane, _)) = self.sides[side].buckets.first_key_value() {
                if self.last_end(pane) > limit {
                    break;
                }
                self.sides[side].buckets.pop_first();
            }
        }
        Ok(Some(wm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{Field, Int64Type, Schema, TimeUnit, TimestampMillisecondType};

    fn schema(names: &[&str]) -> SchemaRef {
        Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Int64, false))
                .collect::<Vec<_>>(),
        ))
    }

    fn batch(k: &[i64], ts: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            schema(&["k", "ts"]),
            vec![
                Arc::new(Int64Array::from(k.to_vec())),
                Arc::new(Int64Array::from(ts.to_vec())),
            ],
        )
        .unwrap()
    }

    fn ctx() -> OperatorContext {
        OperatorContext {
            operator: "window_join".into(),
            subtask: 0,
            parallelism: 1,
            max_parallelism: 128,
            input_schemas: vec![schema(&["k", "ts"]), schema(&["k", "ts"])],
            watermark: None,
            attempt: 0,
            checkpointing: false,
            state: Default::default(),
        }
    }

    #[test]
    fn late_rows_are_dropped_and_fired_state_is_freed() {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let out_schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("right_k", DataType::Int64, false),
            Field::new("right_ts", DataType::Int64, false),
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
        ]));
        let mut op = WindowJoinOperator::new(
            (100, 50),
            [vec![0], vec![0]],
            [1, 1],
            [2, 2],
            &[DataType::Int64],
            out_schema,
        )
        .unwrap();
        let (c, mut out) = (ctx(), Collector::default());
        op.process(0, batch(&[1, 1], &[10, 60]), &c, &mut out)
            .unwrap();
        op.process(1, batch(&[1, 2], &[70, 70]), &c, &mut out)
            .unwrap();
        // Window [-50, 50) fires: only the left row at 10 is in it.
        op.on_watermark(Watermark::EventTime(49), &c, &mut out)
            .unwrap();
        assert!(out.take_main().is_empty());
        // Window [0, 100) fires: (10, 70) and (60, 70).
        op.on_watermark(Watermark::EventTime(99), &c, &mut out)
            .unwrap();
        let fired = out.take_main();
        assert_eq!(fired.len(), 1);
        let b = &fired[0];
        let mut lts: Vec<i64> = b.column(1).as_primitive::<Int64Type>().values().to_vec();
        lts.sort();
        assert_eq!(lts, [10, 60]);
        let starts = b.column(4).as_primitive::<TimestampMillisecondType>();
        assert!(starts.values().iter().all(|s| *s == 0));
        // Pane [0, 50) was only in windows that fired: freed on both sides.
        assert_eq!(op.sides[0].buckets.keys().next(), Some(&50));
        // A row at 40 is late (its last window [0, 100) fired); one at 60 is
        // not (window [50, 150) is open) and pairs with the stored rows.
        op.process(1, batch(&[1, 1], &[40, 60]), &c, &mut out)
            .unwrap();
        assert_eq!(op.late_rows(), 1);
        op.on_watermark(Watermark::MAX, &c, &mut out).unwrap();
        let fired = out.take_main();
        let rows: usize = fired.iter().map(|b| b.num_rows()).sum();
        // Window [50, 150): left 60 x right {70, 60}.
        assert_eq!(rows, 2);
        assert!(op.sides.iter().all(|s| s.buckets.is_empty()));
    }
}
