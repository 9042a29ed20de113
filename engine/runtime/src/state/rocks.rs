//! RocksDB keyed state for one operator subtask: the store behind the
//! state tables' write-back caches (`state::table`, through [`RocksSpill`]).
//! Keys are prefixed by key group (two bytes, big endian) and a namespace
//! (an order-preserving encoding of an `i64`, e.g. a window or pane
//! start), then the user key, so a subtask's state is a few contiguous
//! ranges and a namespace is a range within each key group. Each table is
//! a column family; the block cache and the memtables (all families
//! together) are bounded; writes go in write batches without the
//! write-ahead log; bloom filters keep lookups of absent keys cheap.
//!
//! Everything that names RocksDB lives in this module.
//!
//! A checkpoint is RocksDB's native checkpoint (flush, then hard links of
//! the immutable SST files): cheap on the task thread, and the files are
//! uploaded by the checkpoint writer while processing goes on. Restoring at
//! the same key-group range adopts a copy of the checkpointed database;
//! at another parallelism the overlapping key-group ranges of every old
//! database are copied into a fresh one.
//!
//! The settings, the key layout and the checkpoint and restore descriptors
//! are always built; the database itself ([`RocksState`]) only with the
//! `rocksdb` feature (on by default), so a job built without it links no
//! RocksDB and choosing the backend is a configuration error.

use std::ops::Range;
#[cfg(feature = "rocksdb")]
use std::path::Path;
use std::path::PathBuf;
#[cfg(feature = "rocksdb")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "rocksdb")]
use std::sync::Arc;

#[cfg(feature = "rocksdb")]
use rocksdb::checkpoint::Checkpoint;
#[cfg(feature = "rocksdb")]
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

#[cfg(feature = "rocksdb")]
use crate::error::{Error, Result};
#[cfg(feature = "rocksdb")]
use crate::state::table::{RowVisitor, Spill};

/// Settings of the RocksDB backend. An operator subtask's memory for
/// state is about `cache_bytes + block_cache_bytes + write_buffer_bytes`,
/// whatever the number of keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocksConfig {
    /// Write-back cache of live state per operator subtask, bytes (what
    /// the state tables keep in memory; state beyond it lives in RocksDB).
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: usize,
    /// Block cache per database, bytes (bounds read memory).
    pub block_cache_bytes: usize,
    /// Memtables of all column families of a database together, bytes.
    pub write_buffer_bytes: usize,
}

fn default_cache_bytes() -> usize {
    64 << 20
}

impl Default for RocksConfig {
    fn default() -> Self {
        RocksConfig {
            cache_bytes: default_cache_bytes(),
            block_cache_bytes: 16 << 20,
            write_buffer_bytes: 16 << 20,
        }
    }
}

/// A database checkpoint waiting for upload: a local directory of hard
/// links the writer copies and then deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbCheckpoint {
    /// The native checkpoint's directory.
    pub dir: PathBuf,
    /// Unique name of the database instance (prefixes its shared SST files).
    pub instance: String,
    /// Key groups the database holds.
    pub key_groups: Range<usize>,
}

/// A checkpointed database copied back to local disk for restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredDb {
    /// Local directory holding the database files.
    pub dir: PathBuf,
    /// Key groups it held.
    pub key_groups: Range<usize>,
}

#[cfg(feature = "rocksdb")]
fn db_err(context: &str) -> impl Fn(rocksdb::Error) -> Error + '_ {
    move |e| Error::Checkpoint(format!("rocksdb: {context}: {e}"))
}

/// Order-preserving big-endian encoding of a signed namespace.
pub fn namespace_bytes(ns: i64) -> [u8; 8] {
    ((ns as u64) ^ (1 << 63)).to_be_bytes()
}

/// Decodes [`namespace_bytes`].
pub fn namespace_of(bytes: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// The 10-byte prefix of every key: key group, then namespace.
pub fn prefix(key_group: usize, ns: i64) -> [u8; 10] {
    let mut p = [0u8; 10];
    p[..2].copy_from_slice(&(key_group as u16).to_be_bytes());
    p[2..].copy_from_slice(&namespace_bytes(ns));
    p
}

/// The key group of a stored key.
pub fn key_group_of_key(key: &[u8]) -> usize {
    u16::from_be_bytes([key[0], key[1]]) as usize
}

#[cfg(feature = "rocksdb")]
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// One subtask's database (feature `rocksdb`).
#[cfg(feature = "rocksdb")]
pub struct RocksState {
    db: Option<DB>,
    dir: PathBuf,
    instance: String,
    key_groups: Range<usize>,
    checkpoints: AtomicU64,
}

#[cfg(feature = "rocksdb")]
fn options(cfg: &RocksConfig) -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // One bound for the memtables of every column family together.
    o.set_db_write_buffer_size(cfg.write_buffer_bytes);
    o.set_write_buffer_size((cfg.write_buffer_bytes / 2).max(1 << 20));
    o.set_max_write_buffer_number(2);
    o.set_max_open_files(256);
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(&Cache::new_lru_cache(cfg.block_cache_bytes));
    t.set_cache_index_and_filter_blocks(true);
    // Most lookups of a write-back cache's misses are for keys the store
    // does not hold (new keys): a bloom filter answers those from memory.
    t.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&t);
    o
}

