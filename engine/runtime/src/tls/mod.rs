//! Mutual TLS between the processes of a cluster: the executor's control
//! connection to the coordinator and the exchange between executors.
//!
//! - [`ClusterTls`]: one process's identity (its certificate and key) and
//!   the one CA it trusts — the cluster's, never the system's roots — as
//!   OpenSSL contexts for both ends of a connection. TLS 1.3 only; a peer
//!   without a certificate of the cluster CA fails the handshake.
//! - [`issue`]: certificates made with rcgen: the cluster CA, node
//!   certificates (coordinator, worker) and the short-lived certificate of
//!   one attempt, which names it (see [`attempt_uri`]).
//! - [`stream`]: a connection that is TLS or plain behind one type, whose
//!   reading and writing halves run on different threads (the exchange's
//!   reader and writer, the executor's control reader and senders).
//!
//! Which certificate proves what: a node certificate names hosts (DNS and
//! IP subject alternative names), which clients check as for HTTPS; an
//! attempt certificate names only its attempt, as a URI, so job code
//! holding it cannot pass for the coordinator or for another attempt's
//! executors. The attempt's secret still travels in the hellos inside the
//! TLS session, so a connection is bound to its attempt twice.

pub mod issue;
pub mod stream;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    Ssl, SslAcceptor, SslConnector, SslMethod, SslMode, SslRef, SslSessionCacheMode, SslVerifyMode,
    SslVersion,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;

use crate::error::{Error, Result};
use sluice_protocol::api::AttemptTls;
pub use stream::SecureStream;

/// The URI an attempt's certificate names (its only subject alternative
/// name): `sluice://attempt/JOB/ATTEMPT`.
pub fn attempt_uri(job: &str, attempt: u64) -> String {
    format!("sluice://attempt/{job}/{attempt}")
}

