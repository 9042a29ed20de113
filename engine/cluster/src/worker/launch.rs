//! Starting an executor: its binary fetched from the coordinator (and
//! verified), its attempt directory, and the process itself with its
//! spec on stdin.

use super::*;

/// A coordinator blip while fetching would otherwise fail the whole
/// attempt; a few quick retries ride it out. A refusal (4xx) or a bad
/// hash is final.
pub(super) async fn fetch_artifact(shared: &Shared, sha256: &str) -> Result<PathBuf> {
    let mut delay = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        match shared.artifacts.get(&shared.client, sha256).await {
            Err(e @ (Error::Unreachable { .. } | Error::Api { status: 500.., .. }))
                if tries < FETCH_RETRIES =>
            {
                warn!(artifact = sha256, error = %e, "artifact fetch failed; retrying");
                tries += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            r => return r,
        }
    }
}

/// Starts the executor; its stdin stays open for the relays of new
/// leaders that adopt its attempt (`relays`), a JSON line each after the
/// spec's line.
pub(super) async fn start_executor(
    shared: &Shared,
    key: &ExecutorKey,
    launch: &ExecutorLaunch,
    mut relays: mpsc::UnboundedReceiver<Relay>,
) -> Result<(Child, AttemptDir, u64)> {
    let binary = fetch_artifact(shared, &launch.artifact).await?;
    let stem = key.file_stem();
    let mut spec = serde_json::to_vec(&launch.spec)
        .map_err(|e| Error::Internal(format!("executor spec does not serialize: {e}")))?;
    spec.push(b'\n');
    let dir = AttemptDir::create(&shared.data_dir, &stem, shared.run_as.as_ref()).await?;
    match spawn_executor(shared, key, launch, &binary, &dir).await {
        Ok((mut child, log_from)) => {
            // The spec, with the attempt's secret, goes through a pipe only
            // this process holds; written by a task of its own so a binary
            // that never reads it cannot hold the worker up.
            if let Some(mut stdin) = child.stdin.take() {
                let pid = child.id();
                tokio::spawn(async move {
                    if let Err(e) = stdin.write_all(&spec).await {
                        warn!(?pid, error = %e, "cannot hand the executor its spec");
                        return;
                    }
                    while let Some(relay) = relays.recv().await {
                        let Ok(mut line) = serde_json::to_vec(&relay) else {
                            continue;
                        };
                        line.push(b'\n');
                        if let Err(e) = stdin.write_all(&line).await {
                            // It ended (or never reads): nothing to relay to.
                            debug!(?pid, error = %e, "cannot relay the new leader to the executor");
                            return;
                        }
                    }
                });
            }
            Ok((child, dir, log_from))
        }
        Err(e) => {
            dir.remove().await;
            Err(e)
        }
    }
}

/// Starts the executor's process; returns it and where its output starts
/// in its log file (a file of the same name may hold an earlier
/// process's).
async fn spawn_executor(
    shared: &Shared,
    key: &ExecutorKey,
    launch: &ExecutorLaunch,
    binary: &std::path::Path,
    dir: &AttemptDir,
) -> Result<(Child, u64)> {
    let log_path = key.log_path(&shared.data_dir);
    let log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .await
        .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
    let log_from = log
        .metadata()
        .await
        .map_err(|e| Error::io(format!("reading {}", log_path.display()), e))?
        .len();
    let log = log.into_std().await;

    let workdir = match &launch.workdir {
        Some(dir) if tokio::fs::metadata(dir).await.is_ok_and(|m| m.is_dir()) => PathBuf::from(dir),
        _ => dir.path().to_path_buf(),
    };
    let env = confine::executor_env(std::env::vars_os(), dir.path());
    let mut delay = Duration::from_millis(20);
    for _ in 0..6 {
        let out = log
            .try_clone()
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let err = log
            .try_clone()
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let mut command = Command::new(binary);
        command
            .args(&launch.args)
            .current_dir(&workdir)
            // Nothing of the worker's environment but what confine passes:
            // its token above all stays with it.
            .env_clear()
            .envs(env.iter().cloned())
            .env(EXECUTOR_ENV, SPEC_ON_STDIN)
            .env("SLUICE_PARALLELISM", launch.spec.parallelism.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        if let Some(user) = &shared.run_as {
            // std drops the supplementary groups when it sets the uid.
            command.uid(user.uid).gid(user.gid);
        }
        match command.spawn() {
            Ok(child) => return Ok((child, log_from)),
            Err(e) if e.raw_os_error() == Some(TEXT_FILE_BUSY) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(Error::io(format!("starting {}", binary.display()), e)),
        }
    }
    Err(Error::io(
        format!("starting {}", binary.display()),
        std::io::Error::from_raw_os_error(TEXT_FILE_BUSY),
    ))
}