#[cfg(feature = "rocksdb")]
/// Write options without the write-ahead log: the database is never
/// reopened after a crash (state comes back from checkpoints), so logging
/// every write would only cost I/O.
fn no_wal() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.disable_wal(true);
    opts
}

#[cfg(feature = "rocksdb")]
impl RocksState {
    /// Opens a fresh database under `base` with column families
    /// `families` for keys of `key_groups`, after restoring the rows of
    /// `import` (usually the same groups) from `restored` databases.
    pub fn open(
        base: &Path,
        name: &str,
        families: &[&str],
        key_groups: Range<usize>,
        import: &Range<usize>,
        cfg: &RocksConfig,
        restored: Vec<RestoredDb>,
    ) -> Result<Self> {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let instance = format!(
            "{}-{}-{n}",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id()
        );
        let dir = base.join(&instance);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("clearing {}", dir.display()), e))?;
        }
        std::fs::create_dir_all(base)
            .map_err(|e| Error::io(format!("creating {}", base.display()), e))?;
        let opts = options(cfg);
        let families: Vec<String> = families.iter().map(|f| f.to_string()).collect();
        // Same key groups as one old database: adopt its files as they are.
        let adopt =
            restored.len() == 1 && restored[0].key_groups == key_groups && *import == key_groups;
        let mut imports = Vec::new();
        if adopt {
            std::fs::rename(&restored[0].dir, &dir)
                .map_err(|e| Error::io(format!("adopting {}", restored[0].dir.display()), e))?;
        } else {
            imports = restored;
        }
        let db = DB::open_cf(&opts, &dir, &families).map_err(db_err("open"))?;
        let me = RocksState {
            db: Some(db),
            dir,
            instance,
            key_groups,
            checkpoints: AtomicU64::new(0),
        };
        for r in imports {
            me.import(&r, import)?;
            let _ = std::fs::remove_dir_all(&r.dir);
        }
        Ok(me)
    }

    /// Copies the rows of our key groups from an old database.
    fn import(&self, r: &RestoredDb, groups: &Range<usize>) -> Result<()> {
        let lo = r.key_groups.start.max(groups.start);
        let hi = r.key_groups.end.min(groups.end);
        if lo >= hi {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        Self::read_groups(&r.dir, lo..hi, |fam, k, v| {
            if let Some(dst) = self.db().cf_handle(fam) {
                batch.put_cf(dst, k, v);
            }
            if batch.len() >= 4096 {
                self.write(std::mem::take(&mut batch))?;
            }
            Ok(())
        })?;
        self.write(batch)
    }

    /// The column families of the database in `dir`.
    pub fn families(dir: &Path) -> Result<Vec<String>> {
        DB::list_cf(&Options::default(), dir).map_err(db_err("listing column families"))
    }

    /// Calls `f(family, key, value)` for every row of `key_groups` in every
    /// column family of the (checkpointed) database in `dir`.
    pub fn read_groups(
        dir: &Path,
        key_groups: Range<usize>,
        mut f: impl FnMut(&str, &[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let families = Self::families(dir)?;
        let old = DB::open_cf_for_read_only(&Options::default(), dir, &families, false)
            .map_err(db_err("opening a restored database"))?;
        let from = (key_groups.start as u16).to_be_bytes();
        for fam in &families {
            let cf = old
                .cf_handle(fam)
                .ok_or_else(|| Error::Checkpoint(format!("restored database lacks '{fam}'")))?;
            for item in old.iterator_cf(cf, IteratorMode::From(&from, rocksdb::Direction::Forward))
            {
                let (k, v) = item.map_err(db_err("reading a restored database"))?;
                if k.len() < 2 || key_group_of_key(&k) >= key_groups.end {
                    break;
                }
                f(fam, &k, &v)?;
            }
        }
        Ok(())
    }

    /// Writes the rows of key groups `groups` into column family `family`
    /// (restoring heap rows).
    pub fn put_all(
        &self,
        family: &str,
        rows: &[(Vec<u8>, Vec<u8>)],
        groups: &Range<usize>,
    ) -> Result<()> {
        let cf = self.cf(family)?;
        for chunk in rows.chunks(4096) {
            let mut batch = WriteBatch::default();
            for (k, v) in chunk {
                if groups.contains(&key_group_of_key(k)) {
                    batch.put_cf(cf, k, v);
                }
            }
            self.write(batch)?;
        }
        Ok(())
    }

    fn db(&self) -> &DB {
        self.db.as_ref().expect("database open until drop")
    }

    /// The column family `name`.
    pub fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db()
            .cf_handle(name)
            .ok_or_else(|| Error::Internal(format!("unknown state '{name}'")))
    }

    /// Applies a write batch, without the write-ahead log (see `no_wal`).
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        self.db()
            .write_opt(batch, &no_wal())
            .map_err(db_err("write"))
    }

    /// Calls `f(key, value)` for the keys in `[from, to)` of `cf`, in
    /// order, until it returns `false`.
    pub fn scan(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let cf = self.cf(cf)?;
        let mut opts = rocksdb::ReadOptions::default();
        // Bound the iterator so it stops at `to` without visiting the
        // tombstones beyond it.
        opts.set_iterate_upper_bound(to.to_vec());
        let mut it = self.db().raw_iterator_cf_opt(cf, opts);
        it.seek(from);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if k >= to || !f(k, v)? {
                break;
            }
            it.next();
        }
        it.status().map_err(db_err("scan"))
    }

    /// The key groups this database holds.
    pub fn key_groups(&self) -> Range<usize> {
        self.key_groups.clone()
    }

    /// Takes a native checkpoint for upload.
    pub fn checkpoint(&self) -> Result<DbCheckpoint> {
        let n = self.checkpoints.fetch_add(1, Ordering::Relaxed) + 1;
        let dir = self
            .dir
            .with_file_name(format!("{}.chk-{n}", self.instance));
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Checkpoint::new(self.db())
            .and_then(|c| c.create_checkpoint(&dir))
            .map_err(db_err("native checkpoint"))?;
        Ok(DbCheckpoint {
            dir,
            instance: self.instance.clone(),
            key_groups: self.key_groups.clone(),
        })
    }
}

