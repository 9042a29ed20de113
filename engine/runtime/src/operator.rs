//! The traits user code and built-in operators implement: [`Operator`] (one or
//! more inputs, batches in and out), [`Source`] (polled, non-blocking) and
//! [`Sink`]; the [`Collector`] an operator emits into and the
//! [`OperatorContext`] it is given. Operators never see channels: the runtime
//! routes what they emit.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::data::{CheckpointId, Watermark};
use crate::error::{Error, Result};
use crate::runtime::NodeMetrics;
use crate::state::{OperatorSnapshot, RestoredState};

/// How often a running task calls [`Operator::on_tick`] and [`Sink::on_tick`].
pub const TICK: Duration = Duration::from_millis(200);

/// Where an operator instance runs: its subtask index and the operator's
/// parallelism, plus the key-group layout for keyed state.
#[derive(Debug, Clone)]
pub struct OperatorContext {
    /// Operator name from the job graph.
    pub operator: String,
    /// This instance's subtask index, `0..parallelism`.
    pub subtask: usize,
    /// How many subtasks the operator has.
    pub parallelism: usize,
    /// Number of key groups (fixed per job).
    pub max_parallelism: usize,
    /// Schemas of the operator's inputs, in input order.
    pub input_schemas: Vec<SchemaRef>,
    /// The current combined input watermark, if any arrived yet.
    pub watermark: Option<i64>,
    /// Which run of the job this is: grows with every restart, also across
    /// processes resuming from a checkpoint directory (file names use it).
    pub attempt: u64,
    /// Whether the job checkpoints (sinks then stage output until a
    /// checkpoint completes instead of publishing it at once).
    pub checkpointing: bool,
    /// State backend and local state directory.
    pub state: crate::state::StateSettings,
}

/// What an operator emits during one call: main output batches and batches for
/// side outputs (port 1 and up, e.g. late data).
#[derive(Debug, Default)]
pub struct Collector {
    pub(crate) main: Vec<RecordBatch>,
    pub(crate) side: Vec<(usize, RecordBatch)>,
    pub(crate) watermark: Option<Watermark>,
}

impl Collector {
    /// Emits a batch on the main output. Empty batches are dropped.
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.main.push(batch);
        }
    }

    /// Emits a batch on side output `port` (1-based; 0 is the main output).
    pub fn emit_side(&mut self, port: usize, batch: RecordBatch) {
        if port == 0 {
            self.emit(batch);
        } else if batch.num_rows() > 0 {
            self.side.push((port, batch));
        }
    }

    /// Emits a watermark after the batches emitted so far (for operators that
    /// generate event time rather than forward it).
    pub fn emit_watermark(&mut self, watermark: Watermark) {
        self.watermark = Some(watermark);
    }

    /// Takes the main-output batches emitted so far.
    pub fn take_main(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.main)
    }

    /// Takes the side-output batches emitted so far.
    pub fn take_side(&mut self) -> Vec<(usize, RecordBatch)> {
        std::mem::take(&mut self.side)
    }
}

