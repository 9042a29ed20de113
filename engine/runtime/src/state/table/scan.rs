//! Range scans of a state table over namespaces: cached entries merged
//! with the rows only the spill store holds (read and decoded a chunk at a
//! time, so a scan never holds more than a chunk of the store), and the
//! operations built on them — draining, taking the first entries or a
//! range, removing a range, rewriting or deleting entries in one walk.

use std::ops::{Bound, RangeBounds};

use super::*;

/// Namespace bounds as a half-open `[lo, hi)` range (`hi = None`: no end).
pub(super) fn ns_bounds(range: &impl RangeBounds<i64>) -> Option<(i64, Option<i64>)> {
    let lo = match range.start_bound() {
        Bound::Included(n) => *n,
        Bound::Excluded(n) => n.checked_add(1)?,
        Bound::Unbounded => i64::MIN,
    };
    let hi = match range.end_bound() {
        Bound::Included(n) => n.checked_add(1),
        Bound::Excluded(n) => Some(*n),
        Bound::Unbounded => None,
    };
    if hi.is_some_and(|h| h <= lo) {
        return None;
    }
    Some((lo, hi))
}

/// One scanned entry, handed to a scan's callback.
pub struct Scanned<'a, V> {
    /// The stored entry key (see [`split_entry_key`]).
    pub key: &'a [u8],
    /// Its value.
    pub value: &'a V,
    /// Whether it lives in the cache (else it is a temporary loaded from
    /// the store, released when the scan ends).
    pub resident: bool,
}

/// What [`StateTable::rewrite`] does with one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Rewrite<V> {
    /// Leave it as it is.
    Keep,
    /// Replace its value.
    Put(V),
    /// Delete it.
    Delete,
}

/// Rows read from the store and decoded per chunk during a scan.
pub(super) const SCAN_CHUNK: usize = 4096;

/// Stored rows collected during a scan, decoded and handed over a chunk at
/// a time so a scan never holds more than a chunk of the store in memory.
#[derive(Default)]
pub(super) struct StoredChunk {
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
}

impl StoredChunk {
    pub(super) fn push(&mut self, k: &[u8], v: &[u8]) {
        self.keys.push(k.to_vec());
        self.values.push(v.to_vec());
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn hand_over<V, C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        f: &mut impl FnMut(&mut C, Scanned<'_, V>) -> Result<()>,
    ) -> Result<()> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let refs: Vec<&[u8]> = self.values.iter().map(Vec::as_slice).collect();
        let decoded = codec.decode(&refs)?;
        let mut result = Ok(());
        for (k, v) in self.keys.iter().zip(&decoded) {
            if result.is_ok() {
                result = f(
                    codec,
                    Scanned {
                        key: k,
                        value: v,
                        resident: false,
                    },
                );
            }
        }
        for v in decoded {
            codec.release(v);
        }
        self.keys.clear();
        self.values.clear();
        result
    }
}

impl<V> StateTable<V> {
    /// Calls `f` for every entry with a value in the namespaces of `range`:
    /// cached entries in namespace order, then rows only the store holds,
    /// decoded a chunk at a time (temporaries, released after the call).
    pub fn scan<C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        range: impl RangeBounds<i64>,
        mut f: impl FnMut(&mut C, Scanned<'_, V>) -> Result<()>,
    ) -> Result<()> {
        let Some((lo, hi)) = ns_bounds(&range) else {
            return Ok(());
        };
        for h in self.resident(lo, hi) {
            let e = self.cache.get(h);
            if let Some(v) = &e.value {
                f(
                    codec,
                    Scanned {
                        key: &e.key,
                        value: v,
                        resident: true,
                    },
                )?;
            }
        }
        let Some(spill) = &self.spill else {
            return Ok(());
        };
        let cache = &self.cache;
        let mut chunk = StoredChunk::default();
        for (from, to) in self.store_spans(lo, hi, true) {
            spill.scan(&from, &to, &mut |k, v| {
                if cache.find(cache.hash(k), k).is_none() {
                    chunk.push(k, v);
                    if chunk.len() >= SCAN_CHUNK {
                        chunk.hand_over(codec, &mut f)?;
                    }
                }
                Ok(true)
            })?;
        }
        chunk.hand_over(codec, &mut f)
    }

