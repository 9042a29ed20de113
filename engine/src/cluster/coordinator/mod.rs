//! The `sluice coordinator` service: [`routes`] (the REST API),
//! [`manager`] (workers, jobs, attempts, failure detection, restarts),
//! [`scheduler`] (placing subtasks on slots) and [`meta`] (durable job
//! records and shipped binaries in the data directory).

pub mod manager;
pub mod meta;
pub mod routes;
pub mod scheduler;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use tracing::{info, warn};

use crate::cluster::security::{TlsFiles, Token};
use crate::error::{Error, Result};

/// How subtasks are spread over worker slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduling {
    /// Over as many workers as possible (most free slots first).
    #[default]
    Spread,
    /// Onto as few workers as possible.
    Pack,
    /// In proportion to the workers' declared capacity.
    Weighted,
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
    /// Placement strategy.
    pub scheduling: Scheduling,
    /// Restarts of a job before it fails for good.
    pub max_restarts: u32,
    /// Wait before restarting a failed attempt.
    pub restart_delay: Duration,
    /// Bearer token every API call but the web UI's page must carry.
    pub token: Option<Token>,
    /// Serve HTTPS with these files instead of HTTP.
    pub tls: Option<TlsFiles>,
}

impl CoordinatorConfig {
    /// Defaults around `listen` and `data_dir`: 3 s heartbeat timeout,
    /// 500 ms heartbeats, spread placement, 20 restarts 200 ms apart, no
    /// token, plain HTTP.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        CoordinatorConfig {
            listen,
            control_listen: SocketAddr::new(listen.ip(), 0),
            data_dir: data_dir.into(),
            heartbeat_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_millis(500),
            scheduling: Scheduling::Spread,
            max_restarts: 20,
            restart_delay: Duration::from_millis(200),
            token: None,
            tls: None,
        }
    }
}

/// How often the manager looks at heartbeats and attempt events.
const TICK: Duration = Duration::from_millis(50);

/// Runs the coordinator until the process is stopped.
pub async fn serve(config: CoordinatorConfig) -> Result<()> {
    let listen = config.listen;
    let token = config.token.clone().map(Arc::new);
    let tls = config.tls.clone();
    let tls = match tls {
        Some(files) => Some(
            axum_server::tls_openssl::OpenSSLConfig::from_pem_chain_file(&files.cert, &files.key)
                .map_err(|e| {
                Error::Config(format!(
                    "TLS certificate {} with key {}: {e}",
                    files.cert.display(),
                    files.key.display()
                ))
            })?,
        ),
        None => None,
    };
    if token.is_none() {
        warn!(
            api = %listen,
            "the REST API takes no token: anyone who can reach it can run programs on the workers \
             (set --token-file or SLUICE_TOKEN)"
        );
    }
    let manager = tokio::task::spawn_blocking(move || manager::Manager::open(config))
        .await
        .map_err(|e| Error::Internal(format!("opening the coordinator: {e}")))??;
    // The manager loop touches storage (checkpoint scans, metadata files):
    // a thread of its own, off the async runtime.
    let ticker = Arc::clone(&manager);
    std::thread::Builder::new()
        .name("coordinator-manager".into())
        .spawn(move || loop {
            ticker.tick();
            std::thread::sleep(TICK);
        })
        .map_err(|e| Error::io("spawning the manager thread", e))?;
    let app = routes::router(manager, token);
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::io(format!("listening on {listen}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("the API address", e))?;
    match tls {
        Some(tls) => {
            info!(api = %format!("https://{local}"), "coordinator listening");
            axum_server::from_tcp(listener)
                .map_err(|e| Error::io("serving the API", e))?
                .acceptor(axum_server::tls_openssl::OpenSSLAcceptor::new(tls))
                .serve(app.into_make_service())
                .await
                .map_err(|e| Error::io("serving the API", e))
        }
        None => {
            info!(api = %format!("http://{local}"), "coordinator listening");
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| Error::io("serving the API", e))?;
            axum::serve(listener, app)
                .await
                .map_err(|e| Error::io("serving the API", e))
        }
    }
}
