//! # sluice-connectors
//!
//! Where records come from and go to:
//!
//! - `kafka`: the Kafka source and sink (rdkafka), decode policies, and a
//!   tansu broker launcher for tests; feature `kafka`, on by default (the
//!   crate's `default` also turns on the engine's default features).
//! - [`nexmark`]: the Nexmark benchmark generator (persons, auctions, bids),
//!   deterministic by seed and independent of parallelism.
//! - [`file`]: bounded sources over Parquet, CSV and JSON-lines files.
//! - `json`: the strict JSON record rule and decoder the Kafka source and
//!   the JSON-lines file source share.
//! - [`parquet`]: the Parquet sink (a file per subtask, rolled by size/time).
//! - [`sinks`]: the discarding sink and the print sink for demos.

pub mod file;
mod json;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod nexmark;
pub mod parquet;
pub mod sinks;
