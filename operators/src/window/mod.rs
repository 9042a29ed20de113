//! Event-time windows with Flink's semantics: tumbling, sliding and session
//! windows keyed by the stream's keys, aggregated with [`crate::aggregate`].
//! A window [start, end) fires when the watermark reaches end - 1. Records
//! for windows whose end - 1 + allowed lateness the watermark has passed are
//! late: they go to the side output `late_data()`. Within allowed lateness a
//! fired window fires again with its updated result.
//!
//! Output columns: the key columns, `window_start`, `window_end`
//! (timestamp, ms), then one column per aggregate; a watermark's firings go
//! out as one batch. The operator forwards watermarks unchanged, after the
//! rows they fired, and the output's event time is `window_end`, so a window
//! can feed another window: the row for [s, e) leaves before the watermark
//! e - 1 does, and lands downstream in the window containing e, which cannot
//! have fired yet. (Re-fired rows within allowed lateness can be late
//! downstream: their watermark has already passed e - 1.)
//!
//! A keyed stream is re-hashed on its keys at the window's input (even when a
//! forward operator sat between `key_by` and `window`); an unkeyed window is
//! one global window at parallelism 1.

mod pane;
mod session;
mod state;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice_engine::data::{is_event_time_type, MAX_EVENT_DURATION};
use sluice_engine::graph::OperatorFactory;
use sluice_engine::{Error, Operator, Result, Stream};

use crate::aggregate::AggregateExpr;
use crate::plan_error;
use pane::PaneWindowOperator;
use session::SessionWindowOperator;
use state::Slots;

/// Which windows records fall into (example of tumbling windows:
/// [`Window::window`]).
///
/// ```
/// use std::time::Duration;
/// use serde::{Deserialize, Serialize};
/// use sluice_operators::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// struct Click { user: i64, ts: i64 }
/// #[derive(Deserialize)]
/// struct Counted { user: i64, window_start: i64, window_end: i64, count: i64 }
///
/// /// (user, window_start, window_end, count) of `spec` over three clicks.
/// fn windows(spec: WindowSpec) -> sluice_engine::Result<Vec<(i64, i64, i64, i64)>> {
///     let env = Env::new();
///     let clicks = env.from_rows("clicks", vec![
///         Click { user: 1, ts: 1_000 },
///         Click { user: 1, ts: 3_000 },
///         Click { user: 1, ts: 9_000 },
///     ]);
///     let out = clicks
///         .watermarks(WatermarkStrategy::ascending("ts"))
///         .key_by(["user"])
///         .window(spec)
///         .aggregate([count()])
///         .collect();
///     env.execute()?;
///     let mut got: Vec<_> = out
///         .rows::<Counted>()?
///         .into_iter()
///         .map(|c| (c.user, c.window_start, c.window_end, c.count))
///         .collect();
///     got.sort();
///     Ok(got)
/// }
///
/// // 4 s windows every 2 s: each click is in two of them.
/// let sliding = windows(WindowSpec::sliding(Duration::from_secs(4), Duration::from_secs(2)))?;
/// assert_eq!(sliding, [
///     (1, -2_000, 2_000, 1), (1, 0, 4_000, 2), (1, 2_000, 6_000, 1),
///     (1, 6_000, 10_000, 1), (1, 8_000, 12_000, 1),
/// ]);
/// // Sessions closed by 5 s without a click: the first two clicks, then the third.
/// let sessions = windows(WindowSpec::session(Duration::from_secs(5)))?;
/// assert_eq!(sessions, [(1, 1_000, 8_000, 2), (1, 9_000, 14_000, 1)]);
/// // The same spelled as text (command lines, configuration).
/// assert_eq!(WindowSpec::parse("session:5s")?, WindowSpec::session(Duration::from_secs(5)));
/// # Ok::<(), sluice_engine::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows.
    Tumbling {
        /// Window length (ms).
        size_ms: i64,
    },
    /// Fixed windows starting every `slide_ms`.
    Sliding {
        /// Window length (ms).
        size_ms: i64,
        /// Distance between window starts (ms).
        slide_ms: i64,
    },
    /// Per key, activity separated by gaps of at least `gap_ms`.
    Session {
        /// Inactivity that closes a session (ms).
        gap_ms: i64,
    },
}

