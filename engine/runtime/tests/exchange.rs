//! The TCP exchange over real loopback sockets: exact round trips, many
//! channels on one connection, per-channel backpressure (a stalled channel
//! does not stop another, whose barriers arrive), bounded sending, fencing
//! of stale attempts, and peers sending garbage or truncated frames.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use crossbeam_channel::Receiver;
use sluice_engine::data::{Barrier, BarrierKind, CheckpointId};
use sluice_engine::exchange::frame::{
    encode, BatchEncoder, ChannelId, Frame, FrameDecoder, Hello, VERSION,
};
use sluice_engine::exchange::tcp::{
    connect, Connection, ConnectionSpec, ExchangeConfig, NetListener,
};
use sluice_engine::exchange::ChannelSender;
use sluice_engine::{Error, StreamMessage, Watermark};

/// Generous bound for things that must happen; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(30);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("tag", DataType::Utf8, true),
    ]))
}

fn batch(channel: u32, seq: i64, rows: usize) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(
                (0..rows as i64).map(|i| seq * 1_000_000 + i),
            )),
            Arc::new(StringArray::from_iter((0..rows).map(|i| {
                (i % 5 != 0).then(|| format!("c{channel}-s{seq}-r{i}"))
            }))),
        ],
    )
    .unwrap()
}

/// The attempt's secret every peer of these tests shares.
const SECRET: &str = "s3cret";

fn config(attempt: u64, node: &str) -> ExchangeConfig {
    let mut c = ExchangeConfig::new("job-1", attempt, node);
    c.secret = SECRET.into();
    c
}

