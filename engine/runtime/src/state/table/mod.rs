//! The one state layer every stateful operator uses: a [`StateTable`]
//! holds entries `(key group, namespace, key) → value`, where the value is
//! whatever the operator works with in memory (an accumulator slot, a list
//! of sessions, encoded rows) and a [`ValueCodec`] turns values into bytes
//! and back, a batch at a time.
//!
//! On the heap backend the table *is* the state: nothing is ever written
//! anywhere but into snapshots. On the RocksDB backend the same table is a
//! bounded **write-back cache** in front of a [`Spill`] store (a column
//! family of the subtask's database), as RisingWave's state tables and
//! Flink's ForSt cache are: operators touch the store only
//!
//! - on a miss for a key the store may hold (loads are batched: one
//!   multi-get per call of [`StateTable::upsert_many`] or
//!   [`StateTable::get_many`], i.e. per record batch);
//! - on eviction, when the subtask's tables together exceed the configured
//!   cache size ([`StateTable::maintain`], once per record batch: dirty
//!   victims go out in one write batch, clean ones are dropped);
//! - when a checkpoint flushes dirty entries ([`StateTable::flush`]), right
//!   before the database's native checkpoint.
//!
//! Memory is therefore bounded by the cache size (plus one batch's worth of
//! new entries between maintenance calls) whatever the number of keys, and
//! state larger than the cache spills to RocksDB. While the working set
//! fits, no read reaches RocksDB: the table tracks, per namespace, whether
//! the store can hold a row the cache does not (an entry was evicted, or the
//! store was restored from a checkpoint), and only then looks there.
//!
//! Entries are kept in a slab with a hash index (point lookups) and an
//! ordered index by namespace (a window's panes, timers by time), so range
//! scans over namespaces merge cached entries with the store's rows for the
//! namespaces that may have more. A deleted key whose row is in the store
//! stays as a dirty tombstone until a flush or eviction writes the delete.
//!
//! This module knows nothing of operators or of RocksDB: the store is the
//! [`Spill`] trait, implemented in `state::rocks`.

mod cache;
mod scan;
#[cfg(all(test, feature = "rocksdb"))]
mod tests;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use scan::{Rewrite, Scanned};

use cache::{Cache, Entry, DIRTY, ENTRY_OVERHEAD, IN_STORE, LOADING, REFERENCED};

use crate::error::Result;
use crate::state::rocks::{key_group_of_key, namespace_of, prefix};

/// A position in a table returned by the batch lookups; valid until the
/// next call that can evict or remove entries (`maintain`, `flush`,
/// removals, scans that take).
pub type Handle = u32;

/// Where a key lives: its key group, a namespace (e.g. a pane or window
/// start, a timer's time; 0 when unused) and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef<'a> {
    /// Key group (from the hash that routes the record).
    pub key_group: usize,
    /// Namespace.
    pub namespace: i64,
    /// The key's bytes (e.g. Arrow row format of the key columns).
    pub key: &'a [u8],
}

impl<'a> KeyRef<'a> {
    /// The key `key` in namespace `namespace` of key group `key_group`.
    pub fn new(key_group: usize, namespace: i64, key: &'a [u8]) -> Self {
        KeyRef {
            key_group,
            namespace,
            key,
        }
    }
}

/// The stored form of an entry key: `key group (2 B, big endian) |
/// namespace (8 B, order-preserving) | key`.
pub fn entry_key(k: &KeyRef<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&prefix(k.key_group, k.namespace));
    out.extend_from_slice(k.key);
}

/// The parts of a stored entry key.
pub fn split_entry_key(key: &[u8]) -> KeyRef<'_> {
    KeyRef {
        key_group: key_group_of_key(key),
        namespace: namespace_of(&key[2..10]),
        key: &key[10..],
    }
}

