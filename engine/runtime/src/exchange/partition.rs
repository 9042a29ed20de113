//! Partitioners: given a batch and the downstream channels of an edge, send
//! each record where the edge kind says. Hash routing goes through key groups
//! (`state::key_group`) so the key → subtask map is the one keyed state uses.
//! With a [`TaskMeter`], the writer counts what leaves the task and the time
//! it waits for room in a full channel (backpressure).

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use std::sync::Arc;

use super::ChannelSender;
use crate::data::StreamMessage;
use crate::error::Result;
use crate::graph::EdgeKind;
use crate::hash::hash_columns;
use crate::metrics::{TaskMeter, Wait};
use crate::state::key_group::{key_group_of, subtask_of};

/// The writer for one output edge of a subtask: a partitioner over that
/// edge's channels.
pub struct EdgeWriter {
    kind: EdgeKind,
    channels: Vec<Box<dyn ChannelSender>>,
    max_parallelism: usize,
    next: usize,
    hashes: Vec<u64>,
    indices: Vec<Vec<u32>>,
    meter: Option<Arc<TaskMeter>>,
}

impl EdgeWriter {
    /// A writer over `channels` (one per downstream subtask; for a forward
    /// edge just the one to the same subtask index).
    pub fn new(
        kind: EdgeKind,
        channels: Vec<Box<dyn ChannelSender>>,
        max_parallelism: usize,
        start: usize,
    ) -> Self {
        let n = channels.len();
        EdgeWriter {
            kind,
            channels,
            max_parallelism,
            next: start % n.max(1),
            hashes: Vec::new(),
            indices: vec![Vec::new(); n],
            meter: None,
        }
    }

    /// Counts this writer's output and waits in `meter`, its task's.
    pub fn set_meter(&mut self, meter: Arc<TaskMeter>) {
        self.meter = Some(meter);
    }

    /// Sends `msg` on channel `c`; a wait for room counts as backpressure.
    fn deliver(&self, c: usize, msg: StreamMessage) -> Result<()> {
        let channel = &self.channels[c];
        let Some(meter) = &self.meter else {
            return channel.send(msg);
        };
        match channel.try_send(msg)? {
            None => Ok(()),
            Some(msg) => {
                let _waiting = meter.wait(Wait::Backpressured);
                channel.send(msg)
            }
        }
    }

    /// Messages queued on its channels and what they hold at most (local
    /// queues, or a network channel's credit window).
    pub fn fill(&self) -> (usize, usize) {
        self.channels
            .iter()
            .fold((0, 0), |(q, c), ch| (q + ch.backlog(), c + ch.capacity()))
    }

    /// Routes a batch.
    pub fn send_batch(&mut self, batch: RecordBatch) -> Result<()> {
        let n = self.channels.len();
        if let Some(m) = &self.meter {
            m.batch_out(&batch);
        }
        if n == 1 {
            return self.deliver(0, StreamMessage::Batch(batch));
        }
        match &self.kind {
            EdgeKind::Forward | EdgeKind::Rebalance => {
                let c = self.next;
                self.next = (self.next + 1) % n;
                self.deliver(c, StreamMessage::Batch(batch))
            }
            EdgeKind::LoadAware => {
                // Least backlog wins; ties rotate so equal channels share load.
                let mut best = self.next;
                let mut best_len = usize::MAX;
                for i in 0..n {
                    let c = (self.next + i) % n;
                    let len = self.channels[c].backlog();
                    if len < best_len {
                        best = c;
                        best_len = len;
                    }
                }
                self.next = (best + 1) % n;
                self.deliver(best, StreamMessage::Batch(batch))
            }
            EdgeKind::Broadcast => {
                for c in 0..n {
                    self.deliver(c, StreamMessage::Batch(batch.clone()))?;
                }
                Ok(())
            }
            EdgeKind::Hash(cols) => {
                let keys: Vec<ArrayRef> = cols.iter().map(|i| batch.column(*i).clone()).collect();
                hash_columns(&keys, batch.num_rows(), &mut self.hashes)?;
                for v in &mut self.indices {
                    v.clear();
                }
                for (row, h) in self.hashes.iter().enumerate() {
                    let s = subtask_of(
                        key_group_of(*h, self.max_parallelism),
                        self.max_parallelism,
                        n,
                    );
                    self.indices[s].push(row as u32);
                }
                for c in 0..n {
                    let idx = &mut self.indices[c];
                    if idx.is_empty() {
                        continue;
                    }
                    let part = if idx.len() == batch.num_rows() {
                        batch.clone()
                    } else {
                        let idx = UInt32Array::from(std::mem::take(idx));
                        take_record_batch(&batch, &idx)?
                    };
                    self.deliver(c, StreamMessage::Batch(part))?;
                }
                Ok(())
            }
        }
    }

