//! Helpers for tests, doctests and examples: a source over prepared batches.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::dsl::{Env, Stream};
use crate::error::Result;
use crate::operator::{OperatorContext, Source, SourcePoll};

/// Emits prepared batches in order (one split), then ends.
pub struct VecSource(std::collections::VecDeque<RecordBatch>);

impl VecSource {
    /// A source over `batches`.
    pub fn new(batches: Vec<RecordBatch>) -> Self {
        VecSource(batches.into())
    }
}

impl Source for VecSource {
    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        Ok(match self.0.pop_front() {
            Some(batch) => SourcePoll::Batch { split: 0, batch },
            None => SourcePoll::End,
        })
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
