//! Talking to the brokers outside the data path: client configuration,
//! the context every client reports through ([`ClientWatch`]: librdkafka's
//! log lines and error events mapped to `tracing` levels, unreachable
//! brokers said so within seconds), partition discovery, and resolving
//! start and end offsets.
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

use rdkafka::client::Client;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::message::ToBytes;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_engine::{Error, Result};
use tracing::{debug, error, info, trace, warn};

/// How long metadata, offset and watermark requests may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long brokers may stay silent before a client says it cannot reach
/// them (it keeps trying after that, up to its request's timeout).
pub(crate) const UNREACHABLE_AFTER: Duration = Duration::from_secs(2);

/// Least time between two "cannot reach the brokers" warnings of a client.
const REPEAT_WARNING: Duration = Duration::from_secs(30);

/// A consumer reporting through [`ClientWatch`].
pub(crate) type WatchedConsumer = BaseConsumer<ClientWatch>;
/// A producer reporting through [`ClientWatch`].
pub(crate) type WatchedProducer = BaseProducer<ClientWatch>;

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

    /// The context for a client of these brokers (`what` names the client
    /// in its messages, e.g. "the Kafka source").
    pub(crate) fn watch(&self, what: &'static str) -> ClientWatch {
        ClientWatch::new(&self.brokers, what)
    }

    /// Checks the extra properties against librdkafka without creating a
    /// client (nothing connects): an unknown property or a value it
    /// refuses is an error naming it, at plan time rather than when a
    /// task starts. `producer` picks which client's configuration.
    pub(crate) fn check(&self, producer: bool) -> Result<()> {
        if self.properties.is_empty() {
            return Ok(());
        }
        let c = if producer {
            self.producer()
        } else {
            self.consumer(None)
        };
        c.create_native_config().map(drop).map_err(|e| {
            let given: Vec<String> = self
                .properties
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            Error::Config(format!(
                "a Kafka option is not accepted by librdkafka ({e}); given: {}",
                given.join(", ")
            ))
        })
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

/// The brokers' metadata (of `topic`, or of every topic), waiting up to
/// [`REQUEST_TIMEOUT`] for brokers that do not answer. After
/// [`UNREACHABLE_AFTER`] without an answer it warns that they cannot be
/// reached (with the reason librdkafka gave, when `serve` lets its events
/// through: `serve` polls the client, which only a client without
/// assigned partitions may do here), and at the end fails naming the
/// brokers and that reason.
pub(crate) fn metadata(
    client: &Client<ClientWatch>,
    topic: Option<&str>,
    serve: &dyn Fn(),
) -> Result<Metadata> {
    let started = Instant::now();
    let deadline = started + REQUEST_TIMEOUT;
    let watch = client.context();
    let mut warned = false;
    loop {
        let step = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(500));
        let failure = match client.fetch_metadata(topic, step) {
            Ok(md) => {
                if warned {
                    info!(brokers = %watch.brokers, client = watch.what, "the Kafka brokers answer now");
                }
                return Ok(md);
            }
            Err(e) => e,
        };
        serve();
        if Instant::now() >= deadline {
            let why = watch.reason().unwrap_or_else(|| failure.to_string());
            return Err(Error::connector(
                "kafka",
                format!(
                    "cannot reach the Kafka brokers at {} within {REQUEST_TIMEOUT:?} ({}{}): {why}; \
                     check the broker address",
                    watch.brokers,
                    watch.what,
                    topic.map_or(String::new(), |t| format!(", topic '{t}'")),
                ),
            ));
        }
        if !warned && started.elapsed() >= UNREACHABLE_AFTER {
            warned = true;
            // Says nothing if librdkafka's own report already warned.
            watch.warn_unreachable(
                &watch
                    .reason()
                    .unwrap_or_else(|| format!("no answer in {UNREACHABLE_AFTER:?} ({failure})")),
            );
        }
        // A refused connection fails at once: do not spin.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Says within [`UNREACHABLE_AFTER`] (and a little) whether `client`'s
/// brokers answer, warning when they do not; never fails, since the
/// client's own requests keep retrying (producers deliver, or fail their
/// flush, within their own timeouts).
pub(crate) fn check_reachable(client: &Client<ClientWatch>, serve: &dyn Fn()) {
    let started = Instant::now();
    while started.elapsed() < UNREACHABLE_AFTER {
        if client
            .fetch_metadata(None, Duration::from_millis(500))
            .is_ok()
        {
            return;
        }
        serve();
        std::thread::sleep(Duration::from_millis(100));
    }
    serve();
    let watch = client.context();
    watch.warn_unreachable(
        &watch
            .reason()
            .unwrap_or_else(|| format!("no answer in {UNREACHABLE_AFTER:?}")),
    );
}

/// The brokers a consumer was created for, for messages.
fn client_brokers(consumer: &WatchedConsumer) -> &str {
    &consumer.client().context().brokers
}

/// The partitions of `topic`, sorted. A topic that does not exist is an
/// error naming it. See [`metadata`] for `serve` and unreachable brokers.
pub(crate) fn partitions(consumer: &WatchedConsumer, topic: &str, serve: bool) -> Result<Vec<i32>> {
    let poll = || {
        if serve {
            // No partition is assigned yet: nothing but events comes back.
            let _ = consumer.poll(Duration::ZERO);
        }
    };
    let md = metadata(consumer.client(), Some(topic), &poll)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| Error::connector("kafka", format!("topic '{topic}' not found")))?;
    if let Some(e) = t.error() {
        let code = RDKafkaErrorCode::from(e);
        let what = match code {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                format!(
                    "topic '{topic}' does not exist on the brokers at {}",
                    client_brokers(consumer)
                )
            }
            c => format!("topic '{topic}': {c:?}"),
        };
        return Err(Error::connector("kafka", what));
    }
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    Ok(ps)
}

