//! The scanner against the serde check it stands in for: whatever it
//! accepts, the check accepts with the same values; the common shapes it
//! accepts itself (or it would not be a fast path).

use super::*;
use crate::json::check::RecordShape;
use arrow::datatypes::{Field, TimeUnit};
use proptest::prelude::*;

fn fields() -> Fields {
    Fields::from(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("small", DataType::Int8, true),
        Field::new("u8", DataType::UInt8, true),
        Field::new("u", DataType::UInt64, true),
        Field::new("x", DataType::Float64, true),
        Field::new("f", DataType::Float32, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("ключ", DataType::LargeUtf8, true),
    ])
}

/// What the scanner says (`None`: undecided) and what the check says.
type Verdicts<'a> = (Option<Vec<Leaf<'a>>>, Result<Vec<Leaf<'a>>, String>);

fn both<'a>(fields: &Fields, rec: &'a [u8]) -> Verdicts<'a> {
    let scan = FlatScan::new(fields).expect("flat fields");
    let mut fast = Vec::new();
    let fast = scan.scan(rec, &mut fast).then_some(fast);
    let mut slow = Vec::new();
    let slow = RecordShape::new(fields.clone())
        .check(rec, &mut slow)
        .map(|_| slow);
    (fast, slow)
}

/// The scanner never accepts what the check rejects, and keeps the same
/// values (floats compared by bits: `-0.0` and `0.0` differ).
fn agrees(fields: &Fields, rec: &[u8]) -> bool {
    let (fast, slow) = both(fields, rec);
    if let Some(fast) = &fast {
        let slow = slow.unwrap_or_else(|e| {
            panic!(
                "scanner accepted what the check rejects ({e}): {}",
                String::from_utf8_lossy(rec)
            )
        });
        assert_eq!(fast.len(), slow.len());
        for (a, b) in fast.iter().zip(&slow) {
            match (a, b) {
                (Leaf::Float(a), Leaf::Float(b)) => {
                    assert_eq!(a.to_bits(), b.to_bits(), "{}", String::from_utf8_lossy(rec))
                }
                _ => assert_eq!(a, b, "{}", String::from_utf8_lossy(rec)),
            }
        }
    }
    fast.is_some()
}

