//! The `sluice coordinator` service:
//! - [`lifecycle`]: a job's states and transitions, the one place that
//!   decides what a failure, a savepoint or a rescale does to a job;
//! - [`manager`]: jobs, workers and attempts, driven through the life
//!   cycle; [`jobs`] and [`workers`] hold what it knows of each;
//! - [`scheduler`]: placing subtasks on slots; [`load`]: the CPU each
//!   worker's executors use, measured for the least-loaded placement;
//! - [`autoscaler`]: the parallelism an autoscaled job needs, from its
//!   busy time, rates and source backlog, and when to rescale to it;
//! - [`meta`]: durable job records and id counters in the data
//!   directory; [`artifacts`]: the shipped binaries there;
//! - [`routes`]: the REST API;
//! - [`raft`]: the coordinators' Raft group, each on its own disk (a lone
//!   coordinator is a group of one): which of them leads, and the log
//!   every change of the durable metadata goes through.

pub mod artifacts;
pub mod autoscaler;
pub mod jobs;
pub mod lifecycle;
pub mod load;
pub(crate) mod logs;
pub mod manager;
pub mod meta;
pub mod raft;
pub mod routes;
pub mod scheduler;
pub mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tracing::{info, warn};

pub use artifacts::ArtifactLimits;
use sluice_engine::error::{Error, Result};
use sluice_web as jobs_api;
use sluice_web::{Access, TlsFiles, Token};

/// How subtasks are spread over worker slots (see [`scheduler`] for what
/// each is for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduling {
    /// Over as many workers as possible (most free slots first).
    #[default]
    Spread,
    /// Onto as few workers as possible.
    Pack,
    /// In proportion to the workers' declared capacity.
    Weighted,
    /// Each slot to the worker after the one the previous slot went to,
    /// across jobs (the rotation is the coordinator's, in memory).
    RoundRobin,
    /// The smallest share of slots in use, then the least CPU measured
    /// from the executors' reports over the last seconds.
    LeastLoaded,
}

impl Scheduling {
    /// Its name as the `--scheduling` setting spells it.
    pub fn name(self) -> &'static str {
        match self {
            Scheduling::Spread => "spread",
            Scheduling::Pack => "pack",
            Scheduling::Weighted => "weighted",
            Scheduling::RoundRobin => "round-robin",
            Scheduling::LeastLoaded => "least-loaded",
        }
    }
}

/// Settings of a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// REST API address.
    pub listen: SocketAddr,
    /// Address executors' control connections dial (port 0: any).
    pub control_listen: SocketAddr,
    /// Durable metadata and artifacts.
    pub data_dir: PathBuf,
    /// A worker silent this long is dead.
    pub heartbeat_timeout: Duration,
    /// How often workers heartbeat.
    pub heartbeat_interval: Duration,
    /// How long a running attempt's executors wait for a new leader once
    /// their coordinator is gone, and how long a new leader waits for all
    /// of them to rejoin before it restarts the job instead.
    pub rejoin_grace: Duration,
    /// Placement strategy.
    pub scheduling: Scheduling,
    /// A dead worker is listed this long after its last heartbeat, then
    /// forgotten.
    pub dead_worker_retention: Duration,
    /// Ended jobs kept (in memory and on disk); older ones are forgotten.
    pub retained_jobs: usize,
    /// The operator's bearer token: every API call but the web UI's page
    /// must carry it or the read token, and only it may change anything.
    pub token: Option<Token>,
    /// A read-only token (GET and HEAD routes); needs `token`.
    pub read_token: Option<Token>,
    /// Serve HTTPS with these files instead of HTTP.
    pub tls: Option<TlsFiles>,
    /// The cluster CA: with it, the control connection is mutual TLS too
    /// (the server presents `tls`'s certificate), each attempt gets a
    /// certificate of its own signed by this CA, and the REST API refuses
    /// a client certificate this CA did not sign. Needs `tls`. `None`:
    /// control and exchange in plaintext.
    pub cluster_ca: Option<ClusterCa>,
    /// Plaintext was asked for (`--insecure-plaintext`): the warning at
    /// start says so.
    pub insecure_plaintext: bool,
    /// The URL clients reach this coordinator at, which the other
    /// members of its group name while it leads (default: its listen
    /// address).
    pub advertise: Option<String>,
    /// How large a shipped binary, and all of them together, may be.
    pub artifact_limits: ArtifactLimits,
    /// Membership of a Raft group of coordinators (`--node-id`,
    /// `--peers`); without it, or with no peers, a group of one: this
    /// coordinator alone, at its advertised URL.
    pub raft: Option<raft::RaftSettings>,
    /// The autoscaler's target, windows and cooldown (for jobs submitted
    /// with an autoscale range).
    pub autoscale: autoscaler::AutoscaleSettings,
}

impl CoordinatorConfig {
    /// Defaults around `listen` and `data_dir`: 3 s heartbeat timeout,
    /// 500 ms heartbeats, 15 s for executors to rejoin a new leader, spread placement, dead workers listed for 10
    /// minutes, the 100 newest ended jobs kept, no token, plain HTTP,
    /// the default [`ArtifactLimits`], the default autoscaler settings. A
    /// job restarts by its own restart strategy.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        CoordinatorConfig {
            listen,
            control_listen: SocketAddr::new(listen.ip(), 0),
            data_dir: data_dir.into(),
            heartbeat_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_millis(500),
            rejoin_grace: Duration::from_secs(15),
            scheduling: Scheduling::Spread,
            dead_worker_retention: Duration::from_secs(600),
            retained_jobs: 100,
            token: None,
            read_token: None,
            tls: None,
            cluster_ca: None,
            insecure_plaintext: false,
            advertise: None,
            artifact_limits: ArtifactLimits::default(),
            raft: None,
            autoscale: autoscaler::AutoscaleSettings::default(),
        }
    }
}

