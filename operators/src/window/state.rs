//! State shared by the window operators: the key interner (group keys as
//! Arrow row-format bytes, each given a small id), slot allocation over the
//! columnar accumulators, and output assembly.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_row::{RowConverter, SortField};
use hashbrown::HashTable;
use sluice_engine::{Error, Result};

use crate::aggregate::{Accumulator, AggregateExpr};

/// Interns group keys: equal keys get the same id while any slot uses them.
pub(crate) struct Keys {
    /// Fast path for the common single Int64 key: values, not row bytes.
    ints: Option<IntKeys>,
    converter: Option<RowConverter>,
    columns: Vec<usize>,
    table: HashTable<u32>,
    rows: Vec<Box<[u8]>>,
    refs: Vec<u32>,
    free: Vec<u32>,
    /// Ids created by the last `intern`, freed by `forget_unused` unless a
    /// slot retained them (keys seen only on late records must not leak).
    fresh: Vec<u32>,
    hasher: ahash::RandomState,
}

#[derive(Default)]
struct IntKeys {
    ids: hashbrown::HashMap<Option<i64>, u32>,
    values: Vec<Option<i64>>,
}

impl Keys {
    pub(crate) fn new(columns: Vec<usize>, types: Vec<DataType>) -> Result<Self> {
        let ints = (types == [DataType::Int64]).then(IntKeys::default);
        let converter = if columns.is_empty() || ints.is_some() {
            None
        } else {
            Some(RowConverter::new(
                types.into_iter().map(SortField::new).collect(),
            )?)
        };
        Ok(Keys {
            ints,
            converter,
            columns,
            table: HashTable::new(),
            rows: Vec::new(),
            refs: Vec::new(),
            free: Vec::new(),
            fresh: Vec::new(),
            hasher: ahash::RandomState::with_seeds(1, 2, 3, 4),
        })
    }

    /// The key id of every row (not yet retained).
    pub(crate) fn intern(&mut self, batch: &RecordBatch) -> Result<Vec<u32>> {
        let cols: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|c| batch.column(*c).clone())
            .collect();
        self.intern_columns(&cols, batch.num_rows())
    }

    /// Number of key columns.
    pub(crate) fn width(&self) -> usize {
        self.columns.len()
    }

    /// The key id of every row of `cols` (the key columns, in key order).
    pub(crate) fn intern_columns(
        &mut self,
        cols: &[ArrayRef],
        num_rows: usize,
    ) -> Result<Vec<u32>> {
        if let Some(ints) = &mut self.ints {
            let col = cols[0].as_primitive::<Int64Type>();
            let mut out = Vec::with_capacity(col.len());
            for v in col.iter() {
                let id = match ints.ids.get(&v) {
                    Some(id) => *id,
                    None => {
                        let id = match self.free.pop() {
                            Some(id) => {
                                ints.values[id as usize] = v;
                                id
                            }
                            None => {
                                ints.values.push(v);
                                self.refs.push(0);
                                (ints.values.len() - 1) as u32
                            }
                        };
                        ints.ids.insert(v, id);
                        self.fresh.push(id);
                        id
                    }
                };
                out.push(id);
            }
            return Ok(out);
        }
        let Some(conv) = &self.converter else {
            if self.rows.is_empty() {
                self.rows.push(Box::new([]));
                self.refs.push(0);
            }
            return Ok(vec![0; num_rows]);
        };
        let rows = conv.convert_columns(cols)?;
        let mut ids = Vec::with_capacity(rows.num_rows());
        for row in rows.iter() {
            let bytes = row.as_ref();
            let h = self.hasher.hash_one(bytes);
            let found = self
                .table
                .find(h, |id| &*self.rows[*id as usize] == bytes)
                .copied();
            let id = match found {
                Some(id) => id,
                None => {
                    let id = match self.free.pop() {
                        Some(id) => {
                            self.rows[id as usize] = bytes.into();
                            id
                        }
                        None => {
                            self.rows.push(bytes.into());
                            self.refs.push(0);
                            (self.rows.len() - 1) as u32
                        }
                    };
                    let (rows, hasher) = (&self.rows, &self.hasher);
                    self.table
                        .insert_unique(h, id, |id| hasher.hash_one(&*rows[*id as usize]));
                    self.fresh.push(id);
                    id
                }
            };
            ids.push(id);
        }
        Ok(ids)
    }

    /// A slot now uses key `id`.
    pub(crate) fn retain(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    /// A slot stopped using key `id`; the key is forgotten when none does.
    pub(crate) fn release(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        *r -= 1;
        if *r == 0 {
            self.free_id(id);
        }
    }

    /// Forgets keys interned by the last batch that no slot retained (all
    /// their records were late).
    pub(crate) fn forget_unused(&mut self) {
        let fresh = std::mem::take(&mut self.fresh);
        for id in &fresh {
            if self.refs[*id as usize] == 0 {
                self.free_id(*id);
            }
        }
        self.fresh = fresh;
        self.fresh.clear();
    }

    /// Returns `id` to the free list; a no-op for ids not live (so a key
    /// released and then swept in the same batch is freed once).
    fn free_id(&mut self, id: u32) {
        if let Some(ints) = &mut self.ints {
            let v = ints.values[id as usize];
            if ints.ids.get(&v) == Some(&id) {
                ints.ids.remove(&v);
                self.free.push(id);
            }
        } else if self.converter.is_some() {
            let h = self.hasher.hash_one(&*self.rows[id as usize]);
            if let Ok(e) = self.table.find_entry(h, |x| *x == id) {
                e.remove();
                self.rows[id as usize] = Box::new([]);
                self.free.push(id);
            }
        }
    }

    /// The key columns for `ids`.
    pub(crate) fn columns_of(&self, ids: &[u32]) -> Result<Vec<ArrayRef>> {
        if let Some(ints) = &self.ints {
            let values: Int64Array = ids.iter().map(|id| ints.values[*id as usize]).collect();
            return Ok(vec![Arc::new(values)]);
        }
        let Some(conv) = &self.converter else {
            return Ok(Vec::new());
        };
        let parser = conv.parser();
        let rows = ids.iter().map(|id| parser.parse(&self.rows[*id as usize]));
        Ok(conv.convert_rows(rows)?)
    }

    /// Distinct keys currently held (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.ints.as_ref().map_or(self.table.len(), |i| i.ids.len())
    }
}

