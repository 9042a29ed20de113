//! One subtask: an optional source head, a chain of fused operators, the
//! input loop over its channels, and the writers of its output edges.
//! Records move through the chain by direct calls; only chain boundaries
//! touch channels. With checkpoints on, the task also reacts to barriers
//! (aligned over its inputs by [`Aligner`]) and to the coordinator's
//! control messages, and after its input ends it waits for the final
//! checkpoint before it exits (`checkpointer`). Its [`TaskMeter`] counts
//! what enters the task and the time it waits for input (idle); its
//! writers count what leaves and the time they wait for room
//! (backpressured).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, Select, Sender};

mod checkpointer;
mod unaligned;

use checkpointer::Checkpointer;
use unaligned::Unaligned;

use super::align::{Aligner, Alignment, Guarantee};
use super::watermark::{InputWatermarks, SplitWatermarks};
use super::{JobControl, NodeMetrics};
use crate::checkpoint::coordinator::{CoordinatorMsg, TaskControl, TaskKey, TaskSnapshot};
use crate::checkpoint::restore::RestorePlan;
use crate::data::{without_rows, Barrier, BarrierKind, CheckpointId, StreamMessage, Watermark};
use crate::error::{Error, Result};
use crate::exchange::partition::EdgeWriter;
use crate::graph::{LogicalGraph, NodeKind};
use crate::metrics::{TaskMeter, Wait};
use crate::operator::{
    Collector, Operator, OperatorContext, SinkOperator, Source, SourcePoll, TICK,
};
use crate::plan::Vertex;

/// How often a source subtask sends a latency marker downstream.
const LATENCY_MARKER_INTERVAL: Duration = Duration::from_secs(1);
use crate::state::OperatorSnapshot;

/// How often a waiting task checks whether the job was cancelled.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// A task's side of checkpointing.
pub struct TaskCheckpointing {
    /// Which task this is.
    pub key: TaskKey,
    /// From the coordinator.
    pub control: Receiver<TaskControl>,
    /// To the snapshot writer.
    pub writer: Sender<TaskSnapshot>,
    /// To the coordinator.
    pub coordinator: Sender<CoordinatorMsg>,
    /// Barrier alignment mode.
    pub guarantee: Guarantee,
    /// Unaligned checkpoints (see `CheckpointConfig::unaligned`).
    pub unaligned: bool,
    /// The checkpoint to restore, if the job resumes.
    pub restore: Option<Arc<RestorePlan>>,
}

/// Everything a subtask thread needs.
pub struct TaskSpec {
    /// The job graph (for factories and schemas).
    pub graph: LogicalGraph,
    /// The vertex this subtask runs.
    pub vertex: Vertex,
    /// Subtask index.
    pub subtask: usize,
    /// Key groups of the job.
    pub max_parallelism: usize,
    /// Input channels with the logical input each feeds.
    pub inputs: Vec<(Receiver<StreamMessage>, usize)>,
    /// Per chain member: (output port, writer) pairs leaving the chain.
    pub writers: Vec<Vec<(usize, EdgeWriter)>>,
    /// Per chain member: its node's counters.
    pub metrics: Vec<Arc<NodeMetrics>>,
    /// Per chain member: its input schemas.
    pub input_schemas: Vec<Vec<SchemaRef>>,
    /// The job's attempt number.
    pub attempt: u64,
    /// State backend and local directory.
    pub state: crate::state::StateSettings,
    /// Checkpointing, when enabled.
    pub checkpointing: Option<TaskCheckpointing>,
    /// The subtask's time accounting and counts (its writers share it).
    pub meter: Arc<TaskMeter>,
}

/// Input schemas of each chain member of `v`.
pub fn input_schemas(graph: &LogicalGraph, v: &Vertex) -> Vec<Vec<SchemaRef>> {
    v.chain
        .iter()
        .map(|id| {
            let node = graph.node(*id);
            let mut schemas: Vec<Option<SchemaRef>> = vec![None; node.num_inputs];
            for e in &node.inputs {
                schemas[e.input].get_or_insert_with(|| graph.node(e.from).outputs[e.port].clone());
            }
            schemas.into_iter().flatten().collect()
        })
        .collect()
}

struct Member {
    node: usize,
    op: Box<dyn Operator>,
    ctx: OperatorContext,
    writers: Vec<(usize, EdgeWriter)>,
    metrics: Arc<NodeMetrics>,
}