/// The high watermark librdkafka cached from the last Fetch response for
/// the partition, if one arrived.
pub(crate) fn cached_high_watermark<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    cached_watermarks(consumer, topic, partition).map(|(_, high)| high)
}

/// The low and high watermarks librdkafka cached for the partition (no
/// broker request: the high one comes with every Fetch response, the low
/// one is -1 until the client learnt it), if a high one arrived.
pub(crate) fn cached_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
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
        .then_some((low, high))
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
    let probe: WatchedConsumer = cc
        .create_with_context(config.watch("the Kafka watermark probe"))
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
    consumer: &WatchedConsumer,
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
    consumer: &WatchedConsumer,
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

/// The context of every client the connector creates. librdkafka's
/// default context logs every error event at ERROR, and an end of
/// partition is one: a healthy source logged an error per fetch that
/// reached the end. Here events are mapped to what they mean:
///
/// - end of partition: normal (trace);
/// - the brokers cannot be reached (connection refused, name not
///   resolved, all brokers down, transport failures): one warning naming
///   the brokers and the reason, repeated at most every 30 s while it
///   lasts, since librdkafka retries on its own; the reason is kept for
///   the error a request that gives up reports;
/// - fatal errors: ERROR; other error events: WARN.
///
/// Log lines keep librdkafka's level (its ERROR lines about failed
/// connections count as unreachable brokers). Producers also remember
/// their first failed delivery, so the task using them fails instead of
/// losing a record.
pub(crate) struct ClientWatch {
    brokers: String,
    what: &'static str,
    failed: Mutex<Option<String>>,
    unreachable: Mutex<Unreachable>,
}

/// What a client last heard about its brokers being unreachable.
#[derive(Default)]
struct Unreachable {
    /// The latest reason.
    reason: Option<String>,
    /// When a warning last went out.
    warned_at: Option<Instant>,
    /// Reasons not warned about since.
    suppressed: u64,
}

/// Whether an error code means the brokers cannot be reached.
fn is_unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::NetworkException
    )
}

