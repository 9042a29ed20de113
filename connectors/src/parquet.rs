//! The Parquet sink: each subtask writes its own files, rolled by size or
//! age, under a hidden in-progress name (`.part-….parquet.inprogress`), and
//! renames them to their final name when they may be seen, so a reader
//! listing `*.parquet` never sees a partial or uncommitted file.
//!
//! Without checkpoints a file is published when it rolls
//! (`part-{subtask:03}-{seq:05}.parquet`). With checkpoints the sink
//! commits in two phases: at barrier `n` the open file is finished, synced
//! and staged for `n` under the name it will have,
//! `part-{subtask:03}-{n:06}-a{attempt}-{seq:05}.parquet`; when checkpoint
//! `n` completes, everything staged up to `n` is renamed into place. On
//! resume from checkpoint `m`, files `m` staged are published (idempotent:
//! a file already published is left alone), in-progress files of the
//! failed run are deleted, and so are published files of checkpoints after
//! `m` (possible only when a newer checkpoint was found corrupted and
//! skipped), since the resumed job writes that output again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use sluice_engine::data::CheckpointId;
use sluice_engine::graph::SinkFactory;
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Error, OperatorContext, Result, Sink, SinkSpec, Watermark};
use tracing::debug;

/// Writes Parquet files into a directory, a file per subtask rolled by
/// size (and time, if set). With checkpoints a file becomes visible only
/// when the checkpoint that covers it completes (two-phase commit); a
/// bounded job publishes what it wrote when its input ends.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sluice_connectors::file::FileSource;
/// use sluice_connectors::parquet::ParquetSink;
/// use sluice_operators::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// struct Reading { sensor: i64, celsius: f64 }
///
/// let dir = tempfile::tempdir().unwrap();
/// let env = Env::new();
/// let rows = (0..10).map(|i| Reading { sensor: i % 3, celsius: 20.0 + i as f64 }).collect();
/// env.from_rows("readings", rows).sink(ParquetSink::new(dir.path()));
/// env.execute()?;
///
/// // Read back by the file source.
/// let env = Env::new();
/// let back = env.source(FileSource::parquet(dir.path())).collect();
/// env.execute()?;
/// let mut readings: Vec<Reading> = back.rows()?;
/// readings.sort_by(|a, b| a.celsius.total_cmp(&b.celsius));
/// assert_eq!(readings.len(), 10);
/// assert_eq!(readings[9].sensor, 0);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ParquetSink {
    dir: PathBuf,
    row_group_size: usize,
    max_file_size: usize,
    rollover: Option<Duration>,
    compression: Compression,
    no_dictionary: Vec<String>,
}

impl ParquetSink {
    /// Files go to `dir` (created if missing).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        ParquetSink {
            dir: dir.as_ref().to_path_buf(),
            row_group_size: 1024 * 1024,
            max_file_size: 128 * 1024 * 1024,
            rollover: None,
            compression: Compression::SNAPPY,
            no_dictionary: Vec::new(),
        }
    }
    /// Writes these columns without dictionary encoding: for columns whose
    /// values are nearly all distinct (offsets, timestamps, ids), where a
    /// dictionary is built only to be abandoned. Binary columns never get
    /// one.
    pub fn without_dictionary<S: Into<String>>(
        mut self,
        columns: impl IntoIterator<Item = S>,
    ) -> Self {
        self.no_dictionary
            .extend(columns.into_iter().map(Into::into));
        self
    }
    /// Largest number of rows per row group (default 1 Mi).
    pub fn row_group_size(mut self, rows: usize) -> Self {
        self.row_group_size = rows.max(1);
        self
    }
    /// Roll to a new file once it holds this many bytes (encoded size,
    /// checked after each batch; default 128 MiB).
    pub fn max_file_size(mut self, bytes: usize) -> Self {
        self.max_file_size = bytes.max(1);
        self
    }
    /// Roll to a new file when the current one is this old (checked when a
    /// batch or a watermark arrives).
    pub fn rollover_interval(mut self, d: Duration) -> Self {
        self.rollover = Some(d);
        self
    }
    /// Compression codec (default snappy).
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }
}