/// Turns a table's in-memory values into bytes and back, a batch at a
/// time, and says what a value weighs. Codecs own what values refer to
/// (e.g. accumulator slots), so values are handed back through
/// [`ValueCodec::release`] when they leave memory.
pub trait ValueCodec<V> {
    /// Appends the encoding of every value to `out`, in order.
    fn encode(&mut self, values: &[&V], out: &mut Vec<Vec<u8>>) -> Result<()>;
    /// Values of stored encodings, in order.
    fn decode(&mut self, bytes: &[&[u8]]) -> Result<Vec<V>>;
    /// A value leaves memory (evicted, removed, a scan's temporary).
    fn release(&mut self, _value: V) {}
    /// Heap bytes the value holds (what the cache budget counts).
    fn weight(&self, value: &V) -> usize;
}

/// Values that are their own bytes (encoded rows, keyed-state values).
#[derive(Debug, Default, Clone, Copy)]
pub struct BytesCodec;

impl ValueCodec<Vec<u8>> for BytesCodec {
    fn encode(&mut self, values: &[&Vec<u8>], out: &mut Vec<Vec<u8>>) -> Result<()> {
        out.extend(values.iter().map(|v| v.to_vec()));
        Ok(())
    }
    fn decode(&mut self, bytes: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
        Ok(bytes.iter().map(|b| b.to_vec()).collect())
    }
    fn weight(&self, value: &Vec<u8>) -> usize {
        value.capacity()
    }
}

