//! The protocol version every hello, executor spec and job description
//! carries, and the check that refuses a peer of another version before
//! anything else it sent is read: a message is decoded in two steps, first
//! only its `protocol` field, then (when that matches) the whole of it, so
//! a peer of another release gets an error naming both versions instead of
//! being half-understood.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The version of every message in this crate. Bumped whenever a message
/// changes in a way an older or newer peer would misread. Version 2 was the
/// exchange hello of releases that versioned only the exchange; version 4
/// made `ClusterInfo::jobs` a map from state to count; version 5 added the
/// leader's Raft term to executor specs, heartbeat and registration
/// answers, and the control hello and peers; version 6 made
/// `ToCoordinator::Metrics` an `ExecutorMetrics` (per-subtask time
/// accounting, watermarks, source backlog, process CPU and memory);
/// version 7 added executors' log lines to heartbeats (`Heartbeat::logs`),
/// the worker's own process figures (`Heartbeat::process`) and the
/// exchange's latency-marker frame; version 8 let a new leader re-adopt
/// running attempts (`ToCoordinator::Hello::rejoin`, the executor's
/// `rejoin_grace_ms` and the worker's relays on its stdin).
pub const PROTOCOL_VERSION: u32 = 8;

#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    protocol: u32,
}

/// Refuses `theirs` unless it is [`PROTOCOL_VERSION`].
pub fn check(what: &str, theirs: u32) -> Result<()> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Error::Version {
            what: what.to_string(),
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

/// Decodes a JSON message that carries a `protocol` field: its version is
/// checked first, so a message of another version is refused as such
/// (never decoded by today's rules), then the message is decoded whole.
pub fn decode<T: DeserializeOwned>(what: &str, json: &[u8]) -> Result<T> {
    let probe: Probe = serde_json::from_slice(json)
        .map_err(|e| Error::Malformed(format!("{what} is not a JSON object: {e}")))?;
    check(what, probe.protocol)?;
    serde_json::from_slice(json).map_err(|e| Error::Malformed(format!("malformed {what}: {e}")))
}

/// The default of a `protocol` field in messages this process builds.
pub fn current() -> u32 {
    PROTOCOL_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Msg {
        #[allow(dead_code)]
        protocol: u32,
        name: String,
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        let e = decode::<Msg>("a job description", br#"{"protocol": 2, "other": [1]}"#)
            .unwrap_err()
            .to_string();
        let ours = format!("version {PROTOCOL_VERSION}");
        assert!(e.contains("version 2") && e.contains(&ours), "{e}");
        let e = decode::<Msg>("a hello", br#"{"name": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 0"), "{e}");
        let hello = format!(r#"{{"protocol": {PROTOCOL_VERSION}, "name": "x"}}"#);
        let m: Msg = decode("a hello", hello.as_bytes()).unwrap();
        assert_eq!(m.name, "x");
        assert!(decode::<Msg>("a hello", b"[1,2]").is_err());
        let bare = format!(r#"{{"protocol": {PROTOCOL_VERSION}}}"#);
        assert!(decode::<Msg>("a hello", bare.as_bytes()).is_err());
    }
}
