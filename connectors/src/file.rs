//! Bounded file sources: Parquet, CSV (with a header row) and JSON lines.
//! A path is a file or a directory of files of one format (a directory
//! mixing formats is an error, [`FileSource::detect`] picks the format from
//! the extensions); each file is a split, and files are dealt round-robin
//! to the source's subtasks. The schema is read (or inferred from the
//! first rows) at plan time, so a missing or unreadable file fails the job
//! before it starts.
//!
//! JSON lines follow the Kafka source's strict rule (`crate::json`): a
//! line that does not fit the schema (a string where a number is, a
//! duplicate key, an unknown field) is a bad record, never coerced.
//! Bad records (such lines, and records whose event time the runtime
//! rejects) fail the job naming the file and line or row, or with
//! [`FileSource::skip_bad_records`] are skipped and counted. A file whose
//! schema differs from the planned one is a plan error, found when the
//! file is opened.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_engine::data::CheckpointId;
use sluice_engine::graph::SourceFactory;
use sluice_engine::{Error, OperatorContext, Result, Source, SourcePoll, SourceSpec};

use crate::json::JsonDecoder;

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

impl Format {
    /// The format a file name's extension says (`.parquet`, `.csv`,
    /// `.jsonl`/`.ndjson`/`.json`), if any.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "parquet" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::JsonLines),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Parquet => "Parquet",
            Format::Csv => "CSV",
            Format::JsonLines => "JSON lines",
        }
    }
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
    skip_bad: bool,
    skipped: Arc<AtomicU64>,
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
    /// A file, or a directory of files of one format, read in the format
    /// their extensions say. A directory mixing formats, or a file whose
    /// extension names none, is an error.
    pub fn detect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let probe = Self::new(path, Format::Parquet);
        let files = probe.listed()?;
        let known: Vec<(Format, &PathBuf)> = files
            .iter()
            .filter_map(|f| Format::of(f).map(|k| (k, f)))
            .collect();
        let Some((format, _)) = known.first() else {
            return Err(Error::Config(format!(
                "cannot tell the format of {}: expected .parquet, .csv or .jsonl files",
                path.display()
            )));
        };
        let source = Self::new(path, *format);
        source.files()?;
        Ok(source)
    }

    fn new(path: impl AsRef<Path>, format: Format) -> Self {
        FileSource {
            path: path.as_ref().to_path_buf(),
            format,
            batch_size: 8192,
            schema: None,
            skip_bad: false,
            skipped: Arc::default(),
        }
    }
    /// The format the files are read in.
    pub fn format(&self) -> Format {
        self.format
    }
    /// Skips (and counts, [`FileSource::skipped`]) bad records instead of
    /// failing: JSON lines that do not fit the schema, and records whose
    /// event time the runtime rejects.
    pub fn skip_bad_records(mut self, skip: bool) -> Self {
        self.skip_bad = skip;
        self
    }
    /// Bad records skipped so far (all subtasks).
    pub fn skipped(&self) -> Arc<AtomicU64> {
        self.skipped.clone()
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

    /// The input files, sorted. A directory holding files of another
    /// format than this source's (by extension) is an error naming them:
    /// reading them as this format would fail late or, for CSV, misread.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let files = self.listed()?;
        let foreign: Vec<String> = files
            .iter()
            .filter(|f| Format::of(f).is_some_and(|k| k != self.format))
            .map(|f| f.display().to_string())
            .collect();
        if !foreign.is_empty() && self.path.is_dir() {
            return Err(Error::Config(format!(
                "directory {} mixes file formats: {} are not {} files like the rest; \
                 a file source reads one format, so put them in separate directories",
                self.path.display(),
                foreign.join(", "),
                self.format.name()
            )));
        }
        Ok(files)
    }

    /// The file, or the visible files of the directory, sorted.
    fn listed(&self) -> Result<Vec<PathBuf>> {
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
            // Inferred as the Kafka source infers JSON records.
            Format::JsonLines => {
                let mut lines = Vec::new();
                for line in BufReader::new(file).split(b'\n') {
                    let line =
                        line.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                    if !line.trim_ascii().is_empty() {
                        lines.push(line);
                    }
                    if lines.len() == INFER_ROWS {
                        break;
                    }
                }
                crate::json::infer_schema(lines.iter().map(Vec::as_slice))
                    .map_err(|e| Self::bad(path, e))?
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
            Format::Parquet => Reader::Arrow(Box::new(
                ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| Self::bad(path, e))?
                    .with_batch_size(self.batch_size)
                    .build()
                    .map_err(|e| Self::bad(path, e))?,
            )),
            Format::Csv => Reader::Arrow(Box::new(
                arrow::csv::ReaderBuilder::new(schema.clone())
                    .with_header(true)
                    .with_batch_size(self.batch_size)
                    .build(file)
                    .map_err(bad)?,
            )),
            Format::JsonLines => Reader::Json(Box::new(JsonLines {
                lines: BufReader::new(file),
                line: 0,
                buf: Vec::new(),
                decoder: JsonDecoder::new(schema.clone())?,
                batch_size: self.batch_size,
            })),
        })
    }
}

/// Reads a file's records a batch at a time.
enum Reader {
    /// Parquet and CSV, through arrow's readers.
    Arrow(Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>> + Send>),
    /// JSON lines, checked record by record.
    Json(Box<JsonLines>),
}

