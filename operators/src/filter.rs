//! `filter(predicate)`: keeps the rows where a boolean expression is true
//! (null counts as false), with Arrow's filter kernel.

use arrow::array::AsArray;
use arrow::compute::filter_record_batch;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use sluice_engine::{Collector, Operator, OperatorContext, Result, Stream};

use crate::expr::Expr;
use crate::plan_error;

/// Evaluates the predicate and filters each batch.
pub struct FilterOperator {
    predicate: Expr,
}

impl Operator for FilterOperator {
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let mask = self.predicate.evaluate(&batch)?;
        out.emit(filter_record_batch(&batch, mask.as_boolean())?);
        Ok(())
    }
}

/// The `filter` verb.
pub trait Filter {
    /// Keeps the rows where `predicate` is true. Keys and event time are kept.
    ///
    /// ```
    /// # use sluice_operators::prelude::*;
    /// # fn f(bids: Stream) -> Stream {
    /// bids.filter(col("price").gt(lit(100)).and(col("channel").eq(lit("web"))))
    /// # }
    /// ```
    fn filter(self, predicate: Expr) -> Stream;
}

impl Filter for Stream {
    fn filter(self, predicate: Expr) -> Stream {
        match predicate.data_type(self.schema()) {
            Ok(DataType::Boolean) => {}
            Ok(t) => self.report(plan_error(
                &self,
                "filter",
                format!("predicate '{predicate}' is {t}, not Boolean"),
            )),
            Err(e) => self.report(plan_error(&self, "filter", e)),
        }
        let keys = self.keys().map(|k| k.to_vec());
        let time = self.event_time().map(str::to_string);
        let schema = self.schema().clone();
        self.transform("filter", schema, move |_| {
            Ok(Box::new(FilterOperator {
                predicate: predicate.clone(),
            }))
        })
        .with_keys(keys)
        .with_event_time(time)
    }
}
