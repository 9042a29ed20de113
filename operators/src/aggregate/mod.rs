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
use sluice_engine::Result;

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

/// One aggregate of a window: a function, its input column and an output
/// name (`count`, `FUNCTION_COLUMN` such as `max_price`, or an alias).
///
/// ```
/// use std::time::Duration;
/// use serde::{Deserialize, Serialize};
/// use sluice_operators::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// struct Bid { auction: i64, price: i64, ts: i64 }
/// #[derive(Deserialize, Debug, PartialEq)]
/// struct Stats { auction: i64, bids: i64, sum_price: i64, min_price: i64, max_price: i64, avg_price: f64 }
///
/// let env = Env::new();
/// let bids = env.from_rows("bids", vec![
///     Bid { auction: 7, price: 10, ts: 100 },
///     Bid { auction: 7, price: 30, ts: 200 },
///     Bid { auction: 7, price: 20, ts: 300 },
/// ]);
/// let out = bids
///     .watermarks(WatermarkStrategy::ascending("ts"))
///     .key_by(["auction"])
///     .window(WindowSpec::tumbling(Duration::from_secs(1)))
///     .aggregate([count().alias("bids"), sum("price"), min("price"), max("price"), avg("price")])
///     .collect();
/// env.execute()?;
/// assert_eq!(out.rows::<Stats>()?, [Stats {
///     auction: 7, bids: 3, sum_price: 60, min_price: 10, max_price: 30, avg_price: 20.0,
/// }]);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
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

/// Number of records (rows, nulls included), as Int64.
pub fn count() -> AggregateExpr {
    AggregateExpr {
        kind: AggKind::Count,
        column: None,
        alias: None,
    }
}

/// Sum of an integer or float column, ignoring nulls: Int64 for signed
/// integers and unsigned ones up to 32 bits (a sum past the range of
/// Int64 fails the job with an overflow error naming the column; it never
/// wraps), `Decimal128(38, 0)` for UInt64 (exact: every UInt64 sum fits),
/// Float64 for floats. Null when a window holds no non-null value.
pub fn sum(col: &str) -> AggregateExpr {
    AggregateExpr {
        kind: AggKind::Sum,
        column: Some(col.into()),
        alias: None,
    }
}

/// Minimum of an integer, float, date, timestamp or string (Utf8, LargeUtf8)
/// column, ignoring nulls; the output keeps the input type.
pub fn min(col: &str) -> AggregateExpr {
    AggregateExpr {
        kind: AggKind::Min,
        column: Some(col.into()),
        alias: None,
    }
}

/// Maximum of an integer, float, date, timestamp or string (Utf8, LargeUtf8)
/// column, ignoring nulls; the output keeps the input type.
pub fn max(col: &str) -> AggregateExpr {
    AggregateExpr {
        kind: AggKind::Max,
        column: Some(col.into()),
        alias: None,
    }
}

/// Mean of an integer or float column as Float64, ignoring nulls (null when
/// a window holds no non-null value).
pub fn avg(col: &str) -> AggregateExpr {
    AggregateExpr {
        kind: AggKind::Avg,
        column: Some(col.into()),
        alias: None,
    }
}

/// A user-defined aggregate over `col` (see [`AggregateFunction`]); its
/// default output name is `NAME_COL`.
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

    /// Checks the input column against `input` and returns (input index,
    /// output field), or a plan-error message naming the aggregate, the
    /// column and (for a bad type) the column's type.
    pub(crate) fn resolve(
        &self,
        input: &Schema,
    ) -> std::result::Result<(Option<usize>, Field), String> {
        let name = self.output_name();
        let Some(c) = &self.column else {
            return Ok((None, Field::new(name, DataType::Int64, false)));
        };
        let idx = input.index_of(c).map_err(|_| {
            let names: Vec<_> = input.fields().iter().map(|f| f.name().as_str()).collect();
            format!(
                "unknown column '{c}' in {name}; the stream has [{}]",
                names.join(", ")
            )
        })?;
        let t = input.field(idx).data_type();
        let out = match &self.kind {
            AggKind::Count => Some(DataType::Int64),
            AggKind::Sum if t == &DataType::UInt64 => Some(accumulators::UINT64_SUM_TYPE),
            AggKind::Sum if is_integer(t) => Some(DataType::Int64),
            AggKind::Sum | AggKind::Avg if is_integer(t) || is_float(t) => Some(DataType::Float64),
            AggKind::Min | AggKind::Max if accumulators::min_max_supported(t) => Some(t.clone()),
            AggKind::Udaf(u) if u.accepts(t) => Some(u.output_type()),
            _ => None,
        };
        let Some(out) = out else {
            let wanted = match &self.kind {
                AggKind::Min | AggKind::Max => {
                    "an integer, float, date, timestamp or string column".to_string()
                }
                AggKind::Udaf(u) => format!("a column readable as {}", u.input_type()),
                _ => "an integer or float column".to_string(),
            };
            return Err(format!("{name} needs {wanted}; '{c}' is {t}"));
        };
        Ok((Some(idx), Field::new(name, out, true)))
    }

    /// A fresh accumulator for input type `input` (None for count).
    pub(crate) fn accumulator(&self, input: Option<&DataType>) -> Result<Box<dyn Accumulator>> {
        accumulators::create(&self.kind, input)
    }
}

/// Integer types `sum` accepts (summed as Int64, UInt64 as a decimal).
fn is_integer(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

/// Float types `sum` and `avg` accept (summed as Float64).
fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}
