//! What job code can reach, tried by job code: a real `sluice worker`
//! process (with `SLUICE_TOKEN` in its environment) runs this test binary
//! as the executor of two jobs at once, and each executor ([`probe_job`])
//! reports what it could see and read: its environment, where its spec
//! came from, which files hold its attempt's secret, and which of the
//! token file, the worker's and the coordinator's data directories it
//! could list or read. The tests check what holds for an executor of the
//! worker's own user, and, the worker being root, what `--run-as nobody`
//! adds.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sluice_cluster::local::{LocalCluster, LocalClusterConfig, LocalSecurity, WorkerPlace};

/// The token the cluster runs with; the worker also has it in its
/// environment, as `SLUICE_TOKEN`.
const TOKEN: &str = "confinement-token-0123456789abcdef";
/// Marks the report line in an executor's log.
const REPORT: &str = "PROBE-REPORT ";
/// How long a probe waits before looking (so both jobs' executors run
/// when they look) and after (so each outlives the other's look).
const HOLD: Duration = Duration::from_secs(6);

/// What an executor found.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    uid: u32,
    env: BTreeMap<String, String>,
    /// Its attempt's secret, from the spec on stdin.
    secret: String,
    job_id: String,
    /// `HOME`'s mode and owner.
    home_mode: u32,
    home_uid: u32,
    /// Files under the worker's data directory (but its artifacts) that
    /// hold the secret and that this executor could read.
    secret_in: Vec<String>,
    /// Path tried -> "listed N" / "read N bytes" / the error.
    tries: BTreeMap<String, String>,
    /// When it looked, and when it was started and ended (ms since the
    /// epoch).
    started: u128,
    looked: u128,
    ends: u128,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn try_list(p: &Path) -> String {
    match std::fs::read_dir(p) {
        Ok(d) => format!("listed {}", d.count()),
        Err(e) => format!("error: {:?}", e.kind()),
    }
}

fn try_read(p: &Path) -> String {
    match std::fs::read(p) {
        Ok(b) => format!("read {} bytes", b.len()),
        Err(e) => format!("error: {:?}", e.kind()),
    }
}

/// Every file under `dir` it can read that contains `needle`.
fn files_holding(dir: &Path, needle: &[u8], skip: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p == skip {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => files_holding(&p, needle, skip, found),
            Ok(t) if t.is_file() => {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(p.display().to_string());
                    }
                }
            }
            _ => {}
        }
    }
}

/// The job: described for `sluice submit`; as an executor, the probe.
/// Run by the test binary's harness in a child process only (it does
/// nothing when neither variable is set).
#[test]
fn probe_job() {
    if std::env::var_os("SLUICE_DESCRIBE").is_some() {
        let env = sluice_engine::Env::new();
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("x", arrow::datatypes::DataType::Int64, false),
        ]));
        let _ = env
            .source_fn("nothing", schema, |_| {
                Ok(Box::new(sluice_engine::testing::VecSource::new(Vec::new())))
            })
            .collect();
        env.execute().expect("describe mode exits");
        return;
    }
    let Some(spec_at) = std::env::var_os("SLUICE_EXECUTOR") else {
        return;
    };
    let started = now_ms();
    let spec = if spec_at == "-" {
        // The spec is stdin's first line; the worker keeps the pipe open
        // for relays of new leaders after it.
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        line.into_bytes()
    } else {
        std::fs::read(&spec_at).unwrap()
    };
    let spec: sluice_protocol::api::ExecutorSpec = serde_json::from_slice(&spec).unwrap();
    std::thread::sleep(HOLD);

    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
    // HOME is DATA_DIR/attempts/<stem>; the cluster's directory holds the
    // worker's data directory, the coordinator's and the token file.
    let worker_dir = home.parent().unwrap().parent().unwrap().to_path_buf();
    let cluster = worker_dir.parent().unwrap().to_path_buf();
    let meta = std::fs::metadata(&home).unwrap();
    let mut secret_in = Vec::new();
    files_holding(
        &worker_dir,
        spec.secret.as_bytes(),
        &worker_dir.join("artifacts"),
        &mut secret_in,
    );
    let mut tries = BTreeMap::new();
    for (name, p, list) in [
        ("token file", cluster.join("token"), false),
        ("worker data dir", worker_dir.clone(), true),
        ("worker attempts dir", worker_dir.join("attempts"), true),
        ("worker logs dir", worker_dir.join("logs"), true),
        ("coordinator data dir", cluster.join("coordinator"), true),
        ("old shared spec dir", worker_dir.join("executors"), true),
    ] {
        let r = if list { try_list(&p) } else { try_read(&p) };
        tries.insert(name.to_string(), r);
    }
    // Its own log: the worker's file, written through a descriptor.
    let logs = worker_dir.join("logs");
    let stem = home.file_name().unwrap().to_string_lossy().to_string();
    tries.insert(
        "own log file".into(),
        try_read(&logs.join(format!("{stem}.log"))),
    );
    // The worker's own environment, where SLUICE_TOKEN is, through /proc.
    let worker_env = PathBuf::from(format!(
        "/proc/{}/environ",
        std::os::unix::process::parent_id()
    ));
    let r = try_read(&worker_env);
    let holds_token = std::fs::read(&worker_env)
        .is_ok_and(|b| b.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()));
    tries.insert(
        "worker environ".into(),
        format!("{r}; token: {holds_token}"),
    );
    let looked = now_ms();
    let report = Report {
        uid: nix::unistd::getuid().as_raw(),
        env: std::env::vars().collect(),
        secret: spec.secret.clone(),
        job_id: spec.job_id.clone(),
        home_mode: meta.permissions().mode() & 0o7777,
        home_uid: meta.uid(),
        secret_in,
        tries,
        started,
        looked,
        ends: looked + HOLD.as_millis(),
    };
    println!("{REPORT}{}", serde_json::to_string(&report).unwrap());
    std::thread::sleep(HOLD);
    std::process::exit(0);
}

