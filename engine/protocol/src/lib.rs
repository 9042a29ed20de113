//! # sluice-protocol
//!
//! Everything that crosses a process boundary in a Sluice cluster, and
//! nothing else: this crate has no runtime, no I/O beyond reading and
//! writing frames, and depends on serde alone (plus SHA-256 and the
//! system's randomness for secrets). The data plane (`sluice-engine`), the
//! web UI (`sluice-web`) and the control plane (`sluice-cluster`) all speak
//! through these types, so none of them needs to know another's modules.
//!
//! - [`version`]: the protocol version every hello, executor spec and job
//!   description carries, and the two-step decoding that refuses another
//!   version by name before reading anything else.
//! - [`ids`]: checkpoint ids, barriers and task keys.
//! - [`control`]: the control connection between executors and the
//!   coordinator: frames, their bounds and the checked hello.
//! - [`api`]: the REST API's bodies, job descriptions and executor specs;
//!   [`autoscale`]: an autoscaled job's range and decisions among them.
//! - [`manifest`]: the manifest of a completed checkpoint (the on-disk
//!   format executors write and coordinators read).
//! - [`stats`]: checkpoint figures as reported.
//! - [`metrics`]: per-subtask time accounting, records, bytes, watermarks
//!   and source backlog, and per-process CPU and memory, as reported.
//! - [`results`]: the newest rows of each sink, as reported and kept.
//! - [`logs`]: executors' log lines, as workers send them and the
//!   coordinator answers them.
//! - [`secret`]: per-attempt secrets and constant-time comparison.
//! - [`error`]: this crate's errors.
#![warn(missing_docs)]

pub mod api;
pub mod autoscale;
pub mod control;
pub mod error;
pub mod ids;
pub mod logs;
pub mod manifest;
pub mod metrics;
pub mod results;
pub mod secret;
pub mod stats;
pub mod version;

pub use error::{Error, Result};
pub use version::PROTOCOL_VERSION;
