//! Rows holding the maximum of a column per event-time group: per tumbling
//! window (`top_by_window`, Nexmark q7's "highest bid") or per exact event
//! time (`top_by_time`, q5's "hottest auction of each window" applied to the
//! output of a window aggregate, whose event time is `window_end`). Ties are
//! all kept. Runs as a local stage at full parallelism followed by a global
//! stage at parallelism 1, so only each subtask's best rows cross the network.
//!
//! State is a table of groups — `(key group of the group's start, start,
//! subtask) → best rank and its rows` (rows in Arrow's row format) — on the
//! configured backend. The local stage's input is not partitioned by group,
//! so its table spans every key group; on restore each group's entries go
//! to one subtask by key group, and entries of several old subtasks for one
//! group are merged when the group fires.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use hashbrown::HashMap;
use sluice_engine::data::{event_times_in_range, CheckpointId, Watermark};
use sluice_engine::hash::hash_columns;
use sluice_engine::state::key_group::key_group_of;
use sluice_engine::state::store::StateStore;
use sluice_engine::state::table::{split_entry_key, BytesCodec, KeyRef, StateTable};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Error, Operator, OperatorContext, Result, Stream};

use crate::join::rows::{append, elements, RowLists};
use crate::plan_error;

const GROUPS: &str = "groups";

/// A comparable value of the ranked column.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Rank {
    Int(i64),
    Float(f64),
}

