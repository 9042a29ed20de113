//! The Kafka → Parquet job: every record of a topic, once, as Parquet rows
//! with `_partition`, `_offset`, `_timestamp` and the decoded fields. The
//! `kafka_to_parquet` binary is a command line over [`source`].
//!
//! Without a declared schema the JSON schema is inferred from the topic's
//! first records on the first start, and afterwards taken from the newest
//! checkpoint, so a restarted job writes the same columns even if the
//! records it would sample now differ (with schema evolution: the merge of
//! every schema the checkpoint recorded).

use std::path::PathBuf;
use std::time::Duration;

use sluice_connectors::kafka::avro::AvroSchema;
use sluice_connectors::kafka::format::schema_from_json;
use sluice_connectors::kafka::{
    schema_from_checkpoint, DecodePolicy, Format, KafkaSource, StartFrom,
};
use sluice_engine::{Error, Result};
use tracing::info;

/// Value formats of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ValueFormat {
    /// JSON objects; columns from `--schema` or inferred.
    Json,
    /// Bytes as they are (`value: Binary`).
    Raw,
    /// UTF-8 text (`value: Utf8`).
    String,
    /// Avro datums written with the Avro schema given as `--schema`.
    Avro,
}

/// What the job reads.
#[derive(Debug, Clone)]
pub struct KafkaToParquetSpec {
    /// Job name (checkpoints record it).
    pub job: String,
    /// `host:port`.
    pub brokers: String,
    /// Topic.
    pub topic: String,
    /// Value format.
    pub format: ValueFormat,
    /// JSON schema file (textual form of `kafka::format`).
    pub schema: Option<PathBuf>,
    /// Records sampled to infer a JSON schema.
    pub infer_sample: usize,
    /// Where partitions without a checkpointed position start.
    pub start: StartFrom,
    /// Stop at the end offsets seen when the job first started.
    pub until_end: bool,
    /// Consumer group to commit positions to.
    pub group: Option<String>,
    /// What happens to records that fail to decode.
    pub policy: DecodePolicy,
    /// The checkpoint directory (the inferred schema is looked up there).
    pub checkpoint_dir: Option<sluice_engine::checkpoint::Location>,
    /// How often to look for new partitions.
    pub partition_discovery: Duration,
    /// JSON: evolve the schema when records gain fields or widen types.
    pub evolve_schema: bool,
    /// librdkafka properties for every client (security, SASL, TLS, ...).
    pub kafka_options: Vec<(String, String)>,
}

/// Builds the job's source: the schema comes from `--schema`, else the
/// newest checkpoint, else inference.
pub fn source(spec: &KafkaToParquetSpec) -> Result<KafkaSource> {
    let mut base = KafkaSource::new(&spec.brokers, &spec.topic);
    for (k, v) in &spec.kafka_options {
        base = base.property(k, v);
    }
    // Before anything connects (schema inference does).
    base.check_options()?;
    let base = base
        .start_from(spec.start)
        .on_decode_error(spec.policy.clone())
        .partition_discovery(Some(spec.partition_discovery));
    let base = if spec.until_end {
        base.until_end()
    } else {
        base
    };
    let base = if spec.evolve_schema {
        base.evolve_schema()
    } else {
        base
    };
    let base = match &spec.group {
        Some(g) => base.group(g),
        None => base,
    };
    let format = match spec.format {
        ValueFormat::Raw => Format::Raw,
        ValueFormat::String => Format::String,
        ValueFormat::Avro => {
            let Some(path) = &spec.schema else {
                return Err(Error::Config(
                    "--format avro needs --schema FILE with the Avro writer schema".into(),
                ));
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            Format::Avro(AvroSchema::parse(&text)?)
        }
        ValueFormat::Json => {
            let declared = match &spec.schema {
                Some(path) => {
                    let text = std::fs::read(path)
                        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
                        Error::Config(format!("{} is not JSON: {e}", path.display()))
                    })?;
                    Some(schema_from_json(&v)?)
                }
                None => None,
            };
            let recorded = match (&declared, &spec.checkpoint_dir) {
                (None, Some(dir)) => schema_from_checkpoint(dir, &spec.job, &spec.topic)?,
                _ => None,
            };
            let schema = match (declared, recorded) {
                (Some(s), _) => s,
                (None, Some(s)) => {
                    info!("JSON schema taken from the newest checkpoint");
                    s
                }
                (None, None) => {
                    let s = base.infer_json_schema(spec.infer_sample, Duration::from_secs(30))?;
                    info!(schema = ?s, "JSON schema inferred");
                    s
                }
            };
            Format::Json(schema)
        }
    };
    Ok(base.format(format))
}