    /// Sends a control message (watermark, barrier, end) on every channel.
    pub fn broadcast(&mut self, msg: StreamMessage) -> Result<()> {
        for c in 0..self.channels.len() {
            self.deliver(c, msg.clone())?;
        }
        Ok(())
    }

    /// Sends `msg` on one channel, the next in turn (a latency marker
    /// samples one path; broadcasting it would multiply it at every edge).
    pub fn send_one(&mut self, msg: StreamMessage) -> Result<()> {
        let n = self.channels.len();
        if n == 0 {
            return Ok(());
        }
        let c = self.next % n;
        self.next = (c + 1) % n;
        self.deliver(c, msg)
    }
}

/// Which downstream subtasks subtask `upstream` of an edge writes to.
pub fn targets(kind: &EdgeKind, upstream: usize, downstream_parallelism: usize) -> Vec<usize> {
    match kind {
        EdgeKind::Forward => vec![upstream],
        _ => (0..downstream_parallelism).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::local::channel;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn batch(v: Vec<i64>) -> RecordBatch {
        let s = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        RecordBatch::try_new(s, vec![Arc::new(Int64Array::from(v))]).unwrap()
    }

    #[test]
    fn hash_routes_each_key_to_one_subtask() {
        let cancel = Arc::new(AtomicBool::new(false));
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| channel(100, cancel.clone())).unzip();
        let txs: Vec<Box<dyn ChannelSender>> = txs.into_iter().map(|t| Box::new(t) as _).collect();
        let mut w = EdgeWriter::new(EdgeKind::Hash(vec![0]), txs, 128, 0);
        w.send_batch(batch((0..1000).map(|i| i % 37).collect()))
            .unwrap();
        w.send_batch(batch((0..1000).map(|i| i % 37).collect()))
            .unwrap();
        let mut owner = std::collections::HashMap::new();
        let mut total = 0;
        for (s, rx) in rxs.iter().enumerate() {
            while let Ok(StreamMessage::Batch(b)) = rx.try_recv() {
                for k in b.column(0).as_primitive::<Int64Type>().values() {
                    assert_eq!(*owner.entry(*k).or_insert(s), s, "key {k} on two subtasks");
                    total += 1;
                }
            }
        }
        assert_eq!(total, 2000);
        assert!(
            owner
                .values()
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1
        );
    }

    #[test]
    fn load_aware_prefers_the_emptier_channel() {
        let cancel = Arc::new(AtomicBool::new(false));
        let (t0, r0) = channel(100, cancel.clone());
        let (t1, r1) = channel(100, cancel.clone());
        for _ in 0..5 {
            t0.send(StreamMessage::EndOfStream).unwrap();
        }
        let mut w = EdgeWriter::new(
            EdgeKind::LoadAware,
            vec![Box::new(t0), Box::new(t1)],
            128,
            0,
        );
        for _ in 0..4 {
            w.send_batch(batch(vec![1])).unwrap();
        }
        assert_eq!(r0.len(), 5);
        assert_eq!(r1.len(), 4);
    }

    #[test]
    fn a_wait_for_room_counts_as_backpressure_and_output_is_counted() {
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = channel(1, cancel);
        let meter = Arc::new(TaskMeter::new(0, 0));
        let mut w = EdgeWriter::new(EdgeKind::Forward, vec![Box::new(tx)], 128, 0);
        w.set_meter(meter.clone());
        w.send_batch(batch(vec![1, 2])).unwrap();
        let sampler = crate::metrics::Sampler::default();
        assert_eq!(
            sampler.sample(std::slice::from_ref(&meter))[0].backpressured_ms,
            0
        );
        // The queue holds one message: the next send waits until the
        // consumer takes the first, 30 ms or more from now.
        let consumer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            let first = rx.recv().unwrap();
            (first, rx)
        });
        w.send_batch(batch(vec![3])).unwrap();
        let s = &sampler.sample(&[meter])[0];
        assert!(s.backpressured_ms >= 30, "{s:?}");
        assert_eq!(s.records_out, 3);
        consumer.join().unwrap();
    }
}
