//! The control server with mutual TLS, under attack: a client without
//! TLS, without a certificate, with a certificate of another CA, with the
//! cluster CA's certificate of another attempt or of a node, and with the
//! right certificate but a wrong secret is refused; silent connections
//! (TCP or half-done TLS) do not keep the real executor out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use sluice_cluster::attempt::{AttemptEvent, ControlServer, MAX_UNPROVEN};
use sluice_engine::testing::TestPki;
use sluice_engine::tls::{ClusterTls, SecureStream};
use sluice_protocol::control::{read_frame, write_frame, ToCoordinator, ToExecutor};

mod control_common;
use control_common::{closed_within, start_attempt, ATTEMPT, JOB, SECRET};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn server(p: &TestPki) -> (ControlServer, sluice_cluster::attempt::AttemptHandle) {
    let node = p
        .signer
        .node("coordinator", &[], &["127.0.0.1".parse().unwrap()], DAY)
        .unwrap();
    let server =
        ControlServer::bind_with("127.0.0.1:0".parse().unwrap(), Some(p.identity(&node))).unwrap();
    let handle = start_attempt(&server);
    (server, handle)
}

fn hello(secret: &str) -> ToCoordinator {
    // A control server outside a Raft group serves term 0.
    control_common::hello(sluice_protocol::PROTOCOL_VERSION, JOB, secret, 0)
}

/// Dials as an executor would (checking the server's certificate names
/// 127.0.0.1), says `hello`, and returns the first answer (`None`: the
/// server closed without one).
fn dial(addr: SocketAddr, tls: &ClusterTls, secret: &str) -> Option<ToExecutor> {
    let tcp = TcpStream::connect(addr).unwrap();
    let s: SecureStream = match tls.connect(
        tcp,
        Some("127.0.0.1"),
        Instant::now() + Duration::from_secs(10),
    ) {
        Ok(s) => s,
        Err(_) => return None,
    };
    s.socket()
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut w = s.writer().unwrap();
    if write_frame(&mut w, &hello(secret)).is_err() {
        return None;
    }
    let mut r = s.reader().unwrap();
    read_frame(&mut r).ok().flatten()
}

fn refused(answer: &Option<ToExecutor>) -> bool {
    !matches!(answer, Some(ToExecutor::Peers { .. }))
}

#[test]
fn the_real_executor_gets_in_over_tls() {
    let p = TestPki::new("cluster");
    let (server, handle) = server(&p);
    let cert = p.signer.attempt(JOB, ATTEMPT, DAY).unwrap();
    let answer = dial(server.local_addr(), &p.identity(&cert), SECRET);
    assert!(
        matches!(answer, Some(ToExecutor::Peers { .. })),
        "{answer:?}"
    );
    assert_eq!(
        handle
            .events()
            .recv_timeout(Duration::from_secs(5))
            .unwrap(),
        AttemptEvent::Running
    );
    handle.cancel("test over");
}