impl SinkSpec for ParquetSink {
    fn name(&self) -> String {
        format!("parquet_sink({})", self.dir.display())
    }

    fn factory(&self, input: SchemaRef) -> SinkFactory {
        let spec = self.clone();
        Arc::new(move |_ctx| {
            Ok(Box::new(ParquetWriterTask {
                spec: spec.clone(),
                schema: input.clone(),
                current: None,
                closed: Vec::new(),
                staged: Vec::new(),
                restored: None,
                seq: 0,
                subtask: 0,
                parallelism: 1,
                attempt: 0,
                checkpointing: false,
            }))
        })
    }
}

struct OpenFile {
    writer: ArrowWriter<File>,
    in_progress: PathBuf,
    target: PathBuf,
    opened: Instant,
}

/// A closed file waiting to be made visible.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingFile {
    /// Where it was written.
    pub in_progress: PathBuf,
    /// Its final name.
    pub target: PathBuf,
}

impl PendingFile {
    /// Makes the file visible under its final name. Idempotent: publishing a
    /// file that is already published does nothing.
    pub fn publish(&self) -> Result<()> {
        if !self.in_progress.exists() && self.target.exists() {
            return Ok(());
        }
        std::fs::rename(&self.in_progress, &self.target).map_err(|e| {
            Error::io(
                format!(
                    "publishing {} (staged as {})",
                    self.target.display(),
                    self.in_progress.display()
                ),
                e,
            )
        })
    }
}

/// A file staged for a checkpoint, as kept in the sink's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Staged {
    /// Checkpoint the file belongs to.
    epoch: u64,
    /// Subtask that wrote it.
    subtask: usize,
    file: PendingFile,
}

/// What a file name in the output directory is.
#[derive(Debug, PartialEq, Eq)]
enum Name {
    /// `.part-{subtask}-…inprogress`
    InProgress {
        subtask: usize,
    },
    /// `part-{subtask}-{epoch}-a{attempt}-{seq}.parquet`
    Committed {
        subtask: usize,
        epoch: u64,
    },
    Other,
}

fn classify(name: &str) -> Name {
    if let Some(rest) = name
        .strip_prefix(".part-")
        .and_then(|r| r.strip_suffix(".parquet.inprogress"))
    {
        if let Some(Ok(subtask)) = rest.split('-').next().map(str::parse) {
            return Name::InProgress { subtask };
        }
    }
    if let Some(rest) = name
        .strip_prefix("part-")
        .and_then(|r| r.strip_suffix(".parquet"))
    {
        let parts: Vec<&str> = rest.split('-').collect();
        if let [sub, epoch, attempt, seq] = parts[..] {
            if let (Ok(subtask), Ok(epoch), true, true) = (
                sub.parse(),
                epoch.parse(),
                attempt.starts_with('a'),
                seq.parse::<u64>().is_ok(),
            ) {
                return Name::Committed { subtask, epoch };
            }
        }
    }
    Name::Other
}

struct ParquetWriterTask {
    spec: ParquetSink,
    schema: SchemaRef,
    current: Option<OpenFile>,
    /// Finished files not yet assigned to a checkpoint.
    closed: Vec<PathBuf>,
    /// Files staged for a checkpoint that has not completed yet.
    staged: Vec<Staged>,
    /// From the checkpoint resumed: its id and what it had staged.
    restored: Option<(u64, Vec<Staged>)>,
    seq: u64,
    subtask: usize,
    parallelism: usize,
    attempt: u64,
    checkpointing: bool,
}

