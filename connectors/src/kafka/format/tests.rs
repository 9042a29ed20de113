//! Record formats: decoding, the strict JSON check, inference and the
//! schema text, against hand-made records.

use super::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;

fn recs(values: &[Option<&str>]) -> RawRecords {
    let mut r = RawRecords::default();
    for (i, v) in values.iter().enumerate() {
        r.push(
            10 + i as i64,
            Some(1000 + i as i64),
            None,
            v.map(str::as_bytes),
        );
    }
    r
}

fn schema() -> SchemaRef {
    schema_from_json(&serde_json::json!([
        {"name": "id", "type": "int64", "nullable": false},
        {"name": "name", "type": "string"},
        {"name": "addr", "type": {"struct": [{"name": "city", "type": "string"}]}},
        {"name": "tags", "type": {"list": "string"}},
    ]))
    .unwrap()
}

#[test]
fn json_records_that_do_not_fit_are_reported_not_coerced() {
    let mut d = Decoder::new(Format::Json(schema())).unwrap();
    let input = recs(&[
        Some(r#"{"id": 1, "name": "a", "addr": {"city": "x"}, "tags": ["t"]}"#),
        Some(r#"{"id": "2"}"#),
        Some(r#"{"id": 3, "extra": true}"#),
        Some("not json"),
        None,
        Some(r#"{"id": 4.5}"#),
        Some(r#"{"name": "no id"}"#),
        Some(r#"{"id": 6, "addr": {"city": 7}}"#),
        Some(r#"[1, 2]"#),
        Some(r#"{"id": 9}"#),
    ]);
    let mut bad = Vec::new();
    let b = d
        .decode(3, &input, &mut |i, e| {
            bad.push((i, e));
            Ok(())
        })
        .unwrap();
    assert_eq!(b.num_rows(), 2);
    let offsets: Vec<i64> = b.column(1).as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(offsets, vec![10, 19]);
    let ids: Vec<i64> = b.column(3).as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(ids, vec![1, 9]);
    assert!(b.column(4).is_null(1));
    let idx: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(bad[0].1.contains("field 'id' is a string"), "{}", bad[0].1);
    assert!(bad[1].1.contains("unknown field 'extra'"), "{}", bad[1].1);
    assert!(bad[2].1.contains("invalid JSON"), "{}", bad[2].1);
    assert!(bad[3].1.contains("tombstone"));
    assert!(bad[6].1.contains("addr.city"), "{}", bad[6].1);
}

#[test]
fn a_failing_policy_stops_decoding() {
    let mut d = Decoder::new(Format::String).unwrap();
    let mut r = RawRecords::default();
    r.push(0, None, None, Some(b"ok"));
    r.push(1, None, None, Some(&[0xff, 0xfe]));
    let err = d
        .decode(0, &r, &mut |i, e| {
            Err(Error::Decode(format!("offset {i}: {e}")))
        })
        .unwrap_err();
    assert!(err.to_string().contains("offset 1: value is not UTF-8"));
}

#[test]
fn raw_keeps_bytes_and_tombstones() {
    let mut d = Decoder::new(Format::Raw).unwrap();
    let mut r = RawRecords::default();
    r.push(5, None, Some(b"k"), Some(&[0, 1, 2]));
    r.push(6, None, None, None);
    let b = d
        .decode(1, &r, &mut |_, _| panic!("no bad records"))
        .unwrap();
    let v = b.column(3).as_binary::<i32>();
    assert_eq!(v.value(0), &[0, 1, 2]);
    assert!(v.is_null(1));
    assert_eq!(r.keys.get(0), Some(&b"k"[..]));
    assert_eq!(r.keys.get(1), None);
}

#[test]
fn inference_widens_and_nests() {
    let samples = [
        r#"{"a": 1, "b": "x", "c": {"d": true}}"#,
        r#"{"a": 2.5, "e": [1, 2]}"#,
        "garbage",
    ];
    let s = infer_json_schema(samples.iter().map(|s| s.as_bytes())).unwrap();
    assert_eq!(
        s.field_with_name("a").unwrap().data_type(),
        &DataType::Float64
    );
    assert_eq!(s.field_with_name("b").unwrap().data_type(), &DataType::Utf8);
    assert!(matches!(
        s.field_with_name("c").unwrap().data_type(),
        DataType::Struct(f) if f[0].data_type() == &DataType::Boolean
    ));
    assert!(matches!(
        s.field_with_name("e").unwrap().data_type(),
        DataType::List(f) if f.data_type() == &DataType::Int64
    ));
    // One odd value does not turn a column of numbers into strings.
    let odd = [
        r#"{"id": 1}"#,
        r#"{"id": 2}"#,
        r#"{"id": "three"}"#,
        r#"{"id": 4}"#,
    ];
    let o = infer_json_schema(odd.iter().map(|s| s.as_bytes())).unwrap();
    assert_eq!(
        o.field_with_name("id").unwrap().data_type(),
        &DataType::Int64
    );
    // The textual form round-trips.
    let back = schema_from_json(&schema_to_json(&s).unwrap()).unwrap();
    assert_eq!(back.fields().len(), s.fields().len());
    for (x, y) in back.fields().iter().zip(s.fields().iter()) {
        assert_eq!(
            (x.name(), x.data_type().is_nested()),
            (y.name(), y.data_type().is_nested())
        );
    }
}

#[test]
fn metadata_names_cannot_be_fields() {
    let s = Arc::new(Schema::new(vec![Field::new(
        "_offset",
        DataType::Int64,
        true,
    )]));
    assert!(Format::Json(s).output_schema().is_err());
}

#[test]
fn json_floats_decode_to_the_value_written() {
    // Shortest round-trip forms, which a fast (not correctly rounded)
    // parser gets wrong in the last bit.
    let xs = [
        -948667.7817137721f64,
        0.1,
        1e-300,
        2.2250738585072014e-308,
        123456.78901234567,
    ];
    let mut r = RawRecords::default();
    let bytes: Vec<Vec<u8>> = xs
        .iter()
        .map(|x| serde_json::to_vec(&serde_json::json!({"id": 1, "x": x})).unwrap())
        .collect();
    for b in &bytes {
        r.push(0, None, None, Some(b));
    }
    let mut d = Decoder::new(Format::Json(flat_schema())).unwrap();
    let out = d
        .decode(0, &r, &mut |i, e| panic!("record {i}: {e}"))
        .unwrap();
    let col = out
        .column_by_name("x")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .unwrap();
    for (i, x) in xs.iter().enumerate() {
        assert_eq!(col.value(i).to_bits(), x.to_bits(), "{x}");
    }
}

/// JSON values over field names `keys` (the schema's and one it
/// lacks), with every kind of value in every place.
fn value(keys: &'static [&'static str]) -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-200i64..300).prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z\\\\\"é]{0,4}".prop_map(Value::from),
    ];
    let nested = prop_oneof![
        4 => leaf.clone(),
        1 => proptest::collection::vec(leaf.clone(), 0..3).prop_map(Value::Array),
        1 => proptest::option::of(leaf.clone()).prop_map(|c| {
            Value::Object(c.into_iter().map(|v| ("city".to_string(), v)).collect())
        }),
    ];
    prop_oneof![
        9 => proptest::collection::vec((0..keys.len(), nested.clone()), 0..6).prop_map(
            move |kvs| {
                Value::Object(kvs.into_iter().map(|(k, v)| (keys[k].to_string(), v)).collect())
            }
        ),
        1 => nested,
    ]
}

fn flat_schema() -> SchemaRef {
    schema_from_json(&serde_json::json!([
        {"name": "id", "type": "int64", "nullable": false},
        {"name": "n", "type": "int8"},
        {"name": "u", "type": "uint64"},
        {"name": "x", "type": "float64"},
        {"name": "s", "type": "string"},
        {"name": "b", "type": "bool"},
        {"name": "ts", "type": "timestamp_ms"},
    ]))
    .unwrap()
}

/// The streaming check accepts exactly the records the value check
/// accepts, and the decoder (flat columns or arrow-json's) turns them
/// into the rows arrow-json makes of the values.
fn agrees(
    fields: SchemaRef,
    values: Vec<Value>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let bytes: Vec<Vec<u8>> = values
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap())
        .collect();
    let mut r = RawRecords::default();
    for b in &bytes {
        r.push(0, None, None, Some(b));
    }
    let mut rejected = Vec::new();
    let mut d = Decoder::new(Format::Json(fields.clone())).unwrap();
    let fast = d
        .decode(0, &r, &mut |i, _| {
            rejected.push(i);
            Ok(())
        })
        .unwrap();
    let fits: Vec<bool> = values
        .iter()
        .map(|v| check_object(v, fields.fields(), "").is_ok())
        .collect();
    let expected: Vec<usize> = (0..values.len()).filter(|&i| !fits[i]).collect();
    proptest::prop_assert_eq!(&rejected, &expected, "{:?}", values);
    let good: Vec<&Value> = values
        .iter()
        .zip(&fits)
        .filter(|(_, f)| **f)
        .map(|(v, _)| v)
        .collect();
    let mut slow = arrow::json::ReaderBuilder::new(fields.clone())
        .build_decoder()
        .unwrap();
    slow.serialize(&good).unwrap();
    let slow = slow
        .flush()
        .unwrap()
        .unwrap_or_else(|| RecordBatch::new_empty(fields));
    proptest::prop_assert_eq!(fast.columns()[3..].to_vec(), slow.columns().to_vec());
    Ok(())
}

proptest::proptest! {
    #[test]
    fn nested_json_decodes_as_arrow_json_decodes_checked_values(
        vs in proptest::collection::vec(value(&["id", "name", "addr", "tags", "extra"]), 1..8)
    ) {
        agrees(schema(), vs)?;
    }

    #[test]
    fn flat_json_decodes_as_arrow_json_decodes_checked_values(
        vs in proptest::collection::vec(value(&["id", "n", "u", "x", "s", "b", "ts", "extra"]), 1..8)
    ) {
        agrees(flat_schema(), vs)?;
    }
}
