//! The engine's error type: one semantic enum for every library failure, with
//! two classifications callers branch on: who is responsible
//! ([`Error::kind`]: user, external, internal) and whether running the
//! same thing again can succeed ([`Error::retry`]: never, or after a
//! backoff). Restart strategies follow the second: a record that cannot
//! be decoded fails the same way on every replay, so it fails the job at
//! once instead of being retried, embedded (the driver's restart loop) and on
//! a cluster (the executor reports [`Error::retry`] with its failure, in the
//! protocol's [`Retry`], and the coordinator's job life cycle follows it).

use std::fmt;

pub use sluice_protocol::control::Retry;

/// Result alias used across Sluice's library crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure Sluice reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job graph is invalid: unknown column, type mismatch, missing watermark.
    #[error("plan error in operator '{operator}': {message}")]
    Plan {
        /// The operator (DSL verb plus name) the problem was found at.
        operator: String,
        /// What is wrong, naming the column where there is one.
        message: String,
    },
    /// Bad configuration or command-line value.
    #[error("configuration error: {0}")]
    Config(String),
    /// An I/O failure (files, sockets).
    #[error("I/O error: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An Arrow kernel failed.
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A record could not be decoded, or holds a value the job cannot
    /// process (an event time outside [`crate::data::EVENT_TIME_RANGE`]),
    /// and the source's bad-record policy says fail. The message names the
    /// record (topic, partition and offset; file and line).
    #[error("decode error: {0}")]
    Decode(String),
    /// A computed value does not fit its type (a sum past the range of its
    /// result column); the message names the operator and column.
    #[error("overflow: {0}")]
    Overflow(String),
    /// A connector failed talking to the outside world.
    #[error("connector '{connector}': {message}")]
    Connector {
        /// Connector name (parquet, nexmark, csv ...).
        connector: String,
        /// What went wrong.
        message: String,
    },
    /// A user closure or user-defined function failed.
    #[error("user function failed: {0}")]
    User(String),
    /// A subtask failed; wraps the cause with where it happened.
    #[error("subtask {subtask} of '{operator}' failed: {source}")]
    Task {
        /// Operator chain name of the failed task.
        operator: String,
        /// Subtask index.
        subtask: usize,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
    /// A user function panicked.
    #[error("panic: {0}")]
    Panic(String),
    /// A checkpoint could not be taken, stored or restored (missing or
    /// corrupted files, incompatible job).
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
    /// A network exchange connection failed, was refused (wrong job, stale
    /// attempt, unknown peer) or was closed by its peer.
    #[error("exchange error: {0}")]
    Exchange(String),
    /// A peer sent bytes that are not a valid exchange or control frame
    /// (malformed, truncated, over the size bound, breaking the credit
    /// protocol) or speaks another protocol version; the connection that
    /// carried them is closed.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Keyed state could not be encoded or decoded, or a state was used
    /// other than as declared (e.g. a list read as a value).
    #[error("state error: {0}")]
    State(String),
    /// A request named something that does not exist (job, worker, artifact).
    #[error("not found: {0}")]
    NotFound(String),
    /// The coordinator answered a request with an error status; `message`
    /// is its `ApiError.error` text (or the body when it sent none).
    #[error("coordinator refused the request (HTTP {status}): {message}")]
    Api {
        /// HTTP status code.
        status: u16,
        /// What the coordinator said.
        message: String,
    },
    /// The coordinator could not be reached, or its answer could not be
    /// read (connection refused, timeout, malformed body).
    #[error("cannot talk to the coordinator at {url}: {message}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// What failed.
        message: String,
    },
    /// Something awaited did not happen in time (the message says what,
    /// and may carry diagnostics such as log tails).
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The job was cancelled.
    #[error("job cancelled")]
    Cancelled,
    /// An invariant did not hold; this is a Sluice bug.
    #[error("internal error (this is a Sluice bug): {0}")]
    Internal(String),
}

/// Who is responsible for an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The job or its input is wrong; restarting does not help.
    User,
    /// Something outside (disk, network, broker) failed; a restart may help.
    External,
    /// A Sluice bug.
    Internal,
}

impl Error {
    /// Builds a plan error for `operator`.
    pub fn plan(operator: impl fmt::Display, message: impl fmt::Display) -> Self {
        Error::Plan {
            operator: operator.to_string(),
            message: message.to_string(),
        }
    }

