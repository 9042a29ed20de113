//! The state every join keeps: per side, a table of row lists keyed by
//! (key group, namespace, join key) — namespace 0 for the unbounded join,
//! the time bucket (pane) for the event-time joins — on the subtask's
//! state store, with each side's key encoder and row codec.

use arrow::datatypes::{DataType, SchemaRef};
use sluice_engine::state::store::StateStore;
use sluice_engine::state::table::{BytesCodec, StateTable};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Error, OperatorContext, Result};

use super::rows::RowLists;
use crate::table_keys::TableKeys;

const TABLES: [&str; 2] = ["left", "right"];

/// Both sides' keys, row codecs and stored rows.
pub(crate) struct Sides {
    pub(crate) keys: [TableKeys; 2],
    pub(crate) rows: [RowLists; 2],
    store: Option<StateStore>,
    pub(crate) tables: Option<[StateTable<Vec<u8>>; 2]>,
    restored: RestoredState,
}

impl Sides {
    /// Sides whose key columns `keys` (of `types`) pair up; `inputs` are
    /// the left and right schemas.
    pub(crate) fn new(
        keys: [Vec<usize>; 2],
        types: &[DataType],
        inputs: [SchemaRef; 2],
    ) -> Result<Self> {
        let [lk, rk] = keys;
        let [ls, rs] = inputs;
        Ok(Sides {
            keys: [TableKeys::new(lk, types)?, TableKeys::new(rk, types)?],
            rows: [RowLists::new(&ls)?, RowLists::new(&rs)?],
            store: None,
            tables: None,
            restored: RestoredState::default(),
        })
    }

    /// Opens the tables (restoring what [`Sides::restore`] kept).
    pub(crate) fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        let restored = std::mem::take(&mut self.restored);
        let mut store = StateStore::open(ctx, &TABLES, restored)?;
        let left = store.table(TABLES[0], &mut BytesCodec)?;
        let right = store.table(TABLES[1], &mut BytesCodec)?;
        self.tables = Some([left, right]);
        self.store = Some(store);
        Ok(())
    }

    /// Keeps restored state for [`Sides::open`].
    pub(crate) fn restore(&mut self, state: RestoredState) {
        self.restored = state;
    }

    /// Both tables.
    pub(crate) fn tables(&mut self) -> Result<&mut [StateTable<Vec<u8>>; 2]> {
        self.tables
            .as_mut()
            .ok_or_else(|| Error::Internal("join state used before open".into()))
    }

    /// Evicts what exceeds the cache (RocksDB backend).
    pub(crate) fn maintain(&mut self) -> Result<()> {
        for t in self.tables()?.iter_mut() {
            t.maintain(&mut BytesCodec)?;
        }
        Ok(())
    }

    /// Both tables' state (entries: the caller's progress).
    pub(crate) fn snapshot(&mut self, entries: Vec<Vec<u8>>) -> Result<OperatorSnapshot> {
        let (Some(store), Some(tables)) = (&self.store, &mut self.tables) else {
            return Err(Error::Internal("join snapshot before open".into()));
        };
        let mut snap = store.snapshot();
        for t in tables.iter_mut() {
            snap.add(t, &mut BytesCodec)?;
        }
        let mut snap = snap.finish()?;
        snap.entries = entries;
        Ok(snap)
    }
}