/// Milliseconds of `d`, saturating (durations beyond i64 ms are not windows
/// anyone means; saturating keeps validation simple).
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl WindowSpec {
    /// Tumbling windows of `size`.
    pub fn tumbling(size: Duration) -> Self {
        WindowSpec::Tumbling { size_ms: ms(size) }
    }

    /// Sliding windows of `size` every `slide`.
    pub fn sliding(size: Duration, slide: Duration) -> Self {
        WindowSpec::Sliding {
            size_ms: ms(size),
            slide_ms: ms(slide),
        }
    }

    /// Session windows closed by a `gap` of inactivity.
    pub fn session(gap: Duration) -> Self {
        WindowSpec::Session { gap_ms: ms(gap) }
    }

    /// Parses `tumbling:10s`, `sliding:10s,2s` or `session:5s` (units ms, s, m, h, d).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Config(format!(
                "invalid window '{s}': {why}; expected tumbling:SIZE, sliding:SIZE,SLIDE or session:GAP (e.g. tumbling:10s)"
            ))
        };
        let (kind, args) = s.split_once(':').ok_or_else(|| bad("missing ':'"))?;
        let parts: Vec<Duration> = args
            .split(',')
            .map(|a| {
                humantime_lite(a.trim()).ok_or_else(|| bad(&format!("'{a}' is not a duration")))
            })
            .collect::<Result<_>>()?;
        let spec = match (kind, parts.as_slice()) {
            ("tumbling", [size]) => WindowSpec::tumbling(*size),
            ("sliding", [size, slide]) => WindowSpec::sliding(*size, *slide),
            ("session", [gap]) => WindowSpec::session(*gap),
            ("tumbling" | "sliding" | "session", _) => {
                return Err(bad("wrong number of durations"))
            }
            (other, _) => return Err(bad(&format!("unknown window kind '{other}'"))),
        };
        spec.validate().map_err(|m| bad(&m))?;
        Ok(spec)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match *self {
            WindowSpec::Tumbling { size_ms } if size_ms <= 0 => {
                Err("window size must be positive".into())
            }
            WindowSpec::Sliding { size_ms, slide_ms } if size_ms <= 0 || slide_ms <= 0 => {
                Err("window size and slide must be positive".into())
            }
            WindowSpec::Sliding { size_ms, slide_ms } if slide_ms > size_ms => Err(format!(
                "slide {slide_ms} ms is larger than size {size_ms} ms"
            )),
            WindowSpec::Session { gap_ms } if gap_ms <= 0 => {
                Err("session gap must be positive".into())
            }
            WindowSpec::Tumbling { size_ms: d }
            | WindowSpec::Sliding { size_ms: d, .. }
            | WindowSpec::Session { gap_ms: d }
                if d > MAX_EVENT_DURATION =>
            {
                Err(too_long("window size or gap", d))
            }
            _ => Ok(()),
        }
    }
}

/// Why a duration is refused: past [`MAX_EVENT_DURATION`] window ends
/// could overflow.
pub(crate) fn too_long(what: &str, ms: i64) -> String {
    format!("{what} of {ms} ms is longer than the longest supported ({MAX_EVENT_DURATION} ms, about 10,000 years)")
}

/// Parses `250ms`, `10s`, `5m`, `2h`, `1d`.
fn humantime_lite(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms).map(Duration::from_millis)
}

/// Node names of window aggregates (the graph makes them unique with a
/// `#N` suffix); `late_data` recognizes its input by them.
const WINDOW_NODES: [&str; 3] = ["tumbling_window", "sliding_window", "session_window"];

