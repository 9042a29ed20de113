//! Joins of two keyed streams on equal key columns. Both inputs are
//! hash-partitioned on their keys, so equal keys meet in one subtask.
//!
//! - [`Join::join`]: unbounded inner join (symmetric hash join): each
//!   matching pair is emitted once, as soon as both rows have arrived. State
//!   holds every row of both inputs; use it on bounded inputs or small
//!   streams.
//!
//! - [`Join::window_join`]: pairs whose event times fall in the same
//!   tumbling or sliding window, emitted when the window fires (Flink's
//!   window join), with `window_start` and `window_end` appended.
//! - [`Join::interval_join`]: pairs with `right.ts` in
//!   `[left.ts + lower, left.ts + upper]`, emitted as soon as both are there;
//!   rows behind the watermark are dropped (as in Flink).
//!
//! Output: every left column, then every right column; a right column whose
//! name is taken by a left one is renamed `right_NAME` (and appended window
//! columns whose names are taken become `join_window_start/end`).

mod buckets;
mod stream_join;
mod time_join;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_engine::graph::OperatorFactory;
use sluice_engine::Stream;

use crate::plan_error;
pub use stream_join::StreamJoinOperator;
use time_join::Mode;
pub use time_join::TimeJoinOperator;

/// The windows of a window join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinWindow {
    /// Tumbling windows of `size_ms`.
    Tumbling {
        /// Window length (ms).
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `slide_ms`.
    Sliding {
        /// Window length (ms).
        size_ms: i64,
        /// Distance between starts (ms).
        slide_ms: i64,
    },
}

impl JoinWindow {
    /// Tumbling windows.
    pub fn tumbling(size: std::time::Duration) -> Self {
        JoinWindow::Tumbling {
            size_ms: size.as_millis() as i64,
        }
    }
    /// Sliding windows.
    pub fn sliding(size: std::time::Duration, slide: std::time::Duration) -> Self {
        JoinWindow::Sliding {
            size_ms: size.as_millis() as i64,
            slide_ms: slide.as_millis() as i64,
        }
    }
}

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

    /// Inner join of rows with equal keys in the same event-time window.
    fn window_join(
        self,
        right: Stream,
        left_keys: &[&str],
        right_keys: &[&str],
        window: JoinWindow,
    ) -> Stream;

    /// Inner join of rows with equal keys where `right.ts` lies in
    /// `[left.ts + lower_ms, left.ts + upper_ms]` (`lower_ms` may be negative).
    fn interval_join(
        self,
        right: Stream,
        left_keys: &[&str],
        right_keys: &[&str],
        lower_ms: i64,
        upper_ms: i64,
    ) -> Stream;
}

/// Checks the key columns and computes the output schema.
pub(crate) fn join_schema(
    left: &Stream,
    right: &Stream,
    lk: &[&str],
    rk: &[&str],
    verb: &str,
) -> (SchemaRef, Vec<DataType>) {
    let (ls, rs) = (left.schema(), right.schema());
    let err = |m: String| left.report(plan_error(left, verb, m));
    if lk.len() != rk.len() || lk.is_empty() {
        err(format!(
            "needs the same number of left and right keys, got {lk:?} and {rk:?}"
        ));
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
            (Err(_), _) => err(format!(
                "unknown left key column '{l}'; the left input has {}",
                left.column_list()
            )),
            (_, Err(_)) => err(format!(
                "unknown right key column '{r}'; the right input has {}",
                right.column_list()
            )),
        }
    }
    let mut fields: Vec<Field> = ls.fields().iter().map(|f| f.as_ref().clone()).collect();
    for f in rs.fields() {
        let taken = fields.iter().any(|x| x.name() == f.name());
        let name = if taken {
            format!("right_{}", f.name())
        } else {
            f.name().clone()
        };
        fields.push(f.as_ref().clone().with_name(name));
    }
    (Arc::new(Schema::new(fields)), types)
}

/// Column indices of `keys` in `s` (unknown ones were reported by `join_schema`).
fn key_indices(s: &Stream, keys: &[&str]) -> Vec<usize> {
    keys.iter()
        .filter_map(|k| s.schema().index_of(k).ok())
        .collect()
}

