//! Raft groups of coordinators in this process, on real sockets and
//! RocksDB logs in temporary directories: elections, replication, a
//! leader that stops, a member that catches up through a snapshot, a
//! restart from disk, and the manager writing through the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::api::{JobState, RestartPolicy, SubmitJob};

use super::*;
use crate::coordinator::artifacts::{ArtifactLimits, ArtifactStore};
use crate::coordinator::manager::tests::{description, record};
use crate::coordinator::manager::Manager;
use crate::coordinator::meta::{IdCounters, MetaStore};
use crate::coordinator::CoordinatorConfig;

struct Member {
    replica: Replica,
    server: tokio::task::JoinHandle<()>,
    artifacts: Arc<ArtifactStore>,
}

fn settings(id: NodeId, peers: &BTreeMap<NodeId, String>, snapshot_every: u64) -> RaftSettings {
    RaftSettings {
        node_id: id,
        peers: peers.clone(),
        election_timeout: Duration::from_millis(300),
        snapshot_every,
        join: false,
    }
}

/// Free ports for `n` members, and their URLs by id (1..=n).
fn ports(n: usize) -> (Vec<std::net::TcpListener>, BTreeMap<NodeId, String>) {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                i as NodeId + 1,
                format!("http://{}", l.local_addr().unwrap()),
            )
        })
        .collect();
    (listeners, peers)
}

