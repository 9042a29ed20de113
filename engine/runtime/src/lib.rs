//! # sluice-engine
//!
//! The core of Sluice, a distributed dataflow stream processor over Apache
//! Arrow. This crate knows no concrete operator or connector; it owns:
//!
//! - [`data`]: what flows on edges — `StreamMessage` (batches, watermarks,
//!   barriers, end of stream) and event-time helpers.
//! - [`operator`]: the `Operator`, `Source` and `Sink` traits and the
//!   `Collector` operators emit into.
//! - [`graph`]: the logical job graph and edge kinds (forward, hash,
//!   rebalance, broadcast, load-aware) and watermark strategies.
//! - [`dsl`]: `Env` and `Stream`, the primitives the DSL verbs in
//!   `sluice-operators` build on; plan-time validation errors.
//! - [`plan`]: logical → physical graph: parallelism and operator chaining.
//! - [`progress`]: how far a job has come, as a reading and a terminal bar.
//! - [`exchange`]: partitioners and channels between subtasks: local bounded
//!   channels, and the TCP transport (Arrow IPC frames, one connection per
//!   process pair, credit-based flow control per channel) between the
//!   executors of a distributed job.
//! - [`state`]: key groups (key → group → subtask), fixed per job so state
//!   can move when parallelism changes.
//! - [`checkpoint`]: barrier checkpoints: coordinator, snapshot writer,
//!   manifests with checksums, restore with rescaling, savepoints.
//! - [`runtime`]: task threads, watermark combination and idleness, failure
//!   propagation, the embedded cluster; the channel wiring shared with
//!   task executors.
//! - [`executor`]: the describe and task-executor modes of a job binary:
//!   its plan as a job description, and its share of a distributed job's
//!   subtasks, wired to the other executors over the TCP exchange and
//!   driven by the coordinator over the control connection. The
//!   coordinator and the worker service live in `sluice-cluster`, which
//!   this crate never names; what crosses between them is
//!   `sluice-protocol`'s.
//! - [`tls`]: mutual TLS on the control connection and the exchange:
//!   a process's certificate and the cluster CA it trusts, certificates
//!   made with rcgen, a TLS stream split for a reader and a writer thread.
//! - [`metrics`]: what a running job measures per subtask for operators
//!   (busy, idle and backpressured time, records and bytes, input
//!   watermark, source backlog) and per process (CPU, memory).
//! - [`hash`]: the stable, vectorized row hash used for key routing.
//! - [`error`]: the error enum shared by the library crates.
//! - [`testing`]: a source over prepared batches, [`testing::run_collect`]
//!   and small batch helpers for tests, doctests and examples.
//!
//! The Arrow version the engine is built on is re-exported as [`arrow`].
//!
//! Features, on by default: `ui` (the web UI of an embedded run, through
//! `sluice-web`), `rocksdb` (the RocksDB state backend), `s3` (checkpoints
//! in S3-compatible buckets). Without them the crate links no web server,
//! RocksDB, HTTP client, TLS library or async runtime, and a configuration
//! that asks for one fails before the job runs
//! ([`JobConfig::check_features`](runtime::JobConfig::check_features)).
#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod dsl;
pub mod error;
pub mod exchange;
pub mod executor;
pub mod graph;
pub mod hash;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod progress;
pub mod runtime;
pub mod state;
pub mod testing;
pub mod tls;

/// The Arrow version the engine is built on, so a job builds batches,
/// schemas and arrays without pinning its own `arrow` to the same version
/// (`use sluice_engine::arrow::array::Int64Array;`).
pub use arrow;
pub use checkpoint::{CheckpointConfig, RestartStrategy};
pub use data::{EventTime, StreamMessage, Watermark};
pub use dsl::{Collected, Env, SinkSpec, SourceSpec, Stream};
pub use error::{Error, ErrorKind, Result, Retry};
pub use graph::{EdgeKind, WatermarkStrategy};
pub use operator::{Collector, Operator, OperatorContext, Sink, Source, SourcePoll};
pub use runtime::{ExecutorShare, JobConfig, JobHandle, JobResult};
/// The versioned types shared with the coordinator (re-exported).
pub use sluice_protocol as protocol;
