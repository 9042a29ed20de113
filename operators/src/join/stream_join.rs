//! The unbounded inner join (symmetric hash join): each side keeps every row
//! it received, per key; an arriving batch is matched against the other
//! side's rows of its keys (one batched lookup), then stored. Each pair is
//! therefore emitted once, by whichever of its two rows arrived second.
//! State grows with the input (on RocksDB it may outgrow memory), unless
//! the join has a TTL: then each stored row carries its expiry (the time
//! field of its list element; 0 for a row stored without a TTL, which the
//! first sweep stamps), expired rows never match, and a sweep every
//! quarter TTL (at least a second) of the TTL's time deletes them.

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_engine::data::CheckpointId;
use sluice_engine::state::table::{split_entry_key, BytesCodec, KeyRef, StateTable};
use sluice_engine::state::ttl::{self, StateTtl};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Operator, OperatorContext, Result, Watermark};

use super::rows::{append, elements, joined};
use super::sides::Sides;

/// Unbounded inner equi-join of input 0 (left) and input 1 (right).
pub(crate) struct StreamJoinOperator {
    sides: Sides,
    output: SchemaRef,
    ttl: Option<StateTtl>,
    /// The join's watermark (the clock of an event-time TTL).
    watermark: i64,
    /// When (in the TTL's time) the next sweep is due.
    next_sweep: Option<i64>,
}

impl StreamJoinOperator {
    /// A join of left columns `keys[0]` = right columns `keys[1]` (of
    /// `types`); `inputs` are the left and right schemas.
    pub(crate) fn new(
        keys: [Vec<usize>; 2],
        inputs: [SchemaRef; 2],
        types: &[DataType],
        output: SchemaRef,
        ttl: Option<StateTtl>,
    ) -> Result<Self> {
        Ok(StreamJoinOperator {
            sides: Sides::new(keys, types, inputs)?,
            output,
            ttl,
            watermark: i64::MIN,
            next_sweep: None,
        })
    }

    /// "now" in the TTL's time (`None` without a TTL; `i64::MIN` in event
    /// time before the first watermark).
    fn now(&self) -> Option<i64> {
        Some(self.ttl?.now(self.watermark))
    }

    /// Sweeps both sides when a sweep is due.
    fn sweep(&mut self) -> Result<()> {
        let (Some(ttl), Some(now)) = (self.ttl, self.now()) else {
            return Ok(());
        };
        if now == i64::MIN {
            return Ok(()); // event time before the first watermark
        }
        match self.next_sweep {
            Some(due) if now < due => return Ok(()),
            None => {
                self.next_sweep = Some(now.saturating_add(ttl.sweep_every()));
                return Ok(());
            }
            Some(_) => {}
        }
        self.next_sweep = Some(now.saturating_add(ttl.sweep_every()));
        for table in self.sides.tables()?.iter_mut() {
            sweep_rows(table, now, ttl.expiry(now))?;
        }
        Ok(())
    }
}

/// Whether a stored row with expiry `t` is live at `now` (0: stored
/// without a TTL, live until a sweep stamps it; likewise unaged rows).
fn live(t: i64, now: Option<i64>) -> bool {
    now.is_none_or(|now| t == 0 || ttl::is_live(t, now))
}

/// Drops the rows expired at `now` from every list of `table` (a list left
/// empty is deleted) and stamps rows stored without a TTL with `stamp`.
fn sweep_rows(table: &mut StateTable<Vec<u8>>, now: i64, stamp: i64) -> Result<()> {
    let mut changed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    table.scan(&mut BytesCodec, .., |_, e| {
        let mut kept = Vec::with_capacity(e.value.len());
        let mut dirty = false;
        for el in elements(e.value) {
            let (t, row) = el?;
            match t {
                0 | ttl::UNAGED => {
                    append(&mut kept, stamp, row);
                    dirty = true;
                }
                t if !ttl::is_live(t, now) => dirty = true,
                t => append(&mut kept, t, row),
            }
        }
        if dirty {
            changed.push((e.key.to_vec(), kept));
        }
        Ok(())
    })?;
    for (k, kept) in changed {
        let at = split_entry_key(&k);
        if kept.is_empty() {
            table.delete(&mut BytesCodec, at)?;
        } else {
            table.put(&mut BytesCodec, at, kept)?;
        }
    }
    Ok(())
}

impl Operator for StreamJoinOperator {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.sides.open(ctx)
    }

    fn snapshot(&mut self, _id: CheckpointId, _ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        self.sides.snapshot(Vec::new())
    }

    fn restore(&mut self, state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
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
        let now = self.now();
        let expiry = match (self.ttl, now) {
            (Some(ttl), Some(now)) => ttl.expiry(now),
            _ => 0,
        };
        let keys = self.sides.keys[input].encode(&batch, ctx.max_parallelism)?;
        let at = |i: usize| (!keys.is_null(i)).then(|| KeyRef::new(keys.groups[i], 0, keys.key(i)));
        let n = batch.num_rows();
        let rows = &self.sides.rows;
        let [left, right] = self
            .sides
            .tables
            .as_mut()
            .ok_or_else(|| sluice_engine::Error::Internal("join used before open".into()))?;
        let (mine, other) = if input == 0 {
            (left, right)
        } else {
            (right, left)
        };
        let found = other.get_many(&mut BytesCodec, (0..n).map(at))?;
        let mut here: Vec<u32> = Vec::new();
        let mut there: Vec<&[u8]> = Vec::new();
        for (i, h) in found.iter().enumerate() {
            let Some(list) = h.and_then(|h| other.value(h)) else {
                continue;
            };
            for e in elements(list) {
                let (t, row) = e?;
                if live(t, now) {
                    here.push(i as u32);
                    there.push(row);
                }
            }
        }
        if !here.is_empty() {
            let idx = UInt32Array::from(here);
            let here_cols: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|c| take(c, &idx, None))
                .collect::<std::result::Result<_, _>>()?;
            let there_cols = rows[1 - input].decode(there)?;
            let parts = if input == 0 {
                vec![here_cols, there_cols]
            } else {
                vec![there_cols, here_cols]
            };
            out.emit(joined(&self.output, parts)?);
        }
        let encoded = rows[input].encode(&batch)?;
        let stored = mine.upsert_many(&mut BytesCodec, (0..n).map(at), |_| Ok(Vec::new()))?;
        for (i, h) in stored.into_iter().enumerate() {
            if let Some(h) = h {
                mine.update(h, &mut BytesCodec, |list, _| {
                    append(list, expiry, encoded.row(i).data())
                });
            }
        }
        self.sweep()?;
        self.sides.maintain()
    }

    fn on_watermark(
        &mut self,
        wm: Watermark,
        _ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        if let Watermark::EventTime(t) = wm {
            self.watermark = self.watermark.max(t);
        }
        Ok(Some(wm))
    }
}
