//! The symmetric hash join: each side keeps its rows by key; an arriving
//! row is matched against the other side's rows and then stored.

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::{interleave, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_row::{RowConverter, SortField};
use hashbrown::HashMap;
use sluice_engine::{Collector, Operator, OperatorContext, Result};

#[derive(Default)]
struct Side {
    batches: Vec<RecordBatch>,
    rows: HashMap<Box<[u8]>, Vec<(u32, u32)>>,
}

/// Unbounded inner equi-join of input 0 (left) and input 1 (right).
pub struct StreamJoinOperator {
    keys: [Vec<usize>; 2],
    converter: RowConverter,
    sides: [Side; 2],
    output: SchemaRef,
}

impl StreamJoinOperator {
    /// A join on left columns `left` = right columns `right` of `types`.
    pub fn new(
        left: Vec<usize>,
        right: Vec<usize>,
        types: Vec<DataType>,
        output: SchemaRef,
    ) -> Result<Self> {
        Ok(StreamJoinOperator {
            keys: [left, right],
            converter: RowConverter::new(types.into_iter().map(SortField::new).collect())?,
            sides: [Side::default(), Side::default()],
            output,
        })
    }
}

impl Operator for StreamJoinOperator {
    fn process(
        &mut self,
        input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let cols: Vec<ArrayRef> = self.keys[input]
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        let rows = self.converter.convert_columns(&cols)?;
        let other = 1 - input;
        let idx = self.sides[input].batches.len() as u32;
        let mut mine: Vec<u32> = Vec::new();
        let mut theirs: Vec<(usize, usize)> = Vec::new();
        for (r, key) in rows.iter().enumerate() {
            if let Some(matches) = self.sides[other].rows.get(key.as_ref()) {
                for (b, row) in matches {
                    mine.push(r as u32);
                    theirs.push((*b as usize, *row as usize));
                }
            }
            self.sides[input]
                .rows
                .entry(key.as_ref().into())
                .or_default()
                .push((idx, r as u32));
        }
        if !mine.is_empty() {
            let mine_idx = UInt32Array::from(mine);
            let here: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|c| take(c, &mine_idx, None))
                .collect::<Result<_, _>>()?;
            let stored = &self.sides[other].batches;
            let there: Vec<ArrayRef> = (0..stored[0].num_columns())
                .map(|c| {
                    let arrays: Vec<&dyn arrow::array::Array> =
                        stored.iter().map(|b| b.column(c).as_ref()).collect();
                    interleave(&arrays, &theirs)
                })
                .collect::<Result<_, _>>()?;
            let cols = if input == 0 {
                [here, there].concat()
            } else {
                [there, here].concat()
            };
            out.emit(RecordBatch::try_new(self.output.clone(), cols)?);
        }
        self.sides[input].batches.push(batch);
        Ok(())
    }
}
