//! Columns for JSON records whose schema is flat (no struct or list
//! fields): the values `super::check` kept while checking a record are
//! appended straight to Arrow builders, so such a record is parsed once.
//! Schemas with nested fields go through arrow-json's decoder instead.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, Int8Builder, LargeStringBuilder, StringBuilder, TimestampMicrosecondBuilder,
    TimestampMillisecondBuilder, TimestampNanosecondBuilder, TimestampSecondBuilder, UInt16Builder,
    UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow::datatypes::{DataType, Fields, TimeUnit};

use super::check::Leaf;

/// One builder per field of a flat schema.
pub(crate) struct FlatColumns {
    columns: Vec<Column>,
}

enum Column {
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Utf8(StringBuilder),
    LargeUtf8(LargeStringBuilder),
    Bool(BooleanBuilder),
    TsS(TimestampSecondBuilder),
    TsMs(TimestampMillisecondBuilder),
    TsUs(TimestampMicrosecondBuilder),
    TsNs(TimestampNanosecondBuilder),
}

impl FlatColumns {
    /// Builders for `fields`, or `None` when a field is nested (or of a
    /// type this path does not build).
    pub(crate) fn new(fields: &Fields) -> Option<Self> {
        let columns = fields
            .iter()
            .map(|f| {
                Some(match f.data_type() {
                    DataType::Int8 => Column::I8(Default::default()),
                    DataType::Int16 => Column::I16(Default::default()),
                    DataType::Int32 => Column::I32(Default::default()),
                    DataType::Int64 => Column::I64(Default::default()),
                    DataType::UInt8 => Column::U8(Default::default()),
                    DataType::UInt16 => Column::U16(Default::default()),
                    DataType::UInt32 => Column::U32(Default::default()),
                    DataType::UInt64 => Column::U64(Default::default()),
                    DataType::Float32 => Column::F32(Default::default()),
                    DataType::Float64 => Column::F64(Default::default()),
                    DataType::Utf8 => Column::Utf8(Default::default()),
                    DataType::LargeUtf8 => Column::LargeUtf8(Default::default()),
                    DataType::Boolean => Column::Bool(Default::default()),
                    DataType::Timestamp(TimeUnit::Second, None) => Column::TsS(Default::default()),
                    DataType::Timestamp(TimeUnit::Millisecond, None) => {
                        Column::TsMs(Default::default())
                    }
                    DataType::Timestamp(TimeUnit::Microsecond, None) => {
                        Column::TsUs(Default::default())
                    }
                    DataType::Timestamp(TimeUnit::Nanosecond, None) => {
                        Column::TsNs(Default::default())
                    }
                    _ => return None,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(FlatColumns { columns })
    }

    /// Appends one record's values, which `json_check` checked against the
    /// same fields (so every integer fits its column).
    pub(crate) fn append(&mut self, slots: &[Leaf<'_>]) {
        for (col, leaf) in self.columns.iter_mut().zip(slots) {
            col.append(leaf);
        }
    }

    /// The columns of the records appended since the last call.
    pub(crate) fn finish(&mut self) -> Vec<ArrayRef> {
        self.columns.iter_mut().map(Column::finish).collect()
    }
}

/// The integer of a checked leaf (`None` for null).
fn int(leaf: &Leaf<'_>) -> Option<i64> {
    match leaf {
        Leaf::Int(x) => Some(*x),
        _ => None,
    }
}

fn float(leaf: &Leaf<'_>) -> Option<f64> {
    match leaf {
        Leaf::Int(x) => Some(*x as f64),
        Leaf::UInt(x) => Some(*x as f64),
        Leaf::Float(x) => Some(*x),
        _ => None,
    }
}

impl Column {
    fn append(&mut self, leaf: &Leaf<'_>) {
        // The check admitted only values that fit, so the narrowing casts
        // below never truncate.
        macro_rules! ints {
            ($b:expr, $t:ty) => {
                $b.append_option(int(leaf).map(|x| x as $t))
            };
        }
        match self {
            Column::I8(b) => ints!(b, i8),
            Column::I16(b) => ints!(b, i16),
            Column::I32(b) => ints!(b, i32),
            Column::I64(b) => ints!(b, i64),
            Column::U8(b) => ints!(b, u8),
            Column::U16(b) => ints!(b, u16),
            Column::U32(b) => ints!(b, u32),
            Column::U64(b) => match leaf {
                Leaf::UInt(x) => b.append_value(*x),
                _ => ints!(b, u64),
            },
            Column::F32(b) => b.append_option(float(leaf).map(|x| x as f32)),
            Column::F64(b) => b.append_option(float(leaf)),
            Column::Utf8(b) => match leaf {
                Leaf::Str(s) => b.append_value(s),
                _ => b.append_null(),
            },
            Column::LargeUtf8(b) => match leaf {
                Leaf::Str(s) => b.append_value(s),
                _ => b.append_null(),
            },
            Column::Bool(b) => match leaf {
                Leaf::Bool(x) => b.append_value(*x),
                _ => b.append_null(),
            },
            Column::TsS(b) => ints!(b, i64),
            Column::TsMs(b) => ints!(b, i64),
            Column::TsUs(b) => ints!(b, i64),
            Column::TsNs(b) => ints!(b, i64),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::I8(b) => Arc::new(b.finish()),
            Column::I16(b) => Arc::new(b.finish()),
            Column::I32(b) => Arc::new(b.finish()),
            Column::I64(b) => Arc::new(b.finish()),
            Column::U8(b) => Arc::new(b.finish()),
            Column::U16(b) => Arc::new(b.finish()),
            Column::U32(b) => Arc::new(b.finish()),
            Column::U64(b) => Arc::new(b.finish()),
            Column::F32(b) => Arc::new(b.finish()),
            Column::F64(b) => Arc::new(b.finish()),
            Column::Utf8(b) => Arc::new(b.finish()),
            Column::LargeUtf8(b) => Arc::new(b.finish()),
            Column::Bool(b) => Arc::new(b.finish()),
            Column::TsS(b) => Arc::new(b.finish()),
            Column::TsMs(b) => Arc::new(b.finish()),
            Column::TsUs(b) => Arc::new(b.finish()),
            Column::TsNs(b) => Arc::new(b.finish()),
        }
    }
}
