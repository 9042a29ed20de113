//! The fast path of the strict check for flat records (no struct or list
//! fields, at most 64 of them): one hand-written pass over the bytes that
//! either finds the record fits, with the same [`Leaf`] values
//! `super::check` would keep, or gives up. Giving up is not a verdict:
//! the caller then runs the serde check, which decides and says why. So
//! this scanner only has to be right about the records it accepts, and
//! it gives up on anything outside the common shape (unknown, duplicate,
//! missing or mistyped fields, invalid JSON, lone surrogates, `-0`,
//! integers beyond `u64`, floats that overflow), which keeps the rules in
//! one place (`check.rs`) and the messages unchanged.
//!
//! Why it exists: serde's visitor machinery (a seed per value, the key
//! through `deserialize_str`, errors built as `serde_json::Error`) was
//! about half of the CPU the Kafka source spent per JSON record. Here a
//! key is compared with the field expected next (producers write fields
//! in one order) before the others, strings are borrowed unless escaped,
//! and nothing is allocated for a record without escapes.

use std::borrow::Cow;

use arrow::datatypes::{DataType, Fields};

use super::check::Leaf;

/// What a field's column admits.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// An integer in `min..=max` (signed and narrower unsigned integers,
    /// timestamps).
    Int {
        min: i64,
        max: i64,
    },
    /// Any non-negative integer.
    UInt64,
    /// Any number.
    Float,
    Str,
    Bool,
}

/// The fields of a flat schema, as the scanner matches them.
#[derive(Debug)]
pub(crate) struct FlatScan {
    names: Vec<Box<[u8]>>,
    wants: Vec<Want>,
    nullable: Vec<bool>,
    /// Bit `i` set: field `i` must be present and not null.
    required: u64,
}

impl FlatScan {
    /// The scanner for `fields`, or `None` when a field is nested, of a
    /// type the flat columns do not build, or there are more than 64.
    pub(crate) fn new(fields: &Fields) -> Option<Self> {
        if fields.len() > 64 {
            return None;
        }
        let wants = fields
            .iter()
            .map(|f| {
                let int = |min: i64, max: i64| Some(Want::Int { min, max });
                match f.data_type() {
                    DataType::Int8 => int(i8::MIN.into(), i8::MAX.into()),
                    DataType::Int16 => int(i16::MIN.into(), i16::MAX.into()),
                    DataType::Int32 => int(i32::MIN.into(), i32::MAX.into()),
                    DataType::Int64 | DataType::Timestamp(_, None) => int(i64::MIN, i64::MAX),
                    DataType::UInt8 => int(0, u8::MAX.into()),
                    DataType::UInt16 => int(0, u16::MAX.into()),
                    DataType::UInt32 => int(0, u32::MAX.into()),
                    DataType::UInt64 => Some(Want::UInt64),
                    DataType::Float32 | DataType::Float64 => Some(Want::Float),
                    DataType::Utf8 | DataType::LargeUtf8 => Some(Want::Str),
                    DataType::Boolean => Some(Want::Bool),
                    _ => None,
                }
            })
            .collect::<Option<Vec<_>>>()?;
        let required = fields
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.is_nullable())
            .fold(0u64, |bits, (i, _)| bits | 1 << i);
        Some(FlatScan {
            names: fields.iter().map(|f| f.name().as_bytes().into()).collect(),
            wants,
            nullable: fields.iter().map(|f| f.is_nullable()).collect(),
            required,
        })
    }

    /// Scans one record. `true`: it fits the schema and `slots` holds its
    /// value per field (`Null` for absent ones), exactly as the check would
    /// have left them. `false`: undecided, `slots` is garbage, ask the
    /// check.
    pub(crate) fn scan<'de>(&self, bytes: &'de [u8], slots: &mut Vec<Leaf<'de>>) -> bool {
        slots.clear();
        slots.resize(self.names.len(), Leaf::Null);
        self.fields(bytes, slots).is_some()
    }

    fn fields<'de>(&self, bytes: &'de [u8], slots: &mut [Leaf<'de>]) -> Option<()> {
        // One check of the whole record costs less than one per string
        // (serde_json rejects invalid UTF-8 anywhere in a record too).
        let text = std::str::from_utf8(bytes).ok()?;
        let b = bytes;
        let mut i = ws(b, 0);
        if *b.get(i)? != b'{' {
            return None;
        }
        i = ws(b, i + 1);
        let mut seen = 0u64;
        let mut guess = 0;
        if *b.get(i)? == b'}' {
            i += 1;
        } else {
            loop {
                if *b.get(i)? != b'"' {
                    return None;
                }
                let (key, after) = plain_key(b, i + 1)?;
                let f = self.lookup(key, guess)?;
                if seen & 1 << f != 0 {
                    return None;
                }
                seen |= 1 << f;
                guess = f + 1;
                i = ws(b, after);
                if *b.get(i)? != b':' {
                    return None;
                }
                i = ws(b, i + 1);
                let (leaf, after) = self.value(f, text, i)?;
                slots[f] = leaf;
                i = ws(b, after);
                match *b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b'}' => {
                        i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        (ws(b, i) == b.len() && seen & self.required == self.required).then_some(())
    }

    /// The field named `key`: first the one expected at `guess`, then all.
    fn lookup(&self, key: &[u8], guess: usize) -> Option<usize> {
        if self.names.get(guess).is_some_and(|n| same(n, key)) {
            return Some(guess);
        }
        self.names.iter().position(|n| same(n, key))
    }

    /// The value of field `f` starting at byte `i` of `text`, and where it
    /// ends.
    fn value<'de>(&self, f: usize, text: &'de str, i: usize) -> Option<(Leaf<'de>, usize)> {
        let want = self.wants[f];
        let b = text.as_bytes();
        match *b.get(i)? {
            b'"' if want == Want::Str => {
                let (s, end) = string(text, i + 1)?;
                Some((Leaf::Str(s), end))
            }
            b't' if want == Want::Bool => literal(b, i, b"true", Leaf::Bool(true)),
            b'f' if want == Want::Bool => literal(b, i, b"false", Leaf::Bool(false)),
            b'n' if self.nullable[f] => literal(b, i, b"null", Leaf::Null),
            b'-' | b'0'..=b'9' => {
                let (leaf, end) = number(text, i)?;
                let fits = match (want, &leaf) {
                    (Want::Int { min, max }, Leaf::Int(x)) => (min..=max).contains(x),
                    (Want::UInt64, Leaf::Int(x)) => *x >= 0,
                    (Want::UInt64, Leaf::UInt(_)) => true,
                    (Want::Float, _) => true,
                    _ => false,
                };
                fits.then_some((leaf, end))
            }
            _ => None,
        }
    }
}

/// Byte-wise equality, inline: keys are short, and a call to `memcmp`
/// per key was a tenth of the scan.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Skips JSON whitespace from `i`.
fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

fn literal<'de>(b: &[u8], i: usize, word: &[u8], leaf: Leaf<'de>) -> Option<(Leaf<'de>, usize)> {
    let end = i + word.len();
    (b.get(i..end)? == word).then_some((leaf, end))
}

