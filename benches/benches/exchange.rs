//! Network exchange over loopback TCP: the IPC frame codec alone, one
//! connection's throughput with one and with four channels, in plaintext
//! and with mutual TLS (attempt certificates of a throwaway CA), the
//! round trip of a small message with and without the flush interval, and
//! what a task's metering (output counts, backpressure waits) adds to a
//! send into a local channel that has room.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, TimestampMillisecondArray};
use arrow::record_batch::RecordBatch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_channel::Receiver;
use sluice_benches::{bid_schema, ROWS};
use sluice_engine::exchange::frame::{
    BatchDecoder, BatchEncoder, ChannelId, Frame, FrameDecoder, DEFAULT_MAX_FRAME,
};
use sluice_engine::exchange::local::channel;
use sluice_engine::exchange::partition::EdgeWriter;
use sluice_engine::exchange::tcp::{
    connect, Connection, ConnectionSpec, ExchangeConfig, NetListener,
};
use sluice_engine::exchange::ChannelSender;
use sluice_engine::metrics::TaskMeter;
use sluice_engine::tls::issue::{new_ca, Signer};
use sluice_engine::tls::ClusterTls;
use sluice_engine::EdgeKind;
use sluice_engine::{StreamMessage, Watermark};

/// A Nexmark-bid-like batch: 8192 rows of three 8-byte columns (192 KiB).
fn batch() -> RecordBatch {
    let n = ROWS as i64;
    RecordBatch::try_new(
        bid_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 10_000))),
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|i| i * 7 % 100_000),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(0..n)),
        ],
    )
    .expect("bench batch")
}

const PAYLOAD: u64 = (ROWS * 3 * 8) as u64;

fn codec(c: &mut Criterion) {
    let b = batch();
    let mut g = c.benchmark_group("exchange_codec");
    g.throughput(Throughput::Bytes(PAYLOAD));
    g.bench_function("encode_decode_8192x3", |bench| {
        let mut enc = BatchEncoder::default();
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut bd = BatchDecoder::new(None);
        let mut out = Vec::new();
        let mut frames = Vec::new();
        bench.iter(|| {
            out.clear();
            enc.encode(ChannelId(0), &StreamMessage::Batch(b.clone()), &mut out)
                .unwrap();
            dec.feed(&out, &mut frames).unwrap();
            for f in frames.drain(..) {
                if let Frame::Data { payload, .. } = f {
                    std::hint::black_box(bd.decode(payload).unwrap());
                }
            }
        })
    });
    g.finish();
}

/// Both ends' TLS identity: one attempt certificate of a fresh CA, as the
/// executors of one attempt share.
fn attempt_tls() -> ClusterTls {
    let day = Duration::from_secs(24 * 3600);
    let ca = new_ca("bench CA", day).expect("bench CA");
    let signer = Signer::from_pem(&ca.cert, &ca.key).expect("bench CA");
    let cert = signer.attempt("bench", 0, day).expect("bench certificate");
    ClusterTls::from_pem(
        ca.cert.as_bytes(),
        cert.cert.as_bytes(),
        cert.key.as_bytes(),
    )
    .expect("bench TLS")
}

fn connected(channels: u32, flush: Duration, tls: bool) -> (Connection, Connection) {
    let mut cfg = ExchangeConfig::new("bench", 0, "b");
    cfg.flush_interval = flush;
    cfg.tls = tls.then(attempt_tls);
    let l = NetListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap(), cfg.clone()).unwrap();
    let addr = l.local_addr().unwrap();
    let mut inbound = ConnectionSpec::new();
    let mut outbound = ConnectionSpec::new();
    for c in 0..channels {
        inbound = inbound
            .inbound(ChannelId(c), Some(bid_schema()))
            .outbound(ChannelId(c));
        outbound = outbound
            .outbound(ChannelId(c))
            .inbound(ChannelId(c), Some(bid_schema()));
    }
    let server = thread::spawn(move || l.accept(|_| Ok(inbound)).unwrap());
    cfg.node = "a".into();
    let a = connect(addr, &cfg, outbound).unwrap();
    (a, server.join().unwrap())
}

