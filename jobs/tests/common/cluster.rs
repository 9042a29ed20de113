//! A real cluster for end-to-end tests: a `sluice coordinator` and
//! `sluice worker`s started by [`LocalCluster`] with the tests' heartbeat
//! settings, and helpers that read the CLI's JSON and panic with the logs
//! when something fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sluice_cluster::local::{LocalCluster, LocalClusterConfig, LocalSecurity, WorkerPlace};

pub fn sluice_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_nexmark")).with_file_name("sluice");
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build -p sluice-cluster --bin sluice` (cargo test --workspace does)",
        p.display()
    );
    p
}

/// Events of the q5 jobs the cluster tests compare with an embedded run.
pub const EVENTS: &str = "600000";

/// q5 run embedded at parallelism 3 (the reference the cluster runs are
/// compared with): its output rows.
pub fn embedded_q5(dir: &Path) -> BTreeMap<String, usize> {
    let out = dir.join("reference");
    let status = Command::new(env!("CARGO_BIN_EXE_nexmark"))
        .args([
            "--query",
            "q5",
            "--events",
            EVENTS,
            "--parallelism",
            "3",
            "--output",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let r = super::rows(&out);
    assert!(r.len() >= 10, "reference output is too small to test with");
    r
}

/// A [`LocalCluster`] with the tests' heartbeat settings, and helpers that
/// read the CLI's JSON and panic with the logs when something fails.
pub struct Cluster(pub LocalCluster);

impl std::ops::Deref for Cluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.0
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.0
    }
}

/// The arguments of a q5 run at `rate` events per second writing `out`,
/// checkpointing every 200 ms into `ck`.
pub fn q5_args<'a>(out: &'a str, ck: &'a str, rate: &'a str) -> Vec<&'a str> {
    vec![
        "--query",
        "q5",
        "--events",
        EVENTS,
        "--rate",
        rate,
        "--output",
        out,
        "--checkpoint-dir",
        ck,
        "--checkpoint-interval",
        "200ms",
    ]
}

/// The tests' cluster settings: heartbeats every 200 ms, a worker dead
/// after 1 s without one.
fn config(
    dir: &Path,
    host: &str,
    workers: Vec<WorkerPlace>,
    slots: usize,
    security: Option<LocalSecurity>,
    coordinators: usize,
    tls: bool,
) -> LocalClusterConfig {
    LocalClusterConfig {
        sluice: sluice_bin(),
        dir: dir.to_path_buf(),
        host: host.to_string(),
        coordinator_args: ["--heartbeat-timeout", "1s", "--heartbeat-interval", "200ms"]
            .map(String::from)
            .to_vec(),
        workers,
        slots,
        security,
        plaintext: !tls,
        coordinators,
    }
}

impl Cluster {
    pub fn start(dir: &Path, workers: usize, slots: usize) -> Cluster {
        let places: Vec<WorkerPlace> = (0..workers).map(|_| WorkerPlace::loopback()).collect();
        Cluster::start_at(dir, "127.0.0.1", &places, slots)
    }

    /// [`start`](Self::start) with more `sluice coordinator` arguments
    /// (a `--heartbeat-timeout` among them replaces the tests' 1 s).
    pub fn start_with_args(dir: &Path, workers: usize, slots: usize, args: &[&str]) -> Cluster {
        let places: Vec<WorkerPlace> = (0..workers).map(|_| WorkerPlace::loopback()).collect();
        let mut config = config(dir, "127.0.0.1", places, slots, None, 1, false);
        if args.contains(&"--heartbeat-timeout") {
            let at = config
                .coordinator_args
                .iter()
                .position(|a| a == "--heartbeat-timeout")
                .expect("the tests' settings have one");
            config.coordinator_args.drain(at..at + 2);
        }
        config
            .coordinator_args
            .extend(args.iter().map(|a| a.to_string()));
        Cluster(LocalCluster::start(config).unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn start_at(dir: &Path, host: &str, places: &[WorkerPlace], slots: usize) -> Cluster {
        Cluster::start_with(dir, host, places, slots, None, 1)
    }

    /// Plaintext (`--insecure-plaintext`): the tests that are not about TLS
    /// and talk raw HTTP to the API.
    pub fn start_with(
        dir: &Path,
        host: &str,
        places: &[WorkerPlace],
        slots: usize,
        security: Option<LocalSecurity>,
        coordinators: usize,
    ) -> Cluster {
        Cluster::start_secured(dir, host, places, slots, security, coordinators, false)
    }

    /// `tls`: with a throwaway CA (HTTPS, mutual TLS on control
    /// connections and the exchange).
    pub fn start_secured(
        dir: &Path,
        host: &str,
        places: &[WorkerPlace],
        slots: usize,
        security: Option<LocalSecurity>,
        coordinators: usize,
        tls: bool,
    ) -> Cluster {
        let config = config(
            dir,
            host,
            places.to_vec(),
            slots,
            security,
            coordinators,
            tls,
        );
        Cluster(LocalCluster::start(config).unwrap_or_else(|e| panic!("{e}")))
    }

    /// `coordinators` coordinators in a Raft group, each on its own data
    /// directory, and `workers` workers on loopback (plaintext).
    pub fn start_replicated(
        dir: &Path,
        workers: usize,
        slots: usize,
        coordinators: usize,
    ) -> Cluster {
        let places: Vec<WorkerPlace> = (0..workers).map(|_| WorkerPlace::loopback()).collect();
        Cluster::start_secured(dir, "127.0.0.1", &places, slots, None, coordinators, false)
    }

    /// A Raft group of one coordinator per place in `coordinators` (a
    /// network namespace each, say), and `workers` workers on this side's
    /// loopback (plaintext).
    pub fn start_placed(
        dir: &Path,
        workers: usize,
        slots: usize,
        coordinators: Vec<WorkerPlace>,
    ) -> Cluster {
        let places = (0..workers).map(|_| WorkerPlace::loopback()).collect();
        let config = config(
            dir,
            "127.0.0.1",
            places,
            slots,
            None,
            coordinators.len(),
            false,
        );
        Cluster(LocalCluster::start_placed(config, coordinators).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Submits q5 checkpointing every 200 ms, with relative output and
    /// checkpoint directories (`out`, `ck`): the executors run in the
    /// submitter's directory.
    pub fn submit_q5(&self, parallelism: usize, rate: &str) -> String {
        self.submit(
            parallelism,
            env!("CARGO_BIN_EXE_nexmark"),
            &q5_args("out", "ck", rate),
        )
    }

    /// Waits until `job` runs and completed a checkpoint; its status then.
    pub fn after_a_checkpoint(&self, job: &str) -> Value {
        let mut status = Value::Null;
        self.wait_for(Duration::from_secs(60), "a completed checkpoint", |c| {
            status = c.status(job);
            status["latest_checkpoint"].as_u64().is_some() && status["state"] == "RUNNING"
        });
        status
    }

    pub fn restart_coordinator(&mut self) {
        self.0.start_coordinator().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Sends coordinator `i` a signal (`STOP`, `CONT`, ...) with `kill`.
    pub fn signal_coordinator(&self, i: usize, signal: &str) {
        let pid = self.coordinator_pid(i).expect("the coordinator runs");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.sluice(args).unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn submit(&self, parallelism: usize, binary: &str, job_args: &[&str]) -> String {
        self.0
            .submit(parallelism, Path::new(binary), job_args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn status(&self, job: &str) -> Value {
        self.json(&["status", job, "--json"])
    }

    pub fn wait_for(&self, timeout: Duration, what: &str, mut ok: impl FnMut(&Cluster) -> bool) {
        self.0
            .wait_for(timeout, what, |_| Ok::<_, sluice_engine::Error>(ok(self)))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn wait_state(&self, job: &str, state: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        self.wait_for(timeout, &format!("job {job} to be {state}"), |c| {
            last = c.status(job);
            let s = last["state"].as_str().unwrap_or("");
            assert!(
                s == state || !matches!(s, "FAILED" | "CANCELED" | "FINISHED"),
                "job {job} ended {s} while waiting for {state}: {last}\n{}",
                c.logs()
            );
            s == state
        });
        last
    }
}
