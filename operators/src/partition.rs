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
    /// ```
    /// # use sluice_operators::prelude::*;
    /// # fn f(bids: Stream) -> Stream {
    /// bids.key_by(["auction"])
    /// # }
    /// ```
    fn key_by<'a>(self, cols: impl IntoIterator<Item = &'a str>) -> Stream;
}

impl KeyBy for Stream {
    fn key_by<'a>(self, cols: impl IntoIterator<Item = &'a str>) -> Stream {
        let cols: Vec<&str> = cols.into_iter().collect();
        self.keyed_by(&cols)
    }
}

/// Non-keyed repartitioning verbs.
pub trait Repartition {
    /// Round-robin, a batch at a time.
    fn rebalance(self) -> Stream;
    /// Every record to every downstream subtask.
    fn broadcast(self) -> Stream;
    /// Each batch to the downstream subtask with the least queued input.
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
    /// ```
    /// # use sluice_operators::prelude::*;
    /// # use std::time::Duration;
    /// # fn f(bids: Stream) -> Stream {
    /// bids.watermarks(bounded_out_of_orderness("date_time", Duration::from_secs(1)).idle_after(Duration::from_secs(5)))
    /// # }
    /// ```
    fn watermarks(self, strategy: WatermarkStrategy) -> Stream;
}

impl Watermarks for Stream {
    fn watermarks(self, strategy: WatermarkStrategy) -> Stream {
        self.assign_watermarks(strategy)
    }
}

/// Watermarks trailing the largest timestamp seen by `delay`.
pub fn bounded_out_of_orderness(column: &str, delay: Duration) -> WatermarkStrategy {
    WatermarkStrategy::bounded_out_of_orderness(column, delay)
}
