//! Coordinators replicated by Raft, as real processes: three `sluice
//! coordinator`s with `--node-id`/`--peers`, each on its own data
//! directory, workers and the CLI given all three URLs, q5 submitted with
//! `sluice submit` and its Parquet output read back with the parquet
//! crate's reader. The leader is SIGKILLed while the job checkpoints (and
//! while a Kafka → Parquet job runs beside it, reading a tansu broker), or
//! the whole group is killed and started again; the followers are frozen
//! (SIGSTOP) so the leader is cut off from its majority; a worker dies
//! with the leader; a coordinator is added to a group of two and another
//! removed, with the CLI.

use std::time::Duration;

use serde_json::Value;
use sluice_connectors::kafka::testing::Broker;

mod common;
use common::cluster::{embedded_q5, Cluster};
use common::{
    assert_exactly_once, header, http, kafka_reference, local_status_at, produce_events, rows,
};

const COORDINATORS: usize = 3;

fn port(cluster: &Cluster, i: usize) -> u16 {
    cluster
        .coordinator_url(i)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The coordinator that answers the API (the leader), if one does.
fn leader(cluster: &Cluster, alive: &[usize]) -> Option<usize> {
    alive
        .iter()
        .copied()
        .find(|&i| http(port(cluster, i), "GET", "/api/v1/jobs", None).0 == 200)
}

#[test]
fn a_new_leader_is_elected_when_the_leader_is_killed_and_the_job_finishes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let mut cluster = Cluster::start_replicated(dir.path(), 2, 2, COORDINATORS);
    let job = cluster.submit_q5(2, "150000");
    let before = cluster.after_a_checkpoint(&job);
    let all: Vec<usize> = (0..COORDINATORS).collect();
    let first = leader(&cluster, &all).expect("a leader answers");
    let leader_url = cluster.coordinator_url(first);

    // Followers: writes and leader reads get 503 naming the leader; a
    // local read answers from the follower's copy of the log, saying
    // how far it is applied and in which term.
    for f in all.iter().copied().filter(|&i| i != first) {
        let (code, head, body) = http(
            port(&cluster, f),
            "POST",
            &format!("/api/v1/jobs/{job}/cancel"),
            None,
        );
        assert_eq!(code, 503, "{head}\n{body}");
        assert_eq!(
            header(&head, "x-sluice-leader"),
            Some(leader_url.as_str()),
            "{head}"
        );
        let (code, head, body) = http(
            port(&cluster, f),
            "GET",
            &format!("/api/v1/jobs/{job}?consistency=local"),
            None,
        );
        assert_eq!(code, 200, "{head}\n{body}");
        let local: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(local["id"], job.as_str(), "{body}");
        let applied: u64 = header(&head, "x-sluice-raft-applied")
            .unwrap()
            .parse()
            .unwrap();
        let term: u64 = header(&head, "x-sluice-raft-term")
            .unwrap()
            .parse()
            .unwrap();
        assert!(applied > 0 && term > 0, "{head}");
    }
    // The leader answers linearizable reads (confirmed with a majority).
    let (code, head, _) = http(
        port(&cluster, first),
        "GET",
        "/api/v1/jobs?consistency=linearizable",
        None,
    );
    assert_eq!(code, 200, "{head}");
    let (code, _, body) = http(
        port(&cluster, first),
        "GET",
        "/api/v1/jobs?consistency=sometimes",
        None,
    );
    assert_eq!(code, 400, "{body}");

    // SIGKILL the leader: the other two elect one, which resumes the job
    // from its latest checkpoint under a new attempt.
    cluster.kill_coordinator_at(first);
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != first).collect();
    cluster.wait_for(Duration::from_secs(30), "a new leader", |c| {
        leader(c, &rest).is_some()
    });
    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(180));
    assert_eq!(
        done["attempt"], before["attempt"],
        "adopted by the new leader, not restarted: {done}"
    );
    let out = dir.path().join("out");
    assert_exactly_once(&want, &rows(&out), &out, "q5 across a leader's SIGKILL");

    // The killed coordinator comes back as a follower and catches up.
    cluster.start_coordinator_at(first).unwrap();
    cluster.wait_for(Duration::from_secs(30), "the old leader to catch up", |c| {
        // Listening once it bound its port, which it keeps.
        if std::net::TcpStream::connect(("127.0.0.1", port(c, first))).is_err() {
            return false;
        }
        let (code, _, body) = http(
            port(c, first),
            "GET",
            &format!("/api/v1/jobs/{job}?consistency=local"),
            None,
        );
        code == 200 && serde_json::from_str::<Value>(&body).is_ok_and(|s| s["state"] == "FINISHED")
    });
}