async fn start(listener: std::net::TcpListener, settings: RaftSettings, dir: &Path) -> Member {
    let artifacts =
        Arc::new(ArtifactStore::open(&dir.join("artifacts"), ArtifactLimits::default()).unwrap());
    // A member stopped in this process lets go of its RocksDB lock once
    // openraft's tasks have dropped their handles: try again meanwhile.
    let started = Instant::now();
    let replica = loop {
        match Replica::start(&dir.join("raft"), settings.clone(), None, None).await {
            Ok(r) => break r,
            Err(e)
                if started.elapsed() < Duration::from_secs(10)
                    && e.to_string().contains("lock") =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let app = network::routes(
        replica.clone(),
        artifacts.clone(),
        &sluice_web::Access::open(),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Member {
        replica,
        server,
        artifacts,
    }
}

impl Member {
    async fn stop(self) {
        self.replica.raft().shutdown().await.unwrap();
        self.server.abort();
        let _ = self.server.await;
    }
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The member that leads, once one does and the others agree.
async fn leader(members: &[&Member]) -> usize {
    let mut found = None;
    wait_until("a leader", || {
        found = members.iter().position(|m| m.replica.position().leading);
        found.is_some_and(|l| {
            let id = members[l].replica.id();
            members
                .iter()
                .all(|m| m.replica.position().leader == Some(id))
        })
    })
    .await;
    found.expect("waited")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_replicates_and_elects_another_leader_when_its_leader_stops() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (listeners, peers) = ports(3);
    let mut members = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        members.push(start(l, settings(i as NodeId + 1, &peers, 1000), dirs[i].path()).await);
    }
    let all: Vec<&Member> = members.iter().collect();
    let first = leader(&all).await;
    let term = members[first].replica.position().term;
    members[first]
        .replica
        .write_async(Command::SetIds(IdCounters {
            next_job: 5,
            next_worker: 3,
        }))
        .await
        .unwrap();
    wait_until("every member to apply the counters", || {
        members
            .iter()
            .all(|m| m.replica.read(|s| s.ids.next_job) == 5)
    })
    .await;
    // Counters never go back, whatever order writes arrive in.
    members[first]
        .replica
        .write_async(Command::SetIds(IdCounters {
            next_job: 2,
            next_worker: 9,
        }))
        .await
        .unwrap();
    assert_eq!(
        members[first].replica.read(|s| s.ids),
        IdCounters {
            next_job: 5,
            next_worker: 9
        }
    );
    // A follower cannot write.
    let follower = (first + 1) % 3;
    let refused = members[follower]
        .replica
        .write_async(Command::ArtifactStored("x".into()))
        .await;
    assert!(refused.is_err(), "a follower committed a write");

    // The leader stops; the other two elect one in a later term, which
    // carries on from the same state.
    let stopped = members.remove(first);
    stopped.stop().await;
    let rest: Vec<&Member> = members.iter().collect();
    let second = leader(&rest).await;
    let position = members[second].replica.position();
    assert!(position.term > term, "{position:?} after term {term}");
    members[second]
        .replica
        .write_async(Command::ArtifactStored("y".into()))
        .await
        .unwrap();
    wait_until("the other member to apply it", || {
        members.iter().all(|m| {
            m.replica
                .read(|s| s.artifacts.contains("y") && s.ids.next_worker == 9)
        })
    })
    .await;
    for m in members {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_was_down_catches_up_through_a_snapshot() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut listeners, peers) = ports(3);
    let late = listeners.pop().expect("three");
    // Member 3 is down: nothing answers on its port.
    let late_addr = late.local_addr().unwrap();
    drop(late);
    let mut members = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        members.push(start(l, settings(i as NodeId + 1, &peers, 5), dirs[i].path()).await);
    }
    let two: Vec<&Member> = members.iter().collect();
    let l = leader(&two).await;
    for n in 0..30 {
        members[l]
            .replica
            .write_async(Command::ArtifactStored(format!("a{n}")))
            .await
            .unwrap();
    }
    wait_until("the leader to purge its log behind a snapshot", || {
        members[l]
            .replica
            .raft()
            .metrics()
            .borrow()
            .purged
            .is_some()
    })
    .await;
    let late = std::net::TcpListener::bind(late_addr).unwrap();
    let third = start(late, settings(3, &peers, 5), dirs[2].path()).await;
    wait_until("the late member to catch up", || {
        third.replica.read(|s| s.artifacts.len()) == 30
    })
    .await;
    let metrics = third.replica.raft().metrics().borrow().clone();
    assert!(
        metrics.snapshot.is_some(),
        "caught up without a snapshot: {metrics:?}"
    );
    third.stop().await;
    for m in members {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manager_in_a_group_of_one_writes_through_the_log_and_a_restart_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let sha = crate::client::sha256_hex(b"binary");
    let job = {
        let (mut listeners, peers) = ports(1);
        let member = start(listeners.remove(0), settings(1, &peers, 1000), dir.path()).await;
        leader(&[&member]).await;
        std::fs::write(member.artifacts.path(&sha), b"binary").unwrap();
        let meta =
            MetaStore::replicated(dir.path(), member.artifacts.clone(), member.replica.clone());
        let config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
        let submission = SubmitJob {
            artifact: sha.clone(),
            args: Vec::new(),
            parallelism: None,
            workdir: None,
            description: description(None, RestartPolicy::None),
            autoscale: None,
        };
        let job = tokio::task::spawn_blocking(move || {
            let manager = Manager::open_with(config, meta).unwrap();
            manager.submit(submission).unwrap()
        })
        .await
        .unwrap();
        member.replica.read(|s| {
            assert!(s.jobs.contains_key(&job), "{:?}", s.jobs.keys());
            assert!(s.artifacts.contains(&sha), "the binary is indexed");
            assert_eq!(s.ids.next_job, 2);
        });
        member.stop().await;
        job
    };
    // Nothing in the data directory but the log and the binaries.
    assert!(!dir.path().join("jobs").exists());
    let (mut listeners, peers) = ports(1);
    let member = start(listeners.remove(0), settings(1, &peers, 1000), dir.path()).await;
    leader(&[&member]).await;
    member.replica.ensure_linearizable().await.unwrap();
    member.replica.read(|s| {
        assert_eq!(s.jobs[&job].life.state, JobState::Created);
        assert_eq!(s.ids.next_job, 2);
    });
    // Restarted on another port: the membership still names the old
    // one until the leader writes its new URL.
    assert_ne!(member.replica.members(false)[&1], peers[&1]);
    assert!(member.replica.correct_own_url().await.unwrap());
    assert_eq!(member.replica.members(false)[&1], peers[&1]);
    assert_eq!(
        member.replica.leader_url().as_deref(),
        Some(peers[&1].as_str())
    );
    assert!(!member.replica.correct_own_url().await.unwrap(), "once");
    member.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_records_of_a_data_directory_before_raft_move_into_the_log_once() {
    let dir = tempfile::tempdir().unwrap();
    // What a coordinator of the release before Raft left: a record with
    // its exceptions history, and counters past it.
    let mut old = record(JobState::Running);
    old.exceptions.push(sluice_protocol::api::JobException {
        time_ms: 5,
        attempt: 1,
        error: "worker-2 was lost".into(),
        outcome: "restart".into(),
    });
    let files = MetaStore::open(dir.path()).unwrap();
    files.save(&old).unwrap();
    let counters = IdCounters {
        next_job: 9,
        next_worker: 4,
    };
    files.save_ids(&counters).unwrap();

    let (mut listeners, peers) = ports(1);
    let member = start(listeners.remove(0), settings(1, &peers, 1000), dir.path()).await;
    leader(&[&member]).await;
    let meta = MetaStore::replicated(dir.path(), member.artifacts.clone(), member.replica.clone());
    let again = meta.clone();
    let imported = tokio::task::spawn_blocking(move || {
        (meta.import_files().unwrap(), again.import_files().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(imported, (1, 0), "imported once");
    member.replica.read(|s| {
        let r = &s.jobs[&old.id];
        assert_eq!(r.life.state, JobState::Running);
        assert_eq!(r.exceptions.len(), 1, "{:?}", r.exceptions);
        assert_eq!(r.exceptions[0].error, "worker-2 was lost");
        assert_eq!(s.ids, counters);
    });
    assert!(!dir.path().join("jobs").exists());
    assert!(dir
        .path()
        .join("jobs.imported")
        .join("job-7.json")
        .is_file());
    assert!(dir.path().join("ids.json.imported").is_file());
    member.stop().await;
}

#[test]
fn only_the_current_attempt_of_a_live_job_completes_checkpoints() {
    let mut state = MetaState::default();
    let ask_in = |state: &mut MetaState, attempt: u64, id: u64, term: u64| {
        state.apply(Command::CheckpointCompleted {
            job: "job-7".into(),
            attempt,
            id,
            savepoint: false,
            term,
        })
    };
    let ask = |state: &mut MetaState, attempt: u64, id: u64| ask_in(state, attempt, id, 1);
    assert!(ask(&mut state, 1, 1).refused.is_some(), "no such job");
    state.apply(Command::PutJob(Box::new(record(JobState::Running))));
    assert_eq!(ask(&mut state, 1, 4).refused, None);
    assert_eq!(state.jobs["job-7"].latest_checkpoint, Some(4));
    // A stale attempt (a newer one was recorded) is refused.
    let mut newer = record(JobState::Scheduling);
    newer.life.attempt = 2;
    state.apply(Command::PutJob(Box::new(newer)));
    let refused = ask(&mut state, 1, 5).refused.expect("refused");
    assert!(refused.contains("not its current attempt"), "{refused}");
    assert_eq!(ask(&mut state, 2, 5).refused, None);
    // A job a new leader reopened (RESTARTING) completes nothing.
    let mut reopened = record(JobState::Restarting);
    reopened.life.attempt = 2;
    state.apply(Command::PutJob(Box::new(reopened)));
    assert!(ask(&mut state, 2, 6).refused.is_some());
    assert_eq!(state.jobs["job-7"].latest_checkpoint, None, "untouched");
    // A new leader of term 3 adopted attempt 2: the deposed leader's
    // completion (term 1) is refused, the new leader's taken.
    let mut adopted = record(JobState::Running);
    adopted.life.attempt = 2;
    adopted.run = Some(crate::coordinator::meta::RunRecord {
        attempt: 2,
        term: 3,
        secret: "s".into(),
        tasks: Vec::new(),
        executors: Vec::new(),
    });
    state.apply(Command::PutJob(Box::new(adopted)));
    let refused = ask(&mut state, 2, 7).refused.expect("refused");
    assert!(refused.contains("served under term 3"), "{refused}");
    assert_eq!(ask_in(&mut state, 2, 7, 3).refused, None);
    assert_eq!(state.jobs["job-7"].latest_checkpoint, Some(7));
}

#[test]
fn peers_are_parsed_with_clear_errors() {
    let peers = RaftSettings::parse_peers("1=http://a:7070, 2=https://b:7070/").unwrap();
    assert_eq!(peers[&1], "http://a:7070");
    assert_eq!(peers[&2], "https://b:7070");
    for (text, want) in [
        ("1=http://a,1=http://b", "named twice"),
        ("x=http://a", "not a node id"),
        ("1=a:7070", "not an http"),
        ("1", "not ID=URL"),
        ("", "no peers"),
    ] {
        let e = RaftSettings::parse_peers(text).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
    }
}
