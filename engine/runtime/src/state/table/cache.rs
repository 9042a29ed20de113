//! The in-memory part of a state table: entries in a slab, a hash index
//! for point lookups, an ordered index by namespace for range scans, the
//! list of dirty entries, and a CLOCK hand that picks entries to evict.
//! It knows nothing of the spill store; `super` decides what to write.

use std::collections::BTreeSet;
use std::ops::Bound;

use hashbrown::HashTable;

use crate::state::rocks::namespace_of;

/// The entry differs from its stored copy (or has none): flush writes it.
pub(super) const DIRTY: u8 = 1;
/// Read or written since the CLOCK hand last passed.
pub(super) const REFERENCED: u8 = 2;
/// The spill store holds a row for this key (possibly an older value).
pub(super) const IN_STORE: u8 = 4;
/// Placeholder of a key being loaded from the spill store.
pub(super) const LOADING: u8 = 8;

/// Bytes an entry costs besides its key and value: the slab slot, the
/// hash and ordered index entries, the key's allocation.
pub(super) const ENTRY_OVERHEAD: usize = 112;

/// One cached entry.
pub(super) struct Entry<V> {
    /// `key group (2 B) | namespace (8 B) | key`, as stored.
    pub key: Box<[u8]>,
    /// `None`: no value (deleted, or known to be absent from the store).
    pub value: Option<V>,
    pub hash: u64,
    /// What the entry counts against the cache budget.
    pub weight: usize,
    pub flags: u8,
}

impl<V> Entry<V> {
    pub fn namespace(&self) -> i64 {
        namespace_of(&self.key[2..10])
    }

    pub fn is(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Entries with their indexes.
pub(super) struct Cache<V> {
    slab: Vec<Option<Entry<V>>>,
    free: Vec<u32>,
    index: HashTable<u32>,
    order: BTreeSet<(i64, u32)>,
    /// Entries marked dirty since the last flush (may repeat or be stale:
    /// the flag decides).
    dirty: Vec<u32>,
    hand: usize,
    weight: usize,
    hasher: ahash::RandomState,
}

impl<V> Cache<V> {
    pub fn new() -> Self {
        Cache {
            slab: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            order: BTreeSet::new(),
            dirty: Vec::new(),
            hand: 0,
            weight: 0,
            hasher: ahash::RandomState::with_seeds(7, 11, 13, 17),
        }
    }

    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn weight(&self) -> usize {
        self.weight
    }

    pub fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let slab = &self.slab;
        self.index
            .find(hash, |i| {
                slab[*i as usize]
                    .as_ref()
                    .is_some_and(|e| e.hash == hash && &*e.key == key)
            })
            .copied()
    }

    pub fn is_live(&self, idx: u32) -> bool {
        self.slab.get(idx as usize).is_some_and(Option::is_some)
    }

    pub fn get(&self, idx: u32) -> &Entry<V> {
        self.slab[idx as usize]
            .as_ref()
            .expect("handles point at live entries")
    }

    pub fn get_mut(&mut self, idx: u32) -> &mut Entry<V> {
        self.slab[idx as usize]
            .as_mut()
            .expect("handles point at live entries")
    }

    /// Adds an entry (its key must not be present).
    pub fn insert(&mut self, entry: Entry<V>) -> u32 {
        self.weight += entry.weight;
        let (hash, ns) = (entry.hash, entry.namespace());
        let dirty = entry.is(DIRTY);
        let idx = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(entry);
                i
            }
            None => {
                self.slab.push(Some(entry));
                (self.slab.len() - 1) as u32
            }
        };
        let slab = &self.slab;
        self.index.insert_unique(hash, idx, |i| {
            slab[*i as usize].as_ref().map_or(0, |e| e.hash)
        });
        self.order.insert((ns, idx));
        if dirty {
            self.dirty.push(idx);
        }
        idx
    }

    /// Takes an entry out of the cache.
    pub fn remove(&mut self, idx: u32) -> Entry<V> {
        let e = self.slab[idx as usize]
            .take()
            .expect("removing a live entry");
        if let Ok(found) = self.index.find_entry(e.hash, |i| *i == idx) {
            found.remove();
        }
        self.order.remove(&(e.namespace(), idx));
        self.free.push(idx);
        self.weight -= e.weight;
        e
    }

    /// Marks an entry dirty (and referenced).
    pub fn touch_dirty(&mut self, idx: u32) {
        let e = self.slab[idx as usize]
            .as_mut()
            .expect("handles point at live entries");
        if e.flags & DIRTY == 0 {
            self.dirty.push(idx);
        }
        e.flags |= DIRTY | REFERENCED;
    }

    /// Sets an entry's weight (after its value changed).
    pub fn reweigh(&mut self, idx: u32, weight: usize) {
        let e = self.slab[idx as usize]
            .as_mut()
            .expect("handles point at live entries");
        self.weight = self.weight - e.weight + weight;
        e.weight = weight;
    }

    /// Entries with a namespace within the bounds, in namespace order.
    pub fn in_namespaces(&self, lo: Bound<i64>, hi: Bound<i64>) -> Vec<u32> {
        let lo = match lo {
            Bound::Included(n) => Bound::Included((n, 0)),
            Bound::Excluded(n) => Bound::Excluded((n, u32::MAX)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let hi = match hi {
            Bound::Included(n) => Bound::Included((n, u32::MAX)),
            Bound::Excluded(n) => Bound::Excluded((n, 0)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.order.range((lo, hi)).map(|(_, i)| *i).collect()
    }

    /// Every live entry.
    pub fn all(&self) -> impl Iterator<Item = (u32, &Entry<V>)> {
        self.slab
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i as u32, e)))
    }

    /// Drops stale positions from the dirty list (entries evicted or
    /// flushed since), so it stays proportional to the dirty entries even
    /// when nothing flushes (a job without checkpoints).
    pub fn compact_dirty(&mut self) {
        if self.dirty.len() > 2 * self.index.len() + 1024 {
            let slab = &self.slab;
            self.dirty.retain(|i| {
                slab[*i as usize]
                    .as_ref()
                    .is_some_and(|e| e.flags & DIRTY != 0)
            });
            self.dirty.sort_unstable();
            self.dirty.dedup();
        }
    }

    /// Takes the list of entries marked dirty since the last call.
    pub fn take_dirty(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.dirty)
    }

    /// Picks entries to evict until their weight reaches `bytes` (or none
    /// is left), by CLOCK: an entry referenced since the hand last passed
    /// gets a second chance. Loading placeholders are never picked.
    pub fn victims(&mut self, bytes: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut freed = 0usize;
        let mut passes = 0usize;
        let n = self.slab.len();
        if n == 0 {
            return out;
        }
        // Two full turns suffice: the first clears every reference bit.
        while freed < bytes && passes < 2 * n {
            passes += 1;
            self.hand = (self.hand + 1) % n;
            let Some(e) = self.slab[self.hand].as_mut() else {
                continue;
            };
            if e.flags & (LOADING | VICTIM) != 0 {
                continue;
            }
            if e.flags & REFERENCED != 0 {
                e.flags &= !REFERENCED;
                continue;
            }
            e.flags |= VICTIM;
            freed += e.weight;
            out.push(self.hand as u32);
        }
        for i in &out {
            self.get_mut(*i).flags &= !VICTIM;
        }
        out
    }
}

