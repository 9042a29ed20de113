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
    /// Keeps the rows where `predicate` is true (null counts as false).
    /// Keys and event time are kept. A predicate that is not Boolean, or
    /// names an unknown column, is a plan error naming `filter after '<node>'`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
    /// # use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    /// # use sluice_operators::prelude::*;
    /// # let schema = Arc::new(Schema::new(vec![
    /// #     Field::new("auction", DataType::Int64, false),
    /// #     Field::new("price", DataType::Int64, false),
    /// #     Field::new("channel", DataType::Utf8, false),
    /// # ]));
    /// # let batch = RecordBatch::try_new(schema.clone(), vec![
    /// #     Arc::new(Int64Array::from(vec![1, 2, 3])),
    /// #     Arc::new(Int64Array::from(vec![50, 150, 300])),
    /// #     Arc::new(StringArray::from(vec!["web", "web", "app"])),
    /// # ]).unwrap();
    /// let env = Env::new();
    /// let bids = env.from_batches("bids", schema, vec![batch]);
    /// let out = bids
    ///     .filter(col("price").gt(lit(100)).and(col("channel").eq(lit("web"))))
    ///     .collect();
    /// env.execute()?;
    /// assert_eq!(out.concat().column(0).as_primitive::<Int64Type>().values(), &[2]);
    /// # Ok::<(), sluice_engine::Error>(())
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
        .stateless()
        .with_keys(keys)
        .with_event_time(time)
    }
}
