//! The unbounded inner join (symmetric hash join): each side keeps every row
//! it received, per key; an arriving batch is matched against the other
//! side's rows of its keys (one batched lookup), then stored. Each pair is
//! therefore emitted once, by whichever of its two rows arrived second.
//! State grows with the input (on RocksDB it may outgrow memory).

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_engine::data::CheckpointId;
use sluice_engine::state::table::{BytesCodec, KeyRef};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Operator, OperatorContext, Result};

use super::rows::{append, elements, joined};
use super::sides::Sides;

/// Unbounded inner equi-join of input 0 (left) and input 1 (right).
pub(crate) struct StreamJoinOperator {
    sides: Sides,
    output: SchemaRef,
}

impl StreamJoinOperator {
    /// A join of left columns `keys[0]` = right columns `keys[1]` (of
    /// `types`); `inputs` are the left and right schemas.
    pub(crate) fn new(
        keys: [Vec<usize>; 2],
        inputs: [SchemaRef; 2],
        types: &[DataType],
        output: SchemaRef,
    ) -> Result<Self> {
        Ok(StreamJoinOperator {
            sides: Sides::new(keys, types, inputs)?,
            output,
        })
    }
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
                here.push(i as u32);
                there.push(e?.1);
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
                    append(list, 0, encoded.row(i).data())
                });
            }
        }
        self.sides.maintain()
    }
}
