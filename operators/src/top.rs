//! Rows holding the maximum of a column per event-time group: per tumbling
//! window (`top_by_window`, Nexmark q7's "highest bid") or per exact event
//! time (`top_by_time`, q5's "hottest auction of each window" applied to the
//! output of a window aggregate, whose event time is `window_end`). Ties are
//! all kept. Runs as a local stage at full parallelism followed by a global
//! stage at parallelism 1, so only each subtask's best rows cross the network.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{cast, concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use hashbrown::HashMap;
use sluice_engine::data::{event_times_ms, CheckpointId, Watermark};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Operator, OperatorContext, Result, Stream};

use crate::plan_error;

/// A comparable value of the ranked column.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Rank {
    Int(i64),
    Float(f64),
}

struct Group {
    best: Rank,
    rows: Vec<RecordBatch>,
}

/// Keeps, per group of event time, the rows with the largest `column`.
pub struct TopOperator {
    column: usize,
    time: usize,
    /// Group width in ms: 1 groups by exact time; else tumbling windows.
    size: i64,
    append_window: bool,
    output: SchemaRef,
    groups: BTreeMap<i64, Group>,
    watermark: i64,
}

impl TopOperator {
    fn ranks(&self, batch: &RecordBatch) -> Result<Vec<Rank>> {
        let col = batch.column(self.column);
        Ok(match col.data_type() {
            DataType::Float32 | DataType::Float64 => {
                let c = cast(col, &DataType::Float64)?;
                c.as_primitive::<Float64Type>()
                    .iter()
                    .map(|v| Rank::Float(v.unwrap_or(f64::NEG_INFINITY)))
                    .collect()
            }
            _ => {
                let c = cast(col, &DataType::Int64)?;
                c.as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| Rank::Int(v.unwrap_or(i64::MIN)))
                    .collect()
            }
        })
    }

    fn fire(&mut self, upto: i64, out: &mut Collector) -> Result<()> {
        let ready: Vec<i64> = self
            .groups
            .range(..)
            .take_while(|(s, _)| s.saturating_add(self.size - 1) <= upto)
            .map(|(s, _)| *s)
            .collect();
        for start in ready {
            let g = self.groups.remove(&start).expect("key listed above");
            let Some(first) = g.rows.first() else {
                continue;
            };
            let rows = concat_batches(&first.schema(), &g.rows)?;
            if self.append_window {
                let n = rows.num_rows();
                let mut cols = rows.columns().to_vec();
                cols.push(Arc::new(TimestampMillisecondArray::from(vec![start; n])) as ArrayRef);
                cols.push(
                    Arc::new(TimestampMillisecondArray::from(vec![start + self.size; n]))
                        as ArrayRef,
                );
                out.emit(RecordBatch::try_new(self.output.clone(), cols)?);
            } else {
                out.emit(rows);
            }
        }
        Ok(())
    }
}

