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
    /// Whether a column of type `t` can be read as `Self` (checked at plan
    /// time). By default: whenever Arrow can cast it.
    fn accepts(t: &DataType) -> bool {
        arrow::compute::can_cast_types(t, &Self::data_type())
    }
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
    ($t:ty, $dt:expr, $accepts:expr, $read:expr, $arr:ty) => {
        impl FromArrow for $t {
            fn data_type() -> DataType {
                $dt
            }
            fn accepts(t: &DataType) -> bool {
                $accepts(t)
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
/// Numbers, dates and timestamps read as numbers; strings are not parsed.
fn numeric(t: &DataType) -> bool {
    t.is_numeric() || t.is_temporal()
}

arrow_scalar!(
    i64,
    DataType::Int64,
    numeric,
    |a: &dyn Array, i| a.as_primitive::<Int64Type>().value(i),
    Int64Array
);
arrow_scalar!(
    f64,
    DataType::Float64,
    numeric,
    |a: &dyn Array, i| a.as_primitive::<Float64Type>().value(i),
    Float64Array
);
arrow_scalar!(
    bool,
    DataType::Boolean,
    |t: &DataType| t == &DataType::Boolean,
    |a: &dyn Array, i| a.as_boolean().value(i),
    BooleanArray
);
arrow_scalar!(
    String,
    DataType::Utf8,
    |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8),
    |a: &dyn Array, i| a.as_string::<i32>().value(i).to_string(),
    StringArray
);

/// A user-defined aggregate: typed values in, a typed result out. Nulls in
/// the input are skipped. `merge` must combine two partial states (sliding
/// windows merge panes, sessions merge when they overlap). The column is
/// read as [`AggregateFunction::Input`] (numbers, dates and timestamps cast
/// to `i64`/`f64`; strings as `String`, one allocation per value).
///
/// ```
/// use std::time::Duration;
/// use std::sync::Arc;
/// use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch};
/// use arrow::datatypes::{DataType, Field, Float64Type, Schema};
/// use sluice_operators::prelude::*;
///
/// /// Geometric mean: exp of the mean of the logs.
/// struct GeoMean;
/// impl AggregateFunction for GeoMean {
///     type Input = f64;
///     type Acc = (f64, u64); // sum of logs, count
///     type Output = Option<f64>; // null for a window with no values
///     fn name(&self) -> &str { "geomean" }
///     fn accumulate(&self, acc: &mut (f64, u64), v: f64) { acc.0 += v.ln(); acc.1 += 1 }
///     fn merge(&self, acc: &mut (f64, u64), other: &(f64, u64)) { acc.0 += other.0; acc.1 += other.1 }
///     fn finish(&self, acc: &(f64, u64)) -> Option<f64> {
///         (acc.1 > 0).then(|| (acc.0 / acc.1 as f64).exp())
///     }
/// }
///
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("ts", DataType::Int64, false),
///     Field::new("price", DataType::Float64, false),
/// ]));
/// let batch = RecordBatch::try_new(schema.clone(), vec![
///     Arc::new(Int64Array::from(vec![0, 10, 20])),
///     Arc::new(Float64Array::from(vec![1.0, 2.0, 4.0])),
/// ]).unwrap();
/// let env = Env::new();
/// let out = env
///     .from_batches("prices", schema, vec![batch])
///     .watermarks(bounded_out_of_orderness("ts", Duration::ZERO))
///     .window(WindowSpec::tumbling(Duration::from_secs(1)))
///     .aggregate([udaf("price", GeoMean)])
///     .collect();
/// env.execute().unwrap();
/// let b = out.concat();
/// assert_eq!(b.schema().field(2).name(), "geomean_price");
/// let g = b.column(2).as_primitive::<Float64Type>().value(0);
/// assert!((g - 2.0).abs() < 1e-9);
/// ```
pub trait AggregateFunction: Send + Sync + 'static {
    /// What is read from the input column.
    type Input: FromArrow;
    /// The running state per key and window (serializable: checkpoints
    /// store it).
    type Acc: Clone + Default + Send + serde::Serialize + serde::de::DeserializeOwned + 'static;
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
    fn accepts(&self, input: &DataType) -> bool;
    fn input_type(&self) -> DataType;
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
    fn accepts(&self, input: &DataType) -> bool {
        F::Input::accepts(input)
    }
    fn input_type(&self) -> DataType {
        F::Input::data_type()
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
        let (src, dst) = (src as usize, dst as usize);
        // Borrow both slots at once rather than cloning the source state.
        match src.cmp(&dst) {
            std::cmp::Ordering::Less => {
                let (lo, hi) = self.accs.split_at_mut(dst);
                self.f.merge(&mut hi[0], &lo[src]);
            }
            std::cmp::Ordering::Greater => {
                let (lo, hi) = self.accs.split_at_mut(src);
                self.f.merge(&mut lo[dst], &hi[0]);
            }
            std::cmp::Ordering::Equal => {}
        }
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
    fn state(&self, slots: &[u32]) -> Result<Vec<ArrayRef>> {
        let encoded = slots
            .iter()
            .map(|s| serde_json::to_vec(&self.accs[*s as usize]))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Checkpoint(format!("{}: encoding state: {e}", self.f.name())))?;
        Ok(vec![Arc::new(arrow::array::BinaryArray::from_iter_values(
            encoded,
        ))])
    }
    fn merge_state(&mut self, state: &[ArrayRef], slots: &[u32]) -> Result<()> {
        use arrow::array::AsArray;
        let col = state
            .first()
            .ok_or_else(|| Error::Checkpoint("udaf state column missing".into()))?
            .as_binary::<i32>();
        for (i, s) in slots.iter().enumerate() {
            let other: F::Acc = serde_json::from_slice(col.value(i)).map_err(|e| {
                Error::Checkpoint(format!("{}: decoding state: {e}", self.f.name()))
            })?;
            self.f.merge(&mut self.accs[*s as usize], &other);
        }
        Ok(())
    }
}
