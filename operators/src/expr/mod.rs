//! Vectorized expressions: column references, literals, arithmetic,
//! comparison, boolean logic, casts and string functions, evaluated over a
//! whole batch with Arrow kernels. Literals stay scalars (arrow `Datum`), so
//! `price * 0.908` never materializes a column of 0.908s.
//!
//! This module owns the expression tree and its constructors; `types`
//! owns plan-time type checking ([`Expr::data_type`]) and coercion rules;
//! `eval` owns batch evaluation ([`Expr::evaluate`]). Neither knows about
//! streams or operators.

use std::fmt;

use arrow::datatypes::DataType;

mod eval;
mod types;

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
    /// Milliseconds since the epoch, typed `Timestamp(Millisecond, None)`.
    TimestampMs(i64),
}

impl From<i64> for Literal {
    fn from(v: i64) -> Self {
        Literal::Int(v)
    }
}
impl From<i32> for Literal {
    fn from(v: i32) -> Self {
        Literal::Int(v.into())
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
    /// `/` (integer division by zero fails the job, as Arrow's kernel does)
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
    /// `AND` (Kleene logic: `false AND null` is `false`)
    And,
    /// `OR` (Kleene logic: `true OR null` is `true`)
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
        use BinaryOp::*;
        matches!(self, Add | Sub | Mul | Div | Rem)
    }
    fn is_comparison(&self) -> bool {
        use BinaryOp::*;
        matches!(self, Eq | NotEq | Lt | LtEq | Gt | GtEq)
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
    /// SQL `LIKE`: `%` matches any run of characters, `_` one character,
    /// `\` escapes.
    Like(String),
}

/// An expression over the columns of a batch, evaluated a whole column at
/// a time by Arrow's kernels: built from [`col`], [`lit`], the operators
/// `+ - * / %` and `!`, comparisons and boolean methods (`gt`, `eq`,
/// `and`, `or`, ...), `cast`, null tests, `in_list` and string functions.
/// `filter` and `select` take them.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sluice_operators::prelude::*;
/// use sluice_operators::prelude::arrow::datatypes::DataType;
///
/// #[derive(Serialize, Deserialize)]
/// struct Person { name: String, city: Option<String>, age: i64 }
/// #[derive(Deserialize, Debug, PartialEq)]
/// struct Row { name: String, label: String, decades: f64, known_city: bool }
///
/// let env = Env::new();
/// let people = env.from_rows("people", vec![
///     Person { name: "Ada".into(), city: Some("London".into()), age: 36 },
///     Person { name: "Kurt".into(), city: None, age: 71 },
///     Person { name: "Emmy".into(), city: Some("Erlangen".into()), age: 53 },
/// ]);
/// let out = people
///     .filter(col("age").gt(lit(40i64)).and(col("name").in_list(vec![lit("Kurt"), lit("Emmy")])))
///     .select([
///         col("name"),
///         concat(vec![upper(col("name")), lit(":"), length(col("name")).cast(DataType::Utf8)])
///             .alias("label"),
///         (col("age").cast(DataType::Float64) / lit(10.0)).alias("decades"),
///         col("city").is_not_null().alias("known_city"),
///     ])
///     .collect();
/// env.execute()?;
/// let mut rows = out.rows::<Row>()?;
/// rows.sort_by(|a, b| a.name.cmp(&b.name));
/// assert_eq!(rows, [
///     Row { name: "Emmy".into(), label: "EMMY:4".into(), decades: 5.3, known_city: true },
///     Row { name: "Kurt".into(), label: "KURT:4".into(), decades: 7.1, known_city: false },
/// ]);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
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

/// A literal: `i64`, `i32`, `f64`, `bool`, `&str` or `String`.
pub fn lit(v: impl Into<Literal>) -> Expr {
    Expr::Literal(v.into())
}

/// A timestamp literal, `epoch_ms` milliseconds since the epoch, typed
/// `Timestamp(Millisecond, None)` so it compares with event-time columns.
pub fn lit_timestamp_ms(epoch_ms: i64) -> Expr {
    Expr::Literal(Literal::TimestampMs(epoch_ms))
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

/// Concatenation of string expressions (null if any part is null).
pub fn concat(parts: Vec<Expr>) -> Expr {
    Expr::Concat(parts)
}

macro_rules! binary_methods {
    ($($name:ident => $op:ident),*) => {
        impl Expr {
            $(
                #[doc = concat!("`self ", stringify!($op), " other`.")]
                // `a.add(b)` next to `a + b`: both spellings build the same node.
                #[allow(clippy::should_implement_trait)]
                pub fn $name(self, other: Expr) -> Expr {
                    Expr::Binary(Box::new(self), BinaryOp::$op, Box::new(other))
                }
            )*
        }
    };
}
binary_methods!(
    add => Add, sub => Sub, mul => Mul, div => Div, rem => Rem,
    eq => Eq, not_eq => NotEq, lt => Lt, lt_eq => LtEq, gt => Gt, gt_eq => GtEq,
    and => And, or => Or
);

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
// `a + b`, `a * b`, ... read better than `a.add(b)` in job code.
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
    /// Casts to `to` (values that do not convert become null).
    pub fn cast(self, to: DataType) -> Expr {
        Expr::Cast(Box::new(self), to)
    }
    /// Boolean negation (also `!expr`).
    #[allow(clippy::should_implement_trait)] // `std::ops::Not` is implemented too
    pub fn not(self) -> Expr {
        Expr::Not(Box::new(self))
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
    /// SQL `LIKE` (`%` any run, `_` one character).
    pub fn like(self, pattern: &str) -> Expr {
        Expr::Str(Box::new(self), StringFn::Like(pattern.into()))
    }
    /// `self` equals one of `values` (SQL semantics: null when no value
    /// matches and a comparison was null). An empty list is `false`.
    pub fn in_list(self, values: Vec<Expr>) -> Expr {
        let mut it = values.into_iter();
        match it.next() {
            None => lit(false),
            Some(first) => it.fold(self.clone().eq(first), |acc, v| acc.or(self.clone().eq(v))),
        }
    }

    /// The name of the column this expression produces: the alias, the
    /// column name, or a rendering such as `price * 0.908`.
    pub fn output_name(&self) -> String {
        match self {
            Expr::Column(c) => c.clone(),
            Expr::Alias(_, n) => n.clone(),
            e => e.to_string(),
        }
    }

    /// The column this expression is, if it is a plain, unaliased reference.
    pub fn as_column(&self) -> Option<&str> {
        match self {
            Expr::Column(c) => Some(c),
            _ => None,
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Column(c) => write!(f, "{c}"),
            Expr::Literal(Literal::Str(s)) => write!(f, "'{s}'"),
            Expr::Literal(Literal::Int(v)) => write!(f, "{v}"),
            Expr::Literal(Literal::Float(v)) => write!(f, "{v:?}"),
            Expr::Literal(Literal::Bool(v)) => write!(f, "{v}"),
            Expr::Literal(Literal::TimestampMs(v)) => write!(f, "TIMESTAMP_MS {v}"),
            Expr::Binary(l, op, r) => {
                // Parenthesize nested binaries so the rendering reads unambiguously.
                let side = |e: &Expr| match e {
                    Expr::Binary(..) => format!("({e})"),
                    e => e.to_string(),
                };
                write!(f, "{} {} {}", side(l), op.symbol(), side(r))
            }
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
                StringFn::Like(p) => write!(f, "{e} LIKE '{p}'"),
            },
            Expr::Concat(parts) => {
                write!(f, "concat(")?;
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{p}")?;
                }
                write!(f, ")")
            }
            Expr::Alias(e, n) => write!(f, "{e} AS {n}"),
        }
    }
}
