//! The coordinators' job API checked for linearizability. Clients submit,
//! cancel and read jobs (reads at `?consistency=linearizable`) from
//! several threads against a Raft group of three `sluice coordinator`s
//! while the leader is SIGKILLed (and started again) and then the next
//! leader is frozen with SIGSTOP (cut off from everyone) and woken. Every
//! call's invocation, answer and return time is recorded; the history of
//! each job is then checked against a sequential model of a job (absent,
//! submitted, cancelled, forgotten by retention) by the checker in
//! `linearizability/`. There are
//! no workers: jobs wait for slots, so only the clients change them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;

mod common;
mod linearizability;
use common::cluster::{q5_args, Cluster};
use linearizability::{linearizable, Call, Model};

const COORDINATORS: usize = 3;
const CLIENTS: usize = 4;

/// A job as the clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Job {
    Absent,
    Submitted,
    Cancelled,
    /// An ended job beyond the coordinator's retention (`retained_jobs`)
    /// is forgotten, at a moment of the coordinator's choosing, for good.
    Forgotten,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Submit,
    Cancel,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// Submit: accepted under this job's id.
    Accepted,
    /// Cancel: 200, the job cancelled.
    Cancelled,
    /// Cancel: 409, the job had ended.
    Ended,
    /// 404.
    NotFound,
    /// Read: a state other than CANCELED.
    Live,
    /// Read: CANCELED.
    Gone,
}

impl Model for Job {
    type Op = Op;
    type Out = Out;
    fn step(&self, op: &Op, out: Option<&Out>) -> Vec<Job> {
        use Job::*;
        let ok = match (self, op, out) {
            (Absent, Op::Submit, Some(Out::Accepted) | None) => Some(Submitted),
            (Submitted, Op::Cancel, Some(Out::Cancelled) | None) => Some(Cancelled),
            (Cancelled, Op::Cancel, Some(Out::Ended) | None) => Some(Cancelled),
            (Absent, Op::Cancel | Op::Read, Some(Out::NotFound) | None) => Some(Absent),
            (Submitted, Op::Read, Some(Out::Live)) => Some(Submitted),
            (Cancelled, Op::Read, Some(Out::Gone)) => Some(Cancelled),
            (Cancelled | Forgotten, Op::Cancel | Op::Read, Some(Out::NotFound)) => Some(Forgotten),
            (Forgotten, Op::Cancel, None) => Some(Forgotten),
            _ => None,
        };
        ok.into_iter().collect()
    }
}

/// One recorded call on the job `job`.
struct Record {
    client: usize,
    job: String,
    call: Call<Op, Out>,
}

