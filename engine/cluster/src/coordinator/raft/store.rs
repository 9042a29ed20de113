//! The Raft log and the replicated state machine of a coordinator, in a
//! RocksDB database of its own under `DATA_DIR/raft`: column family `logs`
//! holds the entries by index (big-endian keys, so they sort), `store` the
//! vote, the committed and purged log ids and the latest snapshot. Every
//! write is synced (`flush_wal(true)`) before openraft is told it is done:
//! a vote or an entry acknowledged to a peer survives a crash.
//!
//! The state machine ([`MetaState`]) lives in memory; it is rebuilt on
//! start from the snapshot and the committed entries after it (openraft
//! applies them again), so nothing but the log and the snapshot is
//! written.

// openraft's storage traits return its `StorageError` (over 200 bytes);
// the helpers here return what those methods return.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, Options, DB};
use serde::{Deserialize, Serialize};

use super::{Applied, MetaState, NodeId, Reply, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// Opens (creating) the database in `dir`.
pub(super) fn open(dir: &Path) -> Result<(LogStore, StateMachine), rocksdb::Error> {
    // Metadata is small: 4 MiB memtables (and write-ahead log files
    // preallocated to match) instead of RocksDB's 64 MiB.
    let small = || {
        let mut o = Options::default();
        o.set_write_buffer_size(4 << 20);
        o
    };
    let mut options = small();
    options.create_missing_column_families(true);
    options.create_if_missing(true);
    options.set_max_total_wal_size(16 << 20);
    let db = DB::open_cf_descriptors(
        &options,
        dir,
        vec![
            ColumnFamilyDescriptor::new("store", small()),
            ColumnFamilyDescriptor::new("logs", small()),
        ],
    )?;
    let db = Arc::new(db);
    let machine = StateMachine {
        db: db.clone(),
        state: Arc::new(RwLock::new(Applied::default())),
    };
    Ok((LogStore { db }, machine))
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log and the vote.
#[derive(Clone)]
pub(super) struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    fn store(&self) -> &ColumnFamily {
        self.db
            .cf_handle("store")
            .expect("the store column family is created on open")
    }

    fn logs(&self) -> &ColumnFamily {
        self.db
            .cf_handle("logs")
            .expect("the logs column family is created on open")
    }

    fn get<T: for<'a> Deserialize<'a>>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<Option<T>> {
        let bytes = self
            .db
            .get_cf(self.store(), key)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(|e| io_error(subject, ErrorVerb::Read, e)))
            .transpose()
    }

    fn put<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?;
        self.db
            .put_cf(self.store(), key, bytes)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?;
        self.db
            .flush_wal(true)
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            std::ops::Bound::Included(x) => *x,
            std::ops::Bound::Excluded(x) => *x + 1,
            std::ops::Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let key = index_key(start);
        for item in self.db.iterator_cf(
            self.logs(),
            rocksdb::IteratorMode::From(&key, Direction::Forward),
        ) {
            let (k, v) = item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let index = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?,
            );
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> = serde_json::from_slice(&v)
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last = match self
            .db
            .iterator_cf(self.logs(), rocksdb::IteratorMode::End)
            .next()
        {
            Some(item) => {
                let (_, v) = item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                let entry: Entry<TypeConfig> = serde_json::from_slice(&v)
                    .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Some(entry.log_id)
            }
            None => None,
        };
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.get(b"last_purged", ErrorSubject::Store)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.put(b"committed", &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .get::<Option<LogId<NodeId>>>(b"committed", ErrorSubject::Store)?
            .flatten())
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put(b"vote", vote, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get(b"vote", ErrorSubject::Vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = rocksdb::WriteBatch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            batch.put_cf(self.logs(), index_key(entry.log_id.index), bytes);
        }
        let written = self
            .db
            .write(batch)
            .and_then(|()| self.db.flush_wal(true))
            .map_err(|e| std::io::Error::other(e.to_string()));
        let failed = written.as_ref().err().map(|e| {
            io_error(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                std::io::Error::other(e.to_string()),
            )
        });
        callback.log_io_completed(written);
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.db
            .delete_range_cf(self.logs(), index_key(log_id.index), index_key(u64::MAX))
            .and_then(|()| self.db.flush_wal(true))
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.put(b"last_purged", &log_id, ErrorSubject::Store)?;
        self.db
            .delete_range_cf(self.logs(), index_key(0), index_key(log_id.index + 1))
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }
}

/// A snapshot as stored: its meta and the state machine's JSON.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The replicated state machine: [`Applied`] shared with the coordinator
/// (read under its lock), snapshots in the database.
#[derive(Clone)]
pub(super) struct StateMachine {
    db: Arc<DB>,
    pub(super) state: Arc<RwLock<Applied>>,
}

impl StateMachine {
    fn store(&self) -> &ColumnFamily {
        self.db
            .cf_handle("store")
            .expect("the store column family is created on open")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn stored_snapshot(&self) -> StorageResult<Option<StoredSnapshot>> {
        let bytes = self
            .db
            .get_cf(self.store(), b"snapshot")
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        bytes
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
            })
            .transpose()
    }

    fn save_snapshot(&self, snapshot: &StoredSnapshot) -> StorageResult<()> {
        let subject = ErrorSubject::Snapshot(Some(snapshot.meta.signature()));
        let bytes = serde_json::to_vec(snapshot)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?;
        self.db
            .put_cf(self.store(), b"snapshot", bytes)
            .and_then(|()| self.db.flush_wal(true))
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))
    }

    /// Takes the state of `snapshot` (on start, and when a leader sends one).
    fn restore(&self, snapshot: &StoredSnapshot) -> StorageResult<()> {
        let meta: MetaState = serde_json::from_slice(&snapshot.data).map_err(|e| {
            io_error(
                ErrorSubject::Snapshot(Some(snapshot.meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        let mut state = self.write();
        state.meta = meta;
        state.last_applied = snapshot.meta.last_log_id;
        state.membership = snapshot.meta.last_membership.clone();
        Ok(())
    }

    /// Loads the latest snapshot, if any (on start).
    pub(super) fn load(&self) -> StorageResult<()> {
        if let Some(s) = self.stored_snapshot()? {
            self.restore(&s)?;
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (data, last_log_id, last_membership) = {
            let state = self.read();
            let data = serde_json::to_vec(&state.meta)
                .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
            (data, state.last_applied, state.membership.clone())
        };
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        self.save_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let state = self.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Reply>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.write();
        let mut replies = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Reply::default(),
                EntryPayload::Normal(command) => state.meta.apply(command),
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    Reply::default()
                }
            };
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        self.restore(&stored)?;
        self.save_snapshot(&stored)
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.stored_snapshot()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
