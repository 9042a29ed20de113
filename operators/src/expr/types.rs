//! Plan-time typing of expressions: result types, nullability and the
//! coercion rules that evaluation follows (so a plan that type-checks never
//! fails on types at run time).

use arrow::datatypes::{DataType, Schema, TimeUnit};
use sluice_engine::{Error, Result};

use super::{Expr, Literal, StringFn};

impl Expr {
    /// The result type over `schema`, or a plan error naming the column or
    /// sub-expression at fault.
    ///
    /// Arithmetic: equal types stay; an integer with a float (or two
    /// different floats) runs in `Float64`; two integers run in the wider
    /// one (`Int64` when signed meets unsigned). Comparisons need both
    /// sides numeric, both strings, both the same type, or a timestamp with
    /// an integer (epoch value in the timestamp's unit). `AND`/`OR`/`NOT`
    /// need booleans; string functions need strings.
    pub fn data_type(&self, schema: &Schema) -> Result<DataType> {
        let err = |m: String| Error::plan(format!("expression {self}"), m);
        Ok(match self {
            Expr::Column(c) => match schema.field_with_name(c) {
                Ok(f) => f.data_type().clone(),
                Err(_) => {
                    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                    return Err(err(format!(
                        "unknown column '{c}'; the input has [{}]",
                        names.join(", ")
                    )));
                }
            },
            Expr::Literal(l) => literal_type(l),
            Expr::Alias(e, _) => e.data_type(schema)?,
            Expr::Not(e) => {
                let t = e.data_type(schema)?;
                if t != DataType::Boolean {
                    return Err(err(format!("NOT needs a boolean, '{e}' is {t}")));
                }
                DataType::Boolean
            }
            Expr::IsNull(e, _) => {
                e.data_type(schema)?;
                DataType::Boolean
            }
            Expr::Cast(e, to) => {
                let from = e.data_type(schema)?;
                if !arrow::compute::can_cast_types(&from, to) {
                    return Err(err(format!("cannot cast '{e}' from {from} to {to}")));
                }
                to.clone()
            }
            Expr::Str(e, f) => {
                let t = e.data_type(schema)?;
                if !is_string(&t) {
                    return Err(err(format!("'{e}' is {t}; string functions need a string")));
                }
                match f {
                    StringFn::Lower | StringFn::Upper => DataType::Utf8,
                    StringFn::Length => DataType::Int32,
                    _ => DataType::Boolean,
                }
            }
            Expr::Concat(parts) => {
                for p in parts {
                    let t = p.data_type(schema)?;
                    if !is_string(&t) {
                        return Err(err(format!("concat needs strings, '{p}' is {t}")));
                    }
                }
                DataType::Utf8
            }
            Expr::Binary(l, op, r) => {
                let (lt, rt) = (l.data_type(schema)?, r.data_type(schema)?);
                if op.is_arithmetic() {
                    numeric_result(&lt, &rt).ok_or_else(|| {
                        err(format!(
                            "'{}' needs numbers: '{l}' is {lt}, '{r}' is {rt}",
                            op.symbol()
                        ))
                    })?
                } else if op.is_comparison() {
                    if comparison_type(&lt, &rt).is_none() {
                        return Err(err(format!(
                            "cannot compare '{l}' ({lt}) with '{r}' ({rt})"
                        )));
                    }
                    DataType::Boolean
                } else {
                    if lt != DataType::Boolean || rt != DataType::Boolean {
                        return Err(err(format!(
                            "{} needs booleans: '{l}' is {lt}, '{r}' is {rt}",
                            op.symbol()
                        )));
                    }
                    DataType::Boolean
                }
            }
        })
    }

    /// Whether the result can hold nulls over `schema`. Conservative: `true`
    /// for casts (a failed conversion is null) and unknown columns.
    pub fn nullable(&self, schema: &Schema) -> bool {
        match self {
            Expr::Column(c) => schema
                .field_with_name(c)
                .ok()
                .is_none_or(|f| f.is_nullable()),
            Expr::Literal(_) | Expr::IsNull(..) => false,
            Expr::Alias(e, _) | Expr::Not(e) | Expr::Str(e, _) => e.nullable(schema),
            Expr::Cast(..) => true,
            Expr::Concat(parts) => parts.iter().any(|p| p.nullable(schema)),
            Expr::Binary(l, _, r) => l.nullable(schema) || r.nullable(schema),
        }
    }
}

pub(super) fn literal_type(l: &Literal) -> DataType {
    match l {
        Literal::Int(_) => DataType::Int64,
        Literal::Float(_) => DataType::Float64,
        Literal::Bool(_) => DataType::Boolean,
        Literal::Str(_) => DataType::Utf8,
        Literal::TimestampMs(_) => DataType::Timestamp(TimeUnit::Millisecond, None),
    }
}

pub(super) fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Width in bits and signedness of an integer type.
fn int_shape(t: &DataType) -> Option<(u8, bool)> {
    use DataType::*;
    Some(match t {
        Int8 => (8, true),
        Int16 => (16, true),
        Int32 => (32, true),
        Int64 => (64, true),
        UInt8 => (8, false),
        UInt16 => (16, false),
        UInt32 => (32, false),
        UInt64 => (64, false),
        _ => return None,
    })
}

/// The type arithmetic between `l` and `r` runs in.
pub(super) fn numeric_result(l: &DataType, r: &DataType) -> Option<DataType> {
    if !l.is_numeric() || !r.is_numeric() {
        return None;
    }
    if l == r {
        return Some(l.clone());
    }
    Some(match (int_shape(l), int_shape(r)) {
        (Some((lw, ls)), Some((rw, rs))) if ls == rs => {
            let t = if lw >= rw { l } else { r };
            t.clone()
        }
        // Signed meets unsigned: Int64 holds every value but large UInt64s.
        (Some(_), Some(_)) => DataType::Int64,
        // Floats, decimals and mixes of them with integers.
        _ => DataType::Float64,
    })
}

/// The type a comparison between `l` and `r` runs in.
pub(super) fn comparison_type(l: &DataType, r: &DataType) -> Option<DataType> {
    if l == r {
        return Some(l.clone());
    }
    if let Some(t) = numeric_result(l, r) {
        return Some(t);
    }
    if is_string(l) && is_string(r) {
        return Some(DataType::Utf8);
    }
    // Timestamps compare with integers as epoch values of their unit.
    match (l, r) {
        (DataType::Timestamp(..), t) if t.is_integer() => Some(l.clone()),
        (t, DataType::Timestamp(..)) if t.is_integer() => Some(r.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::*;

    #[test]
    fn numeric_coercion_picks_the_wider_type() {
        assert_eq!(numeric_result(&Int32, &Int32), Some(Int32));
        assert_eq!(numeric_result(&Int16, &Int32), Some(Int32));
        assert_eq!(numeric_result(&UInt8, &UInt32), Some(UInt32));
        assert_eq!(numeric_result(&UInt8, &Int8), Some(Int64));
        assert_eq!(numeric_result(&Int64, &Float32), Some(Float64));
        assert_eq!(numeric_result(&Float32, &Float32), Some(Float32));
        assert_eq!(numeric_result(&Utf8, &Int64), None);
        assert_eq!(
            comparison_type(&Timestamp(TimeUnit::Millisecond, None), &Int64),
            Some(Timestamp(TimeUnit::Millisecond, None))
        );
        assert_eq!(comparison_type(&Utf8, &LargeUtf8), Some(Utf8));
        assert_eq!(comparison_type(&Boolean, &Int64), None);
    }
}
