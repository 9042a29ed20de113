//! An operator subtask's state store: the backend it runs on (the heap, or
//! a RocksDB database with one column family per table), the cache budget
//! its [`StateTable`]s share, restoring every table from a checkpoint of
//! either backend at any parallelism, and snapshots of every table.
//!
//! Both backends hold identical entries (`key group | namespace | key` →
//! encoded value), so a heap snapshot — one Arrow batch of
//! (`state`, `key`, `value`, `_key_group`) rows — restores into RocksDB
//! and a RocksDB checkpoint into the heap. An operator declares its tables
//! when it opens the store; a restored table it does not declare is an
//! error naming the operator and the state.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayBuilder, AsArray, BinaryBuilder, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::operator::OperatorContext;
use crate::state::key_group::range_of;
use crate::state::rocks::{key_group_of_key, RestoredDb, RocksSpill, RocksState};
use crate::state::snapshot::KEY_GROUP_COLUMN;
use crate::state::table::{Budget, StateTable, ValueCodec};
use crate::state::{OperatorSnapshot, RestoredState, StateBackend};

/// Column family of table `name` (prefixed so no table name can collide
/// with RocksDB's `default` family).
fn family(name: &str) -> String {
    format!("t.{name}")
}

/// Restored rows (entry key, encoded value) per table.
type Rows = HashMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

/// One operator subtask's state: see the [module docs](self).
pub struct StateStore {
    operator: String,
    key_groups: Range<usize>,
    budget: Budget,
    db: Option<Arc<RocksState>>,
    tables: Vec<String>,
    /// Heap backend: restored rows waiting for their table to be opened.
    pending: Rows,
    /// RocksDB backend: the database was filled from a checkpoint.
    restored: bool,
}

impl StateStore {
    /// Opens the store of the subtask `ctx` describes with tables
    /// `tables`, restoring `restored` (rows of a heap snapshot and/or
    /// databases of a RocksDB one, of any parallelism: only this subtask's
    /// key groups are kept).
    pub fn open(ctx: &OperatorContext, tables: &[&str], restored: RestoredState) -> Result<Self> {
        Self::open_spanning(ctx, tables, restored, None)
    }

    /// Opens the store of an operator whose input is not partitioned by key
    /// group (any subtask may hold any key, e.g. the local stage of top-N):
    /// its tables span every key group, while restore still hands each
    /// subtask the rows of its own key groups, so every restored entry
    /// lands in exactly one subtask at any parallelism.
    pub fn open_unkeyed(
        ctx: &OperatorContext,
        tables: &[&str],
        restored: RestoredState,
    ) -> Result<Self> {
        Self::open_spanning(ctx, tables, restored, Some(0..ctx.max_parallelism))
    }

    fn open_spanning(
        ctx: &OperatorContext,
        tables: &[&str],
        restored: RestoredState,
        span: Option<Range<usize>>,
    ) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        for t in tables {
            if t.is_empty() || !seen.insert(*t) {
                return Err(Error::Internal(format!(
                    "{}: state table names must be non-empty and unique ({tables:?})",
                    ctx.operator
                )));
            }
        }
        let owned = range_of(ctx.subtask, ctx.max_parallelism, ctx.parallelism);
        let key_groups = span.unwrap_or_else(|| owned.clone());
        let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        let mut rows = rows_of(&restored.keyed)?;
        let mut store = StateStore {
            operator: ctx.operator.clone(),
            key_groups: key_groups.clone(),
            budget: Budget::unbounded(),
            db: None,
            tables: names.clone(),
            pending: HashMap::new(),
            restored: false,
        };
        match &ctx.state.backend {
            StateBackend::Memory => {
                for db in &restored.dbs {
                    read_db(db, &owned, &mut rows)?;
                }
                store.check_declared(rows.keys())?;
                store.pending = rows;
            }
            StateBackend::RocksDb(cfg) => {
                for db in &restored.dbs {
                    store.check_declared(families_of(db)?.iter())?;
                }
                store.check_declared(rows.keys())?;
                let families: Vec<String> = names.iter().map(|n| family(n)).collect();
                let fams: Vec<&str> = families.iter().map(String::as_str).collect();
                store.restored = !restored.dbs.is_empty() || !rows.is_empty();
                let db = RocksState::open(
                    &ctx.state.local_dir,
                    &format!("{}-{}", ctx.operator, ctx.subtask),
                    &fams,
                    key_groups,
                    &owned,
                    cfg,
                    restored.dbs,
                )?;
                for (table, entries) in rows {
                    db.put_all(&family(&table), &entries, &owned)?;
                }
                store.db = Some(Arc::new(db));
                store.budget = Budget::new(cfg.cache_bytes);
            }
        }
        Ok(store)
    }

    fn check_declared<'a>(&self, names: impl Iterator<Item = &'a String>) -> Result<()> {
        for n in names {
            if !self.tables.contains(n) {
                return Err(Error::Checkpoint(format!(
                    "operator '{}': the checkpoint holds state '{n}', which the operator does \
                     not declare (it declares {:?}); was the job changed?",
                    self.operator, self.tables
                )));
            }
        }
        Ok(())
    }

    /// The key groups this subtask owns.
    pub fn key_groups(&self) -> Range<usize> {
        self.key_groups.clone()
    }

    /// The cache budget the tables share.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Opens declared table `name` (loading its restored rows on the heap).
    pub fn table<V, C: ValueCodec<V>>(
        &mut self,
        name: &str,
        codec: &mut C,
    ) -> Result<StateTable<V>> {
        if !self.tables.iter().any(|t| t == name) {
            return Err(Error::Internal(format!(
                "{}: state table '{name}' was not declared",
                self.operator
            )));
        }
        let spill = self.db.as_ref().map(|db| {
            Box::new(RocksSpill::new(db.clone(), &family(name)))
                as Box<dyn crate::state::table::Spill>
        });
        let mut t = StateTable::new(
            name,
            self.key_groups.clone(),
            spill,
            self.budget.clone(),
            self.restored,
        );
        if let Some(rows) = self.pending.remove(name) {
            t.load_rows(codec, &rows)?;
        }
        Ok(t)
    }

    /// Starts a snapshot; add every table, then finish.
    pub fn snapshot(&self) -> StoreSnapshot<'_> {
        StoreSnapshot {
            store: self,
            names: StringBuilder::new(),
            keys: BinaryBuilder::new(),
            values: BinaryBuilder::new(),
            groups: UInt32Builder::new(),
        }
    }
}

