//! The exchange with mutual TLS, driven as an attacker would: a peer
//! without TLS, without a certificate, with a certificate of another CA,
//! with the cluster CA's certificate of another attempt or of a node, and
//! with the right certificate but a wrong secret is refused; silent and
//! garbled connections do not keep the real peer out; and the real peer's
//! batches arrive exactly as they were sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use sluice_engine::exchange::frame::{encode, ChannelId, Frame, Hello, VERSION};
use sluice_engine::exchange::tcp::{
    connect, ConnectionSpec, ExchangeConfig, NetListener, PeerSpecs,
};
use sluice_engine::exchange::ChannelSender;
use sluice_engine::testing::TestPki;
use sluice_engine::tls::ClusterTls;
use sluice_engine::StreamMessage;

const JOB: &str = "job-7";
const ATTEMPT: u64 = 3;
const SECRET: &str = "the-attempt-secret";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
}

fn config(node: &str, tls: ClusterTls, secret: &str, attempt: u64) -> ExchangeConfig {
    let mut c = ExchangeConfig::new(JOB, attempt, node);
    c.secret = secret.into();
    c.tls = Some(tls);
    c.handshake_timeout = Duration::from_secs(5);
    c
}

fn listener(p: &TestPki) -> NetListener {
    listener_with(p, Duration::from_secs(5))
}

fn listener_with(p: &TestPki, handshake_timeout: Duration) -> NetListener {
    let cert = p.signer.attempt(JOB, ATTEMPT, DAY).unwrap();
    let mut cfg = config("executor-0", p.identity(&cert), SECRET, ATTEMPT);
    cfg.handshake_timeout = handshake_timeout;
    NetListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap(), cfg).unwrap()
}

fn spec_in() -> ConnectionSpec {
    ConnectionSpec::new().inbound(ChannelId(0), Some(schema()))
}

fn spec_out() -> ConnectionSpec {
    ConnectionSpec::new().outbound(ChannelId(0))
}

/// Accepts once on a thread; returns the refusal's text (or "accepted").
fn accept_once(l: NetListener) -> thread::JoinHandle<String> {
    thread::spawn(move || match l.accept(|_| Ok(spec_in())) {
        Ok(_) => "accepted".to_string(),
        Err(e) => e.to_string(),
    })
}

#[test]
fn the_real_peer_gets_its_batches_through_tls_exactly() {
    let p = TestPki::new("cluster");
    let l = listener(&p);
    let addr = l.local_addr().unwrap();
    let server = thread::spawn(move || l.accept(|_| Ok(spec_in())).unwrap());
    let cert = p.signer.attempt(JOB, ATTEMPT, DAY).unwrap();
    let mut a = connect(
        addr,
        &config("executor-1", p.identity(&cert), SECRET, ATTEMPT),
        spec_out(),
    )
    .unwrap();
    let mut b = server.join().unwrap();
    let tx = a.take_sender(ChannelId(0)).unwrap();
    let rx = b.take_receiver(ChannelId(0)).unwrap();
    let sent: Vec<i64> = (0..200_000).collect();
    let sender = thread::spawn(move || {
        for chunk in sent.chunks(8192) {
            let batch =
                RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(chunk.to_vec()))])
                    .unwrap();
            tx.send(StreamMessage::Batch(batch)).unwrap();
        }
        tx.send(StreamMessage::EndOfStream).unwrap();
    });
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            StreamMessage::Batch(b) => got.extend(
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .iter()
                    .copied(),
            ),
            StreamMessage::EndOfStream => break,
            _ => {}
        }
    }
    sender.join().unwrap();
    assert_eq!(got, (0..200_000).collect::<Vec<i64>>());
    assert!(a.handle().wait(Duration::from_secs(30)));
    assert!(b.handle().wait(Duration::from_secs(30)));
    assert!(a.handle().failure().is_none(), "{:?}", a.handle().failure());
    assert!(b.handle().failure().is_none(), "{:?}", b.handle().failure());
}

#[test]
fn a_peer_without_tls_is_refused() {
    let p = TestPki::new("cluster");
    let l = listener(&p);
    let addr = l.local_addr().unwrap();
    let server = accept_once(l);
    // The hello a plaintext executor would send, with the right secret.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut buf = Vec::new();
    encode(
        &Frame::Hello(Hello {
            version: VERSION,
            job: JOB.into(),
            attempt: ATTEMPT,
            peer: "executor-1".into(),
            secret: SECRET.into(),
        }),
        &mut buf,
    );
    let _ = s.write_all(&buf);
    let refused = server.join().unwrap();
    assert!(refused.contains("TLS handshake"), "{refused}");
    // Whatever came back is no welcome: the connection is closed.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    assert!(!back.windows(7).any(|w| w == b"Welcome"), "{back:?}");
}

