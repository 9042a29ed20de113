//! The Kafka sink. A row becomes one record: the `value` column (Binary or
//! Utf8) as the value and an optional `key` column as the key when the
//! input has them, else the whole row as a JSON object.
//!
//! - **At-least-once**: records are produced as rows arrive; at each
//!   barrier the producer is flushed and any failed delivery fails the job.
//! - **Exactly-once** (a write-ahead log committed in Kafka transactions):
//!   the records of each checkpoint epoch are kept by the subtask and
//!   stored in the checkpoint at the barrier; when the checkpoint
//!   completes they are produced in one transaction (transactional id
//!   `PREFIX-SUBTASK`, so a restarted subtask fences its predecessor),
//!   flushed, followed by an *epoch marker* `(job, subtask, checkpoint,
//!   attempt)` to the progress topic, and committed. On restore from
//!   checkpoint `m` the subtask first fences the old producer
//!   (`init_transactions` aborts what it left open), then reads the
//!   progress topic: if its newest marker is below `m`, the crash came
//!   between the checkpoint completing and the commit, and the stored
//!   records of `m` are produced and committed again, once. Every data
//!   record carries a `sluice.txn` header naming its transaction, the
//!   marker's value names the same, so readers of a broker that does not
//!   filter aborted transactions (tansu) count exactly the records whose
//!   transaction has a marker. Records are flushed before the marker, so
//!   a marker never reaches the broker ahead of its transaction's records.
//!
//! Memory and checkpoint size grow with one checkpoint interval of output
//! per subtask (the epoch's records are held until the checkpoint
//! completes), which is the price of not needing to resume a broker-side
//! transaction after a crash (librdkafka cannot).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sluice_engine::data::CheckpointId;
use sluice_engine::graph::SinkFactory;
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Error, OperatorContext, Result, Sink, SinkSpec};
use tracing::{info, warn};

use super::client::{check_reachable, kafka_err, send_waiting, KafkaConfig, REQUEST_TIMEOUT};
use super::client::{WatchedConsumer, WatchedProducer};

/// Header naming the transaction a record was written in
/// (`job/subtask/checkpoint/attempt`), exactly-once mode only.
pub const TXN_HEADER: &str = "sluice.txn";

/// The delivery guarantee of a [`KafkaSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkGuarantee {
    /// Flush at every barrier; a restart may write records again.
    AtLeastOnce,
    /// Transactions committed when checkpoints complete.
    ExactlyOnce {
        /// Transactional ids are `PREFIX-SUBTASK`; unique per job.
        transactional_id_prefix: String,
        /// Topic of the epoch markers.
        progress_topic: String,
    },
}

/// A point in the exactly-once commit where a test can inject a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStep {
    /// The epoch's records are on the broker, the marker is not.
    BeforeMarker,
    /// Records and marker are on the broker, the transaction is open.
    BeforeCommit,
}

/// Writes rows to a Kafka topic.
#[derive(Debug, Clone)]
pub struct KafkaSink {
    config: KafkaConfig,
    topic: String,
    guarantee: SinkGuarantee,
    job: String,
    failure: Option<(CommitStep, Arc<AtomicBool>)>,
    markers_committed_only: bool,
}

