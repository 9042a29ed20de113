//! Columnar accumulators: one value per slot in plain vectors.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, GenericStringArray, Int64Array, OffsetSizeTrait,
    PrimitiveArray,
};
use arrow::buffer::NullBuffer;
use arrow::compute::cast;
use arrow::datatypes::*;
use sluice_engine::{Error, Result};

use super::AggKind;

/// Per-slot aggregate state, updated a batch at a time.
pub(crate) trait Accumulator: Send {
    /// Makes room for `slots` slots; new slots are empty.
    fn resize(&mut self, slots: usize);
    /// Adds `values[rows[i]]` to slot `slots[i]` for every i.
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], slots: &[u32]) -> Result<()>;
    /// Folds slot `src` into slot `dst`.
    fn merge(&mut self, src: u32, dst: u32);
    /// Empties a slot for reuse.
    fn reset(&mut self, slot: u32);
    /// The results of `slots`, in order.
    fn evaluate(&self, slots: &[u32]) -> Result<ArrayRef>;
    /// The state of `slots` as arrays, for checkpoints. By default the
    /// result itself, which is enough where folding a result back in with
    /// `update` restores the state (min, max).
    fn state(&self, slots: &[u32]) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(slots)?])
    }
    /// Folds row `i` of `state` (as produced by [`Accumulator::state`])
    /// into slot `slots[i]`.
    fn merge_state(&mut self, state: &[ArrayRef], slots: &[u32]) -> Result<()> {
        let rows: Vec<u32> = (0..slots.len() as u32).collect();
        self.update(state.first(), &rows, slots)
    }
    /// How many arrays [`Accumulator::state`] returns.
    fn state_len(&self) -> usize {
        1
    }
}

/// The accumulation type of `sum`/`avg` (Int64 or Float64) and how an
/// input column of any accepted type is read as it.
pub(crate) trait SumType: ArrowPrimitiveType + Sized {
    fn convert(values: Option<&ArrayRef>) -> Result<PrimitiveArray<Self>>;
    /// A sum column as the output schema declares it.
    fn result(sums: PrimitiveArray<Self>) -> Result<PrimitiveArray<Self>> {
        Ok(sums)
    }
}

fn input(values: Option<&ArrayRef>) -> Result<&ArrayRef> {
    values.ok_or_else(|| Error::Internal("aggregate without its input column".into()))
}

impl SumType for Int64Type {
    /// Integers up to 32 bits and Int64 widen to Int64 (exactly). UInt64
    /// sums as [`Decimal128Type`] instead.
    fn convert(values: Option<&ArrayRef>) -> Result<Int64Array> {
        let v = input(values)?;
        macro_rules! widen {
            ($t:ty) => {
                v.as_primitive::<$t>().unary::<_, Int64Type>(i64::from)
            };
        }
        Ok(match v.data_type() {
            DataType::Int64 => v.as_primitive::<Int64Type>().clone(),
            DataType::Int8 => widen!(Int8Type),
            DataType::Int16 => widen!(Int16Type),
            DataType::Int32 => widen!(Int32Type),
            DataType::UInt8 => widen!(UInt8Type),
            DataType::UInt16 => widen!(UInt16Type),
            DataType::UInt32 => widen!(UInt32Type),
            other => {
                return Err(Error::Internal(format!(
                    "Int64 sum over {other} passed planning"
                )))
            }
        })
    }
}

/// The result type of `sum` over UInt64: every UInt64 sum fits it (38
/// digits hold 5 × 10^18 values of `u64::MAX`).
pub(crate) const UINT64_SUM_TYPE: DataType = DataType::Decimal128(38, 0);

