//! Frame codec tests: exact round trips, every rejection path, and property
//! tests feeding the decoder split, arbitrary and mutated bytes.

use std::sync::Arc;

use arrow::array::{ArrayRef, DictionaryArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use arrow::record_batch::RecordBatch;
use proptest::prelude::*;

use super::*;

fn batch(n: i64, with_dict: bool) -> RecordBatch {
    let mut fields = vec![
        Field::new("k", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..n)),
        Arc::new(StringArray::from_iter(
            (0..n).map(|i| (i % 3 != 0).then(|| format!("v{i}"))),
        )),
    ];
    if with_dict {
        fields.push(Field::new(
            "d",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        ));
        let d: DictionaryArray<Int32Type> =
            (0..n).map(|i| ["a", "b", "c"][(i % 3) as usize]).collect();
        cols.push(Arc::new(d));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

fn messages() -> Vec<StreamMessage> {
    vec![
        StreamMessage::Batch(batch(5, false)),
        StreamMessage::Watermark(Watermark::EventTime(-7)),
        StreamMessage::Batch(batch(0, false)),
        StreamMessage::Barrier(Barrier {
            id: CheckpointId(42),
            timestamp: 1_700_000_000_000,
            kind: BarrierKind::StopWithSavepoint,
        }),
        StreamMessage::Watermark(Watermark::Idle),
        StreamMessage::Latency(1_796_000_000_123),
        // A schema change restarts the channel's IPC stream.
        StreamMessage::Batch(batch(300, true)),
        StreamMessage::Batch(batch(2, true)),
        StreamMessage::Watermark(Watermark::MAX),
        StreamMessage::EndOfStream,
    ]
}

fn encode_all(msgs: &[StreamMessage]) -> Vec<u8> {
    let mut enc = BatchEncoder::default();
    let mut out = Vec::new();
    for m in msgs {
        enc.encode(ChannelId(3), m, &mut out).unwrap();
    }
    out
}

/// Decodes frames fed in `chunks`, then their messages.
fn decode_all(chunks: &[&[u8]]) -> Result<Vec<StreamMessage>> {
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut frames = Vec::new();
    for c in chunks {
        d.feed(c, &mut frames)?;
    }
    d.finish()?;
    let mut bd = BatchDecoder::new(None);
    let mut msgs = Vec::new();
    for f in frames {
        match f {
            Frame::Data { channel, payload } => {
                assert_eq!(channel, ChannelId(3));
                msgs.extend(bd.decode(payload)?);
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    Ok(msgs)
}

fn same(a: &StreamMessage, b: &StreamMessage) -> bool {
    match (a, b) {
        (StreamMessage::Batch(x), StreamMessage::Batch(y)) => x == y,
        (StreamMessage::Watermark(x), StreamMessage::Watermark(y)) => x == y,
        (StreamMessage::Barrier(x), StreamMessage::Barrier(y)) => x == y,
        (StreamMessage::EndOfStream, StreamMessage::EndOfStream) => true,
        (StreamMessage::Latency(x), StreamMessage::Latency(y)) => x == y,
        _ => false,
    }
}

fn assert_same(a: &[StreamMessage], b: &[StreamMessage]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!(same(x, y), "{x:?} != {y:?}");
    }
}

#[test]
fn every_message_kind_round_trips_exactly() {
    let msgs = messages();
    let bytes = encode_all(&msgs);
    assert_same(&decode_all(&[&bytes]).unwrap(), &msgs);
}

#[test]
fn control_frames_round_trip() {
    let frames = vec![
        Frame::Hello(Hello {
            version: VERSION,
            job: "jöb".into(),
            attempt: 9,
            peer: "worker-1".into(),
            secret: "c0ffee".into(),
        }),
        Frame::Welcome,
        Frame::Error("stale attempt".into()),
        Frame::Credit {
            channel: ChannelId(u32::MAX),
            credits: 7,
        },
        Frame::Data {
            channel: ChannelId(1),
            payload: Payload::EndOfStream,
        },
    ];
    let mut bytes = Vec::new();
    for f in &frames {
        encode(f, &mut bytes);
    }
    let mut d = FrameDecoder::new(1024);
    let mut got = Vec::new();
    // One byte at a time: the decoder must not care about splits.
    for b in &bytes {
        d.feed(std::slice::from_ref(b), &mut got).unwrap();
    }
    d.finish().unwrap();
    assert_eq!(got, frames);
}

#[test]
fn batch_payloads_are_aligned_for_arrow() {
    let bytes = encode_all(&[StreamMessage::Batch(batch(10, false))]);
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut frames = Vec::new();
    d.feed(&bytes, &mut frames).unwrap();
    let mut checked = 0;
    for f in frames {
        if let Frame::Data {
            payload: Payload::Batch(b) | Payload::Schema(b),
            ..
        } = f
        {
            assert_eq!(b.as_ptr() as usize % 8, 0);
            checked += 1;
        }
    }
    // A schema and a batch payload were checked, not none.
    assert_eq!(checked, 2);
}

fn header(len: u32, kind: u8, reserved: [u8; 3]) -> Vec<u8> {
    let mut h = len.to_le_bytes().to_vec();
    h.push(kind);
    h.extend_from_slice(&reserved);
    h
}

fn decode_err(bytes: &[u8]) -> FrameError {
    let mut d = FrameDecoder::new(1 << 20);
    let mut frames = Vec::new();
    let r = d.feed(bytes, &mut frames).and_then(|()| d.finish());
    let e = r.expect_err("must be rejected");
    // A failed decoder stays failed.
    assert_eq!(d.feed(&[0; 8], &mut frames), Err(e.clone()));
    e
}

#[test]
fn malformed_frames_are_errors() {
    assert_eq!(
        decode_err(&header(0, 99, [0; 3])),
        FrameError::UnknownKind(99)
    );
    assert_eq!(decode_err(&header(0, 2, [0, 1, 0])), FrameError::Reserved);
    assert!(matches!(
        decode_err(&header(u32::MAX, 17, [0; 3])),
        FrameError::TooLarge { .. }
    ));
    // Wrong fixed sizes.
    let mut b = header(3, 32, [0; 3]);
    b.extend_from_slice(&[1, 2, 3]);
    assert!(matches!(decode_err(&b), FrameError::Malformed { .. }));
    let mut b = header(9, 20, [0; 3]);
    b.extend_from_slice(&[0; 9]);
    assert!(matches!(decode_err(&b), FrameError::Malformed { .. }));
    // Zero credits, bad watermark tag, bad barrier kind, non-UTF-8 reason.
    let mut b = header(8, 32, [0; 3]);
    b.extend_from_slice(&[0; 8]);
    assert!(matches!(decode_err(&b), FrameError::Malformed { .. }));
    let mut b = header(17, 18, [0; 3]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(decode_err(&b), FrameError::Malformed { .. }));
    let mut b = header(25, 19, [0; 3]);
    b.extend_from_slice(&[0; 24]);
    b.push(9);
    assert!(matches!(decode_err(&b), FrameError::Malformed { .. }));
    let mut b = header(2, 3, [0; 3]);
    b.extend_from_slice(&[0xff, 0xfe]);
    assert!(matches!(decode_err(&b), FrameError::Malformed { .. }));
    // A hello whose job string runs past the body.
    let mut b = header(12, 1, [0; 3]);
    b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200, 0]);
    assert!(matches!(decode_err(&b), FrameError::Malformed { .. }));
    // Non-zero reserved channel prefix.
    let mut b = header(8, 20, [0; 3]);
    b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(decode_err(&b), FrameError::Reserved);
}

#[test]
fn truncated_input_is_an_error_at_finish() {
    let bytes = encode_all(&messages());
    for cut in [1, 7, 8, 9, bytes.len() / 2, bytes.len() - 1] {
        let e = decode_all(&[&bytes[..cut]]).expect_err("truncated");
        assert!(matches!(e, Error::Protocol(_)), "{e}");
        assert!(e.to_string().contains("ended inside a frame"), "{e}");
    }
}

#[test]
fn bad_ipc_payloads_are_protocol_errors() {
    let mut bd = BatchDecoder::new(None);
    let e = bd
        .decode(Payload::Batch(Buffer::from_vec(vec![1u8, 2, 3])))
        .unwrap_err();
    assert!(e.to_string().contains("before any schema"), "{e}");
    let e = bd
        .decode(Payload::Schema(Buffer::from_vec(vec![0xffu8; 64])))
        .unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    // A schema other than the channel's is refused.
    let expected = batch(1, true).schema();
    let mut bd = BatchDecoder::new(Some(expected));
    let bytes = encode_all(&[StreamMessage::Batch(batch(1, false))]);
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut frames = Vec::new();
    d.feed(&bytes, &mut frames).unwrap();
    let Frame::Data { payload, .. } = frames.remove(0) else {
        panic!("data frame expected")
    };
    let e = bd.decode(payload).unwrap_err();
    assert!(e.to_string().contains("announced schema"), "{e}");
}

/// Feeds bytes through framing and IPC decoding: the result may be an
/// error, but nothing may unwind out of the codec.
fn decode_untrusted(bytes: &[u8], split: usize) -> Result<Vec<StreamMessage>> {
    let mut d = FrameDecoder::new(1 << 20);
    let mut frames = Vec::new();
    let split = split.min(bytes.len());
    d.feed(&bytes[..split], &mut frames)?;
    d.feed(&bytes[split..], &mut frames)?;
    let mut decoders: std::collections::HashMap<ChannelId, BatchDecoder> = Default::default();
    let mut msgs = Vec::new();
    for f in frames {
        if let Frame::Data { channel, payload } = f {
            let bd = decoders
                .entry(channel)
                .or_insert_with(|| BatchDecoder::new(None));
            msgs.extend(bd.decode(payload)?);
        }
    }
    Ok(msgs)
}

fn frame_with(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut b = header(body.len() as u32, kind, [0; 3]);
    b.extend_from_slice(body);
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), split in 0usize..512) {
        let _ = decode_untrusted(&bytes, split);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_kind_never_panic(
        kind in prop::sample::select(vec![1u8, 2, 3, 16, 17, 18, 19, 20, 32]),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let r = decode_untrusted(&frame_with(kind, &body), 0);
        if let Err(e) = r {
            prop_assert!(matches!(e, Error::Protocol(_)), "{}", e);
        }
    }

    #[test]
    fn splits_do_not_change_the_result(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let msgs = messages();
        let bytes = encode_all(&msgs);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&bytes[last..p]);
            last = p;
        }
        chunks.push(&bytes[last..]);
        let got = decode_all(&chunks).unwrap();
        prop_assert_eq!(got.len(), msgs.len());
        for (x, y) in got.iter().zip(&msgs) {
            prop_assert!(same(x, y));
        }
    }

    #[test]
    fn mutated_valid_streams_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        split in 0usize..4096,
    ) {
        let mut bytes = encode_all(&messages());
        for (at, byte, op) in edits {
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => { bytes.remove(i); }
            }
        }
        if let Err(e) = decode_untrusted(&bytes, split) {
            prop_assert!(matches!(e, Error::Protocol(_)), "{}", e);
        }
    }

    /// Mutations inside the IPC bytes of well-framed batch frames reach
    /// arrow's decoder (framing alone would otherwise catch most edits).
    /// Some make arrow 60 panic; the codec must turn that into an error.
    #[test]
    fn mutated_ipc_payloads_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let b = batch(20, true);
        let mut enc = BatchEncoder::default();
        let mut out = Vec::new();
        enc.encode(ChannelId(0), &StreamMessage::Batch(b), &mut out).unwrap();
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut frames = Vec::new();
        d.feed(&out, &mut frames).unwrap();
        let mut bd = BatchDecoder::new(None);
        for f in frames {
            let Frame::Data { payload, .. } = f else { continue };
            let payload = match payload {
                Payload::Batch(buf) => {
                    let mut v = buf.as_slice().to_vec();
                    for (at, byte) in &edits {
                        let i = at.index(v.len());
                        v[i] = *byte;
                    }
                    Payload::Batch(Buffer::from_vec(v))
                }
                p => p,
            };
            if let Err(e) = bd.decode(payload) {
                prop_assert!(matches!(e, Error::Protocol(_)), "{}", e);
            }
        }
    }
}