    /// Walks every entry (as [`Self::scan`] over all namespaces), asking
    /// `f` what becomes of each value, then applies the puts and deletes in
    /// the order they were decided. At most `cap` changes are collected:
    /// once that many are, the rest of the walk asks nothing, so the walk's
    /// memory stays bounded. Whether it collected fewer than `cap` (it saw
    /// every entry; else a later call goes on where changes remain).
    pub fn rewrite<C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        cap: usize,
        mut f: impl FnMut(&V) -> Result<Rewrite<V>>,
    ) -> Result<bool> {
        let mut changed: Vec<(Vec<u8>, Option<V>)> = Vec::new();
        self.scan(codec, .., |_, e| {
            if changed.len() >= cap {
                return Ok(());
            }
            match f(e.value)? {
                Rewrite::Keep => {}
                Rewrite::Put(v) => changed.push((e.key.to_vec(), Some(v))),
                Rewrite::Delete => changed.push((e.key.to_vec(), None)),
            }
            Ok(())
        })?;
        let complete = changed.len() < cap;
        for (k, v) in changed {
            let at = split_entry_key(&k);
            match v {
                Some(v) => self.put(codec, at, v)?,
                None => self.delete(codec, at)?,
            }
        }
        Ok(complete)
    }

    /// Cached entries (not loading) of namespaces `[lo, hi)`.
    fn resident(&self, lo: i64, hi: Option<i64>) -> Vec<Handle> {
        let mut hs = self.cache.in_namespaces(
            Bound::Included(lo),
            hi.map_or(Bound::Unbounded, Bound::Excluded),
        );
        hs.retain(|h| !self.cache.get(*h).is(LOADING));
        hs
    }

    /// Key ranges of the store to read for namespaces `[lo, hi)`: every
    /// namespace after a restore, else those where the store may hold rows
    /// the cache does not (`missing`) or any rows at all.
    fn store_spans(&self, lo: i64, hi: Option<i64>, missing: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let spans: Vec<(i64, Option<i64>)> = if self.stored.restored {
            vec![(lo, hi)]
        } else {
            let upper = hi.map_or(Bound::Unbounded, Bound::Excluded);
            self.stored
                .rows
                .range((Bound::Included(lo), upper))
                .filter(|(_, partial)| !missing || **partial)
                .map(|(ns, _)| (*ns, ns.checked_add(1)))
                .collect()
        };
        let mut out = Vec::new();
        for (a, b) in spans {
            for kg in self.key_groups.clone() {
                let to = match b {
                    Some(b) => prefix(kg, b).to_vec(),
                    None => group_end(kg),
                };
                out.push((prefix(kg, a).to_vec(), to));
            }
        }
        out
    }

    /// Removes the entries of the namespaces of `range`, handing those with
    /// values to `f` at most `chunk` at a time. Between chunks the table is
    /// the caller's again (`f` gets it), so `f` may read and write it;
    /// entries `f` adds within the range may be drained too.
    pub fn drain<C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        range: impl RangeBounds<i64>,
        chunk: usize,
        mut f: impl FnMut(&mut Self, &mut C, Vec<(Box<[u8]>, V)>) -> Result<()>,
    ) -> Result<()> {
        let Some((lo, hi)) = ns_bounds(&range) else {
            return Ok(());
        };
        let chunk = chunk.max(1);
        let in_range = |ns: i64| ns >= lo && hi.is_none_or(|h| ns < h);
        let resident = self.resident(lo, hi);
        for part in resident.chunks(chunk) {
            let mut taken = Vec::new();
            let mut stored_keys: Vec<Box<[u8]>> = Vec::new();
            for h in part {
                if !self.cache.is_live(*h) {
                    continue;
                }
                let e = self.cache.get(*h);
                if !in_range(e.namespace()) || e.is(LOADING) {
                    continue;
                }
                let e = self.take_entry(*h);
                if e.is(IN_STORE) {
                    stored_keys.push(e.key.clone());
                }
                if let Some(v) = e.value {
                    taken.push((e.key, v));
                }
            }
            if let Some(spill) = &self.spill {
                if !stored_keys.is_empty() {
                    let refs: Vec<&[u8]> = stored_keys.iter().map(|k| &**k).collect();
                    spill.write(&[], &refs)?;
                }
            }
            if !taken.is_empty() {
                f(self, codec, taken)?;
            }
        }
        if self.spill.is_none() {
            return Ok(());
        }
        for (from, to) in self.store_spans(lo, hi, false) {
            let mut next = from;
            loop {
                let (keys, values) = self.stored_page(&next, &to, chunk)?;
                let Some(last) = keys.last() else {
                    break;
                };
                next = last.clone();
                next.push(0);
                let full = keys.len() >= chunk;
                let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                self.spill
                    .as_ref()
                    .expect("checked above")
                    .write(&[], &key_refs)?;
                let value_refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                let decoded = codec.decode(&value_refs)?;
                let taken: Vec<(Box<[u8]>, V)> = keys
                    .into_iter()
                    .map(Vec::into_boxed_slice)
                    .zip(decoded)
                    .collect();
                f(self, codec, taken)?;
                if !full {
                    break;
                }
            }
        }
        self.forget_stored(lo, hi);
        Ok(())
    }

    /// Removes and returns up to `n` entries with values of the namespaces
    /// of `range` (cached ones first, in namespace order, then rows only
    /// the store holds).
    pub fn take_first<C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        range: impl RangeBounds<i64>,
        n: usize,
    ) -> Result<Vec<(Box<[u8]>, V)>> {
        let Some((lo, hi)) = ns_bounds(&range) else {
            return Ok(Vec::new());
        };
        let mut taken = Vec::new();
        let mut stored_keys: Vec<Box<[u8]>> = Vec::new();
        let mut exhausted = true;
        for h in self.resident(lo, hi) {
            if taken.len() >= n {
                exhausted = false;
                break;
            }
            let e = self.take_entry(h);
            if e.is(IN_STORE) {
                stored_keys.push(e.key.clone());
            }
            if let Some(v) = e.value {
                taken.push((e.key, v));
            }
        }
        let Some(spill) = &self.spill else {
            return Ok(taken);
        };
        if !stored_keys.is_empty() {
            let refs: Vec<&[u8]> = stored_keys.iter().map(|k| &**k).collect();
            spill.write(&[], &refs)?;
        }
        for (from, to) in self.store_spans(lo, hi, false) {
            if taken.len() >= n {
                exhausted = false;
                break;
            }
            let want = n - taken.len();
            let (keys, values) = self.stored_page(&from, &to, want)?;
            if keys.len() >= want {
                exhausted = false;
            }
            if keys.is_empty() {
                continue;
            }
            let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            self.spill
                .as_ref()
                .expect("checked above")
                .write(&[], &refs)?;
            let value_refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            let decoded = codec.decode(&value_refs)?;
            taken.extend(keys.into_iter().map(Vec::into_boxed_slice).zip(decoded));
        }
        if exhausted {
            self.forget_stored(lo, hi);
        }
        Ok(taken)
    }

    /// Removes and returns every entry with a value in the namespaces of
    /// `range` (see [`Self::take_first`]).
    pub fn take_range<C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        range: impl RangeBounds<i64>,
    ) -> Result<Vec<(Box<[u8]>, V)>> {
        self.take_first(codec, range, usize::MAX)
    }

    /// Up to `n` rows of `[from, to)` only the store holds.
    #[allow(clippy::type_complexity)]
    fn stored_page(
        &self,
        from: &[u8],
        to: &[u8],
        n: usize,
    ) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>)> {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let Some(spill) = &self.spill else {
            return Ok((keys, values));
        };
        let cache = &self.cache;
        spill.scan(from, to, &mut |k, v| {
            if cache.find(cache.hash(k), k).is_none() {
                keys.push(k.to_vec());
                values.push(v.to_vec());
            }
            Ok(keys.len() < n)
        })?;
        Ok((keys, values))
    }

    /// Forgets what the store held in namespaces `[lo, hi)` (all deleted).
    fn forget_stored(&mut self, lo: i64, hi: Option<i64>) {
        let upper = hi.map_or(Bound::Unbounded, Bound::Excluded);
        let gone: Vec<i64> = self
            .stored
            .rows
            .range((Bound::Included(lo), upper))
            .map(|(ns, _)| *ns)
            .collect();
        for ns in gone {
            self.stored.rows.remove(&ns);
        }
    }

    /// Removes every entry in the namespaces of `range`, from memory and
    /// from the store (point deletes of the keys a scan finds, a page at a
    /// time: range tombstones would slow every later read until compaction
    /// drops them).
    pub fn remove_range<C: ValueCodec<V>>(
        &mut self,
        codec: &mut C,
        range: impl RangeBounds<i64>,
    ) -> Result<()> {
        let Some((lo, hi)) = ns_bounds(&range) else {
            return Ok(());
        };
        let hs = self.cache.in_namespaces(
            Bound::Included(lo),
            hi.map_or(Bound::Unbounded, Bound::Excluded),
        );
        for h in hs {
            if let Some(v) = self.take_entry(h).value {
                codec.release(v);
            }
        }
        let Some(spill) = &self.spill else {
            return Ok(());
        };
        for (from, to) in self.store_spans(lo, hi, false) {
            let mut doomed: Vec<Vec<u8>> = Vec::new();
            spill.scan(&from, &to, &mut |k, _| {
                doomed.push(k.to_vec());
                if doomed.len() >= SCAN_CHUNK {
                    let refs: Vec<&[u8]> = doomed.iter().map(Vec::as_slice).collect();
                    spill.write(&[], &refs)?;
                    doomed.clear();
                }
                Ok(true)
            })?;
            if !doomed.is_empty() {
                let refs: Vec<&[u8]> = doomed.iter().map(Vec::as_slice).collect();
                spill.write(&[], &refs)?;
            }
        }
        self.forget_stored(lo, hi);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries `i → [i]` for `i` in `0..n`, in namespace 0.
    fn table(n: u8) -> StateTable<Vec<u8>> {
        let mut t = StateTable::new("x", 0..128, None, Budget::unbounded(), false);
        for i in 0..n {
            let k = [i];
            t.put(&mut BytesCodec, KeyRef::new(0, 0, &k), vec![i])
                .unwrap();
        }
        t
    }

    fn values(t: &mut StateTable<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        t.scan(&mut BytesCodec, .., |_, e| {
            out.push(e.value.clone());
            Ok(())
        })
        .unwrap();
        out.sort();
        out
    }

    #[test]
    fn rewrite_keeps_puts_and_deletes() {
        let mut t = table(6);
        // Even values are deleted, multiples of three doubled.
        let complete = t
            .rewrite(&mut BytesCodec, 100, |v| {
                Ok(match v[0] {
                    n if n % 2 == 0 => Rewrite::Delete,
                    n if n % 3 == 0 => Rewrite::Put(vec![n * 2]),
                    _ => Rewrite::Keep,
                })
            })
            .unwrap();
        assert!(complete);
        assert_eq!(values(&mut t), [vec![1], vec![5], vec![6]]);
    }

    #[test]
    fn rewrite_stops_at_its_cap_and_a_later_call_goes_on() {
        let mut t = table(5);
        let delete = |_: &Vec<u8>| Ok(Rewrite::Delete);
        assert!(!t.rewrite(&mut BytesCodec, 3, delete).unwrap());
        assert_eq!(values(&mut t).len(), 2);
        // Exactly `cap` changes: not known to be complete.
        assert!(!t.rewrite(&mut BytesCodec, 2, delete).unwrap());
        assert!(t.rewrite(&mut BytesCodec, 2, delete).unwrap());
        assert!(values(&mut t).is_empty());
    }
}
