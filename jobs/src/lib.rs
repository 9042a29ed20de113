//! # sluice-jobs
//!
//! The reference jobs, as library functions the binaries in `src/bin/` and
//! the tests share: the Nexmark queries ([`nexmark`]) and the generic
//! windowed aggregation over files ([`window_agg`]) and Kafka into
//! Parquet ([`kafka_to_parquet`]), and the progress display of their
//! binaries ([`progress`]). They are also the examples people copy.

pub mod cli;
pub mod kafka_to_parquet;
pub mod nexmark;
pub mod progress;
pub mod window_agg;
