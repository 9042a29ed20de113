//! Inputs from the network, fuzzed: control frames, hellos, job
//! descriptions and executor specs, as random bytes and as mutations of
//! valid encodings. Nothing panics; a frame never allocates beyond its
//! bound; what is refused is refused with an error.

use proptest::prelude::*;
use sluice_protocol::api::{
    CheckpointDescription, ExecutorSpec, JobDescription, RestartPolicy, VertexInfo,
};
use sluice_protocol::control::{
    decode_body, decode_hello, encode_frame, read_frame_bounded, read_hello, ToCoordinator,
    ToExecutor, MAX_HELLO_FRAME,
};
use sluice_protocol::ids::TaskKey;
use sluice_protocol::metrics::ExecutorMetrics;
use sluice_protocol::PROTOCOL_VERSION;

fn description() -> JobDescription {
    JobDescription {
        protocol: PROTOCOL_VERSION,
        name: "q5".into(),
        parallelism: 2,
        max_parallelism: 128,
        vertices: vec![
            VertexInfo {
                id: 0,
                name: "source".into(),
                parallelism: 2,
                source: true,
                nodes: vec![(0, "source".into())],
                inputs: Vec::new(),
            },
            VertexInfo {
                id: 1,
                name: "window -> sink".into(),
                parallelism: 2,
                source: false,
                nodes: vec![(1, "window".into()), (2, "sink".into())],
                inputs: Vec::new(),
            },
        ],
        graph_nodes: 3,
        uids: vec!["source@1".into(), "window@2".into(), "sink@3".into()],
        checkpoint: Some(CheckpointDescription {
            dir: "/ck".into(),
            interval_ms: 1000,
            timeout_ms: 60_000,
            min_pause_ms: 0,
            retained: 3,
            exactly_once: true,
            unaligned: false,
            restore_from: None,
        }),
        restart: RestartPolicy::ExponentialBackoff {
            attempts: 3,
            initial_ms: 100,
            max_ms: 1000,
        },
    }
}

fn spec() -> ExecutorSpec {
    ExecutorSpec {
        protocol: PROTOCOL_VERSION,
        job_id: "job-1".into(),
        attempt: 2,
        term: 3,
        executor: 0,
        executors: 2,
        control: "127.0.0.1:7000".into(),
        tasks: vec![TaskKey {
            vertex: 0,
            subtask: 0,
        }],
        bind_host: "127.0.0.1".into(),
        parallelism: 2,
        restore: None,
        secret: "s".into(),
        tls: None,
        rejoin_grace_ms: 0,
    }
}

fn hello() -> Vec<u8> {
    serde_json::to_vec(&ToCoordinator::Hello {
        protocol: PROTOCOL_VERSION,
        job_id: "job-1".into(),
        attempt: 2,
        term: 3,
        executor: 1,
        exchange: "127.0.0.1:9".into(),
        secret: "s".into(),
        rejoin: None,
    })
    .unwrap()
}

/// `valid` with bytes replaced, inserted and removed at the given places.
fn mutate(valid: &[u8], edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
    let mut out = valid.to_vec();
    for (at, op, byte) in edits {
        let i = at.index(out.len() + 1);
        match op % 3 {
            0 if i < out.len() => out[i] = *byte,
            1 => out.insert(i, *byte),
            _ if i < out.len() => {
                out.remove(i);
            }
            _ => {}
        }
    }
    out
}

fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8, u8)>> {
    proptest::collection::vec(
        (any::<prop::sample::Index>(), any::<u8>(), any::<u8>()),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_are_never_a_hello(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_hello(&bytes);
        let _ = decode_body::<ToExecutor>(&bytes);
        let _ = read_hello(&mut &bytes[..]);
    }

    #[test]
    fn mutated_hellos_decode_or_are_refused(e in edits()) {
        let bytes = mutate(&hello(), &e);
        if let Ok(h) = decode_hello(&bytes) {
            // Whatever decodes is a hello of this version.
            let is_current = matches!(h, ToCoordinator::Hello { protocol, .. } if protocol == PROTOCOL_VERSION);
            prop_assert!(is_current);
        }
    }

    #[test]
    fn frame_lengths_are_bounded_before_anything_is_read(len in any::<u32>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut stream = len.to_be_bytes().to_vec();
        stream.extend_from_slice(&tail);
        let r = read_frame_bounded::<_, ToCoordinator>(&mut &stream[..], MAX_HELLO_FRAME);
        if len as usize > MAX_HELLO_FRAME {
            // Refused from the length alone: no buffer of that size.
            let e = r.unwrap_err().to_string();
            prop_assert!(e.contains("bound"), "{}", e);
        }
    }

    #[test]
    fn mutated_job_descriptions_decode_checked_or_are_refused(e in edits()) {
        let valid = serde_json::to_vec(&description()).unwrap();
        let bytes = mutate(&valid, &e);
        if let Ok(d) = sluice_protocol::version::decode::<JobDescription>("a job description", &bytes) {
            // A decoded description is checked before use; neither panics.
            let _ = d.check();
            let _ = (d.slots(), d.tasks().len());
        }
    }

    #[test]
    fn mutated_executor_specs_decode_or_are_refused(e in edits()) {
        let valid = serde_json::to_vec(&spec()).unwrap();
        let bytes = mutate(&valid, &e);
        let _ = sluice_protocol::version::decode::<ExecutorSpec>("an executor spec", &bytes);
    }

    #[test]
    fn mutated_frames_after_a_hello_never_panic(e in edits()) {
        let valid = encode_frame(&ToCoordinator::Metrics(ExecutorMetrics::default())).unwrap();
        let bytes = mutate(&valid, &e);
        let _ = read_frame_bounded::<_, ToCoordinator>(&mut &bytes[..], 1 << 20);
    }
}

#[test]
fn the_valid_inputs_of_the_fuzzers_are_valid() {
    // The mutations start from inputs that are accepted as they are.
    assert!(decode_hello(&hello()).is_ok());
    let d: JobDescription = sluice_protocol::version::decode(
        "a job description",
        &serde_json::to_vec(&description()).unwrap(),
    )
    .unwrap();
    d.check().unwrap();
    let frame = encode_frame(&ToCoordinator::Metrics(ExecutorMetrics::default())).unwrap();
    assert!(
        read_frame_bounded::<_, ToCoordinator>(&mut &frame[..], 1 << 20)
            .unwrap()
            .is_some()
    );
}
