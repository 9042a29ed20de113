//! Compaction of a local Parquet output: the small files of each closed
//! partition directory are merged into files of about a target size, and
//! the directory is switched to the new set in one step, so a reader sees
//! the old files or the new ones, never both (no duplicate rows) and never
//! neither.
//!
//! The switch: the new directory is built beside the old one (the merged
//! files, plus hard links to every file that is kept, hidden in-progress
//! files included, so a writer's open file stays the same file under both
//! names), then the two are exchanged with `renameat2(RENAME_EXCHANGE)`,
//! atomically. Anything that appeared in the old directory meanwhile is
//! moved over. The replaced directory is kept, hidden, for
//! [`CompactOptions::keep_replaced`] so that readers that listed it before
//! the switch can still open its files, and deleted by a later run. A
//! journal beside the directory (`.{name}.compaction.json`) makes a crash
//! at any step resumable by the next run.
//!
//! A partition is *closed* when it holds no in-progress file and nothing
//! in it changed for [`CompactOptions::min_age`]. Object stores have no
//! atomic multi-object switch, so a bucket is refused: there, compaction
//! needs a table format's commit (see `ARCHITECTURE.md`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;
use serde::{Deserialize, Serialize};
use sluice_engine::checkpoint::Location;
use sluice_engine::{Error, Result};
use tracing::{debug, info, warn};

/// What a compaction run does.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Merged files hold about this many bytes (inputs are packed by
    /// their size); files of at least three quarters of it are left alone.
    pub target_size: u64,
    /// A directory counts as closed when nothing in it changed for this
    /// long (and it holds no in-progress file).
    pub min_age: Duration,
    /// Replaced directories are deleted by a run this much later.
    pub keep_replaced: Duration,
    /// Rows per row group of merged files.
    pub row_group_size: usize,
    /// Codec of merged files.
    pub compression: Compression,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            target_size: 128 << 20,
            min_age: Duration::from_secs(600),
            keep_replaced: Duration::from_secs(600),
            row_group_size: 1024 * 1024,
            compression: Compression::SNAPPY,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Directories switched to merged files.
    pub directories: usize,
    /// Files merged.
    pub files_in: usize,
    /// Files written.
    pub files_out: usize,
    /// Rows in the merged files.
    pub rows: u64,
}

/// The journal of one directory's compaction.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    /// The directory being built (before the switch), the replaced one after.
    staging: String,
    /// Names of the merged inputs.
    inputs: Vec<String>,
    /// Names of the merged files.
    outputs: Vec<String>,
}

/// Compacts the closed partition directories under `location`.
pub fn compact(location: &Location, opts: &CompactOptions) -> Result<CompactStats> {
    let Some(root) = location.local_path() else {
        return Err(Error::Config(format!(
            "cannot compact {location}: object stores have no atomic way to replace a set of \
             files, so readers would see duplicates; compact a local directory, or write a table \
             format"
        )));
    };
    let mut stats = CompactStats::default();
    for dir in leaf_dirs(&root)? {
        finish_interrupted(&dir)?;
        delete_expired(&dir, opts.keep_replaced)?;
        if let Some(s) = compact_dir(&dir, opts)? {
            stats.directories += 1;
            stats.files_in += s.files_in;
            stats.files_out += s.files_out;
            stats.rows += s.rows;
        }
    }
    Ok(stats)
}

fn io<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(format!("{what} {}", path.display()), e)
}

fn hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

/// Visible directories holding Parquet files (partition leaves, or the
/// root of unpartitioned output).
fn leaf_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let mut has_parquet = false;
        for e in std::fs::read_dir(&dir)
            .map_err(io("listing", &dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if hidden(&name) {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(_) if name.ends_with(".parquet") => has_parquet = true,
                _ => {}
            }
        }
        if has_parquet {
            out.push(dir);
        }
    }
    out.sort();
    Ok(out)
}

fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| Error::Config(format!("cannot compact {}: no name", dir.display())))?;
    Ok(dir.with_file_name(format!(".{name}.{suffix}")))
}

fn journal_path(dir: &Path) -> Result<PathBuf> {
    sibling(dir, "compaction.json")
}

/// Exchanges two directories atomically.
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::Config(format!("{} has a NUL byte", p.display())))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both paths are NUL-terminated C strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::io(
            format!("exchanging {} and {}", a.display(), b.display()),
            std::io::Error::last_os_error(),
        ))
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Names of the entries of `dir`.
fn names(dir: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)
        .map_err(io("listing", dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect())
}

