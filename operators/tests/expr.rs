//! Expression evaluation and plan-time type checking on small batches,
//! including nulls, int/float coercion, string functions and casts.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use sluice_operators::expr::*;

use arrow::datatypes::Field;

fn batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("f", DataType::Float64, false),
        Field::new("s", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![Some(1), None, Some(7)])),
            Arc::new(Float64Array::from(vec![0.5, 1.5, 2.0])),
            Arc::new(StringArray::from(vec![Some("Ab"), Some("cd"), None])),
        ],
    )
    .unwrap()
}

fn ints(a: ArrayRef) -> Vec<Option<i64>> {
    a.as_primitive::<arrow::datatypes::Int64Type>()
        .iter()
        .collect()
}
fn bools(a: ArrayRef) -> Vec<Option<bool>> {
    a.as_boolean().iter().collect()
}

#[test]
fn arithmetic_with_scalars_and_coercion() {
    let b = batch();
    assert_eq!(
        ints((col("a") * lit(2) + lit(1)).evaluate(&b).unwrap()),
        vec![Some(3), None, Some(15)]
    );
    assert_eq!(
        ints((col("a") % lit(3)).evaluate(&b).unwrap()),
        vec![Some(1), None, Some(1)]
    );
    let r = (col("a") + col("f")).evaluate(&b).unwrap();
    assert_eq!(r.data_type(), &DataType::Float64);
    let v: Vec<Option<f64>> = r
        .as_primitive::<arrow::datatypes::Float64Type>()
        .iter()
        .collect();
    assert_eq!(v, vec![Some(1.5), None, Some(9.0)]);
    assert_eq!(
        (col("a") + col("f"))
            .data_type(b.schema().as_ref())
            .unwrap(),
        DataType::Float64
    );
}

#[test]
fn comparisons_booleans_and_nulls() {
    let b = batch();
    assert_eq!(
        bools(col("a").gt(lit(1)).evaluate(&b).unwrap()),
        vec![Some(false), None, Some(true)]
    );
    let e = col("a").gt(lit(1)).or(col("f").lt(lit(1.0)));
    assert_eq!(
        bools(e.evaluate(&b).unwrap()),
        vec![Some(true), None, Some(true)]
    );
    assert_eq!(
        bools(col("a").is_null().evaluate(&b).unwrap()),
        vec![Some(false), Some(true), Some(false)]
    );
    assert_eq!(
        bools((!col("a").is_null()).evaluate(&b).unwrap()),
        vec![Some(true), Some(false), Some(true)]
    );
    assert_eq!(
        bools(col("a").in_list(vec![lit(7), lit(9)]).evaluate(&b).unwrap()),
        vec![Some(false), None, Some(true)]
    );
    assert_eq!(
        bools(lit(1).lt(lit(2)).evaluate(&b).unwrap()),
        vec![Some(true); 3]
    );
}

#[test]
fn strings_and_casts() {
    let b = batch();
    let s = upper(col("s")).evaluate(&b).unwrap();
    assert_eq!(
        s.as_string::<i32>().iter().collect::<Vec<_>>(),
        vec![Some("AB"), Some("CD"), None]
    );
    let l = lower(col("s")).evaluate(&b).unwrap();
    assert_eq!(l.as_string::<i32>().value(0), "ab");
    assert_eq!(
        bools(col("s").starts_with("A").evaluate(&b).unwrap()),
        vec![Some(true), Some(false), None]
    );
    assert_eq!(
        bools(col("s").contains("d").evaluate(&b).unwrap()),
        vec![Some(false), Some(true), None]
    );
    assert_eq!(
        bools(col("s").ends_with("b").evaluate(&b).unwrap()),
        vec![Some(true), Some(false), None]
    );
    let len = length(col("s")).evaluate(&b).unwrap();
    assert_eq!(
        len.as_primitive::<arrow::datatypes::Int32Type>().value(1),
        2
    );
    let c = concat(vec![col("s"), lit("-"), col("a").cast(DataType::Utf8)])
        .evaluate(&b)
        .unwrap();
    assert_eq!(
        c.as_string::<i32>().iter().collect::<Vec<_>>(),
        vec![Some("Ab-1"), None, None]
    );
    let f = col("f").cast(DataType::Int64).evaluate(&b).unwrap();
    assert_eq!(ints(f), vec![Some(0), Some(1), Some(2)]);
}

#[test]
fn type_errors_name_the_column() {
    let b = batch();
    let s = b.schema();
    let e = col("nope")
        .gt(lit(1))
        .data_type(&s)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'nope'") && e.contains("[a, f, s]"), "{e}");
    let e = (col("s") + lit(1)).data_type(&s).unwrap_err().to_string();
    assert!(e.contains("'s' is Utf8"), "{e}");
    let e = col("a")
        .and(lit(true))
        .data_type(&s)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'a' is Int64"), "{e}");
    let e = upper(col("a")).data_type(&s).unwrap_err().to_string();
    assert!(e.contains("'a' is Int64"), "{e}");
    assert_eq!((col("a") * lit(0.5)).output_name(), "a * 0.5");
    assert_eq!(col("a").alias("x").output_name(), "x");
}
