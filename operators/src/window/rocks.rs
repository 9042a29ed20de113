//! Tumbling and sliding windows with their state in RocksDB (`--state
//! rocksdb`): the same pane scheme as the heap operator, but a pane's
//! accumulators for a key live under `key group | pane start | key` and
//! only a batch's worth is in memory at a time. A batch is pre-aggregated
//! per (pane, key) in columnar accumulators, merged with what the database
//! holds (one multi-get), and written back in one write batch; a window
//! fires by scanning its panes' range in each key group the subtask owns.
//! Accumulator state is stored in Arrow's row format.

use std::collections::BTreeSet;
use std::ops::Range;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_row::{RowConverter, SortField};
use hashbrown::{HashMap, HashSet};
use sluice_engine::data::{event_times_in_range, CheckpointId, Watermark};
use sluice_engine::hash::hash_columns;
use sluice_engine::state::key_group::{key_group_of, range_of};
use sluice_engine::state::rocks::{prefix, RestoredDb, RocksConfig, RocksState};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Error, Operator, OperatorContext, Result};

use super::pane::Geometry;
use super::state::{output, Slots};
use crate::snapshot::{encode_times, restored_times};

/// Column family of the pane accumulators.
const PANES: &str = "window_panes";

/// Event-time tumbling/sliding windows over RocksDB state.
pub(crate) struct RocksPaneWindowOperator {
    geo: Geometry,
    time: usize,
    key_cols: Vec<usize>,
    key_conv: Option<RowConverter>,
    slots: Slots,
    state_conv: RowConverter,
    output: SchemaRef,
    cfg: RocksConfig,
    db: Option<RocksState>,
    restored: Vec<RestoredDb>,
    /// Pane starts that may hold state (kept in memory: one per pane, not per key).
    panes: BTreeSet<i64>,
    watermark: i64,
    fired_upto: i64,
    groups: Range<usize>,
    max_parallelism: usize,
}

/// Tags of the operator-state entries.
const PROGRESS: u8 = b'W';
const PANE_LIST: u8 = b'P';