/// A stream with a window assigned, waiting for its aggregates.
pub struct WindowedStream {
    stream: Stream,
    spec: WindowSpec,
    lateness: i64,
}

/// The `window` verb.
pub trait Window {
    /// Assigns event-time windows (tumbling, sliding or session) to a
    /// stream with watermarks; follow with `.aggregate([...])`. Keyed
    /// streams get windows per key; a stream that is not keyed gets one
    /// window sequence, on one subtask.
    ///
    /// ```
    /// use std::time::Duration;
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Bid { auction: i64, ts: i64 }
    /// #[derive(Deserialize)]
    /// struct Bids { auction: i64, window_start: i64, count: i64 }
    ///
    /// let env = Env::new();
    /// let bids = env.from_rows("bids", vec![
    ///     Bid { auction: 1, ts: 1_000 },
    ///     Bid { auction: 1, ts: 4_000 },
    ///     Bid { auction: 2, ts: 12_000 },
    /// ]);
    /// let out = bids
    ///     .watermarks(WatermarkStrategy::ascending("ts"))
    ///     .key_by(["auction"])
    ///     .window(WindowSpec::tumbling(Duration::from_secs(10)))
    ///     .aggregate([count()])
    ///     .collect();
    /// env.execute()?;
    /// let mut got: Vec<_> =
    ///     out.rows::<Bids>()?.into_iter().map(|b| (b.auction, b.window_start, b.count)).collect();
    /// got.sort();
    /// assert_eq!(got, [(1, 0, 2), (2, 10_000, 1)]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn window(self, spec: WindowSpec) -> WindowedStream;
}

impl Window for Stream {
    fn window(self, spec: WindowSpec) -> WindowedStream {
        WindowedStream {
            stream: self,
            spec,
            lateness: 0,
        }
    }
}

