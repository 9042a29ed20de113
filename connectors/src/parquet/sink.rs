//! One subtask of the Parquet sink: open files by partition directory,
//! rolled by the [`RollPolicy`], and the two-phase commit.
//!
//! Phase one, at barrier `n`: files that rolled since the last barrier are
//! staged for `n`; every file that stays open flushes its row group in
//! progress and makes its bytes durable, and the checkpoint records its
//! length and the footer that would complete it. Phase two, when `n`
//! completes: staged files are published. A file therefore spans as many
//! checkpoints as its roll policy lets it, and a quiet input does not
//! produce a file per checkpoint. On resume from checkpoint `m` the files
//! `m` staged are published, and the files `m` saw open are published
//! with exactly the rows `m` committed (cut back to their recorded length,
//! completed by their recorded footer); what the failed run wrote after
//! `m` is removed ([`Output::clean`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use sluice_engine::checkpoint::Location;
use sluice_engine::data::CheckpointId;
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Error, OperatorContext, Result, Sink, Watermark};
use tracing::{debug, info};

use super::footer::FooterTemplate;
use super::names;
use super::output::{FileBytes, Live, Output};
use super::partition::{Flavor, PartitionValue, Partitioner};
use super::roll::{FileFigures, RollReason};
use super::state::{FileEntry, Phase};
use super::ParquetSink;

/// A file being written.
struct OpenFile {
    writer: ArrowWriter<FileBytes>,
    live: Live,
    target: String,
    /// Its partition's values.
    partition: Vec<PartitionValue>,
    figures: FileFigures,
    /// Its entry as of the last checkpoint, while nothing was written since.
    persisted: Option<FileEntry>,
}

/// The sink subtask.
pub(crate) struct ParquetWriterTask {
    spec: ParquetSink,
    /// The schema of the batches written now (the plan's, until a source
    /// evolves it).
    input: SchemaRef,
    file_schema: SchemaRef,
    partitioner: Option<Partitioner>,
    props: WriterProperties,
    template: FooterTemplate,
    output: Option<Output>,
    files: HashMap<String, OpenFile>,
    /// Finished files not yet staged for a checkpoint.
    closed: Vec<FileEntry>,
    /// Files staged for a checkpoint that has not completed yet.
    staged: Vec<FileEntry>,
    /// From the checkpoint resumed: its id and what it had pending.
    restored: Option<(u64, Vec<FileEntry>)>,
    seq: u64,
    subtask: usize,
    parallelism: usize,
    attempt: u64,
    checkpointing: bool,
    /// The last checkpoint this subtask passed (file names carry it).
    epoch: u64,
    watermark: Option<i64>,
    /// Files rolled, by reason (tests and logs).
    pub(crate) rolled: HashMap<&'static str, u64>,
}

fn parquet_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::connector("parquet", format!("{what}: {e}"))
}

impl ParquetWriterTask {
    pub(crate) fn new(spec: ParquetSink, input: SchemaRef) -> Result<Self> {
        let layout = Layout::new(&spec, &input)?;
        Ok(ParquetWriterTask {
            spec,
            input,
            file_schema: layout.file_schema,
            partitioner: layout.partitioner,
            props: layout.props,
            template: layout.template,
            output: None,
            files: HashMap::new(),
            closed: Vec::new(),
            staged: Vec::new(),
            restored: None,
            seq: 0,
            subtask: 0,
            parallelism: 1,
            attempt: 0,
            checkpointing: false,
            epoch: 0,
            watermark: None,
            rolled: HashMap::new(),
        })
    }

    /// Writes to `output` instead of the spec's location (tests).
    #[cfg(test)]
    pub(crate) fn set_output(&mut self, output: Output) {
        self.output = Some(output);
    }

    fn output(&self) -> Result<&Output> {
        self.output
            .as_ref()
            .ok_or_else(|| Error::Internal("parquet sink used before open".into()))
    }

