//! End-to-end tests of the distributed runtime with real processes: a
//! `sluice coordinator`, `sluice worker`s on loopback ports, and job
//! binaries submitted with `sluice submit`, which the workers download and
//! start in task-executor mode. Every test drives the cluster through the
//! CLI, as a user would, and reads the Parquet output back with the
//! parquet crate's reader.
//!
//! Workers run in their own process groups, so killing a group takes the
//! worker and its executors down together, as losing a machine would.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice_cluster::local::{LocalCluster, LocalClusterConfig, WorkerPlace};
use sluice_connectors::kafka::testing::Broker;

mod common;
use common::cluster::{embedded_q5, q5_args, sluice_bin, Cluster, EVENTS};
use common::{assert_exactly_once, http, kafka_reference, produce_events, rows, Exposition};

#[test]
fn q5_on_three_workers_equals_the_embedded_run() {
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let cluster = Cluster::start(dir.path(), 3, 2);
    let job = cluster.submit_q5(3, "1000000");
    let running = cluster.wait_state(&job, "RUNNING", Duration::from_secs(60));
    let workers: std::collections::BTreeSet<&str> = running["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["worker"].as_str().unwrap())
        .collect();
    assert_eq!(
        workers.len(),
        3,
        "spread placement uses every worker: {running}"
    );
    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(120));
    assert_eq!(done["restarts"], 0, "{done}");
    let out = dir.path().join("out");
    let written = rows(&out);
    assert_exactly_once(&want, &written, &out, "q5 on three workers");
    assert_results_were_written(&cluster.json(&["results", &job, "--json"]), &written, &out);
    assert_ui_is_served(cluster.port());
    let (status, _, metrics) = http(cluster.port(), "GET", "/metrics", None);
    assert_eq!(status, 200);
    let m = Exposition::parse(&metrics);
    assert_eq!(m.value("sluice_jobs", &[("state", "FINISHED")]), Some(1.0));
    assert_eq!(m.value("sluice_workers_alive", &[]), Some(3.0));
    let bids_out = m.value(
        "sluice_node_records_total",
        &[
            ("job", &job),
            ("node", "nexmark_bids"),
            ("direction", "out"),
        ],
    );
    assert!(bids_out.is_some_and(|n| n > 0.0), "{metrics}");
    // Every checkpoint the coordinator completed for the job (this
    // coordinator ran it from the start) is in each histogram once.
    let completed = m
        .value("sluice_job_checkpoints_completed_total", &[("job", &job)])
        .expect("completed checkpoints");
    assert!(completed >= 1.0, "{metrics}");
    for h in [
        "sluice_checkpoint_duration_seconds",
        "sluice_checkpoint_size_bytes",
        "sluice_checkpoint_alignment_seconds",
        "sluice_checkpoint_in_flight_bytes",
    ] {
        let (count, _) = m.histogram(h, &job).expect(h);
        assert_eq!(count, completed, "{h}");
    }
    assert_executor_summaries(&cluster, &job, 3, completed as u64);
}

/// Each executor's closing line (its log on its worker) speaks for that
/// executor: which one it was, the source records it read and the
/// checkpoints its tasks took part in. It used to claim the job's
/// `--events` with a rate over them and `checkpoints=0` however many the
/// job completed.
fn assert_executor_summaries(cluster: &Cluster, job: &str, executors: usize, completed: u64) {
    let mut lines = Vec::new();
    for i in 0..cluster.worker_count() {
        let logs = cluster.dir().join(format!("worker-{i}/logs"));
        for f in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{job}-a")) && name.ends_with(".log") {
                let text = std::fs::read_to_string(f.path()).unwrap();
                lines.extend(
                    text.lines()
                        .filter(|l| l.starts_with("query=q5 "))
                        .map(String::from),
                );
            }
        }
    }
    assert_eq!(lines.len(), executors, "{lines:?}\n{}", cluster.logs());
    let field = |line: &str, key: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")).map(String::from))
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut records = 0;
    for line in &lines {
        assert!(field(line, "events").is_none(), "{line}");
        assert!(field(line, "events_per_sec").is_none(), "{line}");
        assert_eq!(field(line, "executors").as_deref(), Some("3"), "{line}");
        seen.insert(field(line, "executor").expect(line));
        records += field(line, "source_records")
            .unwrap()
            .parse::<u64>()
            .unwrap();
        let checkpoints: u64 = field(line, "checkpoints").unwrap().parse().unwrap();
        assert!(
            (1..=completed).contains(&checkpoints),
            "the job completed {completed} checkpoints: {line}"
        );
    }
    assert_eq!(seen.len(), executors, "{lines:?}");
    // q5 reads bids: 46 of every 50 events. No restart, so each was read once.
    let events: u64 = EVENTS.parse().unwrap();
    assert_eq!(records, events / 50 * 46, "{lines:?}");
}

