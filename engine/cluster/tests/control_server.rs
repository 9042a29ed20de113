//! The control server under strangers: silent connections, oversized and
//! malformed hellos, hellos of another protocol version, floods of hellos
//! for jobs that do not exist, hellos of another leader's term. None of
//! them keeps a real executor out.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sluice_cluster::attempt::{AttemptEvent, AttemptHandle, ControlServer, MAX_UNPROVEN};
use sluice_protocol::control::{read_frame, write_frame, ToCoordinator, ToExecutor};

mod control_common;
use control_common::{closed_within, hello as hello_of_term, start_attempt, JOB, SECRET};

fn server() -> (ControlServer, AttemptHandle) {
    // A control server outside a Raft group serves term 0.
    server_of_term(0)
}

/// A control server of a leader in `term`, running one attempt.
fn server_of_term(term: u64) -> (ControlServer, AttemptHandle) {
    let server = ControlServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    server.set_term(term);
    let handle = start_attempt(&server);
    (server, handle)
}

fn hello(protocol: u32, job: &str, secret: &str) -> ToCoordinator {
    hello_of_term(protocol, job, secret, 0)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

#[test]
fn silent_connections_cannot_keep_an_executor_out() {
    let (server, handle) = server();
    let addr = server.local_addr();
    // More silent strangers than the server lets wait for a hello.
    let mut silent: Vec<TcpStream> = (0..MAX_UNPROVEN + 8).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    // The longest waiting were closed to make room...
    let started = Instant::now();
    for s in silent.iter_mut().take(8) {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "an old silent connection stays open"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // ...and a real executor gets in at once, past the strangers.
    let mut exec = connect(addr);
    write_frame(
        &mut exec,
        &hello(sluice_protocol::PROTOCOL_VERSION, JOB, SECRET),
    )
    .unwrap();
    let first: ToExecutor = read_frame(&mut exec).unwrap().expect("a frame");
    assert!(matches!(first, ToExecutor::Peers { .. }), "{first:?}");
    assert_eq!(
        handle
            .events()
            .recv_timeout(Duration::from_secs(5))
            .unwrap(),
        AttemptEvent::Running
    );
    assert!(server.refused_unknown() >= 8);
    handle.cancel("test over");
}

#[test]
fn an_oversized_hello_is_refused_before_it_is_read() {
    let (server, handle) = server();
    let mut s = connect(server.local_addr());
    // Announces 64 MiB: closed without waiting for (or allocating) them.
    s.write_all(&(64u32 << 20).to_be_bytes()).unwrap();
    s.write_all(&[b'x'; 1024]).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // Garbage of a plausible length: closed with a refusal.
    let mut s = connect(server.local_addr());
    s.write_all(&5u32.to_be_bytes()).unwrap();
    s.write_all(b"\xff\x00{]x").unwrap();
    let answer: Option<ToExecutor> = read_frame(&mut s).unwrap();
    assert!(
        matches!(answer, Some(ToExecutor::Rejected { .. })),
        "{answer:?}"
    );
    handle.cancel("test over");
}

#[test]
fn a_hello_of_another_version_is_refused_naming_both() {
    let (server, handle) = server();
    let mut s = connect(server.local_addr());
    write_frame(
        &mut s,
        &hello(sluice_protocol::PROTOCOL_VERSION + 1, JOB, SECRET),
    )
    .unwrap();
    let Some(ToExecutor::Rejected { reason }) = read_frame(&mut s).unwrap() else {
        panic!("not refused");
    };
    let ours = format!("version {}", sluice_protocol::PROTOCOL_VERSION);
    let theirs = format!("version {}", sluice_protocol::PROTOCOL_VERSION + 1);
    assert!(
        reason.contains(&ours) && reason.contains(&theirs),
        "{reason}"
    );
    // Nothing was registered: the real executor still gets in.
    let mut exec = connect(server.local_addr());
    write_frame(
        &mut exec,
        &hello(sluice_protocol::PROTOCOL_VERSION, JOB, SECRET),
    )
    .unwrap();
    let first: Option<ToExecutor> = read_frame(&mut exec).unwrap();
    assert!(matches!(first, Some(ToExecutor::Peers { .. })), "{first:?}");
    handle.cancel("test over");
}

#[test]
fn hellos_for_unknown_jobs_are_counted_not_kept() {
    let (server, handle) = server();
    let addr = server.local_addr();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..50 {
                    let mut s = connect(addr);
                    write_frame(
                        &mut s,
                        &hello(
                            sluice_protocol::PROTOCOL_VERSION,
                            &format!("nope-{c}-{i}"),
                            "x",
                        ),
                    )
                    .unwrap();
                    let answer: Option<ToExecutor> = read_frame(&mut s).unwrap();
                    assert!(matches!(answer, Some(ToExecutor::Rejected { .. })));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(server.refused_unknown(), 400);
    // A wrong secret for the real job counts against that job.
    let mut s = connect(addr);
    write_frame(
        &mut s,
        &hello(sluice_protocol::PROTOCOL_VERSION, JOB, "wrong"),
    )
    .unwrap();
    let answer: Option<ToExecutor> = read_frame(&mut s).unwrap();
    assert!(matches!(answer, Some(ToExecutor::Rejected { .. })));
    assert_eq!(handle.rejected_stale(), 1);
    handle.cancel("test over");
}

#[test]
fn a_hello_of_another_term_is_refused_naming_both() {
    let (server, handle) = server_of_term(7);
    assert_eq!(server.term(), 7);
    // An executor of the same attempt number started by the leader of
    // term 6 (a deposed one) does not get in.
    let mut s = connect(server.local_addr());
    let v = sluice_protocol::PROTOCOL_VERSION;
    write_frame(&mut s, &hello_of_term(v, JOB, SECRET, 6)).unwrap();
    let Some(ToExecutor::Rejected { reason }) = read_frame(&mut s).unwrap() else {
        panic!("a hello of term 6 was not refused");
    };
    assert!(
        reason.contains("term 7") && reason.contains("term 6"),
        "{reason}"
    );
    assert_eq!(handle.rejected_stale(), 1);
    // The attempt's own executor gets the peers, with the server's term.
    let mut exec = connect(server.local_addr());
    write_frame(&mut exec, &hello_of_term(v, JOB, SECRET, 7)).unwrap();
    let first: Option<ToExecutor> = read_frame(&mut exec).unwrap();
    assert!(
        matches!(first, Some(ToExecutor::Peers { term: 7, .. })),
        "{first:?}"
    );
    handle.cancel("test over");
}
