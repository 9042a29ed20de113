//! A stable, vectorized hash of key columns. Routing must agree across
//! processes and machines, so this uses fixed arithmetic (no per-process
//! seeds, no CPU-dependent instructions). Fast paths for primitive and string
//! columns; other types go through the Arrow row format.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::*;
use arrow_row::{RowConverter, SortField};

use crate::error::Result;

const SEED: u64 = 0x9E37_79B9_7F4A_7C15;
const NULL_HASH: u64 = 0x5851_F42D_4C95_7F2D;

/// Murmur3's 64-bit finalizer: a cheap, well-mixing bijection.
#[inline]
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A stable hash of a byte string.
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = SEED ^ (bytes.len() as u64).wrapping_mul(0x100_0000_01b3);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().expect("chunk of 8"));
        h = (h ^ mix64(v)).wrapping_mul(0x100_0000_01b3).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = (h ^ mix64(u64::from_le_bytes(buf))).wrapping_mul(0x100_0000_01b3);
    }
    mix64(h)
}

#[inline]
fn combine(acc: u64, h: u64) -> u64 {
    mix64(acc.rotate_left(5) ^ h)
}

fn fold_primitive<T: ArrowPrimitiveType>(
    a: &dyn Array,
    out: &mut [u64],
    to_u64: impl Fn(T::Native) -> u64,
) {
    let arr = a.as_primitive::<T>();
    let values = arr.values();
    if arr.null_count() == 0 {
        for (o, v) in out.iter_mut().zip(values.iter()) {
            *o = combine(*o, mix64(to_u64(*v)));
        }
    } else {
        for (i, o) in out.iter_mut().enumerate() {
            let h = if arr.is_null(i) {
                NULL_HASH
            } else {
                mix64(to_u64(values[i]))
            };
            *o = combine(*o, h);
        }
    }
}

fn fold_bytes<'a>(
    len: usize,
    is_null: impl Fn(usize) -> bool,
    value: impl Fn(usize) -> &'a [u8],
    out: &mut [u64],
) {
    for (i, o) in out.iter_mut().enumerate().take(len) {
        let h = if is_null(i) {
            NULL_HASH
        } else {
            hash_bytes(value(i))
        };
        *o = combine(*o, h);
    }
}

/// Hashes one column into `out` (combining with what is there).
fn fold_column(col: &ArrayRef, out: &mut [u64]) -> Result<()> {
    let a = col.as_ref();
    match col.data_type() {
        DataType::Int8 => fold_primitive::<Int8Type>(a, out, |v| v as i64 as u64),
        DataType::Int16 => fold_primitive::<Int16Type>(a, out, |v| v as i64 as u64),
        DataType::Int32 => fold_primitive::<Int32Type>(a, out, |v| v as i64 as u64),
        DataType::Int64 => fold_primitive::<Int64Type>(a, out, |v| v as u64),
        DataType::UInt8 => fold_primitive::<UInt8Type>(a, out, |v| v as u64),
        DataType::UInt16 => fold_primitive::<UInt16Type>(a, out, |v| v as u64),
        DataType::UInt32 => fold_primitive::<UInt32Type>(a, out, |v| v as u64),
        DataType::UInt64 => fold_primitive::<UInt64Type>(a, out, |v| v),
        DataType::Float32 => fold_primitive::<Float32Type>(a, out, |v| v.to_bits() as u64),
        DataType::Float64 => fold_primitive::<Float64Type>(a, out, |v| v.to_bits()),
        DataType::Date32 => fold_primitive::<Date32Type>(a, out, |v| v as i64 as u64),
        DataType::Date64 => fold_primitive::<Date64Type>(a, out, |v| v as u64),
        DataType::Timestamp(TimeUnit::Second, _) => {
            fold_primitive::<TimestampSecondType>(a, out, |v| v as u64)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            fold_primitive::<TimestampMillisecondType>(a, out, |v| v as u64)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            fold_primitive::<TimestampMicrosecondType>(a, out, |v| v as u64)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            fold_primitive::<TimestampNanosecondType>(a, out, |v| v as u64)
        }
        DataType::Boolean => {
            let arr = a.as_boolean();
            for (i, o) in out.iter_mut().enumerate() {
                let h = if arr.is_null(i) {
                    NULL_HASH
                } else {
                    mix64(arr.value(i) as u64 + 1)
                };
                *o = combine(*o, h);
            }
        }
        DataType::Utf8 => {
            let arr = a.as_string::<i32>();
            fold_bytes(
                arr.len(),
                |i| arr.is_null(i),
                |i| arr.value(i).as_bytes(),
                out,
            )
        }
        DataType::LargeUtf8 => {
            let arr = a.as_string::<i64>();
            fold_bytes(
                arr.len(),
                |i| arr.is_null(i),
                |i| arr.value(i).as_bytes(),
                out,
            )
        }
        DataType::Utf8View => {
            let arr = a.as_string_view();
            fold_bytes(
                arr.len(),
                |i| arr.is_null(i),
                |i| arr.value(i).as_bytes(),
                out,
            )
        }
        DataType::Binary => {
            let arr = a.as_binary::<i32>();
            fold_bytes(arr.len(), |i| arr.is_null(i), |i| arr.value(i), out)
        }
        other => {
            let conv = RowConverter::new(vec![SortField::new(other.clone())])?;
            let rows = conv.convert_columns(std::slice::from_ref(col))?;
            for (i, o) in out.iter_mut().enumerate() {
                *o = combine(*o, hash_bytes(rows.row(i).as_ref()));
            }
        }
    }
    Ok(())
}

/// One stable hash per row over `columns`, written into `out` (resized).
pub fn hash_columns(columns: &[ArrayRef], num_rows: usize, out: &mut Vec<u64>) -> Result<()> {
    out.clear();
    out.resize(num_rows, SEED);
    for c in columns {
        fold_column(c, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn equal_keys_hash_equal_across_types_of_batches() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 1, 3]));
        let s: ArrayRef = Arc::new(StringArray::from(vec!["x", "y", "x", "x"]));
        let mut h = Vec::new();
        hash_columns(&[a, s], 4, &mut h).unwrap();
        assert_eq!(h[0], h[2]);
        assert_ne!(h[0], h[1]);
        assert_ne!(h[0], h[3]);
    }

    #[test]
    fn hash_is_stable_across_releases() {
        // Routing is part of the checkpoint format: a change here moves keys
        // between subtasks, so it must be deliberate.
        let a: ArrayRef = Arc::new(Int64Array::from(vec![42]));
        let mut h = Vec::new();
        hash_columns(&[a], 1, &mut h).unwrap();
        assert_eq!(h[0], combine(SEED, mix64(42)));
        assert_eq!(hash_bytes(b"sluice"), hash_bytes(b"sluice"));
        assert_ne!(hash_bytes(b"sluice"), hash_bytes(b"sluicf"));
    }
}
