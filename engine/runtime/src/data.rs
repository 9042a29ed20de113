//! The data model that flows on every edge: record batches interleaved with
//! watermarks, checkpoint barriers and the end-of-stream marker, plus the
//! newtype ids used across modules. Knows nothing of operators or transport.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use arrow::datatypes::{TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Event time in milliseconds since the Unix epoch.
pub type EventTime = i64;

/// A watermark: event time has reached `t` (no more records with timestamp
/// `<= t` are expected, Flink's convention), or the input is idle and must not
/// hold back the minimum over inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Watermark {
    /// Event time reached this value (ms).
    EventTime(EventTime),
    /// The input has nothing to say; ignore it when combining.
    Idle,
}

impl Watermark {
    /// The watermark that closes every window: emitted when a bounded input ends.
    pub const MAX: Watermark = Watermark::EventTime(i64::MAX);
}

pub use sluice_protocol::ids::{Barrier, BarrierKind, CheckpointId};

/// One message on a stream edge.
#[derive(Debug, Clone)]
pub enum StreamMessage {
    /// A batch of records; the schema is the edge's.
    Batch(RecordBatch),
    /// Event-time progress.
    Watermark(Watermark),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The sender will send nothing more on this channel.
    EndOfStream,
}

/// Reads an event-time column as milliseconds, accepting Int64 epoch
/// milliseconds or any timestamp unit. The result borrows nothing.
pub fn event_times_ms(column: &ArrayRef) -> Result<Vec<i64>> {
    fn collect<T: arrow::datatypes::ArrowPrimitiveType<Native = i64>>(
        a: &dyn Array,
        f: impl Fn(i64) -> i64,
    ) -> Vec<i64> {
        a.as_primitive::<T>()
            .values()
            .iter()
            .map(|v| f(*v))
            .collect()
    }
    if column.null_count() > 0 {
        return Err(Error::Decode(
            "the event-time column holds nulls; every record needs a timestamp".into(),
        ));
    }
    let a = column.as_ref();
    Ok(match column.data_type() {
        DataType::Int64 => a.as_primitive::<Int64Type>().values().to_vec(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => a
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec(),
        DataType::Timestamp(TimeUnit::Second, _) => {
            collect::<TimestampSecondType>(a, |v| v.saturating_mul(1000))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            collect::<TimestampMicrosecondType>(a, |v| v.div_euclid(1000))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            collect::<TimestampNanosecondType>(a, |v| v.div_euclid(1_000_000))
        }
        other => {
            return Err(Error::Internal(format!(
                "event-time column of type {other} passed plan validation"
            )))
        }
    })
}

/// Whether a column type can carry event time.
pub fn is_event_time_type(t: &DataType) -> bool {
    matches!(t, DataType::Int64 | DataType::Timestamp(_, _))
}
