//! `union`: merges streams of one schema into one stream.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_engine::dsl::IdentityOperator;
use sluice_engine::{Collector, Operator, OperatorContext, Result, Stream};

use crate::plan_error;

/// The `union` verb.
pub trait Union {
    /// Merges `self` and `others` into one stream. All must have the same
    /// column names and types, in the same order; a column is nullable in
    /// the result when it is in any input.
    /// Event time is kept when every input has the same event-time column;
    /// the result is not keyed.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use arrow::array::{AsArray, Int64Array, RecordBatch};
    /// # use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    /// # use sluice_operators::prelude::*;
    /// # let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    /// # let rows = |v: Vec<i64>| RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap();
    /// let env = Env::new();
    /// let a = env.from_batches("a", schema.clone(), vec![rows(vec![1, 2])]);
    /// let b = env.from_batches("b", schema.clone(), vec![rows(vec![3])]);
    /// let out = a.union(&[b]).collect();
    /// env.execute()?;
    /// let mut got: Vec<i64> = out.batches().iter()
    ///     .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
    ///     .collect();
    /// got.sort();
    /// assert_eq!(got, [1, 2, 3]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn union(self, others: &[Stream]) -> Stream;
}

/// Describes the first difference between two schemas, if any.
fn first_difference(a: &Schema, b: &Schema) -> Option<String> {
    for (i, (x, y)) in a.fields().iter().zip(b.fields().iter()).enumerate() {
        if x.name() != y.name() || x.data_type() != y.data_type() {
            return Some(format!(
                "column {i} is '{}' ({}) vs '{}' ({})",
                x.name(),
                x.data_type(),
                y.name(),
                y.data_type()
            ));
        }
    }
    let (la, lb) = (a.fields().len(), b.fields().len());
    (la != lb).then(|| {
        let extra = if la > lb { a.field(lb) } else { b.field(la) };
        format!(
            "{la} vs {lb} columns, first extra column '{}'",
            extra.name()
        )
    })
}

impl Union for Stream {
    fn union(self, others: &[Stream]) -> Stream {
        for o in others {
            if let Some(diff) = first_difference(self.schema(), o.schema()) {
                self.report(plan_error(
                    &self,
                    "union",
                    format!(
                        "schemas differ ({diff}): '{}' has {} but '{}' has {}",
                        self.node_name(),
                        self.column_list(),
                        o.node_name(),
                        o.column_list()
                    ),
                ));
            }
        }
        let time = self
            .event_time()
            .map(str::to_string)
            .filter(|t| others.iter().all(|o| o.event_time() == Some(t)));
        let refs: Vec<&Stream> = others.iter().collect();
        let merged = merged_nullability(&self, others);
        if merged == *self.schema() {
            return self
                .merge_into("union", &refs, Arc::new(|_| Ok(Box::new(IdentityOperator))))
                .stateless()
                .with_event_time(time);
        }
        // The union node takes `self`'s declared schema, so declare the
        // widened one upstream, then relabel every merged batch with it.
        let widen = |schema: SchemaRef| {
            move |_: &OperatorContext| Ok(Box::new(Relabel(schema.clone())) as Box<dyn Operator>)
        };
        let head = self
            .transform("widen_nullability", merged.clone(), widen(merged.clone()))
            .stateless();
        head.merge_into("union", &refs, Arc::new(widen(merged)))
            .stateless()
            .with_event_time(time)
    }
}

/// `self`'s schema with each column nullable if it is nullable in any input.
fn merged_nullability(first: &Stream, others: &[Stream]) -> SchemaRef {
    let fields: Vec<Field> = first
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let nullable = f.is_nullable()
                || others
                    .iter()
                    .any(|o| o.schema().fields().get(i).is_some_and(|g| g.is_nullable()));
            f.as_ref().clone().with_nullable(nullable)
        })
        .collect();
    let merged = Arc::new(Schema::new_with_metadata(
        fields,
        first.schema().metadata().clone(),
    ));
    if merged == *first.schema() {
        first.schema().clone()
    } else {
        merged
    }
}

/// Re-labels batches with a wider (nullability-only) schema; no data moves.
struct Relabel(SchemaRef);

impl Operator for Relabel {
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        out.emit(RecordBatch::try_new(
            self.0.clone(),
            batch.columns().to_vec(),
        )?);
        Ok(())
    }
}