/// Hash-partitions both inputs on their keys and adds the two-input operator.
fn wire(
    left: Stream,
    right: Stream,
    lk: &[&str],
    rk: &[&str],
    verb: &str,
    schema: SchemaRef,
    factory: OperatorFactory,
) -> Stream {
    let l = left.keyed_by(lk);
    let r = right.keyed_by(rk);
    l.transform_multi(verb, &[&r], vec![schema], factory)
}

impl Join for Stream {
    fn join(self, right: Stream, left_keys: &[&str], right_keys: &[&str]) -> Stream {
        let (schema, types) = join_schema(&self, &right, left_keys, right_keys, "join");
        let (li, ri) = (
            key_indices(&self, left_keys),
            key_indices(&right, right_keys),
        );
        let out = schema.clone();
        let factory: OperatorFactory = Arc::new(move |_ctx| {
            Ok(Box::new(StreamJoinOperator::new(
                li.clone(),
                ri.clone(),
                types.clone(),
                out.clone(),
            )?))
        });
        wire(self, right, left_keys, right_keys, "join", schema, factory)
    }

    fn window_join(
        self,
        right: Stream,
        left_keys: &[&str],
        right_keys: &[&str],
        window: JoinWindow,
    ) -> Stream {
        let (size, slide) = match window {
            JoinWindow::Tumbling { size_ms } => (size_ms, size_ms),
            JoinWindow::Sliding { size_ms, slide_ms } => (size_ms, slide_ms),
        };
        if size <= 0 || slide <= 0 || slide > size {
            self.report(plan_error(
                &self,
                "window_join",
                format!("invalid window: size {size} ms, slide {slide} ms"),
            ));
        }
        time_join(
            self,
            right,
            left_keys,
            right_keys,
            "window_join",
            Mode::Window { size, slide },
        )
    }

    fn interval_join(
        self,
        right: Stream,
        left_keys: &[&str],
        right_keys: &[&str],
        lower_ms: i64,
        upper_ms: i64,
    ) -> Stream {
        if lower_ms > upper_ms {
            self.report(plan_error(
                &self,
                "interval_join",
                format!("lower bound {lower_ms} ms is above upper bound {upper_ms} ms"),
            ));
        }
        time_join(
            self,
            right,
            left_keys,
            right_keys,
            "interval_join",
            Mode::Interval {
                lower: lower_ms,
                upper: upper_ms,
            },
        )
    }
}

fn time_join(
    left: Stream,
    right: Stream,
    lk: &[&str],
    rk: &[&str],
    verb: &'static str,
    mode: Mode,
) -> Stream {
    let (schema, types) = join_schema(&left, &right, lk, rk, verb);
    let mut time = [0usize; 2];
    for (i, s) in [&left, &right].into_iter().enumerate() {
        match s.event_time().and_then(|t| s.schema().index_of(t).ok()) {
            Some(t) => time[i] = t,
            None => left.report(plan_error(
                s,
                verb,
                format!(
                    "no watermark strategy on the {} input: call .watermarks(...) before {verb}",
                    ["left", "right"][i]
                ),
            )),
        }
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let windowed = matches!(mode, Mode::Window { .. });
    if windowed {
        for n in ["window_start", "window_end"] {
            let taken = fields.iter().any(|f| f.name() == n);
            let name = if taken {
                format!("join_{n}")
            } else {
                n.to_string()
            };
            fields.push(Field::new(
                name,
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                false,
            ));
        }
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let (li, ri) = (key_indices(&left, lk), key_indices(&right, rk));
    let widths = [left.schema().fields().len(), right.schema().fields().len()];
    let out = schema.clone();
    let factory: OperatorFactory = Arc::new(move |_ctx| {
        Ok(Box::new(TimeJoinOperator::new(
            mode,
            [li.clone(), ri.clone()],
            time,
            widths,
            types.clone(),
            out.clone(),
        )?))
    });
    let left_time = left.event_time().map(str::to_string);
    let joined = wire(left, right, lk, rk, verb, schema, factory);
    if windowed {
        let end = joined.schema().fields().last().map(|f| f.name().clone());
        joined.with_event_time(end)
    } else {
        joined.with_event_time(left_time)
    }
}
