//! Certificates of a cluster, made with rcgen (ECDSA P-256 keys): the
//! cluster CA, node certificates naming hosts, and an attempt's
//! certificate naming only its attempt. Everything is PEM text; writing
//! files (keys private to their owner) is the caller's.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::{Error, Result};

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

fn err(what: &str, e: rcgen::Error) -> Error {
    Error::Config(format!("{what}: {e}"))
}

/// Clocks of a cluster's machines differ a little: a certificate is valid
/// from this long before it was made.
const SKEW: Duration = Duration::from_secs(300);

fn params(common_name: &str, valid_for: Duration) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    let now = SystemTime::now();
    p.not_before = (now - SKEW).into();
    p.not_after = (now + valid_for).into();
    p
}

/// A new cluster CA named `name`, valid for `valid_for`.
pub fn new_ca(name: &str, valid_for: Duration) -> Result<Issued> {
    let key = KeyPair::generate().map_err(|e| err("generating the CA key", e))?;
    let mut p = params(name, valid_for);
    // Signs node and attempt certificates directly; no intermediates.
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p
        .self_signed(&key)
        .map_err(|e| err("signing the CA certificate", e))?;
    Ok(Issued {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The CA that signs: its certificate and key, PEM.
pub struct Signer {
    ca_cert: String,
    key: KeyPair,
}

impl Signer {
    /// From the CA's certificate and key (PEM text).
    pub fn from_pem(ca_cert: &str, ca_key: &str) -> Result<Signer> {
        let key = KeyPair::from_pem(ca_key).map_err(|e| err("the CA key", e))?;
        // Checked here so a wrong pair fails at start, not at the first
        // attempt.
        Issuer::from_ca_cert_pem(ca_cert, &key).map_err(|e| err("the CA certificate", e))?;
        Ok(Signer {
            ca_cert: ca_cert.to_string(),
            key,
        })
    }

    /// The CA certificate (PEM).
    pub fn ca_cert(&self) -> &str {
        &self.ca_cert
    }

    fn sign(&self, p: CertificateParams, what: &str) -> Result<Issued> {
        let key = KeyPair::generate().map_err(|e| err("generating a key", e))?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert, &self.key)
            .map_err(|e| err("the CA certificate", e))?;
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(|e| err(&format!("signing {what}"), e))?;
        Ok(Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A node's certificate (a coordinator's or a worker's): named
    /// `name`, valid for the hosts `dns` and `ips`, as server and client.
    pub fn node(
        &self,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        valid_for: Duration,
    ) -> Result<Issued> {
        let mut p = params(name, valid_for);
        for d in dns {
            let d = d
                .as_str()
                .try_into()
                .map_err(|e| Error::Config(format!("DNS name {d:?}: {e}")))?;
            p.subject_alt_names.push(SanType::DnsName(d));
        }
        p.subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(p, &format!("the certificate of {name}"))
    }

    /// The certificate of attempt `attempt` of `job`: its only name is
    /// [`attempt_uri`](super::attempt_uri), so it passes for no host and
    /// no other attempt; valid for `valid_for`.
    pub fn attempt(&self, job: &str, attempt: u64, valid_for: Duration) -> Result<Issued> {
        let uri = super::attempt_uri(job, attempt);
        let mut p = params(&format!("attempt {attempt} of {job}"), valid_for);
        p.subject_alt_names.push(SanType::URI(
            uri.as_str()
                .try_into()
                .map_err(|e| Error::Config(format!("attempt name {uri:?}: {e}")))?,
        ));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(p, &format!("the certificate of {uri}"))
    }
}
