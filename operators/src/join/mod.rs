//! Inner joins of two streams on equal key columns, as two-input operators
//! (input 0 = left, input 1 = right). Both inputs are hash-partitioned on
//! their keys, so equal keys meet in one subtask; results do not depend on
//! parallelism.
//!
//! - [`Join::join`]: unbounded join (symmetric hash join). Each matching pair
//!   is emitted once, as soon as both rows have arrived. No event time is
//!   needed, and state holds every row of both inputs for the whole run: use
//!   it on bounded inputs or small streams.
//! - [`Join::window_join`]: pairs whose event times fall in the same
//!   tumbling or sliding window, once per such window, emitted when the
//!   window fires (Flink's window join). Rows are stored once per pane.
//! - [`Join::interval_join`]: pairs with `right.ts` in
//!   `[left.ts + lower_ms, left.ts + upper_ms]`, emitted as soon as both rows
//!   are there (Flink's interval join).
//!
//! Keys: left key `i` is compared with right key `i`; each pair must have
//! the same Arrow type (the partitioning hash is over values of that type),
//! checked at plan time. Rows with a null in a key column match nothing.
//!
//! Output schema: every left column in order, then every right column in
//! order. A right column whose name is already taken (by a left column or
//! an earlier output column) is renamed by prefixing `right_`, repeatedly
//! until the name is free (`id` → `right_id`). The window join then appends
//! `window_start` and `window_end` (Timestamp(Millisecond, None), the window
//! `[start, end)`), prefixed `join_` while taken. Event time of the result:
//! `window_end` for the window join (as for window aggregates), the left
//! input's time column for the interval join, none for the unbounded join.
//!
//! Late rows: the event-time joins drop rows that arrive behind the combined
//! watermark (for the window join: rows whose every window already fired),
//! counting them and logging at debug level, as Flink does.
//!
//! State: each side's rows, per key (and time bucket for the event-time
//! joins), in a state table (`join/sides.rs`), so the configured backend
//! holds them: the heap, or RocksDB behind the bounded write-back cache —
//! a join's state can outgrow memory. Rows are kept in Arrow's row format
//! (`join/rows.rs`); a column type it cannot hold is a plan error.

mod interval_join;
pub(crate) mod rows;
mod sides;
mod stream_join;
mod window_join;

use std::sync::Arc;
use std::time::Duration;

use sluice_engine::data::MAX_EVENT_DURATION;

use crate::window::too_long;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice_engine::graph::OperatorFactory;
use sluice_engine::Stream;

use crate::plan_error;
use interval_join::IntervalJoinOperator;
use stream_join::StreamJoinOperator;
use window_join::WindowJoinOperator;

/// The windows of a window join, aligned to the epoch (Flink's offset 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinWindow {
    /// Back-to-back windows of `size_ms`.
    Tumbling {
        /// Window length (ms).
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `slide_ms`; a pair of rows is
    /// emitted once for every window holding both.
    Sliding {
        /// Window length (ms).
        size_ms: i64,
        /// Distance between window starts (ms).
        slide_ms: i64,
    },
}

impl JoinWindow {
    /// Tumbling windows of `size`.
    pub fn tumbling(size: Duration) -> Self {
        JoinWindow::Tumbling {
            size_ms: millis(size),
        }
    }

    /// Windows of `size` starting every `slide`.
    pub fn sliding(size: Duration, slide: Duration) -> Self {
        JoinWindow::Sliding {
            size_ms: millis(size),
            slide_ms: millis(slide),
        }
    }

