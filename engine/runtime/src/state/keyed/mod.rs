//! The keyed-state API user code programs against (Flink's `ValueState`,
//! `ListState`, `MapState`): a [`KeyedState`] store per operator subtask,
//! opened from the [`OperatorContext`] on the configured backend, and typed
//! handles ([`ValueState`], [`ListState`], [`MapState`]) that read and write
//! through a [`KeyScope`] — the current key, its key group and a namespace
//! (0 unless set; a window start, say).
//!
//! Every declared state is a [`StateTable`] of the subtask's
//! [`StateStore`] (so on RocksDB it is a bounded write-back cache in front
//! of a column family), keyed by (key group, namespace, key). A value or a
//! list is one entry (a list holds length-prefixed elements); a map is one
//! entry holding the key's whole map (map keys and values encoded, in map
//! key order), so reading or writing one map entry touches memory only and
//! a flush writes the map once. Values are encoded with `postcard`
//! (serde). Timers are one more table (`__timers`), namespaced by time.
//!
//! Snapshots are the store's (heap rows or a RocksDB checkpoint); either
//! restores into either backend at any parallelism.
//!
//! This module knows nothing of operators or the DSL.

mod handle;
pub mod layout;
#[cfg(test)]
mod tests;

pub use handle::{ListState, MapState, ValueState};

use std::cell::{RefCell, RefMut};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use crate::error::{Error, Result};
use crate::operator::OperatorContext;
use crate::state::store::StateStore;
use crate::state::table::{split_entry_key, BytesCodec, KeyRef, StateTable, ValueCodec};
use crate::state::{OperatorSnapshot, RestoredState};

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
    /// The shape of its value type ([`layout::layout_of`]; for a map, of
    /// key and value): checkpoints record it, and a restore into another
    /// shape is refused.
    pub layout: String,
}

/// Most timers [`KeyedState::take_due_timers`] returns at once (bounds
/// memory when a watermark makes very many timers due).
pub const TIMER_CHUNK: usize = 65_536;

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

/// Tag of the operator-state entry recording every state's layout.
const LAYOUTS: u8 = b'L';