/// The store a table spills to (a RocksDB column family). Keys are
/// stored entry keys; rows of a key group are contiguous.
pub trait Spill: Send {
    /// Values of `keys` (`None` where absent), in order.
    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>>;
    /// Writes `puts` and deletes `deletes` in one atomic batch.
    fn write(&self, puts: &[(&[u8], &[u8])], deletes: &[&[u8]]) -> Result<()>;
    /// Calls `f` for the rows with a key in `[from, to)`, in key order,
    /// until it returns `false`.
    fn scan(&self, from: &[u8], to: &[u8], f: &mut RowVisitor<'_>) -> Result<()>;
}

/// What a [`Spill::scan`] calls per stored row (key, value); `false` stops
/// the scan.
pub type RowVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// The cache size shared by the tables of one operator subtask.
#[derive(Debug, Clone)]
pub struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Budget {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// No limit (the heap backend).
    pub fn unbounded() -> Self {
        Self::new(usize::MAX)
    }

    /// Bytes the tables hold together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn adjust(&self, before: usize, after: usize) {
        if after >= before {
            self.used.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

/// Which namespaces the spill store has rows in, and whether it may have
/// rows the cache does not hold.
#[derive(Debug, Default)]
struct StoreNamespaces {
    /// Namespace → the store may hold a row not in the cache.
    rows: BTreeMap<i64, bool>,
    /// The store was filled from a checkpoint: any namespace may have rows
    /// the cache never saw.
    restored: bool,
}

impl StoreNamespaces {
    fn may_miss(&self, ns: i64) -> bool {
        self.restored || self.rows.get(&ns).copied().unwrap_or(false)
    }

    fn wrote(&mut self, ns: i64) {
        self.rows.entry(ns).or_insert(false);
    }

    fn evicted(&mut self, ns: i64) {
        self.rows.insert(ns, true);
    }
}

/// Makes the value of a key that neither the cache nor the store holds.
type Create<'a, C, V> = dyn FnMut(&mut C) -> Result<V> + 'a;

/// A table of keyed state: see the [module docs](self).
pub struct StateTable<V> {
    name: String,
    cache: Cache<V>,
    spill: Option<Box<dyn Spill>>,
    budget: Budget,
    key_groups: Range<usize>,
    stored: StoreNamespaces,
    scratch: Vec<u8>,
}

impl<V> StateTable<V> {
    /// A table named `name` for `key_groups`: on the heap when `spill` is
    /// `None`, else a cache within `budget` in front of `spill`.
    /// `restored` says the store already holds rows (from a checkpoint).
    pub fn new(
        name: &str,
        key_groups: Range<usize>,
        spill: Option<Box<dyn Spill>>,
        budget: Budget,
        restored: bool,
    ) -> Self {
        StateTable {
            name: name.to_string(),
            cache: Cache::new(),
            spill,
            budget,
            key_groups,
            stored: StoreNamespaces {
                restored,
                ..StoreNamespaces::default()
            },
            scratch: Vec::new(),
        }
    }

    /// The table's name (it names the state in checkpoints).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Entries in memory.
    pub fn cached_len(&self) -> usize {
        self.cache.len()
    }

    /// Bytes the cached entries weigh.
    pub fn cached_weight(&self) -> usize {
        self.cache.weight()
    }

    /// Whether the table spills to a store (RocksDB backend).
    pub fn spills(&self) -> bool {
        self.spill.is_some()
    }

    /// The value at `h` (`None` for a key without one).
    pub fn value(&self, h: Handle) -> Option<&V> {
        self.cache.get(h).value.as_ref()
    }

    /// The stored key at `h`.
    pub fn key(&self, h: Handle) -> &[u8] {
        &self.cache.get(h).key
    }

    /// Changes the value at `h` (which must have one) and marks it dirty;
    /// `f` also gets the codec (e.g. to allocate or merge slots).
    pub fn update<C: ValueCodec<V>, R>(
        &mut self,
        h: Handle,
        codec: &mut C,
        f: impl FnOnce(&mut V, &mut C) -> R,
    ) -> R {
        let e = self.cache.get_mut(h);
        let v = e.value.as_mut().expect("update of an entry with a value");
        let r = f(v, codec);
        let w = weigh(&e.key, e.value.as_ref(), codec);
        self.set_weight(h, w);
        self.mark_dirty(h);
        r
    }

    fn set_weight(&mut self, h: Handle, w: usize) {
        let before = self.cache.weight();
        self.cache.reweigh(h, w);
        self.budget.adjust(before, self.cache.weight());
    }

    fn mark_dirty(&mut self, h: Handle) {
        if self.spill.is_some() {
            self.cache.touch_dirty(h);
        }
    }

    fn insert(&mut self, key: &[u8], hash: u64, value: Option<V>, w: usize, flags: u8) -> Handle {
        let before = self.cache.weight();
        let flags = if self.spill.is_some() {
            flags
        } else {
            flags & !DIRTY
        };
        let h = self.cache.insert(Entry {
            key: key.into(),
            value,
            hash,
            weight: w,
            flags,
        });
        self.budget.adjust(before, self.cache.weight());
        h
    }

    fn take_entry(&mut self, h: Handle) -> Entry<V> {
        let before = self.cache.weight();
        let e = self.cache.remove(h);
        self.budget.adjust(before, self.cache.weight());
        e
    }

    /// Looks up every key (rows with `None` are skipped and get no
    /// handle): keys in the cache are found there, keys the store may hold
    /// are loaded with one multi-get, others get `create`'s value. Every
    /// entry returned is marked dirty: the caller is about to change it.
    pub fn upsert_many<'k, C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        keys: impl IntoIterator<Item = Option<KeyRef<'k>>>,
        mut create: impl FnMut(&mut C) -> Result<V>,
    ) -> Result<Vec<Option<Handle>>> {
        let (handles, loading) = self.probe(codec, keys, true, &mut create)?;
        self.load(codec, &loading, Some(&mut create))?;
        for h in handles.iter().flatten() {
            self.mark_dirty(*h);
        }
        Ok(handles)
    }

    /// Looks up every key, loading those the store may hold with one
    /// multi-get; a key without a value gets `None`. Absent keys are
    /// remembered (as cheap markers) so asking again does not reach the
    /// store.
    pub fn get_many<'k, C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        keys: impl IntoIterator<Item = Option<KeyRef<'k>>>,
    ) -> Result<Vec<Option<Handle>>> {
        let mut never = |_: &mut C| -> Result<V> {
            Err(crate::error::Error::Internal(
                "get_many creates nothing".into(),
            ))
        };
        let (mut handles, loading) = self.probe(codec, keys, false, &mut never)?;
        self.load(codec, &loading, None)?;
        for h in handles.iter_mut() {
            if h.is_some_and(|h| self.cache.get(h).value.is_none()) {
                *h = None;
            }
        }
        Ok(handles)
    }

    /// First pass of a batch lookup: handles of cached keys, placeholders
    /// for keys to load, new entries for keys surely absent (when
    /// creating).
    #[allow(clippy::type_complexity)]
    fn probe<'k, C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        keys: impl IntoIterator<Item = Option<KeyRef<'k>>>,
        creating: bool,
        create: &mut impl FnMut(&mut C) -> Result<V>,
    ) -> Result<(Vec<Option<Handle>>, Vec<Handle>)> {
        let mut handles = Vec::new();
        let mut loading = Vec::new();
        let mut scratch = std::mem::take(&mut self.scratch);
        for k in keys {
            let Some(k) = k else {
                handles.push(None);
                continue;
            };
            entry_key(&k, &mut scratch);
            let hash = self.cache.hash(&scratch);
            let h = match self.cache.find(hash, &scratch) {
                Some(h) => {
                    let e = self.cache.get_mut(h);
                    e.flags |= REFERENCED;
                    if creating && e.value.is_none() && e.flags & LOADING == 0 {
                        // Deleted or known absent: starts afresh.
                        let v = create(codec)?;
                        let w = weigh(&scratch, Some(&v), codec);
                        self.cache.get_mut(h).value = Some(v);
                        self.set_weight(h, w);
                    }
                    h
                }
                None if self.spill.is_some() && self.stored.may_miss(k.namespace) => {
                    let h = self.insert(&scratch, hash, None, 0, LOADING | REFERENCED);
                    loading.push(h);
                    h
                }
                None if creating => {
                    let v = create(codec)?;
                    let w = weigh(&scratch, Some(&v), codec);
                    self.insert(&scratch, hash, Some(v), w, DIRTY | REFERENCED)
                }
                None => {
                    handles.push(None);
                    continue;
                }
            };
            handles.push(Some(h));
        }
        self.scratch = scratch;
        Ok((handles, loading))
    }

