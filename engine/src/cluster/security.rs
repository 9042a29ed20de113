//! Who may talk to a cluster.
//!
//! - The REST API takes a bearer [`Token`] (every route but the web UI's
//!   page and script), read from a file or `SLUICE_TOKEN`; the CLI and the
//!   workers send it. The coordinator can serve HTTPS ([`TlsFiles`]);
//!   clients then trust its certificate through a CA file or the system's
//!   roots ([`ClientSecurity`]).
//! - Executors never see the token. Each attempt gets a random secret
//!   ([`attempt_secret`]) in its executors' specs, which workers fetch
//!   over the authenticated API; executors present it in their control
//!   hello to the coordinator and in their exchange hello to each other,
//!   so nothing that lacks it can feed a job records or acknowledge its
//!   checkpoints.
//!
//! Comparisons run over SHA-256 digests in constant time, so neither the
//! length nor a prefix of a secret leaks through timing.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The environment variable a token may come from instead of a file.
pub const TOKEN_ENV: &str = "SLUICE_TOKEN";

/// The REST API's bearer token. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// A token from its text (surrounding whitespace dropped). Refuses an
    /// empty one and one that cannot travel in an HTTP header.
    pub fn new(text: &str) -> Result<Token> {
        let t = text.trim();
        if t.is_empty() {
            return Err(Error::Config("the token is empty".into()));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Config(
                "the token must be printable ASCII without spaces".into(),
            ));
        }
        Ok(Token(t.to_string()))
    }

    /// The token in `path` (its first line's text).
    pub fn from_file(path: &Path) -> Result<Token> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading the token file {}", path.display()), e))?;
        let first = text.lines().next().unwrap_or("");
        Token::new(first).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The token from `file` if given, else from [`TOKEN_ENV`], else none.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Option<Token>> {
        if let Some(f) = file {
            return Token::from_file(f).map(Some);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(v) => Token::new(&v)
                .map(Some)
                .map_err(|e| Error::Config(format!("{TOKEN_ENV}: {e}"))),
            Err(_) => Ok(None),
        }
    }

    /// Whether `presented` is this token.
    pub fn matches(&self, presented: &str) -> bool {
        same_secret(&self.0, presented)
    }

    /// The `Authorization` header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

/// A certificate chain and private key (PEM files) to serve HTTPS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// What a client of the REST API authenticates with and trusts.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// Sent as a bearer token with every request.
    pub token: Option<Token>,
    /// PEM certificates trusted for an `https://` coordinator besides the
    /// system's roots (a private CA, or a self-signed certificate).
    pub ca_cert: Option<PathBuf>,
}

/// Whether two secrets are equal, in time independent of their contents.
pub fn same_secret(expected: &str, presented: &str) -> bool {
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A fresh random secret for one attempt: 32 bytes from the operating
/// system, hex.
pub fn attempt_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness from the system: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_printed() {
        let t = Token::new("  s3cret-Token \n").unwrap();
        assert!(t.matches("s3cret-Token"));
        assert!(!t.matches("s3cret-Toke"));
        assert!(!t.matches(""));
        assert_eq!(t.bearer(), "Bearer s3cret-Token");
        assert_eq!(format!("{t:?}"), "Token(…)");
        assert!(Token::new("   ").is_err());
        assert!(Token::new("two words").is_err());
    }

    #[test]
    fn a_token_file_holds_the_token_on_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "abc123\n# comment\n").unwrap();
        assert!(Token::from_file(&f).unwrap().matches("abc123"));
        std::fs::write(&f, "\n").unwrap();
        let e = Token::from_file(&f).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = Token::from_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("token file"), "{e}");
    }

    #[test]
    fn attempt_secrets_are_fresh() {
        let a = attempt_secret().unwrap();
        let b = attempt_secret().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same_secret(&a, &a.clone()));
        assert!(!same_secret(&a, &b));
    }
}
