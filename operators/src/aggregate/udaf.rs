//! User-defined aggregates: a small typed trait (accumulate, merge, finish)
//! adapted to the columnar accumulator interface.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use sluice_engine::{Error, Result};

use super::accumulators::Accumulator;

/// A value read from an Arrow column (numeric columns are cast as needed).
pub trait FromArrow: Sized + 'static {
    /// The Arrow type the column is cast to before reading.
    fn data_type() -> DataType;
    /// Reads row `i` of `a` (already of [`FromArrow::data_type`]); `None` for null.
    fn read(a: &dyn Array, i: usize) -> Option<Self>;
}

/// A value written to an Arrow column.
pub trait ToArrow: Sized + 'static {
    /// The output column's type.
    fn data_type() -> DataType;
    /// Builds a column.
    fn to_array(values: Vec<Self>) -> ArrayRef;
}

macro_rules! arrow_scalar {
    ($t:ty, $dt:expr, $read:expr, $arr:ty) => {
        impl FromArrow for $t {
            fn data_type() -> DataType {
                $dt
            }
            fn read(a: &dyn Array, i: usize) -> Option<Self> {
                if a.is_null(i) {
                    None
                } else {
                    Some($read(a, i))
                }
            }
        }
        impl ToArrow for $t {
            fn data_type() -> DataType {
                $dt
            }
            fn to_array(values: Vec<Self>) -> ArrayRef {
                Arc::new(<$arr>::from(values))
            }
        }
        impl ToArrow for Option<$t> {
            fn data_type() -> DataType {
                $dt
            }
            fn to_array(values: Vec<Self>) -> ArrayRef {
                Arc::new(<$arr>::from(values))
            }
        }
    };
}
arrow_scalar!(
    i64,
    DataType::Int64,
    |a: &dyn Array, i| a.as_primitive::<Int64Type>().value(i),
    Int64Array
);
arrow_scalar!(
    f64,
    DataType::Float64,
    |a: &dyn Array, i| a.as_primitive::<Float64Type>().value(i),
    Float64Array
);
arrow_scalar!(
    bool,
    DataType::Boolean,
    |a: &dyn Array, i| a.as_boolean().value(i),
    BooleanArray
);
arrow_scalar!(
    String,
    DataType::Utf8,
    |a: &dyn Array, i| a.as_string::<i32>().value(i).to_string(),
    StringArray
);

/// A user-defined aggregate. Nulls in the input are skipped.
///
/// ```
/// use sluice_operators::prelude::*;
///
/// /// Sum of squares.
/// struct SumSquares;
/// impl AggregateFunction for SumSquares {
///     type Input = f64;
///     type Acc = f64;
///     type Output = f64;
///     fn name(&self) -> &str { "sum_squares" }
///     fn accumulate(&self, acc: &mut f64, v: f64) { *acc += v * v }
///     fn merge(&self, acc: &mut f64, other: &f64) { *acc += other }
///     fn finish(&self, acc: &f64) -> f64 { *acc }
/// }
/// let agg = udaf("price", SumSquares);
/// assert_eq!(agg.output_name(), "sum_squares_price");
/// ```
pub trait AggregateFunction: Send + Sync + 'static {
    /// What is read from the input column.
    type Input: FromArrow;
    /// The running state per key and window.
    type Acc: Clone + Default + Send + 'static;
    /// The result type.
    type Output: ToArrow;
    /// Name, used for the default output column `NAME_COL`.
    fn name(&self) -> &str;
    /// Adds one value.
    fn accumulate(&self, acc: &mut Self::Acc, value: Self::Input);
    /// Folds `other` into `acc` (sliding panes and session merges need it).
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc);
    /// The result.
    fn finish(&self, acc: &Self::Acc) -> Self::Output;
}

/// Object-safe view of a typed aggregate.
pub(crate) trait DynUdaf: Send + Sync {
    fn name(&self) -> &str;
    fn output_type(&self) -> DataType;
    fn accumulator(&self) -> Box<dyn Accumulator>;
}

pub(crate) struct Typed<F>(pub Arc<F>);

impl<F: AggregateFunction> DynUdaf for Typed<F> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn output_type(&self) -> DataType {
        F::Output::data_type()
    }
    fn accumulator(&self) -> Box<dyn Accumulator> {
        Box::new(UdafAccumulator::<F> {
            f: self.0.clone(),
            accs: Vec::new(),
        })
    }
}

struct UdafAccumulator<F: AggregateFunction> {
    f: Arc<F>,
    accs: Vec<F::Acc>,
}

impl<F: AggregateFunction> Accumulator for UdafAccumulator<F> {
    fn resize(&mut self, slots: usize) {
        self.accs.resize(slots, F::Acc::default());
    }
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], slots: &[u32]) -> Result<()> {
        let v = values.ok_or_else(|| Error::Internal("udaf without input".into()))?;
        let v = cast(v, &F::Input::data_type())?;
        for (r, s) in rows.iter().zip(slots) {
            if let Some(x) = F::Input::read(v.as_ref(), *r as usize) {
                self.f.accumulate(&mut self.accs[*s as usize], x);
            }
        }
        Ok(())
    }
    fn merge(&mut self, src: u32, dst: u32) {
        let other = self.accs[src as usize].clone();
        self.f.merge(&mut self.accs[dst as usize], &other);
    }
    fn reset(&mut self, slot: u32) {
        self.accs[slot as usize] = F::Acc::default();
    }
    fn evaluate(&self, slots: &[u32]) -> Result<ArrayRef> {
        Ok(F::Output::to_array(
            slots
                .iter()
                .map(|s| self.f.finish(&self.accs[*s as usize]))
                .collect(),
        ))
    }
}
