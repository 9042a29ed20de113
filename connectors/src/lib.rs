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
//! - [`parquet`]: the Parquet sink (local or S3, Hive partitions, files
//!   spanning checkpoints, rolled by size/rows/time/watermark) and
//!   compaction.
//! - `iceberg`: Apache Iceberg tables as a sink (SQL catalog on SQLite);
//!   feature `iceberg`, on by default.
//! - [`sinks`]: the discarding sink and the print sink for demos.

pub mod file;
#[cfg(feature = "iceberg")]
pub mod iceberg;
mod json;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod nexmark;
pub mod parquet;
pub mod sinks;
