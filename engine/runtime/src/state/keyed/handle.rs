//! Typed handles on declared states. A handle is only a name and a type:
//! cheap to clone into closures and operator instances; every operation
//! goes through a [`KeyScope`] (the current key and namespace). Values are
//! encoded with `postcard`; a value that no longer decodes as the handle's
//! type (the type changed between runs) is an [`Error::State`].

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::layout::layout_of;
use super::{KeyScope, MapCodec, MapValue, StateDescriptor, StateKind};
use crate::error::{Error, Result};
use crate::state::table::BytesCodec;

fn encode<T: Serialize + ?Sized>(state: &str, v: &T) -> Result<Vec<u8>> {
    encode_onto(state, v, Vec::new())
}

/// Appends the encoding of `v` to `out` (no buffer of its own).
fn encode_onto<T: Serialize + ?Sized>(state: &str, v: &T, out: Vec<u8>) -> Result<Vec<u8>> {
    postcard::to_extend(v, out).map_err(|e| Error::State(format!("encoding '{state}': {e}")))
}

fn decode<T: DeserializeOwned>(state: &str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| {
        Error::State(format!(
            "decoding '{state}' as {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

macro_rules! handle_common {
    ($t:ident, $kind:expr, $($p:ident),+) => {
        impl<$($p),+> Clone for $t<$($p),+> {
            fn clone(&self) -> Self {
                $t { name: self.name.clone(), _types: PhantomData }
            }
        }

        impl<$($p),+> std::fmt::Debug for $t<$($p),+> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($t), self.name)
            }
        }

        impl<$($p),+> $t<$($p),+> {
            /// A handle on the state named `name`.
            pub fn new(name: &str) -> Self {
                $t { name: name.into(), _types: PhantomData }
            }

            fn id(&self, s: &KeyScope<'_>) -> Result<usize> {
                s.store.state(&self.name, $kind)
            }
        }
    };
}

/// One value per key and namespace.
pub struct ValueState<T> {
    name: Arc<str>,
    _types: PhantomData<fn() -> T>,
}
handle_common!(ValueState, StateKind::Value, T);

impl<T: Serialize + DeserializeOwned> ValueState<T> {
    /// The declaration to give the operator.
    pub fn descriptor(&self) -> StateDescriptor {
        StateDescriptor {
            name: self.name.to_string(),
            kind: StateKind::Value,
            layout: layout_of::<T>(),
        }
    }

    /// The value, if set.
    pub fn get(&self, s: &KeyScope<'_>) -> Result<Option<T>> {
        let id = self.id(s)?;
        let mut table = s.store.bytes(id)?;
        table
            .get(&mut BytesCodec, s.at())?
            .map(|b| decode(&self.name, b))
            .transpose()
    }

    /// Sets the value.
    pub fn set(&self, s: &mut KeyScope<'_>, value: &T) -> Result<()> {
        let id = self.id(s)?;
        let v = encode(&self.name, value)?;
        let at = s.at();
        s.store.bytes(id)?.put(&mut BytesCodec, at, v)
    }

    /// Removes the value.
    pub fn clear(&self, s: &mut KeyScope<'_>) -> Result<()> {
        let id = self.id(s)?;
        let at = s.at();
        s.store.bytes(id)?.delete(&mut BytesCodec, at)
    }
}

/// A list per key and namespace, stored as one entry of length-prefixed
/// elements: `add` appends to the cached entry (RocksDB sees the list only
/// when it is flushed or evicted).
pub struct ListState<T> {
    name: Arc<str>,
    _types: PhantomData<fn() -> T>,
}
handle_common!(ListState, StateKind::List, T);

impl<T: Serialize + DeserializeOwned> ListState<T> {
    /// The declaration to give the operator.
    pub fn descriptor(&self) -> StateDescriptor {
        StateDescriptor {
            name: self.name.to_string(),
            kind: StateKind::List,
            layout: layout_of::<T>(),
        }
    }

    /// The elements in insertion order (empty when none).
    pub fn get(&self, s: &KeyScope<'_>) -> Result<Vec<T>> {
        let id = self.id(s)?;
        let mut table = s.store.bytes(id)?;
        let Some(bytes) = table.get(&mut BytesCodec, s.at())? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let bad = || Error::State(format!("list '{}' holds a truncated element", self.name));
            let len = u32::from_le_bytes(rest.get(..4).ok_or_else(bad)?.try_into().expect("4"));
            let elem = rest.get(4..4 + len as usize).ok_or_else(bad)?;
            out.push(decode(&self.name, elem)?);
            rest = &rest[4 + len as usize..];
        }
        Ok(out)
    }

    /// Appends `value`.
    pub fn add(&self, s: &mut KeyScope<'_>, value: &T) -> Result<()> {
        self.add_all(s, std::slice::from_ref(value))
    }

    /// Appends `values` in order.
    pub fn add_all(&self, s: &mut KeyScope<'_>, values: &[T]) -> Result<()> {
        let id = self.id(s)?;
        let at = s.at();
        let mut table = s.store.bytes(id)?;
        let mut bytes = table.get(&mut BytesCodec, at)?.cloned().unwrap_or_default();
        for v in values {
            // Length prefix first, filled in once the element is encoded.
            let at = bytes.len();
            bytes.extend_from_slice(&[0; 4]);
            bytes = encode_onto(&self.name, v, bytes)?;
            let len = (bytes.len() - at - 4) as u32;
            bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        table.put(&mut BytesCodec, at, bytes)
    }

    /// Replaces the list with `values` (an empty slice clears it).
    pub fn update(&self, s: &mut KeyScope<'_>, values: &[T]) -> Result<()> {
        self.clear(s)?;
        if values.is_empty() {
            return Ok(());
        }
        self.add_all(s, values)
    }

    /// Removes every element.
    pub fn clear(&self, s: &mut KeyScope<'_>) -> Result<()> {
        let id = self.id(s)?;
        let at = s.at();
        s.store.bytes(id)?.delete(&mut BytesCodec, at)
    }
}

/// A map per key and namespace, held as one entry per key and namespace
/// (see the module docs): reading or writing one map entry touches only
/// the cached map. Iteration is in the order of the encoded map keys (not
/// `K`'s `Ord`).
pub struct MapState<K, V> {
    name: Arc<str>,
    _types: PhantomData<fn() -> (K, V)>,
}
handle_common!(MapState, StateKind::Map, K, V);

impl<K, V> MapState<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    /// The declaration to give the operator.
    pub fn descriptor(&self) -> StateDescriptor {
        StateDescriptor {
            name: self.name.to_string(),
            kind: StateKind::Map,
            layout: format!("map of {} to {}", layout_of::<K>(), layout_of::<V>()),
        }
    }

    /// Calls `f` with the current key's map (`None` when empty).
    fn with_map<R>(&self, s: &KeyScope<'_>, f: impl FnOnce(Option<&MapValue>) -> R) -> Result<R> {
        let id = self.id(s)?;
        let mut table = s.store.map(id)?;
        Ok(f(table.get(&mut MapCodec, s.at())?))
    }

    /// The value under `key`.
    pub fn get(&self, s: &KeyScope<'_>, key: &K) -> Result<Option<V>> {
        let k = encode(&self.name, key)?;
        self.with_map(s, |m| {
            m.and_then(|m| m.get(&k)).map(|b| decode(&self.name, b))
        })?
        .transpose()
    }

    /// Whether `key` is present.
    pub fn contains(&self, s: &KeyScope<'_>, key: &K) -> Result<bool> {
        let k = encode(&self.name, key)?;
        self.with_map(s, |m| m.is_some_and(|m| m.contains_key(&k)))
    }

    /// Sets `key` to `value`.
    pub fn put(&self, s: &mut KeyScope<'_>, key: &K, value: &V) -> Result<()> {
        let id = self.id(s)?;
        let (k, v) = (encode(&self.name, key)?, encode(&self.name, value)?);
        let at = s.at();
        let mut table = s.store.map(id)?;
        match table.get_many(&mut MapCodec, [Some(at)])?[0] {
            Some(h) => {
                table.update(h, &mut MapCodec, |m, _| m.insert(k, v));
                Ok(())
            }
            None => table.put(&mut MapCodec, at, MapValue::from([(k, v)])),
        }
    }

    /// Removes `key`.
    pub fn remove(&self, s: &mut KeyScope<'_>, key: &K) -> Result<()> {
        let id = self.id(s)?;
        let k = encode(&self.name, key)?;
        let at = s.at();
        let mut table = s.store.map(id)?;
        let Some(h) = table.get_many(&mut MapCodec, [Some(at)])?[0] else {
            return Ok(());
        };
        if table.value(h).is_some_and(|m| m.contains_key(&k)) {
            let empty = table.update(h, &mut MapCodec, |m, _| {
                m.remove(&k);
                m.is_empty()
            });
            if empty {
                table.remove(&mut MapCodec, h);
            }
        }
        Ok(())
    }

    /// Every entry (see the type's note on order).
    pub fn entries(&self, s: &KeyScope<'_>) -> Result<Vec<(K, V)>> {
        self.with_map(s, |m| {
            m.into_iter()
                .flat_map(|m| m.iter())
                .map(|(k, v)| Ok((decode(&self.name, k)?, decode(&self.name, v)?)))
                .collect()
        })?
    }

    /// Removes every entry.
    pub fn clear(&self, s: &mut KeyScope<'_>) -> Result<()> {
        let id = self.id(s)?;
        let at = s.at();
        s.store.map(id)?.delete(&mut MapCodec, at)
    }
}
