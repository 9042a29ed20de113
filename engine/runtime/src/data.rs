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

/// The earliest event time Sluice processes: 0001-01-01T00:00:00Z.
pub const MIN_EVENT_TIME: EventTime = -62_135_596_800_000;
/// The latest event time Sluice processes: 9999-12-31T23:59:59.999Z.
pub const MAX_EVENT_TIME: EventTime = 253_402_300_799_999;
/// The event times Sluice processes (years 1 to 9999, as ISO 8601 writes
/// them). Records with a time outside it are bad records: window and join
/// arithmetic (a window's end, a bound plus a lateness) stays far from
/// `i64` overflow for every time inside it and every duration up to
/// [`MAX_EVENT_DURATION`], and `i64::MAX` stays free for the final
/// watermark.
pub const EVENT_TIME_RANGE: std::ops::RangeInclusive<EventTime> = MIN_EVENT_TIME..=MAX_EVENT_TIME;
/// The longest window size, slide, gap, lateness or join bound (ms): the
/// span of [`EVENT_TIME_RANGE`], about 10,000 years.
pub const MAX_EVENT_DURATION: i64 = MAX_EVENT_TIME - MIN_EVENT_TIME;

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
    /// A source's latency marker: the wall-clock time (ms since the epoch)
    /// it was emitted. It overtakes operator work (forwarded on arrival, as
    /// Flink's latency markers are), so the sinks' reading of it measures
    /// the queues and transport between source and sink, not time records
    /// spend in windows.
    Latency(i64),
}

/// Reads an event-time column as milliseconds, accepting Int64 epoch
/// milliseconds or any timestamp unit. The result borrows nothing. A
/// column with nulls is an error (every record needs a time).
pub fn event_times_ms(column: &ArrayRef) -> Result<Vec<i64>> {
    if column.null_count() > 0 {
        return Err(Error::Decode(
            "the event-time column holds nulls; every record needs a timestamp".into(),
        ));
    }
    times_ms(column)
}

/// [`event_times_ms`] for operators that compute with times (windows,
/// joins): column `time` of `batch`, where a time outside
/// [`EVENT_TIME_RANGE`] is an error instead of an overflow later. Such
/// records normally never get here: the watermark assignment hands them
/// to the source's bad-record policy; a time computed after it can.
pub fn event_times_in_range(batch: &RecordBatch, time: usize) -> Result<Vec<i64>> {
    let ts = event_times_ms(batch.column(time))?;
    let (lo, hi) = ts
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    if ts.is_empty() || (EVENT_TIME_RANGE.contains(&lo) && EVENT_TIME_RANGE.contains(&hi)) {
        return Ok(ts);
    }
    let bad = if EVENT_TIME_RANGE.contains(&lo) {
        hi
    } else {
        lo
    };
    Err(Error::Decode(format!(
        "event time {bad} ms in column '{}' is outside the supported range (years 1 to 9999: \
         {MIN_EVENT_TIME}..={MAX_EVENT_TIME} ms)",
        batch.schema().field(time).name()
    )))
}

/// Rows of an event-time column no operator can process, with why: a
/// null, or a time outside [`EVENT_TIME_RANGE`]. Empty for a valid column
/// (the usual case: one pass for the minimum and maximum).
pub fn invalid_event_times(column: &ArrayRef, name: &str) -> Result<Vec<(usize, String)>> {
    let ts = times_ms(column)?;
    let nulls = column.nulls().filter(|n| n.null_count() > 0);
    let valid = |i: usize| nulls.is_none_or(|n| n.is_valid(i));
    let (lo, hi) = ts
        .iter()
        .enumerate()
        .filter(|(i, _)| valid(*i))
        .fold((i64::MAX, i64::MIN), |(lo, hi), (_, t)| {
            (lo.min(*t), hi.max(*t))
        });
    let in_range =
        ts.is_empty() || (EVENT_TIME_RANGE.contains(&lo) && EVENT_TIME_RANGE.contains(&hi));
    if nulls.is_none() && in_range {
        return Ok(Vec::new());
    }
    Ok(ts
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            if !valid(i) {
                Some((i, format!("no event time (null in column '{name}')")))
            } else if !EVENT_TIME_RANGE.contains(t) {
                Some((
                    i,
                    format!(
                        "event time {t} ms in column '{name}' is outside the supported range \
                         (years 1 to 9999: {MIN_EVENT_TIME}..={MAX_EVENT_TIME} ms)"
                    ),
                ))
            } else {
                None
            }
        })
        .collect())
}

/// The batch without `rows` (ascending row indices).
pub fn without_rows(batch: &RecordBatch, rows: &[usize]) -> Result<RecordBatch> {
    let mut keep = vec![true; batch.num_rows()];
    for r in rows {
        keep[*r] = false;
    }
    Ok(arrow::compute::filter_record_batch(
        batch,
        &arrow::array::BooleanArray::from(keep),
    )?)
}

/// Times of a column in ms; null slots hold whatever the buffer holds.
fn times_ms(column: &ArrayRef) -> Result<Vec<i64>> {
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
