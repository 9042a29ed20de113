//! `select([expr, ...])`: computes a new set of columns from expressions.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_engine::{Collector, Operator, OperatorContext, Result, Stream};

use crate::expr::Expr;
use crate::plan_error;

/// Evaluates the projection for each batch.
pub struct SelectOperator {
    exprs: Vec<Expr>,
    schema: SchemaRef,
}

impl Operator for SelectOperator {
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let cols = self
            .exprs
            .iter()
            .map(|e| e.evaluate(&batch))
            .collect::<Result<Vec<_>>>()?;
        out.emit(RecordBatch::try_new(self.schema.clone(), cols)?);
        Ok(())
    }
}

/// The `select` verb.
pub trait Select {
    /// Replaces the columns with `exprs` (named by their alias, or by the
    /// column they reference). Keys and event time survive when their
    /// columns are selected unchanged.
    ///
    /// Output names must be unique; an unknown column or a type error is a
    /// plan error naming `select after '<node>'`.
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
    ///     .select([col("auction"), (col("price") * lit(0.5)).alias("half")])
    ///     .collect();
    /// env.execute()?;
    /// let b = out.concat();
    /// assert_eq!(b.schema().field(1).name(), "half");
    /// assert_eq!(b.column(1).as_primitive::<arrow::datatypes::Float64Type>().values(), &[25.0, 75.0, 150.0]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn select(self, exprs: impl IntoIterator<Item = Expr>) -> Stream;
}

impl Select for Stream {
    fn select(self, exprs: impl IntoIterator<Item = Expr>) -> Stream {
        let exprs: Vec<Expr> = exprs.into_iter().collect();
        let input = self.schema().clone();
        let mut fields = Vec::with_capacity(exprs.len());
        let mut seen = HashSet::new();
        for e in &exprs {
            let name = e.output_name();
            if !seen.insert(name.clone()) {
                self.report(plan_error(
                    &self,
                    "select",
                    format!("output column '{name}' appears twice; alias one"),
                ));
            }
            match e.data_type(&input) {
                Ok(t) => fields.push(Field::new(name, t, e.nullable(&input))),
                Err(err) => {
                    self.report(plan_error(&self, "select", err));
                    fields.push(Field::new(name, arrow::datatypes::DataType::Null, true));
                }
            }
        }
        if exprs.is_empty() {
            self.report(plan_error(
                &self,
                "select",
                "select needs at least one expression",
            ));
        }
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let kept: HashSet<&str> = exprs.iter().filter_map(|e| e.as_column()).collect();
        let keys = self
            .keys()
            .filter(|k| k.iter().all(|c| kept.contains(c.as_str())))
            .map(|k| k.to_vec());
        let time = self
            .event_time()
            .filter(|t| kept.contains(t))
            .map(str::to_string);
        let out = schema.clone();
        self.transform("select", schema, move |_| {
            Ok(Box::new(SelectOperator {
                exprs: exprs.clone(),
                schema: out.clone(),
            }))
        })
        .stateless()
        .with_keys(keys)
        .with_event_time(time)
    }
}
