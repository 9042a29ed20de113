//! Why a request to the job routes failed, in the terms the HTTP status
//! codes need: the views ([`JobsView`](crate::JobsView)) translate their
//! own errors into these.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed view call or server setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the request names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the job's state (409).
    #[error("{0}")]
    Conflict(String),
    /// Anything else (500).
    #[error("{0}")]
    Internal(String),
    /// Binding or serving the listener failed.
    #[error("I/O error: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A setting (token, certificate) cannot be used.
    #[error("configuration error: {0}")]
    Config(String),
}

impl Error {
    /// Builds an I/O error with context.
    pub fn io(context: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            context: context.to_string(),
            source,
        }
    }
}
