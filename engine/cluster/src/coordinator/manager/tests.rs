use sluice_protocol::api::{
    AutoscaleRange, CheckpointDescription, ExecutorReport, RestartPolicy, VertexInfo,
};

use super::commands::same_operators;
use super::*;

pub(crate) fn description(checkpoint: Option<&Path>, restart: RestartPolicy) -> JobDescription {
    JobDescription {
        protocol: sluice_protocol::PROTOCOL_VERSION,
        name: "t".into(),
        parallelism: 1,
        max_parallelism: 128,
        vertices: vec![VertexInfo {
            id: 0,
            name: "source -> sink".into(),
            parallelism: 1,
            source: true,
            nodes: vec![(0, "source".into()), (1, "sink".into())],
            inputs: Vec::new(),
        }],
        graph_nodes: 2,
        uids: Vec::new(),
        checkpoint: checkpoint.map(|dir| CheckpointDescription {
            dir: dir.to_string_lossy().into_owned(),
            interval_ms: 1000,
            timeout_ms: 60_000,
            min_pause_ms: 0,
            retained: 3,
            exactly_once: true,
            unaligned: false,
            restore_from: None,
        }),
        restart,
    }
}

pub(crate) fn record(state: JobState) -> JobRecord {
    let mut life = Lifecycle::new(RestartPolicy::None, false);
    life.state = state;
    life.attempt = 1;
    JobRecord {
        id: "job-7".into(),
        life,
        artifact: "0".repeat(64),
        args: Vec::new(),
        parallelism: 1,
        workdir: None,
        description: description(None, RestartPolicy::None),
        submitted_ms: 0,
        updated_ms: 0,
        latest_checkpoint: None,
        rescale: None,
        exceptions: Vec::new(),
        autoscaler: None,
        run: None,
    }
}

fn manager(dir: &Path, retained_jobs: usize) -> Arc<Manager> {
    let mut config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), dir);
    config.retained_jobs = retained_jobs;
    Manager::open(config).unwrap()
}

/// Stores a fake binary and submits a job running it.
fn submit(m: &Manager, d: JobDescription) -> Result<String> {
    let sha = crate::client::sha256_hex(b"binary");
    std::fs::write(m.meta.artifact_path(&sha), b"binary").unwrap();
    m.submit(SubmitJob {
        artifact: sha,
        args: Vec::new(),
        parallelism: None,
        workdir: None,
        description: d,
        autoscale: None,
    })
}

fn worker(m: &Manager) -> String {
    m.register(RegisterWorker {
        worker_id: None,
        slots: 4,
        capacity: 1.0,
        host: "127.0.0.1".into(),
    })
    .unwrap()
    .worker_id
}

#[test]
fn a_rescale_must_keep_the_operators() {
    let plan = |p: usize, names: &[&str]| {
        let mut d = record(JobState::Running).description;
        d.graph_nodes = names.len();
        d.vertices = vec![VertexInfo {
            id: 0,
            name: names.join(" -> "),
            parallelism: p,
            source: true,
            nodes: names
                .iter()
                .enumerate()
                .map(|(i, n)| (i, n.to_string()))
                .collect(),
            inputs: Vec::new(),
        }];
        d
    };
    let running = plan(2, &["source", "window", "sink"]);
    assert!(same_operators(&running, &plan(4, &["source", "window", "sink"])).is_ok());
    let e = same_operators(&running, &plan(4, &["source", "map", "sink"])).unwrap_err();
    assert!(e.to_string().contains("is not job 't'"), "{e}");
    assert!(same_operators(&running, &plan(4, &["source", "sink"])).is_err());
}

#[test]
fn only_the_newest_ended_jobs_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 2);
    let states = [
        JobState::Finished,
        JobState::Failed,
        JobState::Running,
        JobState::Canceled,
        JobState::Finished,
    ];
    for (i, state) in states.into_iter().enumerate() {
        let mut r = record(state);
        r.id = format!("job-{i}");
        r.updated_ms = i as i64;
        m.meta.save(&r).unwrap();
        m.lock().jobs.insert(r.id.clone(), Job::new(r));
    }
    m.tick();
    let mut kept: Vec<String> = m.jobs().into_iter().map(|j| j.id).collect();
    kept.sort();
    // The two newest ended jobs and the one still running.
    assert_eq!(kept, ["job-2", "job-3", "job-4"]);
    let mut on_disk: Vec<String> = m.meta.load().unwrap().into_iter().map(|r| r.id).collect();
    on_disk.sort();
    assert_eq!(on_disk, kept);
}

