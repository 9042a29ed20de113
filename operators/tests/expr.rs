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

fn strs(a: ArrayRef) -> Vec<Option<String>> {
    a.as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect()
}

#[test]
fn like_and_string_comparisons() {
    let b = batch();
    assert_eq!(
        bools(col("s").like("_b").evaluate(&b).unwrap()),
        vec![Some(true), Some(false), None]
    );
    assert_eq!(
        bools(col("s").like("%").evaluate(&b).unwrap()),
        vec![Some(true), Some(true), None]
    );
    assert_eq!(
        bools(col("s").lt(lit("b")).evaluate(&b).unwrap()),
        vec![Some(true), Some(false), None],
        "'Ab' < 'b' < 'cd' in byte order"
    );
    assert_eq!(
        bools(col("s").not_eq(lit("cd")).evaluate(&b).unwrap()),
        vec![Some(true), Some(false), None]
    );
    assert_eq!(
        bools(lit("abc").like("a%").evaluate(&b).unwrap()),
        vec![Some(true); 3],
        "string functions accept literals"
    );
}

#[test]
fn case_mapping_handles_slices_and_non_ascii() {
    let s = StringArray::from(vec![Some("xYz"), Some("Hello"), None, Some("wOrld")]);
    let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
    let full = RecordBatch::try_new(schema, vec![Arc::new(s)]).unwrap();
    // A slice starts its offsets past zero; the fast path must keep them valid.
    let sliced = full.slice(1, 3);
    assert_eq!(
        strs(upper(col("s")).evaluate(&sliced).unwrap()),
        vec![Some("HELLO".into()), None, Some("WORLD".into())]
    );
    assert_eq!(
        strs(lower(col("s")).evaluate(&sliced).unwrap()),
        vec![Some("hello".into()), None, Some("world".into())]
    );
    let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
    let words = vec![Some("Straße"), None, Some("ÉCOLE"), Some("plain")];
    let b = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(words.clone()))]).unwrap();
    let want_upper: Vec<Option<String>> = words.iter().map(|w| w.map(str::to_uppercase)).collect();
    let want_lower: Vec<Option<String>> = words.iter().map(|w| w.map(str::to_lowercase)).collect();
    assert_eq!(strs(upper(col("s")).evaluate(&b).unwrap()), want_upper);
    assert_eq!(strs(lower(col("s")).evaluate(&b).unwrap()), want_lower);
    let len = length(col("s")).evaluate(&b).unwrap();
    let len: Vec<Option<i32>> = len
        .as_primitive::<arrow::datatypes::Int32Type>()
        .iter()
        .collect();
    // `length` counts characters, not bytes.
    let want: Vec<Option<i32>> = words
        .iter()
        .map(|w| w.map(|w| w.chars().count() as i32))
        .collect();
    assert_eq!(len, want);
}

#[test]
fn concat_reads_literals_once_and_propagates_nulls() {
    let b = batch();
    assert_eq!(
        strs(
            concat(vec![lit("<"), col("s"), lit(">")])
                .evaluate(&b)
                .unwrap()
        ),
        vec![Some("<Ab>".into()), Some("<cd>".into()), None]
    );
    assert_eq!(
        strs(concat(vec![lit("a"), lit("b")]).evaluate(&b).unwrap()),
        vec![Some("ab".into()); 3]
    );
}

