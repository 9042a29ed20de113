//! Time-bucketed row storage for the event-time joins: each side keeps its
//! rows per bucket of event time (a pane for window joins), each bucket with
//! its own key index, so whole buckets are dropped when the watermark makes
//! them useless and matching looks only at buckets that can hold partners.
//! Also the vectorized gather that turns row references into output columns.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, UInt32Array};
use arrow::compute::{interleave, take_record_batch};
use arrow::record_batch::RecordBatch;
use hashbrown::HashMap;
use sluice_engine::Result;

use super::keys::{BatchKeys, KeyEncoder, KeyMap, RowRef};

/// Rows of one bucket: the stored batches, their event times and a key index.
pub(crate) struct Bucket {
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) times: Vec<Vec<i64>>,
    pub(crate) index: KeyMap<Vec<RowRef>>,
}

/// One side's stored rows, by bucket start.
pub(crate) struct Buckets {
    pub(crate) width: i64,
    pub(crate) buckets: BTreeMap<i64, Bucket>,
}

impl Buckets {
    /// An empty store with buckets `width` ms wide (at least 1).
    pub(crate) fn new(width: i64) -> Self {
        Buckets {
            width: width.max(1),
            buckets: BTreeMap::new(),
        }
    }

    /// Start of the bucket holding time `t`.
    pub(crate) fn bucket_of(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.width)
    }

    /// Stores rows `rows` of `batch` (with times `ts` and keys `keys`); rows
    /// without a key (null in a key column) must not be passed: they can
    /// never match.
    pub(crate) fn insert(
        &mut self,
        encoder: &KeyEncoder,
        batch: &RecordBatch,
        ts: &[i64],
        keys: &BatchKeys,
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
            let bucket = self.buckets.entry(b).or_insert_with(|| Bucket {
                batches: Vec::new(),
                times: Vec::new(),
                index: encoder.map(),
            });
            // In-order input often puts a whole batch in one bucket: keep it
            // as is instead of copying it.
            let part = if idx.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(idx.clone()))?
            };
            let n = bucket.batches.len() as u32;
            for (j, r) in idx.iter().enumerate() {
                let key = keys
                    .get(*r as usize)
                    .expect("only rows with a key are stored");
                bucket.index.entry(key).push((n, j as u32));
            }
            bucket
                .times
                .push(idx.iter().map(|r| ts[*r as usize]).collect());
            bucket.batches.push(part);
        }
        Ok(())
    }

    /// Drops buckets whose every row is before `end` (bucket end <= `end`).
    pub(crate) fn drop_before(&mut self, end: i64) {
        while let Some((&b, _)) = self.buckets.first_key_value() {
            if b.saturating_add(self.width) > end {
                break;
            }
            self.buckets.pop_first();
        }
    }
}

/// Gathers rows given as (batch, row), with `batch_of` resolving batch
/// numbers, into `num_columns` columns with `interleave`. Only the batches
/// referenced take part, so the cost does not grow with the number of stored
/// batches.
pub(crate) fn gather<'a>(
    batch_of: impl Fn(usize) -> &'a RecordBatch,
    refs: &[(usize, usize)],
    num_columns: usize,
) -> Result<Vec<ArrayRef>> {
    let mut used: HashMap<usize, usize> = HashMap::new();
    let mut picked: Vec<&RecordBatch> = Vec::new();
    let local: Vec<(usize, usize)> = refs
        .iter()
        .map(|(b, r)| {
            let i = *used.entry(*b).or_insert_with(|| {
                picked.push(batch_of(*b));
                picked.len() - 1
            });
            (i, *r)
        })
        .collect();
    (0..num_columns)
        .map(|c| {
            let arrays: Vec<&dyn Array> = picked.iter().map(|b| b.column(c).as_ref()).collect();
            Ok(interleave(&arrays, &local)?)
        })
        .collect()
}

/// Name of the column that tells a join's checkpointed rows' side.
const SIDE_COLUMN: &str = "_side";

/// Checkpoint form of one side's stored rows: each batch with a `_side`
/// column and the key group of its join key.
pub(crate) fn side_state<'a>(
    side: usize,
    batches: impl Iterator<Item = &'a RecordBatch>,
    keys: &[usize],
    max_parallelism: usize,
) -> Result<Vec<RecordBatch>> {
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let mut out = Vec::new();
    for b in batches.filter(|b| b.num_rows() > 0) {
        let key_cols: Vec<ArrayRef> = keys.iter().map(|k| b.column(*k).clone()).collect();
        let mut fields: Vec<Arc<Field>> = b.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(SIDE_COLUMN, DataType::UInt8, false)));
        let mut cols = b.columns().to_vec();
        cols.push(Arc::new(arrow::array::UInt8Array::from(vec![
            side as u8;
            b.num_rows()
        ])));
        let tagged = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
        out.push(sluice_engine::state::snapshot::with_key_groups(
            tagged,
            &key_cols,
            max_parallelism,
        )?);
    }
    Ok(out)
}

/// Checkpoint form of both sides of an event-time join.
pub(crate) fn sides_state(
    sides: &[Buckets; 2],
    keys: &[Vec<usize>; 2],
    max_parallelism: usize,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for side in 0..2 {
        out.extend(side_state(
            side,
            sides[side].buckets.values().flat_map(|b| b.batches.iter()),
            &keys[side],
            max_parallelism,
        )?);
    }
    Ok(out)
}

/// Splits a restored row batch into its side and the rows as stored.
pub(crate) fn restored_side(batch: &RecordBatch) -> Result<(usize, RecordBatch)> {
    use arrow::array::AsArray;
    use arrow::datatypes::UInt8Type;
    let mut b = crate::snapshot::without_key_group(batch)?;
    let idx = b.schema().index_of(SIDE_COLUMN).map_err(|_| {
        sluice_engine::Error::Checkpoint("join state without its side column".into())
    })?;
    let side = b.column(idx).as_primitive::<UInt8Type>();
    let s = if side.is_empty() {
        0
    } else {
        side.value(0) as usize
    };
    if s > 1 {
        return Err(sluice_engine::Error::Checkpoint(format!(
            "join state names side {s}"
        )));
    }
    b.remove_column(idx);
    Ok((s, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::sync::Arc;

    #[test]
    fn rows_land_in_their_buckets_and_old_buckets_drop() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("ts", DataType::Int64, false),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 1, 1])),
                Arc::new(Int64Array::from(vec![5, 12, -3, 19])),
            ],
        )
        .unwrap();
        let enc = KeyEncoder::new(&[DataType::Int64]).unwrap();
        let keys = enc.encode(&b, &[0]).unwrap();
        let mut s = Buckets::new(10);
        s.insert(&enc, &b, &[5, 12, -3, 19], &keys, &[0, 1, 2, 3])
            .unwrap();
        assert_eq!(s.buckets.keys().copied().collect::<Vec<_>>(), [-10, 0, 10]);
        let ten = &s.buckets[&10];
        assert_eq!(ten.times, [vec![12, 19]]);
        let ones = ten
            .index
            .get(super::super::keys::KeyRef::Int(1))
            .expect("key 1 in bucket 10");
        assert_eq!(ones, &vec![(0, 1)]);
        let cols = gather(|b| &ten.batches[b], &[(0, 1), (0, 0)], 2).unwrap();
        assert_eq!(cols[1].as_primitive::<Int64Type>().values(), &[19, 12]);
        s.drop_before(10);
        assert_eq!(s.buckets.keys().copied().collect::<Vec<_>>(), [10]);
    }
}
