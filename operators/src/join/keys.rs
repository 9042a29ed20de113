//! Join keys: turning a batch's key columns into per-row lookup keys, and the
//! key → rows maps every join keeps. A single Int64 key is used as is (no row
//! conversion); other key sets go through one `arrow_row::RowConverter` shared
//! by both inputs, so equal keys encode to equal bytes on either side. Rows
//! with a null in any key column never match (SQL semantics), so they get no
//! key at all.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Int64Type};
use arrow::record_batch::RecordBatch;
use arrow_row::{RowConverter, Rows, SortField};
use hashbrown::HashMap;
use sluice_engine::Result;

/// Where a stored row lives: (batch index, row index) in one store.
pub(crate) type RowRef = (u32, u32);

/// Encodes key columns into lookup keys. One encoder serves both inputs.
pub(crate) struct KeyEncoder {
    /// `None` for the single Int64 key fast path.
    converter: Option<RowConverter>,
}

/// The keys of one batch, one per row.
pub(crate) struct BatchKeys {
    values: KeyValues,
    /// Rows whose key has a null in some column are invalid (never match).
    valid: Option<NullBuffer>,
}

enum KeyValues {
    Int(ScalarBuffer<i64>),
    Rows(Rows),
}

/// One key, borrowed from a [`BatchKeys`] or a [`KeyMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRef<'a> {
    Int(i64),
    Bytes(&'a [u8]),
}

impl KeyEncoder {
    /// An encoder for keys of these column types (equal on both inputs).
    pub(crate) fn new(types: &[DataType]) -> Result<Self> {
        let converter = if types == [DataType::Int64] {
            None
        } else {
            Some(RowConverter::new(
                types.iter().cloned().map(SortField::new).collect(),
            )?)
        };
        Ok(KeyEncoder { converter })
    }

    /// Whether keys are plain Int64 values (maps use [`KeyMap::Int`]).
    pub(crate) fn is_int(&self) -> bool {
        self.converter.is_none()
    }

    /// An empty map for this encoder's keys.
    pub(crate) fn map<V>(&self) -> KeyMap<V> {
        if self.is_int() {
            KeyMap::Int(HashMap::new())
        } else {
            KeyMap::Bytes(HashMap::new())
        }
    }

    /// The keys of `batch`, whose key columns are at `columns`.
    pub(crate) fn encode(&self, batch: &RecordBatch, columns: &[usize]) -> Result<BatchKeys> {
        let cols: Vec<ArrayRef> = columns.iter().map(|i| batch.column(*i).clone()).collect();
        let valid = cols.iter().fold(None, |acc: Option<NullBuffer>, c| {
            NullBuffer::union(acc.as_ref(), c.logical_nulls().as_ref())
        });
        let values = match &self.converter {
            None => KeyValues::Int(cols[0].as_primitive::<Int64Type>().values().clone()),
            Some(conv) => KeyValues::Rows(conv.convert_columns(&cols)?),
        };
        Ok(BatchKeys { values, valid })
    }
}

impl BatchKeys {
    /// The key of row `i`, or `None` when it holds a null.
    pub(crate) fn get(&self, i: usize) -> Option<KeyRef<'_>> {
        if self.valid.as_ref().is_some_and(|v| v.is_null(i)) {
            return None;
        }
        Some(match &self.values {
            KeyValues::Int(v) => KeyRef::Int(v[i]),
            KeyValues::Rows(r) => KeyRef::Bytes(r.row(i).data()),
        })
    }
}

/// A hash map from join key to `V` (usually the rows holding that key).
/// Byte keys are copied only when a key is first inserted.
pub(crate) enum KeyMap<V> {
    Int(HashMap<i64, V>),
    Bytes(HashMap<Box<[u8]>, V>),
}

impl<V> KeyMap<V> {
    /// The value for `key`, if any.
    pub(crate) fn get(&self, key: KeyRef<'_>) -> Option<&V> {
        match (self, key) {
            (KeyMap::Int(m), KeyRef::Int(k)) => m.get(&k),
            (KeyMap::Bytes(m), KeyRef::Bytes(k)) => m.get(k),
            // Both sides come from one encoder, so kinds always agree.
            _ => None,
        }
    }

    /// The value for `key`, inserted as `V::default()` when absent.
    pub(crate) fn entry(&mut self, key: KeyRef<'_>) -> &mut V
    where
        V: Default,
    {
        match (self, key) {
            (KeyMap::Int(m), KeyRef::Int(k)) => m.entry(k).or_default(),
            (KeyMap::Bytes(m), KeyRef::Bytes(k)) => m.entry_ref(k).or_default(),
            _ => panic!("join key kind differs from its map's: one encoder builds both"),
        }
    }

    /// Every (key, value).
    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = (KeyRef<'_>, &V)> + '_> {
        match self {
            KeyMap::Int(m) => Box::new(m.iter().map(|(k, v)| (KeyRef::Int(*k), v))),
            KeyMap::Bytes(m) => Box::new(m.iter().map(|(k, v)| (KeyRef::Bytes(k), v))),
        }
    }

    /// Number of distinct keys.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self {
            KeyMap::Int(m) => m.len(),
            KeyMap::Bytes(m) => m.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(a: Vec<Option<i64>>, s: Vec<Option<&str>>) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(a)),
                Arc::new(StringArray::from(s)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn int_fast_path_and_rows_agree_and_nulls_have_no_key() {
        let b = batch(
            vec![Some(1), None, Some(1), Some(2)],
            vec![Some("x"), Some("x"), None, Some("x")],
        );
        let int = KeyEncoder::new(&[DataType::Int64]).unwrap();
        assert!(int.is_int());
        let k = int.encode(&b, &[0]).unwrap();
        assert_eq!(k.get(0), Some(KeyRef::Int(1)));
        assert_eq!(k.get(1), None);
        assert_eq!(k.get(3), Some(KeyRef::Int(2)));

        let multi = KeyEncoder::new(&[DataType::Int64, DataType::Utf8]).unwrap();
        assert!(!multi.is_int());
        let k = multi.encode(&b, &[0, 1]).unwrap();
        assert!(k.get(1).is_none() && k.get(2).is_none());
        let mut m: KeyMap<Vec<usize>> = multi.map();
        for i in 0..4 {
            if let Some(key) = k.get(i) {
                m.entry(key).push(i);
            }
        }
        assert_eq!(m.len(), 2);
        // A second batch encodes equal keys to equal bytes.
        let b2 = batch(vec![Some(2), Some(1)], vec![Some("x"), Some("y")]);
        let k2 = multi.encode(&b2, &[0, 1]).unwrap();
        assert_eq!(m.get(k2.get(0).unwrap()), Some(&vec![3]));
        assert_eq!(m.get(k2.get(1).unwrap()), None);
    }
}
