//! The table on the heap and over a real RocksDB column family with a
//! cache far smaller than the state: the same operations give the same
//! reads, memory stays within the budget, and the store is only read when
//! it may hold something the cache does not.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::state::rocks::{RocksConfig, RocksSpill, RocksState};

/// A spill store that counts the calls reaching RocksDB.
struct Counted {
    inner: RocksSpill,
    reads: Arc<AtomicUsize>,
    writes: Arc<AtomicUsize>,
}

impl Spill for Counted {
    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get_many(keys)
    }
    fn write(&self, puts: &[(&[u8], &[u8])], deletes: &[&[u8]]) -> Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write(puts, deletes)
    }
    fn scan(&self, from: &[u8], to: &[u8], f: &mut RowVisitor<'_>) -> Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.scan(from, to, f)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    reads: Arc<AtomicUsize>,
    writes: Arc<AtomicUsize>,
    table: StateTable<Vec<u8>>,
}

fn rocks(budget: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(
        RocksState::open(
            dir.path(),
            "t",
            &["t.x"],
            0..128,
            &(0..128),
            &RocksConfig::default(),
            vec![],
        )
        .unwrap(),
    );
    let (reads, writes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let spill = Counted {
        inner: RocksSpill::new(db, "t.x"),
        reads: reads.clone(),
        writes: writes.clone(),
    };
    let table = StateTable::new(
        "x",
        0..128,
        Some(Box::new(spill)),
        Budget::new(budget),
        false,
    );
    Fixture {
        _dir: dir,
        reads,
        writes,
        table,
    }
}

fn heap() -> StateTable<Vec<u8>> {
    StateTable::new("x", 0..128, None, Budget::unbounded(), false)
}

fn key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn at(i: u64, ns: i64) -> KeyRef<'static> {
    // Leaked keys keep the helper simple; tests are short-lived.
    let k: &'static [u8] = Box::leak(Box::new(key(i)));
    KeyRef::new((i % 128) as usize, ns, k)
}

/// Adds 1 to the counter of every key, a batch at a time.
fn bump(t: &mut StateTable<Vec<u8>>, keys: &[(u64, i64)]) {
    let hs = t
        .upsert_many(
            &mut BytesCodec,
            keys.iter().map(|(k, ns)| Some(at(*k, *ns))),
            |_| Ok(0u64.to_le_bytes().to_vec()),
        )
        .unwrap();
    for h in hs.into_iter().flatten() {
        t.update(h, &mut BytesCodec, |v, _| {
            let n = u64::from_le_bytes(v[..8].try_into().unwrap()) + 1;
            v.copy_from_slice(&n.to_le_bytes());
        });
    }
    t.maintain(&mut BytesCodec).unwrap();
}

