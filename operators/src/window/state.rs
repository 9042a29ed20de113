//! State shared by the window operators: slot allocation over the
//! columnar accumulators (and, as the state tables' codec, accumulator
//! state to bytes and back), and output assembly.
//!
//! Schema evolution: a stored slot is `number of aggregates (2 B) | Arrow
//! row format of their state`, so aggregates added at the end of a
//! window's list keep the restored state of the others (the new ones start
//! empty at the restore: they aggregate only what arrives after it). Any
//! other change to the list is refused on restore (see [`Slots::layout`]).

use std::sync::Arc;

use arrow::array::{ArrayRef, TimestampMillisecondArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_row::{RowConverter, SortField};
use hashbrown::HashMap;
use sluice_engine::state::table::ValueCodec;
use sluice_engine::{Error, Result};

use crate::aggregate::{Accumulator, AggregateExpr};

/// Accumulator slots: one per (key, window or pane or session) in memory.
/// As a [`ValueCodec`] it stores a slot as the Arrow row format of its
/// accumulators' state, so a table of slots can spill to RocksDB.
pub(crate) struct Slots {
    accs: Vec<Box<dyn Accumulator>>,
    inputs: Vec<Option<usize>>,
    /// Output column of each aggregate, for error messages.
    names: Vec<String>,
    free: Vec<u32>,
    len: usize,
    state_conv: RowConverter,
    /// Per aggregate: its output name and state column types (the layout
    /// checkpoints record).
    layout: Vec<(String, Vec<DataType>)>,
    /// Converters for the state of the first `n` aggregates (restored
    /// slots stored before aggregates were added).
    prefixes: HashMap<usize, RowConverter>,
    /// Approximate bytes one slot holds (what a cached entry weighs).
    slot_bytes: usize,
}

/// Names the aggregate an overflow happened in.
fn named(name: &str) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::Overflow(m) => Error::Overflow(format!("aggregate '{name}': {m}")),
        e => e,
    }
}

impl Slots {
    pub(crate) fn new(aggs: &[AggregateExpr], input: &SchemaRef) -> Result<Self> {
        let mut accs = Vec::new();
        let mut inputs = Vec::new();
        let mut names = Vec::new();
        let mut layout = Vec::new();
        for a in aggs {
            names.push(a.output_name());
            let (idx, _) = a.resolve(input).map_err(|m| {
                Error::Internal(format!(
                    "aggregate passed planning but does not resolve: {m}"
                ))
            })?;
            let acc = a.accumulator(idx.map(|i| input.field(i).data_type()))?;
            let types: Vec<DataType> = acc
                .state(&[])?
                .iter()
                .map(|c| c.data_type().clone())
                .collect();
            layout.push((a.output_name(), types));
            accs.push(acc);
            inputs.push(idx);
        }
        let types: Vec<SortField> = layout
            .iter()
            .flat_map(|(_, t)| t.iter().cloned().map(SortField::new))
            .collect();
        Ok(Slots {
            accs,
            inputs,
            names,
            free: Vec::new(),
            len: 0,
            slot_bytes: 16 * types.len().max(1),
            state_conv: RowConverter::new(types)?,
            layout,
            prefixes: HashMap::new(),
        })
    }