/// Whether a librdkafka log line reports a failed connection.
fn is_connection_failure(fac: &str, message: &str) -> bool {
    fac == "FAIL"
        || message.contains("Connect to")
        || message.contains("Connection refused")
        || message.contains("Failed to resolve")
}

impl ClientWatch {
    fn new(brokers: &str, what: &'static str) -> Self {
        ClientWatch {
            brokers: brokers.to_string(),
            what,
            failed: Mutex::default(),
            unreachable: Mutex::default(),
        }
    }

    /// The first delivery error, if any.
    pub(crate) fn first_failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The latest reason the brokers could not be reached, if any.
    fn reason(&self) -> Option<String> {
        self.unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reason
            .clone()
    }

    /// Notes that the brokers cannot be reached, warning unless a warning
    /// went out in the last 30 s.
    fn warn_unreachable(&self, reason: &str) {
        let mut u = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        u.reason = Some(reason.to_string());
        let due = u.warned_at.is_none_or(|t| t.elapsed() >= REPEAT_WARNING);
        if !due {
            u.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut u.suppressed);
        u.warned_at = Some(Instant::now());
        drop(u);
        warn!(
            brokers = %self.brokers,
            client = self.what,
            suppressed,
            "cannot reach the Kafka brokers: {reason}; still trying"
        );
    }
}

impl ClientContext for ClientWatch {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                if is_connection_failure(fac, message) {
                    self.warn_unreachable(message);
                } else {
                    error!(target: "librdkafka", client = self.what, "{fac}: {message}");
                }
            }
            RDKafkaLogLevel::Warning => {
                warn!(target: "librdkafka", client = self.what, "{fac}: {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", client = self.what, "{fac}: {message}")
            }
            RDKafkaLogLevel::Debug => {
                debug!(target: "librdkafka", client = self.what, "{fac}: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        match code {
            Some(RDKafkaErrorCode::PartitionEOF) => {
                trace!(client = self.what, "end of partition: {reason}")
            }
            Some(c) if is_unreachable(c) => self.warn_unreachable(reason),
            _ if matches!(error, KafkaError::MessageConsumptionFatal(_))
                || code == Some(RDKafkaErrorCode::Fatal) =>
            {
                error!(client = self.what, brokers = %self.brokers, "Kafka client error: {error}: {reason}")
            }
            _ => {
                warn!(client = self.what, brokers = %self.brokers, "Kafka client error: {error}: {reason}")
            }
        }
    }
}

impl ConsumerContext for ClientWatch {}

impl ProducerContext for ClientWatch {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::Producer;

    #[test]
    fn end_of_partition_is_not_a_failure_and_unreachable_brokers_are_remembered() {
        let w = ClientWatch::new("127.0.0.1:1", "a test client");
        w.error(
            KafkaError::Global(RDKafkaErrorCode::PartitionEOF),
            "Fetch reached the end",
        );
        assert_eq!(
            w.reason(),
            None,
            "an end of partition says nothing about brokers"
        );
        w.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert_eq!(w.reason().as_deref(), Some("1/1 brokers are down"));
        w.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused",
        );
        assert!(w.reason().unwrap().contains("Connection refused"));
    }

    /// A real librdkafka producer pointed at a closed port: the check
    /// returns after [`UNREACHABLE_AFTER`] with the reason librdkafka gave
    /// and a warning out (there were 30 s of silence before).
    #[test]
    fn an_unreachable_broker_is_noticed_with_its_reason() {
        let config = KafkaConfig::new("127.0.0.1:1");
        let p: WatchedProducer = config
            .producer()
            .create_with_context(config.watch("a test producer"))
            .unwrap();
        check_reachable(p.client(), &|| {
            p.poll(Duration::ZERO);
        });
        let watch = p.context();
        let u = watch.unreachable.lock().unwrap();
        assert!(u.warned_at.is_some(), "a warning went out");
        let reason = u.reason.clone().unwrap();
        assert!(
            reason.contains("127.0.0.1:1")
                || reason.contains("refused")
                || reason.contains("no answer"),
            "{reason}"
        );
    }
}
