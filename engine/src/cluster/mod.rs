//! Running jobs across processes: the `sluice` coordinator and workers,
//! and the task-executor mode of job binaries.
//!
//! - [`api`]: the coordinator's REST API types (JSON), shared by the
//!   coordinator, the workers and the CLI.
//! - [`artifact`]: job binaries by SHA-256, downloaded once and verified.
//! - [`client`]: the typed REST client of the coordinator (CLI, workers).
//! - [`worker`]: the `sluice worker` service: registration, heartbeats,
//!   executor processes.
//! - [`control`]: the control connection between a task executor and the
//!   coordinator (registration, peers, checkpoint triggers and
//!   acknowledgements, fencing by attempt), length-prefixed JSON frames.
//! - [`describe`]: the serialized plan of a job, which `sluice submit`
//!   obtains from the job binary and the scheduler places.
//! - [`executor`]: a job binary started by a worker runs its share of the
//!   subtasks, wired to the other executors over the TCP exchange.
//! - [`jobs_api`]: the job routes of the REST API and the web UI's routes,
//!   over the coordinator or a job embedded in this process.
//! - [`attempt`]: the coordinator's side of an attempt: the control server
//!   executors dial, fencing of stale attempts, and the checkpoint
//!   coordinator driving remote tasks.
//! - [`results`]: the latest rows of a job's sinks, rendered in executors
//!   and kept per job by the coordinator.
//! - [`security`]: the API's bearer token and TLS files, and the
//!   per-attempt secrets of control and exchange connections.
//! - [`ui`]: the web UI the coordinator serves.
//! - [`local`]: a coordinator and workers started as processes on this
//!   machine, for end-to-end tests and benchmarks.
//!
//! A job binary decides its mode in `Env::execute`: with `SLUICE_EXECUTOR`
//! set it runs as a task executor, with `SLUICE_DESCRIBE` set it writes its
//! plan and exits, otherwise it runs embedded.

pub mod api;
pub mod artifact;
pub mod attempt;
pub mod client;
pub mod control;
pub mod coordinator;
pub mod describe;
pub mod executor;
pub mod jobs_api;
pub mod local;
pub mod results;
pub mod security;
pub mod ui;
pub mod worker;
