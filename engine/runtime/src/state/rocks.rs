//! RocksDB keyed state for one operator subtask. Keys are prefixed by key
//! group (two bytes, big endian) and a namespace (an order-preserving
//! encoding of an `i64`, e.g. a window or pane start), then the user key,
//! so a subtask's state is a few contiguous ranges and a namespace is a
//! range within each key group. Each state is a column family; the block
//! cache is bounded; writes go in write batches.
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
use rocksdb::checkpoint::Checkpoint;
#[cfg(feature = "rocksdb")]
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

#[cfg(feature = "rocksdb")]
use crate::error::{Error, Result};

/// Settings of the RocksDB backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocksConfig {
    /// Block cache per database, bytes (bounds read memory).
    pub block_cache_bytes: usize,
    /// Memtable size, bytes (two at most per column family).
    pub write_buffer_bytes: usize,
}

impl Default for RocksConfig {
    fn default() -> Self {
        RocksConfig {
            block_cache_bytes: 64 << 20,
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
    families: Vec<String>,
    key_groups: Range<usize>,
    checkpoints: u64,
}

#[cfg(feature = "rocksdb")]
fn options(cfg: &RocksConfig) -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_write_buffer_size(cfg.write_buffer_bytes);
    o.set_max_write_buffer_number(2);
    o.set_max_open_files(256);
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(&Cache::new_lru_cache(cfg.block_cache_bytes));
    t.set_cache_index_and_filter_blocks(true);
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
    /// Opens a fresh database under `base` with column families `families`,
    /// after restoring `restored` databases into it (keeping only
    /// `key_groups`).
    pub fn open(
        base: &Path,
        name: &str,
        families: &[&str],
        key_groups: Range<usize>,
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
        let adopt = restored.len() == 1 && restored[0].key_groups == key_groups;
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
            families,
            key_groups,
            checkpoints: 0,
        };
        for r in imports {
            me.import(&r, cfg)?;
            let _ = std::fs::remove_dir_all(&r.dir);
        }
        Ok(me)
    }

    /// Copies the rows of our key groups from an old database.
    fn import(&self, r: &RestoredDb, cfg: &RocksConfig) -> Result<()> {
        let lo = r.key_groups.start.max(self.key_groups.start);
        let hi = r.key_groups.end.min(self.key_groups.end);
        if lo >= hi {
            return Ok(());
        }
        let old = DB::open_cf_for_read_only(&options(cfg), &r.dir, &self.families, false)
            .map_err(db_err("opening a restored database"))?;
        let from = (lo as u16).to_be_bytes();
        for fam in &self.families {
            let src = old.cf_handle(fam).ok_or_else(|| {
                Error::Checkpoint(format!("restored database lacks state '{fam}'"))
            })?;
            let dst = self.cf(fam)?;
            let mut batch = WriteBatch::default();
            for item in old.iterator_cf(src, IteratorMode::From(&from, rocksdb::Direction::Forward))
            {
                let (k, v) = item.map_err(db_err("reading a restored database"))?;
                if key_group_of_key(&k) >= hi {
                    break;
                }
                batch.put_cf(dst, &k, &v);
                if batch.len() >= 4096 {
                    self.write(std::mem::take(&mut batch))?;
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

    /// The value of `key` in `cf`.
    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let cf = self.cf(cf)?;
        self.db().get_cf(cf, key).map_err(db_err("get"))
    }

    /// Writes one entry (without the write-ahead log, as [`Self::write`]).
    pub fn put(&self, cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let cf = self.cf(cf)?;
        self.db()
            .put_cf_opt(cf, key, value, &no_wal())
            .map_err(db_err("put"))
    }

    /// Deletes one entry (without the write-ahead log).
    pub fn delete(&self, cf: &str, key: &[u8]) -> Result<()> {
        let cf = self.cf(cf)?;
        self.db()
            .delete_cf_opt(cf, key, &no_wal())
            .map_err(db_err("delete"))
    }

    /// Values of `keys` in `cf` (None where absent).
    pub fn multi_get(&self, cf: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(cf)?;
        self.db()
            .multi_get_cf(keys.iter().map(|k| (cf, k.as_slice())))
            .into_iter()
            .map(|r| r.map_err(db_err("multi_get")))
            .collect()
    }

    /// Calls `f(key, value)` for every key in `[from, to)` of `cf`.
    pub fn scan(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let cf = self.cf(cf)?;
        let mut it = self.db().raw_iterator_cf(cf);
        it.seek(from);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if k >= to {
                break;
            }
            f(k, v)?;
            it.next();
        }
        it.status().map_err(db_err("scan"))
    }

    /// Deletes every key in `[from, to)` of `cf`, one point delete per
    /// key. Range tombstones would be one write, but every later read has to
    /// consult them until compaction drops them, and a window operator that
    /// purges a range per key group per pane piles up thousands: reads then
    /// slow to a crawl. The keys deleted here were just read (fired), so
    /// finding them again is cheap.
    pub fn delete_keys(&self, cf: &str, from: &[u8], to: &[u8]) -> Result<()> {
        let mut batch = WriteBatch::default();
        let handle = self.cf(cf)?;
        self.scan(cf, from, to, |k, _| {
            batch.delete_cf(handle, k);
            Ok(())
        })?;
        if batch.is_empty() {
            return Ok(());
        }
        self.write(batch)
    }

    /// The key groups this database holds.
    pub fn key_groups(&self) -> Range<usize> {
        self.key_groups.clone()
    }

    /// Takes a native checkpoint for upload.
    pub fn checkpoint(&mut self) -> Result<DbCheckpoint> {
        self.checkpoints += 1;
        let dir = self
            .dir
            .with_file_name(format!("{}.chk-{}", self.instance, self.checkpoints));
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

#[cfg(feature = "rocksdb")]
impl Drop for RocksState {
    fn drop(&mut self) {
        drop(self.db.take());
        let _ = std::fs::remove_dir_all(&self.dir);
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
        let mut a = RocksState::open(base.path(), "op", &["s"], 0..128, &cfg, vec![]).unwrap();
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
            let s =
                RocksState::open(base.path(), "op2", &["s"], range.clone(), &cfg, vec![r]).unwrap();
            let mut seen = Vec::new();
            s.scan("s", &[0], &[0xff, 0xff], |k, _| {
                seen.push(key_group_of_key(k));
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, range.collect::<Vec<_>>());
        }
    }
}