impl SumType for Decimal128Type {
    /// UInt64 widens to a 128-bit integer (decimal with scale 0).
    fn convert(values: Option<&ArrayRef>) -> Result<PrimitiveArray<Decimal128Type>> {
        let v = input(values)?;
        match v.data_type() {
            DataType::UInt64 => Ok(v
                .as_primitive::<UInt64Type>()
                .unary::<_, Decimal128Type>(i128::from)
                .with_data_type(UINT64_SUM_TYPE)),
            // Restored state is already decimal.
            DataType::Decimal128(_, 0) => Ok(v.as_primitive::<Decimal128Type>().clone()),
            other => Err(Error::Internal(format!(
                "decimal sum over {other} passed planning"
            ))),
        }
    }
    /// Decimal(38, 0); a sum past 38 digits (beyond 5 × 10^18 values of
    /// `u64::MAX`) is an overflow rather than an invalid decimal.
    fn result(sums: PrimitiveArray<Self>) -> Result<PrimitiveArray<Self>> {
        let sums = sums.with_data_type(UINT64_SUM_TYPE);
        sums.validate_decimal_precision(38).map_err(|_| {
            Error::Overflow(format!("the sum is past the range of {UINT64_SUM_TYPE}"))
        })?;
        Ok(sums)
    }
}

impl SumType for Float64Type {
    /// Floats and integers convert exactly enough to Float64 (a plain cast).
    fn convert(values: Option<&ArrayRef>) -> Result<Float64Array> {
        let v = input(values)?;
        let v = if v.data_type() == &DataType::Float64 {
            v.clone()
        } else {
            cast(v, &DataType::Float64)?
        };
        Ok(v.as_primitive::<Float64Type>().clone())
    }
}

fn nulls_from(has: &[bool], slots: &[u32]) -> Option<NullBuffer> {
    let valid: Vec<bool> = slots.iter().map(|s| has[*s as usize]).collect();
    if valid.iter().all(|v| *v) {
        None
    } else {
        Some(NullBuffer::from(valid))
    }
}

#[derive(Default)]
struct Count(Vec<i64>);

impl Accumulator for Count {
    fn resize(&mut self, slots: usize) {
        self.0.resize(slots, 0);
    }
    fn update(&mut self, _values: Option<&ArrayRef>, _rows: &[u32], slots: &[u32]) -> Result<()> {
        for s in slots {
            self.0[*s as usize] += 1;
        }
        Ok(())
    }
    fn merge(&mut self, src: u32, dst: u32) {
        self.0[dst as usize] += self.0[src as usize];
    }
    fn reset(&mut self, slot: u32) {
        self.0[slot as usize] = 0;
    }
    fn evaluate(&self, slots: &[u32]) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from_iter_values(
            slots.iter().map(|s| self.0[*s as usize]),
        )))
    }
    fn merge_state(&mut self, state: &[ArrayRef], slots: &[u32]) -> Result<()> {
        let c = state_column(state, 0)?.as_primitive::<Int64Type>();
        for (i, s) in slots.iter().enumerate() {
            self.0[*s as usize] += c.value(i);
        }
        Ok(())
    }
}

fn state_column(state: &[ArrayRef], i: usize) -> Result<&ArrayRef> {
    state
        .get(i)
        .ok_or_else(|| Error::Checkpoint(format!("aggregate state lacks column {i}")))
}

/// Sum over Int64, Decimal128 (UInt64 inputs) or Float64; `avg`
/// additionally counts. Integer sums never wrap: an add that overflows
/// marks its slot, and reading that slot is an [`Error::Overflow`].
struct Sum<T: ArrowPrimitiveType> {
    sums: Vec<T::Native>,
    counts: Vec<i64>,
    has: Vec<bool>,
    /// Slots whose sum overflowed (in a merge, which cannot fail).
    overflowed: Vec<bool>,
    average: bool,
}

impl<T: ArrowPrimitiveType> Sum<T> {
    fn new(average: bool) -> Self {
        Sum {
            sums: Vec::new(),
            counts: Vec::new(),
            has: Vec::new(),
            overflowed: Vec::new(),
            average,
        }
    }

    fn overflow(&self) -> Error {
        Error::Overflow(format!(
            "the sum is past the range of {} (its result type); sum a Float64 cast of the column for an approximate sum",
            T::DATA_TYPE
        ))
    }

