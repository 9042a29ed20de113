//! Aggregates for windows: `count`, `sum`, `min`, `max`, `avg` and
//! user-defined ones. State is columnar: an accumulator holds one value per
//! *slot* (a key in a window or pane) in plain vectors and is updated for a
//! whole batch from a list of slot indices, so per-record cost is an index
//! and an add — no per-group objects. Slots can be merged (sliding-window
//! panes, session merges) and reset for reuse.

mod accumulators;
mod udaf;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use sluice_engine::{Error, Result};

pub(crate) use accumulators::Accumulator;
pub use udaf::{AggregateFunction, FromArrow, ToArrow};

#[derive(Clone)]
pub(crate) enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    Udaf(Arc<dyn udaf::DynUdaf>),
}

/// One aggregate of a window: a function, its input column and an output name.
#[derive(Clone)]
pub struct AggregateExpr {
    pub(crate) kind: AggKind,
    pub(crate) column: Option<String>,
    alias: Option<String>,
}

impl std::fmt::Debug for AggregateExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.output_name())
    }
}

/// Number of records.
pub fn count() -> AggregateExpr {
    AggregateExpr {
        kind: AggKind::Count,
        column: None,
        alias: None,
    }
}

/// Sum of a numeric column (Int64 for integers, wrapping on overflow; Float64 for floats).
pub fn sum(col: &str) -> AggregateExpr {
    AggregateExpr {
        kind: AggKind::Sum,
        column: Some(col.into()),
        alias: None,
    }
}

/// Minimum of a numeric or timestamp column.
pub fn min(col: &str) -> AggregateExpr {
    AggregateExpr {
        kind: AggKind::Min,
        column: Some(col.into()),
        alias: None,
    }
}

/// Maximum of a numeric or timestamp column.
pub fn max(col: &str) -> AggregateExpr {
    AggregateExpr {
        kind: AggKind::Max,
        column: Some(col.into()),
        alias: None,
    }
}

/// Mean of a numeric column, as Float64.
pub fn avg(col: &str) -> AggregateExpr {
    AggregateExpr {
        kind: AggKind::Avg,
        column: Some(col.into()),
        alias: None,
    }
}

/// A user-defined aggregate over `col`.
pub fn udaf<F: AggregateFunction>(col: &str, f: F) -> AggregateExpr {
    AggregateExpr {
        kind: AggKind::Udaf(Arc::new(udaf::Typed(Arc::new(f)))),
        column: Some(col.into()),
        alias: None,
    }
}

impl AggregateExpr {
    /// Names the output column.
    pub fn alias(mut self, name: &str) -> Self {
        self.alias = Some(name.into());
        self
    }

    /// The output column name: the alias, or `count`, `sum_COL`, ...
    pub fn output_name(&self) -> String {
        if let Some(a) = &self.alias {
            return a.clone();
        }
        let prefix = match &self.kind {
            AggKind::Count => return "count".into(),
            AggKind::Sum => "sum",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::Avg => "avg",
            AggKind::Udaf(u) => u.name(),
        };
        format!("{prefix}_{}", self.column.as_deref().unwrap_or(""))
    }

    /// Checks the input column and returns (input index, output field).
    pub(crate) fn resolve(&self, input: &Schema) -> Result<(Option<usize>, Field)> {
        let name = self.output_name();
        let Some(c) = &self.column else {
            return Ok((None, Field::new(name, DataType::Int64, false)));
        };
        let idx = input.index_of(c).map_err(|_| {
            let names: Vec<_> = input.fields().iter().map(|f| f.name().as_str()).collect();
            Error::Config(format!(
                "unknown column '{c}' in {name}; the input has [{}]",
                names.join(", ")
            ))
        })?;
        let t = input.field(idx).data_type();
        let numeric = t.is_numeric();
        let out = match &self.kind {
            AggKind::Count => DataType::Int64,
            AggKind::Sum if numeric => {
                if t.is_floating() {
                    DataType::Float64
                } else {
                    DataType::Int64
                }
            }
            AggKind::Avg if numeric => DataType::Float64,
            AggKind::Min | AggKind::Max if numeric || matches!(t, DataType::Timestamp(..)) => {
                t.clone()
            }
            AggKind::Udaf(u) => u.output_type(),
            _ => {
                return Err(Error::Config(format!(
                    "{name} needs a numeric column; '{c}' is {t}"
                )))
            }
        };
        Ok((Some(idx), Field::new(name, out, true)))
    }

    /// A fresh accumulator for input type `input` (None for count).
    pub(crate) fn accumulator(&self, input: Option<&DataType>) -> Result<Box<dyn Accumulator>> {
        accumulators::create(&self.kind, input)
    }
}