/// The rows `sluice results` shows are rows of the job's Parquet output,
/// under its columns (the job finished without a restart, so every row a
/// sink received was committed).
fn assert_results_were_written(results: &Value, written: &BTreeMap<String, usize>, out: &Path) {
    let sinks = results["sinks"].as_array().expect("sinks");
    assert_eq!(sinks.len(), 1, "q5 has one sink: {results}");
    let sink = &sinks[0];
    let file = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .expect("a Parquet file");
    let schema = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(file.path()).unwrap(),
    )
    .unwrap()
    .schema()
    .clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let columns: Vec<&str> = sink["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(columns, names, "{results}");
    let shown = sink["rows"].as_array().unwrap();
    assert!(!shown.is_empty(), "{results}");
    assert!(shown.len() <= sluice_engine::protocol::results::TAIL_ROWS);
    for row in shown {
        let line = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect::<Vec<_>>()
            .join("|");
        assert!(written.contains_key(&line), "{line} is not in the output");
    }
}

/// `/` leads to the web UI, which is served with its script and a policy
/// that runs no script from anywhere else.
fn assert_ui_is_served(port: u16) {
    let http_get = |port, path| http(port, "GET", path, None);
    let (status, head, _) = http_get(port, "/");
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("\r\nlocation: /ui"), "{head}");
    let (status, head, body) = http_get(port, "/ui");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("script-src 'self'"), "{head}");
    assert!(body.contains(r#"<script src="/ui/app.js">"#), "{body}");
    let (status, head, body) = http_get(port, "/ui/app.js");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(body.contains("/api/v1"));
}

/// With unaligned checkpoints (every other cluster test runs aligned
/// ones): executors snapshot on the coordinator's trigger, store what is
/// in flight between them, and the job resumes from such a checkpoint on
/// the surviving workers.
#[test]
fn a_killed_worker_is_replaced_and_output_stays_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let mut cluster = Cluster::start(dir.path(), 3, 2);
    let mut args = q5_args("out", "ck", "150000");
    args.push("--unaligned-checkpoints");
    let job = cluster.submit(2, env!("CARGO_BIN_EXE_nexmark"), &args);
    let victim = worker_after_a_checkpoint(&cluster, &job);
    let before = cluster.status(&job);
    // Every worker fetched the binary, the idle one too (prefetch), so
    // the restart does not wait for a download.
    let artifact = before["artifact"].as_str().unwrap().to_string();
    cluster.wait_for(
        Duration::from_secs(30),
        "every worker to hold the binary",
        |c| {
            (0..c.worker_count()).all(|i| {
                c.dir()
                    .join(format!("worker-{i}/artifacts/{artifact}"))
                    .is_file()
            })
        },
    );
    // Kill the worker and its executors (its whole process group).
    let pos = worker_position(&cluster, &victim);
    cluster.signal_worker(pos, "-KILL");
    cluster.wait_worker(pos);
    // A finished job has no placement, so look at it while the new
    // attempt runs.
    let mut rerun = Value::Null;
    cluster.wait_for(
        Duration::from_secs(60),
        "the job to run under a new attempt",
        |c| {
            let s = c.status(&job);
            let again =
                s["state"] == "RUNNING" && s["attempt"].as_u64() > before["attempt"].as_u64();
            if again {
                rerun = s;
            }
            again
        },
    );
    assert!(
        rerun["placement"]
            .as_array()
            .is_some_and(|p| !p.is_empty() && p.iter().all(|p| p["worker"] != victim.as_str())),
        "nothing placed on the dead worker: {rerun}"
    );
    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(120));
    assert!(
        done["restarts"].as_u64().unwrap() >= 1
            && done["attempt"].as_u64() > before["attempt"].as_u64(),
        "the job restarted under a new attempt: {done}"
    );
    // The loss is in the job's exceptions history, with what followed.
    let exceptions = done["exceptions"].as_array().cloned().unwrap_or_default();
    assert!(
        exceptions.iter().any(|e| {
            e["attempt"] == before["attempt"]
                && e["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("restart"))
                && e["error"].as_str().is_some_and(|m| !m.is_empty())
        }),
        "the failure of attempt {} is in the history: {done}",
        before["attempt"]
    );
    let out = dir.path().join("out");
    assert_exactly_once(&want, &rows(&out), &out, "q5 after losing a worker");
    cluster.kill_coordinator();
}

