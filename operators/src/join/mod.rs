//! Joins of two keyed streams on equal key columns. Both inputs are
//! hash-partitioned on their keys, so equal keys meet in one subtask.
//!
//! - [`Join::join`]: unbounded inner join (symmetric hash join): each
//!   matching pair is emitted once, as soon as both rows have arrived. State
//!   holds every row of both inputs; use it on bounded inputs or small
//!   streams.
//!
//! Output: every left column, then every right column; a right column whose
//! name is taken by a left one is renamed `right_NAME`.

mod stream_join;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_engine::graph::OperatorFactory;
use sluice_engine::Stream;

use crate::plan_error;
pub use stream_join::StreamJoinOperator;

/// Join verbs.
pub trait Join {
    /// Unbounded inner join on `left_keys = right_keys`.
    ///
    /// ```
    /// # use sluice_operators::prelude::*;
    /// # fn f(auctions: Stream, persons: Stream) -> Stream {
    /// auctions.join(persons, &["seller"], &["id"])
    /// # }
    /// ```
    fn join(self, right: Stream, left_keys: &[&str], right_keys: &[&str]) -> Stream;
}

/// Checks the key columns and computes the output schema.
pub(crate) fn join_schema(left: &Stream, right: &Stream, lk: &[&str], rk: &[&str], verb: &str) -> (SchemaRef, Vec<DataType>) {
    let (ls, rs) = (left.schema(), right.schema());
    let err = |m: String| left.report(plan_error(left, verb, m));
    if lk.len() != rk.len() || lk.is_empty() {
        err(format!("needs the same number of left and right keys, got {lk:?} and {rk:?}"));
    }
    let mut types = Vec::new();
    for (l, r) in lk.iter().zip(rk) {
        match (ls.field_with_name(l), rs.field_with_name(r)) {
            (Ok(a), Ok(b)) if a.data_type() == b.data_type() => types.push(a.data_type().clone()),
            (Ok(a), Ok(b)) => err(format!(
                "key types differ: left '{l}' is {} but right '{r}' is {}",
                a.data_type(),
                b.data_type()
            )),
            (Err(_), _) => err(format!("unknown left key column '{l}'; the left input has {}", left.column_list())),
            (_, Err(_)) => err(format!("unknown right key column '{r}'; the right input has {}", right.column_list())),
        }
    }
    let mut fields: Vec<Field> = ls.fields().iter().map(|f| f.as_ref().clone()).collect();
    for f in rs.fields() {
        let taken = fields.iter().any(|x| x.name() == f.name());
        let name = if taken { format!("right_{}", f.name()) } else { f.name().clone() };
        fields.push(f.as_ref().clone().with_name(name));
    }
    (Arc::new(Schema::new(fields)), types)
}

impl Join for Stream {
    fn join(self, right: Stream, left_keys: &[&str], right_keys: &[&str]) -> Stream {
        let (schema, types) = join_schema(&self, &right, left_keys, right_keys, "join");
        let li: Vec<usize> = left_keys.iter().filter_map(|k| self.schema().index_of(k).ok()).collect();
        let ri: Vec<usize> = right_keys.iter().filter_map(|k| right.schema().index_of(k).ok()).collect();
        let out = schema.clone();
        let factory: OperatorFactory = Arc::new(move |_ctx| {
            Ok(Box::new(StreamJoinOperator::new(li.clone(), ri.clone(), types.clone(), out.clone())?))
        });
        let left = self.keyed_by(left_keys);
        let right = right.keyed_by(right_keys);
        left.transform_multi("join", &[&right], vec![schema], factory)
    }
}