impl WindowedStream {
    /// Keeps fired windows for `lateness` more event time; late records
    /// within it update and re-fire their window (records later still go
    /// to [`LateData::late_data`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use serde::Deserialize;
    /// use sluice_engine::testing::int_batch;
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Deserialize)]
    /// struct Counted { window_start: i64, count: i64 }
    ///
    /// let env = Env::new();
    /// let batches = vec![
    ///     // Time reaches 12 s: the window [0 s, 10 s) fires with one record.
    ///     int_batch(&[("k", &[1, 1]), ("ts", &[1_000, 12_000])]),
    ///     // A record for it, 2 s late: within the lateness, it fires again.
    ///     int_batch(&[("k", &[1]), ("ts", &[2_000])]),
    /// ];
    /// let out = env
    ///     .from_batches("events", batches[0].schema(), batches)
    ///     .watermarks(WatermarkStrategy::ascending("ts"))
    ///     .key_by(["k"])
    ///     .window(WindowSpec::tumbling(Duration::from_secs(10)))
    ///     .allowed_lateness(Duration::from_secs(5))
    ///     .aggregate([count()])
    ///     .collect();
    /// env.execute()?;
    /// let fired: Vec<_> = out.rows::<Counted>()?.into_iter().map(|c| (c.window_start, c.count)).collect();
    /// assert_eq!(fired, [(0, 1), (0, 2), (10_000, 1)]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.lateness = ms(lateness);
        self
    }

    /// Aggregates each window per key: [`count`](crate::aggregate::count),
    /// [`sum`](crate::aggregate::sum), [`min`](crate::aggregate::min),
    /// [`max`](crate::aggregate::max), [`avg`](crate::aggregate::avg) or a
    /// user-defined [`udaf`](crate::aggregate::udaf), each named by
    /// [`alias`](crate::aggregate::AggregateExpr::alias) or by default
    /// (`count`, `sum_price`, ...).
    /// Output columns: the key columns, `window_start`, `window_end`
    /// (timestamps, ms), then one per aggregate; the output's event time is
    /// `window_end`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Bid { price: i64, ts: i64 }
    /// #[derive(Deserialize, Debug, PartialEq)]
    /// struct Stats { count: i64, sum_price: i64, min_price: i64, max_price: i64, mean: f64 }
    ///
    /// let env = Env::new();
    /// let out = env
    ///     .from_rows("bids", vec![Bid { price: 10, ts: 1_000 }, Bid { price: 30, ts: 4_000 }])
    ///     .watermarks(WatermarkStrategy::ascending("ts"))
    ///     .window(WindowSpec::tumbling(Duration::from_secs(10)))
    ///     .aggregate([count(), sum("price"), min("price"), max("price"), avg("price").alias("mean")])
    ///     .collect();
    /// env.execute()?;
    /// let want = Stats { count: 2, sum_price: 40, min_price: 10, max_price: 30, mean: 20.0 };
    /// assert_eq!(out.rows::<Stats>()?, [want]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    pub fn aggregate(self, aggs: impl IntoIterator<Item = AggregateExpr>) -> Stream {
        let aggs: Vec<AggregateExpr> = aggs.into_iter().collect();
        let WindowedStream {
            stream,
            spec,
            lateness,
        } = self;
        let err = |m: String| stream.report(plan_error(&stream, "window", m));
        if let Err(m) = spec.validate() {
            err(m);
        }
        if !(0..=MAX_EVENT_DURATION).contains(&lateness) {
            err(too_long("allowed lateness", lateness));
        }
        if aggs.is_empty() {
            err("aggregate needs at least one aggregate".into());
        }
        let input = stream.schema().clone();
        let time = match stream.event_time() {
            Some(t) => match input.index_of(t) {
                Ok(i) if is_event_time_type(input.field(i).data_type()) => Some(i),
                Ok(i) => {
                    err(format!(
                        "event-time column '{t}' has type {}; expected Int64 (epoch ms) or a timestamp",
                        input.field(i).data_type()
                    ));
                    None
                }
                Err(_) => {
                    err(format!(
                        "event-time column '{t}' is not in the stream; it has {}",
                        stream.column_list()
                    ));
                    None
                }
            },
            None => {
                err("no watermark strategy: call .watermarks(...) before window".into());
                None
            }
        };
        let keys: Vec<String> = stream.keys().map(|k| k.to_vec()).unwrap_or_default();
        let key_idx: Vec<usize> = keys.iter().filter_map(|k| input.index_of(k).ok()).collect();
        let mut fields: Vec<Field> = key_idx.iter().map(|i| input.field(*i).clone()).collect();
        for n in ["window_start", "window_end"] {
            fields.push(Field::new(
                n,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ));
        }
        for a in &aggs {
            match a.resolve(&input) {
                Ok((_, f)) => fields.push(f),
                Err(m) => err(m),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for f in &fields {
            if !seen.insert(f.name().as_str()) {
                err(format!(
                    "output column '{}' appears twice; name aggregates apart with .alias(...)",
                    f.name()
                ));
            }
        }
        let output: SchemaRef = Arc::new(Schema::new(fields));
        let key_types: Vec<DataType> = key_idx
            .iter()
            .map(|i| input.field(*i).data_type().clone())
            .collect();
        let out = output.clone();
        let in_schema = input.clone();
        let factory: OperatorFactory = Arc::new(move |_ctx| {
            let time = time.ok_or_else(|| {
                Error::Internal("window without event time passed planning".into())
            })?;
            let slots = Slots::new(&aggs, &in_schema)?;
            // Every window keeps its state in a state table, so the
            // configured backend (heap or RocksDB) holds it.
            Ok(match spec {
                WindowSpec::Tumbling { size_ms } => Box::new(PaneWindowOperator::new(
                    size_ms,
                    size_ms,
                    lateness,
                    time,
                    key_idx.clone(),
                    &key_types,
                    slots,
                    out.clone(),
                )?) as Box<dyn Operator>,
                WindowSpec::Sliding { size_ms, slide_ms } => Box::new(PaneWindowOperator::new(
                    size_ms,
                    slide_ms,
                    lateness,
                    time,
                    key_idx.clone(),
                    &key_types,
                    slots,
                    out.clone(),
                )?),
                WindowSpec::Session { gap_ms } => Box::new(SessionWindowOperator::new(
                    gap_ms,
                    lateness,
                    time,
                    key_idx.clone(),
                    &key_types,
                    slots,
                    out.clone(),
                )?),
            })
        });
        let name = match spec {
            WindowSpec::Tumbling { .. } => WINDOW_NODES[0],
            WindowSpec::Sliding { .. } => WINDOW_NODES[1],
            WindowSpec::Session { .. } => WINDOW_NODES[2],
        };
        let keyed = !keys.is_empty();
        let input_stream = if keyed {
            let k: Vec<&str> = keys.iter().map(String::as_str).collect();
            stream.clone().keyed_by(&k)
        } else {
            stream.clone()
        };
        let result = input_stream.transform_multi(name, &[], vec![output, input], factory);
        let result = if keyed {
            result
        } else {
            result.set_parallelism(1)
        };
        result
            .with_keys(if keyed { Some(keys) } else { None })
            .with_event_time(Some("window_end".into()))
    }
}

