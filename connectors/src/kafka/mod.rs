//! The Kafka connector (librdkafka through the `rdkafka` crate).
//!
//! - [`KafkaSource`]: partitions assigned explicitly to subtasks
//!   (`partition % parallelism`), positions in checkpoint state (one entry
//!   per partition, so they follow partitions on rescale), start from the
//!   earliest or latest record, a timestamp or the group's committed
//!   offsets, offsets committed to the group when a checkpoint completes,
//!   partitions added at run time picked up, each partition a watermark
//!   split (with the strategy's idleness), and a bounded mode that stops at
//!   the topic's end offsets when the read starts (kept in state, so a
//!   restart of an interrupted bounded read stops at the same place; a
//!   later bounded run reads on to the then current end). Modules: [`source`](self) subtask
//!   logic, `client` (offsets and watermarks), `state` (checkpoint
//!   entries), [`format`] (JSON with a declared or inferred schema, raw
//!   bytes, text; JSON records are checked and built by `crate::json`,
//!   shared with the JSON-lines file source), [`avro`] (Avro datums with a given schema),
//!   [`dlq`] (the decode policy), [`progress`] (where partitions started
//!   and stopped, and the notices saying so), [`evolve`] (JSON schema
//!   evolution).
//! - [`KafkaSink`]: at-least-once (flush at the barrier) or exactly-once
//!   (one transaction per checkpoint, committed when the checkpoint
//!   completes, recovered on restart through epoch markers), in `sink`.
//! - [`testing`]: starts a real tansu broker for tests and benchmarks.
//!
//! ## What works against tansu 0.6 (the test broker)
//!
//! Works: produce, fetch, metadata, CreateTopics, offset commit and fetch
//! without joining a group, `ListOffsets` by timestamp and earliest,
//! transactions (init, begin, commit, fencing of an older producer with
//! the same transactional id). Designed around: `ListOffsets(latest)` is
//! wrong (the first offset of the last batch, +1), so high watermarks are
//! taken from Fetch responses; joining a consumer group takes half the
//! session timeout, so the source never joins one. Does not work:
//! CreatePartitions (`UnsupportedFeature`: partition discovery cannot be
//! exercised against it); hiding aborted transactions from
//! `read_committed` readers is unreliable, so the exactly-once sink's
//! output is read through its epoch markers
//! ([`KafkaSink::markers_committed_only`]); a transaction left open with
//! its marker written and then fenced was seen to lose records.

pub mod avro;
mod client;
pub mod dlq;
pub mod evolve;
pub mod format;
pub mod progress;
pub mod sink;
mod source;
pub mod state;
pub mod testing;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_engine::graph::SourceFactory;
use sluice_engine::{Error, OperatorContext, Result, Source, SourceSpec};

pub use client::{send_waiting, KafkaConfig};
pub use dlq::{DecodePolicy, DecodeStats};
pub use format::Format;
pub use progress::{KafkaProgress, PartitionProgress, NOTICE_TARGET};
pub use sink::{CommitStep, KafkaSink, SinkGuarantee};
pub use state::{schema_from_checkpoint, StartFrom};

/// The node name of the source reading `topic` (checkpoints find the
/// source's state by it).
pub fn source_name(topic: &str) -> String {
    format!("kafka_source({topic})")
}

/// A Kafka topic as a stream. Columns: `_partition` (Int32), `_offset`
/// (Int64), `_timestamp` (timestamp ms, nullable), then the decoded value
/// ([`Format`]).
///
/// A job reading JSON records, checkpointed, into an exactly-once topic
/// (compiled here, not run: it needs a broker; `tests/kafka.rs` runs such
/// jobs against a real one):
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use sluice_connectors::kafka::{KafkaSink, KafkaSource};
/// use sluice_engine::arrow::datatypes::{DataType, Field, Schema};
/// use sluice_engine::CheckpointConfig;
/// use sluice_operators::prelude::*;
///
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("user", DataType::Int64, false),
///     Field::new("ts", DataType::Int64, false),
/// ]));
/// let env = Env::new();
/// env.configure(|c| c.checkpoint = Some(CheckpointConfig::new("/var/lib/my-job/checkpoints")));
/// env.source(KafkaSource::new("127.0.0.1:9092", "clicks").json(schema))
///     .watermarks(WatermarkStrategy::bounded_out_of_orderness("ts", Duration::from_secs(1)))
///     .key_by(["user"])
///     .window(WindowSpec::tumbling(Duration::from_secs(60)))
///     .aggregate([count().alias("clicks")])
///     .sink(KafkaSink::new("127.0.0.1:9092", "clicks-per-minute").exactly_once("my-job", "my-job-progress"));
/// env.execute()?;
/// # Ok::<(), sluice_engine::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct KafkaSource {
    config: KafkaConfig,
    topic: String,
    format: Format,
    start: StartFrom,
    bounded: bool,
    group: Option<String>,
    policy: DecodePolicy,
    batch_size: usize,
    discovery_interval: Option<Duration>,
    evolve: bool,
    stats: Arc<DecodeStats>,
    emitted: Arc<AtomicU64>,
    progress: Arc<KafkaProgress>,
}

