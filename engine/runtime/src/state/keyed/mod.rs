//! The keyed-state API user code programs against (Flink's `ValueState`,
//! `ListState`, `MapState`): a [`KeyedState`] store per operator subtask,
//! opened from the [`OperatorContext`] on the configured backend, and typed
//! handles ([`ValueState`], [`ListState`], [`MapState`]) that read and write
//! through a [`KeyScope`] — the current key, its key group and a namespace
//! (0 unless set; a window start, say).
//!
//! Both backends store the same bytes: an entry key is
//! `key group (2 B) | namespace (8 B, order-preserving) | key length (4 B) |
//! key | map key`, so a subtask's state is a few contiguous ranges, one
//! key's state in a namespace is a prefix, and a namespace is a range per key
//! group. On the heap each state is a `BTreeMap`; in RocksDB each state is a
//! column family. Values are encoded with `postcard` (serde).
//!
//! Snapshots: heap state becomes one Arrow batch (`state`, `key`, `value`,
//! `_key_group`), which restore filters by key group; RocksDB state is the
//! database's native checkpoint. Either restores into either backend at any
//! parallelism, because both carry the key group in every entry.
//!
//! This module knows nothing of operators or the DSL.

mod handle;
#[cfg(test)]
mod tests;

pub use handle::{ListState, MapState, ValueState};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{AsArray, BinaryArray, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
#[cfg(feature = "rocksdb")]
use rocksdb::{IteratorMode, Options, DB};

use crate::error::{Error, Result};
use crate::operator::OperatorContext;
use crate::state::key_group::range_of;
#[cfg(feature = "rocksdb")]
use crate::state::rocks::RocksState;
use crate::state::rocks::{key_group_of_key, namespace_of, prefix, RestoredDb};
use crate::state::snapshot::KEY_GROUP_COLUMN;
use crate::state::{OperatorSnapshot, RestoredState, StateBackend};

/// What a declared state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// One value per key and namespace.
    Value,
    /// A list of values per key and namespace.
    List,
    /// A map per key and namespace.
    Map,
}

impl StateKind {
    fn name(self) -> &'static str {
        match self {
            StateKind::Value => "value",
            StateKind::List => "list",
            StateKind::Map => "map",
        }
    }
}

/// A state an operator declares before it opens its store (RocksDB lays
/// each one out as a column family, so the set is fixed per run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDescriptor {
    /// Unique name within the operator; it names the state in checkpoints.
    pub name: String,
    /// What it holds.
    pub kind: StateKind,
}

/// Name of the internal state holding event-time timers.
const TIMERS: &str = "__timers";

/// An event-time timer that is due.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    /// When it was set to fire (event time, ms).
    pub time: i64,
    /// The key's group.
    pub key_group: usize,
    /// The key's bytes.
    pub key: Vec<u8>,
}

/// Column family of state `name` (prefixed so no user name can collide
/// with RocksDB's `default` family or an operator's own families).
fn family(name: &str) -> String {
    format!("keyed.{name}")
}