/// The cluster CA as the coordinator holds it: the certificate peers are
/// checked against and the key it signs attempts' certificates with.
#[derive(Debug, Clone)]
pub struct ClusterCa {
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    /// The CA's private key (PEM).
    pub key: PathBuf,
}

/// How long an attempt's certificate is valid. Connections are made when
/// an attempt starts, so only a start later than this fails (an executor
/// that waited that long for its binary); a leaked attempt key is worth
/// nothing to another attempt at any time.
pub const ATTEMPT_CERT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The coordinator's TLS material, loaded and checked.
pub(crate) struct LoadedTls {
    /// Its node identity for the control server.
    pub(crate) node: sluice_engine::tls::ClusterTls,
    /// Signs attempts' certificates.
    pub(crate) signer: sluice_engine::tls::issue::Signer,
}

impl CoordinatorConfig {
    /// Loads the cluster TLS material (`None` without `cluster_ca`).
    pub(crate) fn load_tls(&self) -> Result<Option<LoadedTls>> {
        let Some(ca) = &self.cluster_ca else {
            return Ok(None);
        };
        let Some(files) = &self.tls else {
            return Err(Error::Config(
                "the cluster CA needs the coordinator's own certificate and key (--tls-cert, --tls-key)"
                    .into(),
            ));
        };
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
        };
        let node = sluice_engine::tls::ClusterTls::from_files(&ca.cert, &files.cert, &files.key)?;
        let signer = sluice_engine::tls::issue::Signer::from_pem(&read(&ca.cert)?, &read(&ca.key)?)
            .map_err(|e| {
                Error::Config(format!(
                    "CA {} with key {}: {e}",
                    ca.cert.display(),
                    ca.key.display()
                ))
            })?;
        Ok(Some(LoadedTls { node, signer }))
    }

    /// The REST API's TLS: the node certificate; with the cluster CA, a
    /// client certificate is optional but one the CA did not sign fails
    /// the handshake (the token decides what a client may do).
    fn rest_tls(&self) -> Result<Option<axum_server::tls_openssl::OpenSSLConfig>> {
        let Some(files) = &self.tls else {
            return Ok(None);
        };
        let failed = |e: &dyn std::fmt::Display| {
            Error::Config(format!(
                "TLS certificate {} with key {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        };
        let Some(ca) = &self.cluster_ca else {
            return axum_server::tls_openssl::OpenSSLConfig::from_pem_chain_file(
                &files.cert,
                &files.key,
            )
            .map(Some)
            .map_err(|e| failed(&e));
        };
        use openssl::ssl::{AlpnError, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
        let mut a = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(|e| failed(&e))?;
        a.set_certificate_chain_file(&files.cert)
            .and_then(|()| a.set_private_key_file(&files.key, SslFiletype::PEM))
            .and_then(|()| a.check_private_key())
            .map_err(|e| failed(&e))?;
        a.set_ca_file(&ca.cert)
            .map_err(|e| Error::Config(format!("CA certificate {}: {e}", ca.cert.display())))?;
        a.set_verify(SslVerifyMode::PEER);
        // As axum-server's own config: HTTP/2 if asked, else HTTP/1.1.
        a.set_alpn_select_callback(|_, client| {
            openssl::ssl::select_next_proto(b"\x02h2\x08http/1.1", client).ok_or(AlpnError::NOACK)
        });
        Ok(Some(
            axum_server::tls_openssl::OpenSSLConfig::from_acceptor(Arc::new(a.build())),
        ))
    }
}

/// The audit log in the data directory: one JSON line per state-changing
/// API request (see [`sluice_web::audit`]).
pub const AUDIT_LOG: &str = "audit.log";

/// Creates the data directory if needed and makes it the coordinator's
/// alone (0700): it holds job records, the audit log and artifacts, which
/// executors running as another user (a worker's `--run-as`) must not
/// read.
fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("setting the mode of {}", dir.display()), e))
}

/// How often the manager looks at heartbeats and attempt events.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// Runs the coordinator until the process is stopped, as a member of its
/// Raft group (see [`raft::serve`]): the one named by
/// [`CoordinatorConfig::raft`], or a group of one.
pub async fn serve(config: CoordinatorConfig) -> Result<()> {
    let listen = config.listen;
    let access = Access::new(config.token.clone(), config.read_token.clone())?;
    let tls = config.rest_tls()?;
    // Checked before anything starts, so bad files fail at once.
    if config.load_tls()?.is_none() {
        warn!(
            insecure_plaintext = config.insecure_plaintext,
            "control connections and the exchange between executors are plaintext: \
             attempt secrets and job data travel in clear, and anyone on the network \
             can read or alter them"
        );
    }
    if access.is_open() {
        warn!(
            api = %listen,
            "the REST API takes no token: anyone who can reach it can run programs on the workers \
             (set --token-file or SLUICE_TOKEN)"
        );
    }
    let (listener, local) = jobs_api::bind(listen, "the REST API")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let advertised = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{local}"));

    private_dir(&config.data_dir)?;
    let mut config = config;
    // A coordinator named in no group is a group of one at its own URL.
    let mut settings = config
        .raft
        .take()
        .unwrap_or_else(|| raft::RaftSettings::alone(&advertised));
    if settings.peers.is_empty() {
        settings.peers.insert(settings.node_id, advertised.clone());
    }
    config.raft = Some(settings);
    info!(api = %advertised, "coordinator listening");
    raft::serve::serve(config, listener, tls, access).await
}