/// The source head of a task.
struct SourceHead {
    node: usize,
    src: Box<dyn Source>,
    ctx: OperatorContext,
    gen: Option<SplitWatermarks>,
    closed: bool,
}

impl SourceHead {
    /// Calls [`Source::close`] once.
    fn close(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        self.src.close(&self.ctx)
    }
}

impl Drop for SourceHead {
    /// A task that ends by an error or a panic still closes its source;
    /// its failure is the one reported, so a close error is only logged.
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(operator = %self.ctx.operator, subtask = self.ctx.subtask,
                error = %e, "closing the source of a failed task");
        }
    }
}

/// The fused operators of a task. Member `i`'s main output feeds member
/// `i + 1`; the last member's main output and every side output go to writers.
struct Chain {
    members: Vec<Member>,
    /// Writers of a source head (when the source is the whole chain's entry).
    entry_writers: Vec<(usize, EdgeWriter)>,
    meter: Arc<TaskMeter>,
}

fn send_to(writers: &mut [(usize, EdgeWriter)], port: usize, batch: &RecordBatch) -> Result<()> {
    for (_, w) in writers.iter_mut().filter(|(p, _)| *p == port) {
        w.send_batch(batch.clone())?;
    }
    Ok(())
}

impl Chain {
    fn entry_batch(&mut self, batch: RecordBatch) -> Result<()> {
        if self.members.is_empty() {
            send_to(&mut self.entry_writers, 0, &batch)
        } else {
            self.push(0, 0, batch)
        }
    }

    fn entry_watermark(&mut self, wm: Watermark) -> Result<()> {
        if let Watermark::EventTime(t) = wm {
            self.meter.watermark(t);
        }
        if self.members.is_empty() {
            for (_, w) in &mut self.entry_writers {
                w.broadcast(StreamMessage::Watermark(wm))?;
            }
            Ok(())
        } else {
            self.watermark(0, wm)
        }
    }

    fn push(&mut self, idx: usize, input: usize, batch: RecordBatch) -> Result<()> {
        let m = &mut self.members[idx];
        m.metrics
            .records_in
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        let mut out = Collector::default();
        m.op.process(input, batch, &m.ctx, &mut out)?;
        self.route(idx, out)
    }

    fn route(&mut self, idx: usize, mut out: Collector) -> Result<()> {
        for (port, b) in out.take_side() {
            send_to(&mut self.members[idx].writers, port, &b)?;
        }
        let last = idx + 1 == self.members.len();
        for b in out.take_main() {
            self.members[idx]
                .metrics
                .records_out
                .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
            if last {
                send_to(&mut self.members[idx].writers, 0, &b)?;
            } else {
                self.push(idx + 1, 0, b)?;
            }
        }
        if let Some(wm) = out.watermark {
            self.forward_watermark(idx, wm)?;
        }
        Ok(())
    }

    /// The task's input watermark moved: delivers it to the head member.
    fn input_watermark(&mut self, wm: Watermark) -> Result<()> {
        if let Watermark::EventTime(t) = wm {
            self.meter.watermark(t);
        }
        self.watermark(0, wm)
    }

    /// Delivers `wm` to member `idx`.
    fn watermark(&mut self, idx: usize, wm: Watermark) -> Result<()> {
        let m = &mut self.members[idx];
        if let Watermark::EventTime(t) = wm {
            m.ctx.watermark = Some(t);
        }
        let mut out = Collector::default();
        let fwd = m.op.on_watermark(wm, &m.ctx, &mut out)?;
        self.route(idx, out)?;
        match fwd {
            Some(w) => self.forward_watermark(idx, w),
            None => Ok(()),
        }
    }

    /// A latency marker passes the chain's operators by: it goes on at
    /// once on one channel of every output edge, and a task with no output
    /// edges (a sink's) records how long it took since its source emitted
    /// it.
    fn latency(&mut self, emitted_ms: i64) -> Result<()> {
        let writers = self
            .entry_writers
            .iter_mut()
            .chain(self.members.iter_mut().flat_map(|m| m.writers.iter_mut()));
        let mut forwarded = false;
        for (_, w) in writers {
            w.send_one(StreamMessage::Latency(emitted_ms))?;
            forwarded = true;
        }
        if !forwarded {
            self.meter.latency(crate::metrics::now_ms() - emitted_ms);
        }
        Ok(())
    }