/// The entry-key prefix of `key` in namespace `ns`: every entry of that
/// key and namespace (a value, a list, all map entries) starts with it.
pub(crate) fn scope_prefix(key_group: usize, ns: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(14 + key.len());
    k.extend_from_slice(&prefix(key_group, ns));
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The smallest byte string greater than every string starting with `p`.
/// Entry keys start with a key group below 0xFFFF, so one always exists.
fn successor(p: &[u8]) -> Vec<u8> {
    let mut s = p.to_vec();
    while let Some(last) = s.last_mut() {
        if *last < 0xFF {
            *last += 1;
            return s;
        }
        s.pop();
    }
    vec![0xFF; p.len() + 1]
}

/// The user key of an entry key (after group, namespace and length).
fn user_key(entry: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(entry.get(10..14)?.try_into().ok()?) as usize;
    entry.get(14..14 + len)
}

enum Store {
    /// One ordered map per declared state.
    Heap(Vec<BTreeMap<Vec<u8>, Vec<u8>>>),
    #[cfg(feature = "rocksdb")]
    Rocks(RocksState),
}

/// One operator subtask's keyed state: the declared states on the
/// configured backend, for the key groups the subtask owns.
pub struct KeyedState {
    store: Store,
    states: Vec<StateDescriptor>,
    /// Declared states (`states` ends with the internal timer state).
    user_states: usize,
    by_name: HashMap<String, usize>,
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
    families: Vec<String>,
    key_groups: Range<usize>,
    max_parallelism: usize,
}

impl KeyedState {
    /// Opens the store for the subtask `ctx` describes, declaring `states`,
    /// and loads `restored` (heap rows and/or RocksDB databases of any
    /// parallelism; only this subtask's key groups are kept).
    pub fn open(
        ctx: &OperatorContext,
        states: &[StateDescriptor],
        restored: RestoredState,
    ) -> Result<Self> {
        let mut by_name = HashMap::new();
        for (i, s) in states.iter().enumerate() {
            let reserved = s.name.starts_with("__");
            if s.name.is_empty() || reserved || by_name.insert(s.name.clone(), i).is_some() {
                return Err(Error::State(format!(
                    "'{}' in {}: state names must be non-empty, unique and not start with '__'",
                    s.name, ctx.operator
                )));
            }
        }
        // Timers are one more state, keyed like the others (namespace =
        // firing time), so they are checkpointed and rescaled with them.
        let user_states = states.len();
        let mut states = states.to_vec();
        states.push(StateDescriptor {
            name: TIMERS.into(),
            kind: StateKind::Value,
        });
        by_name.insert(TIMERS.into(), user_states);
        let key_groups = range_of(ctx.subtask, ctx.max_parallelism, ctx.parallelism);
        let families: Vec<String> = states.iter().map(|s| family(&s.name)).collect();
        let store = match &ctx.state.backend {
            StateBackend::Memory => {
                let mut maps = vec![BTreeMap::new(); states.len()];
                for db in restored.dbs {
                    read_db(&db, &families, &key_groups, |i, k, v| {
                        maps[i].insert(k.to_vec(), v.to_vec());
                    })?;
                }
                Store::Heap(maps)
            }
            #[cfg(feature = "rocksdb")]
            StateBackend::RocksDb(cfg) => {
                let fams: Vec<&str> = families.iter().map(String::as_str).collect();
                Store::Rocks(RocksState::open(
                    &ctx.state.local_dir,
                    &format!("{}-{}", ctx.operator, ctx.subtask),
                    &fams,
                    key_groups.clone(),
                    cfg,
                    restored.dbs,
                )?)
            }
            #[cfg(not(feature = "rocksdb"))]
            StateBackend::RocksDb(_) => {
                return Err(crate::state::rocksdb_unavailable(
                    "the RocksDB state backend was chosen",
                ))
            }
        };
        let mut me = KeyedState {
            store,
            states,
            user_states,
            by_name,
            families,
            key_groups,
            max_parallelism: ctx.max_parallelism,
        };
        for b in &restored.keyed {
            me.load_rows(b)?;
        }
        Ok(me)
    }

    /// The key groups this store holds.
    pub fn key_groups(&self) -> Range<usize> {
        self.key_groups.clone()
    }

    /// The store positioned at `key` (its bytes, e.g. Arrow row-format key
    /// columns) in key group `key_group`, namespace 0. The key group must be
    /// one this subtask owns: state lands where the key's records are routed.
    pub fn scope<'a>(&'a mut self, key_group: usize, key: &'a [u8]) -> Result<KeyScope<'a>> {
        if !self.key_groups.contains(&key_group) {
            return Err(Error::Internal(format!(
                "key group {key_group} is not owned by this subtask ({:?} of {})",
                self.key_groups, self.max_parallelism
            )));
        }
        Ok(KeyScope {
            store: self,
            key_group,
            key,
            namespace: 0,
        })
    }

    /// Keys (key group, bytes) holding any state in namespace `ns`, in
    /// key-group then byte order. Scans the namespace's range in each key
    /// group of each state.
    pub fn keys(&self, ns: i64) -> Result<Vec<(usize, Vec<u8>)>> {
        let mut out = BTreeSet::new();
        for id in 0..self.user_states {
            for kg in self.key_groups.clone() {
                let from = prefix(kg, ns);
                self.scan(id, &from, &successor(&from), |k, _| {
                    let key = user_key(k).ok_or_else(|| malformed(k))?;
                    out.insert((kg, key.to_vec()));
                    Ok(())
                })?;
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Removes and returns every timer due at `watermark` (time <=
    /// watermark), ordered by time, then key group and key.
    pub fn take_due_timers(&mut self, watermark: i64) -> Result<Vec<Timer>> {
        let id = self.user_states;
        let mut due = Vec::new();
        let mut doomed = Vec::new();
        for kg in self.key_groups.clone() {
            let from = prefix(kg, i64::MIN);
            let to = match watermark.checked_add(1) {
                Some(next) => prefix(kg, next).to_vec(),
                None => successor(&from[..2]),
            };
            self.scan(id, &from, &to, |k, _| {
                let key = user_key(k).ok_or_else(|| malformed(k))?;
                due.push(Timer {
                    time: namespace_of(&k[2..10]),
                    key_group: kg,
                    key: key.to_vec(),
                });
                doomed.push(k.to_vec());
                Ok(())
            })?;
        }
        for k in doomed {
            self.delete(id, &k)?;
        }
        due.sort();
        Ok(due)
    }

    /// A copy of the state at a barrier: a batch of heap entries, or
    /// RocksDB's native checkpoint. It aliases nothing the store changes later.
    pub fn snapshot(&mut self) -> Result<OperatorSnapshot> {
        match &mut self.store {
            #[cfg(feature = "rocksdb")]
            Store::Rocks(db) => Ok(OperatorSnapshot {
                db: Some(db.checkpoint()?),
                ..OperatorSnapshot::default()
            }),
            Store::Heap(maps) => {
                let n: usize = maps.iter().map(BTreeMap::len).sum();
                if n == 0 {
                    return Ok(OperatorSnapshot::default());
                }
                let mut names = Vec::with_capacity(n);
                let mut keys: Vec<&[u8]> = Vec::with_capacity(n);
                let mut values: Vec<&[u8]> = Vec::with_capacity(n);
                let mut groups = Vec::with_capacity(n);
                for (i, m) in maps.iter().enumerate() {
                    for (k, v) in m {
                        names.push(self.states[i].name.as_str());
                        keys.push(k);
                        values.push(v);
                        groups.push(key_group_of_key(k) as u32);
                    }
                }
                let schema = Schema::new(vec![
                    Field::new("state", DataType::Utf8, false),
                    Field::new("key", DataType::Binary, false),
                    Field::new("value", DataType::Binary, false),
                    Field::new(KEY_GROUP_COLUMN, DataType::UInt32, false),
                ]);
                let batch = RecordBatch::try_new(
                    Arc::new(schema),
                    vec![
                        Arc::new(StringArray::from(names)),
                        Arc::new(BinaryArray::from(keys)),
                        Arc::new(BinaryArray::from(values)),
                        Arc::new(UInt32Array::from(groups)),
                    ],
                )?;
                Ok(OperatorSnapshot::keyed(vec![batch]))
            }
        }
    }

    /// Loads heap-snapshot rows (already filtered to our key groups).
    fn load_rows(&mut self, b: &RecordBatch) -> Result<()> {
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| Error::Checkpoint(format!("keyed state without a '{name}' column")))
        };
        let (names, keys, values) = (col("state")?, col("key")?, col("value")?);
        let (Some(names), Some(keys), Some(values)) = (
            names.as_string_opt::<i32>(),
            keys.as_binary_opt::<i32>(),
            values.as_binary_opt::<i32>(),
        ) else {
            return Err(Error::Checkpoint(
                "keyed state columns of the wrong type".into(),
            ));
        };
        for r in 0..b.num_rows() {
            let id = self.id_of(names.value(r))?;
            let k = keys.value(r);
            if !self.key_groups.contains(&key_group_of_key(k)) {
                continue;
            }
            self.put(id, k.to_vec(), values.value(r).to_vec())?;
        }
        Ok(())
    }

    fn id_of(&self, name: &str) -> Result<usize> {
        self.by_name.get(name).copied().ok_or_else(|| {
            Error::Checkpoint(format!(
                "restored state '{name}' is not declared by the operator (declared: {:?})",
                self.states.iter().map(|s| &s.name).collect::<Vec<_>>()
            ))
        })
    }

    /// The id of state `name`, checking it was declared as `kind`.
    fn state(&self, name: &str, kind: StateKind) -> Result<usize> {
        let id = *self
            .by_name
            .get(name)
            .filter(|id| **id < self.user_states)
            .ok_or_else(|| Error::State(format!("state '{name}' was not declared")))?;
        let declared = self.states[id].kind;
        if declared != kind {
            return Err(Error::State(format!(
                "state '{name}' is declared as a {} but used as a {}",
                declared.name(),
                kind.name()
            )));
        }
        Ok(id)
    }

    fn get(&self, id: usize, k: &[u8]) -> Result<Option<Vec<u8>>> {
        match &self.store {
            Store::Heap(maps) => Ok(maps[id].get(k).cloned()),
            #[cfg(feature = "rocksdb")]
            Store::Rocks(db) => db.get(&self.families[id], k),
        }
    }

    fn put(&mut self, id: usize, k: Vec<u8>, v: Vec<u8>) -> Result<()> {
        match &mut self.store {
            Store::Heap(maps) => {
                maps[id].insert(k, v);
                Ok(())
            }
            #[cfg(feature = "rocksdb")]
            Store::Rocks(db) => db.put(&self.families[id], &k, &v),
        }
    }

    fn delete(&mut self, id: usize, k: &[u8]) -> Result<()> {
        match &mut self.store {
            Store::Heap(maps) => {
                maps[id].remove(k);
                Ok(())
            }
            #[cfg(feature = "rocksdb")]
            Store::Rocks(db) => db.delete(&self.families[id], k),
        }
    }

    /// Calls `f` for every entry of state `id` in `[from, to)`.
    fn scan(
        &self,
        id: usize,
        from: &[u8],
        to: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        match &self.store {
            Store::Heap(maps) => {
                for (k, v) in maps[id].range::<[u8], _>((
                    std::ops::Bound::Included(from),
                    std::ops::Bound::Excluded(to),
                )) {
                    f(k, v)?;
                }
                Ok(())
            }
            #[cfg(feature = "rocksdb")]
            Store::Rocks(db) => db.scan(&self.families[id], from, to, f),
        }
    }

    /// Deletes every entry of state `id` starting with `p`.
    fn delete_prefix(&mut self, id: usize, p: &[u8]) -> Result<()> {
        let to = successor(p);
        match &mut self.store {
            Store::Heap(maps) => {
                let doomed: Vec<Vec<u8>> = maps[id]
                    .range::<[u8], _>((
                        std::ops::Bound::Included(p),
                        std::ops::Bound::Excluded(to.as_slice()),
                    ))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    maps[id].remove(&k);
                }
                Ok(())
            }
            #[cfg(feature = "rocksdb")]
            Store::Rocks(db) => db.delete_keys(&self.families[id], p, &to),
        }
    }
}

fn malformed(k: &[u8]) -> Error {
    Error::Internal(format!(
        "malformed keyed-state entry key of {} bytes",
        k.len()
    ))
}

/// Reads the entries of `key_groups` from a restored RocksDB database (for
/// the heap backend), then deletes the local copy.
#[cfg(feature = "rocksdb")]
fn read_db(
    db: &RestoredDb,
    families: &[String],
    key_groups: &Range<usize>,
    mut f: impl FnMut(usize, &[u8], &[u8]),
) -> Result<()> {
    let lo = db.key_groups.start.max(key_groups.start);
    let hi = db.key_groups.end.min(key_groups.end);
    if lo < hi {
        let err = |e: rocksdb::Error| Error::Checkpoint(format!("rocksdb: restored state: {e}"));
        let old = DB::open_cf_for_read_only(&Options::default(), &db.dir, families, false)
            .map_err(err)?;
        let from = (lo as u16).to_be_bytes();
        for (i, fam) in families.iter().enumerate() {
            let cf = old.cf_handle(fam).ok_or_else(|| {
                Error::Checkpoint(format!("restored database lacks state '{fam}'"))
            })?;
            for item in old.iterator_cf(cf, IteratorMode::From(&from, rocksdb::Direction::Forward))
            {
                let (k, v) = item.map_err(err)?;
                if key_group_of_key(&k) >= hi {
                    break;
                }
                f(i, &k, &v);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&db.dir);
    Ok(())
}

/// Without the `rocksdb` feature a checkpoint holding RocksDB state
/// cannot be read: say so rather than restore without it.
#[cfg(not(feature = "rocksdb"))]
fn read_db(
    db: &RestoredDb,
    _families: &[String],
    key_groups: &Range<usize>,
    _f: impl FnMut(usize, &[u8], &[u8]),
) -> Result<()> {
    if db.key_groups.start.max(key_groups.start) < db.key_groups.end.min(key_groups.end) {
        return Err(crate::state::rocksdb_unavailable(&format!(
            "the checkpoint holds RocksDB state ({})",
            db.dir.display()
        )));
    }
    Ok(())
}

/// The store positioned at one key (Flink's "current key") and namespace.
/// Typed handles read and write through it.
pub struct KeyScope<'a> {
    store: &'a mut KeyedState,
    key_group: usize,
    key: &'a [u8],
    namespace: i64,
}

impl KeyScope<'_> {
    /// The current key's bytes.
    pub fn key(&self) -> &[u8] {
        self.key
    }

    /// The current key's key group.
    pub fn key_group(&self) -> usize {
        self.key_group
    }

    /// The current namespace (0 unless set).
    pub fn namespace(&self) -> i64 {
        self.namespace
    }

    /// Switches to namespace `ns` (e.g. a window start) for the following
    /// reads and writes.
    pub fn set_namespace(&mut self, ns: i64) {
        self.namespace = ns;
    }

    /// Clears every state of the current key in the current namespace
    /// (e.g. when its window is done).
    pub fn clear_namespace(&mut self) -> Result<()> {
        let p = self.prefix();
        for id in 0..self.store.user_states {
            self.store.delete_prefix(id, &p)?;
        }
        Ok(())
    }

    /// Sets an event-time timer for the current key at `time` (ms): the
    /// operator's timer callback runs for this key once the watermark
    /// reaches `time`. Setting the same time twice sets one timer.
    pub fn register_timer(&mut self, time: i64) -> Result<()> {
        let id = self.store.user_states;
        let k = scope_prefix(self.key_group, time, self.key);
        self.store.put(id, k, Vec::new())
    }

    /// Removes the current key's timer at `time`, if set.
    pub fn delete_timer(&mut self, time: i64) -> Result<()> {
        let id = self.store.user_states;
        let k = scope_prefix(self.key_group, time, self.key);
        self.store.delete(id, &k)
    }

    fn prefix(&self) -> Vec<u8> {
        scope_prefix(self.key_group, self.namespace, self.key)
    }
}
