//! Partitioning verbs — `key_by`, `rebalance`, `broadcast`, `load_balance` —
//! and `watermarks`. They add no operator: they set how the next operator's
//! input edge routes records (or, for `watermarks`, configure the source).

use std::time::Duration;

use sluice_engine::{EdgeKind, Stream, WatermarkStrategy};

/// The `key_by` verb.
pub trait KeyBy {
    /// Hash-partitions by `cols` (through key groups) and marks the stream
    /// keyed, so windows and joins group by these columns.
    ///
    /// Unknown columns are plan errors naming `key_by after '<node>'`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use arrow::array::{AsArray, Int64Array, RecordBatch};
    /// # use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    /// # use sluice_operators::prelude::*;
    /// # let schema = Arc::new(Schema::new(vec![
    /// #     Field::new("auction", DataType::Int64, false),
    /// #     Field::new("ts", DataType::Int64, false),
    /// # ]));
    /// # let batch = RecordBatch::try_new(schema.clone(), vec![
    /// #     Arc::new(Int64Array::from(vec![1, 2, 1, 3])),
    /// #     Arc::new(Int64Array::from(vec![10, 20, 30, 40])),
    /// # ]).unwrap();
    /// # let sorted = |c: &sluice_engine::Collected| {
    /// #     let mut v: Vec<i64> = c.batches().iter()
    /// #         .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
    /// #         .collect();
    /// #     v.sort();
    /// #     v
    /// # };
    /// let env = Env::new();
    /// env.set_parallelism(2);
    /// let bids = env.from_batches("bids", schema, vec![batch]);
    /// let keyed = bids.key_by(["auction"]);
    /// assert_eq!(keyed.keys(), Some(&["auction".to_string()][..]));
    /// let out = keyed.filter(col("ts").gt(lit(15))).collect();
    /// env.execute()?;
    /// assert_eq!(sorted(&out), [1, 2, 3]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn key_by<'a>(self, cols: impl IntoIterator<Item = &'a str>) -> Stream;
}

impl KeyBy for Stream {
    fn key_by<'a>(self, cols: impl IntoIterator<Item = &'a str>) -> Stream {
        let cols: Vec<&str> = cols.into_iter().collect();
        self.keyed_by(&cols)
    }
}

/// Non-keyed repartitioning verbs. Each sets how the *next* operator's
/// input edge routes batches, and drops any keying.
pub trait Repartition {
    /// Round-robin, a batch at a time: spreads a skewed or single-subtask
    /// stream over the next operator's subtasks.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct N { n: i64 }
    ///
    /// let env = Env::new();
    /// env.set_parallelism(2);
    /// let numbers = env.from_rows("numbers", (0..4).map(|n| N { n }).collect());
    /// let out = numbers.rebalance().filter(col("n").gt(lit(0i64))).collect();
    /// env.execute()?;
    /// assert_eq!(out.num_rows(), 3);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn rebalance(self) -> Stream;

    /// Every record to every downstream subtask (e.g. rules or a small
    /// table every subtask needs).
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct N { n: i64 }
    ///
    /// let env = Env::new();
    /// env.set_parallelism(2);
    /// let numbers = env.from_rows("numbers", (0..4).map(|n| N { n }).collect());
    /// let out = numbers.broadcast().filter(lit(true)).collect();
    /// env.execute()?;
    /// assert_eq!(out.num_rows(), 8, "each of 2 subtasks sees every row");
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn broadcast(self) -> Stream;

    /// Each batch to the downstream subtask with the least queued input,
    /// so a slow subtask gets less.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct N { n: i64 }
    ///
    /// let env = Env::new();
    /// env.set_parallelism(2);
    /// let numbers = env.from_rows("numbers", (0..4).map(|n| N { n }).collect());
    /// let out = numbers.load_balance().filter(lit(true)).collect();
    /// env.execute()?;
    /// assert_eq!(out.num_rows(), 4);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn load_balance(self) -> Stream;
}

impl Repartition for Stream {
    fn rebalance(self) -> Stream {
        self.partition(EdgeKind::Rebalance)
    }
    fn broadcast(self) -> Stream {
        self.partition(EdgeKind::Broadcast)
    }
    fn load_balance(self) -> Stream {
        self.partition(EdgeKind::LoadAware)
    }
}

/// The `watermarks` verb.
pub trait Watermarks {
    /// Assigns event time and watermarks; on a source directly, watermarks
    /// are tracked per source split.
    ///
    /// The event-time column must be Int64 epoch milliseconds or a
    /// Timestamp; anything else is a plan error.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use arrow::array::{AsArray, Int64Array, RecordBatch};
    /// # use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    /// # use sluice_operators::prelude::*;
    /// # let schema = Arc::new(Schema::new(vec![
    /// #     Field::new("auction", DataType::Int64, false),
    /// #     Field::new("ts", DataType::Int64, false),
    /// # ]));
    /// # let batch = RecordBatch::try_new(schema.clone(), vec![
    /// #     Arc::new(Int64Array::from(vec![1, 2, 1, 3])),
    /// #     Arc::new(Int64Array::from(vec![10, 20, 30, 40])),
    /// # ]).unwrap();
    /// # let sorted = |c: &sluice_engine::Collected| {
    /// #     let mut v: Vec<i64> = c.batches().iter()
    /// #         .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
    /// #         .collect();
    /// #     v.sort();
    /// #     v
    /// # };
    /// let env = Env::new();
    /// env.set_parallelism(2);
    /// let bids = env.from_batches("bids", schema, vec![batch]);
    /// use std::time::Duration;
    /// let timed = bids.watermarks(
    ///     bounded_out_of_orderness("ts", Duration::from_secs(1)).idle_after(Duration::from_secs(5)),
    /// );
    /// assert_eq!(timed.event_time(), Some("ts"));
    /// let out = timed.collect();
    /// env.execute()?;
    /// assert_eq!(sorted(&out), [1, 1, 2, 3]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn watermarks(self, strategy: WatermarkStrategy) -> Stream;
}

impl Watermarks for Stream {
    fn watermarks(self, strategy: WatermarkStrategy) -> Stream {
        self.assign_watermarks(strategy)
    }
}

/// Watermarks trailing the largest event time seen (in `column`) by
/// `delay`: a record may arrive up to `delay` after a later one.
pub fn bounded_out_of_orderness(column: &str, delay: Duration) -> WatermarkStrategy {
    WatermarkStrategy::bounded_out_of_orderness(column, delay)
}