/// Accumulator slots: one per (key, window or pane or session).
pub(crate) struct Slots {
    accs: Vec<Box<dyn Accumulator>>,
    inputs: Vec<Option<usize>>,
    /// Output column of each aggregate, for error messages.
    names: Vec<String>,
    free: Vec<u32>,
    len: usize,
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
        for a in aggs {
            names.push(a.output_name());
            let (idx, _) = a.resolve(input).map_err(|m| {
                Error::Internal(format!(
                    "aggregate passed planning but does not resolve: {m}"
                ))
            })?;
            accs.push(a.accumulator(idx.map(|i| input.field(i).data_type()))?);
            inputs.push(idx);
        }
        Ok(Slots {
            accs,
            inputs,
            names,
            free: Vec::new(),
            len: 0,
        })
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

    /// Folds state rows (as from [`Slots::state`]) into `slots`.
    pub(crate) fn merge_state(&mut self, state: &[ArrayRef], slots: &[u32]) -> Result<()> {
        let mut at = 0;
        for a in &mut self.accs {
            let n = a.state_len();
            let cols = state.get(at..at + n).ok_or_else(|| {
                Error::Checkpoint("window state has fewer columns than its aggregates".into())
            })?;
            a.merge_state(cols, slots)?;
            at += n;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.len - self.free.len()
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

/// Builds the keyed-state batch of a window operator: key columns, one
/// `Int64` column per time coordinate (pane start, session bounds),
/// accumulator state, and the key group of each row.
pub(crate) fn state_batch(
    keys: Vec<ArrayRef>,
    times: Vec<(&str, Vec<i64>)>,
    accs: Vec<ArrayRef>,
    max_parallelism: usize,
) -> Result<RecordBatch> {
    use arrow::datatypes::{Field, Schema};
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        fields.push(Field::new(format!("_k{i}"), k.data_type().clone(), true));
        cols.push(k.clone());
    }
    for (name, t) in times {
        fields.push(Field::new(name, DataType::Int64, false));
        cols.push(Arc::new(Int64Array::from(t)));
    }
    for (i, a) in accs.into_iter().enumerate() {
        fields.push(Field::new(format!("_s{i}"), a.data_type().clone(), true));
        cols.push(a);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
    sluice_engine::state::snapshot::with_key_groups(batch, &keys, max_parallelism)
}
