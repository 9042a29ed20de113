//! # sluice-cluster
//!
//! Sluice's control plane: everything that runs jobs across processes
//! except the job binaries themselves. It depends on the data plane
//! (`sluice-engine`, for checkpoint storage and the checkpoint
//! coordinator's protocol) and on `sluice-protocol` for everything that
//! crosses a process boundary; nothing in the data plane names this crate,
//! and a job binary never links it.
//!
//! - [`coordinator`]: the `sluice coordinator` service: REST API, job
//!   manager (workers, jobs, attempts, failure detection, restarts),
//!   scheduler, durable metadata, leadership among coordinators sharing a
//!   data directory.
//! - [`attempt`]: the coordinator's side of a job attempt: the control
//!   server executors dial, fencing of stale attempts, and the checkpoint
//!   coordinator whose messages travel as control frames.
//! - [`worker`]: the `sluice worker` service: registration, heartbeats,
//!   executor processes.
//! - [`artifact`]: job binaries by SHA-256, downloaded once and verified
//!   (again whenever their file changed) before they run.
//! - [`ship`]: what `sluice submit` uploads: the job binary stripped of its
//!   debug info, which stays beside the local binary.
//! - [`certs`]: the cluster CA and node certificates as files (`sluice
//!   tls`), keys private to their owner.
//! - [`client`]: the typed REST client of the coordinator (CLI, workers).
//! - [`routes`]: every route of the REST API.
//! - [`local`]: a coordinator and workers started as processes on this
//!   machine, for end-to-end tests and benchmarks.
#![warn(missing_docs)]

pub mod artifact;
pub mod attempt;
pub mod certs;
pub mod client;
pub mod confine;
pub mod coordinator;
pub mod local;
pub mod routes;
pub mod ship;
pub mod worker;