/// The late-data side output of a window.
pub trait LateData {
    /// Records that arrived too late for their windows (after the
    /// allowed lateness), unchanged: the side output of
    /// `window(..).aggregate(..)`; anywhere else it is a plan error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use sluice_engine::testing::{int_batch, lines};
    /// use sluice_operators::prelude::*;
    ///
    /// let env = Env::new();
    /// let batches = vec![
    ///     int_batch(&[("k", &[1, 1]), ("ts", &[1_000, 12_000])]),
    ///     int_batch(&[("k", &[1]), ("ts", &[2_000])]), // its window fired at 12 s
    /// ];
    /// let counts = env
    ///     .from_batches("events", batches[0].schema(), batches)
    ///     .watermarks(WatermarkStrategy::ascending("ts"))
    ///     .key_by(["k"])
    ///     .window(WindowSpec::tumbling(Duration::from_secs(10)))
    ///     .aggregate([count()]);
    /// let late = counts.late_data().collect();
    /// counts.collect();
    /// env.execute()?;
    /// assert_eq!(lines(&late.concat())?, ["1, 2000"]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn late_data(&self) -> Stream;
}

impl LateData for Stream {
    fn late_data(&self) -> Stream {
        let name = self.node_name();
        let base = name.split('#').next().unwrap_or_default();
        match self.side_output(1) {
            Some(s) if WINDOW_NODES.contains(&base) => s,
            _ => {
                self.report(plan_error(
                    self,
                    "late_data",
                    format!(
                        "late_data() needs the output of window(...).aggregate(...); '{name}' is not a window aggregate"
                    ),
                ));
                self.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_window_specs() {
        assert_eq!(
            WindowSpec::parse("tumbling:10s").unwrap(),
            WindowSpec::Tumbling { size_ms: 10_000 }
        );
        assert_eq!(
            WindowSpec::parse("sliding:1m,500ms").unwrap(),
            WindowSpec::Sliding {
                size_ms: 60_000,
                slide_ms: 500
            }
        );
        assert_eq!(
            WindowSpec::parse("session:5s").unwrap(),
            WindowSpec::Session { gap_ms: 5_000 }
        );
        for bad in [
            "weekly:1s",
            "tumbling",
            "tumbling:ten",
            "sliding:1s,2s",
            "session:0s",
            "sliding:10s",
        ] {
            assert!(
                WindowSpec::parse(bad)
                    .unwrap_err()
                    .to_string()
                    .contains(bad),
                "{bad}"
            );
        }
    }
}