/// After the switch: moves what appeared in the replaced directory (and
/// was not merged) into the live one, then parks the replaced directory
/// under a hidden name stamped with the time, for readers still in it.
fn settle(dir: &Path, replaced: &Path, j: &Journal) -> Result<()> {
    let live: std::collections::HashSet<String> = names(dir)?.into_iter().collect();
    for name in names(replaced)? {
        if live.contains(&name) || j.inputs.contains(&name) {
            continue;
        }
        debug!(file = %name, "moving a file that arrived during compaction");
        let (from, to) = (replaced.join(&name), dir.join(&name));
        std::fs::rename(&from, &to).map_err(io("moving", &from))?;
    }
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let parked = sibling(dir, &format!("replaced-{stamp}"))?;
    std::fs::rename(replaced, &parked).map_err(io("parking", replaced))?;
    sync_dir(dir.parent().unwrap_or(dir));
    let jp = journal_path(dir)?;
    std::fs::remove_file(&jp).map_err(io("removing", &jp))
}

/// Finishes (or undoes) a compaction of `dir` a crash interrupted.
fn finish_interrupted(dir: &Path) -> Result<()> {
    let jp = journal_path(dir)?;
    let Ok(bytes) = std::fs::read(&jp) else {
        return Ok(());
    };
    let j: Journal = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Checkpoint(format!("{} is malformed: {e}", jp.display())))?;
    let staging = PathBuf::from(&j.staging);
    let switched = j.outputs.iter().all(|o| dir.join(o).exists());
    if switched {
        if staging.exists() {
            settle(dir, &staging, &j)?;
        } else {
            std::fs::remove_file(&jp).map_err(io("removing", &jp))?;
        }
    } else {
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io("removing", &staging))?;
        }
        std::fs::remove_file(&jp).map_err(io("removing", &jp))?;
    }
    info!(dir = %dir.display(), switched, "finished an interrupted compaction");
    Ok(())
}

/// Deletes replaced directories parked longer than `keep`.
fn delete_expired(dir: &Path, keep: Duration) -> Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    let prefix = format!(
        ".{}.replaced-",
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    for name in names(parent)? {
        let Some(ms) = name
            .strip_prefix(&prefix)
            .and_then(|s| s.parse::<u128>().ok())
        else {
            continue;
        };
        if now.saturating_sub(ms) >= keep.as_millis() {
            let p = parent.join(&name);
            std::fs::remove_dir_all(&p).map_err(io("removing", &p))?;
        }
    }
    Ok(())
}

/// A visible Parquet file of a directory.
struct Input {
    name: String,
    size: u64,
    schema: SchemaRef,
}

fn compact_dir(dir: &Path, opts: &CompactOptions) -> Result<Option<CompactStats>> {
    let now = SystemTime::now();
    let mut small: Vec<Input> = Vec::new();
    for e in std::fs::read_dir(dir)
        .map_err(io("listing", dir))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        let meta = e.metadata().map_err(io("inspecting", &e.path()))?;
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if name.ends_with(".inprogress") || age < opts.min_age {
            // A writer is (or was just) at work here: not closed.
            return Ok(None);
        }
        if hidden(&name) || !meta.is_file() || !name.ends_with(".parquet") {
            continue;
        }
        if meta.len() * 4 < opts.target_size * 3 {
            let f = File::open(e.path()).map_err(io("opening", &e.path()))?;
            let schema = ParquetRecordBatchReaderBuilder::try_new(f)
                .map_err(|err| {
                    Error::connector("parquet", format!("reading {}: {err}", e.path().display()))
                })?
                .schema()
                .clone();
            small.push(Input {
                name,
                size: meta.len(),
                schema,
            });
        }
    }
    // Files of one schema merge together (an evolved schema is another
    // group); in name order, so merged rows keep the writers' order.
    small.sort_by(|a, b| a.name.cmp(&b.name));
    let mut groups: BTreeMap<String, Vec<Input>> = BTreeMap::new();
    for i in small {
        groups.entry(format!("{:?}", i.schema)).or_default().push(i);
    }
    let bins: Vec<Vec<Input>> = groups
        .into_values()
        .flat_map(|files| pack(files, |f| f.size, opts.target_size))
        .collect();
    if bins.is_empty() {
        return Ok(None);
    }

    let staging = sibling(dir, "compacting")?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("removing", &staging))?;
    }
    std::fs::create_dir(&staging).map_err(io("creating", &staging))?;
    let stamp = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut journal = Journal {
        staging: staging.to_string_lossy().to_string(),
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    let mut stats = CompactStats::default();
    for (n, bin) in bins.iter().enumerate() {
        let name = format!("compacted-{stamp}-{n:03}.parquet");
        let paths: Vec<PathBuf> = bin.iter().map(|i| dir.join(&i.name)).collect();
        stats.rows += merge(&paths, &staging.join(&name), opts)?;
        stats.files_in += bin.len();
        stats.files_out += 1;
        journal.outputs.push(name);
        journal.inputs.extend(bin.iter().map(|i| i.name.clone()));
    }
    // Everything else stays: the same files under the new directory.
    for name in names(dir)? {
        if journal.inputs.contains(&name) {
            continue;
        }
        let (from, to) = (dir.join(&name), staging.join(&name));
        if from.is_dir() {
            // A partition leaf has no subdirectories; leave any alone.
            continue;
        }
        if let Err(e) = std::fs::hard_link(&from, &to) {
            // Gone meanwhile (an in-progress file published): settle()
            // brings whatever is new over after the switch.
            warn!(file = %from.display(), error = %e, "not linked");
        }
    }
    sync_dir(&staging);
    let jp = journal_path(dir)?;
    let body = serde_json::to_vec(&journal)
        .map_err(|e| Error::Internal(format!("encoding a compaction journal: {e}")))?;
    std::fs::write(&jp, body).map_err(io("writing", &jp))?;
    sync_dir(dir.parent().unwrap_or(dir));
    exchange(&staging, dir)?;
    settle(dir, &staging, &journal)?;
    info!(
        dir = %dir.display(),
        files_in = stats.files_in,
        files_out = stats.files_out,
        rows = stats.rows,
        "compacted"
    );
    stats.directories = 1;
    Ok(Some(stats))
}