fn listener(cfg: ExchangeConfig) -> (NetListener, SocketAddr) {
    let l = NetListener::bind("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// A connected pair: (dialer, acceptor), each with its own spec.
fn pair(dialer: ConnectionSpec, acceptor: ConnectionSpec) -> (Connection, Connection) {
    let (l, addr) = listener(config(1, "worker-b"));
    let server = thread::spawn(move || {
        l.accept(|h| {
            assert_eq!(h.peer, "worker-a");
            Ok(acceptor)
        })
        .unwrap()
    });
    let a = connect(addr, &config(1, "worker-a"), dialer).unwrap();
    (a, server.join().unwrap())
}

/// A connected pair whose dialer sends on `channels` and whose acceptor
/// receives them, each carrying batches of `schema()`.
fn one_way(channels: &[ChannelId]) -> (Connection, Connection) {
    let mut out = ConnectionSpec::new();
    let mut inb = ConnectionSpec::new();
    for &c in channels {
        out = out.outbound(c);
        inb = inb.inbound(c, Some(schema()));
    }
    pair(out, inb)
}

/// Both ends of a connection finished without an error.
fn assert_closed_cleanly(a: &Connection, b: &Connection) {
    assert!(a.handle().wait(PATIENCE) && b.handle().wait(PATIENCE));
    assert!(a.handle().failure().is_none() && b.handle().failure().is_none());
}

fn recv(rx: &Receiver<StreamMessage>) -> StreamMessage {
    rx.recv_timeout(PATIENCE)
        .expect("message within the patience bound")
}

fn assert_same(got: &StreamMessage, want: &StreamMessage) {
    match (got, want) {
        (StreamMessage::Batch(x), StreamMessage::Batch(y)) => assert_eq!(x, y),
        (StreamMessage::Watermark(x), StreamMessage::Watermark(y)) => assert_eq!(x, y),
        (StreamMessage::Barrier(x), StreamMessage::Barrier(y)) => assert_eq!(x, y),
        (StreamMessage::EndOfStream, StreamMessage::EndOfStream) => {}
        (g, w) => panic!("got {g:?}, want {w:?}"),
    }
}

fn barrier(id: u64) -> StreamMessage {
    StreamMessage::Barrier(Barrier {
        id: CheckpointId(id),
        timestamp: 1_700_000_000_000 + id as i64,
        kind: BarrierKind::Checkpoint,
    })
}

#[test]
fn every_message_kind_round_trips_both_ways() {
    let c = ChannelId(7);
    let (mut a, mut b) = pair(
        ConnectionSpec::new().outbound(c).inbound(c, Some(schema())),
        ConnectionSpec::new().outbound(c).inbound(c, Some(schema())),
    );
    let msgs = vec![
        StreamMessage::Batch(batch(7, 0, 1000)),
        StreamMessage::Watermark(Watermark::EventTime(123)),
        StreamMessage::Batch(batch(7, 1, 0)),
        barrier(1),
        StreamMessage::Watermark(Watermark::Idle),
        StreamMessage::Batch(batch(7, 2, 3)),
        StreamMessage::Barrier(Barrier {
            id: CheckpointId(2),
            timestamp: -1,
            kind: BarrierKind::EndOfInput,
        }),
        StreamMessage::Watermark(Watermark::MAX),
        StreamMessage::EndOfStream,
    ];
    let (a_tx, b_tx) = (a.take_sender(c).unwrap(), b.take_sender(c).unwrap());
    let (a_rx, b_rx) = (a.take_receiver(c).unwrap(), b.take_receiver(c).unwrap());
    let sent = msgs.clone();
    let t = thread::spawn(move || {
        for m in sent {
            a_tx.send(m).unwrap();
        }
    });
    let sent = msgs.clone();
    let u = thread::spawn(move || {
        for m in sent {
            b_tx.send(m).unwrap();
        }
    });
    for want in &msgs {
        assert_same(&recv(&b_rx), want);
        assert_same(&recv(&a_rx), want);
    }
    t.join().unwrap();
    u.join().unwrap();
    // Both directions ended: both connections end cleanly.
    for h in [a.handle(), b.handle()] {
        assert!(h.wait(PATIENCE));
        assert!(h.failure().is_none(), "{:?}", h.failure());
    }
}

/// The process's exchange traffic counts what the connections wrote and
/// read: a 100,000-row batch moves at least its values' bytes each way.
#[test]
fn traffic_counts_the_bytes_written_and_read() {
    let c = ChannelId(3);
    let before = sluice_engine::exchange::tcp::traffic();
    let (mut a, mut b) = one_way(&[c]);
    let big = batch(3, 0, 100_000);
    let values = big.get_array_memory_size() as u64 / 2;
    let tx = a.take_sender(c).unwrap();
    let rx = b.take_receiver(c).unwrap();
    tx.send(StreamMessage::Batch(big)).unwrap();
    tx.send(StreamMessage::EndOfStream).unwrap();
    assert!(matches!(recv(&rx), StreamMessage::Batch(_)));
    assert!(matches!(recv(&rx), StreamMessage::EndOfStream));
    drop(tx);
    assert_closed_cleanly(&a, &b);
    let after = sluice_engine::exchange::tcp::traffic();
    // Other tests of this binary may add to the counters, never take.
    assert!(
        after.0 - before.0 >= values,
        "{before:?} → {after:?}, {values}"
    );
    assert!(
        after.1 - before.1 >= values,
        "{before:?} → {after:?}, {values}"
    );
}

#[test]
fn many_channels_share_one_connection_in_order() {
    const CHANNELS: u32 = 24;
    const BATCHES: i64 = 60;
    let channels: Vec<ChannelId> = (0..CHANNELS).map(ChannelId).collect();
    let (mut a, mut b) = one_way(&channels);
    let senders: Vec<_> = (0..CHANNELS)
        .map(|c| {
            let tx = a.take_sender(ChannelId(c)).unwrap();
            thread::spawn(move || {
                for s in 0..BATCHES {
                    tx.send(StreamMessage::Batch(batch(c, s, 1 + (s as usize * 7) % 50)))
                        .unwrap();
                    if s % 10 == 9 {
                        tx.send(barrier(s as u64)).unwrap();
                    }
                }
                tx.send(StreamMessage::EndOfStream).unwrap();
            })
        })
        .collect();
    // Read every channel concurrently, as task loops would.
    let readers: Vec<_> = (0..CHANNELS)
        .map(|c| {
            let rx = b.take_receiver(ChannelId(c)).unwrap();
            thread::spawn(move || {
                for s in 0..BATCHES {
                    assert_same(
                        &recv(&rx),
                        &StreamMessage::Batch(batch(c, s, 1 + (s as usize * 7) % 50)),
                    );
                    if s % 10 == 9 {
                        assert_same(&recv(&rx), &barrier(s as u64));
                    }
                }
                assert_same(&recv(&rx), &StreamMessage::EndOfStream);
            })
        })
        .collect();
    for t in senders.into_iter().chain(readers) {
        t.join().unwrap();
    }
    assert_closed_cleanly(&a, &b);
}

#[test]
fn a_stalled_channel_blocks_only_itself() {
    let (slow, fast) = (ChannelId(1), ChannelId(2));
    let (mut a, mut b) = one_way(&[slow, fast]);
    let capacity = ExchangeConfig::new("j", 0, "n").channel_capacity;
    let slow_tx = a.take_sender(slow).unwrap();
    let fast_tx = a.take_sender(fast).unwrap();
    let slow_rx = b.take_receiver(slow).unwrap();
    let fast_rx = b.take_receiver(fast).unwrap();

    // The slow channel's receiver reads nothing for now.
    let slow_sent = Arc::new(AtomicUsize::new(0));
    let counter = slow_sent.clone();
    let slow_thread = thread::spawn(move || {
        for s in 0..100 {
            slow_tx
                .send(StreamMessage::Batch(batch(1, s, 100)))
                .unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
        }
        slow_tx.send(barrier(1)).unwrap();
        slow_tx.send(StreamMessage::EndOfStream).unwrap();
        slow_tx
    });
    // The fast channel moves many more messages than the slow one may
    // hold, and its barrier arrives, while the slow one stays stuck.
    for s in 0..300 {
        fast_tx
            .send(StreamMessage::Batch(batch(2, s, 100)))
            .unwrap();
        assert_same(&recv(&fast_rx), &StreamMessage::Batch(batch(2, s, 100)));
    }
    fast_tx.send(barrier(1)).unwrap();
    assert_same(&recv(&fast_rx), &barrier(1));
    fast_tx.send(StreamMessage::EndOfStream).unwrap();
    assert_same(&recv(&fast_rx), &StreamMessage::EndOfStream);

    // Memory stays bounded: the slow sender sent exactly its credit (the
    // receiver's queue) and is blocked on the next message.
    let deadline = std::time::Instant::now() + PATIENCE;
    while slow_sent.load(Ordering::SeqCst) < capacity && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(slow_sent.load(Ordering::SeqCst), capacity);
    assert_eq!(slow_rx.len(), capacity);
    assert!(!slow_thread.is_finished());

    // Draining the slow channel releases its sender, in order.
    for s in 0..100 {
        assert_same(&recv(&slow_rx), &StreamMessage::Batch(batch(1, s, 100)));
    }
    assert_same(&recv(&slow_rx), &barrier(1));
    assert_same(&recv(&slow_rx), &StreamMessage::EndOfStream);
    slow_thread.join().unwrap();
    assert!(a.handle().wait(PATIENCE) && b.handle().wait(PATIENCE));
    assert!(a.handle().failure().is_none());
}

#[test]
fn backlog_counts_unconsumed_messages() {
    let c = ChannelId(0);
    let (mut a, mut b) = pair(
        ConnectionSpec::new().outbound(c),
        ConnectionSpec::new().inbound(c, None),
    );
    let tx = a.take_sender(c).unwrap();
    let rx = b.take_receiver(c).unwrap();
    for i in 0..5 {
        tx.send(StreamMessage::Watermark(Watermark::EventTime(i)))
            .unwrap();
    }
    assert_eq!(tx.backlog(), 5);
    for _ in 0..5 {
        recv(&rx);
    }
    // Credits come back once the receiver's queue drained.
    let deadline = std::time::Instant::now() + PATIENCE;
    while tx.backlog() > 0 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(tx.backlog(), 0);
}

#[test]
fn stale_attempts_other_jobs_and_wrong_secrets_are_refused() {
    let (l, addr) = listener(config(3, "worker-b"));
    let server = thread::spawn(move || {
        let mut errors = Vec::new();
        for _ in 0..4 {
            match l.accept(|_| Ok(ConnectionSpec::new())) {
                Ok(_) => errors.push(None),
                Err(e) => errors.push(Some(e.to_string())),
            }
        }
        errors
    });
    let stale = connect(addr, &config(2, "worker-a"), ConnectionSpec::new()).err();
    let e = stale.expect("stale attempt refused").to_string();
    assert!(
        e.contains("refused") && e.contains("stale attempt 2"),
        "{e}"
    );
    let other = ExchangeConfig::new("job-2", 3, "worker-a");
    let e = connect(addr, &other, ConnectionSpec::new())
        .err()
        .expect("other job refused")
        .to_string();
    assert!(e.contains("job-2"), "{e}");
    let mut intruder = config(3, "worker-a");
    intruder.secret = "guessed".into();
    let e = connect(addr, &intruder, ConnectionSpec::new())
        .err()
        .expect("wrong secret refused")
        .to_string();
    assert!(e.contains("wrong secret"), "{e}");
    // The current attempt still gets in.
    connect(addr, &config(3, "worker-a"), ConnectionSpec::new()).unwrap();
    let results = server.join().unwrap();
    assert!(results[0].as_deref().unwrap().contains("stale attempt"));
    assert!(results[1].is_some());
    assert!(results[2].as_deref().unwrap().contains("wrong secret"));
    assert!(results[3].is_none());
}

/// Dials like a peer would, but by hand, so the test can then misbehave.
fn raw_peer(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = Vec::new();
    encode(
        &Frame::Hello(Hello {
            version: VERSION,
            job: "job-1".into(),
            attempt: 1,
            peer: "rogue".into(),
            secret: SECRET.into(),
        }),
        &mut buf,
    );
    s.write_all(&buf).unwrap();
    // Wait for the welcome and the first credit grant, so what the test
    // sends next meets a known credit.
    let mut d = FrameDecoder::new(1 << 20);
    let mut frames = Vec::new();
    let mut b = [0u8; 256];
    while !frames.iter().any(|f| matches!(f, Frame::Credit { .. })) {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0);
        d.feed(&b[..n], &mut frames).unwrap();
    }
    assert_eq!(frames[0], Frame::Welcome);
    s
}

/// Reads frames until the peer closes; returns the error frame's reason.
fn error_reason(s: &mut TcpStream) -> Option<String> {
    let mut d = FrameDecoder::new(1 << 20);
    let mut frames = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if d.feed(&b[..n], &mut frames).is_err() {
                    break;
                }
            }
        }
    }
    frames.into_iter().find_map(|f| match f {
        Frame::Error(r) => Some(r),
        _ => None,
    })
}