/// A JSON-lines file read with the strict JSON rule.
struct JsonLines {
    lines: BufReader<File>,
    /// Lines read so far.
    line: u64,
    buf: Vec<u8>,
    decoder: JsonDecoder,
    batch_size: usize,
}

impl JsonLines {
    /// The next records (up to a batch) with their line numbers (from 1);
    /// lines that do not fit go to `bad` with their line number and why.
    /// Blank lines are not records. `None` at the end of the file.
    fn next_batch(
        &mut self,
        schema: &SchemaRef,
        bad: &mut dyn FnMut(u64, String) -> Result<()>,
    ) -> Result<Option<(RecordBatch, Vec<u64>)>> {
        let mut text: Vec<u8> = Vec::new();
        let mut spans: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
        while spans.len() < self.batch_size {
            self.buf.clear();
            let n = self
                .lines
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Error::io("reading a JSON-lines file", e))?;
            if n == 0 {
                break;
            }
            self.line += 1;
            let trimmed = self.buf.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            let at = text.len();
            text.extend_from_slice(trimmed);
            spans.push((self.line, at..text.len()));
        }
        if spans.is_empty() {
            return Ok(None);
        }
        let (good, columns) = self.decoder.decode(
            spans
                .iter()
                .enumerate()
                .map(|(i, (_, r))| (i, Some(&text[r.clone()]))),
            "empty record",
            &mut |i, why| bad(spans[i].0, why),
        )?;
        let lines = good.iter().map(|i| spans[*i].0).collect();
        let batch = RecordBatch::try_new_with_options(
            schema.clone(),
            columns,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(good.len())),
        )?;
        Ok(Some((batch, lines)))
    }
}

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
                last: None,
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
    /// Where the batch emitted last came from, to name rejected records.
    last: Option<LastBatch>,
}

/// The position of the batch a file subtask emitted last.
struct LastBatch {
    /// Index into the subtask's files.
    file: usize,
    /// Rows of the file emitted before it.
    first_row: u64,
    /// JSON lines: the line of each row.
    lines: Option<Vec<u64>>,
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

    /// `Idle` only means a batch came out empty (rows skipped on resume,
    /// or bad records skipped): poll again at once.
    fn idle_backoff(&self) -> std::time::Duration {
        std::time::Duration::ZERO
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
        let path = path.clone();
        if self.current.is_none() {
            self.current = Some(self.spec.reader(&path, &self.schema)?);
            self.skip = self.rows[self.index];
        }
        let (skip_bad, skipped) = (self.spec.skip_bad, &self.spec.skipped);
        let next = match self.current.as_mut().expect("opened above") {
            Reader::Arrow(it) => match it.next() {
                Some(Ok(b)) => Some((b, None)),
                Some(Err(e)) => {
                    return Err(Error::Decode(format!(
                        "{}: {e} (a file that does not parse cannot be read past this point)",
                        path.display()
                    )))
                }
                None => None,
            },
            Reader::Json(j) => j
                .next_batch(&self.schema, &mut |line, why| {
                    if skip_bad {
                        skipped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(file = %path.display(), line, why, "skipping a bad record");
                        Ok(())
                    } else {
                        Err(Error::Decode(format!(
                            "{} line {line}: {why}",
                            path.display()
                        )))
                    }
                })?
                .map(|(b, lines)| (b, Some(lines))),
        };
        match next {
            Some((mut batch, mut lines)) => {
                if batch.schema().fields() != self.schema.fields() {
                    return Err(Error::plan(
                        self.spec.name(),
                        format!(
                            "{} has schema {:?}, expected {:?} (from the first file or with_schema); \
                             a source reads files of one schema",
                            path.display(),
                            batch.schema(),
                            self.schema
                        ),
                    ));
                }
                // Resuming mid-file: rows before the position were emitted.
                if self.skip > 0 {
                    let n = batch.num_rows() as u64;
                    let cut = self.skip.min(n);
                    self.skip -= cut;
                    batch = batch.slice(cut as usize, (n - cut) as usize);
                    if let Some(l) = &mut lines {
                        l.drain(..cut as usize);
                    }
                }
                if batch.num_rows() == 0 {
                    return Ok(SourcePoll::Idle);
                }
                self.last = Some(LastBatch {
                    file: self.index,
                    first_row: self.rows[self.index],
                    lines,
                });
                self.rows[self.index] += batch.num_rows() as u64;
                Ok(SourcePoll::Batch {
                    split: self.index,
                    batch,
                })
            }
            None => {
                // This file is done: its split no longer holds back time.
                self.current = None;
                self.done[self.index] = true;
                self.index += 1;
                Ok(SourcePoll::SplitEnd(self.index - 1))
            }
        }
    }

    /// Records whose event time the runtime cannot process: skipped and
    /// counted, or an error naming the file and the line (JSON lines) or
    /// the row.
    fn reject(
        &mut self,
        _split: usize,
        _batch: &RecordBatch,
        rows: &[(usize, String)],
    ) -> Result<()> {
        if self.spec.skip_bad {
            self.spec
                .skipped
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        let Some((row, why)) = rows.first() else {
            return Ok(());
        };
        let where_ = match &self.last {
            Some(last) => {
                let path = self.files[last.file].1.display();
                match &last.lines {
                    Some(lines) => format!("{path} line {}", lines[*row]),
                    None => format!("{path} row {}", last.first_row + *row as u64 + 1),
                }
            }
            None => format!("row {row}"),
        };
        Err(Error::Decode(format!("{where_}: {why}")))
    }
}