/// Packs `files` (in order) into runs of at most `target` bytes (a
/// larger file alone); runs of one file are dropped: nothing to merge.
pub(crate) fn pack<T>(files: Vec<T>, size: impl Fn(&T) -> u64, target: u64) -> Vec<Vec<T>> {
    let mut bins: Vec<Vec<T>> = Vec::new();
    let mut bin: Vec<T> = Vec::new();
    let mut bytes = 0;
    for f in files {
        if !bin.is_empty() && bytes + size(&f) > target {
            bins.push(std::mem::take(&mut bin));
            bytes = 0;
        }
        bytes += size(&f);
        bin.push(f);
    }
    bins.push(bin);
    bins.retain(|b| b.len() >= 2);
    bins
}

/// Writes the rows of the files at `paths` (in order, all of one
/// schema) into `out`; returns the rows.
pub(crate) fn merge(paths: &[PathBuf], out: &Path, opts: &CompactOptions) -> Result<u64> {
    let file = File::create(out).map_err(io("creating", out))?;
    let inputs = paths.iter().map(|path| {
        let f = File::open(path).map_err(io("opening", path))?;
        Ok((path.display().to_string(), f))
    });
    let (rows, file) = merge_into(inputs, file, &out.display().to_string(), opts)?;
    file.sync_all().map_err(io("syncing", out))?;
    Ok(rows)
}