    /// Fails if any of `slots` overflowed.
    fn check(&self, slots: &[u32]) -> Result<()> {
        if slots.iter().any(|s| self.overflowed[*s as usize]) {
            return Err(self.overflow());
        }
        Ok(())
    }
}

impl<T> Accumulator for Sum<T>
where
    T: SumType,
    T::Native: ArrowNativeTypeOp + ToF64,
{
    fn resize(&mut self, slots: usize) {
        self.sums.resize(slots, T::Native::ZERO);
        self.counts.resize(slots, 0);
        self.has.resize(slots, false);
        self.overflowed.resize(slots, false);
    }
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], slots: &[u32]) -> Result<()> {
        let v = T::convert(values)?;
        let vals = v.values();
        let nulls = v.nulls().filter(|n| n.null_count() > 0);
        for (r, s) in rows.iter().zip(slots) {
            let (r, s) = (*r as usize, *s as usize);
            if nulls.is_some_and(|n| n.is_null(r)) {
                continue;
            }
            // Floats never fail here (they go to infinity, as IEEE says).
            self.sums[s] = self.sums[s]
                .add_checked(vals[r])
                .map_err(|_| self.overflow())?;
            self.counts[s] += 1;
            self.has[s] = true;
        }
        Ok(())
    }
    fn merge(&mut self, src: u32, dst: u32) {
        let (src, dst) = (src as usize, dst as usize);
        match self.sums[dst].add_checked(self.sums[src]) {
            Ok(v) => self.sums[dst] = v,
            Err(_) => self.overflowed[dst] = true,
        }
        self.overflowed[dst] |= self.overflowed[src];
        self.counts[dst] += self.counts[src];
        self.has[dst] |= self.has[src];
    }
    fn reset(&mut self, slot: u32) {
        let s = slot as usize;
        self.sums[s] = T::Native::ZERO;
        self.counts[s] = 0;
        self.has[s] = false;
        self.overflowed[s] = false;
    }
    fn evaluate(&self, slots: &[u32]) -> Result<ArrayRef> {
        self.check(slots)?;
        let nulls = nulls_from(&self.has, slots);
        if self.average {
            let v: Vec<f64> = slots
                .iter()
                .map(|s| {
                    let s = *s as usize;
                    if self.counts[s] == 0 {
                        0.0
                    } else {
                        self.sums[s].to_f64() / self.counts[s] as f64
                    }
                })
                .collect();
            Ok(Arc::new(Float64Array::new(v.into(), nulls)))
        } else {
            let v: Vec<T::Native> = slots.iter().map(|s| self.sums[*s as usize]).collect();
            Ok(Arc::new(T::result(PrimitiveArray::<T>::new(
                v.into(),
                nulls,
            ))?))
        }
    }
    fn state(&self, slots: &[u32]) -> Result<Vec<ArrayRef>> {
        self.check(slots)?;
        let v: Vec<T::Native> = slots.iter().map(|s| self.sums[*s as usize]).collect();
        let sums = T::result(PrimitiveArray::<T>::new(
            v.into(),
            nulls_from(&self.has, slots),
        ))?;
        let counts = Int64Array::from_iter_values(slots.iter().map(|s| self.counts[*s as usize]));
        Ok(vec![Arc::new(sums), Arc::new(counts)])
    }
    fn merge_state(&mut self, state: &[ArrayRef], slots: &[u32]) -> Result<()> {
        let sums = state_column(state, 0)?.as_primitive::<T>();
        let counts = state_column(state, 1)?.as_primitive::<Int64Type>();
        for (i, s) in slots.iter().enumerate() {
            let s = *s as usize;
            if sums.is_valid(i) {
                match self.sums[s].add_checked(sums.value(i)) {
                    Ok(v) => self.sums[s] = v,
                    Err(_) => self.overflowed[s] = true,
                }
                self.has[s] = true;
            }
            self.counts[s] += counts.value(i);
        }
        Ok(())
    }
    fn state_len(&self) -> usize {
        2
    }
}