    /// (size, slide) in ms.
    fn size_slide(self) -> (i64, i64) {
        match self {
            JoinWindow::Tumbling { size_ms } => (size_ms, size_ms),
            JoinWindow::Sliding { size_ms, slide_ms } => (size_ms, slide_ms),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The join verbs. Key lists pair up position by position; see the
/// [module docs](self) for the output schema.
pub trait Join {
    /// Unbounded inner join on `left_keys = right_keys`: each matching pair
    /// is emitted once, as soon as both rows have arrived. State keeps every
    /// row of both inputs for the whole run (bounded inputs, small state).
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Auction { id: i64, seller: i64 }
    /// #[derive(Serialize, Deserialize)]
    /// struct Person { id: i64, name: String }
    /// // The right `id` is renamed `right_id`; fields not read are ignored.
    /// #[derive(Deserialize)]
    /// struct Sold { id: i64, name: String }
    ///
    /// let env = Env::new();
    /// let auctions = env.from_rows("auctions", vec![
    ///     Auction { id: 10, seller: 1 },
    ///     Auction { id: 11, seller: 2 },
    ///     Auction { id: 12, seller: 1 },
    /// ]);
    /// let persons = env.from_rows("persons", vec![Person { id: 1, name: "ann".into() }]);
    /// let out = auctions.join(persons, &["seller"], &["id"]).collect();
    /// env.execute()?;
    /// let mut sold: Vec<_> = out.rows::<Sold>()?.into_iter().map(|s| (s.id, s.name)).collect();
    /// sold.sort();
    /// assert_eq!(sold, [(10, "ann".to_string()), (12, "ann".to_string())]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn join(self, right: Stream, left_keys: &[&str], right_keys: &[&str]) -> Stream;

    /// Inner join of rows with equal keys whose event times fall in the same
    /// window; each pair is emitted once per window holding both, when the
    /// window fires, with `window_start`/`window_end` appended. Both inputs
    /// need event time (watermarks assigned upstream).
    ///
    /// ```
    /// use std::time::Duration;
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Event { user: i64, ts: i64 }
    /// #[derive(Deserialize)]
    /// struct Pair { ts: i64, right_ts: i64, window_start: i64 }
    ///
    /// let env = Env::new();
    /// let clicks = env
    ///     .from_rows("clicks", vec![Event { user: 1, ts: 1_000 }, Event { user: 1, ts: 15_000 }])
    ///     .watermarks(WatermarkStrategy::ascending("ts"));
    /// let buys = env
    ///     .from_rows("buys", vec![Event { user: 1, ts: 3_000 }])
    ///     .watermarks(WatermarkStrategy::ascending("ts"));
    /// let window = JoinWindow::tumbling(Duration::from_secs(10));
    /// let out = clicks.window_join(buys, &["user"], &["user"], window).collect();
    /// env.execute()?;
    /// let pairs: Vec<_> =
    ///     out.rows::<Pair>()?.into_iter().map(|p| (p.ts, p.right_ts, p.window_start)).collect();
    /// assert_eq!(pairs, [(1_000, 3_000, 0)]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn window_join(
        self,
        right: Stream,
        left_keys: &[&str],
        right_keys: &[&str],
        window: JoinWindow,
    ) -> Stream;

    /// Inner join of rows with equal keys where `right.ts` lies in
    /// `[left.ts + lower_ms, left.ts + upper_ms]` (bounds inclusive, in
    /// milliseconds, either may be negative; Flink's interval join). Each
    /// pair is emitted once, as soon as both rows are there. Both inputs need
    /// event time; the result keeps the left one's, and the forwarded
    /// watermark is held back by `max(upper_ms, 0)` so no output is late.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Event { user: i64, ts: i64 }
    /// #[derive(Deserialize)]
    /// struct Pair { ts: i64, right_ts: i64 }
    ///
    /// let env = Env::new();
    /// let clicks = env
    ///     .from_rows("clicks", vec![Event { user: 1, ts: 1_000 }, Event { user: 1, ts: 9_000 }])
    ///     .watermarks(WatermarkStrategy::ascending("ts"));
    /// let buys = env
    ///     .from_rows("buys", vec![Event { user: 1, ts: 3_000 }])
    ///     .watermarks(WatermarkStrategy::ascending("ts"));
    /// // Buys up to 5 s after a click.
    /// let out = clicks.interval_join(buys, &["user"], &["user"], 0, 5_000).collect();
    /// env.execute()?;
    /// let pairs: Vec<_> = out.rows::<Pair>()?.into_iter().map(|p| (p.ts, p.right_ts)).collect();
    /// assert_eq!(pairs, [(1_000, 3_000)]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn interval_join(
        self,
        right: Stream,
        left_keys: &[&str],
        right_keys: &[&str],
        lower_ms: i64,
        upper_ms: i64,
    ) -> Stream;
}

/// What the verbs learned at plan time.
struct Plan {
    /// Left columns then right columns, right ones renamed where taken.
    fields: Vec<Field>,
    key_types: Vec<DataType>,
    keys: [Vec<usize>; 2],
    inputs: [SchemaRef; 2],
}

/// Checks the key columns (reporting plan errors) and computes the output
/// fields.
fn plan(left: &Stream, right: &Stream, lk: &[&str], rk: &[&str], verb: &str) -> Plan {
    let (ls, rs) = (left.schema(), right.schema());
    let err = |m: String| left.report(plan_error(left, verb, m));
    if lk.len() != rk.len() || lk.is_empty() {
        err(format!(
            "needs the same, non-zero number of left and right keys; got {lk:?} and {rk:?}"
        ));
    }
    let mut key_types = Vec::new();
    let mut keys = [Vec::new(), Vec::new()];
    for (l, r) in lk.iter().zip(rk) {
        match (ls.index_of(l), rs.index_of(r)) {
            (Ok(a), Ok(b)) => {
                let (ta, tb) = (ls.field(a).data_type(), rs.field(b).data_type());
                if ta != tb {
                    err(format!(
                        "key types differ: left '{l}' is {ta} but right '{r}' is {tb}; \
                         cast one side so both hash alike"
                    ));
                }
                key_types.push(ta.clone());
                keys[0].push(a);
                keys[1].push(b);
            }
            (Err(_), _) => err(format!(
                "unknown left key column '{l}'; the left input has {}",
                left.column_list()
            )),
            (_, Err(_)) => err(format!(
                "unknown right key column '{r}'; the right input has {}",
                right.column_list()
            )),
        }
    }
    for (side, schema) in [("left", ls), ("right", rs)] {
        if let Err(m) = rows::RowLists::supports(schema) {
            err(format!("the {side} input: {m}"));
        }
    }
    let mut fields: Vec<Field> = ls.fields().iter().map(|f| f.as_ref().clone()).collect();
    for f in rs.fields() {
        let name = free_name(&fields, f.name(), "right_");
        fields.push(f.as_ref().clone().with_name(name));
    }
    Plan {
        fields,
        key_types,
        keys,
        inputs: [ls.clone(), rs.clone()],
    }
}

/// `name`, prefixed with `prefix` as many times as needed to be unused.
fn free_name(fields: &[Field], name: &str, prefix: &str) -> String {
    let mut name = name.to_string();
    while fields.iter().any(|f| f.name() == &name) {
        name = format!("{prefix}{name}");
    }
    name
}

/// Column index of the event time of each input, reporting missing ones.
fn event_times(left: &Stream, right: &Stream, verb: &str) -> [usize; 2] {
    let mut time = [0usize; 2];
    for (i, s) in [left, right].into_iter().enumerate() {
        match s.event_time().and_then(|t| s.schema().index_of(t).ok()) {
            Some(t) => time[i] = t,
            None => left.report(plan_error(
                s,
                verb,
                format!(
                    "no watermark strategy on the {} input (columns {}): \
                     call .watermarks(...) before {verb}",
                    ["left", "right"][i],
                    s.column_list()
                ),
            )),
        }
    }
    time
}

/// Hash-partitions both inputs on their keys and adds the two-input operator.
fn wire(
    left: Stream,
    right: Stream,
    (lk, rk): (&[&str], &[&str]),
    verb: &str,
    fields: Vec<Field>,
    factory: OperatorFactory,
) -> Stream {
    let l = left.keyed_by(lk);
    let r = right.keyed_by(rk);
    l.transform_multi(verb, &[&r], vec![Arc::new(Schema::new(fields))], factory)
}

impl Join for Stream {
    fn join(self, right: Stream, left_keys: &[&str], right_keys: &[&str]) -> Stream {
        let p = plan(&self, &right, left_keys, right_keys, "join");
        let out: SchemaRef = Arc::new(Schema::new(p.fields.clone()));
        let (keys, inputs, types) = (p.keys, p.inputs, p.key_types);
        let factory: OperatorFactory = Arc::new(move |_ctx| {
            Ok(Box::new(StreamJoinOperator::new(
                keys.clone(),
                inputs.clone(),
                &types,
                out.clone(),
            )?))
        });
        wire(
            self,
            right,
            (left_keys, right_keys),
            "join",
            p.fields,
            factory,
        )
    }

