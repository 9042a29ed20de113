//! An opened Iceberg table as the Parquet sink's [`TableFormat`]: the
//! commit protocol that makes each checkpoint one Iceberg snapshot,
//! exactly once.
//!
//! At barrier `n` every subtask writes the list of files it finished for
//! `n` into `{table}/_sluice/{writer}/commits/` (a new name each time,
//! synced before the subtask acknowledges). When `n` completes, subtask 0
//! commits every list of a checkpoint up to `n` as one snapshot whose
//! summary names the lists (`sluice.lists`), then deletes them. A list
//! named in a snapshot is never committed again, so a crash between the
//! catalog's swap and the deletion, or a notification that never came
//! (the next checkpoint's commit takes the list along), commits each file
//! once. On resume from `n`, lists of later checkpoints are dropped (their
//! rows are replayed) and the committed prefixes of the files open at `n`
//! go into a list whose name derives from their paths, so resuming from
//! `n` twice commits them once.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apache_avro::types::Value;
use arrow::array::{Array, ArrayRef, ListArray, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_engine::checkpoint::Location;
use sluice_engine::{Error, Result};
use tracing::{debug, info};

use super::catalog::SqlCatalog;
use super::files::{read_url, TableFiles};
use super::manifest::{self, DataFile, ListEntry};
use super::metadata::{summary, Change, Snapshot, SpecJson, TableMetadata};
use crate::parquet::{FileEntry, Phase, TableFormat};

/// The summary key naming the writer of a snapshot.
pub const WRITER_PROPERTY: &str = "sluice.writer";
/// The summary key with the checkpoint a snapshot commits.
pub const CHECKPOINT_PROPERTY: &str = "sluice.checkpoint";
/// The summary key listing the staged lists a snapshot commits.
pub const LISTS_PROPERTY: &str = "sluice.lists";

fn ice(what: &str, e: impl std::fmt::Display) -> Error {
    Error::connector("iceberg", format!("{what}: {e}"))
}

/// A random number: table UUIDs, snapshot ids and unique file names.
pub fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
    SystemTime::now().hash(&mut h);
    std::process::id().hash(&mut h);
    h.finish()
}

/// A random version-4 UUID in its text form.
pub fn uuid() -> String {
    let (a, b) = (random(), random());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An opened table.
pub struct IcebergTable {
    catalog: Mutex<SqlCatalog>,
    namespace: String,
    name: String,
    writer: String,
    /// The table's directory.
    files: TableFiles,
    /// When this handle was opened (see `recover`).
    opened: SystemTime,
}

impl std::fmt::Debug for IcebergTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IcebergTable({}.{})", self.namespace, self.name)
    }
}

impl IcebergTable {
    /// Opens `namespace.name` in `catalog`, creating it (files under
    /// `warehouse/namespace/name`, `warehouse` a `file://` or `s3://`
    /// URL) with `create`'s metadata if missing.
    pub fn open(
        catalog: SqlCatalog,
        warehouse: &str,
        namespace: &str,
        name: &str,
        writer: &str,
        create: impl FnOnce(&str) -> Result<TableMetadata>,
    ) -> Result<Arc<Self>> {
        catalog.ensure_namespace(namespace)?;
        let location_of = |loc: &str| -> Result<String> {
            let meta: TableMetadata = serde_json::from_slice(&read_url(loc)?)
                .map_err(|e| ice(&format!("{loc} is not Iceberg table metadata"), e))?;
            Ok(meta.location)
        };
        let location = match catalog.location(namespace, name)? {
            Some(loc) => location_of(&loc)?,
            None => {
                let location = format!(
                    "{}/{}/{name}",
                    warehouse.trim_end_matches('/'),
                    namespace.replace('.', "/")
                );
                let files = TableFiles::at(&location)?;
                let meta = create(&location)?;
                let rel = format!("metadata/00000-{}.metadata.json", uuid());
                files.write(&rel, &to_json(&meta)?)?;
                if catalog.create(namespace, name, &files.url(&rel))? {
                    info!(table = %format!("{namespace}.{name}"), %location, "created Iceberg table");
                    location
                } else {
                    // Another subtask or process created it meanwhile.
                    files.delete(&rel);
                    let loc = catalog.location(namespace, name)?.unwrap_or_default();
                    location_of(&loc)?
                }
            }
        };
        Ok(Arc::new(IcebergTable {
            catalog: Mutex::new(catalog),
            namespace: namespace.to_string(),
            name: name.to_string(),
            writer: writer.to_string(),
            files: TableFiles::at(&location)?,
            opened: SystemTime::now(),
        }))
    }

    /// The table's files.
    pub(super) fn files(&self) -> &TableFiles {
        &self.files
    }

