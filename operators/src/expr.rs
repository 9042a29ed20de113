//! Vectorized expressions: column references, literals, arithmetic,
//! comparison, boolean logic, casts and string functions, evaluated over a
//! whole batch with Arrow kernels. Literals stay scalars (arrow `Datum`), so
//! `price * 0.908` never materializes a column of 0.908s. Types are checked
//! at plan time by [`Expr::data_type`].

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Datum, Float64Array, Int64Array, Scalar, StringArray,
};
use arrow::compute::kernels::{boolean, cmp, numeric};
use arrow::compute::{cast, is_not_null, is_null};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use sluice_engine::{Error, Result};

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// 64-bit integer.
    Int(i64),
    /// 64-bit float.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
}

impl From<i64> for Literal {
    fn from(v: i64) -> Self {
        Literal::Int(v)
    }
}
impl From<i32> for Literal {
    fn from(v: i32) -> Self {
        Literal::Int(v as i64)
    }
}
impl From<f64> for Literal {
    fn from(v: f64) -> Self {
        Literal::Float(v)
    }
}
impl From<bool> for Literal {
    fn from(v: bool) -> Self {
        Literal::Bool(v)
    }
}
impl From<&str> for Literal {
    fn from(v: &str) -> Self {
        Literal::Str(v.to_string())
    }
}
impl From<String> for Literal {
    fn from(v: String) -> Self {
        Literal::Str(v)
    }
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
    /// `=`
    Eq,
    /// `!=`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
    /// `AND` (Kleene logic)
    And,
    /// `OR` (Kleene logic)
    Or,
}

impl BinaryOp {
    fn symbol(&self) -> &'static str {
        use BinaryOp::*;
        match self {
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Rem => "%",
            Eq => "=",
            NotEq => "!=",
            Lt => "<",
            LtEq => "<=",
            Gt => ">",
            GtEq => ">=",
            And => "AND",
            Or => "OR",
        }
    }
    fn is_arithmetic(&self) -> bool {
        matches!(
            self,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem
        )
    }
    fn is_comparison(&self) -> bool {
        matches!(
            self,
            BinaryOp::Eq
                | BinaryOp::NotEq
                | BinaryOp::Lt
                | BinaryOp::LtEq
                | BinaryOp::Gt
                | BinaryOp::GtEq
        )
    }
}

/// String functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringFn {
    /// Lower case.
    Lower,
    /// Upper case.
    Upper,
    /// Length in characters.
    Length,
    /// Contains the pattern.
    Contains(String),
    /// Starts with the pattern.
    StartsWith(String),
    /// Ends with the pattern.
    EndsWith(String),
}

/// An expression over the columns of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A column by name.
    Column(String),
    /// A constant.
    Literal(Literal),
    /// `left op right`.
    Binary(Box<Expr>, BinaryOp, Box<Expr>),
    /// Boolean negation.
    Not(Box<Expr>),
    /// Null test (`true` = is null).
    IsNull(Box<Expr>, bool),
    /// Cast to a type.
    Cast(Box<Expr>, DataType),
    /// A string function.
    Str(Box<Expr>, StringFn),
    /// String concatenation.
    Concat(Vec<Expr>),
    /// Renames the result.
    Alias(Box<Expr>, String),
}

/// A column reference.
pub fn col(name: &str) -> Expr {
    Expr::Column(name.to_string())
}

/// A literal.
pub fn lit(v: impl Into<Literal>) -> Expr {
    Expr::Literal(v.into())
}

/// Lower-cases a string expression.
pub fn lower(e: Expr) -> Expr {
    Expr::Str(Box::new(e), StringFn::Lower)
}

/// Upper-cases a string expression.
pub fn upper(e: Expr) -> Expr {
    Expr::Str(Box::new(e), StringFn::Upper)
}

/// Length of a string expression in characters.
pub fn length(e: Expr) -> Expr {
    Expr::Str(Box::new(e), StringFn::Length)
}

/// Concatenation of string expressions (null if any is null).
pub fn concat(parts: Vec<Expr>) -> Expr {
    Expr::Concat(parts)
}

macro_rules! binary_methods {
    ($($name:ident => $op:ident),*) => {
        impl Expr {
            $(
                #[doc = concat!("`self ", stringify!($op), " other`.")]
                pub fn $name(self, other: Expr) -> Expr {
                    Expr::Binary(Box::new(self), BinaryOp::$op, Box::new(other))
                }
            )*
        }
    };
}
binary_methods!(eq => Eq, not_eq => NotEq, lt => Lt, lt_eq => LtEq, gt => Gt, gt_eq => GtEq, and => And, or => Or);

