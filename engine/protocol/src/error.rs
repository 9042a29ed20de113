//! The protocol crate's errors: frames that do not decode, peers of another
//! protocol version, secrets and tokens that cannot be used.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong reading or checking what a peer sent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer speaks another protocol version; nothing it sent is used.
    #[error(
        "{what} speaks Sluice protocol version {theirs}, this process speaks version {ours}; \
         run the same Sluice release on both sides"
    )]
    Version {
        /// What was refused (a control hello, a job description, ...).
        what: String,
        /// The version this process speaks.
        ours: u32,
        /// The version the peer sent (0: it sent none, an older release).
        theirs: u32,
    },
    /// Bytes that are not a valid frame or body (malformed, truncated,
    /// over a size bound).
    #[error("protocol error: {0}")]
    Malformed(String),
    /// Reading or writing the connection or a file failed.
    #[error("I/O error: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A setting (token, file) cannot be used.
    #[error("configuration error: {0}")]
    Config(String),
    /// The system gave no randomness.
    #[error("internal error (this is a Sluice bug): {0}")]
    Internal(String),
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
