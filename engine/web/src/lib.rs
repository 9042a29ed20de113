//! # sluice-web
//!
//! The part of the REST API that shows and steers jobs, the web UI, and the
//! token check in front of them, over any [`JobsView`]: the coordinator's
//! job manager (in `sluice-cluster`), or a job embedded in one process
//! (`sluice-engine`'s `ui` feature, `SLUICE_UI=ADDR`). One set of handlers,
//! so the UI and the CLI's reading commands behave the same against both.
//! It knows the protocol's types and nothing of either side's internals.
//!
//! - [`routes`]: the job routes and the UI's, the token check, failures.
//! - [`handlers`]: the handlers, each with its OpenAPI description (feature
//!   `openapi`, from which the coordinator's document is generated).
//! - [`history`]: the bounded history of figures behind the UI's charts.
//! - [`metrics`]: the Prometheus metrics (histograms, and the state a view
//!   shows).
//! - [`server`]: listener binding and serving (HTTP or HTTPS).
//! - [`ui`]: the page and script, compiled in.
//! - [`security`]: the bearer tokens, their roles, and the TLS files.
//! - [`audit`]: the audit log of state-changing requests.
//! - [`error`]: failures as the HTTP status codes need them.
#![warn(missing_docs)]

pub mod audit;
#[cfg(feature = "openapi")]
pub mod doc;
pub mod error;
pub mod handlers;
pub mod history;
pub mod metrics;
pub mod routes;
pub mod security;
pub mod server;
pub mod ui;

pub use audit::{AuditEntry, AuditLog};
pub use error::{Error, Result};
pub use history::{spawn_sampler, History};
pub use metrics::Metrics;
pub use routes::{blocking, routes, secure, ui_routes, Answer, Failure, JobsView, JsonBody};
pub use security::{Access, Role, TlsFiles, Token};
pub use server::{bind, serve};