/// Counts batches per channel; acknowledges each watermark with its value.
fn drain(rx: Receiver<StreamMessage>, ack: crossbeam_channel::Sender<i64>) {
    thread::spawn(move || {
        while let Ok(m) = rx.recv() {
            if let StreamMessage::Watermark(Watermark::EventTime(t)) = m {
                let _ = ack.send(t);
            }
        }
    });
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("exchange_tcp");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    for (channels, flush, tls) in [
        (1u32, 1u64, false),
        (1, 1, true),
        (4, 1, false),
        (4, 1, true),
        (1, 0, false),
    ] {
        let (mut a, mut b) = connected(channels, Duration::from_millis(flush), tls);
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
        let senders: Vec<_> = (0..channels)
            .map(|ch| {
                drain(b.take_receiver(ChannelId(ch)).unwrap(), ack_tx.clone());
                a.take_sender(ChannelId(ch)).unwrap()
            })
            .collect();
        let senders = Arc::new(senders);
        let b0 = batch();
        g.throughput(Throughput::Bytes(PAYLOAD * channels as u64));
        g.bench_function(
            format!(
                "batches_8192x3_{channels}ch_flush_{flush}ms{}",
                if tls { "_tls" } else { "" }
            ),
            |bench| {
                bench.iter_custom(|iters| {
                    let start = Instant::now();
                    let workers: Vec<_> = (0..channels as usize)
                        .map(|i| {
                            let (s, b) = (senders.clone(), b0.clone());
                            thread::spawn(move || {
                                for _ in 0..iters {
                                    s[i].send(StreamMessage::Batch(b.clone())).unwrap();
                                }
                                s[i].send(StreamMessage::Watermark(Watermark::EventTime(0)))
                                    .unwrap();
                            })
                        })
                        .collect();
                    for w in workers {
                        w.join().unwrap();
                    }
                    for _ in 0..channels {
                        ack_rx.recv().unwrap();
                    }
                    start.elapsed()
                })
            },
        );
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("exchange_round_trip");
    for (name, flush) in [
        ("flush_0ms", Duration::ZERO),
        ("flush_1ms", Duration::from_millis(1)),
    ] {
        let (mut a, mut b) = connected(1, flush, false);
        let (tx_a, rx_a) = (
            a.take_sender(ChannelId(0)).unwrap(),
            a.take_receiver(ChannelId(0)).unwrap(),
        );
        let (tx_b, rx_b) = (
            b.take_sender(ChannelId(0)).unwrap(),
            b.take_receiver(ChannelId(0)).unwrap(),
        );
        // B echoes every message back.
        thread::spawn(move || {
            while let Ok(m) = rx_b.recv() {
                if tx_b.send(m).is_err() {
                    break;
                }
            }
        });
        let mut t = 0;
        g.bench_function(format!("watermark_{name}"), |bench| {
            bench.iter(|| {
                t += 1;
                tx_a.send(StreamMessage::Watermark(Watermark::EventTime(t)))
                    .unwrap();
                rx_a.recv().unwrap()
            })
        });
        a.handle().close();
    }
    g.finish();
}

/// A forward edge into a local channel with room, its receiver drained
/// every 1000 sends: plain, and with the task's meter.
fn metering(c: &mut Criterion) {
    let b = batch();
    let mut g = c.benchmark_group("exchange_send_metering");
    for metered in [false, true] {
        let name = if metered { "metered" } else { "plain" };
        g.bench_function(name, |bench| {
            let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (tx, rx) = channel(1024, cancelled);
            let mut w = EdgeWriter::new(EdgeKind::Forward, vec![Box::new(tx)], 128, 0);
            if metered {
                w.set_meter(Arc::new(TaskMeter::new(0, 0)));
            }
            let mut sent = 0u32;
            bench.iter(|| {
                w.send_batch(b.clone()).unwrap();
                sent += 1;
                if sent.is_multiple_of(1000) {
                    rx.try_iter().for_each(drop);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec, throughput, round_trip, metering);
criterion_main!(benches);