/// Writes the rows of `inputs` (name for errors, reader; in order, all
/// of the first one's schema) into `out` as one Parquet file with full
/// row groups; returns the rows and `out`.
pub(crate) fn merge_into<R: ChunkReader + 'static, W: std::io::Write + Send>(
    inputs: impl IntoIterator<Item = Result<(String, R)>>,
    out: W,
    out_name: &str,
    opts: &CompactOptions,
) -> Result<(u64, W)> {
    let fail = |what: &str, name: &str, e: &dyn std::fmt::Display| {
        Error::connector("parquet", format!("{what} {name}: {e}"))
    };
    let mut out = Some(out);
    let mut w: Option<ArrowWriter<W>> = None;
    let mut rows = 0;
    for input in inputs {
        let (name, reader) = input?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(reader)
            .map_err(|e| fail("reading", &name, &e))?;
        if let Some(out) = out.take() {
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(opts.row_group_size))
                .set_compression(opts.compression)
                .build();
            let writer = ArrowWriter::try_new(out, builder.schema().clone(), Some(props))
                .map_err(|e| fail("writing", out_name, &e))?;
            w = Some(writer);
        }
        let writer = w.as_mut().expect("created with the first input");
        for b in builder.build().map_err(|e| fail("reading", &name, &e))? {
            let b = b.map_err(|e| fail("reading", &name, &e))?;
            rows += b.num_rows() as u64;
            writer
                .write(&b)
                .map_err(|e| fail("writing", out_name, &e))?;
        }
    }
    let w = w.ok_or_else(|| Error::Internal(format!("nothing to merge into {out_name}")))?;
    let out = w
        .into_inner()
        .map_err(|e| fail("finishing", out_name, &e))?;
    Ok((rows, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn write(dir: &Path, name: &str, from: i64, n: i64) {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(from..from + n))],
        )
        .unwrap();
        let mut w =
            ArrowWriter::try_new(File::create(dir.join(name)).unwrap(), schema, None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    }

    fn xs(dir: &Path) -> Vec<i64> {
        let mut v = Vec::new();
        for n in names(dir).unwrap() {
            if hidden(&n) || !n.ends_with(".parquet") {
                continue;
            }
            let r = ParquetRecordBatchReaderBuilder::try_new(File::open(dir.join(n)).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for b in r {
                let b = b.unwrap();
                v.extend(
                    b.column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .iter(),
                );
            }
        }
        v.sort();
        v
    }

    fn opts() -> CompactOptions {
        CompactOptions {
            min_age: Duration::ZERO,
            keep_replaced: Duration::from_secs(3600),
            ..Default::default()
        }
    }

    #[test]
    fn small_files_merge_and_the_rest_stays() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("dt=1");
        std::fs::create_dir(&dir).unwrap();
        for k in 0..5 {
            write(&dir, &format!("part-000-{k:05}.parquet"), k * 10, 10);
        }
        std::fs::write(dir.join("notes.txt"), "kept").unwrap();
        let stats = compact(&Location::from(root.path()), &opts()).unwrap();
        assert_eq!((stats.files_in, stats.files_out, stats.rows), (5, 1, 50));
        assert_eq!(xs(&dir), (0..50).collect::<Vec<_>>());
        let visible: Vec<String> = names(&dir)
            .unwrap()
            .into_iter()
            .filter(|n| n.ends_with(".parquet"))
            .collect();
        assert_eq!(visible.len(), 1, "{visible:?}");
        assert!(dir.join("notes.txt").exists());
        // The replaced directory is parked, hidden, with the old files.
        let parked: Vec<String> = names(root.path())
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(".dt=1.replaced-"))
            .collect();
        assert_eq!(parked.len(), 1);
        // A second run has nothing to do, and removes nothing young.
        assert_eq!(
            compact(&Location::from(root.path()), &opts()).unwrap(),
            CompactStats::default()
        );
        assert!(root.path().join(&parked[0]).exists());
        let expire = CompactOptions {
            keep_replaced: Duration::ZERO,
            ..opts()
        };
        compact(&Location::from(root.path()), &expire).unwrap();
        assert!(!root.path().join(&parked[0]).exists());
    }

    #[test]
    fn an_open_directory_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        for k in 0..3 {
            write(root.path(), &format!("part-000-{k:05}.parquet"), k * 10, 10);
        }
        std::fs::write(root.path().join(".part-000-00003.parquet.inprogress"), "x").unwrap();
        assert_eq!(
            compact(&Location::from(root.path()), &opts())
                .unwrap()
                .files_in,
            0
        );
        let young = CompactOptions {
            min_age: Duration::from_secs(3600),
            ..opts()
        };
        std::fs::remove_file(root.path().join(".part-000-00003.parquet.inprogress")).unwrap();
        assert_eq!(
            compact(&Location::from(root.path()), &young)
                .unwrap()
                .files_in,
            0
        );
        assert_eq!(
            compact(&Location::from(root.path()), &opts())
                .unwrap()
                .files_in,
            3
        );
    }

    #[test]
    fn an_interrupted_compaction_is_finished_or_undone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("p");
        std::fs::create_dir(&dir).unwrap();
        for k in 0..3 {
            write(&dir, &format!("part-000-{k:05}.parquet"), k * 10, 10);
        }
        // Crashed before the switch: a journal and a half-built directory.
        let staging = sibling(&dir, "compacting").unwrap();
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("compacted-1-000.parquet"), "partial").unwrap();
        let j = Journal {
            staging: staging.to_string_lossy().to_string(),
            inputs: vec!["part-000-00000.parquet".into()],
            outputs: vec!["compacted-1-000.parquet".into()],
        };
        std::fs::write(journal_path(&dir).unwrap(), serde_json::to_vec(&j).unwrap()).unwrap();
        let stats = compact(&Location::from(root.path()), &opts()).unwrap();
        assert!(!journal_path(&dir).unwrap().exists());
        assert_eq!(stats.files_in, 3, "undone, then compacted afresh");
        assert_eq!(xs(&dir), (0..30).collect::<Vec<_>>());
    }

    #[test]
    fn buckets_are_refused() {
        let e = compact(&Location::from("s3://b/p"), &opts()).unwrap_err();
        assert!(e.to_string().contains("atomic"), "{e}");
    }
}