impl RocksPaneWindowOperator {
    pub(crate) fn new(
        geo: Geometry,
        time: usize,
        key_cols: Vec<usize>,
        key_types: Vec<DataType>,
        slots: Slots,
        output: SchemaRef,
        cfg: RocksConfig,
    ) -> Result<Self> {
        let key_conv = if key_types.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                key_types.into_iter().map(SortField::new).collect(),
            )?)
        };
        let state_types: Vec<SortField> = slots
            .state(&[])?
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect();
        Ok(RocksPaneWindowOperator {
            geo,
            time,
            key_cols,
            key_conv,
            slots,
            state_conv: RowConverter::new(state_types)?,
            output,
            cfg,
            db: None,
            restored: Vec::new(),
            panes: BTreeSet::new(),
            watermark: i64::MIN,
            fired_upto: i64::MIN,
            groups: 0..0,
            max_parallelism: 1,
        })
    }

    fn db(&self) -> Result<&RocksState> {
        self.db
            .as_ref()
            .ok_or_else(|| Error::Internal("window state used before open".into()))
    }

    /// Folds encoded state rows into `slots`.
    fn merge_rows(&mut self, rows: &[Vec<u8>], slots: &[u32]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let parser = self.state_conv.parser();
        let arrays = self
            .state_conv
            .convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        self.slots.merge_state(&arrays, slots)
    }

    /// Window `[end - size, end)` for every key (or only those in `only`).
    fn fire(&mut self, end: i64, only: Option<&HashSet<Vec<u8>>>) -> Result<Option<RecordBatch>> {
        let start = end - self.geo.size;
        let mut per_key: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut order: Vec<(Vec<u8>, u32)> = Vec::new();
        let (mut rows, mut slots) = (Vec::new(), Vec::new());
        for kg in self.groups.clone() {
            let (from, to) = (prefix(kg, start), prefix(kg, end));
            let db = self.db.as_ref().expect("open");
            db.scan(PANES, &from, &to, |k, v| {
                let key = &k[10..];
                if only.is_some_and(|o| !o.contains(key)) {
                    return Ok(());
                }
                let slot = match per_key.get(key) {
                    Some(s) => *s,
                    None => {
                        let s = self.slots.alloc();
                        per_key.insert(key.to_vec(), s);
                        order.push((key.to_vec(), s));
                        s
                    }
                };
                rows.push(v.to_vec());
                slots.push(slot);
                Ok(())
            })?;
        }
        if order.is_empty() {
            return Ok(None);
        }
        self.merge_rows(&rows, &slots)?;
        let ids: Vec<u32> = order.iter().map(|(_, s)| *s).collect();
        let keys = match &self.key_conv {
            Some(conv) => {
                let parser = conv.parser();
                conv.convert_rows(order.iter().map(|(k, _)| parser.parse(k)))?
            }
            None => Vec::new(),
        };
        let n = ids.len();
        let aggs = self.slots.evaluate(&ids)?;
        for s in ids {
            self.slots.release(s);
        }
        Ok(Some(output(
            &self.output,
            keys,
            vec![start; n],
            vec![end; n],
            aggs,
        )?))
    }

    fn emit(&self, pieces: Vec<RecordBatch>, out: &mut Collector) -> Result<()> {
        if !pieces.is_empty() {
            out.emit(concat_batches(&self.output, &pieces)?);
        }
        Ok(())
    }

    /// Drops panes no window can use any more.
    fn purge(&mut self) -> Result<()> {
        let done: Vec<i64> = self
            .panes
            .iter()
            .copied()
            .take_while(|p| self.geo.done(*p, self.watermark))
            .collect();
        let (Some(first), Some(last)) = (done.first().copied(), done.last().copied()) else {
            return Ok(());
        };
        for kg in self.groups.clone() {
            // Start at the oldest live pane, not at the beginning: earlier
            // panes are tombstones until compaction, and walking them on
            // every purge made purging quadratic.
            let (from, to) = (prefix(kg, first), prefix(kg, last.saturating_add(1)));
            self.db()?.delete_keys(PANES, &from, &to)?;
        }
        for p in done {
            self.panes.remove(&p);
        }
        Ok(())
    }
}

