//! Time-bucketed row storage for the event-time joins: rows are kept per
//! bucket of event time with a key index, so whole buckets are dropped when
//! the watermark makes them useless and matching looks only at buckets that
//! can hold partners.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, UInt32Array};
use arrow::compute::{interleave, take_record_batch};
use arrow::record_batch::RecordBatch;
use arrow_row::Rows;
use hashbrown::HashMap;
use sluice_engine::Result;

/// Rows of one bucket.
#[derive(Default)]
pub(crate) struct Bucket {
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) times: Vec<Vec<i64>>,
    pub(crate) index: HashMap<Box<[u8]>, Vec<(u32, u32)>>,
}

/// One side's stored rows.
pub(crate) struct Buckets {
    pub(crate) width: i64,
    pub(crate) buckets: BTreeMap<i64, Bucket>,
}

impl Buckets {
    pub(crate) fn new(width: i64) -> Self {
        Buckets {
            width: width.max(1),
            buckets: BTreeMap::new(),
        }
    }

    pub(crate) fn bucket_of(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.width)
    }

    /// Stores rows `rows` of `batch` (with times `ts` and key rows `keys`).
    pub(crate) fn insert(
        &mut self,
        batch: &RecordBatch,
        ts: &[i64],
        keys: &Rows,
        rows: &[u32],
    ) -> Result<()> {
        let mut by_bucket: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for r in rows {
            by_bucket
                .entry(self.bucket_of(ts[*r as usize]))
                .or_default()
                .push(*r);
        }
        for (b, idx) in by_bucket {
            let bucket = self.buckets.entry(b).or_default();
            let part = take_record_batch(batch, &UInt32Array::from(idx.clone()))?;
            let n = bucket.batches.len() as u32;
            for (j, r) in idx.iter().enumerate() {
                bucket
                    .index
                    .entry(keys.row(*r as usize).as_ref().into())
                    .or_default()
                    .push((n, j as u32));
            }
            bucket
                .times
                .push(idx.iter().map(|r| ts[*r as usize]).collect());
            bucket.batches.push(part);
        }
        Ok(())
    }

    /// Drops buckets ending at or before `end`.
    pub(crate) fn drop_until(&mut self, end: i64) {
        while let Some((&b, _)) = self.buckets.first_key_value() {
            if b.saturating_add(self.width) > end {
                break;
            }
            self.buckets.pop_first();
        }
    }
}

/// Gathers rows given as (batch, row) over a list of batches into columns.
pub(crate) fn gather(
    batches: &[&RecordBatch],
    refs: &[(usize, usize)],
    num_columns: usize,
) -> Result<Vec<ArrayRef>> {
    (0..num_columns)
        .map(|c| {
            let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
            Ok(interleave(&arrays, refs)?)
        })
        .collect()
}