/// A cluster of one coordinator and one worker with two slots, whose
/// worker runs with `worker_env` (through `env`) besides `SLUICE_TOKEN`.
fn cluster(dir: &Path, worker_env: &[&str]) -> LocalCluster {
    // An executor of another user must reach the worker's data directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let cdir = dir.join("cluster");
    std::fs::create_dir(&cdir).unwrap();
    std::fs::set_permissions(&cdir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let token = cdir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut prefix = vec!["env".to_string(), format!("SLUICE_TOKEN={TOKEN}")];
    prefix.extend(worker_env.iter().map(|s| s.to_string()));
    LocalCluster::start(LocalClusterConfig {
        sluice: PathBuf::from(env!("CARGO_BIN_EXE_sluice")),
        dir: cdir,
        host: "127.0.0.1".into(),
        coordinator_args: Vec::new(),
        workers: vec![WorkerPlace {
            host: "127.0.0.1".into(),
            prefix,
        }],
        slots: 2,
        security: Some(LocalSecurity { token_file: token }),
        plaintext: false,
        coordinators: 1,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Submits the probe twice and returns the first report of each job.
fn run_probes(c: &LocalCluster) -> Vec<Report> {
    let me = std::env::current_exe().unwrap();
    let args = ["probe_job", "--exact", "--nocapture", "--test-threads=1"];
    let a = c.submit(1, &me, &args).unwrap_or_else(|e| panic!("{e}"));
    let b = c.submit(1, &me, &args).unwrap_or_else(|e| panic!("{e}"));
    let logs = c.dir().join("worker-0").join("logs");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut reports: BTreeMap<String, Report> = BTreeMap::new();
        for e in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for line in text.lines() {
                // After libtest's "test probe_job ... " on the same line.
                // A line still being written does not parse yet.
                let Some((_, json)) = line.split_once(REPORT) else {
                    continue;
                };
                if let Ok(r) = serde_json::from_str::<Report>(json) {
                    reports.entry(r.job_id.clone()).or_insert(r);
                }
            }
        }
        if reports.contains_key(&a) && reports.contains_key(&b) {
            let _ = c.sluice(&["cancel", &a]);
            let _ = c.sluice(&["cancel", &b]);
            return reports.into_values().collect();
        }
        assert!(
            Instant::now() < deadline,
            "no reports from both jobs\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The variables an executor may have: the worker's passed list, its own
/// directory, its spec and parallelism.
fn allowed(name: &str) -> bool {
    sluice_cluster::confine::PASSED_VARS.contains(&name)
        || name.starts_with(sluice_cluster::confine::PASSED_PREFIX)
        || ["HOME", "TMPDIR", "SLUICE_EXECUTOR", "SLUICE_PARALLELISM"].contains(&name)
}

/// What holds for every executor, of whatever user.
fn check_common(reports: &[Report]) {
    assert_eq!(reports.len(), 2);
    // Both looked while the other ran: what one did not find was there
    // to find.
    let (a, b) = (&reports[0], &reports[1]);
    assert!(
        a.looked > b.started && a.looked < b.ends && b.looked > a.started && b.looked < a.ends,
        "the two executors did not overlap: {a:?} {b:?}"
    );
    assert_ne!(a.secret, b.secret, "each attempt has its own secret");
    for r in reports {
        assert_eq!(r.env.get("SLUICE_EXECUTOR").map(String::as_str), Some("-"));
        assert!(!r.env.contains_key("SLUICE_TOKEN"), "{:?}", r.env);
        let leaked: Vec<_> = r.env.keys().filter(|k| !allowed(k)).collect();
        assert!(leaked.is_empty(), "variables passed: {leaked:?}");
        assert!(
            r.env.values().all(|v| !v.contains(TOKEN)),
            "the token is in the environment"
        );
        assert!(
            r.secret_in.is_empty(),
            "files holding the attempt's secret: {:?}",
            r.secret_in
        );
        assert_eq!(r.home_mode, 0o700, "attempt directory mode");
        assert_eq!(r.home_uid, r.uid, "attempt directory owner");
        assert!(
            r.tries["old shared spec dir"].contains("NotFound"),
            "{:?}",
            r.tries
        );
    }
}

/// Waits until the worker has removed every attempt directory (the
/// executors have ended).
fn attempts_removed(c: &LocalCluster) {
    let attempts = c.dir().join("worker-0").join("attempts");
    c.wait_for(
        Duration::from_secs(60),
        "attempt directories removed",
        |_| Ok::<_, sluice_engine::Error>(std::fs::read_dir(&attempts).unwrap().count() == 0),
    )
    .unwrap();
}

/// Executors of the worker's own user: a cleared environment (no token),
/// the spec and its secret in no file, a private attempt directory that
/// goes when the executor does. (The same user's files stay readable:
/// that needs `--run-as`.)
#[test]
fn an_executor_gets_no_token_and_finds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), &[]);
    let reports = run_probes(&c);
    check_common(&reports);
    // The limit ARCHITECTURE.md's threat model states: an executor of the
    // worker's own user reads the worker's environment through /proc.
    for r in &reports {
        assert!(
            r.tries["worker environ"].contains("token: true"),
            "{:?}",
            r.tries
        );
    }
    attempts_removed(&c);
}

/// A root worker with `--run-as nobody`: the executor is nobody, and can
/// neither read the token file or the worker's environment (in /proc) nor
/// list or read the worker's or the coordinator's data directories (it
/// reaches its binary and its own directory by name only).
#[test]
fn a_run_as_executor_cannot_read_the_worker_or_coordinator() {
    if !nix::unistd::geteuid().is_root() {
        // --run-as needs root; the test machine runs the suite as root,
        // and without it the refusal is what there is to check.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "worker",
                "--coordinator",
                "http://127.0.0.1:9",
                "--slots",
                "1",
            ])
            .args(["--data-dir", "/nonexistent", "--run-as", "nobody"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("root"), "{err}");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a user nobody");
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), &["SLUICE_RUN_AS=nobody"]);
    let reports = run_probes(&c);
    check_common(&reports);
    for r in &reports {
        assert_eq!(r.uid, nobody.uid.as_raw(), "runs as nobody");
        for what in [
            "token file",
            "worker data dir",
            "worker attempts dir",
            "worker logs dir",
            "coordinator data dir",
            "own log file",
            "worker environ",
        ] {
            assert!(
                r.tries[what].contains("PermissionDenied"),
                "{what}: {}",
                r.tries[what]
            );
        }
    }
    attempts_removed(&c);
}

/// A data directory the `--run-as` user could not reach is refused when
/// the worker starts, naming the directory in the way.
#[test]
fn a_data_dir_the_run_as_user_cannot_reach_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "worker",
            "--coordinator",
            "http://127.0.0.1:9",
            "--slots",
            "1",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("worker"))
        .args(["--run-as", "nobody"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("cannot reach the data directory")
            && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
}
