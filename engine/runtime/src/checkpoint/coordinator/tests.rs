//! Tests of the coordinator thread, with this test playing a single source
//! task: savepoint ordering, requests queued behind a stopping savepoint,
//! a manifest that cannot be written, a completion that is refused.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::*;
use crate::checkpoint::store::{checkpoint_dir_name, load_verified};
use crate::data::CheckpointId;
use crate::error::Error;

const TASK: TaskKey = TaskKey {
    vertex: 0,
    subtask: 0,
};

/// Cancels the coordinator and waits for it.
struct Stop {
    control: Arc<JobControl>,
    thread: thread::JoinHandle<()>,
}

impl Stop {
    fn stop(self) {
        self.control.fail(Error::Cancelled);
        self.thread.join().unwrap();
    }
}

/// A coordinator over one source task played by this test: every
/// trigger is acknowledged at once (no state).
fn start(
    root: &std::path::Path,
    interval: Duration,
    on_complete: Option<CompletionHook>,
) -> (
    Sender<CoordinatorMsg>,
    Receiver<TaskControl>,
    Arc<Mutex<CheckpointStats>>,
    Stop,
) {
    start_approved(root, interval, on_complete, None)
}

/// [`start`] with an approval hook.
fn start_approved(
    root: &std::path::Path,
    interval: Duration,
    on_complete: Option<CompletionHook>,
    approve: Option<ApprovalHook>,
) -> (
    Sender<CoordinatorMsg>,
    Receiver<TaskControl>,
    Arc<Mutex<CheckpointStats>>,
    Stop,
) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (task_tx, task_rx) = crossbeam_channel::unbounded::<TaskControl>();
    let stats = Arc::new(Mutex::new(CheckpointStats::default()));
    let control = Arc::new(JobControl::default());
    let config = CheckpointConfig {
        interval,
        ..CheckpointConfig::new(root)
    };
    let coordinator = Coordinator {
        root: Storage::open(&config.dir).unwrap(),
        config,
        job: "t".into(),
        attempt: 1,
        next_id: 1,
        trigger_at_once: false,
        max_parallelism: 128,
        nodes: vec![NodeInfo {
            node: 0,
            name: "source".into(),
            uid: "source".into(),
            parallelism: 1,
        }],
        tasks: vec![(TASK, Box::new(task_tx), true)],
        rx,
        dirs: Arc::default(),
        stats: stats.clone(),
        control: control.clone(),
        prepare: None,
        on_complete,
        approve,
    };
    let thread = thread::spawn(move || coordinator.run());
    (tx, task_rx, stats, Stop { control, thread })
}

/// Plays the task: acknowledges triggers, passes other messages on.
fn ack_triggers(
    coordinator: Sender<CoordinatorMsg>,
    task: Receiver<TaskControl>,
) -> Receiver<TaskControl> {
    let (seen_tx, seen) = crossbeam_channel::unbounded();
    thread::spawn(move || {
        for msg in task {
            if let TaskControl::Trigger(b) = msg {
                let _ = coordinator.send(CoordinatorMsg::Ack {
                    id: b.id,
                    task: TASK,
                    files: Vec::new(),
                    bytes: 0,
                    uploaded: 0,
                    alignment: Duration::ZERO,
                });
            }
            let _ = seen_tx.send(msg);
        }
    });
    seen
}

fn savepoint(dir: &std::path::Path, stop: bool) -> (SavepointRequest, Receiver<Result<Location>>) {
    let (reply, rx) = crossbeam_channel::bounded(1);
    let req = SavepointRequest {
        dir: Storage::open(&Location::from(dir)).unwrap(),
        stop,
        reply,
    };
    (req, rx)
}

#[test]
fn savepoints_are_taken_in_the_order_they_were_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, task, _, coordinator) = start(&dir.path().join("ck"), Duration::from_secs(3600), None);
    // The task holds its first acknowledgement until two more
    // requests wait behind the first: first asked, first taken.
    let (a, a_reply) = savepoint(&dir.path().join("a"), false);
    tx.send(CoordinatorMsg::Savepoint(a)).unwrap();
    let first = task.recv_timeout(Duration::from_secs(10)).unwrap();
    let (b, b_reply) = savepoint(&dir.path().join("b"), false);
    let (c, c_reply) = savepoint(&dir.path().join("c"), false);
    tx.send(CoordinatorMsg::Savepoint(b)).unwrap();
    tx.send(CoordinatorMsg::Savepoint(c)).unwrap();
    thread::sleep(Duration::from_millis(100));
    let TaskControl::Trigger(barrier) = first else {
        panic!("{first:?}");
    };
    tx.send(CoordinatorMsg::Ack {
        id: barrier.id,
        task: TASK,
        files: Vec::new(),
        bytes: 0,
        uploaded: 0,
        alignment: Duration::ZERO,
    })
    .unwrap();
    let _seen = ack_triggers(tx.clone(), task);
    let id = |reply: Receiver<Result<Location>>| {
        let l = reply
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap();
        load_verified(&Storage::open(&l).unwrap()).unwrap().id
    };
    let (a, b, c) = (id(a_reply), id(b_reply), id(c_reply));
    assert!(a < b && b < c, "taken as {a}, {b}, {c}");
    coordinator.stop();
}