macro_rules! std_ops {
    ($($trait:ident $method:ident),*) => {$(
        impl std::ops::$trait for Expr {
            type Output = Expr;
            fn $method(self, rhs: Expr) -> Expr {
                Expr::Binary(Box::new(self), BinaryOp::$trait, Box::new(rhs))
            }
        }
    )*};
}
// Arithmetic is `a + b`, `a * b`, ... through the std operator traits.
std_ops!(Add add, Sub sub, Mul mul, Div div, Rem rem);

impl std::ops::Not for Expr {
    type Output = Expr;
    fn not(self) -> Expr {
        Expr::Not(Box::new(self))
    }
}

impl Expr {
    /// Renames the result column.
    pub fn alias(self, name: &str) -> Expr {
        Expr::Alias(Box::new(self), name.to_string())
    }
    /// Casts to `to`.
    pub fn cast(self, to: DataType) -> Expr {
        Expr::Cast(Box::new(self), to)
    }
    /// `true` where the value is null.
    pub fn is_null(self) -> Expr {
        Expr::IsNull(Box::new(self), true)
    }
    /// `true` where the value is not null.
    pub fn is_not_null(self) -> Expr {
        Expr::IsNull(Box::new(self), false)
    }
    /// Whether the string contains `pattern`.
    pub fn contains(self, pattern: &str) -> Expr {
        Expr::Str(Box::new(self), StringFn::Contains(pattern.into()))
    }
    /// Whether the string starts with `pattern`.
    pub fn starts_with(self, pattern: &str) -> Expr {
        Expr::Str(Box::new(self), StringFn::StartsWith(pattern.into()))
    }
    /// Whether the string ends with `pattern`.
    pub fn ends_with(self, pattern: &str) -> Expr {
        Expr::Str(Box::new(self), StringFn::EndsWith(pattern.into()))
    }
    /// `self` equals one of `values`.
    pub fn in_list(self, values: Vec<Expr>) -> Expr {
        let mut it = values.into_iter();
        match it.next() {
            None => lit(false),
            Some(first) => it.fold(self.clone().eq(first), |acc, v| acc.or(self.clone().eq(v))),
        }
    }

    /// The name of the column this expression produces.
    pub fn output_name(&self) -> String {
        match self {
            Expr::Column(c) => c.clone(),
            Expr::Alias(_, n) => n.clone(),
            e => e.to_string(),
        }
    }

    /// The column this expression is, if it is a plain reference (possibly aliased).
    pub fn as_column(&self) -> Option<&str> {
        match self {
            Expr::Column(c) => Some(c),
            _ => None,
        }
    }

    /// The result type over `schema`, or a plan error naming the column or
    /// sub-expression at fault.
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

    /// Evaluates over `batch`, returning a column of `batch.num_rows()` values.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        match self.eval(batch)? {
            Value::Array(a) => Ok(a),
            Value::Scalar(s) => {
                let idx = arrow::array::UInt32Array::from(vec![0u32; batch.num_rows()]);
                Ok(arrow::compute::take(&s, &idx, None)?)
            }
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
            Expr::Str(e, f) => {
                let v = e.eval(batch)?;
                let v = v.map(|a| Ok(cast(&a, &DataType::Utf8)?))?;
                v.map(|a| string_fn(&a, f))?
            }
            Expr::Concat(parts) => {
                let n = batch.num_rows();
                let mut acc: Option<ArrayRef> = None;
                for p in parts {
                    let a = cast(&p.evaluate(batch)?, &DataType::Utf8)?;
                    acc = Some(match acc {
                        None => a,
                        Some(prev) => Arc::new(
                            arrow::compute::kernels::concat_elements::concat_elements_utf8(
                                prev.as_string::<i32>(),
                                a.as_string::<i32>(),
                            )?,
                        ),
                    });
                }
                Value::Array(acc.unwrap_or_else(|| Arc::new(StringArray::from(vec![""; n]))))
            }
            Expr::Binary(l, op, r) => {
                let (lv, rv) = (l.eval(batch)?, r.eval(batch)?);
                let (lt, rt) = (
                    lv.array().data_type().clone(),
                    rv.array().data_type().clone(),
                );
                let target = if op.is_arithmetic() {
                    numeric_result(&lt, &rt)
                } else if op.is_comparison() {
                    comparison_type(&lt, &rt)
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
                        let n = batch.num_rows();
                        let (la, ra) = (lv.expand(n)?, rv.expand(n)?);
                        let (la, ra) = (la.as_boolean(), ra.as_boolean());
                        Arc::new(if *op == BinaryOp::And {
                            boolean::and_kleene(la, ra)?
                        } else {
                            boolean::or_kleene(la, ra)?
                        })
                    }
                };
                if scalar {
                    Value::Scalar(out)
                } else {
                    Value::Array(out)
                }
            }
        })
    }
}