/// Accepts one raw peer; returns its connection and the inbound receiver.
fn accept_rogue(l: &NetListener, c: ChannelId) -> (Connection, Receiver<StreamMessage>) {
    let mut conn = l
        .accept(|h| {
            assert_eq!(h.peer, "rogue");
            Ok(ConnectionSpec::new().inbound(c, Some(schema())))
        })
        .unwrap();
    let rx = conn.take_receiver(c).unwrap();
    (conn, rx)
}

#[test]
fn garbage_closes_that_connection_and_the_listener_survives() {
    let c = ChannelId(0);
    let (l, addr) = listener(config(1, "worker-b"));
    let client = thread::spawn(move || {
        let mut s = raw_peer(addr);
        // A valid watermark, then bytes that are no frame at all.
        let mut buf = Vec::new();
        encode(
            &Frame::Data {
                channel: c,
                payload: sluice_engine::exchange::frame::Payload::Watermark(Watermark::EventTime(
                    5,
                )),
            },
            &mut buf,
        );
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        s.write_all(&buf).unwrap();
        error_reason(&mut s)
    });
    let (conn, rx) = accept_rogue(&l, c);
    // What arrived before the garbage is delivered; then the channel
    // disconnects and the connection reports why.
    assert_same(
        &recv(&rx),
        &StreamMessage::Watermark(Watermark::EventTime(5)),
    );
    assert!(rx.recv_timeout(PATIENCE).is_err());
    assert!(conn.handle().wait(PATIENCE));
    let e = conn.handle().failure().expect("connection failed");
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    let reason = client.join().unwrap().expect("peer told why");
    assert!(reason.contains("unknown frame kind"), "{reason}");

    // The same listener still serves a well-behaved peer.
    let client = thread::spawn(move || {
        let mut a = connect(addr, &config(1, "rogue"), ConnectionSpec::new().outbound(c)).unwrap();
        let tx = a.take_sender(c).unwrap();
        tx.send(StreamMessage::Batch(batch(0, 0, 10))).unwrap();
        tx.send(StreamMessage::EndOfStream).unwrap();
        assert!(a.handle().wait(PATIENCE));
    });
    let (_conn, rx) = accept_rogue(&l, c);
    assert_same(&recv(&rx), &StreamMessage::Batch(batch(0, 0, 10)));
    assert_same(&recv(&rx), &StreamMessage::EndOfStream);
    client.join().unwrap();
}