    fn open_file(&mut self, dir: &str, partition: &[PartitionValue]) -> Result<()> {
        if self.files.len() >= self.spec.max_open_files.max(1) {
            // Too many partitions open: the one written to longest ago goes.
            let oldest = self
                .files
                .iter()
                .min_by_key(|(_, f)| f.figures.last_write)
                .map(|(d, _)| d.clone());
            if let Some(d) = oldest {
                self.roll(&d, RollReason::Close)?;
            }
        }
        let stem = if self.checkpointing {
            names::checkpointed_stem(self.subtask, self.epoch, self.attempt, self.seq)
        } else {
            names::plain_stem(self.subtask, self.seq)
        };
        self.seq += 1;
        let (bytes, live) = self.output()?.create(dir, &stem)?;
        let writer =
            ArrowWriter::try_new(bytes, self.file_schema.clone(), Some(self.props.clone()))
                .map_err(|e| parquet_err("opening a file", e))?;
        let now = Instant::now();
        self.files.insert(
            dir.to_string(),
            OpenFile {
                writer,
                live,
                target: names::join(dir, &format!("{stem}.parquet")),
                partition: partition.to_vec(),
                figures: FileFigures {
                    bytes: 0,
                    rows: 0,
                    opened: now,
                    last_write: now,
                    closes_at: None,
                },
                persisted: None,
            },
        );
        Ok(())
    }

    fn write_to(
        &mut self,
        dir: &str,
        closes_at: Option<i64>,
        batch: &RecordBatch,
        partition: &[PartitionValue],
    ) -> Result<()> {
        let converted;
        let batch = match &self.spec.table {
            Some(t) => {
                converted = t.convert(batch, &self.file_schema)?;
                &converted
            }
            None => batch,
        };
        let mut rest = batch.clone();
        while rest.num_rows() > 0 {
            if !self.files.contains_key(dir) {
                self.open_file(dir, partition)?;
            }
            // A row limit is exact: the batch is split at it.
            let room = self.spec.roll.max_rows.map_or(usize::MAX, |max| {
                let rows = self.files.get(dir).map_or(0, |f| f.figures.rows);
                usize::try_from(max.saturating_sub(rows)).unwrap_or(usize::MAX)
            });
            let head = if room < rest.num_rows() {
                let head = rest.slice(0, room);
                rest = rest.slice(room, rest.num_rows() - room);
                head
            } else {
                std::mem::replace(&mut rest, batch.slice(0, 0))
            };
            self.write_file(dir, closes_at, &head)?;
        }
        Ok(())
    }

    fn write_file(&mut self, dir: &str, closes_at: Option<i64>, batch: &RecordBatch) -> Result<()> {
        let output = self
            .output
            .as_ref()
            .ok_or_else(|| Error::Internal("parquet sink used before open".into()))?;
        let f = self
            .files
            .get_mut(dir)
            .ok_or_else(|| Error::Internal("file opened above".into()))?;
        f.writer
            .write(batch)
            .map_err(|e| parquet_err(&format!("writing {}", f.target), e))?;
        output.after_write(&mut f.live, f.writer.inner_mut())?;
        f.persisted = None;
        f.figures.rows += batch.num_rows() as u64;
        f.figures.bytes = f.writer.bytes_written() + f.writer.in_progress_size();
        f.figures.last_write = Instant::now();
        if let Some(end) = closes_at {
            f.figures.closes_at = Some(f.figures.closes_at.map_or(end, |c| c.max(end)));
        }
        if let Some(reason) = self
            .spec
            .roll
            .due(&f.figures, f.figures.last_write, self.watermark)
        {
            self.roll(dir, reason)?;
        }
        Ok(())
    }

    /// Rolls every file that is due now.
    fn roll_due(&mut self) -> Result<()> {
        let now = Instant::now();
        let due: Vec<(String, RollReason)> = self
            .files
            .iter()
            .filter_map(|(d, f)| {
                self.spec
                    .roll
                    .due(&f.figures, now, self.watermark)
                    .map(|r| (d.clone(), r))
            })
            .collect();
        for (d, r) in due {
            self.roll(&d, r)?;
        }
        Ok(())
    }