#[test]
fn kafka_to_parquet_and_q5_resume_exactly_once_across_a_leader_kill() {
    const RECORDS: usize = 150_000;
    let broker = Broker::start().unwrap();
    produce_events(&broker, "events", RECORDS);
    let dir = tempfile::tempdir().unwrap();
    let kafka = [
        "--brokers",
        &broker.address(),
        "--topic",
        "events",
        "--format",
        "json",
    ];
    let mut bounded = kafka.to_vec();
    bounded.push("--until-end");
    let want_kafka = kafka_reference(&bounded, 2, &dir.path().join("reference-kafka"));
    assert_eq!(want_kafka.values().sum::<usize>(), RECORDS);
    let want_q5 = embedded_q5(dir.path());

    let mut cluster = Cluster::start_replicated(dir.path(), 2, 3, COORDINATORS);
    // Unbounded, so it is surely running when the leader dies: it has
    // consumed the topic once all its rows are committed.
    let mut args = kafka.to_vec();
    args.extend([
        "--output",
        "kafka-out",
        "--checkpoint-dir",
        "kafka-ck",
        "--checkpoint-interval",
        "200ms",
    ]);
    let from_kafka = cluster.submit(2, env!("CARGO_BIN_EXE_kafka_to_parquet"), &args);
    let kafka_before = cluster.after_a_checkpoint(&from_kafka);
    let q5 = cluster.submit_q5(2, "150000");
    let q5_before = cluster.after_a_checkpoint(&q5);
    let all: Vec<usize> = (0..COORDINATORS).collect();
    let first = leader(&cluster, &all).expect("a leader answers");
    cluster.kill_coordinator_at(first);

    // A new leader resumes both from their latest checkpoints.
    let done = cluster.wait_state(&q5, "FINISHED", Duration::from_secs(180));
    assert_eq!(
        done["attempt"], q5_before["attempt"],
        "q5 adopted by the new leader, not restarted: {done}"
    );
    let out = dir.path().join("out");
    assert_exactly_once(&want_q5, &rows(&out), &out, "q5 across a leader's SIGKILL");
    let out = dir.path().join("kafka-out");
    cluster.wait_for(
        Duration::from_secs(120),
        "every Kafka record committed to Parquet",
        |_| rows(&out).values().sum::<usize>() >= RECORDS,
    );
    let status = cluster.status(&from_kafka);
    assert_eq!(
        status["attempt"], kafka_before["attempt"],
        "kafka_to_parquet adopted by the new leader, not restarted: {status}"
    );
    assert_exactly_once(
        &want_kafka,
        &rows(&out),
        &out,
        "kafka_to_parquet across a leader's SIGKILL",
    );
    let cancel = cluster.sluice(&["cancel", &from_kafka]).unwrap();
    assert!(cancel.status.success());
}

#[test]
fn a_group_restarted_all_at_once_resumes_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let mut cluster = Cluster::start_replicated(dir.path(), 2, 2, COORDINATORS);
    let job = cluster.submit_q5(2, "150000");
    let before = cluster.after_a_checkpoint(&job);
    for i in 0..COORDINATORS {
        cluster.kill_coordinator_at(i);
    }
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..COORDINATORS {
        cluster.start_coordinator_at(i).unwrap();
    }
    cluster.wait_for_api().unwrap_or_else(|e| panic!("{e}"));
    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(180));
    assert_eq!(
        done["attempt"], before["attempt"],
        "adopted by the new leader, not restarted: {done}"
    );
    let out = dir.path().join("out");
    assert_exactly_once(
        &want,
        &rows(&out),
        &out,
        "q5 across a restart of every coordinator",
    );
}