/// One column family of a subtask's database as a state table's store.
#[cfg(feature = "rocksdb")]
pub struct RocksSpill {
    db: Arc<RocksState>,
    family: String,
}

#[cfg(feature = "rocksdb")]
impl RocksSpill {
    /// The store of column family `family` of `db`.
    pub fn new(db: Arc<RocksState>, family: &str) -> Self {
        RocksSpill {
            db,
            family: family.to_string(),
        }
    }
}

#[cfg(feature = "rocksdb")]
impl Spill for RocksSpill {
    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.db.cf(&self.family)?;
        let db = self.db.db();
        let mut out = Vec::with_capacity(keys.len());
        // `batched_multi_get_cf` wants sorted keys for its fast path.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by_key(|i| keys[*i]);
        let sorted: Vec<&[u8]> = order.iter().map(|i| keys[*i]).collect();
        let got = db.batched_multi_get_cf(cf, &sorted, true);
        let mut values: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        for (i, r) in order.into_iter().zip(got) {
            values[i] = r.map_err(db_err("multi_get"))?.map(|v| v.to_vec());
        }
        out.extend(values);
        Ok(out)
    }

    fn write(&self, puts: &[(&[u8], &[u8])], deletes: &[&[u8]]) -> Result<()> {
        let cf = self.db.cf(&self.family)?;
        let mut batch = WriteBatch::default();
        for (k, v) in puts {
            batch.put_cf(cf, k, v);
        }
        for k in deletes {
            batch.delete_cf(cf, k);
        }
        self.db.write(batch)
    }

    fn scan(&self, from: &[u8], to: &[u8], f: &mut RowVisitor<'_>) -> Result<()> {
        self.db.scan(&self.family, from, to, f)
    }
}

