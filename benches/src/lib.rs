//! Shared pieces of Sluice's benchmarks: an in-memory source of prepared
//! batches, so micro-benchmarks measure operators rather than generation,
//! and the JSON record the Kafka benchmarks read; and what every report
//! states of its run ([`machine`]); a plain GET for polling a
//! coordinator ([`http`]).

pub mod http;
pub mod machine;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use sluice_engine::{Env, OperatorContext, Result, Source, SourcePoll, Stream};

/// Rows per batch in the micro-benchmarks (the engine's default batch size).
pub const ROWS: usize = 8192;

/// A Nexmark-bid-like schema: auction, price, event time.
pub fn bid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// Emits prepared batches, each subtask a disjoint share of them.
pub struct PreparedSource {
    batches: Arc<Vec<RecordBatch>>,
    next: usize,
    step: usize,
}

impl Source for PreparedSource {
    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        match self.batches.get(self.next) {
            Some(b) => {
                self.next += self.step;
                Ok(SourcePoll::Batch {
                    split: 0,
                    batch: b.clone(),
                })
            }
            None => Ok(SourcePoll::End),
        }
    }
}

/// A source over `batches`, split round-robin across its subtasks.
pub fn prepared(env: &Env, schema: SchemaRef, batches: Arc<Vec<RecordBatch>>) -> Stream {
    env.source_fn("prepared", schema, move |ctx| {
        Ok(Box::new(PreparedSource {
            batches: batches.clone(),
            next: ctx.subtask,
            step: ctx.parallelism,
        }))
    })
}

/// Record `i` of the Kafka benchmarks: a JSON object of about 100 bytes
/// (as in the broker's measured figures) with five fields, followed by
/// `extra` (more fields, starting with a comma) before the closing brace.
pub fn kafka_json_record(i: usize, extra: &str) -> String {
    format!(
        r#"{{"id": {i}, "user": "user-{:05}", "amount": {}.25, "ok": {}, "city": "c{:03}"{extra}}}"#,
        i % 50_000,
        i % 10_000,
        i.is_multiple_of(2),
        i % 500
    )
}