#[test]
fn job_ids_are_never_reused_across_restarts_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 1);
    // The first job is job-1, whatever registered before it.
    worker(&m);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = submit(&m, description(None, RestartPolicy::None)).unwrap();
        m.cancel(&id).unwrap();
        ids.push(id);
    }
    assert_eq!(ids, ["job-1", "job-2", "job-3"]);
    m.tick(); // forgets job-1 and job-2
    assert_eq!(m.jobs().len(), 1);
    drop(m);
    // Every record of the newest job gone too: the counter still holds.
    std::fs::remove_file(dir.path().join("jobs/job-3.json")).unwrap();
    let m = manager(dir.path(), 1);
    assert_eq!(
        submit(&m, description(None, RestartPolicy::None)).unwrap(),
        "job-4"
    );
    assert_eq!(worker(&m), "worker-2", "workers are numbered apart, and on");
}

#[test]
fn bad_submissions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 10);
    let mut d = description(None, RestartPolicy::None);
    d.vertices[0].parallelism = 0;
    assert!(submit(&m, d)
        .unwrap_err()
        .to_string()
        .contains("parallelism"));
    let mut d = description(None, RestartPolicy::None);
    d.max_parallelism = 0;
    assert!(submit(&m, d)
        .unwrap_err()
        .to_string()
        .contains("max_parallelism"));
    let mut d = description(Some(dir.path()), RestartPolicy::None);
    d.checkpoint.as_mut().unwrap().interval_ms = 0;
    assert!(submit(&m, d).unwrap_err().to_string().contains("interval"));
    let e = m
        .submit(SubmitJob {
            artifact: "../../../../etc/passwd".into(),
            args: Vec::new(),
            parallelism: None,
            workdir: None,
            description: description(None, RestartPolicy::None),
            autoscale: None,
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an artifact"), "{e}");
    assert!(m.jobs().is_empty());
}

#[test]
fn a_start_failure_counts_against_the_restart_budget() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 10);
    worker(&m);
    // The checkpoint location is a file: scanning it fails every time.
    let not_a_dir = dir.path().join("not-a-dir");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let policy = RestartPolicy::FixedDelay {
        attempts: 2,
        delay_ms: 0,
    };
    let id = submit(&m, description(Some(&not_a_dir), policy)).unwrap();
    for _ in 0..10 {
        m.tick();
    }
    let j = m.job(&id).unwrap();
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    assert_eq!(j.restarts, 2);
    let e = j.error.unwrap();
    assert!(
        e.contains("starting an attempt") && e.contains("after 2 restarts"),
        "{e}"
    );
}

#[test]
fn too_few_slots_is_waiting_not_failing() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 10);
    let id = submit(&m, description(None, RestartPolicy::None)).unwrap();
    m.tick();
    let j = m.job(&id).unwrap();
    assert_eq!(j.state, JobState::Created);
    assert!(j.error.unwrap().contains("waiting for slots"));
    worker(&m);
    std::thread::sleep(Duration::from_millis(150));
    m.tick();
    let j = m.job(&id).unwrap();
    assert_eq!((j.state, j.attempt), (JobState::Scheduling, 1), "{j:?}");
    assert_eq!(j.error, None);
}

