//! The Parquet sink: each subtask writes its own files
//! `part-{subtask:03}-{seq:05}.parquet`, rolled by size or age. A file is
//! written under a hidden in-progress name (`.part-….parquet.inprogress`) and
//! renamed when complete, so a reader listing `*.parquet` never sees a
//! partial file. Closing a file and publishing it are separate steps, which
//! is what two-phase commit on checkpoints builds on.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use sluice_engine::graph::SinkFactory;
use sluice_engine::{Error, OperatorContext, Result, Sink, SinkSpec, Watermark};
use tracing::debug;

/// Writes Parquet files into a directory.
#[derive(Debug, Clone)]
pub struct ParquetSink {
    dir: PathBuf,
    row_group_size: usize,
    max_file_size: usize,
    rollover: Option<Duration>,
    compression: Compression,
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
        }
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
                pending: Vec::new(),
                seq: 0,
                subtask: 0,
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
        std::fs::rename(&self.in_progress, &self.target)
            .map_err(|e| Error::io(format!("publishing {}", self.target.display()), e))
    }
}

struct ParquetWriterTask {
    spec: ParquetSink,
    schema: SchemaRef,
    current: Option<OpenFile>,
    /// Closed files not yet published (a checkpoint's pre-commit set later).
    pending: Vec<PendingFile>,
    seq: u64,
    subtask: usize,
}

impl ParquetWriterTask {
    fn open_file(&mut self) -> Result<&mut OpenFile> {
        if self.current.is_none() {
            let name = format!("part-{:03}-{:05}.parquet", self.subtask, self.seq);
            self.seq += 1;
            let target = self.spec.dir.join(&name);
            let in_progress = self.spec.dir.join(format!(".{name}.inprogress"));
            let file = File::create(&in_progress)
                .map_err(|e| Error::io(format!("creating {}", in_progress.display()), e))?;
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(self.spec.row_group_size))
                .set_compression(self.spec.compression)
                .build();
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
    /// so a later publish never exposes a torn file) and queues it as
    /// pending: complete but not yet visible.
    fn close_current_as_pending(&mut self) -> Result<()> {
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
        debug!(file = %f.target.display(), "parquet file complete");
        self.pending.push(PendingFile {
            in_progress: f.in_progress,
            target: f.target,
        });
        Ok(())
    }

    /// Makes every pending file visible under its final name.
    fn publish_pending(&mut self) -> Result<()> {
        for p in std::mem::take(&mut self.pending) {
            p.publish()?;
        }
        Ok(())
    }

    /// Without checkpoints a closed file is published at once.
    fn roll(&mut self) -> Result<()> {
        self.close_current_as_pending()?;
        self.publish_pending()
    }

    /// Whether the current file is due to roll by size or age.
    fn due(&self) -> bool {
        self.current.as_ref().is_some_and(|f| {
            let size = f.writer.bytes_written() + f.writer.in_progress_size();
            size >= self.spec.max_file_size
                || self.spec.rollover.is_some_and(|r| f.opened.elapsed() >= r)
        })
    }
}

impl Sink for ParquetWriterTask {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.subtask = ctx.subtask;
        std::fs::create_dir_all(&self.spec.dir)
            .map_err(|e| Error::io(format!("creating {}", self.spec.dir.display()), e))?;
        // Continue numbering after files of earlier runs instead of overwriting them.
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

    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        let f = self.open_file()?;
        f.writer.write(&batch).map_err(|e| {
            Error::connector(
                "parquet",
                format!("writing {}: {e}", f.in_progress.display()),
            )
        })?;
        if self.due() {
            self.roll()?;
        }
        Ok(())
    }

    fn on_watermark(&mut self, _watermark: Watermark, _ctx: &OperatorContext) -> Result<()> {
        // Watermarks keep arriving when data does not: roll files by age here too.
        if self.due() {
            self.roll()?;
        }
        Ok(())
    }

    fn close(&mut self, _ctx: &OperatorContext) -> Result<()> {
        self.roll()
    }
}