impl KafkaSink {
    /// At-least-once sink to `topic` on `brokers`.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        KafkaSink {
            config: KafkaConfig::new(brokers),
            topic: topic.into(),
            guarantee: SinkGuarantee::AtLeastOnce,
            job: "sluice".into(),
            failure: None,
            markers_committed_only: true,
        }
    }
    /// Whether recovery reads the progress topic `read_committed` (the
    /// default, right for Kafka: a marker of an aborted transaction is not
    /// seen, so its epoch is written again). With `false` every marker in
    /// the log counts, which is what keeps a broker that does not filter
    /// aborted transactions (tansu 0.6) consistent: there a reader must
    /// take the records whose transaction has a marker, and every marker
    /// in the log follows all of its transaction's records.
    pub fn markers_committed_only(mut self, yes: bool) -> Self {
        self.markers_committed_only = yes;
        self
    }
    /// For tests of the commit protocol: the first commit of a non-empty
    /// epoch after `armed` is set fails at `step` (clearing `armed`), as a crash there would.
    pub fn fail_once_at(mut self, step: CommitStep, armed: Arc<AtomicBool>) -> Self {
        self.failure = Some((step, armed));
        self
    }
    /// Exactly-once with transactions; `job` names the job in epoch markers
    /// and transactional ids (`JOB-TOPIC-SUBTASK`).
    pub fn exactly_once(
        mut self,
        job: impl Into<String>,
        progress_topic: impl Into<String>,
    ) -> Self {
        self.job = job.into();
        self.guarantee = SinkGuarantee::ExactlyOnce {
            transactional_id_prefix: format!("{}-{}", self.job, self.topic),
            progress_topic: progress_topic.into(),
        };
        self
    }
    /// Sets a librdkafka property on the sink's clients.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.properties.push((key.into(), value.into()));
        self
    }
}

impl SinkSpec for KafkaSink {
    fn name(&self) -> String {
        format!("kafka_sink({})", self.topic)
    }

    fn validate(&self, input: &SchemaRef) -> Result<()> {
        self.config.check(true)?;
        Encoding::of(input).map(|_| ())
    }

    fn factory(&self, input: SchemaRef) -> SinkFactory {
        let spec = self.clone();
        Arc::new(move |_ctx| {
            Ok(Box::new(KafkaSinkTask {
                spec: spec.clone(),
                encoding: Encoding::of(&input)?,
                producer: None,
                epoch: Vec::new(),
                staged: Vec::new(),
                restored: None,
                subtask: 0,
                parallelism: 1,
                attempt: 0,
            }))
        })
    }
}

/// How rows become records.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    /// Columns `value` (and optionally `key`) by index.
    Columns { value: usize, key: Option<usize> },
    /// The whole row as a JSON object.
    Json,
}

impl Encoding {
    fn of(schema: &SchemaRef) -> Result<Self> {
        let bytes = |i: usize| {
            matches!(
                schema.field(i).data_type(),
                DataType::Binary | DataType::Utf8
            )
        };
        match schema.index_of("value") {
            Ok(v) if bytes(v) => {
                let key = schema.index_of("key").ok();
                if let Some(k) = key {
                    if !bytes(k) {
                        return Err(Error::plan(
                            "kafka_sink",
                            "column 'key' must be Binary or Utf8",
                        ));
                    }
                }
                Ok(Encoding::Columns { value: v, key })
            }
            _ => Ok(Encoding::Json),
        }
    }

    /// (key, value) of every row.
    fn encode(&self, batch: &RecordBatch) -> Result<Vec<Record>> {
        match *self {
            Encoding::Columns { value, key } => {
                let value = BytesColumn::of(batch.column(value));
                let key = key.map(|k| BytesColumn::of(batch.column(k)));
                Ok((0..batch.num_rows())
                    .map(|r| {
                        (
                            key.as_ref().and_then(|k| k.get(r)),
                            value.get(r).unwrap_or_default(),
                        )
                    })
                    .collect())
            }
            Encoding::Json => {
                let mut buf = Vec::new();
                {
                    let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                    w.write(batch)?;
                    w.finish()?;
                }
                // JSON strings escape newlines, so each line is one row.
                Ok(buf
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| (None, l.to_vec()))
                    .collect())
            }
        }
    }
}