    /// Finishes the file of `dir`: footer written, every byte durable.
    /// Without checkpoints it is published at once; with them it waits
    /// for the next barrier.
    fn roll(&mut self, dir: &str, reason: RollReason) -> Result<()> {
        let Some(f) = self.files.remove(dir) else {
            return Ok(());
        };
        let bytes = f
            .writer
            .into_inner()
            .map_err(|e| parquet_err(&format!("finishing {}", f.target), e))?;
        let (durable, len, garbage) = self.output()?.finish(f.live, bytes)?;
        debug!(file = %f.target, ?reason, rows = f.figures.rows, bytes = len, "parquet file rolled");
        *self.rolled.entry(reason_name(reason)).or_default() += 1;
        let entry = FileEntry {
            subtask: self.subtask,
            target: f.target,
            durable,
            len,
            rows: f.figures.rows,
            footer: Vec::new(),
            garbage,
            partition: f.partition,
            phase: Phase::Staged { epoch: 0 },
            location: Some(self.spec.location.as_str().to_string()),
        };
        match (&self.spec.table, self.checkpointing) {
            (Some(t), checkpointing) => {
                // A table's readers see only what its commits list: the
                // file takes its final name now.
                self.output()?.publish(&entry)?;
                if checkpointing {
                    self.closed.push(entry);
                    Ok(())
                } else {
                    t.commit_now(&entry)
                }
            }
            (None, true) => {
                self.closed.push(entry);
                Ok(())
            }
            (None, false) => self.output()?.publish(&entry),
        }
    }

    fn roll_all(&mut self, reason: RollReason) -> Result<()> {
        let dirs: Vec<String> = self.files.keys().cloned().collect();
        for d in dirs {
            self.roll(&d, reason)?;
        }
        Ok(())
    }

    /// The checkpoint entry of an open file: its row group in progress
    /// flushed, its bytes durable, the footer of what is written.
    fn persist(&mut self, dir: &str) -> Result<FileEntry> {
        let output = self
            .output
            .as_ref()
            .ok_or_else(|| Error::Internal("parquet sink used before open".into()))?;
        let f = self
            .files
            .get_mut(dir)
            .ok_or_else(|| Error::Internal("persisting a file that is not open".into()))?;
        if let Some(e) = &f.persisted {
            return Ok(e.clone());
        }
        if f.writer.in_progress_rows() > 0 {
            f.writer
                .flush()
                .map_err(|e| parquet_err(&format!("writing {}", f.target), e))?;
        }
        f.writer
            .sync()
            .map_err(|e| Error::io(format!("writing {}", f.target), e))?;
        let len = f.writer.bytes_written() as u64;
        let footer = self.template.footer(f.writer.flushed_row_groups())?;
        let durable = output.persist(&mut f.live, f.writer.inner_mut())?;
        let entry = FileEntry {
            subtask: self.subtask,
            target: f.target.clone(),
            durable,
            len,
            rows: f.figures.rows,
            footer,
            garbage: Vec::new(),
            partition: f.partition.clone(),
            phase: Phase::Open,
            location: Some(self.spec.location.as_str().to_string()),
        };
        f.persisted = Some(entry.clone());
        Ok(entry)
    }