    /// The table's current metadata and its location.
    pub fn load(&self) -> Result<(String, TableMetadata)> {
        let loc = self
            .catalog
            .lock()
            .expect("catalog lock")
            .location(&self.namespace, &self.name)?
            .ok_or_else(|| {
                ice(
                    "loading",
                    format!("table {}.{} was dropped", self.namespace, self.name),
                )
            })?;
        let meta = serde_json::from_slice(&self.files.read(&loc)?)
            .map_err(|e| ice(&format!("{loc} is not Iceberg table metadata"), e))?;
        Ok((loc, meta))
    }

    /// Applies `change` to the current metadata and commits the result,
    /// retrying on the latest metadata when another commit came first.
    /// `change` returns false when nothing needs committing, and the
    /// files it wrote, removed again when its commit loses.
    pub(super) fn update(
        &self,
        mut change: impl FnMut(&mut TableMetadata, &mut Vec<String>) -> Result<bool>,
    ) -> Result<TableMetadata> {
        for attempt in 0..50 {
            let (old, mut meta) = self.load()?;
            let mut written = Vec::new();
            if !change(&mut meta, &mut written)? {
                return Ok(meta);
            }
            let version = meta.metadata_log.len() + 1;
            meta.metadata_log.push(serde_json::json!({
                "metadata-file": old, "timestamp-ms": meta.last_updated_ms}));
            meta.last_updated_ms = now_ms();
            let rel = format!("metadata/{version:05}-{}.metadata.json", uuid());
            self.files.write(&rel, &to_json(&meta)?)?;
            written.push(rel.clone());
            let new = self.files.url(&rel);
            let swapped = self.catalog.lock().expect("catalog lock").swap(
                &self.namespace,
                &self.name,
                &old,
                &new,
            )?;
            if swapped {
                return Ok(meta);
            }
            debug!(attempt, table = %self.name, "Iceberg commit conflict; retrying");
            for rel in written {
                self.files.delete(&rel);
            }
            std::thread::sleep(Duration::from_millis(5 + random() % 20));
        }
        Err(ice(
            &format!("committing to {}.{}", self.namespace, self.name),
            "50 conflicting commits in a row",
        ))
    }

    /// Appends `files` as one snapshot with `props` in its summary.
    fn append(&self, files: &[FileEntry], props: &BTreeMap<String, String>) -> Result<()> {
        let data: Vec<DataFile> = files
            .iter()
            .map(|e| DataFile {
                path: self.files.url(&self.data_rel(&e.target)),
                rows: e.rows,
                // An open file's committed prefix is published with its
                // footer appended.
                bytes: e.len + e.footer.len() as u64,
                partition: e.partition.clone(),
            })
            .collect();
        self.update(|meta, written| {
            let spec = meta.spec()?.clone();
            let mut snap = NewSnapshot::new(&self.files, meta, written);
            let entries = manifest::added_entries(meta, &spec, snap.id, &data)?;
            let (url, len) = snap.write_manifest(meta, &spec, entries)?;
            let mut list =
                vec![
                    ListEntry::added(&url, len, spec.spec_id, snap.id, snap.sequence, &data)
                        .value(),
                ];
            if let Some(parent) = meta.current() {
                list.extend(manifest::read_list_entries(
                    &self.files.read(&parent.manifest_list)?,
                )?);
            }
            let added = Change {
                files: data.len() as u64,
                rows: data.iter().map(|f| f.rows).sum(),
                bytes: data.iter().map(|f| f.bytes).sum(),
            };
            let mut summary = summary(meta.current(), "append", added, Change::default());
            summary.extend(props.clone());
            snap.finish(meta, list, summary)?;
            Ok(true)
        })?;
        Ok(())
    }

    /// The writer's name as one path segment.
    fn writer_dir(&self) -> String {
        self.writer.replace(['/', '\\', '.', ':'], "_")
    }

    fn commits_dir(&self) -> String {
        format!("_sluice/{}/commits", self.writer_dir())
    }

    /// Where this writer's data files go: a directory of its own under
    /// `data/`, since the Parquet sink's names (subtask, checkpoint,
    /// attempt) repeat across jobs and its recovery removes what its own
    /// failed attempts left; another job's files must be neither.
    fn data_dir(&self) -> String {
        format!("data/{}", self.writer_dir())
    }

    /// Staged lists by checkpoint: their names and when each was written.
    fn staged(&self) -> Result<BTreeMap<u64, BTreeMap<String, SystemTime>>> {
        let mut out: BTreeMap<u64, BTreeMap<String, SystemTime>> = BTreeMap::new();
        for (name, written) in self.files.list(&self.commits_dir())? {
            let epoch = name
                .strip_suffix(".json")
                .and_then(|s| s.split('-').next())
                .and_then(|s| s.parse().ok());
            if let Some(epoch) = epoch {
                out.entry(epoch).or_default().insert(name, written);
            }
        }
        Ok(out)
    }

