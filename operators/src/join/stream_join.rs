//! The unbounded inner join (symmetric hash join): each side keeps every row
//! it received, indexed by key; an arriving batch is matched against the
//! other side's index, then stored. Each pair is therefore emitted once, by
//! whichever of its two rows arrived second. State grows with the input.

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Operator, OperatorContext, Result};

use super::buckets::{gather, restored_side, side_state};
use super::keys::{KeyEncoder, KeyMap, RowRef};
use sluice_engine::data::CheckpointId;

struct Side {
    batches: Vec<RecordBatch>,
    index: KeyMap<Vec<RowRef>>,
}

/// Unbounded inner equi-join of input 0 (left) and input 1 (right).
pub(crate) struct StreamJoinOperator {
    keys: [Vec<usize>; 2],
    widths: [usize; 2],
    encoder: KeyEncoder,
    sides: [Side; 2],
    output: SchemaRef,
}

impl StreamJoinOperator {
    /// A join of left columns `keys[0]` = right columns `keys[1]` (of
    /// `types`); inputs have `widths` columns.
    pub(crate) fn new(
        keys: [Vec<usize>; 2],
        widths: [usize; 2],
        types: &[DataType],
        output: SchemaRef,
    ) -> Result<Self> {
        let encoder = KeyEncoder::new(types)?;
        let side = || Side {
            batches: Vec::new(),
            index: encoder.map(),
        };
        let sides = [side(), side()];
        Ok(StreamJoinOperator {
            keys,
            widths,
            encoder,
            sides,
            output,
        })
    }
}

impl Operator for StreamJoinOperator {
    fn snapshot(&mut self, _id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        let mut keyed = Vec::new();
        for side in 0..2 {
            keyed.extend(side_state(
                side,
                self.sides[side].batches.iter(),
                &self.keys[side],
                ctx.max_parallelism,
            )?);
        }
        Ok(OperatorSnapshot::keyed(keyed))
    }

    fn restore(&mut self, state: RestoredState, ctx: &OperatorContext) -> Result<()> {
        // Rows go back through the normal path (matches it finds were
        // emitted before the checkpoint, so the output is dropped), before
        // the watermark is restored so none of them counts as late.
        for b in &state.keyed {
            let (side, rows) = restored_side(b)?;
            self.process(side, rows, ctx, &mut Collector::default())?;
        }
        Ok(())
    }

    fn process(
        &mut self,
        input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let keys = self.encoder.encode(&batch, &self.keys[input])?;
        let [left, right] = &mut self.sides;
        let (mine, other) = if input == 0 {
            (left, &*right)
        } else {
            (right, &*left)
        };
        let idx = mine.batches.len() as u32;
        let mut here: Vec<u32> = Vec::new();
        let mut there: Vec<(usize, usize)> = Vec::new();
        for r in 0..batch.num_rows() {
            let Some(key) = keys.get(r) else { continue };
            if let Some(matches) = other.index.get(key) {
                for (b, row) in matches {
                    here.push(r as u32);
                    there.push((*b as usize, *row as usize));
                }
            }
            mine.index.entry(key).push((idx, r as u32));
        }
        if !here.is_empty() {
            let here_idx = UInt32Array::from(here);
            let here_cols: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|c| take(c, &here_idx, None))
                .collect::<std::result::Result<_, _>>()?;
            let there_cols = gather(|b| &other.batches[b], &there, self.widths[1 - input])?;
            let cols = if input == 0 {
                [here_cols, there_cols].concat()
            } else {
                [there_cols, here_cols].concat()
            };
            out.emit(RecordBatch::try_new(self.output.clone(), cols)?);
        }
        mine.batches.push(batch);
        Ok(())
    }
}