#[test]
fn common_records_are_scanned_with_the_checks_values() {
    let f = fields();
    let accepted = [
        r#"{"id": 1}"#,
        r#"{"id":1,"small":-128,"u8":255,"u":18446744073709551615,"x":1.5e3,"f":-2,"ok":true,"s":"a","ts":1700000000000,"ключ":"значение"}"#,
        // Out of order, whitespace everywhere, nulls for nullable fields.
        " \t\r\n{ \"s\" : null , \"id\" : -9223372036854775808 , \"ok\" : false } \n",
        r#"{"id": 9223372036854775807, "u": 9223372036854775808, "x": 18446744073709551615}"#,
        r#"{"id": 0, "x": -0.0, "f": 1E-2, "u": 0, "small": 127}"#,
        r#"{"id": 0, "x": 1e-400, "f": 0e999}"#,
        r#"{"id": 0, "x": 123456789012345678901234567890.5}"#,
        r#"{"id": 0, "x": 2.2250738585072011e-308, "f": 4.9e-324}"#,
        // Escapes, including a surrogate pair and an escaped NUL.
        r#"{"id": 0, "s": "q\"b\\s\/\b\f\n\r\t\u00e9\uD83D\uDE00\u0000 ok"}"#,
        // Raw multi-byte UTF-8 in a value.
        "{\"id\": 0, \"s\": \"caf\u{e9} \u{1F600}\"}",
        r#"{"id": 0, "s": ""}"#,
    ];
    for rec in accepted {
        assert!(agrees(&f, rec.as_bytes()), "not scanned: {rec}");
    }
    let mut slots = Vec::new();
    let scan = FlatScan::new(&f).unwrap();
    assert!(scan.scan(br#"{"id": 1, "s": "plain"}"#, &mut slots));
    assert!(matches!(&slots[7], Leaf::Str(Cow::Borrowed("plain"))));
    assert!(scan.scan(br#"{"id": 1, "s": "a\u00e9\n"}"#, &mut slots));
    assert!(matches!(&slots[7], Leaf::Str(Cow::Owned(s)) if s == "a\u{e9}\n"));
}

#[test]
fn everything_else_is_left_to_the_check() {
    let f = fields();
    let undecided = [
        // Not the schema: missing, null required, unknown, twice, mistyped.
        r#"{}"#,
        r#"{"small": 1}"#,
        r#"{"id": null}"#,
        r#"{"id": 1, "more": 2}"#,
        r#"{"id": 1, "id": 2}"#,
        r#"{"id": "1"}"#,
        r#"{"id": 1.0}"#,
        r#"{"id": 1e2}"#,
        r#"{"id": 1, "small": 128}"#,
        r#"{"id": 1, "small": -129}"#,
        r#"{"id": 1, "u8": 256}"#,
        r#"{"id": 1, "u8": -1}"#,
        r#"{"id": 1, "u": -1}"#,
        r#"{"id": 9223372036854775808}"#,
        r#"{"id": -9223372036854775809}"#,
        r#"{"id": 1, "x": "1"}"#,
        r#"{"id": 1, "ok": 1}"#,
        r#"{"id": 1, "s": 1}"#,
        r#"{"id": 1, "s": ["a"]}"#,
        r#"{"id": 1, "s": {"a": 1}}"#,
        r#"{"id": 1, "ok": "true"}"#,
        // Numbers serde_json reads otherwise or rejects.
        r#"{"id": 1, "x": -0}"#,
        r#"{"id": 1, "x": 18446744073709551616}"#,
        r#"{"id": 1, "x": 1e400}"#,
        r#"{"id": 1, "x": -1e400}"#,
        r#"{"id": 01}"#,
        r#"{"id": -}"#,
        r#"{"id": +1}"#,
        r#"{"id": 1, "x": 1.}"#,
        r#"{"id": 1, "x": .5}"#,
        r#"{"id": 1, "x": 1e}"#,
        r#"{"id": 1, "x": 1e+}"#,
        r#"{"id": 1, "x": NaN}"#,
        r#"{"id": 1, "x": Infinity}"#,
        r#"{"id": 1x}"#,
        // Strings: control characters, bad escapes, lone surrogates, bad UTF-8.
        "{\"id\": 1, \"s\": \"tab\there\"}",
        r#"{"id": 1, "s": "\x41"}"#,
        r#"{"id": 1, "s": "\u00"}"#,
        r#"{"id": 1, "s": "\uZZZZ"}"#,
        r#"{"id": 1, "s": "\uD83D"}"#,
        r#"{"id": 1, "s": "\uD83Dx"}"#,
        r#"{"id": 1, "s": "\uD83D\u0041"}"#,
        r#"{"id": 1, "s": "\uDE00"}"#,
        r#"{"id": 1, "s": "unterminated}"#,
        r#"{"i\u0064": 1}"#,
        // Not JSON, or not one object.
        r#"{"id": 1"#,
        r#"{"id": 1,}"#,
        r#"{"id": 1} x"#,
        r#"{"id": 1}{"id": 2}"#,
        r#"{"id" 1}"#,
        r#"{id: 1}"#,
        r#"{"id": 1 "ok": true}"#,
        r#"{"id": 1, "ok": tru}"#,
        r#"{"id": 1, "ok": truex}"#,
        r#"{"id": 1, "s": nul}"#,
        r#"[1]"#,
        "null",
        "",
        "   ",
        "not json",
    ];
    for rec in undecided {
        assert!(!agrees(&f, rec.as_bytes()), "scanned: {rec}");
    }
    let mut bad_utf8 = br#"{"id": 1, "s": "ab"}"#.to_vec();
    bad_utf8[17] = 0xff;
    assert!(!agrees(&f, &bad_utf8));
    let mut bad_utf8 = br#"{"id": 1, "s": "a\n"}"#.to_vec();
    bad_utf8[16] = 0xc3;
    assert!(!agrees(&f, &bad_utf8));
}

#[test]
fn only_flat_schemas_of_up_to_64_fields_are_scanned() {
    let nested = Fields::from(vec![Field::new(
        "a",
        DataType::Struct(Fields::from(vec![Field::new("b", DataType::Int64, true)])),
        true,
    )]);
    assert!(FlatScan::new(&nested).is_none());
    let list = Fields::from(vec![Field::new_list(
        "a",
        Field::new("item", DataType::Int64, true),
        true,
    )]);
    assert!(FlatScan::new(&list).is_none());
    let wide = |n: usize| {
        Fields::from(
            (0..n)
                .map(|i| Field::new(format!("f{i}"), DataType::Int64, i != n - 1))
                .collect::<Vec<_>>(),
        )
    };
    assert!(FlatScan::new(&wide(65)).is_none());
    let f = wide(64);
    // The required field is the 64th: its bit is the top one.
    assert!(agrees(&f, br#"{"f0": 1, "f63": 2}"#));
    assert!(!agrees(&f, br#"{"f0": 1}"#));
    assert!(!agrees(&f, br#"{"f63": 1, "f63": 2}"#));
}

/// Records built from pieces that are often right and sometimes not, then
/// sometimes cut or with a byte changed.
fn record() -> impl Strategy<Value = Vec<u8>> {
    let key = prop::sample::select(vec![
        "id", "small", "u8", "u", "x", "f", "ok", "s", "ts", "ключ", "other", "i\\u0064", "",
    ]);
    let value = prop::sample::select(vec![
        "0",
        "-0",
        "1",
        "-1",
        "127",
        "-128",
        "255",
        "256",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "18446744073709551616",
        "1.5",
        "-2.5e-3",
        "1e308",
        "1e309",
        "4.9e-324",
        "0.1",
        "00",
        "1.",
        "true",
        "false",
        "null",
        "\"\"",
        "\"a\"",
        "\"caf\u{e9}\"",
        "\"\\u00e9\\n\"",
        "\"\\uD83D\\uDE00\"",
        "\"\\uD83D\"",
        "\"\\q\"",
        "[]",
        "{}",
    ]);
    let ws = prop::sample::select(vec!["", " ", "\n\t", "\r "]);
    let member = (ws.clone(), key, ws.clone(), value, ws.clone())
        .prop_map(|(a, k, b, v, c)| format!("{a}\"{k}\"{b}:{c}{v}"));
    let body = prop::collection::vec(member, 0..6).prop_map(|ms| format!("{{{}}}", ms.join(",")));
    let edit = prop_oneof![
        4 => Just(None),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(Some),
    ];
    let cut = prop_oneof![4 => Just(None), 1 => any::<prop::sample::Index>().prop_map(Some)];
    (body, edit, cut).prop_map(|(body, edit, cut)| {
        let mut b = body.into_bytes();
        if let Some((at, byte)) = edit {
            let at = at.index(b.len());
            b[at] = byte;
        }
        if let Some(at) = cut {
            b.truncate(at.index(b.len() + 1));
        }
        b
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn scanner_never_disagrees_with_the_check(rec in record()) {
        agrees(&fields(), &rec);
    }

    #[test]
    fn floats_parse_as_serde_json_parses_them(
        mantissa in "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,24})?",
        exp in prop::option::of(-330i32..330),
    ) {
        let number = match exp {
            Some(e) => format!("{mantissa}e{e}"),
            None if mantissa.contains('.') => mantissa,
            None => format!("{mantissa}.0"),
        };
        let rec = format!(r#"{{"id": 1, "x": {number}}}"#);
        // Only what overflows to infinity is left to the check.
        let finite = number.parse::<f64>().expect("a float").is_finite();
        prop_assert_eq!(agrees(&fields(), rec.as_bytes()), finite, "{}", rec);
    }
}