impl Rank {
    /// `tag (1 B) | value (8 B)`, the head of a stored group.
    fn encode(self, out: &mut Vec<u8>) {
        match self {
            Rank::Int(v) => {
                out.push(0);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Rank::Float(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn decode(b: &[u8]) -> Result<Rank> {
        let bad = || Error::Checkpoint("malformed top-N group".into());
        let v: [u8; 8] = b.get(1..9).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        match b[0] {
            0 => Ok(Rank::Int(i64::from_le_bytes(v))),
            1 => Ok(Rank::Float(f64::from_le_bytes(v))),
            _ => Err(bad()),
        }
    }
}

/// Keeps, per group of event time, the rows with the largest `column`.
pub struct TopOperator {
    column: usize,
    time: usize,
    /// Group width in ms: 1 groups by exact time; else tumbling windows.
    size: i64,
    append_window: bool,
    output: SchemaRef,
    rows: RowLists,
    store: Option<StateStore>,
    groups: Option<StateTable<Vec<u8>>>,
    restored: RestoredState,
    /// Group starts that may hold rows (one per group, not per row).
    starts: std::collections::BTreeSet<i64>,
    subtask: [u8; 4],
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

    fn table(&mut self) -> Result<&mut StateTable<Vec<u8>>> {
        self.groups
            .as_mut()
            .ok_or_else(|| Error::Internal("top-N used before open".into()))
    }

    fn fire(&mut self, upto: i64, out: &mut Collector) -> Result<()> {
        // Groups whose last time is at most `upto`.
        let Some(last) = upto.checked_sub(self.size - 1) else {
            return Ok(());
        };
        let ready: Vec<i64> = self.starts.range(..=last).copied().collect();
        if ready.is_empty() {
            return Ok(());
        }
        let taken = self.table()?.take_range(&mut BytesCodec, ..=last)?;
        for s in ready {
            self.starts.remove(&s);
        }
        // Entries of one group (one per old subtask after a restore) merge
        // here: the best rank wins, ties keep every row.
        let mut best: BTreeMap<i64, (Rank, Vec<&[u8]>)> = BTreeMap::new();
        for (k, v) in &taken {
            let start = split_entry_key(k).namespace;
            let rank = Rank::decode(v)?;
            let e = best.entry(start).or_insert((rank, Vec::new()));
            if rank > e.0 {
                *e = (rank, Vec::new());
            }
            if rank == e.0 {
                for el in elements(&v[9..]) {
                    e.1.push(el?.1);
                }
            }
        }
        for (start, (_, rows)) in best {
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let mut cols = self.rows.decode(rows)?;
            if self.append_window {
                cols.push(Arc::new(TimestampMillisecondArray::from(vec![start; n])) as ArrayRef);
                cols.push(
                    Arc::new(TimestampMillisecondArray::from(vec![start + self.size; n]))
                        as ArrayRef,
                );
            }
            out.emit(RecordBatch::try_new(self.output.clone(), cols)?);
        }
        Ok(())
    }
}

impl Operator for TopOperator {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.subtask = (ctx.subtask as u32).to_be_bytes();
        let restored = std::mem::take(&mut self.restored);
        let mut store = StateStore::open_unkeyed(ctx, &[GROUPS], restored)?;
        self.groups = Some(store.table(GROUPS, &mut BytesCodec)?);
        self.store = Some(store);
        Ok(())
    }

    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_in_range(&batch, self.time)?;
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
        if local.is_empty() {
            return Ok(());
        }
        let local: Vec<(i64, (Rank, Vec<u32>))> = local.into_iter().collect();
        let starts: ArrayRef = Arc::new(Int64Array::from_iter_values(local.iter().map(|l| l.0)));
        let mut hashes = Vec::new();
        hash_columns(&[starts], local.len(), &mut hashes)?;
        self.starts.extend(local.iter().map(|l| l.0));
        let subtask = self.subtask;
        let encoded: Vec<arrow_row::Rows> = local
            .iter()
            .map(|(_, (_, idx))| {
                self.rows
                    .encode(&take_record_batch(&batch, &UInt32Array::from(idx.clone()))?)
            })
            .collect::<Result<_>>()?;
        let table = self
            .groups
            .as_mut()
            .ok_or_else(|| Error::Internal("top-N used before open".into()))?;
        let hs = table.upsert_many(
            &mut BytesCodec,
            local.iter().zip(&hashes).map(|((start, _), h)| {
                Some(KeyRef::new(
                    key_group_of(*h, ctx.max_parallelism),
                    *start,
                    &subtask,
                ))
            }),
            |_| Ok(Vec::new()),
        )?;
        for (((_, (rank, _)), rows), h) in local.iter().zip(&encoded).zip(hs) {
            let Some(h) = h else { continue };
            table.update(h, &mut BytesCodec, |v, _| {
                let stored = (!v.is_empty()).then(|| Rank::decode(v)).transpose()?;
                if stored.is_none_or(|s| *rank > s) {
                    v.clear();
                    rank.encode(v);
                }
                if stored.is_none_or(|s| *rank >= s) {
                    for r in rows.iter() {
                        append(v, 0, r.data());
                    }
                }
                Ok::<(), Error>(())
            })?;
        }
        table.maintain(&mut BytesCodec)
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

    fn snapshot(&mut self, _id: CheckpointId, _ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        let (Some(store), Some(groups)) = (&self.store, &mut self.groups) else {
            return Err(Error::Internal("top-N snapshot before open".into()));
        };
        let mut snap = store.snapshot();
        snap.add(groups, &mut BytesCodec)?;
        let mut snap = snap.finish()?;
        let mut starts = self.starts.iter().copied().collect::<Vec<_>>();
        starts.insert(0, self.watermark);
        snap.entries = vec![crate::snapshot::encode_times(&starts)];
        Ok(snap)
    }

    fn restore(&mut self, state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
        // Entry: watermark, then the group starts that may hold rows.
        let mut watermark = None::<i64>;
        for e in &state.entries {
            if e.is_empty() || e.len() % 8 != 0 {
                return Err(Error::Checkpoint("malformed top-N progress entry".into()));
            }
            let vals: Vec<i64> = e
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            watermark = Some(watermark.map_or(vals[0], |w| w.min(vals[0])));
            self.starts.extend(&vals[1..]);
        }
        if let Some(w) = watermark {
            self.watermark = w;
        }
        self.restored = state;
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
    if let Err(m) = RowLists::supports(&schema) {
        stream.report(plan_error(&stream, verb, m));
        return stream;
    }
    let input_schema = schema.clone();
    let make = move |append: bool, out: SchemaRef| {
        let input_schema = input_schema.clone();
        move |_: &OperatorContext| -> Result<Box<dyn Operator>> {
            Ok(Box::new(TopOperator {
                column: col_idx,
                time,
                size,
                append_window: append,
                output: out.clone(),
                rows: RowLists::new(&input_schema)?,
                store: None,
                groups: None,
                restored: RestoredState::default(),
                starts: std::collections::BTreeSet::new(),
                subtask: [0; 4],
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
