//! A secured cluster end to end: HTTPS and a bearer token on the API,
//! mutual TLS on the control connections and the exchange (each attempt
//! with a certificate of its own), a coordinator restarted mid-run whose
//! executors rejoin it over TLS, and a CLI that gets nothing without the
//! token or the CA.

use std::process::Command;
use std::time::Duration;

use sluice_cluster::local::{LocalSecurity, WorkerPlace};

mod common;
use common::cluster::{embedded_q5, sluice_bin, Cluster};
use common::{assert_exactly_once, rows, OutputWithin, RUN_LIMIT};

#[test]
fn a_secured_cluster_serves_https_and_answers_only_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let token_file = certs.join("token");
    std::fs::write(&token_file, "0123456789abcdef-token\n").unwrap();
    // A token file others could read is refused.
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let security = LocalSecurity {
        token_file: token_file.clone(),
    };
    // A throwaway CA: HTTPS, and mutual TLS on the control connections and
    // the exchange, each attempt with a certificate of its own.
    let places = [WorkerPlace::loopback(), WorkerPlace::loopback()];
    let mut cluster =
        Cluster::start_secured(dir.path(), "127.0.0.1", &places, 2, Some(security), 1, true);
    assert!(cluster.url().starts_with("https://"), "{}", cluster.url());
    let ca = cluster.tls().expect("a TLS cluster").ca.cert.clone();

    // Workers registered over HTTPS with the token; the job's executors
    // spoke TLS to the coordinator and to each other (q5's hash exchange
    // crosses the two workers), and the output is exactly the embedded
    // run's, as on a plaintext cluster (the tests above). The coordinator
    // restarts mid-run: the executors rejoin it over mutual TLS too (their
    // attempt's certificate against its node certificate), no restart.
    let job = cluster.submit_q5(2, "150000");
    cluster.wait_for(Duration::from_secs(60), "a completed checkpoint", |c| {
        c.status(&job)["latest_checkpoint"].as_u64().is_some()
    });
    let before = cluster.status(&job);
    cluster.kill_coordinator();
    cluster.restart_coordinator();
    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(120));
    assert_eq!(done["restarts"], 0, "{done}");
    assert_eq!(done["attempt"], before["attempt"], "{done}");
    let out = dir.path().join("out");
    assert_exactly_once(&want, &rows(&out), &out, "q5 on a secured cluster");
    let coordinator_log =
        std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap_or_default();
    assert!(
        coordinator_log.contains("tls=true") && !coordinator_log.contains("plaintext"),
        "the control server ran TLS:\n{coordinator_log}"
    );

    // Without the token, with a wrong one, or without trusting the CA,
    // the CLI gets nothing.
    let sluice = |args: &[&str]| {
        let out = Command::new(sluice_bin())
            .args(["jobs", "--coordinator", &cluster.url()])
            .args(args)
            .env_remove("SLUICE_TOKEN")
            .output_within(RUN_LIMIT);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let ca = ca.to_str().unwrap();
    let (ok, err) = sluice(&["--ca-cert", ca]);
    assert!(
        !ok && err.contains("401") && err.contains("bearer token"),
        "{err}"
    );
    let wrong = certs.join("wrong");
    std::fs::write(&wrong, "guessed\n").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (ok, err) = sluice(&["--ca-cert", ca, "--token-file", wrong.to_str().unwrap()]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, err) = sluice(&["--token-file", token_file.to_str().unwrap()]);
    assert!(!ok && err.to_lowercase().contains("certificate"), "{err}");
    let (ok, err) = sluice(&[
        "--ca-cert",
        ca,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
}
