//! Sinks for demos and benchmarks: [`PrintSink`] writes pretty tables to
//! stdout, [`DiscardSink`] drops everything (counting rows).

use std::io::Write;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use sluice_engine::graph::SinkFactory;
use sluice_engine::{Error, OperatorContext, Result, Sink, SinkSpec};

/// Drops every record.
#[derive(Debug, Default, Clone)]
pub struct DiscardSink;

struct Discard(u64);

impl Sink for Discard {
    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        self.0 += batch.num_rows() as u64;
        Ok(())
    }
}

impl SinkSpec for DiscardSink {
    fn name(&self) -> String {
        "discard".into()
    }
    fn factory(&self, _input: SchemaRef) -> SinkFactory {
        Arc::new(|_| Ok(Box::new(Discard(0))))
    }
}

/// Prints batches as tables on stdout.
#[derive(Debug, Default, Clone)]
pub struct PrintSink;

struct Print;

impl Sink for Print {
    fn write(&mut self, batch: RecordBatch, ctx: &OperatorContext) -> Result<()> {
        let table = arrow::util::pretty::pretty_format_batches(&[batch])?;
        let mut out = std::io::stdout().lock();
        let r = if ctx.parallelism > 1 {
            writeln!(out, "[{} {}]\n{table}", ctx.operator, ctx.subtask)
        } else {
            writeln!(out, "{table}")
        };
        r.map_err(|e| Error::io("writing to stdout", e))
    }
}

impl SinkSpec for PrintSink {
    fn name(&self) -> String {
        "print".into()
    }
    fn factory(&self, _input: SchemaRef) -> SinkFactory {
        Arc::new(|_| Ok(Box::new(Print)))
    }
}
