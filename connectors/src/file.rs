//! Bounded file sources: Parquet, CSV (with a header row) and JSON lines.
//! A path is a file or a directory of files; each file is a split, and files
//! are dealt round-robin to the source's subtasks. The schema is read (or
//! inferred from the first rows) at plan time, so a missing or unreadable
//! file fails the job before it starts.

use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_engine::data::CheckpointId;
use sluice_engine::graph::SourceFactory;
use sluice_engine::{Error, OperatorContext, Result, Source, SourcePoll, SourceSpec};

/// File formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

/// Rows read to infer a CSV or JSON schema.
const INFER_ROWS: usize = 1000;

/// A bounded source over files: a file, or every file of a directory
/// (split over the subtasks). CSV and JSON-lines schemas are inferred from
/// the first rows unless given ([`FileSource::with_schema`]).
///
/// ```
/// use sluice_connectors::file::FileSource;
/// use sluice_operators::prelude::*;
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("prices.csv");
/// std::fs::write(&path, "item,price\na,3\nb,12\nc,40\n").unwrap();
///
/// let env = Env::new();
/// let dear = env
///     .source(FileSource::csv(&path))
///     .filter(col("price").gt(lit(10i64)))
///     .collect();
/// env.execute()?;
/// assert_eq!(dear.num_rows(), 2);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    format: Format,
    batch_size: usize,
    schema: Option<SchemaRef>,
}

impl FileSource {
    /// Parquet file(s).
    pub fn parquet(path: impl AsRef<Path>) -> Self {
        Self::new(path, Format::Parquet)
    }
    /// CSV file(s) with a header row.
    pub fn csv(path: impl AsRef<Path>) -> Self {
        Self::new(path, Format::Csv)
    }
    /// JSON-lines file(s).
    pub fn jsonl(path: impl AsRef<Path>) -> Self {
        Self::new(path, Format::JsonLines)
    }
    fn new(path: impl AsRef<Path>, format: Format) -> Self {
        FileSource {
            path: path.as_ref().to_path_buf(),
            format,
            batch_size: 8192,
            schema: None,
        }
    }
    /// Rows per batch.
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }
    /// Uses this schema instead of inferring one. CSV and JSON are parsed
    /// into it; Parquet files must have exactly this schema.
    pub fn with_schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self
    }

    /// The input files, sorted.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        if meta.is_file() {
            return Ok(vec![self.path.clone()]);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map_err(|e| Error::io(format!("listing {}", self.path.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::connector(
                "file",
                format!("directory {} holds no files", self.path.display()),
            ));
        }
        Ok(files)
    }

    fn open(path: &Path) -> Result<File> {
        File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))
    }

    fn bad(path: &Path, e: impl std::fmt::Display) -> Error {
        Error::connector("file", format!("{}: {e}", path.display()))
    }

    fn schema_of(&self, path: &Path) -> Result<SchemaRef> {
        let file = Self::open(path)?;
        let schema = match self.format {
            Format::Parquet => ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| Self::bad(path, e))?
                .schema()
                .clone(),
            Format::Csv => {
                let (schema, _) = arrow::csv::reader::Format::default()
                    .with_header(true)
                    .infer_schema(file, Some(INFER_ROWS))
                    .map_err(|e| Self::bad(path, e))?;
                Arc::new(schema)
            }
            Format::JsonLines => {
                let mut r = BufReader::new(file);
                let (schema, _) =
                    arrow::json::reader::infer_json_schema_from_seekable(&mut r, Some(INFER_ROWS))
                        .map_err(|e| Self::bad(path, e))?;
                Arc::new(schema)
            }
        };
        if schema.fields().is_empty() {
            // An empty CSV/JSON file infers no columns; say so now rather
            // than fail later on a confusing zero-column batch.
            return Err(Self::bad(path, "no columns found (empty file?)"));
        }
        Ok(schema)
    }

    fn reader(&self, path: &Path, schema: &SchemaRef) -> Result<Reader> {
        let file = Self::open(path)?;
        let bad = |e: ArrowError| Self::bad(path, e);
        Ok(match self.format {
            Format::Parquet => Box::new(
                ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| Self::bad(path, e))?
                    .with_batch_size(self.batch_size)
                    .build()
                    .map_err(|e| Self::bad(path, e))?,
            ),
            Format::Csv => Box::new(
                arrow::csv::ReaderBuilder::new(schema.clone())
                    .with_header(true)
                    .with_batch_size(self.batch_size)
                    .build(file)
                    .map_err(bad)?,
            ),
            Format::JsonLines => {
                let mut r = BufReader::new(file);
                r.rewind()
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                Box::new(
                    arrow::json::ReaderBuilder::new(schema.clone())
                        .with_batch_size(self.batch_size)
                        .build(r)
                        .map_err(bad)?,
                )
            }
        })
    }
}