#[test]
fn a_worker_lost_with_the_leader_restarts_the_job_under_the_new_leader() {
    // The leader and a worker running the job die together: the new
    // leader adopts the attempt, but the lost worker's executor can never
    // rejoin, so the attempt fails (its peer's exchange breaks and it
    // exits, or the rejoin grace ends) and the job restarts from its
    // latest checkpoint on the workers left: only a failure restarts it.
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let cluster = Cluster::start_replicated(dir.path(), 3, 2, COORDINATORS);
    let job = cluster.submit_q5(2, "150000");
    let before = cluster.after_a_checkpoint(&job);
    let victim = before["placement"][0]["worker"]
        .as_str()
        .expect("a placed worker")
        .to_string();
    let pos = cluster
        .worker_position(&victim)
        .unwrap_or_else(|e| panic!("{e}"));
    let all: Vec<usize> = (0..COORDINATORS).collect();
    let first = leader(&cluster, &all).expect("a leader answers");
    let mut cluster = cluster;
    cluster.signal_worker(pos, "-KILL");
    cluster.kill_coordinator_at(first);
    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(180));
    assert!(
        done["attempt"].as_u64() > before["attempt"].as_u64()
            && done["restarts"].as_u64() > before["restarts"].as_u64(),
        "restarted after the adopted attempt failed: {done}"
    );
    let out = dir.path().join("out");
    assert_exactly_once(
        &want,
        &rows(&out),
        &out,
        "q5 across a lost leader and worker",
    );
}

/// Coordinator `i`'s own copy of `job`'s status, and the term it answers in.
fn local_status(cluster: &Cluster, i: usize, job: &str) -> (Value, u64) {
    local_status_at("127.0.0.1", port(cluster, i), job)
}

#[test]
fn a_leader_cut_off_from_its_majority_steps_down_and_completes_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let cluster = Cluster::start_replicated(dir.path(), 2, 2, COORDINATORS);
    let job = cluster.submit_q5(2, "150000");
    let before = cluster.after_a_checkpoint(&job);
    let all: Vec<usize> = (0..COORDINATORS).collect();
    let first = leader(&cluster, &all).expect("a leader answers");
    let followers: Vec<usize> = all.iter().copied().filter(|&i| i != first).collect();

    // Both followers frozen: the leader still runs and reaches its workers
    // and executors, but no majority acknowledges it any more.
    for &f in &followers {
        cluster.signal_coordinator(f, "STOP");
    }
    // A commit already acknowledged before the freeze may still apply.
    std::thread::sleep(Duration::from_millis(500));
    let (cut_off, term_cut_off) = local_status(&cluster, first, &job);
    cluster.wait_for(
        Duration::from_secs(20),
        "the cut-off leader to stop answering as leader",
        |c| http(port(c, first), "GET", "/api/v1/jobs", None).0 == 503,
    );
    // Its executors ran on meanwhile, but no checkpoint of theirs could
    // complete: a completion is an entry of the log, which needs a
    // majority.
    std::thread::sleep(Duration::from_secs(2));
    let (later, _) = local_status(&cluster, first, &job);
    assert_eq!(
        later["latest_checkpoint"], cut_off["latest_checkpoint"],
        "a checkpoint completed without a majority: {later}"
    );

    // Healed: one leader, and the job resumes from a checkpoint the log
    // accepted and finishes exactly once.
    for &f in &followers {
        cluster.signal_coordinator(f, "CONT");
    }
    cluster.wait_for(Duration::from_secs(30), "a leader after healing", |c| {
        leader(c, &all).is_some()
    });
    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(180));
    assert_eq!(
        done["attempt"], before["attempt"],
        "adopted by the new leader, not restarted: {done}"
    );
    let out = dir.path().join("out");
    assert_exactly_once(&want, &rows(&out), &out, "q5 across a cut-off leader");
    let leaders: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| http(port(&cluster, i), "GET", "/api/v1/jobs", None).0 == 200)
        .collect();
    assert_eq!(leaders.len(), 1, "one leader after healing: {leaders:?}");
    cluster.wait_for(Duration::from_secs(10), "every member in one term", |c| {
        let terms: Vec<u64> = all.iter().map(|&i| local_status(c, i, &job).1).collect();
        terms.iter().all(|&t| t == terms[0] && t >= term_cut_off)
    });
}