/// A Binary or Utf8 column, downcast once per batch rather than per row.
enum BytesColumn<'a> {
    Binary(&'a BinaryArray),
    Utf8(&'a StringArray),
}

impl<'a> BytesColumn<'a> {
    fn of(a: &'a ArrayRef) -> Self {
        match a.data_type() {
            DataType::Binary => BytesColumn::Binary(a.as_binary::<i32>()),
            _ => BytesColumn::Utf8(a.as_string::<i32>()),
        }
    }

    /// The row's bytes, `None` when null.
    fn get(&self, row: usize) -> Option<Vec<u8>> {
        match self {
            BytesColumn::Binary(a) => a.is_valid(row).then(|| a.value(row).to_vec()),
            BytesColumn::Utf8(a) => a.is_valid(row).then(|| a.value(row).as_bytes().to_vec()),
        }
    }
}

/// One record: optional key, value.
type Record = (Option<Vec<u8>>, Vec<u8>);

type Producer_ = WatchedProducer;

/// One checkpoint epoch's records, as kept in the checkpoint.
#[derive(Debug, Clone, PartialEq)]
struct Staged {
    /// Subtask that wrote them (its transactional id).
    subtask: usize,
    /// Checkpoint whose barrier closed the epoch.
    checkpoint: u64,
    /// (key, value) records.
    records: Vec<Record>,
}

/// Marks a key that is absent (a key of this length cannot occur).
const NO_KEY: u32 = u32::MAX;

impl Staged {
    /// Compact binary form for the checkpoint: subtask, checkpoint and
    /// record count (u64 LE), then per record the key length (`NO_KEY`
    /// for none) and key, the value length and value (u32 LE lengths).
    fn encode(&self) -> Result<Vec<u8>> {
        let size: usize = self
            .records
            .iter()
            .map(|(k, v)| 8 + k.as_ref().map_or(0, Vec::len) + v.len())
            .sum();
        let mut out = Vec::with_capacity(24 + size);
        out.extend_from_slice(&(self.subtask as u64).to_le_bytes());
        out.extend_from_slice(&self.checkpoint.to_le_bytes());
        out.extend_from_slice(&(self.records.len() as u64).to_le_bytes());
        let len = |n: usize| {
            u32::try_from(n)
                .ok()
                .filter(|n| *n != NO_KEY)
                .ok_or_else(|| Error::Connector {
                    connector: "kafka".into(),
                    message: format!("a record of {n} bytes is too large to stage"),
                })
        };
        for (k, v) in &self.records {
            match k {
                Some(k) => {
                    out.extend_from_slice(&len(k.len())?.to_le_bytes());
                    out.extend_from_slice(k);
                }
                None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
            }
            out.extend_from_slice(&len(v.len())?.to_le_bytes());
            out.extend_from_slice(v);
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || Error::Checkpoint("kafka sink state is malformed (truncated entry)".into());
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = bytes.get(at..at + n).ok_or_else(bad)?;
            at += n;
            Ok(s)
        };
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let subtask = u64_at(take(8)?) as usize;
        let checkpoint = u64_at(take(8)?);
        let n = u64_at(take(8)?) as usize;
        let mut records = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let kl = u32_at(take(4)?);
            let key = if kl == NO_KEY {
                None
            } else {
                Some(take(kl as usize)?.to_vec())
            };
            let vl = u32_at(take(4)?) as usize;
            records.push((key, take(vl)?.to_vec()));
        }
        if at != bytes.len() {
            return Err(Error::Checkpoint(
                "kafka sink state is malformed (trailing bytes)".into(),
            ));
        }
        Ok(Staged {
            subtask,
            checkpoint,
            records,
        })
    }
}

/// An epoch marker in the progress topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochMarker {
    /// Job name.
    pub job: String,
    /// Sink subtask (whose transactional id wrote it).
    pub subtask: usize,
    /// Checkpoint: every epoch up to it is committed.
    pub checkpoint: u64,
    /// Transaction name, as in the data records' [`TXN_HEADER`].
    pub txn: String,
}

struct KafkaSinkTask {
    spec: KafkaSink,
    encoding: Encoding,
    producer: Option<Producer_>,
    /// Records of the current epoch (exactly-once).
    epoch: Vec<Record>,
    /// Closed epochs waiting for their checkpoint to complete.
    staged: Vec<Staged>,
    restored: Option<(u64, Vec<Staged>)>,
    subtask: usize,
    parallelism: usize,
    attempt: u64,
}