#[test]
fn a_rescaled_job_runs_on_at_the_new_parallelism_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let cluster = Cluster::start(dir.path(), 3, 2);
    // Slow enough (8 s of events) to be still running after the refused
    // rescales below, which describe binaries, on a loaded machine too.
    // Its periodic checkpoints are unaligned: the rescale's savepoint is
    // aligned all the same, so it restores at the new parallelism.
    let mut args = q5_args("out", "ck", "75000");
    args.push("--unaligned-checkpoints");
    let job = cluster.submit(2, env!("CARGO_BIN_EXE_nexmark"), &args);
    worker_after_a_checkpoint(&cluster, &job);
    let before = cluster.status(&job);
    let widest = |s: &Value| {
        s["vertices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["parallelism"].as_u64().unwrap())
            .max()
    };
    assert_eq!(widest(&before), Some(2), "{before}");

    // Too many slots is refused before anything stops.
    let refused = cluster.sluice(&["rescale", &job, "-p", "7"]).unwrap();
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("would need 7 slots"), "{why}");
    let other = sluice_bin();
    let other = other.to_str().unwrap();
    let refused = cluster
        .sluice(&["rescale", &job, "-p", "3", "--binary", other])
        .unwrap();
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("is not job"),
        "{why}"
    );
    assert_eq!(cluster.status(&job)["state"], "RUNNING");

    let out = cluster
        .sluice(&["rescale", &job, "--parallelism", "3"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let savepoint = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        Path::new(&savepoint).join("_manifest.json").is_file(),
        "the savepoint {savepoint} is complete"
    );
    let mut rescaled = Value::Null;
    cluster.wait_for(
        Duration::from_secs(60),
        "the job to run at parallelism 3",
        |c| {
            let s = c.status(&job);
            let wide = s["state"] == "RUNNING" && widest(&s) == Some(3);
            if wide {
                rescaled = s;
            }
            wide
        },
    );
    assert_eq!(rescaled["parallelism"], 3, "{rescaled}");
    assert!(rescaled["attempt"].as_u64() > before["attempt"].as_u64());
    let slots: std::collections::BTreeSet<u64> = rescaled["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["task"]["subtask"].as_u64().unwrap())
        .collect();
    assert_eq!(slots.len(), 3, "three subtasks per wide vertex: {rescaled}");
    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(120));
    assert_eq!(done["restarts"], 0, "a rescale is not a failure: {done}");
    // The new attempt restored the rescale's savepoint (its id is in its
    // manifest; `recent` keeps only the newest checkpoints, which a long
    // run pushes the savepoint out of).
    let checkpoints = cluster.json(&["checkpoints", &job, "--json"]);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(Path::new(&savepoint).join("_manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        checkpoints["stats"]["restored_from"], manifest["id"],
        "the new attempt restored the rescale's savepoint: {checkpoints}"
    );
    let out = dir.path().join("out");
    assert_exactly_once(&want, &rows(&out), &out, "q5 rescaled from 2 to 3");
}

#[test]
fn least_loaded_places_a_new_job_beside_the_light_job_not_the_busy_one() {
    // Two workers of two slots: a heavy job and a light one take one slot
    // each, so slots in use tie, and the next job must go where the
    // executors' measured CPU is lower. (Spread would take the first
    // worker by id whichever job runs there.)
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster(
        LocalCluster::start(LocalClusterConfig {
            sluice: sluice_bin(),
            dir: dir.path().to_path_buf(),
            host: "127.0.0.1".into(),
            coordinator_args: [
                "--heartbeat-timeout",
                "1s",
                "--heartbeat-interval",
                "200ms",
                "--scheduling",
                "least-loaded",
            ]
            .map(String::from)
            .to_vec(),
            workers: vec![WorkerPlace::loopback(); 2],
            slots: 2,
            security: None,
            plaintext: true,
            coordinators: 1,
        })
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let nexmark = env!("CARGO_BIN_EXE_nexmark");
    // Far more events than the test lasts; the cluster is torn down after.
    let q5 = |rate: &'static str| {
        [
            "--query",
            "q5",
            "--events",
            "1000000000",
            "--rate",
            rate,
            "--output",
            "blackhole",
        ]
    };
    let worker_of = |job: &str| -> String {
        let s = cluster.wait_state(job, "RUNNING", Duration::from_secs(60));
        s["placement"][0]["worker"]
            .as_str()
            .unwrap_or_else(|| panic!("no placement: {s}"))
            .to_string()
    };
    let heavy = cluster.submit(1, nexmark, &q5("500000"));
    let busy = worker_of(&heavy);
    let light = cluster.submit(1, nexmark, &q5("1000"));
    let quiet = worker_of(&light);
    assert_ne!(
        busy, quiet,
        "slot use alone puts the light job on the empty worker"
    );
    // The coordinator measures CPU over its last 5 s: let it see both.
    std::thread::sleep(Duration::from_secs(6));
    // The executors' reported CPU, for a failure's message.
    let metrics = |job: &str| {
        let path = format!("/api/v1/jobs/{job}/metrics");
        let body = http(cluster.port(), "GET", &path, None).2;
        serde_json::from_str::<Value>(&body).unwrap_or_default()["executors"].clone()
    };
    let next = cluster.submit(1, nexmark, &q5("1000"));
    let placed = worker_of(&next);
    assert_eq!(
        placed,
        quiet,
        "placed beside the heavy job ({busy}); heavy's executors: {}; light's: {}\n{}",
        metrics(&heavy),
        metrics(&light),
        cluster.logs()
    );
}

/// Waits until `job` runs and completed a checkpoint; returns the worker
/// of its first subtask.
fn worker_after_a_checkpoint(cluster: &Cluster, job: &str) -> String {
    let mut victim = None;
    cluster.wait_for(Duration::from_secs(60), "a completed checkpoint", |c| {
        let s = c.status(job);
        if s["latest_checkpoint"].as_u64().is_some() && s["state"] == "RUNNING" {
            victim = s["placement"][0]["worker"].as_str().map(str::to_string);
        }
        victim.is_some()
    });
    victim.expect("waited for it")
}

/// The process index of worker `id`.
fn worker_position(cluster: &Cluster, id: &str) -> usize {
    cluster
        .worker_position(id)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_restarted_coordinator_resumes_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let mut cluster = Cluster::start(dir.path(), 2, 2);
    let job = cluster.submit_q5(2, "150000");
    cluster.wait_for(Duration::from_secs(60), "a completed checkpoint", |c| {
        c.status(&job)["latest_checkpoint"].as_u64().is_some()
    });
    let before = cluster.status(&job);
    cluster.kill_coordinator();
    std::thread::sleep(Duration::from_millis(500));
    cluster.restart_coordinator();
    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(120));
    // Its executors ran on while it was away, and rejoined it.
    assert_eq!(
        done["attempt"], before["attempt"],
        "adopted by the restarted coordinator, not restarted: {done}"
    );
    let out = dir.path().join("out");
    assert_exactly_once(&want, &rows(&out), &out, "q5 across a coordinator restart");
}