#[cfg(feature = "rocksdb")]
impl Drop for RocksState {
    fn drop(&mut self) {
        drop(self.db.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(not(feature = "rocksdb"))]
pub use unavailable::{RocksSpill, RocksState};

/// A build without the `rocksdb` feature: the same names, uninhabited, so
/// the state store's code is one for both builds and every path to a
/// database ends in an error saying which feature is missing.
#[cfg(not(feature = "rocksdb"))]
mod unavailable {
    use std::ops::Range;
    use std::path::Path;
    use std::sync::Arc;

    use super::{DbCheckpoint, RestoredDb, RocksConfig};
    use crate::error::Result;
    use crate::state::rocksdb_unavailable;
    use crate::state::table::{RowVisitor, Spill};

    /// No database can be opened in this build.
    pub enum RocksState {}

    fn holds_rocksdb(dir: &Path) -> crate::error::Error {
        rocksdb_unavailable(&format!(
            "the checkpoint holds RocksDB state ({})",
            dir.display()
        ))
    }

    impl RocksState {
        /// Always an error: the backend is not built.
        pub fn open(
            _base: &Path,
            _name: &str,
            _families: &[&str],
            _key_groups: Range<usize>,
            _import: &Range<usize>,
            _cfg: &RocksConfig,
            _restored: Vec<RestoredDb>,
        ) -> Result<Self> {
            Err(rocksdb_unavailable("the RocksDB state backend was chosen"))
        }

        /// Always an error: a RocksDB checkpoint cannot be read.
        pub fn families(dir: &Path) -> Result<Vec<String>> {
            Err(holds_rocksdb(dir))
        }

        /// Always an error: a RocksDB checkpoint cannot be read.
        pub fn read_groups(
            dir: &Path,
            _key_groups: Range<usize>,
            _f: impl FnMut(&str, &[u8], &[u8]) -> Result<()>,
        ) -> Result<()> {
            Err(holds_rocksdb(dir))
        }

        /// Unreachable: no value exists.
        pub fn put_all(
            &self,
            _family: &str,
            _rows: &[(Vec<u8>, Vec<u8>)],
            _groups: &Range<usize>,
        ) -> Result<()> {
            match *self {}
        }

        /// Unreachable: no value exists.
        pub fn checkpoint(&self) -> Result<DbCheckpoint> {
            match *self {}
        }
    }

    /// No column family exists in this build.
    pub enum RocksSpill {}

    impl RocksSpill {
        /// Unreachable: no database exists.
        pub fn new(db: Arc<RocksState>, _family: &str) -> Self {
            match *db {}
        }
    }

    impl Spill for RocksSpill {
        fn get_many(&self, _keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
            match *self {}
        }

        fn write(&self, _puts: &[(&[u8], &[u8])], _deletes: &[&[u8]]) -> Result<()> {
            match *self {}
        }

        fn scan(&self, _from: &[u8], _to: &[u8], _f: &mut RowVisitor<'_>) -> Result<()> {
            match *self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_sort_like_integers() {
        let mut v = [-5i64, 3, i64::MIN, 0, i64::MAX, -1];
        let mut enc: Vec<[u8; 8]> = v.iter().map(|n| namespace_bytes(*n)).collect();
        v.sort();
        enc.sort();
        let back: Vec<i64> = enc.iter().map(|b| namespace_of(b)).collect();
        assert_eq!(back, v);
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn restore_splits_by_key_group() {
        let base = tempfile::tempdir().unwrap();
        let cfg = RocksConfig::default();
        let a =
            RocksState::open(base.path(), "op", &["s"], 0..128, &(0..128), &cfg, vec![]).unwrap();
        let mut b = WriteBatch::default();
        for kg in 0..128usize {
            let mut k = prefix(kg, 7).to_vec();
            k.extend_from_slice(b"key");
            b.put_cf(a.cf("s").unwrap(), &k, kg.to_le_bytes());
        }
        a.write(b).unwrap();
        let chk = a.checkpoint().unwrap();
        // Two new subtasks take halves; each sees only its key groups.
        for range in [0..64, 64..128] {
            let copy = base.path().join(format!("copy-{}", range.start));
            std::fs::create_dir_all(&copy).unwrap();
            for e in std::fs::read_dir(&chk.dir).unwrap().flatten() {
                std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
            }
            let r = RestoredDb {
                dir: copy,
                key_groups: 0..128,
            };
            let s = RocksState::open(
                base.path(),
                "op2",
                &["s"],
                range.clone(),
                &range,
                &cfg,
                vec![r],
            )
            .unwrap();
            let mut seen = Vec::new();
            s.scan("s", &[0], &[0xff, 0xff], |k, _| {
                seen.push(key_group_of_key(k));
                Ok(true)
            })
            .unwrap();
            assert_eq!(seen, range.collect::<Vec<_>>());
        }
    }
}