/// A snapshot being taken (see [`StateStore::snapshot`]).
pub struct StoreSnapshot<'a> {
    store: &'a StateStore,
    names: StringBuilder,
    keys: BinaryBuilder,
    values: BinaryBuilder,
    groups: UInt32Builder,
}

impl StoreSnapshot<'_> {
    /// Adds a table: on the heap its entries are encoded into the
    /// snapshot; on RocksDB its dirty entries are flushed to the database.
    pub fn add<V, C: ValueCodec<V>>(
        &mut self,
        table: &mut StateTable<V>,
        codec: &mut C,
    ) -> Result<()> {
        if self.store.db.is_some() {
            return table.flush(codec);
        }
        let name = table.name().to_string();
        table.encode_all(codec, |k, v| {
            self.names.append_value(&name);
            self.keys.append_value(k);
            self.values.append_value(v);
            self.groups.append_value(key_group_of_key(k) as u32);
            Ok(())
        })
    }

    /// The snapshot: one batch of rows (heap) or the database's native
    /// checkpoint (RocksDB, after every table flushed).
    pub fn finish(mut self) -> Result<OperatorSnapshot> {
        if let Some(db) = &self.store.db {
            return Ok(OperatorSnapshot {
                db: Some(db.checkpoint()?),
                ..OperatorSnapshot::default()
            });
        }
        if self.keys.is_empty() {
            return Ok(OperatorSnapshot::default());
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
                Arc::new(self.names.finish()),
                Arc::new(self.keys.finish()),
                Arc::new(self.values.finish()),
                Arc::new(self.groups.finish()),
            ],
        )?;
        Ok(OperatorSnapshot::keyed(vec![batch]))
    }
}

/// Rows of heap-snapshot batches, by table.
fn rows_of(batches: &[RecordBatch]) -> Result<Rows> {
    let mut rows = Rows::new();
    for b in batches {
        let col = |name: &str| {
            b.column_by_name(name).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "keyed state without a '{name}' column (a checkpoint of an older version?)"
                ))
            })
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
            let k = keys.value(r);
            if k.len() < 10 {
                return Err(Error::Checkpoint(format!(
                    "malformed keyed-state entry key of {} bytes",
                    k.len()
                )));
            }
            rows.entry(names.value(r).to_string())
                .or_default()
                .push((k.to_vec(), values.value(r).to_vec()));
        }
    }
    Ok(rows)
}

/// The tables a restored database holds.
fn families_of(db: &RestoredDb) -> Result<Vec<String>> {
    Ok(RocksState::families(&db.dir)?
        .into_iter()
        .filter_map(|f| f.strip_prefix("t.").map(str::to_string))
        .collect())
}

/// Reads the rows of `key_groups` of every table of a restored database
/// (for the heap backend), then deletes the local copy.
fn read_db(db: &RestoredDb, key_groups: &Range<usize>, rows: &mut Rows) -> Result<()> {
    let lo = db.key_groups.start.max(key_groups.start);
    let hi = db.key_groups.end.min(key_groups.end);
    if lo < hi {
        RocksState::read_groups(&db.dir, lo..hi, |fam, k, v| {
            if let Some(table) = fam.strip_prefix("t.") {
                rows.entry(table.to_string())
                    .or_default()
                    .push((k.to_vec(), v.to_vec()));
            }
            Ok(())
        })?;
    }
    remove_local(&db.dir);
    Ok(())
}

fn remove_local(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
