//! Batch evaluation of expressions with Arrow kernels. Sub-results are
//! either whole columns or one-row scalars handed to the kernels as scalar
//! `Datum`s, so literals and literal-only sub-trees are never expanded to
//! the batch length (only a scalar *final* result is).

use std::fmt::Write;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Datum, Float64Array, Int32Array, Int64Array, Scalar,
    StringArray, StringBuilder, TimestampMillisecondArray, UInt32Array,
};
use arrow::buffer::Buffer;
use arrow::compute::kernels::{boolean, cmp, numeric};
use arrow::compute::{cast, is_not_null, is_null, take};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use sluice_engine::{Error, Result};

use super::types::{comparison_type, numeric_result};
use super::{BinaryOp, Expr, Literal, StringFn};

impl Expr {
    /// Evaluates over `batch`, returning a column of `batch.num_rows()`
    /// values. Types were checked by [`Expr::data_type`] at plan time; a
    /// failure here is an arithmetic error (integer overflow or division by
    /// zero) or a bug.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        match self.eval(batch)? {
            Value::Array(a) => Ok(a),
            Value::Scalar(s) => repeat(&s, batch.num_rows()),
        }
    }

    fn eval(&self, batch: &RecordBatch) -> Result<Value> {
        Ok(match self {
            Expr::Column(c) => Value::Array(
                batch
                    .column_by_name(c)
                    .ok_or_else(|| {
                        Error::Internal(format!("column '{c}' vanished after plan validation"))
                    })?
                    .clone(),
            ),
            Expr::Literal(l) => Value::Scalar(literal_array(l)),
            Expr::Alias(e, _) => e.eval(batch)?,
            Expr::Not(e) => e
                .eval(batch)?
                .map(|a| Ok(Arc::new(boolean::not(a.as_boolean())?) as ArrayRef))?,
            Expr::IsNull(e, null) => e.eval(batch)?.map(|a| {
                let r = if *null {
                    is_null(a.as_ref())?
                } else {
                    is_not_null(a.as_ref())?
                };
                Ok(Arc::new(r) as ArrayRef)
            })?,
            Expr::Cast(e, to) => e.eval(batch)?.map(|a| Ok(cast(&a, to)?))?,
            Expr::Str(e, f) => e
                .eval(batch)?
                .coerce(&DataType::Utf8)?
                .map(|a| string_fn(&a, f))?,
            Expr::Concat(parts) => concat_parts(parts, batch)?,
            Expr::Binary(l, op, r) => self.binary(l, *op, r, batch)?,
        })
    }

    fn binary(&self, l: &Expr, op: BinaryOp, r: &Expr, batch: &RecordBatch) -> Result<Value> {
        let (lv, rv) = (l.eval(batch)?, r.eval(batch)?);
        let (lt, rt) = (lv.array().data_type(), rv.array().data_type());
        let target = if op.is_arithmetic() {
            numeric_result(lt, rt)
        } else if op.is_comparison() {
            comparison_type(lt, rt)
        } else {
            Some(DataType::Boolean)
        }
        .ok_or_else(|| {
            Error::Internal(format!(
                "'{self}' passed plan validation with {lt} and {rt}"
            ))
        })?;
        let (lv, rv) = (lv.coerce(&target)?, rv.coerce(&target)?);
        let scalar = lv.is_scalar() && rv.is_scalar();
        let (ld, rd) = (lv.datum(), rv.datum());
        let out: ArrayRef = match op {
            BinaryOp::Add => numeric::add(&ld, &rd)?,
            BinaryOp::Sub => numeric::sub(&ld, &rd)?,
            BinaryOp::Mul => numeric::mul(&ld, &rd)?,
            BinaryOp::Div => numeric::div(&ld, &rd)?,
            BinaryOp::Rem => numeric::rem(&ld, &rd)?,
            BinaryOp::Eq => Arc::new(cmp::eq(&ld, &rd)?),
            BinaryOp::NotEq => Arc::new(cmp::neq(&ld, &rd)?),
            BinaryOp::Lt => Arc::new(cmp::lt(&ld, &rd)?),
            BinaryOp::LtEq => Arc::new(cmp::lt_eq(&ld, &rd)?),
            BinaryOp::Gt => Arc::new(cmp::gt(&ld, &rd)?),
            BinaryOp::GtEq => Arc::new(cmp::gt_eq(&ld, &rd)?),
            BinaryOp::And | BinaryOp::Or => {
                // The Kleene kernels take equal-length arrays, not Datums;
                // a boolean literal here is rare, so it is expanded.
                let n = if scalar { 1 } else { batch.num_rows() };
                let (la, ra) = (lv.expand(n)?, rv.expand(n)?);
                let (la, ra) = (la.as_boolean(), ra.as_boolean());
                Arc::new(if op == BinaryOp::And {
                    boolean::and_kleene(la, ra)?
                } else {
                    boolean::or_kleene(la, ra)?
                })
            }
        };
        Ok(if scalar {
            Value::Scalar(out)
        } else {
            Value::Array(out)
        })
    }
}

