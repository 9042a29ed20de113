//! Watermark bookkeeping: per-split generation at sources (bounded
//! out-of-orderness, idleness), the minimum over input channels at every
//! task, and the operator that assigns watermarks mid-stream.

use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::data::{event_times_ms, invalid_event_times, Watermark};
use crate::error::{Error, Result};
use crate::graph::WatermarkStrategy;
use crate::operator::{Collector, Operator, OperatorContext};

/// Generates watermarks for the splits of one source subtask.
#[derive(Debug)]
pub struct SplitWatermarks {
    strategy: WatermarkStrategy,
    column: usize,
    max_ts: Vec<Option<i64>>,
    last_active: Vec<Instant>,
    finished: Vec<bool>,
    emitted: Option<Watermark>,
    /// When the last watermark went out (for the emission interval).
    emitted_at: Option<Instant>,
}

impl SplitWatermarks {
    /// Tracks `splits` splits of a source with `schema`.
    pub fn new(strategy: WatermarkStrategy, schema: &SchemaRef, splits: usize) -> Result<Self> {
        let column = schema.index_of(&strategy.column).map_err(|_| {
            Error::plan(
                "watermarks",
                format!("unknown column '{}'", strategy.column),
            )
        })?;
        let now = Instant::now();
        Ok(SplitWatermarks {
            strategy,
            column,
            max_ts: vec![None; splits.max(1)],
            last_active: vec![now; splits.max(1)],
            finished: vec![false; splits.max(1)],
            emitted: None,
            emitted_at: None,
        })
    }

    /// Notes a batch from `split`.
    pub fn observe(&mut self, split: usize, batch: &RecordBatch) -> Result<()> {
        if split >= self.max_ts.len() {
            self.max_ts.resize(split + 1, None);
            self.last_active.resize(split + 1, Instant::now());
            self.finished.resize(split + 1, false);
        }
        let ts = event_times_ms(batch.column(self.column))?;
        if let Some(m) = ts.iter().max() {
            let cur = &mut self.max_ts[split];
            *cur = Some(cur.map_or(*m, |c| c.max(*m)));
        }
        self.last_active[split] = Instant::now();
        Ok(())
    }

    /// Rows of `batch` whose event time no operator can process (null, or
    /// outside [`crate::data::EVENT_TIME_RANGE`]), with why. They must not
    /// reach [`SplitWatermarks::observe`]: a time at `i64::MAX` would end
    /// event time for the whole job.
    pub fn invalid_rows(&self, batch: &RecordBatch) -> Result<Vec<(usize, String)>> {
        invalid_event_times(batch.column(self.column), &self.strategy.column)
    }

    /// Split `split` has no more records: it no longer holds time back.
    pub fn finish(&mut self, split: usize) {
        if split < self.finished.len() {
            self.finished[split] = true;
        }
    }

    /// The watermark to emit now, if it differs from the last one emitted
    /// and the strategy's emission interval has passed since then.
    pub fn poll(&mut self) -> Option<Watermark> {
        let now = Instant::now();
        let interval = self.strategy.emit_interval;
        if self
            .emitted_at
            .is_some_and(|at| now.duration_since(at) < interval)
        {
            return None;
        }
        let idle = |i: usize| {
            self.strategy
                .idle_timeout
                .is_some_and(|t| now.duration_since(self.last_active[i]) >= t)
        };
        let mut min: Option<i64> = None;
        let mut any_active = false;
        for i in 0..self.max_ts.len() {
            if idle(i) || self.finished[i] {
                continue;
            }
            any_active = true;
            // A split that has produced nothing yet holds time at its minimum.
            let w = match self.max_ts[i] {
                Some(m) => m
                    .saturating_sub(self.strategy.max_out_of_orderness_ms)
                    .saturating_sub(1),
                None => return None,
            };
            min = Some(min.map_or(w, |m: i64| m.min(w)));
        }
        if !any_active && self.finished.iter().all(|f| *f) {
            // Every split ended: the source's own end sends the final watermark.
            return None;
        }
        let wm = match (any_active, min) {
            (false, _) => Watermark::Idle,
            (true, Some(m)) => Watermark::EventTime(m),
            (true, None) => return None,
        };
        let advance = match (self.emitted, wm) {
            (Some(Watermark::EventTime(old)), Watermark::EventTime(new)) => new > old,
            (old, new) => old != Some(new),
        };
        if advance {
            self.emitted = Some(wm);
            self.emitted_at = Some(now);
            Some(wm)
        } else {
            None
        }
    }

