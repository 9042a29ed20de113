//! Typed handles on declared states. A handle is only a name and a type:
//! cheap to clone into closures and operator instances; every operation
//! goes through a [`KeyScope`] (the current key and namespace). Values are
//! encoded with `postcard`; a value that no longer decodes as the handle's
//! type (the type changed between runs) is an [`Error::State`].

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{KeyScope, StateDescriptor, StateKind};
use crate::error::{Error, Result};

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

            /// The declaration to give the operator.
            pub fn descriptor(&self) -> StateDescriptor {
                StateDescriptor { name: self.name.to_string(), kind: $kind }
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
    /// The value, if set.
    pub fn get(&self, s: &KeyScope<'_>) -> Result<Option<T>> {
        let id = self.id(s)?;
        s.store
            .get(id, &s.prefix())?
            .map(|b| decode(&self.name, &b))
            .transpose()
    }

    /// Sets the value.
    pub fn set(&self, s: &mut KeyScope<'_>, value: &T) -> Result<()> {
        let id = self.id(s)?;
        let v = encode(&self.name, value)?;
        s.store.put(id, s.prefix(), v)
    }

    /// Removes the value.
    pub fn clear(&self, s: &mut KeyScope<'_>) -> Result<()> {
        let id = self.id(s)?;
        s.store.delete(id, &s.prefix())
    }
}

/// A list per key and namespace, stored as one entry of length-prefixed
/// elements: `add` rewrites the entry, so keep lists short (a RocksDB merge
/// operator would make appends blind; not done yet).
pub struct ListState<T> {
    name: Arc<str>,
    _types: PhantomData<fn() -> T>,
}
handle_common!(ListState, StateKind::List, T);

impl<T: Serialize + DeserializeOwned> ListState<T> {
    /// The elements in insertion order (empty when none).
    pub fn get(&self, s: &KeyScope<'_>) -> Result<Vec<T>> {
        let id = self.id(s)?;
        let Some(bytes) = s.store.get(id, &s.prefix())? else {
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
        let k = s.prefix();
        let mut bytes = s.store.get(id, &k)?.unwrap_or_default();
        for v in values {
            // Length prefix first, filled in once the element is encoded.
            let at = bytes.len();
            bytes.extend_from_slice(&[0; 4]);
            bytes = encode_onto(&self.name, v, bytes)?;
            let len = (bytes.len() - at - 4) as u32;
            bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        s.store.put(id, k, bytes)
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
        s.store.delete(id, &s.prefix())
    }
}

/// A map per key and namespace; each entry is its own store entry, so
/// reads and writes of one entry do not touch the others. Iteration is in
/// the order of the encoded map keys (not `K`'s `Ord`).
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
    fn entry(&self, s: &KeyScope<'_>, k: &K) -> Result<Vec<u8>> {
        encode_onto(&self.name, k, s.prefix())
    }

    /// The value under `key`.
    pub fn get(&self, s: &KeyScope<'_>, key: &K) -> Result<Option<V>> {
        let id = self.id(s)?;
        s.store
            .get(id, &self.entry(s, key)?)?
            .map(|b| decode(&self.name, &b))
            .transpose()
    }

    /// Whether `key` is present.
    pub fn contains(&self, s: &KeyScope<'_>, key: &K) -> Result<bool> {
        let id = self.id(s)?;
        Ok(s.store.get(id, &self.entry(s, key)?)?.is_some())
    }

    /// Sets `key` to `value`.
    pub fn put(&self, s: &mut KeyScope<'_>, key: &K, value: &V) -> Result<()> {
        let id = self.id(s)?;
        let e = self.entry(s, key)?;
        let v = encode(&self.name, value)?;
        s.store.put(id, e, v)
    }

    /// Removes `key`.
    pub fn remove(&self, s: &mut KeyScope<'_>, key: &K) -> Result<()> {
        let id = self.id(s)?;
        let e = self.entry(s, key)?;
        s.store.delete(id, &e)
    }

    /// Every entry (see the type's note on order).
    pub fn entries(&self, s: &KeyScope<'_>) -> Result<Vec<(K, V)>> {
        let id = self.id(s)?;
        let p = s.prefix();
        let mut out = Vec::new();
        s.store.scan(id, &p, &super::successor(&p), |k, v| {
            out.push((decode(&self.name, &k[p.len()..])?, decode(&self.name, v)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// Removes every entry.
    pub fn clear(&self, s: &mut KeyScope<'_>) -> Result<()> {
        let id = self.id(s)?;
        let p = s.prefix();
        s.store.delete_prefix(id, &p)
    }
}
