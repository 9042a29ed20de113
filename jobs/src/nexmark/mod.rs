//! The Nexmark queries on Sluice's DSL (semantics of the Flink/Beam suite,
//! adapted where a query is an updating table — see each query's doc):
//!
//! | query | what it computes |
//! |---|---|
//! | q0 | pass-through of bids |
//! | q1 | price converted to euros |
//! | q2 | bids of auctions whose id is a multiple of 123 |
//! | q3 | auctions of category 10 by sellers in OR, ID or CA (unbounded join) |
//! | q4 | average winning price per category |
//! | q5 | hottest auctions: most bids per sliding window (10 s, every 2 s) |
//! | q7 | highest bids per tumbling window of 10 s |
//! | q8 | persons who created an auction in the tumbling window they joined (window join) |
//! | q11 | bids per bidder session (gap 10 s) |
//!
//! Two more pipelines are not Nexmark queries but the window benchmarks the
//! engine comparisons use (same generator): `tumble` (bids per auction per
//! tumbling 10 s window) and `slide` (highest price per auction per sliding
//! 10 s window every 2 s).

mod winning_bids;

use std::time::Duration;

use arrow::datatypes::DataType;
use sluice_connectors::nexmark::{NexmarkConfig, NexmarkSource};
use sluice_engine::{Env, Error, Result, Stream, WatermarkStrategy};
use sluice_operators::prelude::*;

pub use winning_bids::WinningBidsOperator;

/// A Nexmark query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Pass-through.
    Q0,
    /// Currency conversion.
    Q1,
    /// Selection.
    Q2,
    /// Local item suggestion (join).
    Q3,
    /// Average price per category.
    Q4,
    /// Hot items (sliding window).
    Q5,
    /// Highest bid (tumbling window).
    Q7,
    /// Monitor new users (windowed join).
    Q8,
    /// User sessions (session window).
    Q11,
    /// Not Nexmark: bids per auction per tumbling 10 s window.
    Tumble,
    /// Not Nexmark: highest price per auction per sliding 10 s window every 2 s.
    Slide,
}

impl std::str::FromStr for Query {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "q0" => Query::Q0,
            "q1" => Query::Q1,
            "q2" => Query::Q2,
            "q3" => Query::Q3,
            "q4" => Query::Q4,
            "q5" => Query::Q5,
            "q7" => Query::Q7,
            "q8" => Query::Q8,
            "q11" => Query::Q11,
            "tumble" => Query::Tumble,
            "slide" => Query::Slide,
            other => {
                return Err(Error::Config(format!(
                "unknown query '{other}'; expected one of q0 q1 q2 q3 q4 q5 q7 q8 q11 tumble slide"
            )))
            }
        })
    }
}

/// Every Nexmark query, in order (not the `tumble` and `slide` benchmarks).
pub const ALL: [Query; 9] = [
    Query::Q0,
    Query::Q1,
    Query::Q2,
    Query::Q3,
    Query::Q4,
    Query::Q5,
    Query::Q7,
    Query::Q8,
    Query::Q11,
];

fn watermarks(cfg: &NexmarkConfig) -> WatermarkStrategy {
    WatermarkStrategy::bounded_out_of_orderness(
        "date_time",
        Duration::from_millis(cfg.max_out_of_orderness_ms.max(0) as u64),
    )
}

fn bids(env: &Env, cfg: &NexmarkConfig) -> Stream {
    env.source(NexmarkSource::bids(cfg.clone()))
        .watermarks(watermarks(cfg))
}

fn persons(env: &Env, cfg: &NexmarkConfig) -> Stream {
    env.source(NexmarkSource::persons(cfg.clone()))
        .watermarks(watermarks(cfg))
}

fn auctions(env: &Env, cfg: &NexmarkConfig) -> Stream {
    env.source(NexmarkSource::auctions(cfg.clone()))
        .watermarks(watermarks(cfg))
}

/// Builds `query` in `env` and returns its result stream (the caller adds
/// the sink).
pub fn build(env: &Env, query: Query, cfg: &NexmarkConfig) -> Stream {
    let secs = Duration::from_secs;
    match query {
        Query::Q0 => bids(env, cfg).select([
            col("auction"),
            col("bidder"),
            col("price"),
            col("date_time"),
            col("extra"),
        ]),
        Query::Q1 => bids(env, cfg).select([
            col("auction"),
            col("bidder"),
            (col("price").cast(DataType::Float64) * lit(0.908)).alias("price"),
            col("date_time"),
            col("extra"),
        ]),
        Query::Q2 => bids(env, cfg)
            .filter((col("auction") % lit(123i64)).eq(lit(0i64)))
            .select([col("auction"), col("price")]),
        Query::Q3 => {
            let a = auctions(env, cfg).filter(col("category").eq(lit(10i64)));
            let p = persons(env, cfg).filter(
                col("state")
                    .eq(lit("OR"))
                    .or(col("state").eq(lit("ID")))
                    .or(col("state").eq(lit("CA"))),
            );
            a.join(p, &["seller"], &["id"]).select([
                col("name"),
                col("city"),
                col("state"),
                col("id"),
            ])
        }
        Query::Q4 => {
            let winners = winning_bids::winning_bids(auctions(env, cfg), bids(env, cfg));
            // The average over all closed auctions: a window spanning all time,
            // which fires when the input ends (Flink's updating result, final state).
            winners
                .key_by(["category"])
                .window(WindowSpec::tumbling(secs(100 * 365 * 24 * 3600)))
                .aggregate([avg("final")])
                .select([col("category"), col("avg_final")])
        }
        Query::Q5 => bids(env, cfg)
            .key_by(["auction"])
            .window(WindowSpec::sliding(secs(10), secs(2)))
            .aggregate([count()])
            .top_by_time("count"),
        Query::Q7 => bids(env, cfg)
            .select([
                col("auction"),
                col("price"),
                col("bidder"),
                col("date_time"),
                col("extra"),
            ])
            .top_by_window(secs(10), "price"),
        Query::Q8 => {
            // Persons and sellers per 10 s window, then a window join on the
            // aggregates' event time (window_end): rows of window [s, e) from
            // both sides meet in the join window starting at e, and the join
            // drops them once the watermark passes.
            let p = persons(env, cfg)
                .key_by(["id", "name"])
                .window(WindowSpec::tumbling(secs(10)))
                .aggregate([count()])
                .select([
                    col("id"),
                    col("name"),
                    col("window_start"),
                    col("window_end"),
                ]);
            let a = auctions(env, cfg)
                .key_by(["seller"])
                .window(WindowSpec::tumbling(secs(10)))
                .aggregate([count()])
                .select([
                    col("seller"),
                    col("window_start").alias("auction_window"),
                    col("window_end"),
                ]);
            p.window_join(
                a,
                &["id", "window_start"],
                &["seller", "auction_window"],
                JoinWindow::tumbling(secs(10)),
            )
            .select([col("id"), col("name"), col("window_start")])
        }
        Query::Q11 => bids(env, cfg)
            .key_by(["bidder"])
            .window(WindowSpec::session(secs(10)))
            .aggregate([count()]),
        Query::Tumble => bids(env, cfg)
            .key_by(["auction"])
            .window(WindowSpec::tumbling(secs(10)))
            .aggregate([count()]),
        Query::Slide => bids(env, cfg)
            .key_by(["auction"])
            .window(WindowSpec::sliding(secs(10), secs(2)))
            .aggregate([max("price")]),
    }
}