/// A key from after its opening quote: its bytes and the index after its
/// closing quote; `None` for keys with escapes or control characters
/// (which match no field byte-wise anyway, or need decoding first).
fn plain_key(b: &[u8], start: usize) -> Option<(&[u8], usize)> {
    let mut i = start;
    loop {
        match *b.get(i)? {
            b'"' => return Some((&b[start..i], i + 1)),
            b'\\' | 0..=0x1f => return None,
            _ => i += 1,
        }
    }
}

/// A string value from after its opening quote in `text` (valid UTF-8),
/// and the index after its closing quote. Borrowed unless it has escapes;
/// `None` for control characters, bad escapes and lone surrogates
/// (serde_json rejects them).
fn string(text: &str, start: usize) -> Option<(Cow<'_, str>, usize)> {
    let b = text.as_bytes();
    let mut i = start;
    loop {
        match *b.get(i)? {
            // Both ends are at ASCII quotes, so on character boundaries.
            b'"' => return Some((Cow::Borrowed(&text[start..i]), i + 1)),
            b'\\' => return escaped(b, start, i),
            0..=0x1f => return None,
            _ => i += 1,
        }
    }
}

/// The rest of a string with escapes, from the first backslash at `i`.
fn escaped(b: &[u8], start: usize, mut i: usize) -> Option<(Cow<'_, str>, usize)> {
    let mut out = b[start..i].to_vec();
    loop {
        match *b.get(i)? {
            b'"' => return Some((Cow::Owned(String::from_utf8(out).ok()?), i + 1)),
            b'\\' => {
                let c = match *b.get(i + 1)? {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        let (c, end) = unicode_escape(b, i + 2)?;
                        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                        i = end;
                        continue;
                    }
                    _ => return None,
                };
                out.push(c as u8);
                i += 2;
            }
            0..=0x1f => return None,
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// The character of a `\u` escape whose hex digits start at `i` (a
/// surrogate pair takes two escapes), and where it ends.
fn unicode_escape(b: &[u8], i: usize) -> Option<(char, usize)> {
    let unit = hex4(b, i)?;
    match unit {
        0xD800..=0xDBFF => {
            if b.get(i + 4..i + 6)? != b"\\u" {
                return None;
            }
            let low = hex4(b, i + 6)?;
            if !(0xDC00..=0xDFFF).contains(&low) {
                return None;
            }
            let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
            Some((char::from_u32(c)?, i + 10))
        }
        _ => Some((char::from_u32(unit)?, i + 4)),
    }
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 4)?
        .iter()
        .try_fold(0u32, |acc, &c| Some(acc << 4 | char::from(c).to_digit(16)?))
}

/// A number at byte `i` of `text` as serde_json reads it: an integer
/// without fraction or exponent is `Int` (or `UInt` above `i64::MAX`),
/// anything else `Float`. `None` for invalid numbers and for the ones
/// serde_json turns into floats although written as integers (`-0`, below
/// `i64::MIN`, above `u64::MAX`): those are left to it.
fn number(text: &str, i: usize) -> Option<(Leaf<'static>, usize)> {
    let b = text.as_bytes();
    let neg = b[i] == b'-';
    let mut j = i + usize::from(neg);
    let first = j;
    // All digits, integer part and fraction, as one integer (while it
    // fits): the significand of the fast float path below.
    let mut digits: u64 = 0;
    let mut overflow = false;
    let mut push = |c: u8| match digits
        .checked_mul(10)
        .and_then(|m| m.checked_add(u64::from(c - b'0')))
    {
        Some(m) => digits = m,
        None => overflow = true,
    };
    while let Some(&c @ b'0'..=b'9') = b.get(j) {
        push(c);
        j += 1;
    }
    let int_digits = j - first;
    // JSON: at least one digit, and no leading zero before more digits.
    if int_digits == 0 || (int_digits > 1 && b[first] == b'0') {
        return None;
    }
    let mut float = false;
    let mut scale: i64 = 0;
    if b.get(j) == Some(&b'.') {
        j += 1;
        let from = j;
        while let Some(&c @ b'0'..=b'9') = b.get(j) {
            push(c);
            j += 1;
        }
        if j == from {
            return None;
        }
        scale = -((j - from) as i64);
        float = true;
    }
    if let Some(b'e' | b'E') = b.get(j) {
        j += 1;
        let negative = b.get(j) == Some(&b'-');
        if let Some(b'+' | b'-') = b.get(j) {
            j += 1;
        }
        let from = j;
        let mut e: i64 = 0;
        while let Some(&c @ b'0'..=b'9') = b.get(j) {
            // Saturates far beyond any exponent the fast path takes.
            e = (e * 10 + i64::from(c - b'0')).min(1 << 32);
            j += 1;
        }
        if j == from {
            return None;
        }
        scale += if negative { -e } else { e };
        float = true;
    }
    if float {
        let x = match fast_float(digits, scale) {
            Some(x) if !overflow => x,
            // Rust's parser takes JSON's number grammar, and rounds
            // correctly, as serde_json does with float_roundtrip.
            _ => text[first..j].parse::<f64>().ok()?,
        };
        // serde_json rejects what overflows to infinity.
        return x
            .is_finite()
            .then_some((Leaf::Float(if neg { -x } else { x }), j));
    }
    if overflow {
        return None;
    }
    let leaf = if !neg {
        match i64::try_from(digits) {
            Ok(x) => Leaf::Int(x),
            Err(_) => Leaf::UInt(digits),
        }
    } else if digits == 0 || digits > 1 << 63 {
        return None;
    } else {
        // In 1..=2^63, so the negation fits.
        Leaf::Int((digits as i64).wrapping_neg())
    };
    Some((leaf, j))
}

/// `digits × 10^scale` when one IEEE operation on exact operands gives it
/// (Clinger's fast path: the significand below 2^53, the power of ten at
/// most 10^22), so the result is correctly rounded; `None` otherwise.
fn fast_float(digits: u64, scale: i64) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    if digits >= 1 << 53 {
        return None;
    }
    let m = digits as f64;
    let p = *POW10.get(scale.unsigned_abs() as usize)?;
    Some(if scale < 0 { m / p } else { m * p })
}

#[cfg(test)]
mod tests;