    /// How often the source loop should check idleness while nothing arrives.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.strategy.idle_timeout
    }
}

/// The minimum watermark over a task's input channels.
#[derive(Debug)]
pub struct InputWatermarks {
    channels: Vec<Option<Watermark>>,
    ended: Vec<bool>,
    current: Option<Watermark>,
    last_event_time: Option<i64>,
}

impl InputWatermarks {
    /// Tracks `n` input channels.
    pub fn new(n: usize) -> Self {
        InputWatermarks {
            channels: vec![None; n],
            ended: vec![false; n],
            current: None,
            last_event_time: None,
        }
    }

    /// Channel `c` reported `wm`; returns the combined watermark if it advanced
    /// (or changed between idle and active).
    pub fn update(&mut self, c: usize, wm: Watermark) -> Option<Watermark> {
        self.channels[c] = Some(wm);
        self.recompute()
    }

    /// Channel `c` ended: it no longer holds time back. When every channel
    /// ended, time jumps to the end.
    pub fn end(&mut self, c: usize) -> Option<Watermark> {
        self.ended[c] = true;
        self.recompute()
    }

    fn recompute(&mut self) -> Option<Watermark> {
        let mut min: Option<i64> = None;
        let mut all_ended = true;
        for (w, ended) in self.channels.iter().zip(&self.ended) {
            if *ended {
                continue;
            }
            all_ended = false;
            match w {
                None => return None,
                Some(Watermark::Idle) => {}
                Some(Watermark::EventTime(t)) => min = Some(min.map_or(*t, |m| m.min(*t))),
            }
        }
        if all_ended {
            min = Some(i64::MAX);
        }
        let new = min.map_or(Watermark::Idle, Watermark::EventTime);
        let changed = match (self.current, new) {
            (Some(Watermark::EventTime(old)), Watermark::EventTime(t)) => t > old,
            // Going idle → active must not move time backwards.
            (Some(Watermark::Idle), Watermark::EventTime(t)) => {
                self.last_event_time.is_none_or(|old| t > old)
            }
            (old, n) => old != Some(n),
        };
        if changed {
            if let Watermark::EventTime(t) = new {
                self.last_event_time = Some(t);
            }
            self.current = Some(new);
            Some(new)
        } else {
            None
        }
    }
}

/// Assigns watermarks in the middle of a stream (when the DSL's
/// `assign_watermarks` does not follow a source directly). The subtask is
/// one split; upstream watermarks are replaced by its own.
pub struct WatermarkOperator {
    gen: SplitWatermarks,
}

impl WatermarkOperator {
    /// An assigner for input `schema`.
    pub fn new(strategy: WatermarkStrategy, schema: &SchemaRef) -> Result<Self> {
        Ok(WatermarkOperator {
            gen: SplitWatermarks::new(strategy, schema, 1)?,
        })
    }
}