fn send(
    p: &Producer_,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: Option<OwnedHeaders>,
) -> Result<()> {
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(value);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(h) = headers {
        rec = rec.headers(h);
    }
    send_waiting(p, rec).map_err(|e| kafka_err(format!("producing to '{topic}'"), e))
}

fn check(p: &Producer_) -> Result<()> {
    match p.context().first_failure() {
        Some(e) => Err(Error::connector(
            "kafka",
            format!("a record could not be delivered: {e}"),
        )),
        None => Ok(()),
    }
}

impl KafkaSinkTask {
    fn exactly_once(&self) -> Option<(&str, &str)> {
        match &self.spec.guarantee {
            SinkGuarantee::ExactlyOnce {
                transactional_id_prefix,
                progress_topic,
            } => Some((transactional_id_prefix, progress_topic)),
            SinkGuarantee::AtLeastOnce => None,
        }
    }

    /// A transactional producer for `subtask`'s id, initialized: any
    /// transaction an older producer with that id left open is aborted and
    /// that producer fenced.
    fn transactional(&self, subtask: usize) -> Result<Producer_> {
        let (prefix, _) = self.exactly_once().expect("exactly-once sink");
        let id = format!("{prefix}-{subtask}");
        let p: Producer_ = self
            .spec
            .config
            .producer()
            .set("transactional.id", &id)
            .create_with_context(self.spec.config.watch("the Kafka sink"))
            .map_err(|e| kafka_err("creating the transactional producer", e))?;
        check_reachable(p.client(), &|| {
            p.poll(Duration::ZERO);
        });
        p.init_transactions(REQUEST_TIMEOUT)
            .map_err(|e| kafka_err(format!("initializing transactions of '{id}'"), e))?;
        Ok(p)
    }

    /// Produces `records` and the epoch marker for `checkpoint` in one
    /// transaction of `subtask`'s producer, and commits it.
    fn commit_epoch(
        &self,
        p: &Producer_,
        subtask: usize,
        checkpoint: u64,
        records: &[&Record],
    ) -> Result<()> {
        let fail_at = |step: CommitStep| -> Result<()> {
            match &self.spec.failure {
                Some((s, armed))
                    if *s == step && !records.is_empty() && armed.swap(false, Ordering::SeqCst) =>
                {
                    Err(Error::connector(
                        "kafka",
                        format!("injected failure {step:?} of checkpoint {checkpoint}"),
                    ))
                }
                _ => Ok(()),
            }
        };
        let (_, progress) = self.exactly_once().expect("exactly-once sink");
        let txn = format!("{}/{subtask}/{checkpoint}/{}", self.spec.job, self.attempt);
        p.begin_transaction()
            .map_err(|e| kafka_err("beginning a transaction", e))?;
        for (k, v) in records {
            let h = OwnedHeaders::new().insert(Header {
                key: TXN_HEADER,
                value: Some(&txn),
            });
            send(p, &self.spec.topic, k.as_deref(), v, Some(h))?;
        }
        // Every record is on the broker before the marker is sent.
        p.flush(REQUEST_TIMEOUT)
            .map_err(|e| kafka_err("flushing a transaction", e))?;
        check(p)?;
        fail_at(CommitStep::BeforeMarker)?;
        let marker = EpochMarker {
            job: self.spec.job.clone(),
            subtask,
            checkpoint,
            txn,
        };
        let value = serde_json::to_vec(&marker)
            .map_err(|e| Error::Internal(format!("encoding an epoch marker: {e}")))?;
        let key = format!("{}/{subtask}", self.spec.job);
        send(p, progress, Some(key.as_bytes()), &value, None)?;
        if self
            .spec
            .failure
            .as_ref()
            .is_some_and(|(s, a)| *s == CommitStep::BeforeCommit && a.load(Ordering::SeqCst))
        {
            // The marker reaches the broker inside the open transaction.
            p.flush(REQUEST_TIMEOUT)
                .map_err(|e| kafka_err("flushing a transaction", e))?;
        }
        fail_at(CommitStep::BeforeCommit)?;
        p.commit_transaction(REQUEST_TIMEOUT)
            .map_err(|e| kafka_err(format!("committing checkpoint {checkpoint}"), e))?;
        check(p)
    }