/// A column, or a one-row array standing for every row.
enum Value {
    Array(ArrayRef),
    Scalar(ArrayRef),
}

impl Value {
    fn array(&self) -> &ArrayRef {
        match self {
            Value::Array(a) | Value::Scalar(a) => a,
        }
    }
    fn is_scalar(&self) -> bool {
        matches!(self, Value::Scalar(_))
    }
    fn map(self, f: impl FnOnce(ArrayRef) -> Result<ArrayRef>) -> Result<Value> {
        Ok(match self {
            Value::Array(a) => Value::Array(f(a)?),
            Value::Scalar(a) => Value::Scalar(f(a)?),
        })
    }
    fn coerce(self, to: &DataType) -> Result<Value> {
        if self.array().data_type() == to {
            return Ok(self);
        }
        self.map(|a| Ok(cast(&a, to)?))
    }
    fn datum(&self) -> ValueDatum<'_> {
        match self {
            Value::Array(a) => ValueDatum(a.as_ref(), false),
            Value::Scalar(a) => ValueDatum(a.as_ref(), true),
        }
    }
    fn expand(&self, n: usize) -> Result<ArrayRef> {
        match self {
            Value::Array(a) => Ok(a.clone()),
            Value::Scalar(a) => repeat(a, n),
        }
    }
}

/// A borrowed [`Value`] as an arrow `Datum` (array, is-scalar).
struct ValueDatum<'a>(&'a dyn Array, bool);

impl Datum for ValueDatum<'_> {
    fn get(&self) -> (&dyn Array, bool) {
        (self.0, self.1)
    }
}

/// `n` copies of the single value in `scalar`.
fn repeat(scalar: &ArrayRef, n: usize) -> Result<ArrayRef> {
    Ok(take(scalar, &UInt32Array::from_value(0, n), None)?)
}

fn literal_array(l: &Literal) -> ArrayRef {
    match l {
        Literal::Int(v) => Arc::new(Int64Array::from_value(*v, 1)),
        Literal::Float(v) => Arc::new(Float64Array::from_value(*v, 1)),
        Literal::Bool(v) => Arc::new(BooleanArray::from(vec![*v])),
        Literal::Str(v) => Arc::new(StringArray::from_iter_values([v])),
        Literal::TimestampMs(v) => Arc::new(TimestampMillisecondArray::from_value(*v, 1)),
    }
}