#[test]
fn a_truncated_frame_is_an_error_not_data() {
    let c = ChannelId(4);
    let (l, addr) = listener(config(1, "worker-b"));
    let client = thread::spawn(move || {
        let mut s = raw_peer(addr);
        let mut enc = BatchEncoder::default();
        let mut buf = Vec::new();
        enc.encode(c, &StreamMessage::Batch(batch(4, 0, 500)), &mut buf)
            .unwrap();
        // Half the frames, then the peer goes away.
        s.write_all(&buf[..buf.len() / 2]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        error_reason(&mut s)
    });
    let (conn, rx) = accept_rogue(&l, c);
    // No partial batch is ever delivered: the channel just disconnects.
    assert!(rx.recv_timeout(PATIENCE).is_err());
    assert!(conn.handle().wait(PATIENCE));
    let e = conn
        .handle()
        .failure()
        .expect("connection failed")
        .to_string();
    assert!(e.contains("ended inside a frame"), "{e}");
    client.join().unwrap();
}

#[test]
fn sending_without_credit_is_a_protocol_error() {
    let c = ChannelId(0);
    let (l, addr) = listener(config(1, "worker-b"));
    let client = thread::spawn(move || {
        let mut s = raw_peer(addr);
        // More messages than any credit granted (nobody reads the queue).
        let mut buf = Vec::new();
        for t in 0..64 {
            encode(
                &Frame::Data {
                    channel: c,
                    payload: sluice_engine::exchange::frame::Payload::Watermark(
                        Watermark::EventTime(t),
                    ),
                },
                &mut buf,
            );
        }
        let _ = s.write_all(&buf);
        error_reason(&mut s)
    });
    let (conn, rx) = accept_rogue(&l, c);
    assert!(conn.handle().wait(PATIENCE));
    let e = conn
        .handle()
        .failure()
        .expect("connection failed")
        .to_string();
    assert!(e.contains("without credit"), "{e}");
    // Only what fit the granted credit was queued.
    let mut delivered = 0;
    while rx.recv_timeout(PATIENCE).is_ok() {
        delivered += 1;
    }
    assert_eq!(delivered, ExchangeConfig::new("j", 0, "n").channel_capacity);
    let reason = client.join().unwrap().expect("peer told why");
    assert!(reason.contains("without credit"), "{reason}");
}

#[test]
fn cancelling_the_job_releases_blocked_senders_and_threads() {
    let c = ChannelId(0);
    let cfg = config(1, "worker-a");
    let cancelled = cfg.cancelled.clone();
    let (l, addr) = listener(config(1, "worker-b"));
    let server = thread::spawn(move || {
        l.accept(|_| Ok(ConnectionSpec::new().inbound(c, None)))
            .unwrap()
    });
    let mut a = connect(addr, &cfg, ConnectionSpec::new().outbound(c)).unwrap();
    let b = server.join().unwrap();
    let tx = a.take_sender(c).unwrap();
    let sender = thread::spawn(move || loop {
        if let Err(e) = tx.send(StreamMessage::Watermark(Watermark::EventTime(1))) {
            return e;
        }
    });
    // Let the sender use up its credit and block, then cancel.
    thread::sleep(Duration::from_millis(50));
    cancelled.store(true, Ordering::SeqCst);
    let e = sender.join().unwrap();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(a.handle().wait(PATIENCE));
    // The peer sees its connection end with an error rather than hang.
    assert!(b.handle().wait(PATIENCE));
    assert!(b.handle().failure().is_some());
}

#[test]
fn an_oversize_batch_is_refused_locally_and_the_channel_goes_on() {
    let c = ChannelId(0);
    let mut cfg = config(1, "worker-b");
    cfg.max_frame = 64 << 10;
    // Flush whenever the writer's queue empties (no coalescing delay).
    cfg.flush_interval = Duration::ZERO;
    let (l, addr) = listener(cfg.clone());
    let server = thread::spawn(move || {
        l.accept(|_| Ok(ConnectionSpec::new().inbound(c, Some(schema()))))
            .unwrap()
    });
    cfg.node = "worker-a".into();
    let mut a = connect(addr, &cfg, ConnectionSpec::new().outbound(c)).unwrap();
    let mut b = server.join().unwrap();
    let (tx, rx) = (a.take_sender(c).unwrap(), b.take_receiver(c).unwrap());
    let e = tx
        .send(StreamMessage::Batch(batch(0, 0, 20_000)))
        .unwrap_err();
    assert!(
        matches!(e, Error::Exchange(_)) && e.to_string().contains("bound"),
        "{e}"
    );
    // The refused batch took no credit and left no half-sent IPC stream:
    // the next batch restarts it with its schema.
    assert_eq!(tx.backlog(), 0);
    tx.send(StreamMessage::Batch(batch(0, 1, 100))).unwrap();
    tx.send(StreamMessage::EndOfStream).unwrap();
    assert_same(&recv(&rx), &StreamMessage::Batch(batch(0, 1, 100)));
    assert_same(&recv(&rx), &StreamMessage::EndOfStream);
    assert_closed_cleanly(&a, &b);
}

/// The partitioner writes to network channels exactly as to local ones:
/// hash routing across two remote subtasks, then a broadcast barrier and
/// end of stream reaching both.
#[test]
fn edge_writer_routes_over_network_channels() {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use sluice_engine::exchange::partition::EdgeWriter;
    use sluice_engine::EdgeKind;

    let (c0, c1) = (ChannelId(0), ChannelId(1));
    let (mut a, mut b) = one_way(&[c0, c1]);
    let senders: Vec<Box<dyn ChannelSender>> = vec![
        Box::new(a.take_sender(c0).unwrap()),
        Box::new(a.take_sender(c1).unwrap()),
    ];
    let mut w = EdgeWriter::new(EdgeKind::Hash(vec![0]), senders, 128, 0);
    let rxs = [b.take_receiver(c0).unwrap(), b.take_receiver(c1).unwrap()];
    let writer = thread::spawn(move || {
        for s in 0..20 {
            w.send_batch(batch(0, s, 500)).unwrap();
        }
        w.broadcast(barrier(9)).unwrap();
        w.broadcast(StreamMessage::EndOfStream).unwrap();
    });
    // One reader per channel, as each downstream task would be.
    let readers: Vec<_> = rxs
        .into_iter()
        .map(|rx| {
            thread::spawn(move || {
                let mut keys = Vec::new();
                loop {
                    match recv(&rx) {
                        StreamMessage::Batch(b) => {
                            keys.extend(b.column(0).as_primitive::<Int64Type>().values())
                        }
                        StreamMessage::Barrier(_) => {}
                        StreamMessage::EndOfStream => return keys,
                        m => panic!("unexpected {m:?}"),
                    }
                }
            })
        })
        .collect();
    let seen: Vec<Vec<i64>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    writer.join().unwrap();
    // Every row arrived once, and the split is a real partition.
    let mut all: Vec<i64> = seen.concat();
    all.sort_unstable();
    let mut want: Vec<i64> = (0..20)
        .flat_map(|s| (0..500).map(move |i| s * 1_000_000 + i))
        .collect();
    want.sort_unstable();
    assert_eq!(all, want);
    assert!(!seen[0].is_empty() && !seen[1].is_empty());
    assert!(seen[0].iter().all(|k| !seen[1].contains(k)));
}

#[test]
fn garbage_instead_of_a_hello_is_refused() {
    let (l, addr) = listener(config(1, "worker-b"));
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 1, 2, 3])
            .unwrap();
        error_reason(&mut s)
    });
    let e = l
        .accept(|_| Ok(ConnectionSpec::new()))
        .err()
        .expect("refused");
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    let reason = client.join().unwrap().expect("peer told why");
    assert!(reason.contains("unknown frame kind"), "{reason}");
    // A hello that ends early is refused too, without waiting forever.
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut buf = Vec::new();
        encode(
            &Frame::Hello(Hello {
                version: VERSION,
                job: "job-1".into(),
                attempt: 1,
                peer: "p".into(),
                secret: SECRET.into(),
            }),
            &mut buf,
        );
        s.write_all(&buf[..buf.len() - 1]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let e = l
        .accept(|_| Ok(ConnectionSpec::new()))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("ended inside a frame"), "{e}");
    client.join().unwrap();
}
