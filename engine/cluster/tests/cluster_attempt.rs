//! A job attempt across real processes: the test binary re-executes itself
//! as task executors (`SLUICE_EXECUTOR` set: the test function builds the
//! job, runs `execute()` and returns), the test plays the coordinator with
//! a `ControlServer`, and the union of the executors' output must equal an
//! embedded run of the same job. Also: checkpointing across processes
//! (manifests are written, the final checkpoint completes), and fencing of
//! hellos from stale attempts.

mod attempt_harness;

use attempt_harness::*;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sluice_cluster::attempt::{AttemptConfig, AttemptEvent, CheckpointStart, ControlServer};
use sluice_engine::checkpoint::store::pin_savepoint;
use sluice_engine::checkpoint::{Location, Storage};
use sluice_protocol::api::JobDescription;
use sluice_protocol::control::{read_frame, write_frame, ToCoordinator, ToExecutor};

#[test]
fn three_executors_match_the_embedded_run() {
    let Some(c) = Coordinator::new(false) else {
        return;
    };
    let (got, attempt) = run_distributed(&c, "three_executors_match_the_embedded_run", 3);
    let want = embedded_lines();
    assert_eq!(want.len(), 40 * 64);
    assert_same_rows(got, want);
    // The sink's node counted every row, summed over the executors.
    let m = attempt.metrics();
    assert_eq!(m.iter().map(|c| c.records_in).max(), Some(40 * 64));
    assert_eq!(attempt.rejected_stale(), 0);
}

#[test]
fn checkpoints_across_executors() {
    let Some(c) = Coordinator::new(true) else {
        return;
    };
    let ck = c.ck().unwrap();
    let (got, _) = run_distributed(&c, "checkpoints_across_executors", 2);
    assert_same_rows(got, embedded_lines());
    let manifests: Vec<PathBuf> = std::fs::read_dir(ck)
        .unwrap()
        .map(|e| e.unwrap().path().join("_manifest.json"))
        .filter(|p| p.exists())
        .collect();
    assert!(!manifests.is_empty(), "a checkpoint manifest was written");
    // The newest is the final checkpoint, covering every subtask.
    let newest = manifests.iter().max().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(newest).unwrap()).unwrap();
    assert_eq!(m["finished"], serde_json::Value::Bool(true));
    assert_eq!(m["job"], "cluster-test");

    // A next attempt would resume from that final checkpoint.
    let start = CheckpointStart::find(&description(ck, Some(ck)))
        .unwrap()
        .expect("the job checkpoints");
    let id = m["id"].as_u64().unwrap();
    assert_eq!(start.restored_from, Some(id));
    assert_eq!(
        start.restore.unwrap().local_path().unwrap(),
        newest.parent().unwrap()
    );
    assert_eq!(start.setup.next_id, id + 1);
    assert_eq!(start.min_attempt, 2);
}

fn hello(addr: std::net::SocketAddr, job: &str, attempt: u64) -> (TcpStream, ToExecutor) {
    hello_with(addr, job, attempt, SECRET)
}

fn hello_with(
    addr: std::net::SocketAddr,
    job: &str,
    attempt: u64,
    secret: &str,
) -> (TcpStream, ToExecutor) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write_frame(
        &mut s,
        &ToCoordinator::Hello {
            protocol: sluice_protocol::PROTOCOL_VERSION,
            job_id: job.into(),
            attempt,
            // A control server outside a Raft group serves term 0.
            term: 0,
            executor: 0,
            exchange: "127.0.0.1:1".into(),
            secret: secret.into(),
            rejoin: None,
        },
    )
    .unwrap();
    let answer = read_frame(&mut s).unwrap().expect("an answer to the hello");
    (s, answer)
}