/// Status and body of one request to `url`, or `None` when it did not
/// answer (it may still take effect).
fn request(url: &str, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    // Longer than a write waits for a commit (5 s).
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// A client: calls until `stop`, on the coordinator it last found leading.
fn client(
    me: usize,
    urls: Vec<String>,
    submission: String,
    known: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> Vec<Record> {
    let mut rng = rand::rng();
    let mut at = me % urls.len();
    let mut history = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let url = &urls[at];
        let ids = known.lock().unwrap().clone();
        let pick = rng.random_range(0..10);
        let invoked = Instant::now();
        let (op, job, answer) = if ids.is_empty() || pick < 3 {
            let answer = request(url, "POST", "/api/v1/jobs", &submission);
            (Op::Submit, None, answer)
        } else {
            let job = ids[rng.random_range(0..ids.len())].clone();
            if pick < 5 {
                let path = format!("/api/v1/jobs/{job}/cancel");
                (Op::Cancel, Some(job), request(url, "POST", &path, "{}"))
            } else {
                let path = format!("/api/v1/jobs/{job}?consistency=linearizable");
                (Op::Read, Some(job), request(url, "GET", &path, ""))
            }
        };
        let returned = Instant::now();
        // Followers (503) and unreachable members: try the next one, after
        // a pause as a client would (no tight loop while a leader is being
        // elected).
        if answer.as_ref().is_none_or(|(code, _)| *code == 503) {
            at = (at + 1) % urls.len();
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = match (op, &answer) {
            (Op::Submit, Some((200 | 201, _))) => Some(Out::Accepted),
            (Op::Cancel, Some((200, body))) => {
                assert_eq!(body["state"], "CANCELED", "{body}");
                Some(Out::Cancelled)
            }
            (Op::Cancel, Some((409, _))) => Some(Out::Ended),
            (Op::Cancel | Op::Read, Some((404, _))) => Some(Out::NotFound),
            (Op::Read, Some((200, body))) if body["state"] == "CANCELED" => Some(Out::Gone),
            (Op::Read, Some((200, _))) => Some(Out::Live),
            _ => None,
        };
        let job = match (op, &answer, job) {
            (Op::Submit, Some((_, body)), None) if out.is_some() => {
                let id = body["job_id"]
                    .as_str()
                    .expect("a submission answers its id")
                    .to_string();
                known.lock().unwrap().push(id.clone());
                id
            }
            // A submission without an answer made no job anyone knows.
            (Op::Submit, _, _) => continue,
            // A read without an answer changed nothing, and a member that
            // is not the leader (503) forwards no write: neither happened.
            (Op::Read, _, _) if out.is_none() => continue,
            (Op::Cancel, Some((503, _)), _) => continue,
            (_, _, Some(job)) => job,
            (_, _, None) => unreachable!("cancels and reads name a job"),
        };
        history.push(Record {
            client: me,
            job,
            call: Call {
                op,
                out,
                invoked,
                returned: out.map(|_| returned),
            },
        });
    }
    history
}

/// The coordinator that answers as leader, among `of`.
fn leader(cluster: &Cluster, of: &[usize]) -> Option<usize> {
    of.iter().copied().find(|&i| {
        request(&cluster.coordinator_url(i), "GET", "/api/v1/jobs", "")
            .is_some_and(|(code, _)| code == 200)
    })
}

#[test]
fn submits_cancels_and_reads_stay_linearizable_across_leader_failures() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_replicated(dir.path(), 0, 1, COORDINATORS);
    // One submission through the CLI uploads the binary; the clients
    // then submit the same job by its checksum.
    let args = q5_args("out", "ck", "1000");
    let first = cluster.submit(1, env!("CARGO_BIN_EXE_nexmark"), &args);
    let status = cluster.status(&first);
    let described = dir.path().join("described.json");
    let ran = std::process::Command::new(env!("CARGO_BIN_EXE_nexmark"))
        .args(&args)
        .current_dir(dir.path())
        .env("SLUICE_DESCRIBE", &described)
        .env("SLUICE_PARALLELISM", "1")
        .status()
        .unwrap();
    assert!(ran.success());
    let description: Value = serde_json::from_slice(&std::fs::read(&described).unwrap()).unwrap();
    let submission = serde_json::json!({
        "artifact": status["artifact"],
        "args": status["args"],
        "parallelism": 1,
        "workdir": status["workdir"],
        "description": description,
    })
    .to_string();

    let urls: Vec<String> = (0..COORDINATORS)
        .map(|i| cluster.coordinator_url(i))
        .collect();
    let known = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|me| {
            let (urls, submission) = (urls.clone(), submission.clone());
            let (known, stop) = (known.clone(), stop.clone());
            std::thread::spawn(move || client(me, urls, submission, known, stop))
        })
        .collect();

    let all: Vec<usize> = (0..COORDINATORS).collect();
    std::thread::sleep(Duration::from_secs(3));
    // The leader dies...
    let killed = leader(&cluster, &all).expect("a leader");
    cluster.kill_coordinator_at(killed);
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != killed).collect();
    cluster.wait_for(Duration::from_secs(30), "a new leader", |c| {
        leader(c, &rest).is_some()
    });
    std::thread::sleep(Duration::from_secs(2));
    cluster.start_coordinator_at(killed).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // ...then the next one is frozen (cut off from everyone) and wakes.
    if let Some(frozen) = leader(&cluster, &rest) {
        cluster.signal_coordinator(frozen, "STOP");
        std::thread::sleep(Duration::from_secs(3));
        cluster.signal_coordinator(frozen, "CONT");
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let mut history: Vec<Record> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("a client panicked"))
        .collect();

    // Closing reads of every job, once a leader answers.
    cluster.wait_for(Duration::from_secs(30), "a leader at the end", |c| {
        leader(c, &all).is_some()
    });
    let ids = known.lock().unwrap().clone();
    let url = cluster.coordinator_url(leader(&cluster, &all).unwrap());
    for job in &ids {
        let invoked = Instant::now();
        let answer = request(
            &url,
            "GET",
            &format!("/api/v1/jobs/{job}?consistency=linearizable"),
            "",
        );
        let out = match answer {
            Some((200, body)) if body["state"] == "CANCELED" => Out::Gone,
            Some((200, _)) => Out::Live,
            Some((404, _)) => Out::NotFound,
            other => panic!("the closing read of {job}: {other:?}"),
        };
        history.push(Record {
            client: CLIENTS,
            job: job.clone(),
            call: Call {
                op: Op::Read,
                out: Some(out),
                invoked,
                returned: Some(Instant::now()),
            },
        });
    }

    // Enough happened to mean something, including across the failures.
    let count = |op: fn(&Op) -> bool, out: Out| {
        history
            .iter()
            .filter(|r| op(&r.call.op) && r.call.out == Some(out))
            .count()
    };
    let submitted = count(|o| matches!(o, Op::Submit), Out::Accepted);
    let cancelled = count(|o| matches!(o, Op::Cancel), Out::Cancelled);
    let reads =
        count(|o| matches!(o, Op::Read), Out::Live) + count(|o| matches!(o, Op::Read), Out::Gone);
    assert!(
        submitted >= 10 && cancelled >= 5 && reads >= 20,
        "too little happened: {submitted} submissions, {cancelled} cancellations, {reads} reads"
    );
    for job in &ids {
        let calls: Vec<&Record> = history.iter().filter(|r| &r.job == job).collect();
        let only: Vec<Call<Op, Out>> = calls.iter().map(|r| r.call.clone()).collect();
        if !linearizable(Job::Absent, &only) {
            let t0 = calls.iter().map(|r| r.call.invoked).min().unwrap();
            let lines: Vec<String> = calls
                .iter()
                .map(|r| {
                    let ms = |t: Instant| t.duration_since(t0).as_millis();
                    format!(
                        "client {} {:?} -> {:?} [{} ms, {} ms]",
                        r.client,
                        r.call.op,
                        r.call.out,
                        ms(r.call.invoked),
                        r.call
                            .returned
                            .map_or("never".into(), |t| ms(t).to_string())
                    )
                })
                .collect();
            panic!(
                "the history of {job} is not linearizable:\n{}",
                lines.join("\n")
            );
        }
    }
}