    /// The aggregates' layout as checkpoints record it: `name:types` per
    /// aggregate, `;`-separated.
    pub(crate) fn layout(&self) -> String {
        self.layout
            .iter()
            .map(|(n, t)| format!("{n}:{t:?}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Checks a recorded layout against this one: restoring keeps state
    /// only when the recorded aggregates are these, or a prefix of them.
    pub(crate) fn check_layout(&self, operator: &str, recorded: &str) -> Result<()> {
        let now = self.layout();
        let old: Vec<&str> = recorded.split(';').filter(|s| !s.is_empty()).collect();
        let new: Vec<&str> = now.split(';').filter(|s| !s.is_empty()).collect();
        if old.len() <= new.len() && new[..old.len()] == old[..] {
            return Ok(());
        }
        Err(Error::Checkpoint(format!(
            "operator '{operator}': its aggregates were [{}] when the checkpoint was taken \
             and are [{}] now; a window keeps its state only when aggregates are added at \
             the end of the list (they then start empty at the restore)",
            old.join(", "),
            new.join(", ")
        )))
    }

    /// Folds encoded state rows (as [`ValueCodec::encode`] writes them)
    /// into `slots`. Rows stored with fewer aggregates (added since) fold
    /// into the first ones only.
    pub(crate) fn merge_encoded(&mut self, rows: &[&[u8]], slots: &[u32]) -> Result<()> {
        let n = self.accs.len();
        let bad = || Error::Checkpoint("malformed window state".into());
        let mut by_count: HashMap<usize, (Vec<&[u8]>, Vec<u32>)> = HashMap::new();
        for (r, s) in rows.iter().zip(slots) {
            let count =
                u16::from_le_bytes(r.get(..2).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
            let e = by_count.entry(count as usize).or_default();
            e.0.push(&r[2..]);
            e.1.push(*s);
        }
        for (count, (rows, slots)) in by_count {
            if count > n {
                return Err(Error::Checkpoint(format!(
                    "window state holds {count} aggregates, the window has {n}"
                )));
            }
            let arrays = if count == n {
                let parser = self.state_conv.parser();
                self.state_conv
                    .convert_rows(rows.iter().map(|r| parser.parse(r)))?
            } else {
                if !self.prefixes.contains_key(&count) {
                    let types = self.layout[..count]
                        .iter()
                        .flat_map(|(_, t)| t.iter().cloned().map(SortField::new))
                        .collect();
                    self.prefixes.insert(count, RowConverter::new(types)?);
                }
                let conv = &self.prefixes[&count];
                let parser = conv.parser();
                conv.convert_rows(rows.iter().map(|r| parser.parse(r)))?
            };
            let mut at = 0;
            for a in &mut self.accs[..count] {
                let k = a.state_len();
                let cols = arrays.get(at..at + k).ok_or_else(bad)?;
                a.merge_state(cols, &slots)?;
                at += k;
            }
        }
        Ok(())
    }

    /// The encoded state of `slots`.
    pub(crate) fn encode_slots(&self, slots: &[u32], out: &mut Vec<Vec<u8>>) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let state = self.state(slots)?;
        let rows = self.state_conv.convert_columns(&state)?;
        let count = (self.accs.len() as u16).to_le_bytes();
        out.extend(rows.iter().map(|r| {
            let mut v = Vec::with_capacity(2 + r.data().len());
            v.extend_from_slice(&count);
            v.extend_from_slice(r.data());
            v
        }));
        Ok(())
    }

    pub(crate) fn alloc(&mut self) -> u32 {
        if let Some(s) = self.free.pop() {
            return s;
        }
        if self.len.is_multiple_of(1024) {
            for a in &mut self.accs {
                a.resize(self.len + 1024);
            }
        }
        self.len += 1;
        (self.len - 1) as u32
    }

    pub(crate) fn release(&mut self, slot: u32) {
        for a in &mut self.accs {
            a.reset(slot);
        }
        self.free.push(slot);
    }

    pub(crate) fn update(
        &mut self,
        batch: &RecordBatch,
        rows: &[u32],
        slots: &[u32],
    ) -> Result<()> {
        for ((a, idx), name) in self.accs.iter_mut().zip(&self.inputs).zip(&self.names) {
            a.update(idx.map(|i| batch.column(i)), rows, slots)
                .map_err(named(name))?;
        }
        Ok(())
    }

    pub(crate) fn merge(&mut self, src: u32, dst: u32) {
        for a in &mut self.accs {
            a.merge(src, dst);
        }
    }

    pub(crate) fn evaluate(&self, slots: &[u32]) -> Result<Vec<ArrayRef>> {
        self.accs
            .iter()
            .zip(&self.names)
            .map(|(a, name)| a.evaluate(slots).map_err(named(name)))
            .collect()
    }

    /// Every accumulator's state of `slots`, concatenated.
    pub(crate) fn state(&self, slots: &[u32]) -> Result<Vec<ArrayRef>> {
        let mut out = Vec::new();
        for (a, name) in self.accs.iter().zip(&self.names) {
            out.extend(a.state(slots).map_err(named(name))?);
        }
        Ok(out)
    }

    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.len - self.free.len()
    }
}

impl ValueCodec<u32> for Slots {
    fn encode(&mut self, values: &[&u32], out: &mut Vec<Vec<u8>>) -> Result<()> {
        let slots: Vec<u32> = values.iter().map(|v| **v).collect();
        self.encode_slots(&slots, out)
    }

    fn decode(&mut self, bytes: &[&[u8]]) -> Result<Vec<u32>> {
        let slots: Vec<u32> = bytes.iter().map(|_| self.alloc()).collect();
        self.merge_encoded(bytes, &slots)?;
        Ok(slots)
    }

    fn release(&mut self, slot: u32) {
        Slots::release(self, slot);
    }

    fn weight(&self, _slot: &u32) -> usize {
        self.slot_bytes
    }
}

/// Assembles an output batch: keys, window bounds, aggregates.
pub(crate) fn output(
    schema: &SchemaRef,
    keys: Vec<ArrayRef>,
    starts: Vec<i64>,
    ends: Vec<i64>,
    aggs: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let mut cols = keys;
    cols.push(Arc::new(TimestampMillisecondArray::from(starts)));
    cols.push(Arc::new(TimestampMillisecondArray::from(ends)));
    cols.extend(aggs);
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}