#[test]
fn stale_hellos_are_rejected_and_counted() {
    let server = ControlServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let d = description(out.path(), None);
    let start = |attempt| {
        server
            .start_attempt(AttemptConfig {
                job_id: "job-s".into(),
                attempt,
                description: d.clone(),
                placement: placement(&d, 1),
                executors: 1,
                checkpoint: None,
                stats: Arc::default(),
                secret: SECRET.into(),
                adopt: None,
            })
            .unwrap()
    };
    let a2 = start(2);
    let (_s, answer) = hello(server.local_addr(), "job-s", 1);
    assert!(matches!(answer, ToExecutor::Rejected { .. }), "{answer:?}");
    assert_eq!(a2.rejected_stale(), 1);
    let (_s, answer) = hello(server.local_addr(), "another-job", 2);
    assert!(matches!(answer, ToExecutor::Rejected { .. }), "{answer:?}");
    assert_eq!(a2.rejected_stale(), 1, "another job's refusals are its own");
    let (_s, answer) = hello_with(server.local_addr(), "job-s", 2, "guessed");
    assert!(
        matches!(&answer, ToExecutor::Rejected { reason } if reason.contains("wrong secret")),
        "{answer:?}"
    );
    assert_eq!(
        a2.rejected_stale(),
        2,
        "a wrong secret is refused and counted"
    );

    // The current attempt is welcome; a newer one supersedes it and its
    // executor is told to stop.
    let (mut current, answer) = hello(server.local_addr(), "job-s", 2);
    assert!(matches!(answer, ToExecutor::Peers { ref exchange, .. } if exchange.len() == 1));
    assert_eq!(next_event(&a2), AttemptEvent::Running);
    let a3 = start(3);
    let cancel: ToExecutor = read_frame(&mut current).unwrap().expect("a cancel");
    assert!(matches!(cancel, ToExecutor::Cancel { .. }), "{cancel:?}");
    let (_s, answer) = hello(server.local_addr(), "job-s", 2);
    assert!(matches!(answer, ToExecutor::Rejected { .. }), "{answer:?}");
    assert_eq!(
        a3.rejected_stale(),
        1,
        "counted once, in the current attempt"
    );
    assert_eq!(a2.rejected_stale(), 2);
    assert!(
        a2.events().try_recv().is_err(),
        "a superseded attempt reports nothing"
    );
}

#[test]
fn a_failing_task_fails_the_attempt_and_cancels_the_others() {
    let Some(c) = Coordinator::new(false) else {
        return;
    };
    let attempt = c.start(1, 3);
    let test = "a_failing_task_fails_the_attempt_and_cancels_the_others";
    let cluster = c.launch(test, 1, 3, None, Mode::Fail);
    assert_eq!(next_event(&attempt), AttemptEvent::Running);
    match next_event(&attempt) {
        AttemptEvent::Failed { error: e, .. } => assert!(e.contains("boom at 1000"), "{e}"),
        e => panic!("expected a failure, got {e:?}"),
    }
    // Every executor ends, none of them normally: the failed one reports,
    // the others are stopped (an executor that ran to its end would exit
    // failing).
    assert!(cluster.wait());
    assert!(attempt.events().try_recv().is_err(), "one terminal event");
}

#[test]
fn stop_with_savepoint_then_a_new_attempt_restores() {
    let Some(c) = Coordinator::new(true) else {
        return;
    };
    let test = "stop_with_savepoint_then_a_new_attempt_restores";
    let savepoint = c.ck().unwrap().join("savepoint-1");

    let first = c.start(1, 2);
    let cluster = c.launch(test, 1, 2, None, Mode::Slow);
    assert_eq!(next_event(&first), AttemptEvent::Running);
    std::thread::sleep(Duration::from_millis(300));
    let location = first.savepoint(savepoint.as_path().into(), true).unwrap();
    assert_eq!(next_event(&first), AttemptEvent::Finished);
    assert!(
        cluster.wait(),
        "every executor of the stopped attempt exits cleanly"
    );
    let before = lines(c.out.path());
    assert!(
        !before.is_empty() && before.len() < 40 * 64,
        "{} rows",
        before.len()
    );

    // The coordinator pinned the savepoint in the checkpoint directory
    // before taking it (its completion committed the sinks' output), so a
    // restart resumes from it rather than from an older checkpoint; a pin
    // whose savepoint never completed is passed over.
    let ck = c.ck().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(savepoint.join("_manifest.json")).unwrap()).unwrap();
    let savepoint_id = manifest["id"].as_u64().unwrap();
    let pinned = CheckpointStart::find(&c.d)
        .unwrap()
        .expect("the job checkpoints");
    assert_eq!(pinned.restored_from, Some(savepoint_id));
    assert_eq!(pinned.setup.next_id, savepoint_id + 1);
    let root = Storage::open(&ck.into()).unwrap();
    let never_taken = Location::from(ck.join("savepoint-never-taken").to_str().unwrap());
    pin_savepoint(&root, Some(&never_taken)).unwrap();
    let unpinned = CheckpointStart::find(&c.d).unwrap().unwrap();
    assert!(
        unpinned.restored_from < Some(savepoint_id),
        "{:?}",
        unpinned.restored_from
    );
    pin_savepoint(&root, Some(&location)).unwrap();

    let second = c.start(2, 2);
    let restore = Some(location.as_str().to_string());
    let cluster = c.launch(test, 2, 2, restore, Mode::Normal);
    let events: Vec<AttemptEvent> = (0..3)
        .map(|_| second.events().recv_timeout(PATIENCE).expect("an event"))
        .collect();
    assert_eq!(
        events,
        [
            AttemptEvent::Running,
            AttemptEvent::Finishing,
            AttemptEvent::Finished
        ],
        "every task finishes its input, the final checkpoint commits, the attempt ends"
    );
    assert!(cluster.wait());
    // Exactly once across the two attempts: the rows before the savepoint
    // and the rows after it, with the restored sums, are the embedded run's.
    assert_same_rows(lines(c.out.path()), embedded_lines());
}