/// `sluice coordinators --json`: the group as its leader knows it.
fn group(cluster: &Cluster) -> Value {
    cluster.json(&["coordinators", "--json"])
}

/// The voters' ids in `group`.
fn voters(group: &Value) -> Vec<u64> {
    group["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|c| c["voter"] == true)
                .filter_map(|c| c["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_third_coordinator_is_added_to_a_group_of_two_and_another_removed() {
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let mut cluster = Cluster::start_replicated(dir.path(), 2, 2, 2);
    let job = cluster.submit_q5(2, "150000");
    cluster.after_a_checkpoint(&job);
    assert_eq!(voters(&group(&cluster)), [1, 2], "{}", group(&cluster));

    // A coordinator started with --join holds nothing until it is added.
    let new = cluster.start_joining_coordinator().unwrap();
    let new_id = new as u64 + 1;
    let new_url = cluster.coordinator_url(new);
    let (code, _, body) = http(
        port(&cluster, new),
        "GET",
        "/api/v1/jobs?consistency=local",
        None,
    );
    assert_eq!((code, body.trim()), (200, "[]"));

    // Bad requests are refused and change nothing.
    let out = cluster
        .sluice(&["coordinators", "add", "1", &new_url])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("voter already"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster
        .sluice(&["coordinators", "add", "9", "http://127.0.0.1:1"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no coordinator answers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another member's URL under a new id (the fuzzer's find: the
    // leader sent Raft's messages for "node 7" to itself, and openraft's
    // core panicked), and the new coordinator under another id.
    let out = cluster
        .sluice(&["coordinators", "add", "7", &cluster.coordinator_url(0)])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("coordinator 1's URL"),
        "{err}"
    );
    let out = cluster
        .sluice(&["coordinators", "add", "7", &new_url])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("is node {new_id}")),
        "{err}"
    );
    assert_eq!(voters(&group(&cluster)), [1, 2]);

    // Added: it caught up (it has the job's record) and votes.
    let out = cluster
        .sluice(&["coordinators", "add", &new_id.to_string(), &new_url])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = group(&cluster);
    assert_eq!(voters(&after), [1, 2, new_id], "{after}");
    let (code, _, body) = http(
        port(&cluster, new),
        "GET",
        &format!("/api/v1/jobs/{job}?consistency=local"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    // It stores the job's binary: once the group is the leader and it, a
    // majority must still have it.
    let status: Value = serde_json::from_str(&body).unwrap();
    let sha = status["artifact"].as_str().unwrap();
    assert!(
        dir.path()
            .join(format!("coordinator-{new}/artifacts/{sha}"))
            .is_file(),
        "the new coordinator lacks binary {sha}"
    );

    // Remove the original member that does not lead: the group is the
    // leader and the new member, so every change from now on needs the
    // new member's vote, and the job still finishes.
    let leader = after["leader"].as_u64().unwrap();
    let gone = [1, 2].into_iter().find(|&i| i != leader).unwrap();
    let out = cluster
        .sluice(&["coordinators", "remove", &gone.to_string()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sorted = vec![leader, new_id];
    sorted.sort();
    assert_eq!(voters(&group(&cluster)), sorted);
    let out = cluster
        .sluice(&["coordinators", "remove", &gone.to_string()])
        .unwrap();
    assert!(!out.status.success(), "removed twice");
    cluster.kill_coordinator_at(gone as usize - 1);

    cluster.wait_state(&job, "FINISHED", Duration::from_secs(180));
    let out = dir.path().join("out");
    assert_exactly_once(&want, &rows(&out), &out, "q5 across membership changes");
}
