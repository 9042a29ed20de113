//! Sinks for demos and benchmarks: [`PrintSink`] writes pretty tables to
//! stdout, [`DiscardSink`] drops everything (counting rows for the log),
//! [`SlowSink`] drops everything slowly (to see backpressure).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use sluice_engine::graph::SinkFactory;
use sluice_engine::{Error, OperatorContext, Result, Sink, SinkSpec};
use tracing::debug;

/// Drops every record; each subtask logs how many rows it dropped when it
/// closes (at debug level). For benchmarks, where only the result's
/// counters matter.
///
/// ```
/// use sluice_connectors::nexmark::{NexmarkConfig, NexmarkSource};
/// use sluice_connectors::sinks::DiscardSink;
/// use sluice_operators::prelude::*;
///
/// let env = Env::new();
/// let cfg = NexmarkConfig { events: 1_000, ..Default::default() };
/// env.source(NexmarkSource::bids(cfg)).sink(DiscardSink);
/// let result = env.execute()?;
/// assert_eq!(result.node("discard").unwrap().records_in, 920);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct DiscardSink;

struct Discard {
    rows: u64,
}

impl Sink for Discard {
    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn close(&mut self, ctx: &OperatorContext) -> Result<()> {
        debug!(
            operator = %ctx.operator,
            subtask = ctx.subtask,
            rows = self.rows,
            "discard sink closed"
        );
        Ok(())
    }
}

/// Drops every record like [`DiscardSink`], after sleeping `per_batch` for
/// each batch it receives: a deliberately slow sink, to watch
/// backpressure in a job's metrics (its upstream waits for room) and try
/// out dashboards and alerts. Put an exchange (`rebalance`) in front of it,
/// or it is chained into its upstream's task and the wait is that task's
/// busy time.
#[derive(Debug, Clone)]
pub struct SlowSink {
    /// Sleep per batch.
    pub per_batch: Duration,
}

struct Slow {
    per_batch: Duration,
}

impl Sink for Slow {
    fn write(&mut self, _batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        std::thread::sleep(self.per_batch);
        Ok(())
    }
}

impl SinkSpec for SlowSink {
    fn name(&self) -> String {
        "slow_discard".into()
    }
    fn factory(&self, _input: SchemaRef) -> SinkFactory {
        let per_batch = self.per_batch;
        Arc::new(move |_| Ok(Box::new(Slow { per_batch })))
    }
}

impl SinkSpec for DiscardSink {
    fn name(&self) -> String {
        "discard".into()
    }
    fn factory(&self, _input: SchemaRef) -> SinkFactory {
        Arc::new(|_| Ok(Box::new(Discard { rows: 0 })))
    }
}

/// Prints batches as tables on stdout. With more than one subtask every line
/// starts with `{subtask}> ` (as Flink's print sink does), so interleaved
/// output stays attributable.
///
/// ```
/// use sluice_connectors::sinks::PrintSink;
/// use sluice_engine::testing::int_batch;
/// use sluice_operators::prelude::*;
///
/// let env = Env::new();
/// let batch = int_batch(&[("n", &[1, 2, 3])]);
/// env.from_batches("numbers", batch.schema(), vec![batch]).sink(PrintSink);
/// env.execute()?; // prints a table of n = 1, 2, 3
/// # Ok::<(), sluice_engine::Error>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct PrintSink;

struct Print;

impl Sink for Print {
    fn write(&mut self, batch: RecordBatch, ctx: &OperatorContext) -> Result<()> {
        let table = arrow::util::pretty::pretty_format_batches(&[batch])?.to_string();
        // One lock per batch: a table is never split by another subtask's.
        let mut out = std::io::stdout().lock();
        let written = if ctx.parallelism > 1 {
            table
                .lines()
                .try_for_each(|line| writeln!(out, "{}> {line}", ctx.subtask))
        } else {
            writeln!(out, "{table}")
        };
        written.map_err(|e| Error::io("writing to stdout", e))
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