#[test]
fn a_tls_peer_without_a_certificate_is_refused() {
    let p = TestPki::new("cluster");
    let l = listener(&p);
    let addr = l.local_addr().unwrap();
    let server = accept_once(l);
    let mut c = SslConnector::builder(SslMethod::tls_client()).unwrap();
    let mut store = openssl::x509::store::X509StoreBuilder::new().unwrap();
    store
        .add_cert(X509::from_pem(p.ca.cert.as_bytes()).unwrap())
        .unwrap();
    c.set_cert_store(store.build());
    c.set_verify(SslVerifyMode::PEER);
    let c = c.build();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conf = c.configure().unwrap();
    conf.set_verify_hostname(false);
    // In TLS 1.3 the client may finish before the server checks it.
    if let Ok(mut s) = conf.connect("sluice", tcp) {
        let _ = s.write_all(b"hello?");
        let mut buf = [0u8; 16];
        assert!(!matches!(s.read(&mut buf), Ok(n) if n > 0));
    }
    let refused = server.join().unwrap();
    assert!(refused.contains("TLS handshake"), "{refused}");
    assert!(refused.contains("certificate"), "{refused}");
}

#[test]
fn a_certificate_of_another_ca_is_refused() {
    let p = TestPki::new("cluster");
    let other = TestPki::new("another cluster");
    let l = listener(&p);
    let addr = l.local_addr().unwrap();
    let server = accept_once(l);
    // Names the right attempt and trusts the right CA, but another CA
    // signed it.
    let forged = other.signer.attempt(JOB, ATTEMPT, DAY).unwrap();
    let tls = ClusterTls::from_pem(
        p.ca.cert.as_bytes(),
        forged.cert.as_bytes(),
        forged.key.as_bytes(),
    )
    .unwrap();
    let r = connect(
        addr,
        &config("executor-1", tls, SECRET, ATTEMPT),
        spec_out(),
    );
    assert!(r.is_err(), "a forged peer connected");
    let refused = server.join().unwrap();
    assert!(refused.contains("TLS handshake"), "{refused}");
}

#[test]
fn certificates_of_another_attempt_or_a_node_are_refused_even_with_the_secret() {
    let p = TestPki::new("cluster");
    for (what, cert) in [
        (
            "another attempt",
            p.signer.attempt(JOB, ATTEMPT + 1, DAY).unwrap(),
        ),
        (
            "another job",
            p.signer.attempt("job-8", ATTEMPT, DAY).unwrap(),
        ),
        (
            "a node",
            p.signer
                .node("worker-1", &[], &["127.0.0.1".parse().unwrap()], DAY)
                .unwrap(),
        ),
    ] {
        let l = listener(&p);
        let addr = l.local_addr().unwrap();
        let server = accept_once(l);
        let r = connect(
            addr,
            &config("executor-1", p.identity(&cert), SECRET, ATTEMPT),
            spec_out(),
        );
        assert!(r.is_err(), "{what}: connected");
        let refused = server.join().unwrap();
        assert!(refused.contains("certificate"), "{what}: {refused}");
    }
}

#[test]
fn the_right_certificate_with_a_wrong_secret_is_refused() {
    let p = TestPki::new("cluster");
    let l = listener(&p);
    let addr = l.local_addr().unwrap();
    let server = accept_once(l);
    let cert = p.signer.attempt(JOB, ATTEMPT, DAY).unwrap();
    let r = connect(
        addr,
        &config("executor-1", p.identity(&cert), "guessed", ATTEMPT),
        spec_out(),
    );
    let err = r.err().expect("a wrong secret connected").to_string();
    assert!(err.contains("wrong secret"), "{err}");
    let refused = server.join().unwrap();
    assert!(refused.contains("wrong secret"), "{refused}");
}

#[test]
fn silent_and_garbled_connections_do_not_keep_the_real_peer_out() {
    let p = TestPki::new("cluster");
    // Far longer than the test waits for the real peer: the strangers'
    // handshakes are still pending when it gets in.
    let l = listener_with(&p, Duration::from_secs(120));
    let addr = l.local_addr().unwrap();
    let cert = p.signer.attempt(JOB, ATTEMPT, DAY).unwrap();
    let l = Arc::new(l);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::unbounded();
    let acceptor = {
        let (l, stop) = (l.clone(), stop.clone());
        thread::spawn(move || {
            let spec_for: PeerSpecs =
                Arc::new(|_h: &Hello| Ok::<_, sluice_engine::Error>((1, spec_in())));
            l.accept_until(spec_for, &stop, &tx)
        })
    };
    // A silent connection, one that sends a byte and stops, and one that
    // sends garbage, all before the real peer.
    let silent = TcpStream::connect(addr).unwrap();
    let mut trickle = TcpStream::connect(addr).unwrap();
    trickle.write_all(&[0x16]).unwrap();
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(&[0xAB; 4096]).unwrap();
    thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    let a = connect(
        addr,
        &config("executor-1", p.identity(&cert), SECRET, ATTEMPT),
        spec_out(),
    )
    .unwrap();
    let (j, _b) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(j, 1);
    // The silent strangers' 120 s handshakes have not run out: the real
    // peer got in beside them, not after them.
    assert!(started.elapsed() < Duration::from_secs(120));
    let mut probe = [0u8; 1];
    silent
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(
        matches!((&silent).read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the silent connection is still waiting"
    );
    drop(a);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = TcpStream::connect(addr);
    acceptor.join().unwrap();
}