/// Lossy conversion for averages.
pub(crate) trait ToF64 {
    fn to_f64(self) -> f64;
}
impl ToF64 for i128 {
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl ToF64 for i64 {
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl ToF64 for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

struct MinMax<T: ArrowPrimitiveType> {
    vals: Vec<T::Native>,
    has: Vec<bool>,
    max: bool,
    data_type: DataType,
}

impl<T: ArrowPrimitiveType> Accumulator for MinMax<T> {
    fn resize(&mut self, slots: usize) {
        self.vals.resize(slots, T::Native::default());
        self.has.resize(slots, false);
    }
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], slots: &[u32]) -> Result<()> {
        let v = values.ok_or_else(|| Error::Internal("min/max without input".into()))?;
        let v = v.as_primitive::<T>();
        let vals = v.values();
        let nulls = v.nulls().filter(|n| n.null_count() > 0);
        for (r, s) in rows.iter().zip(slots) {
            let (r, s) = (*r as usize, *s as usize);
            if nulls.is_some_and(|n| n.is_null(r)) {
                continue;
            }
            let x = vals[r];
            let better = !self.has[s]
                || if self.max {
                    x.is_gt(self.vals[s])
                } else {
                    x.is_lt(self.vals[s])
                };
            if better {
                self.vals[s] = x;
                self.has[s] = true;
            }
        }
        Ok(())
    }
    fn merge(&mut self, src: u32, dst: u32) {
        let (src, dst) = (src as usize, dst as usize);
        if !self.has[src] {
            return;
        }
        let x = self.vals[src];
        let better = !self.has[dst]
            || if self.max {
                x.is_gt(self.vals[dst])
            } else {
                x.is_lt(self.vals[dst])
            };
        if better {
            self.vals[dst] = x;
            self.has[dst] = true;
        }
    }
    fn reset(&mut self, slot: u32) {
        self.has[slot as usize] = false;
    }
    fn evaluate(&self, slots: &[u32]) -> Result<ArrayRef> {
        let v: Vec<T::Native> = slots.iter().map(|s| self.vals[*s as usize]).collect();
        let a = PrimitiveArray::<T>::new(v.into(), nulls_from(&self.has, slots))
            .with_data_type(self.data_type.clone());
        Ok(Arc::new(a))
    }
}

/// Whether `min`/`max` support columns of type `t`.
pub(crate) fn min_max_supported(t: &DataType) -> bool {
    min_max(t, false).is_ok()
}

fn min_max(t: &DataType, max: bool) -> Result<Box<dyn Accumulator>> {
    macro_rules! mm {
        ($ty:ty) => {
            Box::new(MinMax::<$ty> {
                vals: Vec::new(),
                has: Vec::new(),
                max,
                data_type: t.clone(),
            })
        };
    }
    Ok(match t {
        DataType::Int8 => mm!(Int8Type),
        DataType::Int16 => mm!(Int16Type),
        DataType::Int32 => mm!(Int32Type),
        DataType::Int64 => mm!(Int64Type),
        DataType::UInt8 => mm!(UInt8Type),
        DataType::UInt16 => mm!(UInt16Type),
        DataType::UInt32 => mm!(UInt32Type),
        DataType::UInt64 => mm!(UInt64Type),
        DataType::Float16 => mm!(Float16Type),
        DataType::Float32 => mm!(Float32Type),
        DataType::Float64 => mm!(Float64Type),
        DataType::Date32 => mm!(Date32Type),
        DataType::Date64 => mm!(Date64Type),
        DataType::Timestamp(TimeUnit::Second, _) => mm!(TimestampSecondType),
        DataType::Timestamp(TimeUnit::Millisecond, _) => mm!(TimestampMillisecondType),
        DataType::Timestamp(TimeUnit::Microsecond, _) => mm!(TimestampMicrosecondType),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => mm!(TimestampNanosecondType),
        DataType::Utf8 => Box::new(StrMinMax::<i32>::new(max)),
        DataType::LargeUtf8 => Box::new(StrMinMax::<i64>::new(max)),
        other => {
            return Err(Error::Config(format!(
                "min/max are not supported on {other}"
            )))
        }
    })
}

