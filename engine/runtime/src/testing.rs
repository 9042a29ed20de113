//! Helpers for tests, doctests and examples: a source over prepared batches.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::data::CheckpointId;
use crate::dsl::{Env, Stream};
use crate::error::Result;
use crate::operator::{OperatorContext, Source, SourcePoll};

/// Emits prepared batches in order (one split), then ends. Replayable: its
/// position (batches emitted) is checkpointed.
pub struct VecSource {
    batches: Vec<RecordBatch>,
    next: usize,
}

impl VecSource {
    /// A source over `batches`.
    pub fn new(batches: Vec<RecordBatch>) -> Self {
        VecSource { batches, next: 0 }
    }
}

impl Source for VecSource {
    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        Ok(match self.batches.get(self.next) {
            Some(batch) => {
                self.next += 1;
                SourcePoll::Batch {
                    split: 0,
                    batch: batch.clone(),
                }
            }
            None => SourcePoll::End,
        })
    }

    fn supports_checkpoints(&self) -> bool {
        true
    }

    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<Vec<Vec<u8>>> {
        Ok(vec![(self.next as u64).to_le_bytes().to_vec()])
    }

    fn restore(&mut self, entries: Vec<Vec<u8>>, _ctx: &OperatorContext) -> Result<()> {
        for e in entries {
            let bytes: [u8; 8] = e
                .as_slice()
                .try_into()
                .map_err(|_| crate::Error::Checkpoint("malformed VecSource position".into()))?;
            self.next = u64::from_le_bytes(bytes) as usize;
        }
        Ok(())
    }
}

impl Env {
    /// A source emitting `batches` in order from a single subtask, so tests
    /// get a deterministic arrival order whatever the job's parallelism.
    pub fn from_batches(&self, name: &str, schema: SchemaRef, batches: Vec<RecordBatch>) -> Stream {
        self.source_fn(name, schema, move |_| {
            Ok(Box::new(VecSource::new(batches.clone())))
        })
        .set_parallelism(1)
    }
}
