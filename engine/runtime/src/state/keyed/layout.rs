//! The shape of a state type as serde sees it, at its top level: a
//! struct's name and field names, a tuple's arity, an enum's variants, a
//! primitive's kind. Keyed state is stored with `postcard`, which does not
//! describe itself, so a checkpoint records the shape of every state's type
//! and a restore into a different shape (a field added, removed, renamed or
//! reordered) is refused with an error naming the operator and the state,
//! instead of misreading the bytes. Nested types are not traced: a change
//! inside a field's own type is not caught here (reading a value then fails
//! with a decoding error naming the state).

use serde::de::{self, DeserializeOwned, Visitor};

/// The top-level shape of `T`.
pub fn layout_of<T: DeserializeOwned>() -> String {
    let mut r = Recorder(String::new());
    let _ = T::deserialize(&mut r);
    r.0
}

/// Stops the trace right after the first call.
#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("layout traced")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Stop
    }
}

struct Recorder(String);

macro_rules! record {
    ($($method:ident => $what:expr),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, Stop> {
                self.0 = $what.to_string();
                Err(Stop)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for &mut Recorder {
    type Error = Stop;

    record! {
        deserialize_any => "any",
        deserialize_bool => "bool",
        deserialize_i8 => "i8",
        deserialize_i16 => "i16",
        deserialize_i32 => "i32",
        deserialize_i64 => "i64",
        deserialize_i128 => "i128",
        deserialize_u8 => "u8",
        deserialize_u16 => "u16",
        deserialize_u32 => "u32",
        deserialize_u64 => "u64",
        deserialize_u128 => "u128",
        deserialize_f32 => "f32",
        deserialize_f64 => "f64",
        deserialize_char => "char",
        deserialize_str => "string",
        deserialize_string => "string",
        deserialize_bytes => "bytes",
        deserialize_byte_buf => "bytes",
        deserialize_option => "option",
        deserialize_unit => "unit",
        deserialize_seq => "seq",
        deserialize_map => "map",
        deserialize_identifier => "identifier",
        deserialize_ignored_any => "ignored",
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _v: V,
    ) -> Result<V::Value, Stop> {
        self.0 = format!("unit struct {name}");
        Err(Stop)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _v: V,
    ) -> Result<V::Value, Stop> {
        self.0 = format!("newtype {name}");
        Err(Stop)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, _v: V) -> Result<V::Value, Stop> {
        self.0 = format!("tuple of {len}");
        Err(Stop)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        _v: V,
    ) -> Result<V::Value, Stop> {
        self.0 = format!("tuple struct {name} of {len}");
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, Stop> {
        self.0 = format!("struct {name} {{ {} }}", fields.join(", "));
        Err(Stop)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, Stop> {
        self.0 = format!("enum {name} {{ {} }}", variants.join(", "));
        Err(Stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod v1 {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct Seen {
            user: i64,
            clicks: i64,
        }
    }

    mod v2 {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct Seen {
            user: i64,
            clicks: i64,
            pages: i64,
        }
    }

    #[test]
    fn shapes_tell_added_fields_apart() {
        assert_eq!(layout_of::<i64>(), "i64");
        assert_eq!(layout_of::<String>(), "string");
        assert_eq!(layout_of::<Vec<u8>>(), "seq");
        assert_eq!(layout_of::<(i64, i64)>(), "tuple of 2");
        assert_eq!(layout_of::<v1::Seen>(), "struct Seen { user, clicks }");
        assert_ne!(layout_of::<v1::Seen>(), layout_of::<v2::Seen>());
    }
}