impl ParquetWriterTask {
    fn open_file(&mut self) -> Result<&mut OpenFile> {
        if self.current.is_none() {
            let name = if self.checkpointing {
                format!("part-{:03}-a{}-{:05}", self.subtask, self.attempt, self.seq)
            } else {
                format!("part-{:03}-{:05}", self.subtask, self.seq)
            };
            self.seq += 1;
            let target = self.spec.dir.join(format!("{name}.parquet"));
            let in_progress = self.spec.dir.join(format!(".{name}.parquet.inprogress"));
            let file = File::create(&in_progress)
                .map_err(|e| Error::io(format!("creating {}", in_progress.display()), e))?;
            let mut props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(self.spec.row_group_size))
                .set_compression(self.spec.compression);
            // Binary columns (raw message payloads) are nearly always
            // distinct: a dictionary is built only to be abandoned, which
            // cost a fifth of a raw Kafka → Parquet job's time.
            for f in self.schema.fields() {
                let binary = matches!(
                    f.data_type(),
                    DataType::Binary | DataType::LargeBinary | DataType::BinaryView
                );
                if binary || self.spec.no_dictionary.contains(f.name()) {
                    props = props.set_column_dictionary_enabled(
                        ColumnPath::new(vec![f.name().clone()]),
                        false,
                    );
                }
            }
            let props = props.build();
            let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(props))
                .map_err(|e| Error::connector("parquet", e))?;
            self.current = Some(OpenFile {
                writer,
                in_progress,
                target,
                opened: Instant::now(),
            });
        }
        Ok(self.current.as_mut().expect("opened above"))
    }

    /// Finishes the current file (footer written, contents synced to disk,
    /// so a later publish never exposes a torn file). Without checkpoints
    /// it is published at once; with them it waits for a barrier.
    fn close_current(&mut self) -> Result<()> {
        let Some(f) = self.current.take() else {
            return Ok(());
        };
        let file = f.writer.into_inner().map_err(|e| {
            Error::connector(
                "parquet",
                format!("closing {}: {e}", f.in_progress.display()),
            )
        })?;
        file.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", f.in_progress.display()), e))?;
        debug!(file = %f.in_progress.display(), "parquet file complete");
        if self.checkpointing {
            self.closed.push(f.in_progress);
            Ok(())
        } else {
            PendingFile {
                in_progress: f.in_progress,
                target: f.target,
            }
            .publish()
        }
    }

    /// Whether the current file is due to roll by size or age.
    fn due(&self) -> bool {
        self.current.as_ref().is_some_and(|f| {
            let size = f.writer.bytes_written() + f.writer.in_progress_size();
            size >= self.spec.max_file_size
                || self.spec.rollover.is_some_and(|r| f.opened.elapsed() >= r)
        })
    }

    /// Continues numbering after files of earlier runs instead of
    /// overwriting them (runs without checkpoints).
    fn continue_numbering(&mut self) -> Result<()> {
        let prefix = format!("part-{:03}-", self.subtask);
        for e in std::fs::read_dir(&self.spec.dir)
            .map_err(|e| Error::io("listing output", e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(seq) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".parquet"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                self.seq = self.seq.max(seq + 1);
            }
        }
        Ok(())
    }

    /// Resume: publish what the restored checkpoint staged, delete what
    /// failed runs left behind. Each old subtask's files are handled by
    /// exactly one new subtask (old index mod new parallelism), so new
    /// subtasks never race on a file.
    fn recover(&mut self) -> Result<()> {
        let mine = |old: usize| old % self.parallelism == self.subtask;
        let (restored_id, staged) = self.restored.take().unwrap_or((0, Vec::new()));
        for s in staged.iter().filter(|s| mine(s.subtask)) {
            s.file.publish()?;
        }
        let keep: Vec<&PathBuf> = staged.iter().map(|s| &s.file.in_progress).collect();
        for e in std::fs::read_dir(&self.spec.dir)
            .map_err(|e| Error::io("listing output", e))?
            .flatten()
        {
            let path = e.path();
            let doomed = match classify(&e.file_name().to_string_lossy()) {
                Name::InProgress { subtask } => mine(subtask) && !keep.contains(&&path),
                Name::Committed { subtask, epoch } => {
                    restored_id > 0 && epoch > restored_id && mine(subtask)
                }
                Name::Other => false,
            };
            if doomed {
                debug!(file = %path.display(), "removing output of an uncommitted checkpoint");
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
            }
        }
        Ok(())
    }
}

