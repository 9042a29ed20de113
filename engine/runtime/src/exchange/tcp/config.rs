//! What a process brings to its exchange connections: the settings shared
//! by every connection of one job attempt ([`ExchangeConfig`]) and the
//! channels one connection carries ([`ConnectionSpec`]).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;

use crate::exchange::frame::{ChannelId, DEFAULT_MAX_FRAME};
use crate::tls::ClusterTls;

/// Settings shared by every connection of one process for one job attempt.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// The job; a peer of another job is refused.
    pub job: String,
    /// This process's attempt of the job; a peer of another attempt is
    /// refused (a stale attempt must not feed a restarted job).
    pub attempt: u64,
    /// This process's identity, sent in the hello.
    pub node: String,
    /// The attempt's secret: sent in the hello, and required of peers.
    pub secret: String,
    /// Messages each inbound channel's local queue holds (= its credit).
    pub channel_capacity: usize,
    /// Upper bound on how long a written frame waits in the buffer.
    pub flush_interval: Duration,
    /// Largest frame body accepted or sent.
    pub max_frame: usize,
    /// Bound on connecting and on the hello/welcome exchange.
    pub handshake_timeout: Duration,
    /// The job's cancellation flag: set, it closes every connection.
    pub cancelled: Arc<AtomicBool>,
    /// Mutual TLS: this process's attempt certificate and the cluster CA;
    /// a peer must present a certificate of that CA naming this job and
    /// attempt. `None`: plaintext.
    pub tls: Option<ClusterTls>,
}

impl ExchangeConfig {
    /// Defaults: 8-message channels, 1 ms flush interval, 64 MiB frames.
    pub fn new(job: impl Into<String>, attempt: u64, node: impl Into<String>) -> Self {
        ExchangeConfig {
            job: job.into(),
            attempt,
            node: node.into(),
            secret: String::new(),
            channel_capacity: 8,
            flush_interval: Duration::from_millis(1),
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
            cancelled: Arc::default(),
            tls: None,
        }
    }
}

/// The channels a connection carries, declared by both sides before data
/// flows.
#[derive(Debug, Clone, Default)]
pub struct ConnectionSpec {
    pub(super) outbound: Vec<ChannelId>,
    pub(super) inbound: Vec<(ChannelId, Option<SchemaRef>)>,
}

impl ConnectionSpec {
    /// No channels yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// This side sends on `channel`.
    pub fn outbound(mut self, channel: ChannelId) -> Self {
        self.outbound.push(channel);
        self
    }
    /// This side receives on `channel`, whose batches must have `schema`'s
    /// fields (`None`: any schema).
    pub fn inbound(mut self, channel: ChannelId, schema: Option<SchemaRef>) -> Self {
        self.inbound.push((channel, schema));
        self
    }
}
