//! Checks that a JSON record fits a schema in one streaming pass, without
//! building a value tree: strings are borrowed from the record, numbers
//! are range-checked, objects are walked field by field against the
//! schema, and the top-level values are kept as [`Leaf`]s. With a flat
//! schema those go straight into columns (`super::columns`); otherwise the
//! record's bytes go to arrow-json's tape decoder after the check.
//!
//! The rules (the same for Kafka records and JSON-lines files, and those
//! of `kafka::format::check_object`, which still checks Avro values): no
//! field outside the schema, no null or missing non-nullable
//! field, integers in range for integer columns, no floats or strings
//! where integers are declared, and no duplicate fields (the two parsers
//! could keep different ones).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use arrow::datatypes::{DataType, Field, Fields};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A checked top-level field value, kept so that a flat record can be
/// appended to columns without parsing it again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Leaf<'de> {
    Null,
    Bool(bool),
    Int(i64),
    /// Above `i64::MAX`.
    UInt(u64),
    Float(f64),
    /// Borrowed from the record unless it had escapes.
    Str(Cow<'de, str>),
    /// A struct or list (checked, not kept).
    Nested,
}

/// The record schema, with its field names indexed when there are enough
/// of them that looking a key up by comparing names would cost more than
/// hashing it.
pub(crate) struct RecordShape {
    fields: Fields,
    index: Option<HashMap<String, usize>>,
}

/// Fields above which keys are looked up by hash.
const INDEXED_FIELDS: usize = 8;

impl RecordShape {
    pub(crate) fn new(fields: Fields) -> Self {
        let index = (fields.len() > INDEXED_FIELDS).then(|| {
            fields
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name().clone(), i))
                .collect()
        });
        RecordShape { fields, index }
    }

    /// Checks a record; on success `slots` holds its value per field
    /// (`Null` for absent ones). Fails with a message naming the field.
    pub(crate) fn check<'de>(
        &self,
        bytes: &'de [u8],
        slots: &mut Vec<Leaf<'de>>,
    ) -> Result<(), String> {
        slots.clear();
        slots.resize(self.fields.len(), Leaf::Null);
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let seed = ValueSeed {
            // Unused at the root, where `fields` decides.
            dt: &DataType::Null,
            fields: Some(&self.fields),
            nullable: false,
            path: Path::Root,
            slots: Some(slots),
            index: self.index.as_ref(),
        };
        seed.deserialize(&mut de)
            .and_then(|_| de.end())
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => strip_position(&e),
                _ => format!("invalid JSON: {e}"),
            })
    }
}

/// Our own messages carry no position worth keeping (they name the field).
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Where in the record a value is, rendered only for messages.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str("record"),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Item(parent) => write!(f, "{parent}[]"),
        }
    }
}

impl Path<'_> {
    fn describe(&self) -> String {
        match self {
            Path::Root => "record".to_string(),
            p => format!("field '{p}'"),
        }
    }
}