/// A column or a one-element scalar.
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
        Ok(match self {
            Value::Array(a) => a.clone(),
            Value::Scalar(a) => {
                arrow::compute::take(a, &arrow::array::UInt32Array::from(vec![0u32; n]), None)?
            }
        })
    }
}

/// A borrowed [`Value`] as an arrow `Datum` (array, is-scalar).
struct ValueDatum<'a>(&'a dyn Array, bool);

impl Datum for ValueDatum<'_> {
    fn get(&self) -> (&dyn Array, bool) {
        (self.0, self.1)
    }
}

fn literal_type(l: &Literal) -> DataType {
    match l {
        Literal::Int(_) => DataType::Int64,
        Literal::Float(_) => DataType::Float64,
        Literal::Bool(_) => DataType::Boolean,
        Literal::Str(_) => DataType::Utf8,
    }
}

fn literal_array(l: &Literal) -> ArrayRef {
    match l {
        Literal::Int(v) => Arc::new(Int64Array::from(vec![*v])),
        Literal::Float(v) => Arc::new(Float64Array::from(vec![*v])),
        Literal::Bool(v) => Arc::new(BooleanArray::from(vec![*v])),
        Literal::Str(v) => Arc::new(StringArray::from(vec![v.as_str()])),
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The type arithmetic between `l` and `r` runs in.
fn numeric_result(l: &DataType, r: &DataType) -> Option<DataType> {
    if !l.is_numeric() || !r.is_numeric() {
        return None;
    }
    Some(if l.is_floating() || r.is_floating() {
        DataType::Float64
    } else if l == r {
        l.clone()
    } else {
        DataType::Int64
    })
}

/// The type a comparison between `l` and `r` runs in.
fn comparison_type(l: &DataType, r: &DataType) -> Option<DataType> {
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
        (DataType::Timestamp(..), t) | (t, DataType::Timestamp(..)) if t.is_integer() => {
            Some(if matches!(l, DataType::Timestamp(..)) {
                l.clone()
            } else {
                r.clone()
            })
        }
        _ => None,
    }
}

fn string_fn(a: &ArrayRef, f: &StringFn) -> Result<ArrayRef> {
    let s = a.as_string::<i32>();
    let pattern = |p: &str| Scalar::new(StringArray::from(vec![p.to_string()]));
    Ok(match f {
        StringFn::Lower => Arc::new(
            s.iter()
                .map(|v| v.map(str::to_lowercase))
                .collect::<StringArray>(),
        ),
        StringFn::Upper => Arc::new(
            s.iter()
                .map(|v| v.map(str::to_uppercase))
                .collect::<StringArray>(),
        ),
        StringFn::Length => arrow::compute::kernels::length::length(a)?,
        StringFn::Contains(p) => Arc::new(arrow::compute::contains(s, &pattern(p))?),
        StringFn::StartsWith(p) => Arc::new(arrow::compute::starts_with(s, &pattern(p))?),
        StringFn::EndsWith(p) => Arc::new(arrow::compute::ends_with(s, &pattern(p))?),
    })
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Column(c) => write!(f, "{c}"),
            Expr::Literal(Literal::Str(s)) => write!(f, "'{s}'"),
            Expr::Literal(Literal::Int(v)) => write!(f, "{v}"),
            Expr::Literal(Literal::Float(v)) => write!(f, "{v}"),
            Expr::Literal(Literal::Bool(v)) => write!(f, "{v}"),
            Expr::Binary(l, op, r) => write!(f, "{l} {} {r}", op.symbol()),
            Expr::Not(e) => write!(f, "NOT {e}"),
            Expr::IsNull(e, true) => write!(f, "{e} IS NULL"),
            Expr::IsNull(e, false) => write!(f, "{e} IS NOT NULL"),
            Expr::Cast(e, t) => write!(f, "CAST({e} AS {t})"),
            Expr::Str(e, func) => match func {
                StringFn::Lower => write!(f, "lower({e})"),
                StringFn::Upper => write!(f, "upper({e})"),
                StringFn::Length => write!(f, "length({e})"),
                StringFn::Contains(p) => write!(f, "contains({e}, '{p}')"),
                StringFn::StartsWith(p) => write!(f, "starts_with({e}, '{p}')"),
                StringFn::EndsWith(p) => write!(f, "ends_with({e}, '{p}')"),
            },
            Expr::Concat(parts) => {
                let p: Vec<String> = parts.iter().map(|e| e.to_string()).collect();
                write!(f, "concat({})", p.join(", "))
            }
            Expr::Alias(e, n) => write!(f, "{e} AS {n}"),
        }
    }
}