#[test]
fn requests_queued_behind_a_stopping_savepoint_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, task, _, coordinator) = start(&dir.path().join("ck"), Duration::from_secs(3600), None);
    let (stop, stop_reply) = savepoint(&dir.path().join("stop"), true);
    let (later, later_reply) = savepoint(&dir.path().join("later"), false);
    tx.send(CoordinatorMsg::Savepoint(stop)).unwrap();
    tx.send(CoordinatorMsg::Savepoint(later)).unwrap();
    let _seen = ack_triggers(tx.clone(), task);
    stop_reply
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let e = later_reply
        .recv_timeout(Duration::from_secs(10))
        .expect("answered, not dropped")
        .unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");
    coordinator.stop();
}

#[test]
fn a_checkpoint_whose_manifest_cannot_be_written_is_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ck");
    std::fs::create_dir_all(&root).unwrap();
    // Where checkpoint 1's directory would go stands a file: its
    // manifest cannot be written (whoever runs the test).
    std::fs::write(root.join(checkpoint_dir_name(1)), b"in the way").unwrap();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let hook: CompletionHook = {
        let heard = heard.clone();
        Arc::new(move |r: &CheckpointRecord| heard.lock().unwrap().push(r.id))
    };
    let (tx, task, stats, coordinator) = start(&root, Duration::from_millis(20), Some(hook));
    let seen = ack_triggers(tx.clone(), task);
    // The task is told, as for any aborted checkpoint, and the
    // coordinator goes on: the next checkpoint completes.
    let mut told = Vec::new();
    while !told.contains(&"complete 2") {
        match seen.recv_timeout(Duration::from_secs(10)).unwrap() {
            TaskControl::Abort(CheckpointId(1)) => told.push("abort 1"),
            TaskControl::Complete(CheckpointId(1)) => told.push("complete 1"),
            TaskControl::Complete(CheckpointId(2)) => told.push("complete 2"),
            _ => {}
        }
    }
    assert_eq!(told, ["abort 1", "complete 2"]);
    let s = stats.lock().unwrap().clone();
    assert_eq!((s.aborted, s.completed), (1, 1));
    // The completion hook (metrics) heard the completed one, once,
    // before the task was told; the aborted one never.
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard[0], 2, "{heard:?}");
    assert!(heard.windows(2).all(|w| w[0] < w[1]), "{heard:?}");
    assert!(root
        .join(checkpoint_dir_name(2))
        .join("_manifest.json")
        .is_file());
    coordinator.stop();
}

#[test]
fn a_checkpoint_whose_completion_is_refused_is_aborted_and_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ck");
    // Checkpoint 1 is approved, 2 refused (a coordinator that can no
    // longer commit to its Raft group).
    let approve: ApprovalHook = Arc::new(|id, _| {
        if id == 1 {
            Ok(())
        } else {
            Err(format!("checkpoint {id}: not the leader"))
        }
    });
    let (tx, task, stats, coordinator) =
        start_approved(&root, Duration::from_millis(20), None, Some(approve));
    let seen = ack_triggers(tx.clone(), task);
    let mut told = Vec::new();
    while !told.contains(&"abort 2") {
        assert!(told.len() < 5, "checkpoint 2 was not refused: {told:?}");
        match seen.recv_timeout(Duration::from_secs(10)).unwrap() {
            TaskControl::Complete(CheckpointId(n)) => told.push(if n == 1 {
                "complete 1"
            } else {
                "complete later"
            }),
            TaskControl::Abort(CheckpointId(2)) => told.push("abort 2"),
            _ => {}
        }
    }
    assert_eq!(told, ["complete 1", "abort 2"]);
    let dir_of = |n| root.join(checkpoint_dir_name(n)).join("_manifest.json");
    assert!(dir_of(1).is_file());
    assert!(!dir_of(2).exists(), "a refused checkpoint has no manifest");
    // Counted once the abort is done, just after the task was told.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.lock().unwrap().aborted == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let s = stats.lock().unwrap().clone();
    assert_eq!((s.completed, s.aborted), (1, 1));
    let failed = coordinator.control.take_error().map(|e| e.to_string());
    assert!(
        failed
            .as_deref()
            .is_some_and(|e| e.contains("not approved")),
        "{failed:?}"
    );
    coordinator.stop();
}