#[test]
fn the_jobs_restart_policy_decides_on_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 10);
    let w = worker(&m);
    // A job that checkpoints but allows no restart fails at the first loss.
    let ck = dir.path().join("ck");
    let id = submit(&m, description(Some(&ck), RestartPolicy::None)).unwrap();
    m.tick();
    assert_eq!(m.job(&id).unwrap().state, JobState::Scheduling);
    let exited = |attempt| Heartbeat {
        logs: Vec::new(),
        process: None,
        executors: vec![ExecutorReport {
            job_id: id.clone(),
            attempt,
            executor: 0,
            pid: 1,
            exit: Some(3),
        }],
    };
    m.heartbeat(&w, exited(1)).unwrap();
    let j = m.job(&id).unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.restart, RestartPolicy::None);
    assert!(j.error.unwrap().contains("allows 0"));

    // One that allows a restart restarts once.
    let policy = RestartPolicy::FixedDelay {
        attempts: 1,
        delay_ms: 0,
    };
    let id = submit(&m, description(Some(&ck), policy)).unwrap();
    m.tick();
    let exited = |attempt| Heartbeat {
        logs: Vec::new(),
        process: None,
        executors: vec![ExecutorReport {
            job_id: id.clone(),
            attempt,
            executor: 0,
            pid: 1,
            exit: Some(3),
        }],
    };
    m.heartbeat(&w, exited(1)).unwrap();
    assert_eq!(m.job(&id).unwrap().state, JobState::Restarting);
    // The restart goes to a worker heard from since the failure.
    std::thread::sleep(Duration::from_millis(5));
    m.heartbeat(&w, Heartbeat::default()).unwrap();
    m.tick();
    let j = m.job(&id).unwrap();
    assert_eq!(
        (j.state, j.attempt, j.restarts),
        (JobState::Scheduling, 2, 1)
    );
    m.heartbeat(&w, exited(2)).unwrap();
    let j = m.job(&id).unwrap();
    assert_eq!(j.state, JobState::Failed);

    // Each failure is in the job's history, with its attempt and outcome,
    // and the history survives a coordinator restart.
    let seen: Vec<(u64, &str)> = j
        .exceptions
        .iter()
        .map(|e| (e.attempt, e.outcome.as_str()))
        .collect();
    assert_eq!(seen, [(1, "restart in 0 ms"), (2, "failed")], "{j:?}");
    assert!(
        j.exceptions.iter().all(|e| e.error.contains("exit")),
        "{j:?}"
    );
    drop(m);
    let reopened = manager(dir.path(), 10);
    assert_eq!(reopened.job(&id).unwrap().exceptions, j.exceptions);
}

#[test]
fn a_restarted_worker_keeps_its_id_and_its_attempts_fail() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 10);
    let w = worker(&m);
    let policy = RestartPolicy::FixedDelay {
        attempts: 3,
        delay_ms: 0,
    };
    let id = submit(&m, description(Some(&dir.path().join("ck")), policy)).unwrap();
    m.tick();
    assert_eq!(m.job(&id).unwrap().state, JobState::Scheduling);
    let again = m
        .register(RegisterWorker {
            worker_id: Some(w.clone()),
            slots: 4,
            capacity: 1.0,
            host: "127.0.0.1".into(),
        })
        .unwrap();
    assert_eq!(again.worker_id, w);
    let j = m.job(&id).unwrap();
    assert_eq!(j.state, JobState::Restarting);
    assert!(j.error.unwrap().contains("restarted"));
    assert_eq!(m.workers().len(), 1);
}

#[test]
fn a_rescale_begun_by_a_dead_coordinator_is_finished_if_its_savepoint_exists() {
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
    let meta = MetaStore::open(dir.path()).unwrap();
    let mut wider = record(JobState::Running).description;
    wider.parallelism = 3;
    let taken = dir.path().join("rescale-taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("_manifest.json"), b"{}").unwrap();
    for (id, savepoint) in [("job-1", &taken), ("job-2", &dir.path().join("never"))] {
        let mut r = record(JobState::Rescaling);
        r.id = id.to_string();
        r.rescale = Some(PendingRescale {
            parallelism: 3,
            description: wider.clone(),
            savepoint: savepoint.to_string_lossy().into_owned(),
        });
        meta.save(&r).unwrap();
    }
    // While pending, the status says where the job is going.
    let mut pending = record(JobState::Rescaling);
    pending.rescale = meta.load().unwrap()[0].rescale.clone();
    assert_eq!(Job::new(pending).status().rescaling_to, Some(3));
    let m = Manager::open(config).unwrap();
    let one = m.job("job-1").unwrap();
    assert_eq!((one.state, one.parallelism), (JobState::Restarting, 3));
    let two = m.job("job-2").unwrap();
    assert_eq!((two.state, two.parallelism), (JobState::Restarting, 1));
    let on_disk = m.meta.load().unwrap();
    assert!(
        on_disk.iter().all(|r| r.rescale.is_none()),
        "settled on disk"
    );
    assert_eq!(
        on_disk
            .iter()
            .find(|r| r.id == "job-1")
            .unwrap()
            .description
            .parallelism,
        3
    );
}

/// Two callers may write after releasing the lock in either order; the
/// file keeps the newer state.
#[test]
fn an_older_record_never_overwrites_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 10);
    m.write(2, &record(JobState::Canceled)).unwrap();
    m.write(1, &record(JobState::Running)).unwrap();
    let on_disk = m.meta.load().unwrap();
    assert_eq!(on_disk.len(), 1);
    assert_eq!(on_disk[0].life.state, JobState::Canceled);
    m.write(3, &record(JobState::Restarting)).unwrap();
    assert_eq!(m.meta.load().unwrap()[0].life.state, JobState::Restarting);
}