impl Operator for RocksPaneWindowOperator {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.max_parallelism = ctx.max_parallelism;
        self.groups = range_of(ctx.subtask, ctx.max_parallelism, ctx.parallelism);
        self.db = Some(RocksState::open(
            &ctx.state.local_dir,
            &format!("{}-{}", ctx.operator, ctx.subtask),
            &[PANES],
            self.groups.clone(),
            &self.cfg,
            std::mem::take(&mut self.restored),
        )?);
        Ok(())
    }

    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let n = batch.num_rows();
        let ts = event_times_in_range(&batch, self.time)?;
        let key_cols: Vec<ArrayRef> = self
            .key_cols
            .iter()
            .map(|c| batch.column(*c).clone())
            .collect();
        let mut hashes = Vec::new();
        hash_columns(&key_cols, n, &mut hashes)?;
        let rows = match &self.key_conv {
            Some(c) => Some(c.convert_columns(&key_cols)?),
            None => None,
        };
        let key_of = |i: usize| -> &[u8] { rows.as_ref().map_or(&[], |r| r.row(i).data()) };
        // (pane, key) → (slot, key group, first row) for this batch.
        let mut local: HashMap<(i64, &[u8]), u32> = HashMap::new();
        let mut meta: Vec<(i64, usize, usize, u32)> = Vec::new();
        let (mut upd_rows, mut upd_slots, mut late) = (Vec::new(), Vec::new(), Vec::new());
        let mut refire: std::collections::BTreeMap<i64, HashSet<Vec<u8>>> = Default::default();
        for (i, t) in ts.iter().enumerate() {
            let p = t - t.rem_euclid(self.geo.pane);
            if self.geo.is_late(
                self.geo.last_window_start(p) + self.geo.size,
                self.watermark,
            ) {
                late.push(i as u32);
                continue;
            }
            let key = key_of(i);
            let slot = match local.get(&(p, key)) {
                Some(s) => *s,
                None => {
                    let s = self.slots.alloc();
                    local.insert((p, key), s);
                    meta.push((p, key_group_of(hashes[i], self.max_parallelism), i, s));
                    s
                }
            };
            upd_rows.push(i as u32);
            upd_slots.push(slot);
            if p < self.fired_upto {
                for e in self
                    .geo
                    .window_ends(p)
                    .filter(|e| *e <= self.fired_upto && !self.geo.is_late(*e, self.watermark))
                {
                    refire.entry(e).or_default().insert(key.to_vec());
                }
            }
        }
        self.slots.update(&batch, &upd_rows, &upd_slots)?;
        if !meta.is_empty() {
            let keys: Vec<Vec<u8>> = meta
                .iter()
                .map(|(p, kg, i, _)| {
                    let mut k = prefix(*kg, *p).to_vec();
                    k.extend_from_slice(key_of(*i));
                    k
                })
                .collect();
            let existing = self.db()?.multi_get(PANES, &keys)?;
            let (mut ex_rows, mut ex_slots) = (Vec::new(), Vec::new());
            for (v, m) in existing.into_iter().zip(&meta) {
                if let Some(v) = v {
                    ex_rows.push(v);
                    ex_slots.push(m.3);
                }
            }
            self.merge_rows(&ex_rows, &ex_slots)?;
            let slots: Vec<u32> = meta.iter().map(|m| m.3).collect();
            let state = self.slots.state(&slots)?;
            let encoded = self.state_conv.convert_columns(&state)?;
            let db = self.db()?;
            let cf = db.cf(PANES)?;
            let mut wb = rocksdb::WriteBatch::default();
            for (j, k) in keys.iter().enumerate() {
                wb.put_cf(cf, k, encoded.row(j).data());
            }
            db.write(wb)?;
            for s in slots {
                self.slots.release(s);
            }
            self.panes.extend(meta.iter().map(|m| m.0));
        }
        if !late.is_empty() {
            out.emit_side(1, take_record_batch(&batch, &UInt32Array::from(late))?);
        }
        let mut pieces = Vec::new();
        for (end, keys) in refire {
            pieces.extend(self.fire(end, Some(&keys))?);
        }
        self.emit(pieces, out)
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
        let limit = t.saturating_add(1);
        let ends = self
            .geo
            .ends_closing(self.panes.iter().copied(), self.fired_upto, limit);
        let mut pieces = Vec::new();
        for e in ends {
            pieces.extend(self.fire(e, None)?);
        }
        self.emit(pieces, out)?;
        self.fired_upto = self.fired_upto.max(limit);
        self.purge()?;
        Ok(Some(wm))
    }

    fn snapshot(&mut self, _id: CheckpointId, _ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        let mut progress = vec![PROGRESS];
        progress.extend(encode_times(&[self.watermark, self.fired_upto]));
        let mut panes = vec![PANE_LIST];
        panes.extend(encode_times(
            &self.panes.iter().copied().collect::<Vec<_>>(),
        ));
        let db = self
            .db
            .as_mut()
            .ok_or_else(|| Error::Internal("snapshot before open".into()))?
            .checkpoint()?;
        Ok(OperatorSnapshot {
            keyed: Vec::new(),
            entries: vec![progress, panes],
            db: Some(db),
        })
    }

    fn restore(&mut self, state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
        let mut progress = Vec::new();
        for e in &state.entries {
            match e.split_first() {
                Some((&PROGRESS, rest)) => progress.push(rest.to_vec()),
                Some((&PANE_LIST, rest)) => {
                    if rest.len() % 8 != 0 {
                        return Err(Error::Checkpoint("malformed window pane list".into()));
                    }
                    self.panes.extend(
                        rest.chunks_exact(8)
                            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))),
                    );
                }
                _ => return Err(Error::Checkpoint("unknown window state entry".into())),
            }
        }
        if let Some(t) = restored_times(&progress, 2)? {
            self.watermark = t[0];
            self.fired_upto = t[1];
        }
        self.restored = state.dbs;
        Ok(())
    }
}
