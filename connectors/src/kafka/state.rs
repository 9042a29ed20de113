//! What the Kafka source keeps in checkpoints: one operator-state entry per
//! partition (its next offset and, in bounded mode, the end offset fixed
//! when the job first started), so positions move to whichever subtask
//! owns the partition after a rescale; plus the JSON schema the source
//! decodes with, so a restarted job whose schema was inferred writes the
//! same columns ([`schema_from_checkpoint`] reads it back before planning).

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};
use sluice_engine::checkpoint::{store, Location, Storage};
use sluice_engine::{Error, Result};

use super::format::{schema_from_json, schema_to_json};

/// Where the source starts reading a partition it has no checkpointed
/// position for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The partition's first retained record.
    #[default]
    Earliest,
    /// The partition's high watermark when the job first starts (records
    /// written after it).
    Latest,
    /// The first record whose timestamp is at or after this (ms since the
    /// epoch); the high watermark if there is none.
    Timestamp(i64),
    /// The consumer group's committed offset; the earliest record for a
    /// partition the group has none for.
    Committed,
}

impl std::str::FromStr for StartFrom {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            "committed" => Ok(StartFrom::Committed),
            t => t
                .strip_prefix("timestamp:")
                .and_then(|ms| ms.parse().ok())
                .map(StartFrom::Timestamp)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "invalid start position '{s}': expected earliest, latest, committed or timestamp:MS"
                    ))
                }),
        }
    }
}

/// One operator-state entry of the Kafka source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    /// A partition's position.
    Partition {
        /// Topic (checked on restore).
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset of the next record to emit; `None` = from the earliest
        /// retained record (nothing read yet).
        next: Option<i64>,
        /// Bounded mode: the offset to stop at.
        end: Option<i64>,
    },
    /// The JSON schema decoded with (textual form of `format.rs`).
    Schema {
        /// Topic.
        topic: String,
        /// The fields.
        fields: serde_json::Value,
    },
}

impl Entry {
    /// Serialized form.
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| Error::Internal(format!("encoding Kafka source state: {e}")))
    }

    /// Parses a serialized entry.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Checkpoint(format!("Kafka source state entry is malformed: {e}")))
    }

    /// The schema entry for `schema`.
    pub fn schema(topic: &str, schema: &SchemaRef) -> Result<Self> {
        Ok(Entry::Schema {
            topic: topic.to_string(),
            fields: schema_to_json(schema)?,
        })
    }
}

/// The JSON schema the Kafka source of `topic` recorded in the newest
/// restorable checkpoint of `job` under `dir`, if there is one. A job that
/// infers its schema calls this before building its graph, so a restart
/// decodes and writes exactly the columns the first run did. With schema
/// evolution the subtasks' schemas (and their histories) may differ: this
/// is their merge ([`super::evolve::merge_schemas`]).
pub fn schema_from_checkpoint(
    dir: impl Into<Location>,
    job: &str,
    topic: &str,
) -> Result<Option<SchemaRef>> {
    let scan = store::scan(&Storage::open(&dir.into())?, job)?;
    let Some((ck_dir, manifest)) = scan.latest else {
        return Ok(None);
    };
    let name = super::source_name(topic);
    let mut merged: Option<SchemaRef> = None;
    for node in manifest.nodes.iter().filter(|n| n.name == name) {
        for sub in &node.subtasks {
            let Some(f) = &sub.entries else { continue };
            for e in store::read_entries(&ck_dir, f)? {
                if let Entry::Schema { topic: t, fields } = Entry::decode(&e)? {
                    if t != topic {
                        continue;
                    }
                    let s = schema_from_json(&fields)?;
                    merged = Some(match merged {
                        None => s,
                        Some(m) if m == s => m,
                        Some(m) => {
                            let f = super::evolve::merge_schemas(m.fields(), s.fields()).map_err(
                                |e| {
                                    Error::Checkpoint(format!(
                                        "checkpointed JSON schemas conflict: {e}"
                                    ))
                                },
                            )?;
                            std::sync::Arc::new(arrow::datatypes::Schema::new(f))
                        }
                    });
                }
            }
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e = Entry::Partition {
            topic: "t".into(),
            partition: 3,
            next: Some(17),
            end: None,
        };
        assert_eq!(Entry::decode(&e.encode().unwrap()).unwrap(), e);
        assert!(Entry::decode(b"{\"partition\": 1}").is_err());
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!("latest".parse::<StartFrom>().unwrap(), StartFrom::Latest);
        assert_eq!(
            "timestamp:1700000000000".parse::<StartFrom>().unwrap(),
            StartFrom::Timestamp(1_700_000_000_000)
        );
        assert!("yesterday".parse::<StartFrom>().is_err());
    }
}
