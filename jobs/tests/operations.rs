//! What an operator does with the `sluice` command against a live
//! cluster: submit and wait for the end, follow a job, watch its status,
//! stop it with a savepoint, read its newest checkpoints, be asked
//! before a state-changing command only when a person is at the terminal,
//! find a job's bottleneck in its metrics, and read what its executors
//! logged.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::cluster::{sluice_bin, Cluster};
use common::{http, Exposition, OutputWithin, Sample, RUN_LIMIT};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `sluice submit ARGS... NEXMARK -- JOB_ARGS` from the cluster's directory.
fn submit(cluster: &Cluster, flags: &[&str], job_args: &[String]) -> Command {
    let mut c = Command::new(sluice_bin());
    c.args([
        "submit",
        "--coordinator",
        &cluster.url(),
        "--parallelism",
        "2",
    ])
    .args(flags)
    .arg(env!("CARGO_BIN_EXE_nexmark"))
    .arg("--")
    .args(job_args)
    .current_dir(cluster.dir())
    .stdin(Stdio::null());
    c
}

/// q5 over a bounded input into `out`, checkpointing into `out.ck` (each
/// job its own: a checkpoint directory is one job's).
fn bounded_q5(out: &str) -> Vec<String> {
    [
        "--query",
        "q5",
        "--events",
        "200000",
        "--output",
        out,
        "--checkpoint-dir",
        &format!("{out}.ck"),
        "--checkpoint-interval",
        "200ms",
    ]
    .map(String::from)
    .to_vec()
}

/// A long paced q5 into `out`, submitted with `--wait`, output captured.
fn submit_paced_waiting(cluster: &Cluster, out: &str) -> std::process::Child {
    let mut args = bounded_q5(out);
    args[3] = "50000000".into();
    args.extend(["--rate".into(), "20000".into()]);
    submit(cluster, &["--wait"], &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The id of a RUNNING job that completed a checkpoint, other than `not`.
fn running_job(cluster: &Cluster, not: Option<&str>) -> String {
    let mut id = String::new();
    cluster.wait_for(Duration::from_secs(60), "a running job", |c| {
        let jobs = c.json(&["jobs", "--json"]);
        let running = jobs.as_array().and_then(|a| {
            a.iter().find(|j| {
                j["state"] == "RUNNING"
                    && j["latest_checkpoint"].is_u64()
                    && not.is_none_or(|n| j["id"] != n)
            })
        });
        if let Some(j) = running {
            id = j["id"].as_str().unwrap().to_string();
        }
        running.is_some()
    });
    id
}

#[test]
fn submit_wait_and_follow_end_with_the_jobs_end() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 2, 2);

    let out = submit(&cluster, &["--wait"], &bounded_q5("out-wait")).output_within(RUN_LIMIT);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\n{}",
        cluster.logs()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("job-"), "{stdout}");
    assert_eq!(lines[1], format!("{} FINISHED", lines[0]), "{stdout}");
    assert!(!common::rows(&dir.path().join("out-wait")).is_empty());

    let out = submit(&cluster, &["--follow"], &bounded_q5("out-follow")).output_within(RUN_LIMIT);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.contains(" FINISHED "), "{stdout}");
    assert!(
        stdout.lines().count() >= 3,
        "an id line and a line per change: {stdout}"
    );
    assert!(stdout.contains("checkpoint "), "{stdout}");

    // On a terminal (script(1) gives one) a waiting submit draws a bar of
    // what the job's sources read of their total, with its rate.
    let mut args = bounded_q5("out-bar");
    args[3] = "600000".into();
    args.extend(["--rate".into(), "150000".into()]);
    let line = format!("{:?}", submit(&cluster, &["--wait"], &args)).replace('"', "");
    let typescript = dir.path().join("typescript");
    let out = Command::new("script")
        .args(["-qec", &line])
        .arg(&typescript)
        .current_dir(cluster.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output_within(RUN_LIMIT);
    let seen = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert!(out.status.success(), "{seen}");
    assert!(seen.contains("/552,000 records, "), "no bar: {seen}");
    assert!(seen.contains(" FINISHED"), "{seen}");

    // Piped into `head`, a client command stops quietly when the pipe
    // closes (it used to panic on its next print). The OpenAPI document
    // is larger than a pipe's buffer, so the pipe surely closes under it.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!("{} openapi | head -1", sluice_bin().display()))
        .output_within(RUN_LIMIT);
    let (first, stderr) = text(&piped);
    assert_eq!(first, "{\n");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Watching a job that ended shows it once and says how it ended.
    let job = stdout.lines().next().unwrap().trim().to_string();
    let watched = cluster.sluice(&["status", &job, "--watch"]).unwrap();
    let (stdout, _) = text(&watched);
    assert!(watched.status.success());
    assert!(stdout.starts_with("FINISHED\n"), "{stdout}");
    assert!(stdout.contains("parallelism: 2"), "{stdout}");
    assert!(
        stdout.contains("OPERATOR"),
        "per-operator figures: {stdout}"
    );

    let cps = cluster
        .sluice(&["checkpoints", &job, "--limit", "1"])
        .unwrap();
    let (stdout, _) = text(&cps);
    let rows: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("ID"))
        .collect();
    assert_eq!(rows.len(), 2, "a header and one checkpoint: {stdout}");
}