/// Executors' log lines that heartbeats carry are kept per job, tagged
/// with their worker; lines of a job the coordinator does not know are
/// dropped; an ended job's lines are complete once its executor's log was
/// read to the end and two heartbeats passed.
#[test]
fn heartbeats_bring_executors_log_lines() {
    use sluice_protocol::logs::LogChunk;
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 10);
    let w = worker(&m);
    let id = submit(&m, description(None, RestartPolicy::None)).unwrap();
    m.tick();
    assert_eq!(m.job(&id).unwrap().attempt, 1);
    let chunk = |job: &str, lines: &[&str], complete| LogChunk {
        job_id: job.to_string(),
        attempt: 1,
        executor: 0,
        lines: lines.iter().map(|l| l.to_string()).collect(),
        time_ms: 5,
        complete,
    };
    let logs = vec![
        chunk(&id, &["started", "working"], false),
        chunk("job-404", &["lost"], false),
    ];
    m.heartbeat(
        &w,
        Heartbeat {
            executors: Vec::new(),
            logs,
            process: None,
        },
    )
    .unwrap();
    let logs = m.logs(&id, 0, 100, None).unwrap();
    let texts: Vec<&str> = logs.lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["started", "working"]);
    assert!(logs.lines.iter().all(|l| l.worker == w && l.attempt == 1));
    assert_eq!((logs.next, logs.dropped, logs.complete), (2, 0, false));
    assert!(m.logs("job-404", 0, 100, None).is_none());

    m.cancel(&id).unwrap();
    let logs = m.logs(&id, 2, 100, None).unwrap();
    assert_eq!(logs.state, JobState::Canceled);
    assert!(!logs.complete, "its executor's last lines may still come");
    let logs = vec![chunk(&id, &["bye"], true)];
    m.heartbeat(
        &w,
        Heartbeat {
            executors: Vec::new(),
            logs,
            process: None,
        },
    )
    .unwrap();
    std::thread::sleep(m.config.heartbeat_interval * 2);
    let logs = m.logs(&id, 2, 100, None).unwrap();
    assert_eq!(logs.lines.len(), 1);
    assert_eq!((logs.lines[0].text.as_str(), logs.next), ("bye", 3));
    assert!(logs.complete);
}

#[test]
fn an_autoscale_range_is_checked_at_submission_and_kept_in_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 10);
    let sha = crate::client::sha256_hex(b"binary");
    std::fs::write(m.meta.artifact_path(&sha), b"binary").unwrap();
    let ck = dir.path().join("ck");
    let with = |d: JobDescription, min: usize, max: usize| SubmitJob {
        artifact: sha.clone(),
        args: Vec::new(),
        parallelism: None,
        workdir: None,
        description: d,
        autoscale: Some(AutoscaleRange { min, max }),
    };
    let refused = |req: SubmitJob| m.submit(req).unwrap_err().to_string();
    let plain = description(Some(&ck), RestartPolicy::None);
    // It starts at 1: a range without 1 leaves it out.
    assert!(refused(with(plain.clone(), 2, 4)).contains("outside its autoscale range 2..4"));
    assert!(refused(with(plain.clone(), 1, 129)).contains("128 key groups"));
    let unchecked = description(None, RestartPolicy::None);
    assert!(refused(with(unchecked, 1, 2)).contains("must checkpoint"));
    let mut pinned = plain.clone();
    pinned.vertices[0].parallelism = 2;
    pinned.max_parallelism = 128;
    assert!(refused(with(pinned, 1, 2)).contains("of its own"));

    let id = m.submit(with(plain, 1, 3)).unwrap();
    let status = Manager::job(&m, &id).unwrap();
    let a = status
        .autoscaler
        .expect("an autoscaled job shows its autoscaler");
    assert_eq!((a.min, a.max, a.decisions.len()), (1, 3, 0));
    // Records without one (of jobs without a range, and of releases
    // before the autoscaler) are written and read without the key.
    let old = serde_json::to_value(record(JobState::Running)).unwrap();
    assert!(old.get("autoscaler").is_none(), "{old}");
    let back: JobRecord = serde_json::from_value(old).unwrap();
    assert!(back.autoscaler.is_none());
}
