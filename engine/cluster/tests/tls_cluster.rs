//! TLS as a user and an attacker meet it on a real `sluice` coordinator:
//! `sluice tls` makes a CA and node certificates (keys 0600, nothing
//! overwritten); a coordinator without TLS files refuses to start unless
//! told `--insecure-plaintext`, and then warns; on a TLS cluster the REST
//! API refuses a client certificate of another CA at the handshake, takes
//! one of the cluster CA, and the token still decides (401 without it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use sluice_cluster::local::{LocalCluster, LocalClusterConfig, LocalSecurity};

const TOKEN: &str = "operator-0123456789abcdef";

fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(sluice_bin())
        .args(args)
        .env_remove("SLUICE_TOKEN")
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn sluice_tls_makes_a_ca_and_node_certificates_and_overwrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("tls");
    let ds = d.to_str().unwrap();
    let o = sluice(&["tls", "init", "--dir", ds]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&d.join("ca.key")), 0o600);
    let before = std::fs::read(d.join("ca.key")).unwrap();
    // Again: refused, and the CA is untouched.
    let o = sluice(&["tls", "init", "--dir", ds]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("exists already"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("ca.key")).unwrap(), before);

    let o = sluice(&[
        "tls",
        "node",
        "--ca-dir",
        ds,
        "--name",
        "coord-1",
        "--dns",
        "coord.example",
        "--ip",
        "10.0.0.5",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&d.join("coord-1.key")), 0o600);
    let ca = X509::from_pem(&std::fs::read(d.join("ca.pem")).unwrap()).unwrap();
    let cert = X509::from_pem(&std::fs::read(d.join("coord-1.pem")).unwrap()).unwrap();
    // Signed by the CA, names the host and the address, holds the key.
    assert!(cert.verify(&ca.public_key().unwrap()).unwrap());
    let names: Vec<String> = cert
        .subject_alt_names()
        .unwrap()
        .iter()
        .map(|n| {
            n.dnsname()
                .map(str::to_string)
                .or_else(|| n.ipaddress().map(|ip| format!("{ip:?}")))
                .unwrap_or_default()
        })
        .collect();
    assert!(names.iter().any(|n| n == "coord.example"), "{names:?}");
    assert!(names.iter().any(|n| n == "[10, 0, 0, 5]"), "{names:?}");
    let key = PKey::private_key_from_pem(&std::fs::read(d.join("coord-1.key")).unwrap()).unwrap();
    assert!(cert.public_key().unwrap().public_eq(&key));
    // A node certificate without any host is refused, as is a name that
    // is not a file name.
    let o = sluice(&["tls", "node", "--ca-dir", ds, "--name", "w"]);
    assert!(!o.status.success());
    let o = sluice(&[
        "tls", "node", "--ca-dir", ds, "--name", "../x", "--dns", "x",
    ]);
    assert!(!o.status.success());
    // The help says what the files are for.
    let help = String::from_utf8_lossy(&sluice(&["tls", "init", "--help"]).stdout).to_string();
    assert!(
        help.contains("--ca-cert") && help.contains("--tls-ca-key"),
        "{help}"
    );
}

#[test]
fn a_coordinator_without_tls_needs_the_plaintext_flag_and_then_warns() {
    let dir = tempfile::tempdir().unwrap();
    let o = sluice(&[
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--insecure-plaintext") && err.contains("sluice tls"),
        "{err}"
    );
    let log = dir.path().join("plain.log");
    let mut child = Command::new(sluice_bin())
        .args(["coordinator", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("d"))
        .arg("--insecure-plaintext")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline && !text.contains("coordinator listening") {
        std::thread::sleep(Duration::from_millis(100));
        text = std::fs::read_to_string(&log).unwrap_or_default();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("plaintext")),
        "{text}"
    );
}

/// A raw HTTPS GET of `path` (client certificate `client`: (cert, key)
/// PEM files); the status code, or the error.
fn get(
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    token: Option<&str>,
    path: &str,
) -> Result<u16, String> {
    let mut c = SslConnector::builder(SslMethod::tls_client()).unwrap();
    c.set_ca_file(ca).unwrap();
    c.set_verify(SslVerifyMode::PEER);
    if let Some((cert, key)) = client {
        c.set_certificate_chain_file(cert).unwrap();
        c.set_private_key_file(key, SslFiletype::PEM).unwrap();
    }
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut s = c
        .build()
        .connect("127.0.0.1", tcp)
        .map_err(|e| format!("handshake: {e}"))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))
}

#[test]
fn the_rest_api_refuses_a_client_certificate_of_another_ca_and_still_wants_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cluster = LocalCluster::start(LocalClusterConfig {
        sluice: sluice_bin(),
        dir: dir.path().join("cluster"),
        host: "127.0.0.1".into(),
        coordinator_args: Vec::new(),
        workers: Vec::new(),
        slots: 1,
        security: Some(LocalSecurity { token_file: token }),
        plaintext: false,
        coordinators: 1,
    })
    .expect("coordinator starts");
    assert!(cluster.url().starts_with("https://"));
    let tls = cluster.tls().unwrap();
    let ca = tls.ca.cert.clone();
    let cas = dir.path().join("cluster/tls");
    // A worker certificate of the cluster CA, and one of another CA.
    let ours = sluice(&[
        "tls",
        "node",
        "--ca-dir",
        cas.to_str().unwrap(),
        "--name",
        "worker-1",
        "--ip",
        "127.0.0.1",
    ]);
    assert!(
        ours.status.success(),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    let other = dir.path().join("other");
    let os = other.to_str().unwrap();
    assert!(sluice(&["tls", "init", "--dir", os]).status.success());
    assert!(sluice(&[
        "tls",
        "node",
        "--ca-dir",
        os,
        "--name",
        "intruder",
        "--ip",
        "127.0.0.1"
    ])
    .status
    .success());
    let port = cluster.port();
    let path = "/api/v1/jobs";
    let (wc, wk) = (cas.join("worker-1.pem"), cas.join("worker-1.key"));
    let (ic, ik) = (other.join("intruder.pem"), other.join("intruder.key"));

    // Another CA's certificate: no answer at all, token or not.
    let r = get(port, &ca, Some((&ic, &ik)), Some(TOKEN), path);
    assert!(r.is_err(), "{r:?}");
    // The cluster CA's: the token decides.
    assert_eq!(get(port, &ca, Some((&wc, &wk)), Some(TOKEN), path), Ok(200));
    assert_eq!(
        get(port, &ca, Some((&wc, &wk)), Some("guessed"), path),
        Ok(401)
    );
    // No certificate: the token decides.
    assert_eq!(get(port, &ca, None, Some(TOKEN), path), Ok(200));
    assert_eq!(get(port, &ca, None, None, path), Ok(401));
    // A client that does not trust the cluster CA refuses the server.
    let r = get(port, &other.join("ca.pem"), None, Some(TOKEN), path);
    assert!(r.is_err(), "{r:?}");
}
