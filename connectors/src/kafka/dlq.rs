//! What happens to a record that fails to decode ([`DecodePolicy`]): fail
//! the job naming the record, skip it and count it, or send it to a
//! dead-letter topic with its original key and bytes and headers saying
//! why and where it came from. Owns the dead-letter producer.
//!
//! Dead letters are at-least-once: the source flushes the producer before
//! it records a checkpoint position, so every bad record before that
//! position is durable in the dead-letter topic; a restart may send the
//! bad records after it again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use sluice_engine::{Error, Result};

use super::client::REQUEST_TIMEOUT;
use super::client::{check_reachable, kafka_err, send_waiting, KafkaConfig, WatchedProducer};

/// Header naming why the record could not be decoded.
pub const ERROR_HEADER: &str = "sluice.error";
/// Header with the source topic.
pub const TOPIC_HEADER: &str = "sluice.topic";
/// Header with the source partition (decimal text).
pub const PARTITION_HEADER: &str = "sluice.partition";
/// Header with the source offset (decimal text).
pub const OFFSET_HEADER: &str = "sluice.offset";

/// What to do with a record that fails to decode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DecodePolicy {
    /// Fail the job with an error naming topic, partition, offset and cause.
    #[default]
    Fail,
    /// Leave the record out and count it ([`DecodeStats::skipped`]).
    Skip,
    /// Send the record to this topic (same brokers) with its original key
    /// and value and the headers of this module.
    DeadLetter(String),
}

/// Counters of bad records, shared by every subtask of one source.
#[derive(Debug, Default)]
pub struct DecodeStats {
    skipped: AtomicU64,
    dead_lettered: AtomicU64,
}

impl DecodeStats {
    /// Records skipped under [`DecodePolicy::Skip`].
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
    /// Records sent to the dead-letter topic.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
}

/// Applies a [`DecodePolicy`] for one source subtask.
pub(crate) struct BadRecords {
    policy: DecodePolicy,
    stats: Arc<DecodeStats>,
    producer: Option<WatchedProducer>,
    topic: String,
}

impl BadRecords {
    pub(crate) fn new(
        policy: DecodePolicy,
        stats: Arc<DecodeStats>,
        config: &KafkaConfig,
        topic: &str,
    ) -> Result<Self> {
        let producer = match &policy {
            DecodePolicy::DeadLetter(_) => {
                let p: WatchedProducer = config
                    .producer()
                    .create_with_context(config.watch("the Kafka dead-letter producer"))
                    .map_err(|e| kafka_err("creating the dead-letter producer", e))?;
                check_reachable(p.client(), &|| {
                    p.poll(Duration::ZERO);
                });
                Some(p)
            }
            _ => None,
        };
        Ok(BadRecords {
            policy,
            stats,
            producer,
            topic: topic.to_string(),
        })
    }

    /// Handles one bad record.
    pub(crate) fn handle(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        error: &str,
    ) -> Result<()> {
        match &self.policy {
            DecodePolicy::Fail => Err(Error::Decode(format!(
                "topic '{}' partition {partition} offset {offset}: {error}",
                self.topic
            ))),
            DecodePolicy::Skip => {
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(topic = %self.topic, partition, offset, error, "skipping bad record");
                Ok(())
            }
            DecodePolicy::DeadLetter(dlq) => {
                let producer = self.producer.as_ref().expect("producer for dead letters");
                let p = partition.to_string();
                let o = offset.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: ERROR_HEADER,
                        value: Some(error),
                    })
                    .insert(Header {
                        key: TOPIC_HEADER,
                        value: Some(&self.topic),
                    })
                    .insert(Header {
                        key: PARTITION_HEADER,
                        value: Some(&p),
                    })
                    .insert(Header {
                        key: OFFSET_HEADER,
                        value: Some(&o),
                    });
                let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(dlq).headers(headers);
                if let Some(k) = key {
                    rec = rec.key(k);
                }
                if let Some(v) = value {
                    rec = rec.payload(v);
                }
                send_waiting(producer, rec)
                    .map_err(|e| kafka_err(format!("sending a dead letter to '{dlq}'"), e))?;
                producer.poll(Duration::ZERO);
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.check()
            }
        }
    }

    /// Fails if a dead letter could not be delivered.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(p) = &self.producer {
            if let Some(e) = p.context().first_failure() {
                return Err(Error::connector(
                    "kafka",
                    format!("a dead letter could not be delivered: {e}"),
                ));
            }
        }
        Ok(())
    }

    /// Waits until every dead letter sent so far is acknowledged.
    pub(crate) fn flush(&self) -> Result<()> {
        if let Some(p) = &self.producer {
            p.flush(REQUEST_TIMEOUT)
                .map_err(|e| kafka_err("flushing dead letters", e))?;
        }
        self.check()
    }
}