    /// Resume: publish what the restored checkpoint committed, remove what
    /// failed runs left. Each old subtask's files are handled by exactly
    /// one new subtask (old index mod new parallelism), so new subtasks
    /// never race on a file.
    fn recover(&mut self) -> Result<()> {
        let (parallelism, subtask) = (self.parallelism, self.subtask);
        let (restored, entries) = self.restored.take().unwrap_or((0, Vec::new()));
        self.epoch = restored;
        // With a table, subtask 0 recovers for every old subtask, so what
        // it commits is published by then.
        let table = self.spec.table.clone();
        if table.is_some() && subtask != 0 {
            return Ok(());
        }
        let mine = move |old: usize| table.is_some() || old % parallelism == subtask;
        let current = self.spec.location.as_str().to_string();
        // The checkpoint's files are published where they are: in the
        // current output when it holds them (the output was copied or
        // moved along), else where they were written, when the job now
        // writes elsewhere (as Flink commits pending files at their
        // original path); later files go to the current output.
        let here = self.output()?.clone();
        let mut outputs: BTreeMap<String, Output> = BTreeMap::new();
        outputs.insert(current.clone(), here.clone());
        for e in entries.iter().filter(|e| mine(e.subtask)) {
            let at = match &e.location {
                Some(loc) if *loc != current && !here.holds(e) => loc.clone(),
                _ => current.clone(),
            };
            if !outputs.contains_key(&at) {
                info!(previous = %at, now = %current,
                    "the checkpoint holds files written to a previous output location; \
                     publishing them there");
                let old = Output::open(&Location::from(at.as_str()), self.spec.part_size)?;
                outputs.insert(at.clone(), old);
            }
            let output = &outputs[&at];
            match e.phase {
                Phase::Staged { .. } => output.publish(e)?,
                Phase::Open => output.publish_prefix(e)?,
            }
        }
        if let Some(t) = &self.spec.table {
            t.recover(restored, self.attempt, &entries)?;
        }
        // A table's files carry final names before they are committed,
        // and its snapshots may name any of them: only in-progress files,
        // staging objects and uploads of other attempts go (the table
        // format removes the uncommitted files it knows of).
        let published_from = if self.spec.table.is_some() {
            0
        } else {
            restored
        };
        for output in outputs.values() {
            output.clean(&mine, published_from, self.attempt)?;
        }
        Ok(())
    }
}

/// What files of one input schema are written with.
struct Layout {
    partitioner: Option<Partitioner>,
    file_schema: SchemaRef,
    props: WriterProperties,
    template: FooterTemplate,
}

impl Layout {
    fn new(spec: &ParquetSink, input: &SchemaRef) -> Result<Self> {
        let flavor = if spec.table.is_some() {
            Flavor::Iceberg
        } else {
            Flavor::Hive
        };
        let partitioner = if spec.partitioning.is_empty() {
            None
        } else {
            Some(Partitioner::new(&spec.partitioning, input, flavor)?)
        };
        let file_schema = partitioner
            .as_ref()
            .map_or_else(|| input.clone(), |p| p.file_schema().clone());
        let file_schema = match &spec.table {
            Some(t) => t.file_schema(&file_schema)?,
            None => file_schema,
        };
        let mut props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(spec.row_group_size))
            .set_compression(spec.compression);
        // Binary columns (raw message payloads) are nearly always distinct:
        // a dictionary is built only to be abandoned, which cost a fifth of
        // a raw Kafka → Parquet job's time.
        for f in file_schema.fields() {
            let binary = matches!(
                f.data_type(),
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView
            );
            if binary || spec.no_dictionary.contains(f.name()) {
                props = props
                    .set_column_dictionary_enabled(ColumnPath::new(vec![f.name().clone()]), false);
            }
        }
        let props = props.build();
        let template = FooterTemplate::new(&file_schema, &props)?;
        Ok(Layout {
            partitioner,
            file_schema,
            props,
            template,
        })
    }
}

fn reason_name(r: RollReason) -> &'static str {
    match r {
        RollReason::Size => "size",
        RollReason::Rows => "rows",
        RollReason::Age => "age",
        RollReason::Inactive => "inactive",
        RollReason::Watermark => "watermark",
        RollReason::Checkpoint => "checkpoint",
        RollReason::Close => "close",
        RollReason::Schema => "schema",
    }
}