#[test]
fn a_plaintext_hello_is_refused() {
    let p = TestPki::new("cluster");
    let (server, handle) = server(&p);
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write_frame(&mut s, &hello(SECRET)).unwrap();
    // Not a frame back: a TLS alert at most, then the close.
    let answer: Result<Option<ToExecutor>, _> = read_frame(&mut s);
    assert!(!matches!(answer, Ok(Some(_))), "{answer:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.refused_unknown() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.refused_unknown() >= 1);
    // The attempt still waits for its executor.
    let cert = p.signer.attempt(JOB, ATTEMPT, DAY).unwrap();
    let answer = dial(server.local_addr(), &p.identity(&cert), SECRET);
    assert!(
        matches!(answer, Some(ToExecutor::Peers { .. })),
        "{answer:?}"
    );
    handle.cancel("test over");
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let p = TestPki::new("cluster");
    let (server, handle) = server(&p);
    let mut c = SslConnector::builder(SslMethod::tls_client()).unwrap();
    let mut store = openssl::x509::store::X509StoreBuilder::new().unwrap();
    store
        .add_cert(X509::from_pem(p.ca.cert.as_bytes()).unwrap())
        .unwrap();
    c.set_cert_store(store.build());
    c.set_verify(SslVerifyMode::PEER);
    let tcp = TcpStream::connect(server.local_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The server's certificate is fine; ours is missing. In TLS 1.3 the
    // client may finish before the server refuses it.
    if let Ok(mut s) = c.build().connect("127.0.0.1", tcp) {
        let mut frame = Vec::new();
        let body = serde_json::to_vec(&hello(SECRET)).unwrap();
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let _ = s.write_all(&frame);
        let mut buf = [0u8; 64];
        assert!(!matches!(s.read(&mut buf), Ok(n) if n > 0), "got an answer");
    }
    handle.cancel("test over");
}

#[test]
fn a_certificate_of_another_ca_is_refused() {
    let p = TestPki::new("cluster");
    let other = TestPki::new("another cluster");
    let (server, handle) = server(&p);
    // Right attempt, right secret, trusts the right CA; another CA signed it.
    let forged = other.signer.attempt(JOB, ATTEMPT, DAY).unwrap();
    let tls = ClusterTls::from_pem(
        p.ca.cert.as_bytes(),
        forged.cert.as_bytes(),
        forged.key.as_bytes(),
    )
    .unwrap();
    assert!(refused(&dial(server.local_addr(), &tls, SECRET)));
    handle.cancel("test over");
}

#[test]
fn the_cluster_cas_certificates_of_another_attempt_or_a_node_are_refused() {
    let p = TestPki::new("cluster");
    let (server, handle) = server(&p);
    for (what, cert) in [
        (
            "another attempt",
            p.signer.attempt(JOB, ATTEMPT + 1, DAY).unwrap(),
        ),
        (
            "another job",
            p.signer.attempt("job-2", ATTEMPT, DAY).unwrap(),
        ),
        (
            "a node",
            p.signer
                .node("worker", &[], &["127.0.0.1".parse().unwrap()], DAY)
                .unwrap(),
        ),
    ] {
        let answer = dial(server.local_addr(), &p.identity(&cert), SECRET);
        match &answer {
            Some(ToExecutor::Rejected { reason }) => {
                assert!(reason.contains("certificate"), "{what}: {reason}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    handle.cancel("test over");
}

#[test]
fn the_right_certificate_with_a_wrong_secret_is_refused() {
    let p = TestPki::new("cluster");
    let (server, handle) = server(&p);
    let cert = p.signer.attempt(JOB, ATTEMPT, DAY).unwrap();
    match dial(server.local_addr(), &p.identity(&cert), "guessed") {
        Some(ToExecutor::Rejected { reason }) => {
            assert!(reason.contains("wrong secret"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    handle.cancel("test over");
}

#[test]
fn an_executor_checks_the_coordinators_certificate() {
    // A server with a certificate of the right CA for another host, and
    // one of another CA: the executor's dial refuses both.
    let p = TestPki::new("cluster");
    let other = TestPki::new("another cluster");
    for (what, node, trust) in [
        (
            "another host",
            p.signer
                .node("elsewhere", &["elsewhere.example".into()], &[], DAY)
                .unwrap(),
            &p,
        ),
        (
            "another CA",
            other
                .signer
                .node("coordinator", &[], &["127.0.0.1".parse().unwrap()], DAY)
                .unwrap(),
            &other,
        ),
    ] {
        let server =
            ControlServer::bind_with("127.0.0.1:0".parse().unwrap(), Some(trust.identity(&node)))
                .unwrap();
        let cert = p.signer.attempt(JOB, ATTEMPT, DAY).unwrap();
        let tcp = TcpStream::connect(server.local_addr()).unwrap();
        let r = p.identity(&cert).connect(
            tcp,
            Some("127.0.0.1"),
            Instant::now() + Duration::from_secs(10),
        );
        assert!(r.is_err(), "{what}: the executor accepted the server");
    }
}

#[test]
fn silent_connections_cannot_keep_an_executor_out() {
    let p = TestPki::new("cluster");
    let (server, handle) = server(&p);
    let addr = server.local_addr();
    // More silent strangers than the server lets wait, some of them
    // halfway into a TLS handshake.
    let mut silent: Vec<TcpStream> = (0..MAX_UNPROVEN + 8)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            if i % 2 == 1 {
                s.write_all(&[0x16, 0x03, 0x01]).unwrap();
            }
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for s in silent.iter_mut().take(8) {
        let closed = closed_within(s, Duration::from_secs(5));
        assert!(closed, "an old silent connection stays open");
    }
    let cert = p.signer.attempt(JOB, ATTEMPT, DAY).unwrap();
    let answer = dial(addr, &p.identity(&cert), SECRET);
    assert!(
        matches!(answer, Some(ToExecutor::Peers { .. })),
        "{answer:?}"
    );
    assert!(server.refused_unknown() >= 8);
    handle.cancel("test over");
}