impl Sink for ParquetWriterTask {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.subtask = ctx.subtask;
        self.parallelism = ctx.parallelism.max(1);
        self.attempt = ctx.attempt;
        self.checkpointing = ctx.checkpointing;
        std::fs::create_dir_all(&self.spec.dir)
            .map_err(|e| Error::io(format!("creating {}", self.spec.dir.display()), e))?;
        if self.checkpointing {
            self.recover()
        } else {
            self.continue_numbering()
        }
    }

    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        let f = self.open_file()?;
        f.writer.write(&batch).map_err(|e| {
            Error::connector(
                "parquet",
                format!("writing {}: {e}", f.in_progress.display()),
            )
        })?;
        if self.due() {
            self.close_current()?;
        }
        Ok(())
    }

    fn on_watermark(&mut self, _watermark: Watermark, _ctx: &OperatorContext) -> Result<()> {
        // Watermarks keep arriving when data does not: roll files by age here too.
        if self.due() {
            self.close_current()?;
        }
        Ok(())
    }

    fn close(&mut self, _ctx: &OperatorContext) -> Result<()> {
        self.close_current()
    }

    /// Pre-commit: finish the open file and stage every finished file for
    /// `checkpoint` under its final name.
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        _ctx: &OperatorContext,
    ) -> Result<OperatorSnapshot> {
        self.close_current()?;
        for in_progress in std::mem::take(&mut self.closed) {
            let name = in_progress
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let stem = name
                .trim_start_matches('.')
                .trim_end_matches(".parquet.inprogress");
            // part-SSS-aA-QQQQQ → part-SSS-NNNNNN-aA-QQQQQ
            let target_name = match stem.split_once('-').and_then(|(p, r)| {
                r.split_once('-')
                    .map(|(sub, rest)| format!("{p}-{sub}-{:06}-{rest}.parquet", checkpoint.0))
            }) {
                Some(t) => t,
                None => {
                    return Err(Error::Internal(format!(
                        "unexpected in-progress name {name}"
                    )))
                }
            };
            self.staged.push(Staged {
                epoch: checkpoint.0,
                subtask: self.subtask,
                file: PendingFile {
                    target: self.spec.dir.join(target_name),
                    in_progress,
                },
            });
        }
        let entries = self
            .staged
            .iter()
            .map(serde_json::to_vec)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(format!("encoding staged files: {e}")))?;
        Ok(OperatorSnapshot::entries(entries))
    }

    fn restore(&mut self, state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
        let staged = state
            .entries
            .iter()
            .map(|e| {
                serde_json::from_slice::<Staged>(e).map_err(|err| {
                    Error::Checkpoint(format!("parquet sink state is malformed: {err}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.restored = Some((state.checkpoint.0, staged));
        Ok(())
    }

    /// Commit: publish every file staged up to `checkpoint`.
    fn checkpoint_complete(
        &mut self,
        checkpoint: CheckpointId,
        _ctx: &OperatorContext,
    ) -> Result<()> {
        let (done, later): (Vec<Staged>, Vec<Staged>) = std::mem::take(&mut self.staged)
            .into_iter()
            .partition(|s| s.epoch <= checkpoint.0);
        self.staged = later;
        for s in done {
            s.file.publish()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified() {
        assert_eq!(
            classify(".part-002-a1-00003.parquet.inprogress"),
            Name::InProgress { subtask: 2 }
        );
        assert_eq!(
            classify("part-002-000007-a1-00003.parquet"),
            Name::Committed {
                subtask: 2,
                epoch: 7
            }
        );
        assert_eq!(classify("part-002-00003.parquet"), Name::Other);
        assert_eq!(classify("notes.txt"), Name::Other);
    }
}
