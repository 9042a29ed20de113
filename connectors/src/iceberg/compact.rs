//! Compaction of an Iceberg table: the small files of closed partitions
//! are merged into files of about a target size and swapped in by one
//! `replace` snapshot, so a reader's scan (of one snapshot) sees the old
//! files or the merged ones, never both and never neither. The table's
//! writers keep appending meanwhile: a commit that loses the catalog's
//! race is rebuilt on the newest snapshot, and a compaction whose inputs
//! are no longer live there (another compaction took them) is given up.
//!
//! A partition is *closed* when its newest file was added at least
//! `min_age` ago. Replaced files stay on disk for readers of older
//! snapshots (expiring snapshots, which would delete them, is left to
//! Iceberg's tools).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use apache_avro::types::Value;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::parquet_to_arrow_schema;
use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};
use sluice_engine::{Error, Result};
use tracing::info;

use super::catalog::SqlCatalog;
use super::files::TableFiles;
use super::manifest::{self, get, get_i64, get_str, set, ListEntry, Status};
use super::metadata::{summary, Change, TableMetadata};
use super::split_table_name;
use super::table::{now_ms, uuid, IcebergTable, NewSnapshot};
use crate::parquet::compact::{merge_into, pack};
use crate::parquet::{CompactOptions, CompactStats};

/// A live data file of the current snapshot.
struct Live {
    path: String,
    bytes: u64,
    /// Its partition, as text (files of one partition merge together).
    partition: String,
    /// Its `data_file` record.
    record: Value,
    /// When the snapshot that added it was committed.
    added_ms: i64,
}

/// Compacts table `table` (`NAMESPACE.TABLE`) of the catalog `name` in
/// the SQLite file `catalog`.
pub fn compact_table(
    catalog: &std::path::Path,
    name: &str,
    table: &str,
    opts: &CompactOptions,
) -> Result<CompactStats> {
    let (ns, t) = split_table_name(table)?;
    if !catalog.exists() {
        return Err(Error::Config(format!(
            "no Iceberg catalog at {}",
            catalog.display()
        )));
    }
    let cat = SqlCatalog::open(catalog, name)?;
    let table = IcebergTable::open(cat, "", ns, t, "compaction", |_| {
        Err(Error::Config(format!(
            "Iceberg table {ns}.{t} does not exist in catalog '{name}' at {}",
            catalog.display()
        )))
    })?;
    let files = table.files();
    let (_, meta) = table.load()?;
    let spec = meta.spec()?.clone();
    let live = live_files(files, &meta)?;
    let cutoff = now_ms() - i64::try_from(opts.min_age.as_millis()).unwrap_or(i64::MAX);
    let mut by_partition: BTreeMap<String, Vec<Live>> = BTreeMap::new();
    for f in live {
        by_partition.entry(f.partition.clone()).or_default().push(f);
    }
    // Plan: per closed partition, its small files by schema, packed.
    let mut bins: Vec<Vec<Live>> = Vec::new();
    for partition in by_partition.into_values() {
        if partition.iter().any(|f| f.added_ms > cutoff) {
            continue;
        }
        let mut by_schema: BTreeMap<String, Vec<Live>> = BTreeMap::new();
        for f in partition {
            if f.bytes * 4 >= opts.target_size * 3 {
                continue;
            }
            let schema = file_schema(files, &f.path, f.bytes)?;
            by_schema.entry(format!("{schema:?}")).or_default().push(f);
        }
        for mut small in by_schema.into_values() {
            small.sort_by(|a, b| a.path.cmp(&b.path));
            bins.extend(pack(small, |f| f.bytes, opts.target_size));
        }
    }
    let mut stats = CompactStats::default();
    if bins.is_empty() {
        return Ok(stats);
    }
    // Merge, each bin into a file beside its first input, built in
    // memory (at most about the target size) and written whole.
    let mut added = Vec::new();
    let mut removed = BTreeSet::new();
    for bin in &bins {
        let first = files.rel(&bin[0].path).ok_or_else(|| {
            Error::Config(format!("{} is outside the table's location", bin[0].path))
        })?;
        let dir = first.rsplit_once('/').map_or("", |(d, _)| d);
        let out = format!("{dir}/compacted-{}.parquet", uuid());
        let inputs = bin
            .iter()
            .map(|f| Ok((f.path.clone(), Bytes::from(files.read(&f.path)?))));
        let (rows, merged) = merge_into(inputs, Vec::new(), &out, opts)?;
        let bytes = merged.len() as u64;
        files.write(&out, &merged)?;
        let mut record = bin[0].record.clone();
        set(&mut record, "file_path", Value::String(files.url(&out)));
        set(&mut record, "record_count", Value::Long(rows as i64));
        set(&mut record, "file_size_in_bytes", Value::Long(bytes as i64));
        set(
            &mut record,
            "split_offsets",
            Value::Union(0, Box::new(Value::Null)),
        );
        added.push((record, rows, bytes, out));
        removed.extend(bin.iter().map(|f| f.path.clone()));
        stats.files_in += bin.len();
        stats.files_out += 1;
        stats.rows += rows;
    }
    stats.directories = bins.len();
    let committed = table.update(|meta, written| {
        replace(files, meta, &spec, &removed, &added, written).map(|()| true)
    });
    if let Err(e) = committed {
        for (_, _, _, out) in &added {
            files.delete(out);
        }
        return Err(e);
    }
    info!(table = %format!("{ns}.{t}"), files_in = stats.files_in, files_out = stats.files_out,
        rows = stats.rows, "compacted Iceberg table");
    Ok(stats)
}