    /// Restore: for every old subtask this one now stands for, fence its
    /// producer and commit what the restored checkpoint staged unless its
    /// marker shows it committed.
    fn recover(&mut self) -> Result<()> {
        let Some((restored, staged)) = self.restored.take() else {
            return Ok(());
        };
        let (_, progress) = self.exactly_once().expect("exactly-once sink");
        let mut olds: Vec<usize> = staged.iter().map(|s| s.subtask).collect();
        olds.sort_unstable();
        olds.dedup();
        olds.retain(|o| o % self.parallelism == self.subtask);
        // Fence first: once every old producer is fenced, no transaction of
        // the failed run can still commit, so the markers read next are final.
        let producers = olds
            .iter()
            .map(|&o| Ok((o, self.transactional(o)?)))
            .collect::<Result<Vec<_>>>()?;
        let markers = read_markers(
            &self.spec.config,
            progress,
            self.spec.markers_committed_only,
        )?;
        for (old, p) in producers {
            let done = markers
                .iter()
                .filter(|m| m.job == self.spec.job && m.subtask == old)
                .map(|m| m.checkpoint)
                .max()
                .unwrap_or(0);
            let records: Vec<&Record> = staged
                .iter()
                .filter(|s| s.subtask == old && s.checkpoint > done && s.checkpoint <= restored)
                .flat_map(|s| s.records.iter())
                .collect();
            if done < restored {
                info!(
                    subtask = old,
                    checkpoint = restored,
                    committed = done,
                    records = records.len(),
                    "committing the output of a checkpoint whose commit was interrupted"
                );
                self.commit_epoch(&p, old, restored, &records)?;
            }
        }
        Ok(())
    }
}