#[test]
fn a_frozen_worker_is_fenced_when_it_wakes_up() {
    // SIGSTOP cuts a worker and its executors off as a network partition
    // would: no heartbeats, no acknowledgements. The job moves on under a
    // new attempt; when the stale executors wake up, their connections are
    // gone and their worker is told to stop them, so nothing they staged
    // is committed: the output stays exactly-once.
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let cluster = Cluster::start(dir.path(), 3, 2);
    let job = cluster.submit_q5(2, "150000");
    let victim = worker_after_a_checkpoint(&cluster, &job);
    let pos = worker_position(&cluster, &victim);
    cluster.signal_worker(pos, "-STOP");
    cluster.wait_for(
        Duration::from_secs(30),
        "the frozen worker to be replaced",
        |c| {
            let s = c.status(&job);
            s["restarts"].as_u64().unwrap_or(0) >= 1 && s["state"] == "RUNNING"
        },
    );
    cluster.signal_worker(pos, "-CONT");
    cluster.wait_state(&job, "FINISHED", Duration::from_secs(120));
    let out = dir.path().join("out");
    assert_exactly_once(&want, &rows(&out), &out, "q5 with a frozen worker");
}

#[test]
fn kafka_to_parquet_on_three_workers_equals_the_embedded_run() {
    const RECORDS: usize = 40_000;
    let broker = Broker::start().unwrap();
    produce_events(&broker, "events", RECORDS);
    let dir = tempfile::tempdir().unwrap();
    let common = [
        "--brokers",
        &broker.address(),
        "--topic",
        "events",
        "--format",
        "json",
        "--until-end",
    ];
    let want = kafka_reference(&common, 3, &dir.path().join("reference"));
    assert_eq!(want.values().sum::<usize>(), RECORDS);

    let cluster = Cluster::start(dir.path(), 3, 1);
    let mut args = common.to_vec();
    args.extend([
        "--output",
        "out",
        "--checkpoint-dir",
        "ck",
        "--checkpoint-interval",
        "200ms",
    ]);
    let job = cluster.submit(3, env!("CARGO_BIN_EXE_kafka_to_parquet"), &args);
    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(120));
    assert_eq!(done["restarts"], 0, "{done}");
    let out = dir.path().join("out");
    assert_exactly_once(
        &want,
        &rows(&out),
        &out,
        "kafka_to_parquet on three workers",
    );
}

