//! Who may use the REST API: the bearer [`Token`]s every route but the web
//! UI's page and script requires (read from a file, which must be private
//! to its owner, or `SLUICE_TOKEN`), the [`Role`] each grants and the
//! [`Access`] rule a server applies, and the certificate and key HTTPS is
//! served with ([`TlsFiles`]). Tokens are compared in constant time
//! ([`same_secret`]).

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

    /// The token in `path` (its first line's text). A file that others
    /// than its owner may read or write is refused, as ssh refuses such a
    /// private key: the token would no longer be a secret.
    pub fn from_file(path: &Path) -> Result<Token> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| Error::io(format!("reading the token file {}", path.display()), e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(Error::Config(format!(
                    "the token file {} is open to other users (mode {:04o}); \
                     make it private to its owner (chmod 600 {})",
                    path.display(),
                    mode & 0o7777,
                    path.display()
                )));
            }
        }
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

    /// What names this token in the audit log without giving it away: the
    /// first 8 hex digits of its SHA-256 (32 bits: enough to tell tokens
    /// apart, too few to test guesses of a random token against).
    pub fn id(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read: every GET and HEAD route (jobs, status, checkpoints, results,
    /// workers, metrics, artifact downloads).
    Read,
    /// Everything: submit, cancel, savepoint, rescale, artifact uploads,
    /// worker registration and heartbeats, and all a reader may.
    Operator,
}

impl Role {
    /// The role's name in the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operator => "operator",
        }
    }
}

/// The rule a server applies to each API request: which tokens it knows,
/// with their roles, and where it writes what changed.
///
/// With no operator token the API is open (every caller is an operator);
/// a read token then makes no sense and is refused.
#[derive(Debug, Clone, Default)]
pub struct Access {
    operator: Option<Token>,
    read: Option<Token>,
    audit: Option<crate::audit::AuditLog>,
}

impl Access {
    /// Anyone may do anything (no token), nothing is audited.
    pub fn open() -> Access {
        Access::default()
    }

    /// The operator token and, optionally, a read-only one.
    pub fn new(operator: Option<Token>, read: Option<Token>) -> Result<Access> {
        match (&operator, &read) {
            (None, Some(_)) => Err(Error::Config(
                "a read-only token needs an operator token as well (--token-file): \
                 without one the API is open to everyone"
                    .into(),
            )),
            (Some(o), Some(r)) if o == r => Err(Error::Config(
                "the read-only token is the operator token: give each role its own".into(),
            )),
            _ => Ok(Access {
                operator,
                read,
                audit: None,
            }),
        }
    }

    /// The same rule, with every state-changing request written to `audit`.
    pub fn audited(mut self, audit: crate::audit::AuditLog) -> Access {
        self.audit = Some(audit);
        self
    }

    /// The same rule without the audit log (for routine calls, such as
    /// heartbeats, that would drown it).
    pub fn unaudited(&self) -> Access {
        Access {
            audit: None,
            ..self.clone()
        }
    }

    /// Whether requests need no token at all.
    pub fn is_open(&self) -> bool {
        self.operator.is_none()
    }

    /// The audit log, if this rule writes one.
    pub fn audit(&self) -> Option<&crate::audit::AuditLog> {
        self.audit.as_ref()
    }

    /// The role `presented` (a bearer token, if any) grants, and the token
    /// that matched; `None` when it grants none.
    pub fn role_of(&self, presented: Option<&str>) -> Option<(Role, Option<&Token>)> {
        let Some(operator) = &self.operator else {
            return Some((Role::Operator, None));
        };
        let presented = presented?;
        if operator.matches(presented) {
            return Some((Role::Operator, Some(operator)));
        }
        match &self.read {
            Some(read) if read.matches(presented) => Some((Role::Read, Some(read))),
            _ => None,
        }
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

    fn private_file(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_token_file_holds_the_token_on_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        private_file(&f, "abc123\n# comment\n");
        assert!(Token::from_file(&f).unwrap().matches("abc123"));
        private_file(&f, "\n");
        let e = Token::from_file(&f).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = Token::from_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("token file"), "{e}");
    }

    /// As ssh with a private key: a token file others may read or write
    /// is refused, naming the file, its mode and the fix.
    #[test]
    fn a_token_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        private_file(&f, "abc123\n");
        assert!(Token::from_file(&f).is_ok());
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Token::from_file(&f).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{mode:04o}")) && e.contains("chmod 600"),
                "{e}"
            );
        }
    }

    #[test]
    fn roles_follow_the_token_presented() {
        let op = Token::new("op-secret").unwrap();
        let rd = Token::new("read-secret").unwrap();
        let access = Access::new(Some(op.clone()), Some(rd.clone())).unwrap();
        assert_eq!(access.role_of(Some("op-secret")).unwrap().0, Role::Operator);
        assert_eq!(access.role_of(Some("read-secret")).unwrap().0, Role::Read);
        assert!(access.role_of(Some("guess")).is_none());
        assert!(access.role_of(None).is_none());
        let open = Access::open();
        assert_eq!(open.role_of(None).unwrap().0, Role::Operator);
        assert!(Access::new(None, Some(rd.clone())).is_err());
        assert!(Access::new(Some(op.clone()), Some(op.clone())).is_err());
        assert_ne!(op.id(), rd.id());
        assert!(!op.id().contains("op-secret") && op.id().len() == "sha256:".len() + 8);
    }
}