    /// Sends member `idx`'s output watermark onward.
    fn forward_watermark(&mut self, idx: usize, wm: Watermark) -> Result<()> {
        for (_, w) in &mut self.members[idx].writers {
            w.broadcast(StreamMessage::Watermark(wm))?;
        }
        if idx + 1 < self.members.len() {
            self.watermark(idx + 1, wm)?;
        }
        Ok(())
    }

    /// Calls every member's [`Operator::on_tick`] when [`TICK`] has passed
    /// since the last call, and measures the output channels' fill; says
    /// whether it did, so the caller's own per-tick work reads no clock of
    /// its own.
    fn tick(&mut self, last: &mut Instant) -> Result<bool> {
        if last.elapsed() < TICK {
            return Ok(false);
        }
        *last = Instant::now();
        let writers = self
            .entry_writers
            .iter()
            .chain(self.members.iter().flat_map(|m| m.writers.iter()));
        let fill = writers.fold((0, 0), |(q, c), (_, w)| {
            let (wq, wc) = w.fill();
            (q + wq, c + wc)
        });
        self.meter.output_fill(fill);
        for idx in 0..self.members.len() {
            let m = &mut self.members[idx];
            let mut out = Collector::default();
            m.op.on_tick(&m.ctx, &mut out)?;
            self.route(idx, out)?;
        }
        Ok(true)
    }

    fn input_end(&mut self, input: usize) -> Result<()> {
        if self.members.is_empty() {
            return Ok(());
        }
        let m = &mut self.members[0];
        let mut out = Collector::default();
        m.op.on_input_end(input, &m.ctx, &mut out)?;
        self.route(0, out)
    }

    /// Snapshots every member in chain order; with `forward`, each member's
    /// barrier goes out on its writers right after its snapshot (everything
    /// it emitted before is already ahead of it on those channels).
    fn snapshot(
        &mut self,
        barrier: Barrier,
        forward: bool,
        out: &mut Vec<(usize, OperatorSnapshot)>,
    ) -> Result<()> {
        if forward {
            for (_, w) in &mut self.entry_writers {
                w.broadcast(StreamMessage::Barrier(barrier))?;
            }
        }
        for m in &mut self.members {
            let snap = m.op.snapshot(barrier.id, &m.ctx)?;
            out.push((m.node, snap));
            if forward {
                for (_, w) in &mut m.writers {
                    w.broadcast(StreamMessage::Barrier(barrier))?;
                }
            }
        }
        Ok(())
    }

    fn checkpoint_complete(&mut self, id: CheckpointId) -> Result<()> {
        for m in &mut self.members {
            m.op.checkpoint_complete(id, &m.ctx)?;
        }
        Ok(())
    }

    /// Closes every member in order (each sees its upstream's last output
    /// before closing), then ends every output channel.
    fn finish(&mut self) -> Result<()> {
        for idx in 0..self.members.len() {
            if idx > 0 {
                let m = &mut self.members[idx];
                let mut out = Collector::default();
                m.op.on_input_end(0, &m.ctx, &mut out)?;
                self.route(idx, out)?;
            }
            let m = &mut self.members[idx];
            let mut out = Collector::default();
            m.op.close(&m.ctx, &mut out)?;
            self.route(idx, out)?;
        }
        for (_, w) in &mut self.entry_writers {
            w.broadcast(StreamMessage::EndOfStream)?;
        }
        for m in &mut self.members {
            for (_, w) in &mut m.writers {
                w.broadcast(StreamMessage::EndOfStream)?;
            }
        }
        Ok(())
    }
}

/// How a task's input loop ended.
enum Outcome {
    /// All input consumed.
    Finished,
    /// Stopped with a savepoint that completed.
    Stopped,
}