/// A network namespace joined to this one by a veth pair: `host_ip` on
/// this side, `ns_ip` inside. Removed on drop.
struct NetNs {
    name: String,
    veth: String,
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("`ip` is needed for the partition test (scripts/setup.sh installs iproute2): {e}")
    });
    assert!(
        out.status.success(),
        "ip {}: {} (the partition test needs root for network namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    fn create() -> NetNs {
        let id = std::process::id() % 10_000;
        let subnet = 10 + std::process::id() % 200;
        let ns = NetNs {
            name: format!("sluice-{id}"),
            veth: format!("slh{id}"),
            host_ip: format!("10.231.{subnet}.1"),
            ns_ip: format!("10.231.{subnet}.2"),
        };
        let inner = format!("sln{id}");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link", "add", &ns.veth, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &ns.veth,
        ]);
        ip(&["link", "set", &ns.veth, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        in_ns(&["addr", "add", &format!("{}/24", ns.ns_ip), "dev", &inner]);
        in_ns(&["link", "set", &inner, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        ns
    }

    fn place(&self) -> WorkerPlace {
        WorkerPlace {
            host: self.ns_ip.clone(),
            prefix: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                self.name.clone(),
            ],
        }
    }

    /// Cuts (or restores) the link: packets stop in both directions.
    fn link(&self, up: bool) {
        ip(&["link", "set", &self.veth, if up { "up" } else { "down" }]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn a_partitioned_worker_is_declared_dead_and_its_late_work_is_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let ns = NetNs::create();
    let host = WorkerPlace {
        host: ns.host_ip.clone(),
        prefix: Vec::new(),
    };
    let host2 = WorkerPlace {
        host: ns.host_ip.clone(),
        prefix: Vec::new(),
    };
    // Worker 0 is behind the veth link; workers 1 and 2 are on this side.
    let cluster = Cluster::start_at(dir.path(), &ns.host_ip, &[ns.place(), host, host2], 2);
    let job = cluster.submit_q5(3, "150000");
    let mut cut_off = None;
    cluster.wait_for(Duration::from_secs(60), "a completed checkpoint", |c| {
        let s = c.status(&job);
        if s["latest_checkpoint"].as_u64().is_some() && s["state"] == "RUNNING" {
            cut_off = s["placement"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["worker"].as_str().unwrap().to_string())
                .find(|w| worker_position(c, w) == 0);
            assert!(
                cut_off.is_some(),
                "spread placement uses the namespaced worker: {s}"
            );
        }
        cut_off.is_some()
    });
    let before = cluster.status(&job);
    let stale_attempt = before["attempt"].as_u64().unwrap();
    ns.link(false);
    let mut moved = Value::Null;
    cluster.wait_for(
        Duration::from_secs(30),
        "the job to continue elsewhere",
        |c| {
            let s = c.status(&job);
            let again = s["attempt"].as_u64() > Some(stale_attempt) && s["state"] == "RUNNING";
            if again {
                moved = s;
            }
            again
        },
    );
    let workers = cluster.json(&["workers", "--json"]);
    let dead: Vec<&Value> = workers
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["alive"] == false)
        .collect();
    assert_eq!(
        dead.len(),
        1,
        "the partitioned worker is declared dead: {workers}"
    );
    // The cut-off executor keeps running on its side for a while; heal
    // the link while the job still runs so its late messages arrive.
    std::thread::sleep(Duration::from_millis(1500));
    ns.link(true);
    cluster.wait_state(&job, "FINISHED", Duration::from_secs(120));
    // A finished job has no placement: check the attempt that replaced
    // the cut-off one.
    assert!(
        moved["placement"].as_array().is_some_and(|p| !p.is_empty()
            && p.iter()
                .all(|p| Some(p["worker"].as_str().unwrap()) != cut_off.as_deref())),
        "nothing of the last attempt ran behind the partition: {moved}"
    );
    // Exactly-once visible output; in-progress files may only be left by
    // the cut-off attempt, and are never made visible.
    let out = dir.path().join("out");
    assert_eq!(rows(&out), want, "visible output after a partition");
    let stray: Vec<String> = common::hidden_files(&out)
        .into_iter()
        .filter(|f| !f.contains(&format!("-a{stale_attempt}-")))
        .collect();
    assert!(
        stray.is_empty(),
        "uncommitted files of live attempts: {stray:?}"
    );
}