    fn list_rel(&self, name: &str) -> String {
        format!("{}/{name}", self.commits_dir())
    }

    /// The names of the lists this writer's snapshots committed.
    fn committed(meta: &TableMetadata, writer: &str) -> BTreeSet<String> {
        meta.snapshots
            .iter()
            .filter(|s| s.summary.get(WRITER_PROPERTY).map(String::as_str) == Some(writer))
            .filter_map(|s| s.summary.get(LISTS_PROPERTY))
            .flat_map(|l| l.split(',').map(str::to_string))
            .collect()
    }

    /// The files staged list `name` holds.
    fn read_list(&self, name: &str) -> Result<Vec<FileEntry>> {
        let url = self.files.url(&self.list_rel(name));
        serde_json::from_slice(&self.files.read(&url)?)
            .map_err(|e| Error::Checkpoint(format!("{url} is malformed: {e}")))
    }

    /// A data file's path in the table, from its path in the sink's output.
    fn data_rel(&self, target: &str) -> String {
        format!("{}/{target}", self.data_dir())
    }

    fn write_list(&self, name: &str, files: &[FileEntry]) -> Result<()> {
        let body = serde_json::to_vec(files).map_err(|e| ice("encoding staged files", e))?;
        self.files.write(&self.list_rel(name), &body)
    }
}

/// The next snapshot being built on a table's metadata: its id and
/// sequence number, and the metadata files written for it (which
/// `IcebergTable::update` removes again when the commit loses).
pub(super) struct NewSnapshot<'a> {
    files: &'a TableFiles,
    written: &'a mut Vec<String>,
    pub id: i64,
    pub sequence: i64,
}

impl<'a> NewSnapshot<'a> {
    pub(super) fn new(
        files: &'a TableFiles,
        meta: &TableMetadata,
        written: &'a mut Vec<String>,
    ) -> Self {
        NewSnapshot {
            files,
            written,
            id: (random() >> 1) as i64,
            sequence: meta.last_sequence_number + 1,
        }
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<String> {
        let rel = format!("metadata/{name}");
        self.files.write(&rel, bytes)?;
        let url = self.files.url(&rel);
        self.written.push(rel);
        Ok(url)
    }

    /// Writes a manifest of `entries` under `spec`; returns its location
    /// and length, for its manifest list entry.
    pub(super) fn write_manifest(
        &mut self,
        meta: &TableMetadata,
        spec: &SpecJson,
        entries: Vec<Value>,
    ) -> Result<(String, u64)> {
        let bytes = manifest::write_entries(meta, spec, entries)?;
        let url = self.write(&format!("{}-m0.avro", uuid()), &bytes)?;
        Ok((url, bytes.len() as u64))
    }

    /// Writes the manifest list of `list` and makes this snapshot, with
    /// `summary`, the table's current one.
    pub(super) fn finish(
        mut self,
        meta: &mut TableMetadata,
        list: Vec<Value>,
        summary: BTreeMap<String, String>,
    ) -> Result<()> {
        let parent = meta.current_snapshot_id;
        let bytes = manifest::write_list(self.id, parent, self.sequence, list)?;
        let url = self.write(&format!("snap-{}-0-{}.avro", self.id, uuid()), &bytes)?;
        meta.add_snapshot(Snapshot {
            snapshot_id: self.id,
            parent_snapshot_id: parent,
            sequence_number: self.sequence,
            timestamp_ms: now_ms(),
            manifest_list: url,
            summary,
            schema_id: Some(meta.current_schema_id),
        });
        Ok(())
    }
}

/// FNV-1a over `parts`: a name that stays the same across builds (std's
/// hashers promise no stable output).
fn fnv1a<'a>(parts: impl Iterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn to_json(meta: &TableMetadata) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(meta).map_err(|e| ice("encoding table metadata", e))
}

/// `array` in type `to`: cast where the type differs (timestamps to
/// microseconds, widened integers) and nested fields re-labelled with the
/// file schema's field ids.
fn convert(array: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    match (array.data_type(), to) {
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let s = array
                .as_any()
                .downcast_ref::<StructArray>()
                .ok_or_else(|| ice("converting", "a struct column is not a StructArray"))?;
            let columns = s
                .columns()
                .iter()
                .zip(fields)
                .map(|(c, f)| convert(c, f.data_type()))
                .collect::<Result<Vec<_>>>()?;
            let out = StructArray::try_new(fields.clone(), columns, s.nulls().cloned())
                .map_err(|e| ice("converting a struct column", e))?;
            Ok(Arc::new(out))
        }
        (DataType::List(_), DataType::List(item)) => {
            let l = array
                .as_any()
                .downcast_ref::<ListArray>()
                .ok_or_else(|| ice("converting", "a list column is not a ListArray"))?;
            let values = convert(l.values(), item.data_type())?;
            let out = ListArray::try_new(
                item.clone(),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )
            .map_err(|e| ice("converting a list column", e))?;
            Ok(Arc::new(out))
        }
        _ => cast(array, to).map_err(|e| ice(&format!("converting to {to}"), e)),
    }
}