#[test]
fn describe_mode_writes_the_plan_at_the_given_parallelism() {
    if as_executor() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.json");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "describe_mode_writes_the_plan_at_the_given_parallelism",
            "--nocapture",
        ])
        .env("SLUICE_DESCRIBE", &path)
        .env("SLUICE_PARALLELISM", "2")
        .status()
        .unwrap();
    assert!(status.success());
    let d: JobDescription = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(d.name, "cluster-test");
    assert_eq!(d.parallelism, 2);
    assert_eq!(d.graph_nodes, 3);
    let shape: Vec<(usize, bool, usize)> = d
        .vertices
        .iter()
        .map(|v| (v.parallelism, v.source, v.nodes.len()))
        .collect();
    // The source alone at 1; the sum with the sink chained at 2.
    assert_eq!(shape, vec![(1, true, 1), (2, false, 2)]);
    assert_eq!(d.slots(), 2);
    assert!(d.checkpoint.is_none());
}

#[test]
fn cancel_stops_every_executor() {
    let Some(c) = Coordinator::new(false) else {
        return;
    };
    let attempt = c.start(1, 2);
    let cluster = c.launch("cancel_stops_every_executor", 1, 2, None, Mode::Slow);
    assert_eq!(next_event(&attempt), AttemptEvent::Running);
    attempt.cancel("the test cancels");
    // A cancelled executor's run is an error: the children exit failing,
    // long before the slow input (1.6 s) would have ended.
    let started = std::time::Instant::now();
    assert!(!cluster.wait(), "cancelled executors report failure");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        attempt.events().try_recv().is_err(),
        "a cancel sends no event"
    );
}

#[test]
fn a_killed_executor_fails_the_attempt() {
    let Some(c) = Coordinator::new(false) else {
        return;
    };
    let attempt = c.start(1, 2);
    let test = "a_killed_executor_fails_the_attempt";
    let mut cluster = c.launch(test, 1, 2, None, Mode::Slow);
    assert_eq!(next_event(&attempt), AttemptEvent::Running);
    cluster.children[1].kill().unwrap();
    match next_event(&attempt) {
        AttemptEvent::Failed { error: e, .. } => assert!(e.contains("executor 1"), "{e}"),
        e => panic!("expected a failure, got {e:?}"),
    }
    // The survivor is cancelled and exits failing, well before its slow
    // input would have ended.
    let status = cluster.children[0].wait().unwrap();
    assert!(!status.success());
}

fn manifests(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("_manifest.json").exists())
        .count()
}

#[test]
fn a_killed_attempt_restarts_from_its_latest_checkpoint_exactly_once() {
    let Some(c) = Coordinator::new(true) else {
        return;
    };
    let test = "a_killed_attempt_restarts_from_its_latest_checkpoint_exactly_once";
    let first = c.start(1, 2);
    let mut cluster = c.launch(test, 1, 2, None, Mode::Slow);
    assert_eq!(next_event(&first), AttemptEvent::Running);
    let deadline = std::time::Instant::now() + PATIENCE;
    while manifests(c.ck().unwrap()) < 2 {
        assert!(std::time::Instant::now() < deadline, "no checkpoints");
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.children[1].kill().unwrap();
    assert!(matches!(next_event(&first), AttemptEvent::Failed { .. }));
    assert!(!cluster.wait());

    // The restart the coordinator service does: from the latest
    // checkpoint, with a higher attempt.
    let start = CheckpointStart::find(&c.d)
        .unwrap()
        .expect("the job checkpoints");
    assert!(start.restored_from.is_some());
    assert_eq!(start.min_attempt, 2);
    let restore = start.restore.as_ref().map(|l| l.as_str().to_string());
    let second = c
        .server
        .start_attempt(AttemptConfig {
            job_id: JOB_ID.into(),
            attempt: start.min_attempt,
            description: c.d.clone(),
            placement: placement(&c.d, 2),
            executors: 2,
            checkpoint: Some(start.setup),
            stats: Arc::default(),
            secret: SECRET.into(),
            adopt: None,
        })
        .unwrap();
    let cluster = c.launch(test, 2, 2, restore, Mode::Normal);
    let events: Vec<AttemptEvent> = (0..3)
        .map(|_| second.events().recv_timeout(PATIENCE).expect("an event"))
        .collect();
    assert_eq!(
        events,
        [
            AttemptEvent::Running,
            AttemptEvent::Finishing,
            AttemptEvent::Finished
        ],
        "every task finishes its input, the final checkpoint commits, the attempt ends"
    );
    assert!(cluster.wait());
    // What the first attempt committed and what the second did after the
    // restored checkpoint: every row once, with the restored sums.
    assert_same_rows(lines(c.out.path()), embedded_lines());
}
