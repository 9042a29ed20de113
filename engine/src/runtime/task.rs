//! One subtask: an optional source head, a chain of fused operators, the
//! input loop over its channels, and the writers of its output edges.
//! Records move through the chain by direct calls; only chain boundaries
//! touch channels.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, Select};

use super::watermark::{InputWatermarks, SplitWatermarks};
use super::{JobControl, NodeMetrics};
use crate::data::{StreamMessage, Watermark};
use crate::error::{Error, Result};
use crate::exchange::partition::EdgeWriter;
use crate::graph::{LogicalGraph, NodeKind};
use crate::operator::{Collector, Operator, OperatorContext, SinkOperator, Source, SourcePoll};
use crate::plan::Vertex;

/// How often a waiting task checks whether the job was cancelled.
const CANCEL_POLL: Duration = Duration::from_millis(100);

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
    op: Box<dyn Operator>,
    ctx: OperatorContext,
    writers: Vec<(usize, EdgeWriter)>,
    metrics: Arc<NodeMetrics>,
}

/// The fused operators of a task. Member `i`'s main output feeds member
/// `i + 1`; the last member's main output and every side output go to writers.
struct Chain {
    members: Vec<Member>,
    /// Writers of a source head (when the source is the whole chain's entry).
    entry_writers: Vec<(usize, EdgeWriter)>,
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

    fn input_end(&mut self, input: usize) -> Result<()> {
        if self.members.is_empty() {
            return Ok(());
        }
        let m = &mut self.members[0];
        let mut out = Collector::default();
        m.op.on_input_end(input, &m.ctx, &mut out)?;
        self.route(0, out)
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
    } = spec;
    let ctx_for = |i: usize| OperatorContext {
        operator: graph.node(vertex.chain[i]).name.clone(),
        subtask,
        parallelism: vertex.parallelism,
        max_parallelism,
        input_schemas: input_schemas[i].clone(),
        watermark: None,
    };
    let head = graph.node(vertex.chain[0]);
    let mut source: Option<(Box<dyn Source>, OperatorContext, Option<SplitWatermarks>)> = None;
    let mut members = Vec::new();
    let mut entry_writers = Vec::new();
    let mut writers = writers.into_iter();
    for (i, id) in vertex.chain.iter().enumerate() {
        let ctx = ctx_for(i);
        let node = graph.node(*id);
        let w = writers.next().unwrap_or_default();
        let op: Box<dyn Operator> = match &node.kind {
            NodeKind::Source {
                factory,
                watermarks,
            } => {
                let mut s = factory(&ctx)?;
                s.open(&ctx)?;
                let gen = match watermarks {
                    Some(strategy) => Some(SplitWatermarks::new(
                        strategy.clone(),
                        &node.outputs[0],
                        s.splits(),
                    )?),
                    None => None,
                };
                source = Some((s, ctx, gen));
                entry_writers = w;
                continue;
            }
            NodeKind::Operator { factory } => factory(&ctx)?,
            NodeKind::Sink { factory } => Box::new(SinkOperator(factory(&ctx)?)),
        };
        members.push(Member {
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
    };
    match source {
        Some((src, ctx, gen)) => run_source(src, ctx, gen, &mut chain, &metrics[0], control)?,
        None => run_inputs(inputs, head.num_inputs, &mut chain, control)?,
    }
    chain.finish()
}

fn run_source(
    mut src: Box<dyn Source>,
    ctx: OperatorContext,
    mut gen: Option<SplitWatermarks>,
    chain: &mut Chain,
    metrics: &NodeMetrics,
    control: &JobControl,
) -> Result<()> {
    loop {
        if control.is_cancelled() {
            return Err(Error::Cancelled);
        }
        match src.poll(&ctx)? {
            SourcePoll::Batch { split, batch } => {
                if let Some(g) = gen.as_mut() {
                    g.observe(split, &batch)?;
                }
                metrics
                    .records_out
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                chain.entry_batch(batch)?;
                if let Some(wm) = gen.as_mut().and_then(|g| g.poll()) {
                    chain.entry_watermark(wm)?;
                }
            }
            SourcePoll::SplitEnd(split) => {
                if let Some(g) = gen.as_mut() {
                    g.finish(split);
                    if let Some(wm) = g.poll() {
                        chain.entry_watermark(wm)?;
                    }
                }
            }
            SourcePoll::Idle => {
                if let Some(wm) = gen.as_mut().and_then(|g| g.poll()) {
                    chain.entry_watermark(wm)?;
                }
                std::thread::sleep(src.idle_backoff());
            }
            SourcePoll::End => break,
        }
    }
    chain.entry_watermark(Watermark::MAX)
}

fn run_inputs(
    inputs: Vec<(Receiver<StreamMessage>, usize)>,
    num_inputs: usize,
    chain: &mut Chain,
    control: &JobControl,
) -> Result<()> {
    let mut open_per_input = vec![0usize; num_inputs.max(1)];
    for (_, i) in &inputs {
        open_per_input[*i] += 1;
    }
    // An input with no channels at all (cannot happen in a valid plan) ends at once.
    for (i, n) in open_per_input.iter().enumerate() {
        if *n == 0 {
            chain.input_end(i)?;
        }
    }
    let mut wms = InputWatermarks::new(inputs.len());
    let mut sel = Select::new();
    for (rx, _) in &inputs {
        sel.recv(rx);
    }
    let mut open = inputs.len();
    while open > 0 {
        let op = match sel.select_timeout(CANCEL_POLL) {
            Ok(op) => op,
            Err(_) => {
                if control.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                continue;
            }
        };
        let c = op.index();
        let (rx, input) = &inputs[c];
        match op.recv(rx) {
            Ok(StreamMessage::Batch(b)) => chain.push(0, *input, b)?,
            Ok(StreamMessage::Watermark(w)) => {
                if let Some(w) = wms.update(c, w) {
                    chain.watermark(0, w)?;
                }
            }
            // Nothing emits barriers until checkpoints are triggered; the
            // checkpoint runtime routes them through `align::Aligner` here.
            Ok(StreamMessage::Barrier(_)) => {}
            // A channel that disconnects without saying it ended lost its
            // upstream to a failure, which that upstream reports itself.
            Err(_) => return Err(Error::Cancelled),
            Ok(StreamMessage::EndOfStream) => {
                sel.remove(c);
                open -= 1;
                if let Some(w) = wms.end(c) {
                    chain.watermark(0, w)?;
                }
                open_per_input[*input] -= 1;
                if open_per_input[*input] == 0 {
                    chain.input_end(*input)?;
                }
            }
        }
    }
    Ok(())
}