/// Refuses to restore a state whose recorded layout differs from the one
/// declared now.
fn check_layouts(
    ctx: &OperatorContext,
    states: &[StateDescriptor],
    entries: &[Vec<u8>],
) -> Result<()> {
    for e in entries {
        let Some((&LAYOUTS, json)) = e.split_first() else {
            continue;
        };
        let recorded: BTreeMap<String, String> = serde_json::from_slice(json).map_err(|e| {
            Error::Checkpoint(format!("{}: malformed state layouts: {e}", ctx.operator))
        })?;
        for s in states {
            match recorded.get(&s.name) {
                Some(old) if !old.is_empty() && !s.layout.is_empty() && *old != s.layout => {
                    return Err(Error::Checkpoint(format!(
                        "operator '{}': state '{}' was checkpointed as `{old}` and is now \
                         declared as `{}`; keyed state cannot be read as another type \
                         (add the changed type as a new state, keeping or migrating the old)",
                        ctx.operator, s.name, s.layout
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A map state's entries for one key and namespace: encoded map key →
/// encoded value, in map-key byte order.
pub type MapValue = BTreeMap<Vec<u8>, Vec<u8>>;

/// Stores a [`MapValue`] as `count (4 B) | (len (4 B) | key | len | value)*`.
#[derive(Debug, Default, Clone, Copy)]
pub struct MapCodec;

impl ValueCodec<MapValue> for MapCodec {
    fn encode(&mut self, values: &[&MapValue], out: &mut Vec<Vec<u8>>) -> Result<()> {
        for m in values {
            let mut b =
                Vec::with_capacity(4 + m.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>());
            b.extend_from_slice(&(m.len() as u32).to_le_bytes());
            for (k, v) in m.iter() {
                b.extend_from_slice(&(k.len() as u32).to_le_bytes());
                b.extend_from_slice(k);
                b.extend_from_slice(&(v.len() as u32).to_le_bytes());
                b.extend_from_slice(v);
            }
            out.push(b);
        }
        Ok(())
    }

    fn decode(&mut self, bytes: &[&[u8]]) -> Result<Vec<MapValue>> {
        bytes.iter().map(|b| decode_map(b)).collect()
    }

    fn weight(&self, m: &MapValue) -> usize {
        m.iter().map(|(k, v)| 48 + k.len() + v.len()).sum()
    }
}

fn decode_map(mut b: &[u8]) -> Result<MapValue> {
    let bad = || Error::State("a map state entry is truncated".into());
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>> {
        let v = b.get(..n).ok_or_else(bad)?.to_vec();
        *b = &b[n..];
        Ok(v)
    };
    let len = |b: &mut &[u8]| -> Result<usize> {
        let n = u32::from_le_bytes(b.get(..4).ok_or_else(bad)?.try_into().expect("4 bytes"));
        *b = &b[4..];
        Ok(n as usize)
    };
    let n = len(&mut b)?;
    let mut m = MapValue::new();
    for _ in 0..n {
        let kl = len(&mut b)?;
        let k = take(&mut b, kl)?;
        let vl = len(&mut b)?;
        let v = take(&mut b, vl)?;
        m.insert(k, v);
    }
    Ok(m)
}

/// One declared state's table.
enum Table {
    Bytes(StateTable<Vec<u8>>),
    Map(StateTable<MapValue>),
}

impl Table {
    fn scan_keys(&mut self, ns: i64, out: &mut BTreeSet<(usize, Vec<u8>)>) -> Result<()> {
        let mut add = |key: &[u8]| {
            let k = split_entry_key(key);
            out.insert((k.key_group, k.key.to_vec()));
        };
        match self {
            Table::Bytes(t) => t.scan(&mut BytesCodec, ns..=ns, |_, e| {
                add(e.key);
                Ok(())
            }),
            Table::Map(t) => t.scan(&mut MapCodec, ns..=ns, |_, e| {
                add(e.key);
                Ok(())
            }),
        }
    }

    fn delete(&mut self, k: KeyRef<'_>) -> Result<()> {
        match self {
            Table::Bytes(t) => t.delete(&mut BytesCodec, k),
            Table::Map(t) => t.delete(&mut MapCodec, k),
        }
    }

    fn maintain(&mut self) -> Result<()> {
        match self {
            Table::Bytes(t) => t.maintain(&mut BytesCodec),
            Table::Map(t) => t.maintain(&mut MapCodec),
        }
    }
}

/// One operator subtask's keyed state: the declared states on the
/// configured backend, for the key groups the subtask owns.
pub struct KeyedState {
    store: StateStore,
    /// In cells so reads through a shared [`KeyScope`] can load entries
    /// into the cache (`state.set(st, &(state.get(st)? ...))` borrows the
    /// scope twice).
    tables: Vec<RefCell<Table>>,
    timers: StateTable<Vec<u8>>,
    states: Vec<StateDescriptor>,
    by_name: HashMap<String, usize>,
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
        check_layouts(ctx, states, &restored.entries)?;
        let mut names: Vec<&str> = states.iter().map(|s| s.name.as_str()).collect();
        names.push(TIMERS);
        let mut store = StateStore::open(ctx, &names, restored)?;
        let mut tables = Vec::with_capacity(states.len());
        for s in states {
            tables.push(RefCell::new(match s.kind {
                StateKind::Map => Table::Map(store.table(&s.name, &mut MapCodec)?),
                StateKind::Value | StateKind::List => {
                    Table::Bytes(store.table(&s.name, &mut BytesCodec)?)
                }
            }));
        }
        let timers = store.table(TIMERS, &mut BytesCodec)?;
        Ok(KeyedState {
            key_groups: store.key_groups(),
            store,
            tables,
            timers,
            states: states.to_vec(),
            by_name,
            max_parallelism: ctx.max_parallelism,
        })
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

    /// Loads the namespace-0 state of `keys` (key group, bytes) that only
    /// the store holds, with one multi-get per state, so the calls for a
    /// batch's rows that follow find it in memory. A no-op on the heap.
    pub fn prefetch(&mut self, keys: &[(usize, &[u8])]) -> Result<()> {
        let refs = || keys.iter().map(|(kg, k)| Some(KeyRef::new(*kg, 0, k)));
        for t in &mut self.tables {
            match t.get_mut() {
                Table::Bytes(t) if t.spills() => {
                    t.get_many(&mut BytesCodec, refs())?;
                }
                Table::Map(t) if t.spills() => {
                    t.get_many(&mut MapCodec, refs())?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Evicts what exceeds the cache (RocksDB backend); call once per batch.
    pub fn maintain(&mut self) -> Result<()> {
        for t in &mut self.tables {
            t.get_mut().maintain()?;
        }
        self.timers.maintain(&mut BytesCodec)
    }

    /// Keys (key group, bytes) holding any state in namespace `ns`, in
    /// key-group then byte order.
    pub fn keys(&mut self, ns: i64) -> Result<Vec<(usize, Vec<u8>)>> {
        let mut out = BTreeSet::new();
        for t in &mut self.tables {
            t.get_mut().scan_keys(ns, &mut out)?;
        }
        Ok(out.into_iter().collect())
    }

    /// Removes and returns timers due at `watermark` (time <=
    /// watermark), ordered by time, then key group and key: all of them,
    /// or (beyond [`TIMER_CHUNK`] due at once) the next chunk — call again
    /// until it returns none.
    pub fn take_due_timers(&mut self, watermark: i64) -> Result<Vec<Timer>> {
        let mut due: Vec<Timer> = self
            .timers
            .take_first(&mut BytesCodec, ..=watermark, TIMER_CHUNK)?
            .into_iter()
            .map(|(k, _)| {
                let k = split_entry_key(&k);
                Timer {
                    time: k.namespace,
                    key_group: k.key_group,
                    key: k.key.to_vec(),
                }
            })
            .collect();
        due.sort();
        Ok(due)
    }

    /// A copy of the state at a barrier: a batch of heap entries, or
    /// RocksDB's native checkpoint (after flushing the caches). It aliases
    /// nothing the store changes later.
    pub fn snapshot(&mut self) -> Result<OperatorSnapshot> {
        let mut snap = self.store.snapshot();
        for t in &mut self.tables {
            match t.get_mut() {
                Table::Bytes(t) => snap.add(t, &mut BytesCodec)?,
                Table::Map(t) => snap.add(t, &mut MapCodec)?,
            }
        }
        snap.add(&mut self.timers, &mut BytesCodec)?;
        let mut snap = snap.finish()?;
        let layouts: BTreeMap<&str, &str> = self
            .states
            .iter()
            .map(|s| (s.name.as_str(), s.layout.as_str()))
            .collect();
        let mut entry = vec![LAYOUTS];
        entry.extend(serde_json::to_vec(&layouts).map_err(|e| Error::Internal(e.to_string()))?);
        snap.entries.push(entry);
        Ok(snap)
    }

    /// The id of state `name`, checking it was declared as `kind`.
    fn state(&self, name: &str, kind: StateKind) -> Result<usize> {
        let id = *self
            .by_name
            .get(name)
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

    fn bytes(&self, id: usize) -> Result<RefMut<'_, StateTable<Vec<u8>>>> {
        RefMut::filter_map(self.tables[id].borrow_mut(), |t| match t {
            Table::Bytes(t) => Some(t),
            Table::Map(_) => None,
        })
        .map_err(|_| Error::Internal("a map state used as a value or list".into()))
    }

    fn map(&self, id: usize) -> Result<RefMut<'_, StateTable<MapValue>>> {
        RefMut::filter_map(self.tables[id].borrow_mut(), |t| match t {
            Table::Map(t) => Some(t),
            Table::Bytes(_) => None,
        })
        .map_err(|_| Error::Internal("a value or list state used as a map".into()))
    }
}

/// The store positioned at one key (Flink's "current key") and namespace.
/// Typed handles read and write through it.
pub struct KeyScope<'a> {
    store: &'a mut KeyedState,
    key_group: usize,
    key: &'a [u8],
    namespace: i64,
}

impl<'a> KeyScope<'a> {
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
        let k = self.at();
        for t in &mut self.store.tables {
            t.get_mut().delete(k)?;
        }
        Ok(())
    }

    /// Sets an event-time timer for the current key at `time` (ms): the
    /// operator's timer callback runs for this key once the watermark
    /// reaches `time`. Setting the same time twice sets one timer.
    pub fn register_timer(&mut self, time: i64) -> Result<()> {
        let k = KeyRef::new(self.key_group, time, self.key);
        self.store.timers.put(&mut BytesCodec, k, Vec::new())
    }

    /// Removes the current key's timer at `time`, if set.
    pub fn delete_timer(&mut self, time: i64) -> Result<()> {
        let k = KeyRef::new(self.key_group, time, self.key);
        self.store.timers.delete(&mut BytesCodec, k)
    }

    /// Where the current key and namespace's entries live.
    fn at(&self) -> KeyRef<'a> {
        KeyRef::new(self.key_group, self.namespace, self.key)
    }
}