/// Concatenates string parts row by row into one builder: literal parts are
/// read once, and no per-row strings are allocated.
fn concat_parts(parts: &[Expr], batch: &RecordBatch) -> Result<Value> {
    let values = parts
        .iter()
        .map(|p| p.eval(batch)?.coerce(&DataType::Utf8))
        .collect::<Result<Vec<_>>>()?;
    let all_scalar = values.iter().all(Value::is_scalar);
    let n = if all_scalar { 1 } else { batch.num_rows() };
    let strings: Vec<(&StringArray, bool)> = values
        .iter()
        .map(|v| (v.array().as_string::<i32>(), v.is_scalar()))
        .collect();
    let mut out = StringBuilder::with_capacity(n, n * 8 * strings.len().max(1));
    for row in 0..n {
        let at = |(_, scalar): &(&StringArray, bool)| if *scalar { 0 } else { row };
        if strings.iter().any(|p| p.0.is_null(at(p))) {
            out.append_null();
            continue;
        }
        for p in &strings {
            out.write_str(p.0.value(at(p)))
                .expect("writing to a StringBuilder cannot fail");
        }
        out.append_value("");
    }
    let a: ArrayRef = Arc::new(out.finish());
    Ok(if all_scalar {
        Value::Scalar(a)
    } else {
        Value::Array(a)
    })
}

fn string_fn(a: &ArrayRef, f: &StringFn) -> Result<ArrayRef> {
    let s = a.as_string::<i32>();
    let pattern = |p: &str| Scalar::new(StringArray::from_iter_values([p]));
    Ok(match f {
        StringFn::Lower => change_case(s, false),
        StringFn::Upper => change_case(s, true),
        StringFn::Length => char_length(s)?,
        StringFn::Contains(p) => Arc::new(arrow::compute::contains(s, &pattern(p))?),
        StringFn::StartsWith(p) => Arc::new(arrow::compute::starts_with(s, &pattern(p))?),
        StringFn::EndsWith(p) => Arc::new(arrow::compute::ends_with(s, &pattern(p))?),
        StringFn::Like(p) => Arc::new(arrow::compute::like(s, &pattern(p))?),
    })
}

/// Length in characters. Arrow's `length` kernel counts bytes, which is the
/// same for ASCII data; other data is counted per value without allocating.
fn char_length(s: &StringArray) -> Result<ArrayRef> {
    if value_bytes(s).is_ascii() {
        return Ok(arrow::compute::kernels::length::length(s)?);
    }
    let counts: Int32Array = s
        .iter()
        .map(|v| v.map(|v| i32::try_from(v.chars().count()).unwrap_or(i32::MAX)))
        .collect();
    Ok(Arc::new(counts))
}

/// The bytes of the values `s` spans (a slice may not start at zero).
fn value_bytes(s: &StringArray) -> &[u8] {
    let offsets = s.offsets();
    let first = offsets[0] as usize;
    let last = offsets[offsets.len() - 1] as usize;
    &s.values()[first..last]
}

/// Lower- or upper-cases every value. ASCII data (the common case) is
/// converted byte-wise in one pass over the value buffer, keeping offsets
/// and nulls; other data goes through one builder, char by char, without a
/// string per row. Char-wise mapping differs from `str::to_lowercase` only
/// for a word-final Greek capital sigma.
fn change_case(s: &StringArray, upper: bool) -> ArrayRef {
    let offsets = s.offsets();
    let (first, last) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
    let bytes = value_bytes(s);
    if bytes.is_ascii() {
        // Keep the (possibly sliced) offsets valid by padding the prefix.
        let mut values = Vec::with_capacity(last);
        values.resize(first, 0u8);
        values.extend_from_slice(bytes);
        if upper {
            values[first..].make_ascii_uppercase();
        } else {
            values[first..].make_ascii_lowercase();
        }
        // Case mapping of ASCII keeps byte lengths and UTF-8 validity.
        let out = StringArray::new(
            offsets.clone(),
            Buffer::from_vec(values),
            s.nulls().cloned(),
        );
        return Arc::new(out);
    }
    let mut out = StringBuilder::with_capacity(s.len(), bytes.len());
    for v in s.iter() {
        match v {
            None => out.append_null(),
            Some(v) => {
                for c in v.chars() {
                    let r = if upper {
                        c.to_uppercase().try_for_each(|c| out.write_char(c))
                    } else {
                        c.to_lowercase().try_for_each(|c| out.write_char(c))
                    };
                    r.expect("writing to a StringBuilder cannot fail");
                }
                out.append_value("");
            }
        }
    }
    Arc::new(out.finish())
}