impl TableFormat for IcebergTable {
    fn data_location(&self) -> Location {
        self.files.location(&self.data_dir())
    }

    fn file_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let meta = self.update(|meta, _| meta.evolve(input))?;
        meta.file_schema(input)
    }

    fn convert(&self, batch: &RecordBatch, file_schema: &SchemaRef) -> Result<RecordBatch> {
        let columns = batch
            .columns()
            .iter()
            .zip(file_schema.fields())
            .map(|(c, f)| convert(c, f.data_type()))
            .collect::<Result<Vec<ArrayRef>>>()?;
        RecordBatch::try_new(file_schema.clone(), columns).map_err(|e| ice("converting", e))
    }

    fn stage(&self, epoch: u64, subtask: usize, attempt: u64, files: &[FileEntry]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let name = format!("{epoch:06}-{subtask:03}-a{attempt}-{:016x}.json", random());
        self.write_list(&name, files)
    }

    fn commit(&self, epoch: u64) -> Result<()> {
        let staged = self.staged()?;
        let lists: Vec<String> = staged
            .range(..=epoch)
            .flat_map(|(_, l)| l.keys().cloned())
            .collect();
        if lists.is_empty() {
            return Ok(());
        }
        let (_, meta) = self.load()?;
        let done = Self::committed(&meta, &self.writer);
        let mut names = Vec::new();
        let mut files = Vec::new();
        for name in &lists {
            if done.contains(name) {
                continue;
            }
            files.extend(self.read_list(name)?);
            names.push(name.clone());
        }
        if !files.is_empty() {
            debug!(checkpoint = epoch, files = files.len(), "Iceberg commit");
            let props = BTreeMap::from([
                (WRITER_PROPERTY.to_string(), self.writer.clone()),
                (CHECKPOINT_PROPERTY.to_string(), epoch.to_string()),
                (LISTS_PROPERTY.to_string(), names.join(",")),
            ]);
            self.append(&files, &props)?;
        }
        for name in lists {
            self.files.delete(&self.list_rel(&name));
        }
        Ok(())
    }

    fn commit_now(&self, file: &FileEntry) -> Result<()> {
        let props = BTreeMap::from([(WRITER_PROPERTY.to_string(), self.writer.clone())]);
        self.append(std::slice::from_ref(file), &props)
    }

    fn recover(&self, restored: u64, attempt: u64, files: &[FileEntry]) -> Result<()> {
        // Lists of checkpoints after the restored one never completed,
        // unless this attempt's other subtasks staged them meanwhile.
        // Attempt numbers rise across resumes; a fresh start (nothing
        // restored) begins again at its storage's first attempt, so there
        // a list of the same number is the last run's if it is older
        // than this table handle.
        // Their files were never committed: they go too (unless the
        // list was committed after all, by a run that died before it
        // deleted the list), except a file the restored checkpoint holds:
        // one open at the checkpoint and finished later is in a dropped
        // list under the name its committed prefix now has.
        let current = format!("-a{attempt}-");
        let needed: BTreeSet<&str> = files.iter().map(|e| e.target.as_str()).collect();
        let (_, meta) = self.load()?;
        let done = Self::committed(&meta, &self.writer);
        for (_, lists) in self.staged()?.range(restored + 1..) {
            for (name, written) in lists {
                if name.contains(&current) && (restored > 0 || *written >= self.opened) {
                    continue;
                }
                if !done.contains(name) {
                    // An unreadable list is dropped all the same: its
                    // files stay behind, unnamed by any snapshot.
                    let entries = self.read_list(name).unwrap_or_default();
                    for e in entries
                        .iter()
                        .filter(|e| !needed.contains(e.target.as_str()))
                    {
                        self.files.delete(&self.data_rel(&e.target));
                    }
                }
                self.files.delete(&self.list_rel(name));
            }
        }
        // The committed prefixes of files open at the checkpoint: a name
        // from their paths, so a second resume from it finds them committed.
        let mut open: Vec<FileEntry> = files
            .iter()
            .filter(|e| e.phase == Phase::Open)
            .cloned()
            .collect();
        if !open.is_empty() {
            open.sort_by(|a, b| a.target.cmp(&b.target));
            let name = format!(
                "{restored:06}-recovered-{:016x}.json",
                fnv1a(open.iter().map(|e| e.target.as_str()))
            );
            if !done.contains(&name) {
                info!(
                    files = open.len(),
                    checkpoint = restored,
                    "committing the files open at the restored checkpoint to Iceberg"
                );
                self.write_list(&name, &open)?;
            }
        }
        self.commit(restored)
    }
}