/// The schema of the Parquet file of `size` bytes at `url` (field ids
/// included), from its footer alone.
fn file_schema(files: &TableFiles, url: &str, size: u64) -> Result<SchemaRef> {
    let bad =
        |e: &dyn std::fmt::Display| Error::connector("iceberg", format!("reading {url}: {e}"));
    if size < 8 {
        return Err(bad(&"shorter than a Parquet footer"));
    }
    let tail: [u8; 8] = files
        .read_range(url, size - 8..size)?
        .try_into()
        .map_err(|_| bad(&"short read"))?;
    let footer = FooterTail::try_new(&tail).map_err(|e| bad(&e))?;
    let len = footer.metadata_length() as u64;
    if len + 8 > size {
        return Err(bad(&"its footer is longer than the file"));
    }
    let bytes = files.read_range(url, size - 8 - len..size - 8)?;
    let meta = ParquetMetaDataReader::decode_metadata(&bytes).map_err(|e| bad(&e))?;
    let file = meta.file_metadata();
    let schema = parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())
        .map_err(|e| bad(&e))?;
    Ok(Arc::new(schema))
}

/// The manifests of the current snapshot, each with its list entry and
/// entries.
fn manifests(files: &TableFiles, meta: &TableMetadata) -> Result<Vec<(Value, Vec<Value>)>> {
    let Some(current) = meta.current() else {
        return Ok(Vec::new());
    };
    let spec = meta.spec()?;
    let list = files.read(&current.manifest_list)?;
    manifest::read_list_entries(&list)?
        .into_iter()
        .map(|m| {
            if get_i64(&m, "partition_spec_id") != Some(i64::from(spec.spec_id)) {
                return Err(Error::Config(
                    "the table has files of an older partition spec: not compacted".into(),
                ));
            }
            let path = get_str(&m, "manifest_path").unwrap_or_default().to_string();
            let entries = manifest::read_entries(meta, spec, &files.read(&path)?)?;
            Ok((m, entries))
        })
        .collect()
}

fn live_files(files: &TableFiles, meta: &TableMetadata) -> Result<Vec<Live>> {
    let added_at: BTreeMap<i64, i64> = meta
        .snapshots
        .iter()
        .map(|s| (s.snapshot_id, s.timestamp_ms))
        .collect();
    let mut out = Vec::new();
    for (m, entries) in manifests(files, meta)? {
        let manifest_snapshot = get_i64(&m, "added_snapshot_id").unwrap_or(0);
        for e in entries {
            if manifest::is_deleted(&e) {
                continue;
            }
            let snapshot = get_i64(&e, "snapshot_id").unwrap_or(manifest_snapshot);
            let Some(record) = get(&e, "data_file").cloned() else {
                continue;
            };
            out.push(Live {
                path: get_str(&record, "file_path")
                    .unwrap_or_default()
                    .to_string(),
                bytes: get_i64(&record, "file_size_in_bytes").unwrap_or(0) as u64,
                partition: format!("{:?}", get(&record, "partition")),
                added_ms: added_at.get(&snapshot).copied().unwrap_or(i64::MAX),
                record,
            });
        }
    }
    Ok(out)
}