    /// Second pass: one multi-get for the placeholders; found values are
    /// decoded, missing ones created (or remembered as absent).
    fn load<C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        loading: &[Handle],
        mut create: Option<&mut Create<'_, C, V>>,
    ) -> Result<()> {
        if loading.is_empty() {
            return Ok(());
        }
        let spill = self.spill.as_ref().expect("loading needs a store");
        let keys: Vec<&[u8]> = loading.iter().map(|h| &*self.cache.get(*h).key).collect();
        let found = spill.get_many(&keys)?;
        let present: Vec<&[u8]> = found.iter().flatten().map(Vec::as_slice).collect();
        let mut decoded = codec.decode(&present)?.into_iter();
        for (h, f) in loading.iter().zip(&found) {
            let value = match f {
                Some(_) => Some(decoded.next().ok_or_else(|| {
                    crate::error::Error::Internal("codec decoded too few values".into())
                })?),
                None => match create.as_mut() {
                    Some(c) => Some(c(codec)?),
                    None => None,
                },
            };
            let e = self.cache.get_mut(*h);
            e.flags &= !LOADING;
            if f.is_some() {
                e.flags |= IN_STORE;
            }
            let w = weigh(&e.key, value.as_ref(), codec);
            self.cache.get_mut(*h).value = value;
            self.set_weight(*h, w);
        }
        Ok(())
    }

    /// The value of one key, loading it from the store if need be.
    pub fn get<C: ValueCodec<V>>(&mut self, codec: &mut C, k: KeyRef<'_>) -> Result<Option<&V>> {
        let h = self.get_many(codec, [Some(k)])?[0];
        Ok(h.and_then(|h| self.cache.get(h).value.as_ref()))
    }

    /// Sets one key's value (releasing the old one).
    pub fn put<C: ValueCodec<V>>(&mut self, codec: &mut C, k: KeyRef<'_>, value: V) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        entry_key(&k, &mut scratch);
        let hash = self.cache.hash(&scratch);
        let w = weigh(&scratch, Some(&value), codec);
        match self.cache.find(hash, &scratch) {
            Some(h) => {
                if let Some(old) = self.cache.get_mut(h).value.replace(value) {
                    codec.release(old);
                }
                let e = self.cache.get_mut(h);
                e.flags = (e.flags & !LOADING) | REFERENCED;
                self.set_weight(h, w);
                self.mark_dirty(h);
            }
            None => {
                // The store may hold an older row: a later delete must
                // then write a tombstone.
                let maybe = if self.spill.is_some() && self.stored.may_miss(k.namespace) {
                    IN_STORE
                } else {
                    0
                };
                self.insert(&scratch, hash, Some(value), w, DIRTY | REFERENCED | maybe);
            }
        }
        self.scratch = scratch;
        Ok(())
    }

    /// Deletes one key.
    pub fn delete<C: ValueCodec<V>>(&mut self, codec: &mut C, k: KeyRef<'_>) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        entry_key(&k, &mut scratch);
        let hash = self.cache.hash(&scratch);
        match self.cache.find(hash, &scratch) {
            Some(h) => self.remove(codec, h),
            None if self.spill.is_some() && self.stored.may_miss(k.namespace) => {
                // The store may hold it: a tombstone writes the delete later.
                let w = weigh(&scratch, None, codec);
                self.insert(&scratch, hash, None, w, DIRTY | IN_STORE);
            }
            None => {}
        }
        self.scratch = scratch;
        Ok(())
    }

    /// Deletes the entry at `h`: gone from memory, and a tombstone when
    /// the store holds its key.
    pub fn remove<C: ValueCodec<V>>(&mut self, codec: &mut C, h: Handle) {
        if self.spill.is_some() && self.cache.get(h).is(IN_STORE) {
            if let Some(v) = self.cache.get_mut(h).value.take() {
                codec.release(v);
            }
            let w = weigh(&self.cache.get(h).key, None, codec);
            self.set_weight(h, w);
            self.mark_dirty(h);
        } else if let Some(v) = self.take_entry(h).value {
            codec.release(v);
        }
    }

    /// Evicts entries while the subtask's tables together exceed the
    /// cache budget (to 90 % of it, so evictions come in batches): dirty
    /// ones are written in one write batch. A no-op on the heap.
    pub fn maintain<C: ValueCodec<V>>(&mut self, codec: &mut C) -> Result<()> {
        if self.spill.is_none() || self.budget.used() <= self.budget.limit() {
            return Ok(());
        }
        let target = self.budget.limit() / 10 * 9;
        let excess = self.budget.used().saturating_sub(target);
        let victims = self.cache.victims(excess);
        self.write_out(codec, &victims)?;
        self.cache.compact_dirty();
        for h in victims {
            let e = self.take_entry(h);
            let ns = e.namespace();
            if e.value.is_some() {
                // The store now holds a row the cache does not.
                self.stored.evicted(ns);
            }
            if let Some(v) = e.value {
                codec.release(v);
            }
        }
        Ok(())
    }

    /// Writes every dirty entry to the store in one write batch (before a
    /// checkpoint of the store); entries stay cached, now clean.
    pub fn flush<C: ValueCodec<V>>(&mut self, codec: &mut C) -> Result<()> {
        if self.spill.is_none() {
            return Ok(());
        }
        let mut dirty = self.cache.take_dirty();
        dirty.sort_unstable();
        dirty.dedup();
        dirty.retain(|h| self.cache.is_live(*h) && self.cache.get(*h).is(DIRTY));
        self.write_out(codec, &dirty)?;
        for h in dirty {
            if self.cache.get(h).value.is_none() {
                // The delete is written: the tombstone has done its job.
                self.take_entry(h);
            } else {
                let e = self.cache.get_mut(h);
                e.flags = (e.flags & !DIRTY) | IN_STORE;
            }
        }
        Ok(())
    }

    /// Writes the dirty entries among `handles` (values as puts, tombstones
    /// as deletes) in one batch.
    fn write_out<C: ValueCodec<V>>(&mut self, codec: &mut C, handles: &[Handle]) -> Result<()> {
        let Some(spill) = &self.spill else {
            return Ok(());
        };
        let dirty: Vec<Handle> = handles
            .iter()
            .copied()
            .filter(|h| self.cache.get(*h).is(DIRTY))
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let mut put_keys = Vec::new();
        let mut put_values = Vec::new();
        let mut deletes = Vec::new();
        for h in &dirty {
            let e = self.cache.get(*h);
            match &e.value {
                Some(v) => {
                    put_keys.push(&*e.key);
                    put_values.push(v);
                }
                None => deletes.push(&*e.key),
            }
        }
        let mut encoded = Vec::with_capacity(put_values.len());
        codec.encode(&put_values, &mut encoded)?;
        let puts: Vec<(&[u8], &[u8])> = put_keys
            .iter()
            .zip(&encoded)
            .map(|(k, v)| (*k, v.as_slice()))
            .collect();
        spill.write(&puts, &deletes)?;
        for h in dirty {
            let e = self.cache.get(h);
            let ns = e.namespace();
            if e.value.is_some() {
                self.stored.wrote(ns);
            }
        }
        Ok(())
    }

    /// Every cached entry with a value, encoded (heap snapshots): keys and
    /// values, in chunks so encoding never holds the whole state twice.
    pub(crate) fn encode_all<C: ValueCodec<V>>(
        &self,
        codec: &mut C,
        mut sink: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        const CHUNK: usize = 8192;
        let entries: Vec<&Entry<V>> = self
            .cache
            .all()
            .map(|(_, e)| e)
            .filter(|e| e.value.is_some())
            .collect();
        let mut out = Vec::with_capacity(CHUNK);
        for chunk in entries.chunks(CHUNK) {
            let values: Vec<&V> = chunk.iter().filter_map(|e| e.value.as_ref()).collect();
            out.clear();
            codec.encode(&values, &mut out)?;
            for (e, v) in chunk.iter().zip(&out) {
                sink(&e.key, v)?;
            }
        }
        Ok(())
    }

    /// Loads restored entries (stored keys and encoded values) into the
    /// cache, keeping only this table's key groups.
    pub(crate) fn load_rows<C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        rows: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        let rows: Vec<&(Vec<u8>, Vec<u8>)> = rows
            .iter()
            .filter(|(k, _)| k.len() >= 10 && self.key_groups.contains(&key_group_of_key(k)))
            .collect();
        let values: Vec<&[u8]> = rows.iter().map(|(_, v)| v.as_slice()).collect();
        let decoded = codec.decode(&values)?;
        for ((k, _), v) in rows.into_iter().zip(decoded) {
            let hash = self.cache.hash(k);
            let w = weigh(k, Some(&v), codec);
            if let Some(old) = self.cache.find(hash, k) {
                if let Some(v) = self.take_entry(old).value {
                    codec.release(v);
                }
            }
            self.insert(k, hash, Some(v), w, DIRTY);
        }
        Ok(())
    }
}

/// The least key above every key of key group `kg`.
fn group_end(kg: usize) -> Vec<u8> {
    match u16::try_from(kg + 1) {
        Ok(next) => next.to_be_bytes().to_vec(),
        Err(_) => vec![0xFF; 11],
    }
}

fn weigh<V>(key: &[u8], value: Option<&V>, codec: &impl ValueCodec<V>) -> usize {
    ENTRY_OVERHEAD + key.len() + value.map_or(0, |v| codec.weight(v))
}