#[test]
fn integer_widths_timestamps_and_division() {
    use arrow::array::{Int32Array, Int8Array, TimestampMillisecondArray};
    use arrow::datatypes::TimeUnit;
    let schema = Arc::new(Schema::new(vec![
        Field::new("small", DataType::Int8, false),
        Field::new("mid", DataType::Int32, false),
        Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int8Array::from(vec![100, -3])),
            Arc::new(Int32Array::from(vec![100_000, 7])),
            Arc::new(TimestampMillisecondArray::from(vec![1_000, 5_000])),
        ],
    )
    .unwrap();
    let sum = col("small") + col("mid");
    assert_eq!(sum.data_type(&schema).unwrap(), DataType::Int32);
    let got: Vec<i32> = sum
        .evaluate(&b)
        .unwrap()
        .as_primitive::<arrow::datatypes::Int32Type>()
        .values()
        .to_vec();
    assert_eq!(got, vec![100_100, 4]);
    assert_eq!(
        (col("mid") / lit(2)).data_type(&schema).unwrap(),
        DataType::Int64,
        "Int32 with an Int64 literal runs in Int64"
    );
    assert_eq!(
        ints((col("mid") / lit(2)).evaluate(&b).unwrap()),
        vec![Some(50_000), Some(3)],
        "integer division truncates"
    );
    assert!(
        (col("mid") / lit(0)).evaluate(&b).is_err(),
        "integer division by zero is an error"
    );
    let rem: Vec<f64> = (col("mid") % lit(2.5))
        .evaluate(&b)
        .unwrap()
        .as_primitive::<arrow::datatypes::Float64Type>()
        .values()
        .to_vec();
    assert_eq!(rem, vec![100_000.0 % 2.5, 7.0 % 2.5]);
    assert_eq!(
        bools(
            col("t")
                .gt_eq(lit_timestamp_ms(2_000))
                .evaluate(&b)
                .unwrap()
        ),
        vec![Some(false), Some(true)]
    );
    assert_eq!(
        bools(col("t").lt(lit(2_000)).evaluate(&b).unwrap()),
        vec![Some(true), Some(false)],
        "timestamps compare with integers as epoch values"
    );
    let e = col("t")
        .eq(lit("yesterday"))
        .data_type(&schema)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot compare 't'"), "{e}");
}

#[test]
fn boolean_logic_is_kleene_and_scalars_expand() {
    let b = batch();
    let a_null = col("a").gt(lit(0)); // [true, null, true]
    assert_eq!(
        bools(a_null.clone().and(lit(false)).evaluate(&b).unwrap()),
        vec![Some(false); 3],
        "false AND null is false"
    );
    assert_eq!(
        bools(a_null.clone().or(lit(true)).evaluate(&b).unwrap()),
        vec![Some(true); 3],
        "true OR null is true"
    );
    assert_eq!(
        bools(a_null.clone().not().evaluate(&b).unwrap()),
        vec![Some(false), None, Some(false)]
    );
    assert_eq!(
        bools(col("a").in_list(vec![]).evaluate(&b).unwrap()),
        vec![Some(false); 3]
    );
    let scalar = (lit(2) * lit(3)).evaluate(&b).unwrap();
    assert_eq!(ints(scalar), vec![Some(6); 3]);
    let empty = b.slice(0, 0);
    assert_eq!(lit(1).evaluate(&empty).unwrap().len(), 0);
}

#[test]
fn rendering_nullability_and_cast_errors() {
    let b = batch();
    let s = b.schema();
    assert_eq!(
        (col("a") * lit(2) + lit(1)).output_name(),
        "(a * 2) + 1",
        "nested operators are parenthesized"
    );
    assert_eq!((col("f") * lit(1.0)).output_name(), "f * 1.0");
    assert_eq!(
        col("s").like("a%").is_not_null().to_string(),
        "s LIKE 'a%' IS NOT NULL"
    );
    assert_eq!(lit_timestamp_ms(5).to_string(), "TIMESTAMP_MS 5");
    assert!(col("a").nullable(&s));
    assert!(!col("f").nullable(&s));
    assert!(!(col("f") * lit(2)).nullable(&s));
    assert!((col("f") + col("a")).nullable(&s));
    assert!(!col("a").is_null().nullable(&s));
    let e = col("s")
        .cast(DataType::Struct(Default::default()))
        .data_type(&s)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot cast 's'"), "{e}");
    let e = col("a").not().data_type(&s).unwrap_err().to_string();
    assert!(
        e.contains("NOT needs a boolean") && e.contains("'a' is Int64"),
        "{e}"
    );
    let e = concat(vec![col("s"), col("f")])
        .data_type(&s)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'f' is Float64"), "{e}");
    // Casting a string that is not a number yields null, not an error.
    let parsed = col("s").cast(DataType::Int64).evaluate(&b).unwrap();
    assert_eq!(ints(parsed), vec![None, None, None]);
}