/// Runs one subtask to completion.
pub fn run(spec: TaskSpec, control: &JobControl) -> Result<()> {
    let TaskSpec {
        graph,
        vertex,
        subtask,
        max_parallelism,
        inputs,
        writers,
        metrics,
        input_schemas,
        attempt,
        state,
        checkpointing,
        meter,
    } = spec;
    let checkpointer = checkpointing.map(|ck| Checkpointer {
        ck,
        last: std::cell::Cell::new(None),
    });
    let restore = checkpointer.as_ref().and_then(|c| c.ck.restore.clone());
    let ctx_for = |i: usize| OperatorContext {
        operator: graph.node(vertex.chain[i]).name.clone(),
        subtask,
        parallelism: vertex.parallelism,
        max_parallelism,
        input_schemas: input_schemas[i].clone(),
        watermark: None,
        attempt,
        checkpointing: checkpointer.is_some(),
        state: state.clone(),
    };
    let head = graph.node(vertex.chain[0]);
    let mut source: Option<SourceHead> = None;
    let mut members = Vec::new();
    let mut entry_writers = Vec::new();
    let mut writers = writers.into_iter();
    let mut replay = Vec::new();
    for (i, id) in vertex.chain.iter().enumerate() {
        let ctx = ctx_for(i);
        let node = graph.node(*id);
        let w = writers.next().unwrap_or_default();
        let mut op: Box<dyn Operator> = match &node.kind {
            NodeKind::Source {
                factory,
                watermarks,
            } => {
                let s = factory(&ctx)?;
                // Owned by the head from here on, so it is closed however
                // the task ends.
                let h = source.insert(SourceHead {
                    node: id.0,
                    src: s,
                    ctx,
                    gen: None,
                    closed: false,
                });
                let (s, ctx) = (&mut h.src, &h.ctx);
                if checkpointer.is_some() && !s.supports_checkpoints() {
                    return Err(Error::Config(format!(
                        "source '{}' cannot record its position, so the job cannot checkpoint; \
                         run it without a checkpoint directory",
                        node.name
                    )));
                }
                if let Some(r) = &restore {
                    let state =
                        r.state_for(id.0, subtask, vertex.parallelism, &ctx.state.local_dir)?;
                    s.restore(state.entries, ctx)?;
                }
                s.open(ctx)?;
                h.gen = match watermarks {
                    Some(strategy) => Some(SplitWatermarks::new(
                        strategy.clone(),
                        &node.outputs[0],
                        s.splits(),
                    )?),
                    None => None,
                };
                entry_writers = w;
                continue;
            }
            NodeKind::Operator { factory } => factory(&ctx)?,
            NodeKind::Sink { factory } => {
                Box::new(SinkOperator(factory(&ctx)?, metrics[i].clone()))
            }
        };
        if let Some(r) = &restore {
            let mut state = r.state_for(id.0, subtask, vertex.parallelism, &ctx.state.local_dir)?;
            // Records in flight at an unaligned checkpoint: the head member
            // reads them before any new input.
            replay.append(&mut state.in_flight);
            op.restore(state, &ctx)?;
        }
        members.push(Member {
            node: id.0,
            op,
            ctx,
            writers: w,
            metrics: metrics[i].clone(),
        });
    }
    for m in &mut members {
        m.op.open(&m.ctx)?;
    }
    let mut chain = Chain {
        members,
        entry_writers,
        meter,
    };
    if !replay.is_empty() {
        tracing::debug!(operator = %head.name, subtask, batches = replay.len(),
            "replaying the records in flight at the checkpoint");
    }
    for (input, batch) in replay {
        chain.push(0, input, batch)?;
    }
    let outcome = match source.as_mut() {
        Some(head) => run_source(
            head,
            &mut chain,
            &metrics[0],
            control,
            checkpointer.as_ref(),
        )?,
        None => run_inputs(
            inputs,
            head.num_inputs,
            &mut chain,
            control,
            checkpointer.as_ref(),
        )?,
    };
    match outcome {
        Outcome::Stopped => {}
        Outcome::Finished => {
            chain.finish()?;
            if let Some(c) = &checkpointer {
                c.finish(source.as_mut(), &mut chain, control)?;
            }
        }
    }
    match source.as_mut() {
        Some(head) => head.close(),
        None => Ok(()),
    }
}