type Reader = Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>> + Send>;

impl SourceSpec for FileSource {
    fn name(&self) -> String {
        format!("file_source({})", self.path.display())
    }

    fn schema(&self) -> Result<SchemaRef> {
        match &self.schema {
            Some(s) => Ok(s.clone()),
            None => self.schema_of(&self.files()?[0]),
        }
    }

    fn factory(&self) -> SourceFactory {
        let me = self.clone();
        Arc::new(move |ctx: &OperatorContext| {
            let schema = me.schema()?;
            let files: Vec<(usize, PathBuf)> = me
                .files()?
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % ctx.parallelism == ctx.subtask)
                .collect();
            let n = files.len();
            Ok(Box::new(FileSubtask {
                spec: me.clone(),
                schema,
                files,
                rows: vec![0; n],
                done: vec![false; n],
                skip: 0,
                current: None,
                index: 0,
            }) as Box<dyn Source>)
        })
    }
}

struct FileSubtask {
    spec: FileSource,
    schema: SchemaRef,
    /// (index among all the source's files, path): files are dealt by index,
    /// so the same file goes to the same subtask in every run.
    files: Vec<(usize, PathBuf)>,
    /// Rows emitted from each file (the checkpointed position).
    rows: Vec<u64>,
    /// Files read to the end.
    done: Vec<bool>,
    /// Rows still to skip in the current file (resuming mid-file).
    skip: u64,
    current: Option<Reader>,
    index: usize,
}

/// A file's position: (file index, rows emitted, finished), 17 bytes.
fn encode_position(file: usize, rows: u64, done: bool) -> Vec<u8> {
    let mut e = (file as u64).to_le_bytes().to_vec();
    e.extend_from_slice(&rows.to_le_bytes());
    e.push(done as u8);
    e
}

fn decode_position(e: &[u8]) -> Result<(usize, u64, bool)> {
    if e.len() != 17 || e[16] > 1 {
        return Err(Error::Checkpoint(format!(
            "file source position entry is malformed ({} bytes)",
            e.len()
        )));
    }
    let word = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().expect("8 bytes"));
    Ok((word(0) as usize, word(8), e[16] == 1))
}

impl Source for FileSubtask {
    /// One split per file this subtask owns (possibly none).
    fn splits(&self) -> usize {
        self.files.len()
    }

    fn supports_checkpoints(&self) -> bool {
        true
    }

    /// Skipping already-emitted rows reports `Idle` between batches; poll
    /// again at once.
    fn idle_backoff(&self) -> std::time::Duration {
        if self.skip > 0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_millis(5)
        }
    }

    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .files
            .iter()
            .enumerate()
            .map(|(i, (file, _))| encode_position(*file, self.rows[i], self.done[i]))
            .collect())
    }

    /// Takes the positions of the files this subtask owns (by file index).
    fn restore(&mut self, entries: Vec<Vec<u8>>, _ctx: &OperatorContext) -> Result<()> {
        for e in &entries {
            let (file, rows, done) = decode_position(e)?;
            if let Some(i) = self.files.iter().position(|(f, _)| *f == file) {
                self.rows[i] = rows;
                self.done[i] = done;
            }
        }
        Ok(())
    }

    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        while self.done.get(self.index).copied().unwrap_or(false) {
            self.index += 1;
        }
        let Some((_, path)) = self.files.get(self.index) else {
            return Ok(SourcePoll::End);
        };
        if self.current.is_none() {
            self.current = Some(self.spec.reader(path, &self.schema)?);
            self.skip = self.rows[self.index];
        }
        match self.current.as_mut().and_then(|r| r.next()) {
            Some(Ok(mut batch)) => {
                // Resuming mid-file: rows before the position were emitted.
                if self.skip > 0 {
                    let n = batch.num_rows() as u64;
                    let cut = self.skip.min(n);
                    self.skip -= cut;
                    batch = batch.slice(cut as usize, (n - cut) as usize);
                    if batch.num_rows() == 0 {
                        return Ok(SourcePoll::Idle);
                    }
                }
                self.rows[self.index] += batch.num_rows() as u64;
                if batch.schema().fields() != self.schema.fields() {
                    return Err(Error::connector(
                        "file",
                        format!(
                            "{} has schema {:?}, expected {:?} (from the first file or with_schema)",
                            path.display(),
                            batch.schema(),
                            self.schema
                        ),
                    ));
                }
                Ok(SourcePoll::Batch {
                    split: self.index,
                    batch,
                })
            }
            Some(Err(e)) => Err(Error::Decode(format!("{}: {e}", path.display()))),
            None => {
                // This file is done: its split no longer holds back time.
                self.current = None;
                self.done[self.index] = true;
                self.index += 1;
                Ok(SourcePoll::SplitEnd(self.index - 1))
            }
        }
    }
}