    /// Builds an I/O error with context.
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            context: context.to_string(),
            source,
        }
    }

    /// Builds a connector error.
    pub fn connector(connector: impl fmt::Display, message: impl fmt::Display) -> Self {
        Error::Connector {
            connector: connector.to_string(),
            message: message.to_string(),
        }
    }

    /// Classifies the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Plan { .. }
            | Error::Config(_)
            | Error::Decode(_)
            | Error::Overflow(_)
            | Error::User(_)
            | Error::State(_)
            | Error::NotFound(_) => ErrorKind::User,
            Error::Panic(_) => ErrorKind::User,
            Error::Io { .. }
            | Error::Connector { .. }
            | Error::Checkpoint(_)
            | Error::Exchange(_)
            | Error::Protocol(_)
            | Error::Unreachable { .. }
            | Error::Timeout(_)
            | Error::Cancelled => ErrorKind::External,
            // A 4xx means the request itself was wrong; anything else is the
            // coordinator's trouble and may pass.
            Error::Api { status, .. } if (400..500).contains(status) => ErrorKind::User,
            Error::Api { .. } => ErrorKind::External,
            Error::Arrow(_) | Error::Internal(_) => ErrorKind::Internal,
            Error::Task { source, .. } => source.kind(),
        }
    }

    /// Whether restarting the job can get past this error (see [`Retry`]).
    ///
    /// Never: plan and configuration errors (also when found at run
    /// time, e.g. a file whose schema differs from the planned one), bad
    /// records under the fail policy, overflows, keyed-state misuse, user
    /// functions that return an error, Arrow kernels failing on the data,
    /// requests the coordinator refused as wrong (4xx).
    /// Backoff: I/O, connectors talking to the outside world, checkpoint
    /// storage, the network exchange, timeouts, an unreachable or failing
    /// (5xx) coordinator, panics and internal errors (their cause is
    /// unknown, so they keep the restart strategy's limit).
    pub fn retry(&self) -> Retry {
        match self {
            Error::Plan { .. }
            | Error::Config(_)
            | Error::Decode(_)
            | Error::Overflow(_)
            | Error::User(_)
            | Error::State(_)
            | Error::NotFound(_) => Retry::Never,
            Error::Api { status, .. } if (400..500).contains(status) => Retry::Never,
            // Kernels fail on the values they get (casts, arithmetic,
            // schemas): the same batch fails again. Only their I/O and
            // wrapped foreign errors may pass.
            Error::Arrow(e) => match e {
                arrow::error::ArrowError::IoError(..)
                | arrow::error::ArrowError::ExternalError(_) => Retry::Backoff,
                _ => Retry::Never,
            },
            Error::Io { .. }
            | Error::Connector { .. }
            | Error::Checkpoint(_)
            | Error::Exchange(_)
            | Error::Protocol(_)
            | Error::Unreachable { .. }
            | Error::Timeout(_)
            | Error::Api { .. }
            | Error::Panic(_)
            // An executor cancelled because its attempt ended elsewhere
            // must not fail the job (an embedded run checks the user's
            // cancel before asking).
            | Error::Cancelled
            | Error::Internal(_) => Retry::Backoff,
            Error::Task { source, .. } => source.retry(),
        }
    }

    /// The innermost cause, unwrapping task context.
    pub fn root(&self) -> &Error {
        match self {
            Error::Task { source, .. } => source.root(),
            e => e,
        }
    }
}

#[cfg(feature = "ui")]
impl From<Error> for sluice_web::Error {
    /// The HTTP side of an engine error: what the request named is missing
    /// (404), the request or job is wrong (400), the job is in the way
    /// (409), or something failed that the caller cannot fix (500).
    fn from(e: Error) -> Self {
        let text = e.to_string();
        match e.root() {
            Error::NotFound(_) => sluice_web::Error::NotFound(text),
            Error::Config(_) | Error::Plan { .. } | Error::Decode(_) => {
                sluice_web::Error::Invalid(text)
            }
            Error::Cancelled => sluice_web::Error::Conflict(text),
            _ => sluice_web::Error::Internal(text),
        }
    }
}

#[cfg(feature = "ui")]
impl From<sluice_web::Error> for Error {
    fn from(e: sluice_web::Error) -> Self {
        match e {
            sluice_web::Error::Io { context, source } => Error::Io { context, source },
            sluice_web::Error::Config(m) | sluice_web::Error::Invalid(m) => Error::Config(m),
            sluice_web::Error::NotFound(m) => Error::NotFound(m),
            sluice_web::Error::Conflict(m) | sluice_web::Error::Internal(m) => Error::Internal(m),
        }
    }
}

impl From<sluice_protocol::Error> for Error {
    fn from(e: sluice_protocol::Error) -> Self {
        match e {
            sluice_protocol::Error::Io { context, source } => Error::Io { context, source },
            sluice_protocol::Error::Config(m) => Error::Config(m),
            sluice_protocol::Error::Internal(m) => Error::Internal(m),
            sluice_protocol::Error::Malformed(m) => Error::Protocol(m),
            e @ sluice_protocol::Error::Version { .. } => Error::Protocol(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_errors_are_never_retried() {
        let bad = Error::Task {
            operator: "kafka_source(t)".into(),
            subtask: 1,
            source: Box::new(Error::Decode(
                "topic 't' partition 0 offset 7: not JSON".into(),
            )),
        };
        assert_eq!(bad.retry(), Retry::Never);
        assert_eq!(Error::Overflow("sum".into()).retry(), Retry::Never);
        assert_eq!(
            Error::plan("file_source(x)", "schema").retry(),
            Retry::Never
        );
        let cast = Error::Arrow(arrow::error::ArrowError::CastError("x".into()));
        assert_eq!(cast.retry(), Retry::Never);
        let broker = Error::connector("kafka", "all brokers down");
        assert_eq!(broker.retry(), Retry::Backoff);
        assert_eq!(Error::Panic("boom".into()).retry(), Retry::Backoff);
    }
}