/// Marks entries already picked during one `victims` call.
const VICTIM: u8 = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::rocks::prefix;

    fn entry(cache: &Cache<u32>, ns: i64, k: u8, v: u32) -> Entry<u32> {
        let mut key = prefix(0, ns).to_vec();
        key.push(k);
        Entry {
            hash: cache.hash(&key),
            key: key.into(),
            value: Some(v),
            weight: 10,
            flags: 0,
        }
    }

    #[test]
    fn finds_orders_and_removes() {
        let mut c = Cache::new();
        let a = c.insert(entry(&c, 5, 1, 50));
        let b = c.insert(entry(&c, -3, 2, 30));
        let _ = c.insert(entry(&c, 9, 3, 90));
        let key = c.get(a).key.clone();
        assert_eq!(c.find(c.hash(&key), &key), Some(a));
        assert_eq!(
            c.in_namespaces(Bound::Unbounded, Bound::Excluded(9)),
            vec![b, a]
        );
        assert_eq!(c.remove(a).value, Some(50));
        assert_eq!(c.find(c.hash(&key), &key), None);
        assert_eq!(c.weight(), 20);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn clock_spares_referenced_entries_once() {
        let mut c = Cache::new();
        let ids: Vec<u32> = (0..4).map(|i| c.insert(entry(&c, 0, i, 0))).collect();
        c.get_mut(ids[1]).flags |= REFERENCED;
        let v = c.victims(20);
        assert_eq!(v.len(), 2);
        assert!(
            !v.contains(&ids[1]),
            "a referenced entry gets a second chance"
        );
        let all = c.victims(1000);
        assert_eq!(all.len(), 4, "a second turn takes every entry");
    }
}
