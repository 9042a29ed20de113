//! Talking to the brokers outside the data path: client configuration,
//! partition discovery, and resolving start and end offsets.
//!
//! High watermarks come from Fetch responses, never from
//! `ListOffsets(latest)`: tansu 0.6 answers the latter with the first
//! offset of the last written batch (+1), which would make a bounded job
//! stop early. A short-lived probe consumer assigns the partitions, polls
//! until each has delivered a record or reached its end, and then reads the
//! high watermark librdkafka cached from the Fetch response.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_engine::{Error, Result};

/// How long metadata, offset and watermark requests may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Brokers and extra librdkafka properties shared by the source and sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// More librdkafka properties, applied last (they win).
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Connects to `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            properties: Vec::new(),
        }
    }

    /// A consumer configuration: manual assignment, no automatic commits
    /// or offset stores (positions live in checkpoints), end-of-partition
    /// events on.
    pub(crate) fn consumer(&self, group: Option<&str>) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            // A group id is needed to commit offsets; without one the
            // source never commits, and the id is never used to join.
            .set("group.id", group.unwrap_or("sluice-unused"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // A checkpointed offset that retention has since deleted
            // resumes at the earliest retained record.
            .set("auto.offset.reset", "earliest")
            // Bounds what librdkafka prefetches per subtask, so memory
            // stays bounded while the job is backpressured.
            .set("queued.max.messages.kbytes", "16384")
            // When that bound is reached librdkafka postpones the next fetch
            // by this much; its default (1 s) stalls a consumer that drains
            // the queue in milliseconds for the rest of the second.
            .set("fetch.queue.backoff.ms", "10")
            .set("fetch.wait.max.ms", "100")
            .set("log_level", "4");
        self.apply(&mut c);
        c
    }

    /// A producer configuration.
    pub(crate) fn producer(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("linger.ms", "5")
            .set("log_level", "4");
        self.apply(&mut c);
        c
    }

    fn apply(&self, c: &mut ClientConfig) {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
    }
}

pub(crate) fn kafka_err(what: impl std::fmt::Display, e: KafkaError) -> Error {
    Error::connector("kafka", format!("{what}: {e}"))
}

/// The partitions of `topic`, sorted. A topic that does not exist is an
/// error naming it.
pub(crate) fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| kafka_err(format!("fetching metadata of topic '{topic}'"), e))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| Error::connector("kafka", format!("topic '{topic}' not found")))?;
    if let Some(e) = t.error() {
        return Err(Error::connector(
            "kafka",
            format!("topic '{topic}': {:?}", RDKafkaErrorCode::from(e)),
        ));
    }
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    Ok(ps)
}

/// The high watermark librdkafka cached from the last Fetch response for
/// the partition, if one arrived.
pub(crate) fn cached_high_watermark(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime, the
    // topic is a NUL-terminated string that outlives the call, and the
    // out-pointers are to live locals. rdkafka 0.39 has no safe wrapper
    // for this librdkafka call (only for the ListOffsets-based query).
    let rc = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (rc == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// High watermarks of `partitions` as Fetch responses report them, from a
/// probe consumer that reads one record (or the end) of each.
pub(crate) fn high_watermarks(
    config: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>> {
    let mut out = BTreeMap::new();
    if partitions.is_empty() {
        return Ok(out);
    }
    let mut cc = config.consumer(None);
    // One small fetch per partition is all the probe needs.
    cc.set("max.partition.fetch.bytes", "1024")
        .set("queued.max.messages.kbytes", "1024");
    let probe: BaseConsumer = cc
        .create()
        .map_err(|e| kafka_err("creating the watermark probe consumer", e))?;
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| kafka_err("assigning the watermark probe", e))?;
    }
    probe
        .assign(&tpl)
        .map_err(|e| kafka_err("assigning the watermark probe", e))?;
    let mut waiting: BTreeSet<i32> = partitions.iter().copied().collect();
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    while !waiting.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::connector(
                "kafka",
                format!(
                    "no Fetch response for topic '{topic}' partitions {waiting:?} within {REQUEST_TIMEOUT:?}"
                ),
            ));
        }
        let seen = match probe.poll(Duration::from_millis(100)) {
            None => None,
            Some(Ok(m)) => Some(m.partition()),
            Some(Err(KafkaError::PartitionEOF(p))) => Some(p),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "watermark probe");
                None
            }
        };
        if let Some(p) = seen {
            if waiting.contains(&p) {
                if let Some(h) = cached_high_watermark(&probe, topic, p) {
                    waiting.remove(&p);
                    out.insert(p, h);
                }
            }
        }
    }
    Ok(out)
}

/// The first offset at or after `ts` per partition, `None` where there is
/// no such record.
pub(crate) fn offsets_for_timestamp(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    ts: i64,
) -> Result<BTreeMap<i32, Option<i64>>> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(ts))
            .map_err(|e| kafka_err("looking up offsets by time", e))?;
    }
    let res = consumer
        .offsets_for_times(tpl, REQUEST_TIMEOUT)
        .map_err(|e| kafka_err(format!("looking up offsets of '{topic}' at time {ts}"), e))?;
    Ok(offsets_of(&res))
}

/// The group's committed offsets per partition, `None` where it has none.
pub(crate) fn committed_offsets(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, Option<i64>>> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    let res = consumer
        .committed_offsets(tpl, REQUEST_TIMEOUT)
        .map_err(|e| kafka_err(format!("fetching committed offsets of '{topic}'"), e))?;
    Ok(offsets_of(&res))
}

/// Offsets per partition of a lookup's answer, `None` where there is none.
fn offsets_of(res: &TopicPartitionList) -> BTreeMap<i32, Option<i64>> {
    res.elements()
        .iter()
        .map(|e| {
            let off = match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            };
            (e.partition(), off)
        })
        .collect()
}

/// A producer context that remembers the first failed delivery, so the
/// task using the producer can fail instead of losing a record.
#[derive(Default)]
pub(crate) struct DeliveryWatch {
    failed: Mutex<Option<String>>,
}

impl DeliveryWatch {
    /// The first delivery error, if any.
    pub(crate) fn first_failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ClientContext for DeliveryWatch {}

impl ProducerContext for DeliveryWatch {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Sends `rec`, waiting while librdkafka's local queue is full: that only
/// means the broker is behind, so delivery reports are served and the send
/// retried (backpressure). Any other error is returned.
pub fn send_waiting<'a, C, K, P>(
    p: &BaseProducer<C>,
    mut rec: BaseRecord<'a, K, P, C::DeliveryOpaque>,
) -> std::result::Result<(), KafkaError>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                p.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