/// The URIs among the subject alternative names of the peer's
/// certificate (none without a certificate).
pub fn peer_uris(ssl: &SslRef) -> Vec<String> {
    let Some(cert) = ssl.peer_certificate() else {
        return Vec::new();
    };
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.uri().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the peer's (verified) certificate names attempt `attempt` of
/// `job`; an error saying what it names otherwise.
pub fn check_peer_attempt(ssl: &SslRef, job: &str, attempt: u64) -> Result<()> {
    let want = attempt_uri(job, attempt);
    let uris = peer_uris(ssl);
    if uris.contains(&want) {
        Ok(())
    } else if uris.is_empty() {
        Err(Error::Exchange(format!(
            "the peer's certificate names no attempt (wanted {want})"
        )))
    } else {
        Err(Error::Exchange(format!(
            "the peer's certificate names {} , not {want}",
            uris.join(", ")
        )))
    }
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{what}: {e}"))
}

/// One process's TLS identity in the cluster, and the CA it trusts.
#[derive(Clone)]
pub struct ClusterTls {
    acceptor: Arc<SslAcceptor>,
    connector: Arc<SslConnector>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

impl ClusterTls {
    /// From PEM text: the CA certificate(s) to trust, this process's
    /// certificate (chain) and its private key.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<ClusterTls> {
        let cas = X509::stack_from_pem(ca).map_err(|e| tls_err("the CA certificate", e))?;
        if cas.is_empty() {
            return Err(Error::Config("the CA file holds no certificate".into()));
        }
        let chain = X509::stack_from_pem(cert).map_err(|e| tls_err("the certificate", e))?;
        let Some((leaf, extra)) = chain.split_first() else {
            return Err(Error::Config(
                "the certificate file holds no certificate".into(),
            ));
        };
        let key: PKey<Private> =
            PKey::private_key_from_pem(key).map_err(|e| tls_err("the private key", e))?;
        let store = |cas: &[X509]| -> Result<_> {
            let mut b = X509StoreBuilder::new().map_err(|e| tls_err("a certificate store", e))?;
            for c in cas {
                b.add_cert(c.clone())
                    .map_err(|e| tls_err("the CA certificate", e))?;
            }
            Ok(b.build())
        };
        let verify = SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT;

        let mut a = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server())
            .map_err(|e| tls_err("a TLS server context", e))?;
        a.set_certificate(leaf)
            .and_then(|()| {
                extra
                    .iter()
                    .try_for_each(|c| a.add_extra_chain_cert(c.clone()))
            })
            .and_then(|()| a.set_private_key(&key))
            .and_then(|()| a.check_private_key())
            .map_err(|e| tls_err("the certificate and its key", e))?;
        a.set_cert_store(store(&cas)?);
        a.set_verify(verify);
        // No tickets after the handshake: nothing resumes, and a session
        // then has no bytes for the reading side to answer.
        a.set_num_tickets(0)
            .map_err(|e| tls_err("a TLS server context", e))?;
        a.set_session_cache_mode(SslSessionCacheMode::OFF);
        a.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER | SslMode::ENABLE_PARTIAL_WRITE);

        let mut c = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| tls_err("a TLS client context", e))?;
        c.set_min_proto_version(Some(SslVersion::TLS1_3))
            .map_err(|e| tls_err("a TLS client context", e))?;
        c.set_certificate(leaf)
            .and_then(|()| {
                extra
                    .iter()
                    .try_for_each(|c2| c.add_extra_chain_cert(c2.clone()))
            })
            .and_then(|()| c.set_private_key(&key))
            .and_then(|()| c.check_private_key())
            .map_err(|e| tls_err("the certificate and its key", e))?;
        // Replaces the system's roots the builder loaded: only the
        // cluster's CA is trusted.
        c.set_cert_store(store(&cas)?);
        c.set_verify(SslVerifyMode::PEER);
        c.set_session_cache_mode(SslSessionCacheMode::OFF);
        Ok(ClusterTls {
            acceptor: Arc::new(a.build()),
            connector: Arc::new(c.build()),
        })
    }

    /// From files (PEM): the CA, the certificate and its key.
    pub fn from_files(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<ClusterTls> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
        };
        ClusterTls::from_pem(&read(ca)?, &read(cert)?, &read(key)?).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!(
                "TLS files {}, {}, {}: {m}",
                ca.display(),
                cert.display(),
                key.display()
            )),
            e => e,
        })
    }

    /// An attempt's identity as the coordinator hands it to its executors.
    pub fn from_attempt(t: &AttemptTls) -> Result<ClusterTls> {
        ClusterTls::from_pem(t.ca.as_bytes(), t.cert.as_bytes(), t.key.as_bytes())
    }

    /// The server context (for tokio-openssl on the coordinator).
    pub fn acceptor(&self) -> &SslAcceptor {
        &self.acceptor
    }

    /// A client session that checks the server's certificate names `host`
    /// (a DNS name or an IP address), or only that the CA signed it when
    /// `host` is `None` (the caller then checks the name it needs).
    pub fn client_ssl(&self, host: Option<&str>) -> Result<Ssl> {
        let mut conf = self
            .connector
            .configure()
            .map_err(|e| tls_err("a TLS client session", e))?;
        let host = match host {
            Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => {
                conf.set_verify_hostname(false);
                conf.set_use_server_name_indication(false);
                "sluice".to_string()
            }
        };
        conf.into_ssl(&host)
            .map_err(|e| tls_err("a TLS client session", e))
    }

    /// A server session.
    pub fn server_ssl(&self) -> Result<Ssl> {
        Ssl::new(self.acceptor.context()).map_err(|e| tls_err("a TLS server session", e))
    }

    /// Client handshake on a connected socket, done by `deadline`.
    pub fn connect(
        &self,
        socket: TcpStream,
        host: Option<&str>,
        deadline: Instant,
    ) -> Result<SecureStream> {
        SecureStream::handshake(socket, self.client_ssl(host)?, false, deadline)
    }

    /// Server handshake on an accepted socket, done by `deadline`.
    pub fn accept(&self, socket: TcpStream, deadline: Instant) -> Result<SecureStream> {
        SecureStream::handshake(socket, self.server_ssl()?, true, deadline)
    }
}