impl Sink for ParquetWriterTask {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.subtask = ctx.subtask;
        self.parallelism = ctx.parallelism.max(1);
        self.attempt = ctx.attempt;
        self.checkpointing = ctx.checkpointing;
        if self.output.is_none() {
            self.output = Some(Output::open(&self.spec.location, self.spec.part_size)?);
        }
        if self.checkpointing {
            self.recover()
        } else {
            self.seq = self.output()?.next_plain_seq(self.subtask)?;
            Ok(())
        }
    }

    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        if batch.schema() != self.input {
            // The source evolved its schema: every open file is finished
            // and later rows go to new files with the new columns.
            let schema = batch.schema();
            debug!(
                fields = schema.fields().len(),
                "input schema changed: new files"
            );
            self.roll_all(RollReason::Schema)?;
            let layout = Layout::new(&self.spec, &schema)?;
            self.input = schema;
            self.file_schema = layout.file_schema;
            self.partitioner = layout.partitioner;
            self.props = layout.props;
            self.template = layout.template;
        }
        match self.partitioner.as_mut() {
            None => self.write_to("", None, &batch, &[]),
            Some(p) => {
                for part in p.split(&batch)? {
                    self.write_to(&part.dir, part.closes_at, &part.batch, &part.values)?;
                }
                Ok(())
            }
        }
    }

    fn on_watermark(&mut self, watermark: Watermark, _ctx: &OperatorContext) -> Result<()> {
        if let Watermark::EventTime(t) = watermark {
            self.watermark = Some(t);
        }
        self.roll_due()
    }

    fn on_tick(&mut self, _ctx: &OperatorContext) -> Result<()> {
        self.roll_due()
    }

    fn close(&mut self, _ctx: &OperatorContext) -> Result<()> {
        self.roll_all(RollReason::Close)
    }

    /// Pre-commit: stage the files finished since the last barrier for
    /// `checkpoint`, and record the committed prefix of every open one.
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        _ctx: &OperatorContext,
    ) -> Result<OperatorSnapshot> {
        if self.spec.roll.at_checkpoint {
            self.roll_all(RollReason::Checkpoint)?;
        } else {
            self.roll_due()?;
        }
        let first_new = self.staged.len();
        for mut e in std::mem::take(&mut self.closed) {
            e.phase = Phase::Staged {
                epoch: checkpoint.0,
            };
            self.staged.push(e);
        }
        if let Some(t) = &self.spec.table {
            let now_staged = &self.staged[first_new..];
            t.stage(checkpoint.0, self.subtask, self.attempt, now_staged)?;
        }
        let mut entries = self
            .staged
            .iter()
            .map(FileEntry::encode)
            .collect::<Result<Vec<_>>>()?;
        let dirs: Vec<String> = self.files.keys().cloned().collect();
        for d in dirs {
            entries.push(self.persist(&d)?.encode()?);
        }
        self.epoch = checkpoint.0;
        Ok(OperatorSnapshot::entries(entries))
    }

    fn restore(&mut self, state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
        let entries = state
            .entries
            .iter()
            .map(|e| FileEntry::decode(e))
            .collect::<Result<Vec<_>>>()?;
        self.restored = Some((state.checkpoint.0, entries));
        Ok(())
    }

    /// Commit: publish every file staged up to `checkpoint`.
    fn checkpoint_complete(
        &mut self,
        checkpoint: CheckpointId,
        _ctx: &OperatorContext,
    ) -> Result<()> {
        let (done, later): (Vec<FileEntry>, Vec<FileEntry>) = std::mem::take(&mut self.staged)
            .into_iter()
            .partition(|e| matches!(e.phase, Phase::Staged { epoch } if epoch <= checkpoint.0));
        self.staged = later;
        if let Some(t) = &self.spec.table {
            // A table's files were published when they closed; the commit
            // is what makes them visible.
            return match self.subtask {
                0 => t.commit(checkpoint.0),
                _ => Ok(()),
            };
        }
        let output = self.output()?.clone();
        for e in done {
            output.publish(&e)?;
        }
        Ok(())
    }
}