#[test]
fn stop_takes_a_savepoint_and_a_waiting_submit_reports_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 2, 2);
    let waiting = submit_paced_waiting(&cluster, "out");
    let job = running_job(&cluster, None);

    // Not a terminal: no question, it is done.
    let sp = dir.path().join("sp");
    let stop = cluster
        .sluice(&["stop", &job, "--dir", sp.to_str().unwrap()])
        .unwrap();
    let (stdout, stderr) = text(&stop);
    assert!(stop.status.success(), "{stderr}");
    let location = stdout.trim();
    assert!(
        Path::new(location).join("_manifest.json").is_file(),
        "{location}"
    );

    // Stopped with a savepoint, a job has FINISHED (as in Flink).
    let out = waiting.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, format!("{job}\n{job} FINISHED\n"));

    // A cancelled job did not finish: the waiting submit says so and fails.
    let waiting = submit_paced_waiting(&cluster, "out2");
    let second = running_job(&cluster, Some(&job));
    let cancel = cluster.sluice(&["cancel", &second]).unwrap();
    assert!(cancel.status.success(), "{}", text(&cancel).1);
    let out = waiting.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.starts_with(&second), "{stdout}");
    assert!(
        stderr.contains(&format!("{second} ended CANCELED")),
        "{stderr}"
    );

    // A savepoint of an ended job, and bad flags, are clear errors.
    let again = cluster
        .sluice(&["stop", &job, "--dir", sp.to_str().unwrap()])
        .unwrap();
    assert!(!again.status.success());
    let bad = cluster
        .sluice(&["checkpoints", &job, "--limit", "many"])
        .unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).1.contains("--limit"), "{}", text(&bad).1);
}

/// The largest value of the series of `name` of job `job` whose labels
/// `pick` accepts.
fn largest(m: &Exposition, name: &str, job: &str, pick: impl Fn(&Sample) -> bool) -> Option<f64> {
    m.samples
        .iter()
        .filter(|s| s.name == name && s.labels.get("job").map(String::as_str) == Some(job))
        .filter(|s| pick(s))
        .map(|s| s.value)
        .reduce(f64::max)
}

/// Whether a series is of the slow sink's vertex.
fn sink(s: &Sample) -> bool {
    s.labels["vertex_name"].contains("slow_discard")
}

#[test]
fn a_slow_sink_is_busy_and_backpressures_its_upstream_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 2, 2);
    // q1 (bids, converted) as fast as the generator goes, into a sink that
    // sleeps 20 ms per batch behind a rebalance: the source's vertex waits
    // for room, the sink's is busy sleeping.
    let job = cluster.submit(
        2,
        env!("CARGO_BIN_EXE_nexmark"),
        &[
            "--query",
            "q1",
            "--events",
            "100000000",
            "--sink-delay",
            "20ms",
        ],
    );
    cluster.wait_state(&job, "RUNNING", Duration::from_secs(60));

    let mut last = String::new();
    cluster.wait_for(Duration::from_secs(60), "backpressure in /metrics", |c| {
        let (status, _, text) = http(c.port(), "GET", "/metrics", None);
        assert_eq!(status, 200);
        let m = Exposition::parse(&text);
        let positive = |v: Option<f64>| v.is_some_and(|v| v > 0.0);
        let upstream = |s: &Sample| !sink(s);
        let ok = positive(largest(
            &m,
            "sluice_task_backpressured_seconds_total",
            &job,
            upstream,
        )) && positive(largest(
            &m,
            "sluice_task_backpressured_ms_per_second",
            &job,
            upstream,
        )) && positive(largest(&m, "sluice_task_busy_seconds_total", &job, sink))
            && positive(largest(&m, "sluice_task_busy_ms_per_second", &job, sink))
            && positive(largest(&m, "sluice_task_records_total", &job, sink))
            // The sink's inputs fill up; the upstream's outputs are full.
            // Workers report their own process with their heartbeats.
            && m.samples
                .iter()
                .any(|s| s.name == "sluice_worker_resident_memory_bytes" && s.value > 0.0)
            // Latency markers cross the exchange to the sink.
            && largest(&m, "sluice_task_latency_seconds", &job, sink).is_some()
            && largest(&m, "sluice_task_queue_usage", &job, |s| {
                sink(s) && s.labels["direction"] == "in"
            })
            .is_some_and(|u| u >= 0.5)
            && largest(&m, "sluice_task_queue_usage", &job, |s| {
                upstream(s) && s.labels["direction"] == "out"
            })
            .is_some_and(|u| u >= 0.5)
            && largest(&m, "sluice_task_watermark_lag_seconds", &job, sink).is_some()
            && positive(largest(
                &m,
                "sluice_executor_resident_memory_bytes",
                &job,
                |_| true,
            ))
            && largest(&m, "sluice_executor_cpu_seconds_total", &job, |_| true).is_some();
        last = text;
        ok
    });
    let types = Exposition::parse(&last).types;
    assert_eq!(types["sluice_task_busy_seconds_total"], "counter");
    assert_eq!(types["sluice_task_backpressured_ms_per_second"], "gauge");

    // The same figures in the REST API, per subtask.
    let (status, _, body) = http(
        cluster.port(),
        "GET",
        &format!("/api/v1/jobs/{job}/metrics"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    let subtasks = m["subtasks"].as_array().unwrap();
    assert_eq!(subtasks.len(), 4, "two vertices of two subtasks: {body}");
    let slow = subtasks
        .iter()
        .find(|s| s["vertex_name"].as_str().unwrap().contains("slow_discard"))
        .unwrap();
    assert!(slow["busy_ms"].as_u64().unwrap() > 0, "{body}");
    assert!(slow["records_in"].as_u64().unwrap() > 0, "{body}");
    assert!(slow["watermark_lag_ms"].is_i64(), "{body}");
    let executors = m["executors"].as_array().unwrap();
    assert!(!executors.is_empty(), "{body}");
    assert!(
        executors.iter().all(|e| e["rss_bytes"].as_u64() > Some(0)),
        "{body}"
    );

    // And per vertex in `sluice status`.
    let out = cluster.sluice(&["status", &job]).unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("BACKPRESSURED"), "{stdout}");
    assert!(stdout.contains("IN QUEUE"), "{stdout}");
    assert!(stdout.contains("slow_discard"), "{stdout}");

    let cancel = cluster.sluice(&["cancel", &job]).unwrap();
    assert!(cancel.status.success(), "{}", text(&cancel).1);
}