impl Operator for WatermarkOperator {
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        // Mid-stream there is no source whose bad-record policy could take
        // these rows: they fail the job, naming the first one.
        let bad = self.gen.invalid_rows(&batch)?;
        if let Some((row, why)) = bad.first() {
            return Err(Error::Decode(format!(
                "{} of {} records cannot be processed (row {row}: {why}); filter them out before \
                 assigning watermarks, or assign watermarks on the source, whose bad-record policy applies",
                bad.len(),
                batch.num_rows()
            )));
        }
        self.gen.observe(0, &batch)?;
        out.emit(batch);
        if let Some(wm) = self.gen.poll() {
            out.emit_watermark(wm);
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        wm: Watermark,
        _ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        // Upstream time is replaced by ours, except the final watermark that
        // closes every window at the end of a bounded input.
        if wm == Watermark::MAX {
            return Ok(Some(wm));
        }
        Ok(self.gen.poll())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_channels_and_idle_channels_do_not_hold_time() {
        let mut w = InputWatermarks::new(3);
        assert_eq!(w.update(0, Watermark::EventTime(10)), None);
        assert_eq!(w.update(1, Watermark::EventTime(5)), None);
        assert_eq!(w.update(2, Watermark::Idle), Some(Watermark::EventTime(5)));
        assert_eq!(
            w.update(1, Watermark::EventTime(20)),
            Some(Watermark::EventTime(10))
        );
        assert_eq!(w.update(0, Watermark::Idle), Some(Watermark::EventTime(20)));
        assert_eq!(w.update(1, Watermark::Idle), Some(Watermark::Idle));
        // back from idle but behind the last time: must not regress
        assert_eq!(w.update(2, Watermark::EventTime(15)), None);
        assert_eq!(
            w.update(2, Watermark::EventTime(25)),
            Some(Watermark::EventTime(25))
        );
        // the only active channel ends while others idle: idle, not the end of time
        assert_eq!(w.end(2), Some(Watermark::Idle));
        assert_eq!(w.end(0), None);
        assert_eq!(w.end(1), Some(Watermark::MAX));
    }

    #[test]
    fn finished_splits_stop_holding_time() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![Field::new("ts", DataType::Int64, false)]));
        let batch = |t: i64| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![t]))]).unwrap()
        };
        let strategy = WatermarkStrategy::bounded_out_of_orderness("ts", Duration::from_millis(10));
        let mut g = SplitWatermarks::new(strategy, &schema, 2).unwrap();
        g.observe(0, &batch(100)).unwrap();
        assert_eq!(g.poll(), None, "split 1 has not spoken yet");
        g.observe(1, &batch(500)).unwrap();
        assert_eq!(g.poll(), Some(Watermark::EventTime(89)));
        g.finish(0);
        assert_eq!(g.poll(), Some(Watermark::EventTime(489)));
        g.finish(1);
        assert_eq!(g.poll(), None, "the end of input sends the final watermark");
    }

    #[test]
    fn an_emission_interval_holds_watermarks_back_until_it_passes() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![Field::new("ts", DataType::Int64, false)]));
        let batch = |t: i64| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![t]))]).unwrap()
        };
        let every = Duration::from_millis(50);
        let strategy = WatermarkStrategy::ascending("ts").emit_every(every);
        let mut g = SplitWatermarks::new(strategy, &schema, 1).unwrap();
        g.observe(0, &batch(100)).unwrap();
        assert_eq!(
            g.poll(),
            Some(Watermark::EventTime(99)),
            "the first goes out at once"
        );
        g.observe(0, &batch(200)).unwrap();
        assert_eq!(g.poll(), None, "held back within the interval");
        g.observe(0, &batch(300)).unwrap();
        assert_eq!(g.poll(), None);
        std::thread::sleep(every);
        assert_eq!(
            g.poll(),
            Some(Watermark::EventTime(299)),
            "the newest, once it passed"
        );
        assert_eq!(g.poll(), None);

        // Without an interval, every advance goes out.
        let mut g = SplitWatermarks::new(WatermarkStrategy::ascending("ts"), &schema, 1).unwrap();
        for t in [100, 200, 300] {
            g.observe(0, &batch(t)).unwrap();
            assert_eq!(g.poll(), Some(Watermark::EventTime(t - 1)));
        }
    }

    #[test]
    fn ended_channels_release_time() {
        let mut w = InputWatermarks::new(2);
        w.update(0, Watermark::EventTime(7));
        assert_eq!(w.end(1), Some(Watermark::EventTime(7)));
        assert_eq!(w.end(0), Some(Watermark::MAX));
    }
}