/// Checks one value against `dt` (or, with `fields`, against an object of
/// those fields: the record itself, whose field values go to `slots` and
/// whose keys `index` may resolve).
struct ValueSeed<'a, 'de> {
    dt: &'a DataType,
    fields: Option<&'a Fields>,
    nullable: bool,
    path: Path<'a>,
    slots: Option<&'a mut Vec<Leaf<'de>>>,
    index: Option<&'a HashMap<String, usize>>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, 'de> {
    type Value = Leaf<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Leaf<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> ValueSeed<'_, 'de> {
    fn mismatch<E: de::Error>(&self, found: &str) -> E {
        let expected = match self.fields {
            Some(_) => "an object".to_string(),
            None => self.dt.to_string(),
        };
        E::custom(format!(
            "{} is {found}, expected {expected}",
            self.path.describe()
        ))
    }

    fn leaf<E: de::Error>(&self, fits: bool, found: &str, leaf: Leaf<'de>) -> Result<Leaf<'de>, E> {
        if fits {
            Ok(leaf)
        } else {
            Err(self.mismatch(found))
        }
    }

    fn is_str(&self) -> bool {
        self.fields.is_none() && matches!(self.dt, DataType::Utf8 | DataType::LargeUtf8)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, 'de> {
    type Value = Leaf<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a value of type {}", self.dt)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Leaf<'de>, E> {
        let fits = self.fields.is_none() && *self.dt == DataType::Boolean;
        self.leaf(fits, "a boolean", Leaf::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, x: i64) -> Result<Leaf<'de>, E> {
        let fits = self.fields.is_none()
            && match self.dt {
                DataType::Int8 => i8::try_from(x).is_ok(),
                DataType::Int16 => i16::try_from(x).is_ok(),
                DataType::Int32 => i32::try_from(x).is_ok(),
                DataType::Int64 | DataType::Timestamp(_, None) => true,
                DataType::UInt8 => u8::try_from(x).is_ok(),
                DataType::UInt16 => u16::try_from(x).is_ok(),
                DataType::UInt32 => u32::try_from(x).is_ok(),
                DataType::UInt64 => x >= 0,
                DataType::Float32 | DataType::Float64 => true,
                _ => false,
            };
        self.leaf(fits, "an integer", Leaf::Int(x))
    }

    fn visit_u64<E: de::Error>(self, x: u64) -> Result<Leaf<'de>, E> {
        match i64::try_from(x) {
            Ok(x) => self.visit_i64(x),
            // Above i64::MAX: only unsigned 64-bit and float columns hold it.
            Err(_) => {
                let fits = self.fields.is_none()
                    && matches!(
                        self.dt,
                        DataType::UInt64 | DataType::Float32 | DataType::Float64
                    );
                self.leaf(fits, "an integer", Leaf::UInt(x))
            }
        }
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Leaf<'de>, E> {
        let fits =
            self.fields.is_none() && matches!(self.dt, DataType::Float32 | DataType::Float64);
        self.leaf(fits, "a float", Leaf::Float(x))
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Leaf<'de>, E> {
        self.leaf(self.is_str(), "a string", Leaf::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Leaf<'de>, E> {
        if self.is_str() {
            Ok(Leaf::Str(Cow::Owned(s.to_string())))
        } else {
            Err(self.mismatch("a string"))
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Leaf<'de>, E> {
        if self.nullable {
            Ok(Leaf::Null)
        } else if let Path::Root = self.path {
            Err(self.mismatch("null"))
        } else {
            Err(E::custom(format!(
                "field '{}' is missing or null",
                self.path
            )))
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Leaf<'de>, A::Error> {
        let item = match (self.fields, self.dt) {
            (None, DataType::List(item)) => item,
            _ => return Err(self.mismatch("an array")),
        };
        let path = Path::Item(&self.path);
        while seq
            .next_element_seed(ValueSeed {
                dt: item.data_type(),
                fields: None,
                nullable: item.is_nullable(),
                path,
                slots: None,
                index: None,
            })?
            .is_some()
        {}
        Ok(Leaf::Nested)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Leaf<'de>, A::Error> {
        let fields = match (self.fields, self.dt) {
            (Some(f), _) | (None, DataType::Struct(f)) => f,
            _ => return Err(self.mismatch("an object")),
        };
        let mut slots = self.slots;
        let mut seen = Seen::new(fields.len());
        while let Some(i) = map.next_key_seed(KeySeed {
            fields,
            index: self.index,
            path: &self.path,
        })? {
            if !seen.insert(i) {
                return Err(de::Error::custom(format!(
                    "field '{}' appears twice",
                    Path::Field(&self.path, fields[i].name())
                )));
            }
            let f: &Field = &fields[i];
            let leaf = map.next_value_seed(ValueSeed {
                dt: f.data_type(),
                fields: None,
                nullable: f.is_nullable(),
                path: Path::Field(&self.path, f.name()),
                slots: None,
                index: None,
            })?;
            if let Some(s) = slots.as_deref_mut() {
                s[i] = leaf;
            }
        }
        if let Some(f) = fields
            .iter()
            .enumerate()
            .find(|(i, f)| !f.is_nullable() && !seen.contains(*i))
            .map(|(_, f)| f)
        {
            return Err(de::Error::custom(format!(
                "field '{}' is missing or null",
                Path::Field(&self.path, f.name())
            )));
        }
        Ok(Leaf::Nested)
    }
}

/// Resolves an object key to its field's index, or fails naming it.
struct KeySeed<'a> {
    fields: &'a Fields,
    index: Option<&'a HashMap<String, usize>>,
    path: &'a Path<'a>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<usize, E> {
        match self.index {
            Some(index) => index.get(key).copied(),
            None => self.fields.iter().position(|f| f.name() == key),
        }
        .ok_or_else(|| E::custom(format!("unknown field '{}'", Path::Field(self.path, key))))
    }
}

/// Fields of one object seen so far.
enum Seen {
    Small(u64),
    Large(Vec<bool>),
}

impl Seen {
    fn new(n: usize) -> Self {
        if n <= 64 {
            Seen::Small(0)
        } else {
            Seen::Large(vec![false; n])
        }
    }

    /// Marks `i`; false when it was already marked.
    fn insert(&mut self, i: usize) -> bool {
        match self {
            Seen::Small(bits) => {
                let was = *bits & (1 << i) != 0;
                *bits |= 1 << i;
                !was
            }
            Seen::Large(v) => !std::mem::replace(&mut v[i], true),
        }
    }

    fn contains(&self, i: usize) -> bool {
        match self {
            Seen::Small(bits) => *bits & (1 << i) != 0,
            Seen::Large(v) => v[i],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::TimeUnit;
    use std::sync::Arc;

    fn fields() -> Fields {
        let city = Field::new("city", DataType::Utf8, true);
        Fields::from(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("small", DataType::Int8, true),
            Field::new("u", DataType::UInt64, true),
            Field::new("x", DataType::Float64, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("addr", DataType::Struct(Fields::from(vec![city])), true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, false))),
                true,
            ),
        ])
    }

    fn check(s: &str) -> Result<(), String> {
        RecordShape::new(fields()).check(s.as_bytes(), &mut Vec::new())
    }

    #[test]
    fn field_values_are_kept_in_schema_order() {
        let mut slots = Vec::new();
        let rec = br#"{"x": 2, "ok": true, "id": -1, "u": 18446744073709551615, "addr": null}"#;
        RecordShape::new(fields()).check(rec, &mut slots).unwrap();
        assert_eq!(
            slots[..6],
            [
                Leaf::Int(-1),
                Leaf::Null,
                Leaf::UInt(u64::MAX),
                Leaf::Int(2),
                Leaf::Bool(true),
                Leaf::Null
            ]
        );
        let rec = br#"{"id": 1, "addr": {"city": "a"}, "tags": ["q\"r"]}"#;
        RecordShape::new(fields()).check(rec, &mut slots).unwrap();
        assert_eq!(slots[6..], [Leaf::Nested, Leaf::Nested]);
        let f = Fields::from(vec![Field::new("s", DataType::Utf8, false)]);
        let f = RecordShape::new(f);
        f.check(br#"{"s": "plain"}"#, &mut slots).unwrap();
        assert!(matches!(&slots[0], Leaf::Str(Cow::Borrowed("plain"))));
        f.check(br#"{"s": "tab\there"}"#, &mut slots).unwrap();
        assert_eq!(slots[0], Leaf::Str(Cow::Owned("tab\there".into())));
    }

    #[test]
    fn records_that_fit_pass() {
        check(r#"{"id": 1}"#).unwrap();
        check(r#"{"id": -5, "small": -128, "u": 18446744073709551615, "x": 3}"#).unwrap();
        check(r#"{"id": 1, "x": 1.5e3, "ok": false, "ts": 1700000000000, "small": null}"#).unwrap();
        check(r#"{"id": 1, "addr": {"city": "a\"b"}, "tags": ["a", "b"]}"#).unwrap();
        check(r#"  {"id": 1, "addr": null, "tags": []}  "#).unwrap();
    }

    #[test]
    fn records_that_do_not_fit_name_the_field() {
        let cases = [
            (r#"{"id": "1"}"#, "field 'id' is a string, expected Int64"),
            (r#"{"id": 1.0}"#, "field 'id' is a float, expected Int64"),
            (r#"{"id": 1, "small": 128}"#, "field 'small' is an integer"),
            (r#"{"id": 1, "u": -1}"#, "field 'u' is an integer"),
            (r#"{"id": 9223372036854775808}"#, "field 'id' is an integer"),
            (r#"{"small": 1}"#, "field 'id' is missing or null"),
            (r#"{"id": null}"#, "field 'id' is missing or null"),
            (r#"{"id": 1, "more": 2}"#, "unknown field 'more'"),
            (r#"{"id": 1, "id": 2}"#, "field 'id' appears twice"),
            (
                r#"{"id": 1, "addr": {"town": "x"}}"#,
                "unknown field 'addr.town'",
            ),
            (
                r#"{"id": 1, "addr": {"city": 7}}"#,
                "field 'addr.city' is an integer",
            ),
            (r#"{"id": 1, "addr": []}"#, "field 'addr' is an array"),
            (
                r#"{"id": 1, "tags": [null]}"#,
                "field 'tags[]' is missing or null",
            ),
            (r#"{"id": 1, "tags": "a"}"#, "field 'tags' is a string"),
            (r#"[1]"#, "record is an array, expected an object"),
            (r#"null"#, "record is null, expected an object"),
            (r#"{"id": 1} x"#, "invalid JSON"),
            (r#"{"id": 1"#, "invalid JSON"),
            ("not json", "invalid JSON"),
        ];
        for (input, want) in cases {
            let err = check(input).expect_err(input);
            assert!(err.contains(want), "{input}: {err}");
            assert!(
                !err.contains(" at line ") || want == "invalid JSON",
                "{err}"
            );
        }
    }

    #[test]
    fn wide_objects_track_fields_beyond_64() {
        let wide = Fields::from(
            (0..100)
                .map(|i| Field::new(format!("f{i}"), DataType::Int64, i != 99))
                .collect::<Vec<_>>(),
        );
        let slots = &mut Vec::new();
        let wide = RecordShape::new(wide);
        assert!(wide.index.is_some());
        wide.check(br#"{"f0": 1, "f99": 2}"#, slots).unwrap();
        let err = wide
            .check(br#"{"f70": 1, "f70": 2, "f99": 1}"#, slots)
            .unwrap_err();
        assert!(err.contains("appears twice"), "{err}");
        let err = wide.check(br#"{"f0": 1}"#, slots).unwrap_err();
        assert!(err.contains("'f99' is missing"), "{err}");
        let err = wide.check(br#"{"f99": 1, "g": 2}"#, slots).unwrap_err();
        assert!(err.contains("unknown field 'g'"), "{err}");
        wide.check(br#"{"f99": 1, "f5": 2}"#, slots).unwrap();
        assert_eq!((&slots[5], &slots[99]), (&Leaf::Int(2), &Leaf::Int(1)));
    }
}