/// The lines of `out` that are an executor's line `needle` of executor
/// `executor` of attempt 1, as `sluice logs` prints them.
fn logged(out: &str, executor: u64, needle: &str) -> usize {
    out.lines()
        .filter(|l| l.starts_with(&format!("a1/e{executor} ")) && l.contains(needle))
        .count()
}

#[test]
fn logs_show_what_executors_wrote_and_follow_ends_with_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 2, 2);
    // q5 paced to run a few seconds, so --follow starts while it runs.
    let mut args = bounded_q5("out-logs");
    args[3] = "100000".into();
    args.extend(["--rate".into(), "20000".into()]);
    let out = submit(&cluster, &[], &args).output_within(RUN_LIMIT);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let job = stdout.trim().to_string();
    cluster.wait_state(&job, "RUNNING", Duration::from_secs(60));
    let status = cluster.json(&["status", &job, "--json"]);
    let mut executors: Vec<u64> = status["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["executor"].as_u64().unwrap())
        .collect();
    executors.sort();
    executors.dedup();
    assert!(!executors.is_empty(), "{status}");

    // Followed from while it runs until it ended: every executor's first
    // line (the executors log at INFO on the tests' clusters) and its
    // last, written as it exits after the job finished.
    let follow = Command::new(sluice_bin())
        .args(["logs", &job, "--follow", "--interval", "200ms"])
        .args(["--coordinator", &cluster.url()])
        .output_within(RUN_LIMIT);
    let (followed, stderr) = text(&follow);
    assert!(follow.status.success(), "{stderr}\n{}", cluster.logs());
    let state = cluster.json(&["status", &job, "--json"]);
    assert_eq!(state["state"], "FINISHED", "--follow ended with the job");
    for &e in &executors {
        assert_eq!(
            logged(&followed, e, "executor registered"),
            1,
            "executor {e}:\n{followed}"
        );
        assert_eq!(
            logged(&followed, e, "executor finished"),
            1,
            "executor {e}'s last line:\n{followed}"
        );
    }

    // Read again after the end: the same lines, as the coordinator keeps
    // them; the last few; as JSON from a line on.
    let all = cluster.sluice(&["logs", &job]).unwrap();
    let (all, stderr) = text(&all);
    assert!(!all.is_empty(), "{stderr}");
    assert_eq!(all, followed, "nothing came after --follow ended");
    let tail = cluster.sluice(&["logs", &job, "--tail", "2"]).unwrap();
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(
        text(&tail).0.lines().collect::<Vec<_>>(),
        lines[lines.len() - 2..]
    );
    let json = cluster
        .sluice(&["logs", &job, "--json", "--since", "1"])
        .unwrap();
    let json: Vec<serde_json::Value> = text(&json)
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), lines.len() - 1);
    assert_eq!(json[0]["seq"], 1);
    assert_eq!(json[0]["attempt"], 1);
    assert!(json[0]["worker"].as_str().unwrap().starts_with("worker-"));
    assert!(json[0]["time_ms"].as_i64().unwrap() > 0);
    assert_eq!(
        format!(
            "a1/e{} {}",
            json[0]["executor"],
            json[0]["text"].as_str().unwrap()
        ),
        lines[1]
    );

    // An unknown job and a bad flag are errors.
    let unknown = cluster.sluice(&["logs", "job-404"]).unwrap();
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).1.contains("no job job-404"),
        "{}",
        text(&unknown).1
    );
    let bad = cluster.sluice(&["logs", &job, "--tail", "many"]).unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).1.contains("--tail"), "{}", text(&bad).1);
}
