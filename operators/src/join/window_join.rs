//! The window join (Flink's `join(..).window(..)`): rows of both inputs with
//! equal keys whose event times fall in the same tumbling or sliding window
//! are paired, once per window holding both, when the window fires (combined
//! watermark >= window end - 1). Each row is stored once, in the pane of
//! width gcd(size, slide) holding its time (the pane is the namespace of
//! its side's state table); a window fires key by key, a chunk of keys at a
//! time, so firing never holds more than a chunk of a window's rows; a
//! pane is dropped once the last window holding it fired. Rows whose
//! windows have all fired are late and dropped.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, TimestampMillisecondArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use hashbrown::HashSet;
use sluice_engine::data::{event_times_in_range, CheckpointId, Watermark};
use sluice_engine::state::table::{split_entry_key, BytesCodec, KeyRef, StateTable};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Error, Operator, OperatorContext, Result};
use tracing::debug;

use super::rows::{append, elements, joined};
use super::sides::Sides;
use crate::snapshot::{encode_progress, encode_times, restored_progress};

/// Keys fired together (one output batch at most per chunk).
const KEY_CHUNK: usize = 1024;
/// Tags of the operator-state entries.
const PROGRESS: u8 = b'W';
const PANE_LIST: u8 = b'P';

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
    pane: i64,
    time: [usize; 2],
    sides: Sides,
    output: SchemaRef,
    /// Pane starts that may hold rows of either side.
    panes: BTreeSet<i64>,
    watermark: i64,
    /// Every window ending at or before this has fired.
    fired_upto: i64,
    late: u64,
}

impl WindowJoinOperator {
    /// Windows of `size` ms every `slide` ms (tumbling when equal); `keys`,
    /// `time` and `inputs` describe the left and right inputs.
    pub(crate) fn new(
        (size, slide): (i64, i64),
        keys: [Vec<usize>; 2],
        time: [usize; 2],
        inputs: [SchemaRef; 2],
        types: &[DataType],
        output: SchemaRef,
    ) -> Result<Self> {
        Ok(WindowJoinOperator {
            size,
            slide,
            pane: gcd(size, slide).max(1),
            time,
            sides: Sides::new(keys, types, inputs)?,
            output,
            panes: BTreeSet::new(),
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
        let first = self.last_end(pane);
        (0..)
            .map(move |i| first - i * self.slide)
            .take_while(move |end| *end >= pane + self.pane)
    }

    /// Emits the pairs of window `[end - size, end)`, a chunk of keys at a
    /// time.
    fn fire(&mut self, end: i64, out: &mut Collector) -> Result<()> {
        let start = end - self.size;
        let panes: Vec<i64> = self.panes.range(start..end).copied().collect();
        if panes.is_empty() {
            return Ok(());
        }
        let rows = &self.sides.rows;
        let tables = self
            .sides
            .tables
            .as_mut()
            .ok_or_else(|| Error::Internal("window join fired before open".into()))?;
        let mut keys: HashSet<(usize, Vec<u8>)> = HashSet::new();
        tables[0].scan(&mut BytesCodec, start..end, |_, e| {
            let k = split_entry_key(e.key);
            keys.insert((k.key_group, k.key.to_vec()));
            Ok(())
        })?;
        let keys: Vec<(usize, Vec<u8>)> = keys.into_iter().collect();
        let np = panes.len();
        for chunk in keys.chunks(KEY_CHUNK) {
            let at = || {
                chunk.iter().flat_map(|(kg, k)| {
                    panes
                        .iter()
                        .map(move |p| Some(KeyRef::new(*kg, *p, k.as_slice())))
                })
            };
            let [left, right] = &mut *tables;
            let hl = left.get_many(&mut BytesCodec, at())?;
            let hr = right.get_many(&mut BytesCodec, at())?;
            let (mut lrows, mut rrows): (Vec<&[u8]>, Vec<&[u8]>) = (Vec::new(), Vec::new());
            for j in 0..chunk.len() {
                let (ls, rs) = (
                    lists(left, &hl[j * np..(j + 1) * np]),
                    lists(right, &hr[j * np..(j + 1) * np]),
                );
                if ls.is_empty() || rs.is_empty() {
                    continue;
                }
                let mut r_el = Vec::new();
                for list in &rs {
                    for e in elements(list) {
                        r_el.push(e?.1);
                    }
                }
                for list in &ls {
                    for e in elements(list) {
                        let l = e?.1;
                        for r in &r_el {
                            lrows.push(l);
                            rrows.push(r);
                        }
                    }
                }
            }
            if lrows.is_empty() {
                continue;
            }
            let n = lrows.len();
            let lcols = rows[0].decode(lrows)?;
            let rcols = rows[1].decode(rrows)?;
            let bounds: Vec<ArrayRef> = vec![
                Arc::new(TimestampMillisecondArray::from(vec![start; n])),
                Arc::new(TimestampMillisecondArray::from(vec![end; n])),
            ];
            out.emit(joined(&self.output, vec![lcols, rcols, bounds])?);
        }
        Ok(())
    }
}

/// The stored row lists `hs` point at in `t`.
fn lists<'t>(t: &'t StateTable<Vec<u8>>, hs: &[Option<u32>]) -> Vec<&'t [u8]> {
    hs.iter()
        .filter_map(|h| h.and_then(|h| t.value(h)))
        .map(Vec::as_slice)
        .collect()
}

