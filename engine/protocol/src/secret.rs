//! Secrets between the processes of a cluster: the per-attempt secret
//! executors present to the coordinator and to each other, and the
//! constant-time comparison every secret and token goes through, so neither
//! the length nor a prefix of a secret leaks through timing.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

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
    fn attempt_secrets_are_fresh() {
        let a = attempt_secret().unwrap();
        let b = attempt_secret().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same_secret(&a, &a.clone()));
        assert!(!same_secret(&a, &b));
    }
}
