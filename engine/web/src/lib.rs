//! # sluice-web
//!
//! The part of the REST API that shows and steers jobs, the web UI, and the
//! token check in front of them, over any [`JobsView`]: the coordinator's
//! job manager (in `sluice-cluster`), or a job embedded in one process
//! (`sluice-engine`'s `ui` feature, `SLUICE_UI=ADDR`). One set of handlers,
//! so the UI and the CLI's reading commands behave the same against both.
//! It knows the protocol's types and nothing of either side's internals.
//!
//! - [`routes`]: the job routes, listener binding, serving (HTTP or HTTPS)
//!   and the Prometheus exposition.
//! - [`ui`]: the page and script, compiled in.
//! - [`security`]: the bearer token and the TLS files.
//! - [`error`]: failures as the HTTP status codes need them.
#![warn(missing_docs)]

pub mod error;
pub mod routes;
pub mod security;
pub mod ui;

pub use error::{Error, Result};
pub use routes::{
    bind, blocking, exposition, routes, secure, serve, ui_routes, Answer, Failure, JobsView,
};
pub use security::{TlsFiles, Token};