/// Turns `meta` into its next version: a `replace` snapshot where the
/// files `removed` are deleted and `added` (records, rows, bytes) added.
/// Manifests holding a removed file are rewritten (its entry deleted,
/// the others kept as existing, with their sequence numbers); the rest
/// carry over as they are.
fn replace(
    files: &TableFiles,
    meta: &mut TableMetadata,
    spec: &super::metadata::SpecJson,
    removed: &BTreeSet<String>,
    added: &[(Value, u64, u64, String)],
    written: &mut Vec<String>,
) -> Result<()> {
    let mut snap = NewSnapshot::new(files, meta, written);
    let (id, sequence) = (snap.id, snap.sequence);
    let mut list = Vec::new();
    let (mut gone_rows, mut gone_bytes, mut found) = (0u64, 0u64, 0usize);
    for (m, entries) in manifests(files, meta)? {
        let touched = entries.iter().any(|e| {
            !manifest::is_deleted(e)
                && get(e, "data_file")
                    .and_then(|f| get_str(f, "file_path"))
                    .is_some_and(|p| removed.contains(p))
        });
        if !touched {
            list.push(m);
            continue;
        }
        let inherited = get_i64(&m, "sequence_number").unwrap_or(0);
        let manifest_snapshot = get_i64(&m, "added_snapshot_id").unwrap_or(0);
        let mut kept = Vec::new();
        let (mut existing, mut deleted) = ((0, 0u64), (0, 0u64));
        let mut min_sequence = sequence;
        for e in entries {
            if manifest::is_deleted(&e) {
                continue;
            }
            let seq = get_i64(&e, "sequence_number").unwrap_or(inherited);
            let fseq = get_i64(&e, "file_sequence_number").unwrap_or(seq);
            let snapshot = get_i64(&e, "snapshot_id").unwrap_or(manifest_snapshot);
            let Some(record) = get(&e, "data_file").cloned() else {
                continue;
            };
            let rows = get_i64(&record, "record_count").unwrap_or(0) as u64;
            min_sequence = min_sequence.min(seq);
            // A replaced file is marked deleted by this snapshot; the others
            // stay as the snapshot that added them recorded.
            let replaced = get_str(&record, "file_path").is_some_and(|p| removed.contains(p));
            let (status, by) = if replaced {
                found += 1;
                gone_rows += rows;
                gone_bytes += get_i64(&record, "file_size_in_bytes").unwrap_or(0) as u64;
                deleted = (deleted.0 + 1, deleted.1 + rows);
                (Status::Deleted, id)
            } else {
                existing = (existing.0 + 1, existing.1 + rows);
                (Status::Existing, snapshot)
            };
            kept.push(manifest::entry(status, by, Some((seq, fseq)), record));
        }
        let (path, length) = snap.write_manifest(meta, spec, kept)?;
        list.push(
            ListEntry {
                path: &path,
                length,
                spec_id: spec.spec_id,
                sequence,
                min_sequence,
                snapshot: id,
                added: (0, 0),
                existing,
                deleted,
            }
            .value(),
        );
    }
    if found != removed.len() {
        return Err(Error::connector(
            "iceberg",
            "files chosen for compaction are no longer in the table (another compaction ran?); \
             nothing was changed",
        ));
    }
    let new_entries: Vec<Value> = added
        .iter()
        .map(|(record, _, _, _)| manifest::entry(Status::Added, id, None, record.clone()))
        .collect();
    let (mpath, length) = snap.write_manifest(meta, spec, new_entries)?;
    let added_rows: u64 = added.iter().map(|a| a.1).sum();
    let added_bytes: u64 = added.iter().map(|a| a.2).sum();
    let entry = ListEntry {
        path: &mpath,
        length,
        spec_id: spec.spec_id,
        sequence,
        min_sequence: sequence,
        snapshot: id,
        added: (added.len(), added_rows),
        existing: (0, 0),
        deleted: (0, 0),
    }
    .value();
    list.insert(0, entry);
    let summary = summary(
        meta.current(),
        "replace",
        Change {
            files: added.len() as u64,
            rows: added_rows,
            bytes: added_bytes,
        },
        Change {
            files: removed.len() as u64,
            rows: gone_rows,
            bytes: gone_bytes,
        },
    );
    snap.finish(meta, list, summary)
}
