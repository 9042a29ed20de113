//! Who may use the REST API: the bearer [`Token`] every route but the web
//! UI's page and script requires (read from a file or `SLUICE_TOKEN`), and
//! the certificate and key HTTPS is served with ([`TlsFiles`]). Tokens are
//! compared in constant time ([`same_secret`]).

use std::fmt;
use std::path::{Path, PathBuf};

use sluice_protocol::secret::same_secret;

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
}