fn counts(t: &mut StateTable<Vec<u8>>, ns: Range<i64>) -> BTreeMap<(i64, Vec<u8>), u64> {
    let mut out = BTreeMap::new();
    t.scan(&mut BytesCodec, ns, |_, e| {
        let k = split_entry_key(e.key);
        let n = u64::from_le_bytes(e.value[..8].try_into().unwrap());
        assert!(
            out.insert((k.namespace, k.key.to_vec()), n).is_none(),
            "each key once"
        );
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn state_many_times_the_cache_stays_correct_and_bounded() {
    // 20,000 keys in 4 namespaces, about 3 MB of entries, through a 64 KiB
    // cache; every key is bumped 3 times in shuffled batches.
    let mut f = rocks(64 << 10);
    let mut h = heap();
    let mut all: Vec<(u64, i64)> = (0..20_000u64).map(|i| (i, (i % 4) as i64)).collect();
    for round in 0..3u64 {
        all.sort_by_key(|(k, _)| (k.wrapping_mul(2654435761 + round)) % 20_011);
        for batch in all.chunks(1000) {
            bump(&mut f.table, batch);
            bump(&mut h, batch);
            assert!(
                f.table.budget.used() <= (64 << 10) + 1000 * 200,
                "the cache stays within its budget plus one batch"
            );
        }
    }
    assert!(f.table.cached_len() < 1000, "most entries were evicted");
    let (a, b) = (counts(&mut f.table, 0..4), counts(&mut h, 0..4));
    assert_eq!(a.len(), 20_000);
    assert!(a.values().all(|n| *n == 3));
    assert_eq!(a, b);
    // Dropping namespaces drops them from the store too.
    f.table.remove_range(&mut BytesCodec, ..2).unwrap();
    let left = counts(&mut f.table, i64::MIN..i64::MAX);
    assert_eq!(left.len(), 10_000);
    assert!(left.keys().all(|(ns, _)| *ns >= 2));
}

#[test]
fn a_fitting_working_set_never_reads_the_store() {
    let mut f = rocks(64 << 20);
    let keys: Vec<(u64, i64)> = (0..5_000u64).map(|i| (i, 7)).collect();
    for _ in 0..5 {
        for batch in keys.chunks(500) {
            bump(&mut f.table, batch);
        }
        f.table.flush(&mut BytesCodec).unwrap();
    }
    assert_eq!(f.reads.load(Ordering::Relaxed), 0, "no read while it fits");
    assert_eq!(
        f.writes.load(Ordering::Relaxed),
        5,
        "one write batch per flush"
    );
    // New keys in a namespace that was flushed but never evicted are
    // surely new: still no read.
    bump(&mut f.table, &[(9_999_999, 7)]);
    assert_eq!(f.reads.load(Ordering::Relaxed), 0);
    assert_eq!(counts(&mut f.table, 7..8).len(), 5_001);
}

#[test]
fn misses_are_one_multi_get_per_batch() {
    let mut f = rocks(16 << 10);
    let keys: Vec<(u64, i64)> = (0..4_000u64).map(|i| (i, 1)).collect();
    for batch in keys.chunks(500) {
        bump(&mut f.table, batch);
    }
    let before = f.reads.load(Ordering::Relaxed);
    for batch in keys.chunks(500) {
        bump(&mut f.table, batch);
    }
    let reads = f.reads.load(Ordering::Relaxed) - before;
    assert!(
        reads <= 8,
        "at most one read per batch of misses, got {reads}"
    );
    assert!(counts(&mut f.table, 1..2).values().all(|n| *n == 2));
}

#[test]
fn deletes_of_stored_keys_survive_eviction_and_flush() {
    let mut f = rocks(8 << 10);
    let keys: Vec<(u64, i64)> = (0..2_000u64).map(|i| (i, 0)).collect();
    for batch in keys.chunks(200) {
        bump(&mut f.table, batch);
    }
    f.table.flush(&mut BytesCodec).unwrap();
    // Delete every even key (most only in the store), then churn the cache.
    for i in (0..2_000u64).step_by(2) {
        f.table.delete(&mut BytesCodec, at(i, 0)).unwrap();
    }
    f.table.maintain(&mut BytesCodec).unwrap();
    let other: Vec<(u64, i64)> = (10_000..14_000u64).map(|i| (i, 1)).collect();
    for batch in other.chunks(200) {
        bump(&mut f.table, batch);
    }
    f.table.flush(&mut BytesCodec).unwrap();
    let left = counts(&mut f.table, 0..1);
    assert_eq!(left.len(), 1_000);
    assert!(left
        .keys()
        .all(|(_, k)| u64::from_be_bytes(k[..8].try_into().unwrap()) % 2 == 1));
    for i in [0u64, 2, 1998] {
        assert!(f.table.get(&mut BytesCodec, at(i, 0)).unwrap().is_none());
    }
    assert!(f.table.get(&mut BytesCodec, at(1, 0)).unwrap().is_some());
    // Taking a range returns cached and stored entries alike, once.
    let taken = f.table.take_range(&mut BytesCodec, 0..=0).unwrap();
    assert_eq!(taken.len(), 1_000);
    assert!(counts(&mut f.table, 0..1).is_empty());
}

#[test]
fn a_restored_store_is_consulted_for_every_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(
        RocksState::open(
            dir.path(),
            "t",
            &["t.x"],
            0..128,
            &(0..128),
            &RocksConfig::default(),
            vec![],
        )
        .unwrap(),
    );
    let spill = RocksSpill::new(db.clone(), "t.x");
    let mut k = Vec::new();
    entry_key(&at(5, 3), &mut k);
    spill.write(&[(&k, &41u64.to_le_bytes())], &[]).unwrap();
    let mut t = StateTable::new(
        "x",
        0..128,
        Some(Box::new(RocksSpill::new(db, "t.x"))),
        Budget::new(1 << 20),
        true,
    );
    bump(&mut t, &[(5, 3)]);
    assert_eq!(
        counts(&mut t, 3..4).values().copied().collect::<Vec<_>>(),
        [42]
    );
}