impl Operator for TopOperator {
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_ms(batch.column(self.time))?;
        let ranks = self.ranks(&batch)?;
        // Best rows of this batch per group, then merged into the state.
        let mut local: HashMap<i64, (Rank, Vec<u32>)> = HashMap::new();
        for (i, (t, r)) in ts.iter().zip(&ranks).enumerate() {
            let start = t - t.rem_euclid(self.size);
            if start.saturating_add(self.size - 1) <= self.watermark {
                continue; // late: its group already fired
            }
            let e = local.entry(start).or_insert((*r, Vec::new()));
            if *r > e.0 {
                *e = (*r, Vec::new());
            }
            if *r == e.0 {
                e.1.push(i as u32);
            }
        }
        for (start, (rank, idx)) in local {
            let rows = take_record_batch(&batch, &UInt32Array::from(idx))?;
            match self.groups.get_mut(&start) {
                Some(g) if rank < g.best => {}
                Some(g) if rank == g.best => g.rows.push(rows),
                _ => {
                    self.groups.insert(
                        start,
                        Group {
                            best: rank,
                            rows: vec![rows],
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        wm: Watermark,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        if let Watermark::EventTime(t) = wm {
            self.watermark = self.watermark.max(t);
            self.fire(t, out)?;
        }
        Ok(Some(wm))
    }

    /// The kept rows, keyed by their group's start so a group stays whole
    /// when parallelism changes.
    fn snapshot(&mut self, _id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        let mut keyed = Vec::new();
        for (start, g) in &self.groups {
            for rows in &g.rows {
                let n = rows.num_rows();
                let key: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![*start; n]));
                keyed.push(sluice_engine::state::snapshot::with_key_groups(
                    rows.clone(),
                    &[key],
                    ctx.max_parallelism,
                )?);
            }
        }
        Ok(OperatorSnapshot {
            keyed,
            db: None,
            entries: vec![crate::snapshot::encode_times(&[self.watermark])],
        })
    }

    fn restore(&mut self, state: RestoredState, ctx: &OperatorContext) -> Result<()> {
        if let Some(t) = crate::snapshot::restored_times(&state.entries, 1)? {
            self.watermark = t[0];
        }
        for b in &state.keyed {
            let rows = crate::snapshot::without_key_group(b)?;
            self.process(0, rows, ctx, &mut Collector::default())?;
        }
        Ok(())
    }
}

fn add_top(stream: Stream, verb: &str, column: &str, size: i64, append_window: bool) -> Stream {
    let schema = stream.schema().clone();
    let Some(time_col) = stream.event_time().map(str::to_string) else {
        stream.report(plan_error(
            &stream,
            verb,
            format!("no watermark strategy: call .watermarks(...) before {verb}"),
        ));
        return stream;
    };
    let col_idx = match schema.index_of(column) {
        Ok(i)
            if schema.field(i).data_type().is_numeric()
                || matches!(schema.field(i).data_type(), DataType::Timestamp(_, _)) =>
        {
            i
        }
        Ok(i) => {
            stream.report(plan_error(
                &stream,
                verb,
                format!(
                    "column '{column}' has type {}; expected a number",
                    schema.field(i).data_type()
                ),
            ));
            return stream;
        }
        Err(_) => {
            stream.report(plan_error(
                &stream,
                verb,
                format!(
                    "unknown column '{column}'; the stream has {}",
                    stream.column_list()
                ),
            ));
            return stream;
        }
    };
    if size <= 0 {
        stream.report(plan_error(&stream, verb, "window size must be positive"));
        return stream;
    }
    let time = schema
        .index_of(&time_col)
        .expect("event-time column was validated when watermarks were assigned");
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    if append_window {
        for name in ["window_start", "window_end"] {
            fields.push(Field::new(
                name,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ));
        }
    }
    let output: SchemaRef = Arc::new(Schema::new(fields));
    let make = move |append: bool, out: SchemaRef| {
        move |_: &OperatorContext| -> Result<Box<dyn Operator>> {
            Ok(Box::new(TopOperator {
                column: col_idx,
                time,
                size,
                append_window: append,
                output: out.clone(),
                groups: BTreeMap::new(),
                watermark: i64::MIN,
            }))
        }
    };
    let local = stream
        .transform(
            &format!("{verb} (local)"),
            schema.clone(),
            make(false, schema.clone()),
        )
        .with_event_time(Some(time_col.clone()));
    let global = local
        .partition(sluice_engine::EdgeKind::Rebalance)
        .transform(verb, output.clone(), make(append_window, output))
        .set_parallelism(1);
    global.with_event_time(Some(if append_window {
        "window_end".into()
    } else {
        time_col
    }))
}

/// Keeps the rows with the largest value of a column per event-time group.
pub trait Top {
    /// Per tumbling window of `size` on the stream's event time, the rows
    /// whose `column` is largest (all ties), with `window_start` and
    /// `window_end` appended.
    ///
    /// ```
    /// use std::time::Duration;
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Bid { auction: i64, price: i64, ts: i64 }
    /// #[derive(Deserialize)]
    /// struct Best { auction: i64, window_start: i64 }
    ///
    /// let env = Env::new();
    /// let out = env
    ///     .from_rows("bids", vec![
    ///         Bid { auction: 1, price: 10, ts: 1_000 },
    ///         Bid { auction: 2, price: 30, ts: 4_000 },
    ///         Bid { auction: 3, price: 30, ts: 5_000 },
    ///         Bid { auction: 1, price: 5, ts: 12_000 },
    ///     ])
    ///     .watermarks(WatermarkStrategy::ascending("ts"))
    ///     .top_by_window(Duration::from_secs(10), "price")
    ///     .collect();
    /// env.execute()?;
    /// let mut best: Vec<_> = out.rows::<Best>()?.into_iter().map(|b| (b.window_start, b.auction)).collect();
    /// best.sort();
    /// assert_eq!(best, [(0, 2), (0, 3), (10_000, 1)], "ties are all kept");
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn top_by_window(self, size: Duration, column: &str) -> Stream;

    /// Among rows with the same event time (e.g. a window aggregate's output,
    /// whose event time is `window_end`), the rows whose `column` is largest.
    ///
    /// ```
    /// use std::time::Duration;
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Bid { auction: i64, ts: i64 }
    /// #[derive(Deserialize)]
    /// struct Hot { auction: i64, window_start: i64, count: i64 }
    ///
    /// let env = Env::new();
    /// let out = env
    ///     .from_rows("bids", vec![
    ///         Bid { auction: 1, ts: 1_000 },
    ///         Bid { auction: 1, ts: 2_000 },
    ///         Bid { auction: 2, ts: 3_000 },
    ///         Bid { auction: 2, ts: 11_000 },
    ///     ])
    ///     .watermarks(WatermarkStrategy::ascending("ts"))
    ///     .key_by(["auction"])
    ///     .window(WindowSpec::tumbling(Duration::from_secs(10)))
    ///     .aggregate([count()])
    ///     .top_by_time("count") // the most bid-on auction of each window
    ///     .collect();
    /// env.execute()?;
    /// let mut hot: Vec<_> =
    ///     out.rows::<Hot>()?.into_iter().map(|h| (h.window_start, h.auction, h.count)).collect();
    /// hot.sort();
    /// assert_eq!(hot, [(0, 1, 2), (10_000, 2, 1)]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn top_by_time(self, column: &str) -> Stream;
}

impl Top for Stream {
    fn top_by_window(self, size: Duration, column: &str) -> Stream {
        add_top(self, "top_by_window", column, size.as_millis() as i64, true)
    }

    fn top_by_time(self, column: &str) -> Stream {
        add_top(self, "top_by_time", column, 1, false)
    }
}
