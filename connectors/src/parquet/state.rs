//! What the Parquet sink keeps in a checkpoint: one entry per file that
//! is not published yet, either finished and staged for a checkpoint, or
//! still open, with the length of its committed prefix and the footer that
//! completes it.

use serde::{Deserialize, Serialize};
use sluice_engine::{Error, Result};

/// Where a file's bytes are until it is published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durable {
    /// A hidden local file (path relative to the output directory).
    Local {
        /// The in-progress file.
        in_progress: String,
    },
    /// A multipart upload to the file's final key: the parts uploaded so
    /// far (their ETags, in order) and, for an open file, a staging object
    /// holding the bytes after the last part (all but the last part of an
    /// upload must be at least 5 MiB, so a checkpoint's tail cannot be a
    /// part of its own).
    Upload {
        /// The upload.
        upload_id: String,
        /// ETags of parts `0..`.
        parts: Vec<String>,
        /// Bytes in those parts.
        uploaded: u64,
        /// Staging object with the next bytes (at least `len - uploaded`).
        tail: Option<String>,
    },
}

/// Whether an entry's file is finished or still being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Finished (footer written), to be published when checkpoint `epoch`
    /// completes.
    Staged {
        /// The checkpoint it was staged for.
        epoch: u64,
    },
    /// Still open: its first `len` bytes plus `footer` are what the
    /// checkpoint commits.
    Open,
}

/// One unpublished file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The subtask that writes it.
    pub subtask: usize,
    /// Its final path, relative to the output location.
    pub target: String,
    /// Where its bytes are.
    pub durable: Durable,
    /// Committed length: the whole file when staged, the prefix ending at
    /// the last flushed row group when open.
    pub len: u64,
    /// Rows in those bytes.
    pub rows: u64,
    /// Footer completing the prefix (open files only), hex.
    #[serde(default, with = "hex")]
    pub footer: Vec<u8>,
    /// Staging objects to delete once the file is published.
    #[serde(default)]
    pub garbage: Vec<String>,
    /// The file's partition values (table formats record them).
    #[serde(default)]
    pub partition: Vec<super::partition::PartitionValue>,
    /// Staged or open.
    pub phase: Phase,
    /// The output location it is written to (absent in checkpoints from
    /// before this field: the sink's location). A job resumed with another
    /// output publishes the checkpoint's files where they were written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

impl FileEntry {
    /// Encodes the entry for the sink's operator state.
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| Error::Internal(format!("encoding a parquet sink entry: {e}")))
    }

    /// Decodes an entry of the sink's operator state.
    pub fn decode(bytes: &[u8]) -> Result<FileEntry> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::Checkpoint(format!(
                "parquet sink state is malformed (written by another version?): {e}"
            ))
        })
    }
}

mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(serde::de::Error::custom("footer is not hex")),
        };
        text.as_bytes()
            .chunks(2)
            .map(|p| match p {
                [h, l] => Ok(digit(*h)? << 4 | digit(*l)?),
                _ => Err(serde::de::Error::custom("footer has an odd length")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e = FileEntry {
            subtask: 1,
            target: "dt=2026-12-06/part-001-000003-a0-00002.parquet".into(),
            durable: Durable::Upload {
                upload_id: "u/1".into(),
                parts: vec!["\"etag\"".into()],
                uploaded: 5 << 20,
                tail: Some("_staging/x".into()),
            },
            len: (5 << 20) + 17,
            rows: 99,
            footer: vec![0, 1, 0xab, 0xff],
            garbage: vec![],
            partition: vec![],
            phase: Phase::Open,
            location: Some("s3://bucket/out".into()),
        };
        let bytes = e.encode().unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("0001abff"));
        assert_eq!(FileEntry::decode(&bytes).unwrap(), e);
        assert!(FileEntry::decode(b"{}").is_err());
        // An entry from before locations were recorded still decodes.
        let mut old: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        old.as_object_mut().unwrap().remove("location");
        let old = FileEntry::decode(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(old.location, None);
    }
}