impl KafkaSource {
    /// Reads `topic` from `brokers` as raw bytes, from the earliest
    /// records, without end, failing on bad records.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        KafkaSource {
            config: KafkaConfig::new(brokers),
            topic: topic.into(),
            format: Format::Raw,
            start: StartFrom::Earliest,
            bounded: false,
            group: None,
            policy: DecodePolicy::Fail,
            batch_size: 8192,
            discovery_interval: Some(Duration::from_secs(10)),
            evolve: false,
            stats: Arc::default(),
            emitted: Arc::default(),
            progress: Arc::default(),
        }
    }
    /// Decodes values with `format`.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }
    /// Decodes values as JSON objects with this schema.
    pub fn json(self, schema: SchemaRef) -> Self {
        self.format(Format::Json(schema))
    }
    /// JSON only: records that gain fields or widen a type compatibly
    /// evolve the schema instead of being bad records (see [`evolve`]);
    /// batches after a change carry the merged schema, so what follows
    /// the source must take them (the Parquet sink starts new files).
    pub fn evolve_schema(mut self) -> Self {
        self.evolve = true;
        self
    }
    /// Where to start partitions without a checkpointed position.
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }
    /// Bounded mode: stop at the topic's end offsets when the read starts.
    /// Resuming a bounded read that had not reached its ends (a restart
    /// after a failure, or the same command run again after a kill) stops
    /// at the ends it fixed; otherwise (a first start, or resuming a read
    /// that finished, or an unbounded one) at the current end. Without
    /// this the source never ends, whatever its checkpoint says.
    pub fn until_end(mut self) -> Self {
        self.bounded = true;
        self
    }
    /// Commits positions to this consumer group when checkpoints complete
    /// (and reads its offsets for [`StartFrom::Committed`]).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
    /// What to do with records that fail to decode.
    pub fn on_decode_error(mut self, policy: DecodePolicy) -> Self {
        self.policy = policy;
        self
    }
    /// Most records per batch.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }
    /// How often to look for new partitions (`None`: never).
    pub fn partition_discovery(mut self, every: Option<Duration>) -> Self {
        self.discovery_interval = every;
        self
    }
    /// Checks the librdkafka properties given with [`KafkaSource::property`]
    /// (planning the job does too): an unknown one is a clear error.
    pub fn check_options(&self) -> Result<()> {
        self.config.check(false)
    }
    /// Sets a librdkafka property on every client the source creates
    /// (its consumers, the schema probe and the dead-letter producer):
    /// `security.protocol`, `sasl.*`, `ssl.*`, ...
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.properties.push((key.into(), value.into()));
        self
    }
    /// Counters of bad records (shared by all subtasks).
    pub fn decode_stats(&self) -> Arc<DecodeStats> {
        self.stats.clone()
    }
    /// Where each partition started and how far it was read (shared by
    /// all subtasks), for a job's summary.
    pub fn progress(&self) -> Arc<KafkaProgress> {
        self.progress.clone()
    }
    /// Records emitted by all subtasks of this source so far.
    pub fn records_emitted(&self) -> u64 {
        self.emitted.load(Ordering::Relaxed)
    }

    /// Infers a JSON schema from up to `sample` records read from the
    /// start of the topic's partitions (waiting at most `timeout` for
    /// them). See [`format::infer_json_schema`] for the type rules.
    pub fn infer_json_schema(&self, sample: usize, timeout: Duration) -> Result<SchemaRef> {
        let consumer: client::WatchedConsumer = self
            .config
            .consumer(None)
            .create_with_context(self.config.watch("the Kafka schema sampler"))
            .map_err(|e| client::kafka_err("creating the schema sampler", e))?;
        let partitions = client::partitions(&consumer, &self.topic, true)?;
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Beginning)
                .map_err(|e| client::kafka_err("assigning the schema sampler", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| client::kafka_err("assigning the schema sampler", e))?;
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut at_end = std::collections::BTreeSet::new();
        let deadline = Instant::now() + timeout;
        while values.len() < sample && at_end.len() < partitions.len() && Instant::now() < deadline
        {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if let Some(v) = m.payload() {
                        values.push(v.to_vec());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                _ => {}
            }
        }
        if values.is_empty() {
            return Err(Error::Config(format!(
                "cannot infer a JSON schema: topic '{}' had no records within {timeout:?}; declare a schema",
                self.topic
            )));
        }
        format::infer_json_schema(values.iter().map(Vec::as_slice))
    }
}

impl SourceSpec for KafkaSource {
    fn name(&self) -> String {
        source_name(&self.topic)
    }

    fn schema(&self) -> Result<SchemaRef> {
        self.check_options()?;
        if self.evolve && !matches!(self.format, Format::Json(_)) {
            return Err(Error::Config(
                "schema evolution needs the JSON format".into(),
            ));
        }
        self.format.output_schema()
    }

    fn factory(&self) -> SourceFactory {
        let spec = self.clone();
        Arc::new(move |_ctx: &OperatorContext| {
            let schema = spec.format.output_schema()?;
            Ok(Box::new(source::KafkaSubtask::new(spec.clone(), schema)?) as Box<dyn Source>)
        })
    }
}