/// Every epoch marker in the progress topic (only those of committed
/// transactions with `committed_only`).
pub fn read_markers(
    config: &KafkaConfig,
    topic: &str,
    committed_only: bool,
) -> Result<Vec<EpochMarker>> {
    let isolation = if committed_only {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    let consumer: WatchedConsumer = config
        .consumer(None)
        .set("isolation.level", isolation)
        .create_with_context(config.watch("the Kafka sink's progress reader"))
        .map_err(|e| kafka_err("creating the progress reader", e))?;
    let partitions = match super::client::partitions(&consumer, topic, true) {
        Ok(p) => p,
        // No marker was ever written.
        Err(_) => return Ok(Vec::new()),
    };
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| kafka_err("reading the progress topic", e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| kafka_err("reading the progress topic", e))?;
    let mut at_end = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    while at_end.len() < partitions.len() {
        if Instant::now() > deadline {
            return Err(Error::connector(
                "kafka",
                format!("reading progress topic '{topic}' timed out"),
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some(v) = m.payload() {
                    match serde_json::from_slice::<EpochMarker>(v) {
                        Ok(marker) => out.push(marker),
                        Err(e) => {
                            warn!(topic, offset = m.offset(), error = %e, "not an epoch marker")
                        }
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
    Ok(out)
}

impl Sink for KafkaSinkTask {
    fn restore(&mut self, state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
        let staged = state
            .entries
            .iter()
            .map(|e| Staged::decode(e))
            .collect::<Result<Vec<_>>>()?;
        self.restored = Some((state.checkpoint.0, staged));
        Ok(())
    }

    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.subtask = ctx.subtask;
        self.parallelism = ctx.parallelism.max(1);
        self.attempt = ctx.attempt;
        if self.exactly_once().is_some() {
            if !ctx.checkpointing {
                return Err(Error::Config(
                    "the exactly-once Kafka sink needs checkpoints (it commits when they complete)"
                        .into(),
                ));
            }
            self.recover()?;
            self.producer = Some(self.transactional(self.subtask)?);
        } else {
            let p: Producer_ = self
                .spec
                .config
                .producer()
                .create_with_context(self.spec.config.watch("the Kafka sink"))
                .map_err(|e| kafka_err("creating the producer", e))?;
            check_reachable(p.client(), &|| {
                p.poll(Duration::ZERO);
            });
            self.producer = Some(p);
        }
        Ok(())
    }

    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        let records = self.encoding.encode(&batch)?;
        if self.exactly_once().is_some() {
            self.epoch.extend(records);
            return Ok(());
        }
        let p = self.producer.as_ref().expect("producer created in open");
        for (k, v) in &records {
            send(p, &self.spec.topic, k.as_deref(), v, None)?;
        }
        p.poll(Duration::ZERO);
        check(p)
    }

    fn close(&mut self, ctx: &OperatorContext) -> Result<()> {
        if let (None, Some(p)) = (self.exactly_once(), &self.producer) {
            p.flush(REQUEST_TIMEOUT)
                .map_err(|e| kafka_err("flushing the producer", e))?;
            return check(p);
        }
        // Without checkpoints an exactly-once sink has nothing to commit
        // with; open refused that case.
        let _ = ctx;
        Ok(())
    }

    /// At-least-once: flush. Exactly-once: close the epoch and store it.
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        _ctx: &OperatorContext,
    ) -> Result<OperatorSnapshot> {
        let p = self.producer.as_ref().expect("producer created in open");
        if self.exactly_once().is_none() {
            p.flush(REQUEST_TIMEOUT)
                .map_err(|e| kafka_err("flushing the producer at a barrier", e))?;
            check(p)?;
            return Ok(OperatorSnapshot::default());
        }
        self.staged.push(Staged {
            subtask: self.subtask,
            checkpoint: checkpoint.0,
            records: std::mem::take(&mut self.epoch),
        });
        let entries = self
            .staged
            .iter()
            .map(Staged::encode)
            .collect::<Result<Vec<_>>>()?;
        Ok(OperatorSnapshot::entries(entries))
    }

    fn checkpoint_complete(
        &mut self,
        checkpoint: CheckpointId,
        _ctx: &OperatorContext,
    ) -> Result<()> {
        if self.exactly_once().is_none() {
            return Ok(());
        }
        let (done, later): (Vec<Staged>, Vec<Staged>) = std::mem::take(&mut self.staged)
            .into_iter()
            .partition(|s| s.checkpoint <= checkpoint.0);
        self.staged = later;
        if done.is_empty() {
            return Ok(());
        }
        let records: Vec<&Record> = done.iter().flat_map(|s| s.records.iter()).collect();
        let p = self.producer.as_ref().expect("producer created in open");
        self.commit_epoch(p, self.subtask, checkpoint.0, &records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_and_key_columns_become_records() {
        use arrow::array::{BinaryArray, StringArray};
        use arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, true),
            Field::new("value", DataType::Binary, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("")])),
                Arc::new(BinaryArray::from(vec![
                    Some(&b"one"[..]),
                    Some(&[0u8, 255][..]),
                    None,
                ])),
            ],
        )
        .unwrap();
        let records = Encoding::of(&schema).unwrap().encode(&batch).unwrap();
        assert_eq!(
            records,
            vec![
                (Some(b"a".to_vec()), b"one".to_vec()),
                (None, vec![0, 255]),
                (Some(Vec::new()), Vec::new()),
            ]
        );
    }

    #[test]
    fn staged_epochs_round_trip_compactly() {
        let s = Staged {
            subtask: 3,
            checkpoint: 42,
            records: vec![
                (Some(b"k".to_vec()), b"value one".to_vec()),
                (None, Vec::new()),
                (Some(Vec::new()), vec![0, 255, 10]),
            ],
        };
        let bytes = s.encode().unwrap();
        assert_eq!(bytes.len(), 24 + (4 + 1 + 4 + 9) + (4 + 4) + (4 + 4 + 3));
        assert_eq!(Staged::decode(&bytes).unwrap(), s);
        assert!(Staged::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Staged::decode(&longer).is_err());
    }
}