impl Operator for WindowJoinOperator {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.sides.open(ctx)
    }

    fn snapshot(&mut self, _id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        let mut progress = vec![PROGRESS];
        progress.extend(encode_progress(&[self.watermark, self.fired_upto], ctx));
        let mut panes = vec![PANE_LIST];
        panes.extend(encode_times(
            &self.panes.iter().copied().collect::<Vec<_>>(),
        ));
        self.sides.snapshot(vec![progress, panes])
    }

    fn restore(&mut self, state: RestoredState, ctx: &OperatorContext) -> Result<()> {
        let mut progress = Vec::new();
        for e in &state.entries {
            match e.split_first() {
                Some((&PROGRESS, rest)) => progress.push(rest.to_vec()),
                Some((&PANE_LIST, rest)) if rest.len() % 8 == 0 => {
                    self.panes.extend(
                        rest.chunks_exact(8)
                            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))),
                    );
                }
                _ => {
                    return Err(Error::Checkpoint(
                        "malformed window join state entry".into(),
                    ))
                }
            }
        }
        if let Some(t) = restored_progress(&progress, 2, ctx)? {
            self.watermark = t[0];
            self.fired_upto = t[1];
        }
        self.sides.restore(state);
        Ok(())
    }

    fn process(
        &mut self,
        input: usize,
        batch: RecordBatch,
        ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_in_range(&batch, self.time[input])?;
        let keys = self.sides.keys[input].encode(&batch, ctx.max_parallelism)?;
        let mut at = Vec::with_capacity(ts.len());
        let mut late = 0u64;
        for (i, t) in ts.iter().enumerate() {
            if keys.is_null(i) {
                at.push(None); // a null key joins nothing
            } else if self.last_end(*t) - 1 <= self.watermark {
                late += 1;
                at.push(None);
            } else {
                let p = t - t.rem_euclid(self.pane);
                self.panes.insert(p);
                at.push(Some(KeyRef::new(keys.groups[i], p, keys.key(i))));
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
        let encoded = self.sides.rows[input].encode(&batch)?;
        let table = &mut self.sides.tables()?[input];
        let stored = table.upsert_many(&mut BytesCodec, at, |_| Ok(Vec::new()))?;
        for (i, h) in stored.into_iter().enumerate() {
            if let Some(h) = h {
                table.update(h, &mut BytesCodec, |list, _| {
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
        out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        let Some(t) = crate::advance(&mut self.watermark, wm) else {
            return Ok(Some(wm));
        };
        // Windows [end - size, end) with end - 1 <= t fire.
        let limit = t.saturating_add(1);
        let mut ends = BTreeSet::new();
        for pane in self.panes.range(..limit) {
            ends.extend(
                self.window_ends(*pane)
                    .filter(|e| *e > self.fired_upto && *e <= limit),
            );
        }
        for end in ends {
            self.fire(end, out)?;
        }
        self.fired_upto = self.fired_upto.max(limit);
        // A pane is done when the last window holding it fired; panes are
        // sorted and their last window end grows with them.
        let done: Vec<i64> = self
            .panes
            .iter()
            .copied()
            .take_while(|p| self.last_end(*p) <= limit)
            .collect();
        if let (Some(first), Some(last)) = (done.first().copied(), done.last().copied()) {
            for table in self.sides.tables()?.iter_mut() {
                table.remove_range(&mut BytesCodec, first..=last)?;
            }
            for p in done {
                self.panes.remove(&p);
            }
        }
        self.sides.maintain()?;
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
            [schema(&["k", "ts"]), schema(&["k", "ts"])],
            &[DataType::Int64],
            out_schema,
        )
        .unwrap();
        op.open(&ctx()).unwrap();
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
        assert_eq!(op.panes.iter().next(), Some(&50));
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
        assert!(op.panes.is_empty());
        assert!(op
            .sides
            .tables()
            .unwrap()
            .iter()
            .all(|t| t.cached_len() == 0));
    }
}