/// A stream operator, driven synchronously by its task's loop. Only
/// [`Operator::process`] is required. One instance runs per subtask, built
/// by the factory given to [`Stream::transform`](crate::Stream::transform)
/// (the built-in verbs of `sluice-operators` are operators too).
///
/// ```
/// use std::sync::Arc;
/// use sluice_engine::arrow::array::{AsArray, Int64Array};
/// use sluice_engine::arrow::datatypes::Int64Type;
/// use sluice_engine::arrow::record_batch::RecordBatch;
/// use sluice_engine::testing::{int_batch, run_collect};
/// use sluice_engine::{Collector, Env, Operator, OperatorContext, Result};
///
/// /// Doubles column 0, keeping the schema.
/// struct Double;
/// impl Operator for Double {
///     fn process(&mut self, _input: usize, batch: RecordBatch, _ctx: &OperatorContext,
///                out: &mut Collector) -> Result<()> {
///         let doubled: Int64Array = batch.column(0).as_primitive::<Int64Type>().unary(|v| v * 2);
///         out.emit(RecordBatch::try_new(batch.schema(), vec![Arc::new(doubled)])?);
///         Ok(())
///     }
/// }
///
/// let env = Env::new();
/// let batch = int_batch(&[("n", &[1, 2, 3])]);
/// let schema = batch.schema();
/// let doubled = env
///     .from_batches("numbers", schema.clone(), vec![batch])
///     .transform("double", schema, |_ctx| Ok(Box::new(Double)));
/// assert_eq!(run_collect(&doubled)?, ["2", "4", "6"]);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
pub trait Operator: Send {
    /// Called once before any input.
    fn open(&mut self, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Processes one batch that arrived on input `input` (0 for single-input
    /// operators; 0 = left, 1 = right for joins).
    fn process(
        &mut self,
        input: usize,
        batch: RecordBatch,
        ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()>;

    /// Event time advanced to `watermark` (the minimum over all inputs).
    /// Returns the watermark to forward downstream; by default the same one.
    fn on_watermark(
        &mut self,
        watermark: Watermark,
        _ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        Ok(Some(watermark))
    }

    /// Wall-clock time passed: called about every [`TICK`] while the task
    /// runs, whether or not input arrives, so that processing-time duties
    /// (a sink rolling a file by age or after inactivity) happen on a quiet
    /// stream too. Emits nothing by default.
    fn on_tick(&mut self, _ctx: &OperatorContext, _out: &mut Collector) -> Result<()> {
        Ok(())
    }

    /// All channels of input `input` ended.
    fn on_input_end(
        &mut self,
        _input: usize,
        _ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<()> {
        Ok(())
    }

    /// Every input ended: flush what is left. The final `Watermark::MAX` has
    /// already been delivered through [`Operator::on_watermark`].
    fn close(&mut self, _ctx: &OperatorContext, _out: &mut Collector) -> Result<()> {
        Ok(())
    }

    /// A barrier passed: return a copy of the state as of now. Called on the
    /// task thread; the copy is written out while processing goes on, so it
    /// must not alias anything the operator mutates later. Stateless
    /// operators keep the default (nothing to store).
    fn snapshot(
        &mut self,
        _checkpoint: CheckpointId,
        _ctx: &OperatorContext,
    ) -> Result<OperatorSnapshot> {
        Ok(OperatorSnapshot::default())
    }

    /// Called before [`Operator::open`] when the job resumes from a checkpoint.
    fn restore(&mut self, _state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Checkpoint `checkpoint` is complete (durable): side effects staged
    /// for it may become visible.
    fn checkpoint_complete(
        &mut self,
        _checkpoint: CheckpointId,
        _ctx: &OperatorContext,
    ) -> Result<()> {
        Ok(())
    }
}

/// What a source poll produced.
#[derive(Debug)]
pub enum SourcePoll {
    /// Records from split `split` (splits get their own watermark).
    Batch {
        /// Split (partition, file, generator stream) the records come from.
        split: usize,
        /// The records.
        batch: RecordBatch,
    },
    /// Split `0` is exhausted: it stops holding back the watermark.
    SplitEnd(usize),
    /// Nothing available now; the runtime backs off and polls again.
    Idle,
    /// The source is exhausted (bounded input).
    End,
}

/// A source subtask. Polling must not block for long: the runtime interleaves
/// polls with control messages. Add one with [`Env::source_fn`](crate::Env::source_fn)
/// (a factory per subtask) or a connector's [`SourceSpec`](crate::SourceSpec);
/// for rows as serde structs, `sluice-operators`' `RowSource` builds the
/// Arrow batches.
///
/// ```
/// use std::sync::Arc;
/// use sluice_engine::arrow::array::Int64Array;
/// use sluice_engine::arrow::datatypes::{DataType, Field, Schema};
/// use sluice_engine::arrow::record_batch::RecordBatch;
/// use sluice_engine::testing::run_collect;
/// use sluice_engine::{Env, OperatorContext, Result, Source, SourcePoll};
///
/// /// Counts down from `from` in batches of two, then ends.
/// struct Countdown { from: i64 }
/// impl Source for Countdown {
///     fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
///         if self.from <= 0 {
///             return Ok(SourcePoll::End);
///         }
///         let values: Vec<i64> = (0..2).map(|i| self.from - i).filter(|v| *v > 0).collect();
///         self.from -= 2;
///         let batch = RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values))])?;
///         Ok(SourcePoll::Batch { split: 0, batch })
///     }
///     fn close(&mut self, _ctx: &OperatorContext) -> Result<()> {
///         Ok(()) // release connections and files here, however the task ended
///     }
/// }
/// fn schema() -> Arc<Schema> {
///     Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
/// }
///
/// let env = Env::new();
/// env.set_parallelism(1); // one subtask end to end: the order is kept
/// let s = env.source_fn("countdown", schema(), |_ctx| Ok(Box::new(Countdown { from: 3 })));
/// assert_eq!(run_collect(&s)?, ["3", "2", "1"]);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
pub trait Source: Send {
    /// The splits this subtask owns; watermarks are tracked per split.
    fn splits(&self) -> usize {
        1
    }

    /// Called once before polling.
    fn open(&mut self, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Produces the next batch, or says there is none now, or that the input ended.
    fn poll(&mut self, ctx: &OperatorContext) -> Result<SourcePoll>;

    /// How long to back off after [`SourcePoll::Idle`] (at most 100 ms
    /// are taken; a control message for the task, such as a checkpoint
    /// barrier to inject, ends the pause early).
    fn idle_backoff(&self) -> Duration {
        Duration::from_millis(5)
    }

    /// Records not read yet, per split, where the source can tell (a Kafka
    /// partition's high watermark minus the position reached); shown as
    /// the subtask's backlog. Called by the task every [`TICK`], so it must
    /// be cheap: report figures the client already has, never ask a
    /// broker here. None by default.
    fn pending(&self) -> Vec<sluice_protocol::metrics::SplitPending> {
        Vec::new()
    }

    /// Records this subtask has still to read before its input ends, where
    /// it can tell (a generator's count, a bounded Kafka read once its ends
    /// are known); `None` for an unbounded source or one that cannot say.
    /// With the records read so far it makes the progress bar of a bounded
    /// job. Called every [`TICK`], so it must be cheap, like
    /// [`pending`](Self::pending).
    fn remaining(&self) -> Option<u64> {
        None
    }

    /// Records emitted so far (for metrics and progress reports).
    fn records_emitted(&self) -> u64 {
        0
    }

    /// Rows of the batch just polled from `split` that no operator can
    /// process (their event time is null or outside
    /// [`crate::data::EVENT_TIME_RANGE`]), each with why; the runtime
    /// calls this before the batch goes on and then leaves those rows
    /// out. A source with a bad-record policy applies it here (skip and
    /// count, dead-letter) and returns `Ok`; returning an error fails the
    /// job. The default fails with an [`Error::Decode`] naming the split
    /// and the first bad row; sources override it to name the record's
    /// position (topic, partition and offset; file and line).
    fn reject(
        &mut self,
        split: usize,
        batch: &RecordBatch,
        rows: &[(usize, String)],
    ) -> Result<()> {
        let (row, why) = rows
            .first()
            .map_or((0, "bad record"), |(r, w)| (*r, w.as_str()));
        Err(Error::Decode(format!(
            "{} of {} records of split {split} cannot be processed; row {row}: {why}",
            rows.len(),
            batch.num_rows()
        )))
    }

    /// Whether the source can record its position in a checkpoint and
    /// resume from it (replayable input). Checkpointing refuses to start a
    /// job with a source that cannot.
    fn supports_checkpoints(&self) -> bool {
        false
    }

    /// The position reached, as operator-state entries (typically one per
    /// split, so positions can be redistributed when parallelism changes).
    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }

    /// Called before [`Source::open`] with every entry of every old subtask
    /// when the job resumes; the source keeps the splits that are now its own.
    fn restore(&mut self, _entries: Vec<Vec<u8>>, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Checkpoint `checkpoint` completed (sources may acknowledge input).
    fn checkpoint_complete(&mut self, _checkpoint: CheckpointId) -> Result<()> {
        Ok(())
    }

    /// The task ended — input exhausted, job finished, failed, cancelled or
    /// stopped with a savepoint: release connections, files and threads.
    /// Called once per instance built by the factory, on the task's thread,
    /// whether or not [`Source::open`] ran or succeeded. An error after a
    /// clean end fails the job; after a failure it is logged (the first
    /// failure is the one reported).
    fn close(&mut self, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }
}

/// A sink subtask: writes batches out, and with checkpoints stages them
/// at each barrier and publishes them when the checkpoint completes
/// (two-phase commit). Add one with [`Stream::sink_fn`](crate::Stream::sink_fn)
/// or a connector's [`SinkSpec`](crate::SinkSpec) (example on
/// [`Stream::sink`](crate::Stream::sink)).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use sluice_engine::arrow::record_batch::RecordBatch;
/// use sluice_engine::testing::{int_batch, lines};
/// use sluice_engine::{Env, OperatorContext, Result, Sink};
///
/// /// Keeps rows as text lines, and says when the input ended.
/// struct Lines(Arc<Mutex<Vec<String>>>);
/// impl Sink for Lines {
///     fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
///         self.0.lock().unwrap().extend(lines(&batch)?);
///         Ok(())
///     }
///     fn close(&mut self, _ctx: &OperatorContext) -> Result<()> {
///         self.0.lock().unwrap().push("end".into());
///         Ok(())
///     }
/// }
///
/// let env = Env::new();
/// env.set_parallelism(1); // one sink subtask: one "end"
/// let kept = Arc::new(Mutex::new(Vec::new()));
/// let k = kept.clone();
/// let batch = int_batch(&[("n", &[1, 2])]);
/// env.from_batches("numbers", batch.schema(), vec![batch])
///     .sink_fn("lines", move |_ctx| Ok(Box::new(Lines(k.clone()))));
/// env.execute()?;
/// assert_eq!(*kept.lock().unwrap(), ["1", "2", "end"]);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
pub trait Sink: Send {
    /// Called once before any input.
    fn open(&mut self, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Writes one batch.
    fn write(&mut self, batch: RecordBatch, ctx: &OperatorContext) -> Result<()>;

    /// Event time advanced (sinks that roll files by time may use it).
    fn on_watermark(&mut self, _watermark: Watermark, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Wall-clock time passed (about every [`TICK`], with or without
    /// input): roll files by age or inactivity here.
    fn on_tick(&mut self, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }

    /// The input ended: flush and close everything. With checkpoints, what
    /// is staged stays staged until the final checkpoint completes.
    fn close(&mut self, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Pre-commit at a barrier: stage what was written so far for
    /// `checkpoint` and return the state needed to commit or discard it.
    fn snapshot(
        &mut self,
        _checkpoint: CheckpointId,
        _ctx: &OperatorContext,
    ) -> Result<OperatorSnapshot> {
        Ok(OperatorSnapshot::default())
    }

    /// Called before [`Sink::open`] on resume: commit what the restored
    /// checkpoint staged, discard what later, incomplete ones did.
    fn restore(&mut self, _state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Commit: everything staged up to `checkpoint` becomes visible.
    /// Must be idempotent.
    fn checkpoint_complete(
        &mut self,
        _checkpoint: CheckpointId,
        _ctx: &OperatorContext,
    ) -> Result<()> {
        Ok(())
    }
}

/// Runs a [`Sink`] as the last operator of a chain, keeping the tail of
/// each batch in the node's metrics (the rows the coordinator shows).
pub(crate) struct SinkOperator(pub Box<dyn Sink>, pub Arc<NodeMetrics>);

impl Operator for SinkOperator {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.0.open(ctx)
    }
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<()> {
        self.1.keep_tail(&batch);
        self.0.write(batch, ctx)
    }
    fn on_watermark(
        &mut self,
        watermark: Watermark,
        ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        self.0.on_watermark(watermark, ctx)?;
        Ok(None)
    }
    fn on_tick(&mut self, ctx: &OperatorContext, _out: &mut Collector) -> Result<()> {
        self.0.on_tick(ctx)
    }
    fn close(&mut self, ctx: &OperatorContext, _out: &mut Collector) -> Result<()> {
        self.0.close(ctx)
    }
    fn snapshot(&mut self, id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        self.0.snapshot(id, ctx)
    }
    fn restore(&mut self, state: RestoredState, ctx: &OperatorContext) -> Result<()> {
        self.0.restore(state, ctx)
    }
    fn checkpoint_complete(&mut self, id: CheckpointId, ctx: &OperatorContext) -> Result<()> {
        self.0.checkpoint_complete(id, ctx)
    }
}