/// Min/max over strings: one reusable `String` per slot, rewritten in place
/// only when a better value arrives (no allocation once its capacity fits).
struct StrMinMax<O: OffsetSizeTrait> {
    vals: Vec<String>,
    has: Vec<bool>,
    max: bool,
    _offsets: std::marker::PhantomData<O>,
}

impl<O: OffsetSizeTrait> StrMinMax<O> {
    fn new(max: bool) -> Self {
        StrMinMax {
            vals: Vec::new(),
            has: Vec::new(),
            max,
            _offsets: std::marker::PhantomData,
        }
    }

    fn better(&self, x: &str, slot: usize) -> bool {
        !self.has[slot]
            || if self.max {
                x > self.vals[slot].as_str()
            } else {
                x < self.vals[slot].as_str()
            }
    }
}

impl<O: OffsetSizeTrait> Accumulator for StrMinMax<O> {
    fn resize(&mut self, slots: usize) {
        self.vals.resize(slots, String::new());
        self.has.resize(slots, false);
    }
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], slots: &[u32]) -> Result<()> {
        let v = input(values)?.as_string::<O>();
        for (r, s) in rows.iter().zip(slots) {
            let (r, s) = (*r as usize, *s as usize);
            if v.is_null(r) {
                continue;
            }
            let x = v.value(r);
            if self.better(x, s) {
                self.vals[s].clear();
                self.vals[s].push_str(x);
                self.has[s] = true;
            }
        }
        Ok(())
    }
    fn merge(&mut self, src: u32, dst: u32) {
        let (src, dst) = (src as usize, dst as usize);
        if src == dst || !self.has[src] {
            return;
        }
        // Borrow the source out instead of cloning it.
        let x = std::mem::take(&mut self.vals[src]);
        if self.better(&x, dst) {
            self.vals[dst].clear();
            self.vals[dst].push_str(&x);
            self.has[dst] = true;
        }
        self.vals[src] = x;
    }
    fn reset(&mut self, slot: u32) {
        self.has[slot as usize] = false;
    }
    fn evaluate(&self, slots: &[u32]) -> Result<ArrayRef> {
        let a: GenericStringArray<O> = slots
            .iter()
            .map(|s| {
                let s = *s as usize;
                self.has[s].then(|| self.vals[s].as_str())
            })
            .collect();
        Ok(Arc::new(a))
    }
}

pub(super) fn create(kind: &AggKind, input: Option<&DataType>) -> Result<Box<dyn Accumulator>> {
    let t = || input.ok_or_else(|| Error::Internal("aggregate without input type".into()));
    Ok(match kind {
        AggKind::Count => Box::new(Count::default()),
        AggKind::Sum if t()?.is_floating() => Box::new(Sum::<Float64Type>::new(false)),
        AggKind::Sum if t()? == &DataType::UInt64 => Box::new(Sum::<Decimal128Type>::new(false)),
        AggKind::Sum => Box::new(Sum::<Int64Type>::new(false)),
        // Averages of integers sum exactly (Int64, or 128 bits for UInt64)
        // and divide at the end.
        AggKind::Avg if t()?.is_floating() => Box::new(Sum::<Float64Type>::new(true)),
        AggKind::Avg if t()? == &DataType::UInt64 => Box::new(Sum::<Decimal128Type>::new(true)),
        AggKind::Avg => Box::new(Sum::<Int64Type>::new(true)),
        AggKind::Min => min_max(t()?, false)?,
        AggKind::Max => min_max(t()?, true)?,
        AggKind::Udaf(u) => u.accumulator(),
    })
}