fn run_source(
    head: &mut SourceHead,
    chain: &mut Chain,
    metrics: &NodeMetrics,
    control: &JobControl,
    ck: Option<&Checkpointer>,
) -> Result<Outcome> {
    let mut last_tick = Instant::now();
    let mut last_marker = Instant::now();
    loop {
        if control.is_cancelled() {
            return Err(Error::Cancelled);
        }
        if chain.tick(&mut last_tick)? {
            chain.meter.pending(head.src.pending());
            chain.meter.remaining(head.src.remaining());
            // Markers are due far less often than ticks: checked per tick,
            // not per batch.
            if last_marker.elapsed() >= LATENCY_MARKER_INTERVAL {
                last_marker = Instant::now();
                chain.latency(crate::metrics::now_ms())?;
            }
        }
        if let Some(c) = ck {
            while let Ok(msg) = c.ck.control.try_recv() {
                match msg {
                    TaskControl::Trigger(b) => {
                        c.take(b, Some(head), chain, true, Duration::ZERO)?;
                        if b.kind == BarrierKind::StopWithSavepoint {
                            return c.await_stop(b.id, Some(head), chain, control);
                        }
                    }
                    TaskControl::Complete(id) => c.complete(id, Some(head), chain)?,
                    TaskControl::SnapshotFinished(_) | TaskControl::Abort(_) => {}
                }
            }
        }
        match head.src.poll(&head.ctx)? {
            SourcePoll::Batch { split, mut batch } => {
                if let Some(g) = head.gen.as_mut() {
                    // Records whose time is null or out of range go to the
                    // source's bad-record policy, not on to the operators.
                    let bad = g.invalid_rows(&batch)?;
                    if !bad.is_empty() {
                        head.src.reject(split, &batch, &bad)?;
                        let rows: Vec<usize> = bad.iter().map(|(r, _)| *r).collect();
                        batch = without_rows(&batch, &rows)?;
                        if batch.num_rows() == 0 {
                            continue;
                        }
                    }
                    g.observe(split, &batch)?;
                }
                metrics
                    .records_out
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                chain.meter.batch_in(&batch);
                chain.entry_batch(batch)?;
                if let Some(wm) = head.gen.as_mut().and_then(|g| g.poll()) {
                    chain.entry_watermark(wm)?;
                }
            }
            SourcePoll::SplitEnd(split) => {
                if let Some(g) = head.gen.as_mut() {
                    g.finish(split);
                    if let Some(wm) = g.poll() {
                        chain.entry_watermark(wm)?;
                    }
                }
            }
            SourcePoll::Idle => {
                if let Some(wm) = head.gen.as_mut().and_then(|g| g.poll()) {
                    chain.entry_watermark(wm)?;
                }
                // A source may ask for a long pause (a paced one sleeps
                // until its next burst): a control message (a barrier to
                // inject) ends it early, and cancellation is seen within
                // CANCEL_POLL.
                let backoff = head.src.idle_backoff().min(CANCEL_POLL);
                let _idle = chain.meter.wait(Wait::Idle);
                match ck {
                    Some(c) if !backoff.is_zero() => {
                        let mut sel = Select::new();
                        sel.recv(&c.ck.control);
                        let _ = sel.ready_timeout(backoff);
                    }
                    _ => std::thread::sleep(backoff),
                }
            }
            SourcePoll::End => break,
        }
    }
    chain.meter.read_all();
    chain.entry_watermark(Watermark::MAX)?;
    Ok(Outcome::Finished)
}