    fn window_join(
        self,
        right: Stream,
        left_keys: &[&str],
        right_keys: &[&str],
        window: JoinWindow,
    ) -> Stream {
        const VERB: &str = "window_join";
        let (size, slide) = window.size_slide();
        if size <= 0 || slide <= 0 || slide > size {
            self.report(plan_error(
                &self,
                VERB,
                format!(
                    "invalid window: size {size} ms, slide {slide} ms \
                     (both must be positive, slide at most size)"
                ),
            ));
        }
        if size > MAX_EVENT_DURATION {
            self.report(plan_error(&self, VERB, too_long("join window size", size)));
        }
        let mut p = plan(&self, &right, left_keys, right_keys, VERB);
        let time = event_times(&self, &right, VERB);
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        for n in ["window_start", "window_end"] {
            let name = free_name(&p.fields, n, "join_");
            p.fields.push(Field::new(name, ts.clone(), false));
        }
        let end = p.fields.last().map(|f| f.name().clone());
        let out: SchemaRef = Arc::new(Schema::new(p.fields.clone()));
        let (keys, inputs, types) = (p.keys, p.inputs, p.key_types);
        let factory: OperatorFactory = Arc::new(move |_ctx| {
            Ok(Box::new(WindowJoinOperator::new(
                (size, slide),
                keys.clone(),
                time,
                inputs.clone(),
                &types,
                out.clone(),
            )?))
        });
        wire(
            self,
            right,
            (left_keys, right_keys),
            VERB,
            p.fields,
            factory,
        )
        .with_event_time(end)
    }

