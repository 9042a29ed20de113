//! A new leader's adoption of a running attempt, on its control server:
//! only the attempt's running executors may rejoin it (a fresh hello, a
//! wrong secret and another term are refused), rejoining ones get the
//! peers under the new term, checkpoint ids continue above every id the
//! executors had prepared, finished tasks are taken over, and an attempt
//! whose executors do not rejoin in time fails (so the job restarts).

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use sluice_cluster::attempt::{
    AttemptConfig, AttemptEvent, AttemptHandle, CheckpointStart, ControlServer,
};
use sluice_protocol::api::{CheckpointDescription, JobDescription};
use sluice_protocol::control::{
    read_frame, write_frame, Rejoin, Retry, TaskControl, ToCoordinator, ToExecutor,
};
use sluice_protocol::ids::TaskKey;

mod control_common;
use control_common::{closed_within, description, hello, start_attempt, ATTEMPT, JOB, SECRET};

const TERM: u64 = 4;
const TASK: TaskKey = TaskKey {
    vertex: 0,
    subtask: 0,
};

/// A leader of term `TERM` adopting attempt `ATTEMPT` of `JOB`, with a
/// checkpoint directory of its own when `ck` is given.
fn adopting(ck: Option<&std::path::Path>, grace: Duration) -> (ControlServer, AttemptHandle) {
    let server = ControlServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    server.set_term(TERM);
    let mut d: JobDescription = description();
    d.checkpoint = ck.map(|dir| CheckpointDescription {
        dir: dir.display().to_string(),
        interval_ms: 50,
        timeout_ms: 10_000,
        min_pause_ms: 0,
        retained: 2,
        exactly_once: true,
        unaligned: false,
        restore_from: None,
    });
    let setup = CheckpointStart::find(&d).unwrap().map(|s| s.setup);
    let handle = server
        .start_attempt(AttemptConfig {
            job_id: JOB.into(),
            attempt: ATTEMPT,
            description: d,
            placement: vec![(TASK, 0)],
            executors: 1,
            checkpoint: setup,
            stats: Arc::default(),
            secret: SECRET.into(),
            adopt: Some(grace),
        })
        .unwrap();
    (server, handle)
}

fn rejoining(secret: &str, term: u64, rejoin: Rejoin) -> ToCoordinator {
    let mut h = hello(sluice_protocol::PROTOCOL_VERSION, JOB, secret, term);
    if let ToCoordinator::Hello { rejoin: r, .. } = &mut h {
        *r = Some(rejoin);
    }
    h
}

/// Says `hello` on a new connection; returns it and the first answer.
fn say(server: &ControlServer, hello: &ToCoordinator) -> (TcpStream, ToExecutor) {
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write_frame(&mut s, hello).unwrap();
    let answer = read_frame(&mut s).unwrap().expect("an answer");
    (s, answer)
}

/// The answer to a rejoin that claims checkpoint `checkpoint` was
/// announced and `finished` finished.
fn claim(server: &ControlServer, checkpoint: u64, finished: TaskKey) -> ToExecutor {
    let rejoin = Rejoin {
        checkpoint,
        finished: vec![finished],
    };
    say(server, &rejoining(SECRET, TERM, rejoin)).1
}

fn refused(answer: &ToExecutor, why: &str) -> bool {
    matches!(answer, ToExecutor::Rejected { reason } if reason.contains(why))
}

#[test]
fn only_the_running_executors_may_rejoin_an_adopted_attempt() {
    let (server, handle) = adopting(None, Duration::from_secs(30));
    // A fresh hello, even with the secret: a new process is no running
    // executor of the attempt.
    let (mut s, a) = say(
        &server,
        &hello(sluice_protocol::PROTOCOL_VERSION, JOB, SECRET, TERM),
    );
    assert!(refused(&a, "only its running executors"), "{a:?}");
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // A rejoin with a wrong secret, or naming the deposed leader's term.
    let (_, a) = say(&server, &rejoining("guess", TERM, Rejoin::default()));
    assert!(refused(&a, "wrong secret"), "{a:?}");
    let (_, a) = say(&server, &rejoining(SECRET, TERM - 1, Rejoin::default()));
    assert!(refused(&a, "term"), "{a:?}");
    // What job code could claim in a rejoin: a task it does not run.
    let a = claim(
        &server,
        0,
        TaskKey {
            vertex: 3,
            subtask: 9,
        },
    );
    assert!(refused(&a, "which it does not run"), "{a:?}");
    assert_eq!(handle.rejected_stale(), 4);
    // The executor itself gets the peers under the new term.
    let (_s, a) = say(&server, &rejoining(SECRET, TERM, Rejoin::default()));
    assert!(
        matches!(&a, ToExecutor::Peers { term, .. } if *term == TERM),
        "{a:?}"
    );
    let ev = handle
        .events()
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert_eq!(ev, AttemptEvent::Adopted);
    handle.cancel("test over");
}

#[test]
fn a_rejoin_to_an_attempt_this_leader_started_is_refused() {
    let server = ControlServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let handle = start_attempt(&server);
    let (_, a) = say(&server, &rejoining(SECRET, 0, Rejoin::default()));
    assert!(refused(&a, "nothing to rejoin"), "{a:?}");
    handle.cancel("test over");
}

#[test]
fn checkpoint_ids_continue_above_the_deposed_leaders_and_finished_tasks_carry_over() {
    let dir = tempfile::tempdir().unwrap();
    let (server, handle) = adopting(Some(dir.path()), Duration::from_secs(30));
    // The deposed leader had announced checkpoint 7 (its barriers may
    // still be in flight), and the only task had consumed its input.
    let (mut s, a) = say(
        &server,
        &rejoining(
            SECRET,
            TERM,
            Rejoin {
                checkpoint: 7,
                finished: vec![TASK],
            },
        ),
    );
    assert!(matches!(a, ToExecutor::Peers { .. }), "{a:?}");
    let events: Vec<AttemptEvent> = (0..2)
        .map(|_| {
            handle
                .events()
                .recv_timeout(Duration::from_secs(5))
                .unwrap()
        })
        .collect();
    assert_eq!(events, [AttemptEvent::Adopted, AttemptEvent::Finishing]);
    // The final checkpoint: a new id, and the finished task snapshots its
    // final state for it.
    let mut prepared = None;
    loop {
        match read_frame::<_, ToExecutor>(&mut s)
            .unwrap()
            .expect("a frame")
        {
            ToExecutor::Prepare { id, .. } => prepared = Some(id),
            ToExecutor::Task {
                task,
                msg: TaskControl::SnapshotFinished(b),
            } => {
                assert_eq!(task, TASK);
                assert_eq!(Some(b.id.0), prepared);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(prepared, Some(8), "ids continue above the announced 7");
    handle.cancel("test over");
}

#[test]
fn a_rejoin_claiming_a_checkpoint_id_far_past_the_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, handle) = adopting(Some(dir.path()), Duration::from_secs(30));
    let a = claim(&server, u64::MAX, TASK);
    assert!(refused(&a, "newest id is below"), "{a:?}");
    handle.cancel("test over");
}

#[test]
fn an_attempt_whose_executors_do_not_rejoin_in_time_fails_so_the_job_restarts() {
    let (_server, handle) = adopting(None, Duration::from_millis(300));
    let ev = handle
        .events()
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    match ev {
        AttemptEvent::Failed { error, retry } => {
            assert!(error.contains("did not all rejoin"), "{error}");
            assert_eq!(retry, Retry::Backoff);
        }
        other => panic!("{other:?}"),
    }
}