fn run_inputs(
    inputs: Vec<(Receiver<StreamMessage>, usize)>,
    num_inputs: usize,
    chain: &mut Chain,
    control: &JobControl,
    ck: Option<&Checkpointer>,
) -> Result<Outcome> {
    let n = inputs.len();
    let mut open_per_input = vec![0usize; num_inputs.max(1)];
    for (_, i) in &inputs {
        open_per_input[*i] += 1;
    }
    // An input with no channels at all (cannot happen in a valid plan) ends at once.
    for (i, k) in open_per_input.iter().enumerate() {
        if *k == 0 {
            chain.input_end(i)?;
        }
    }
    let guarantee = ck.map_or(Guarantee::ExactlyOnce, |c| c.ck.guarantee);
    let unaligned = ck.filter(|c| c.ck.unaligned);
    let mut aligner = Aligner::new(n, guarantee);
    let mut wms = InputWatermarks::new(n);
    let mut open = vec![true; n];
    let mut remaining = n;
    let mut align_start: Option<Instant> = None;
    let mut last_tick = Instant::now();
    // Unaligned checkpoints: the checkpoint being recorded, and per channel
    // the messages taken ahead while looking for its barrier (processed
    // before anything more is read from that channel).
    let mut un = Unaligned::new(inputs.iter().map(|(_, i)| *i).collect());
    // The select is rebuilt whenever the set of readable channels changes
    // (a channel blocked by alignment, released, or ended).
    'rebuild: while remaining > 0 {
        let readable: Vec<usize> = (0..n)
            .filter(|c| open[*c] && !aligner.is_blocked(*c))
            .collect();
        let mut sel = Select::new();
        for c in &readable {
            sel.recv(&inputs[*c].0);
        }
        let ctl = ck.map(|c| (sel.recv(&c.ck.control), c));
        loop {
            if let Some(k) = unaligned {
                // Control first (a trigger starts the snapshot at once),
                // then the barrier search of a recording in progress, and
                // the hand-over of one every barrier of which was seen
                // (here or in what the last turn received).
                while let Ok(msg) = k.ck.control.try_recv() {
                    un.control(msg, k, chain, &open)?;
                }
                un.search(&inputs);
                un.finish(k)?;
            }
            let (c, received, direct) = match un.next_ahead(|c| !aligner.is_blocked(c)) {
                Some((c, msg)) => (c, Ok(msg), false),
                None => {
                    let selected = {
                        let _idle = chain.meter.wait(Wait::Idle);
                        sel.select_timeout(CANCEL_POLL)
                    };
                    if chain.tick(&mut last_tick)? {
                        let fill = inputs.iter().fold((0, 0), |(q, c), (rx, _)| {
                            (q + rx.len(), c + rx.capacity().unwrap_or(0))
                        });
                        chain.meter.input_fill(fill);
                    }
                    let op = match selected {
                        Ok(op) => op,
                        Err(_) => {
                            if control.is_cancelled() {
                                return Err(Error::Cancelled);
                            }
                            continue;
                        }
                    };
                    if let Some((_, k)) = ctl.filter(|(idx, _)| *idx == op.index()) {
                        match op.recv(&k.ck.control) {
                            Ok(msg) if unaligned.is_some() => un.control(msg, k, chain, &open)?,
                            Ok(TaskControl::Complete(id)) => k.complete(id, None, chain)?,
                            Ok(_) => {}
                            Err(_) => return Err(Error::Cancelled),
                        }
                        continue;
                    }
                    let c = readable[op.index()];
                    (c, op.recv(&inputs[c].0).map_err(|_| ()), true)
                }
            };
            let input = inputs[c].1;
            if direct && received.as_ref().is_ok_and(|msg| !un.observe(c, msg)) {
                continue; // the recorded checkpoint's own barrier
            }
            let aligned = match received {
                Ok(StreamMessage::Batch(b)) => {
                    chain.meter.batch_in(&b);
                    chain.push(0, input, b)?;
                    continue;
                }
                Ok(StreamMessage::Watermark(w)) => {
                    if let Some(w) = wms.update(c, w) {
                        chain.input_watermark(w)?;
                    }
                    continue;
                }
                Ok(StreamMessage::Latency(t)) => {
                    chain.latency(t)?;
                    continue;
                }
                Ok(StreamMessage::Barrier(b)) => match unaligned {
                    Some(k) if b.kind == BarrierKind::Checkpoint => {
                        // The first barrier of a checkpoint whose trigger
                        // has not come yet starts it; older ones are stale.
                        if k.last.get().is_none_or(|l| l < b.id) {
                            un.start(b, k, chain, &open)?;
                            un.observe(c, &StreamMessage::Barrier(b));
                        }
                        continue;
                    }
                    _ => {
                        if aligner.in_progress().is_none() {
                            align_start = Some(Instant::now());
                        }
                        aligner.on_barrier(c, b)
                    }
                },
                // A channel that disconnects without saying it ended lost its
                // upstream to a failure, which that upstream reports itself.
                Err(()) => return Err(Error::Cancelled),
                Ok(StreamMessage::EndOfStream) => {
                    open[c] = false;
                    remaining -= 1;
                    if let Some(w) = wms.end(c) {
                        chain.input_watermark(w)?;
                    }
                    open_per_input[input] -= 1;
                    if open_per_input[input] == 0 {
                        chain.input_end(input)?;
                    }
                    aligner.on_end(c)
                }
            };
            match aligned {
                Alignment::Complete(b) => {
                    let waited = align_start.take().map_or(Duration::ZERO, |t| t.elapsed());
                    if let Some(k) = ck {
                        // An aligned barrier (a savepoint, the final
                        // checkpoint) hands over any unaligned recording
                        // first: the coordinator has one in flight, so
                        // that one was aborted.
                        un.hand_over(k)?;
                        k.take(b, None, chain, true, waited)?;
                        if b.kind == BarrierKind::StopWithSavepoint {
                            return k.await_stop(b.id, None, chain, control);
                        }
                    }
                }
                Alignment::Aborted(_) => align_start = Some(Instant::now()),
                Alignment::Pending => {}
            }
            continue 'rebuild;
        }
    }
    // The last channel's end may have completed a recording.
    if let Some(k) = unaligned {
        un.finish(k)?;
    }
    Ok(Outcome::Finished)
}