    fn interval_join(
        self,
        right: Stream,
        left_keys: &[&str],
        right_keys: &[&str],
        lower_ms: i64,
        upper_ms: i64,
    ) -> Stream {
        const VERB: &str = "interval_join";
        if lower_ms > upper_ms {
            self.report(plan_error(
                &self,
                VERB,
                format!("lower bound {lower_ms} ms is above upper bound {upper_ms} ms"),
            ));
        }
        for bound in [lower_ms, upper_ms] {
            if bound.unsigned_abs() > MAX_EVENT_DURATION.unsigned_abs() {
                self.report(plan_error(&self, VERB, too_long("join bound", bound)));
            }
        }
        let p = plan(&self, &right, left_keys, right_keys, VERB);
        let time = event_times(&self, &right, VERB);
        let left_time = self.event_time().map(str::to_string);
        let out: SchemaRef = Arc::new(Schema::new(p.fields.clone()));
        let (keys, inputs, types) = (p.keys, p.inputs, p.key_types);
        let factory: OperatorFactory = Arc::new(move |_ctx| {
            Ok(Box::new(IntervalJoinOperator::new(
                (lower_ms, upper_ms),
                keys.clone(),
                time,
                inputs.clone(),
                &types,
                out.clone(),
            )?))
        });
        // Left columns come first under their own names, so the left time
        // column keeps its name in the output.
        wire(
            self,
            right,
            (left_keys, right_keys),
            VERB,
            p.fields,
            factory,
        )
        .with_event_time(left_time)
    }
}
