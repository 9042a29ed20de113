//! The `sluice` command: the coordinator and worker services, and the
//! client commands (submit, jobs, status, logs, cancel, savepoint,
//! checkpoints, workers) over the coordinator's REST API.
//!
//! Settings come from flags, then environment variables (clap's `env`),
//! then the TOML file named by `--config` / `SLUICE_CONFIG` (sections
//! `[coordinator]`, `[worker]`, `[client]`, keys = flag names with
//! underscores), then built-in defaults; each is declared once
//! (`sluice/config.rs`), and `sluice config defaults` lists them. Output
//! meant for scripts goes to stdout; logs go to stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use sluice_cluster::artifact::{sha256_of_file, ArtifactCache};
use sluice_cluster::client::{Client, Submission};
use sluice_cluster::coordinator;
use sluice_cluster::ship;
use sluice_cluster::worker;
use sluice_protocol::api::{JobDescription, JobStatus, RescaleRequest, Rescaled, SavepointRequest};

mod commands;
mod config;
mod follow;
mod logs;
mod output;
mod tls;

use commands::{Cli, Command, ConfigCommand, Membership};
use config::{
    client, coordinator_config, load_file, submit_settings, worker_config, ClientArgs, FileConfig,
    SubmitArgs,
};
use output::{checkpoints_text, jobs_table, load_text, status_text, table};

fn main() -> ExitCode {
    // The matches tell where each value came from (flag, variable or
    // default), which decides whether the --config file may replace it.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let service = matches!(cli.command, Command::Coordinator(_) | Command::Worker(_));
    if !service {
        // A client command piped into `head` stops quietly when the pipe
        // closes, as command-line tools do, instead of panicking on its
        // next print. Services keep ignoring SIGPIPE: a peer closing a
        // socket must be an error to handle, not the end of the process.
        // SAFETY: before any thread starts; SIG_DFL is a valid disposition.
        unsafe {
            nix::libc::signal(nix::libc::SIGPIPE, nix::libc::SIG_DFL);
        }
    }
    init_tracing(service);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(service: bool) {
    use std::io::IsTerminal;

    use tracing_subscriber::EnvFilter;
    // Client commands print results on stdout; only trouble belongs on
    // stderr unless RUST_LOG asks for more.
    // openraft logs every failed message to an unreachable coordinator
    // (several lines, at ERROR, twice a second); the coordinator logs a
    // peer going away and coming back once itself.
    let default = if service { "info,openraft=off" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<()> {
    let file = load_file(cli.config.as_deref())?;
    let m = matches
        .subcommand()
        .map(|(_, m)| m)
        .ok_or_else(|| anyhow!("no command given"))?;
    let client = |c: &ClientArgs| client(c, m, &file);
    match cli.command {
        Command::Coordinator(args) => {
            let config = coordinator_config(&args, m, &file)?;
            config::require_tls(&config)?;
            coordinator::serve(config).await?;
        }
        Command::Worker(args) => {
            let config = worker_config(&args, m, &file)?;
            worker::run(config).await?;
        }
        Command::Submit(args) => {
            let job_id = submit(&args, m, &file).await?;
            println!("{job_id}");
            if args.wait || args.follow {
                let client = client(&args.client)?;
                let every = Duration::from_millis(500);
                let end = if args.follow {
                    follow::until_ended(
                        &client,
                        &job_id,
                        every,
                        |s| (s.state, s.attempt, s.latest_checkpoint),
                        |s| Some(follow::progress_line(s)),
                    )
                    .await?
                } else {
                    let end =
                        follow::until_ended(&client, &job_id, every, |s| s.state, |_| None).await?;
                    println!("{} {}", end.id, end.state.name());
                    end
                };
                follow::ended_ok(&end)?;
            }
        }
        Command::Jobs { client: c, json } => {
            let jobs = client(&c)?.jobs().await?;
            if json {
                print_json(&jobs)?;
            } else {
                print!("{}", jobs_table(&jobs));
            }
        }
        Command::Status {
            client: c,
            job_id,
            json,
            watch,
            interval,
        } => {
            let client = client(&c)?;
            if watch {
                let show = |s: &JobStatus| {
                    if json {
                        serde_json::to_string_pretty(s).ok()
                    } else {
                        Some(status_text(s))
                    }
                };
                // Everything but the clock: a change worth showing again.
                let key = |s: &JobStatus| {
                    let mut s = s.clone();
                    s.updated_ms = 0;
                    serde_json::to_string(&s).unwrap_or_default()
                };
                let end = follow::until_ended(&client, &job_id, interval.0, key, show).await?;
                follow::ended_ok(&end)?;
            } else {
                let status = client.status(&job_id).await?;
                if json {
                    print_json(&status)?;
                } else {
                    print!("{}", status_text(&status));
                    // Load per vertex while an attempt runs; a coordinator
                    // without the route just shows none.
                    if let Ok(m) = client.job_metrics(&job_id).await {
                        print!("{}", load_text(&m));
                    }
                }
            }
        }
        Command::Cancel {
            client: c,
            job_id,
            yes,
        } => {
            let client = client(&c)?;
            follow::confirm(format!("Cancel {job_id}?"), yes).await?;
            let status = client.cancel(&job_id).await?;
            // Said on stdout, so a script can tell it happened.
            println!("{} {}", status.id, status.state.name());
        }
        Command::Savepoint {
            client: c,
            job_id,
            dir,
            stop,
            yes,
        } => savepoint(&client(&c)?, job_id, dir, stop, yes).await?,
        Command::Stop {
            client: c,
            job_id,
            dir,
            yes,
        } => savepoint(&client(&c)?, job_id, dir, true, yes).await?,
        Command::Rescale {
            client: c,
            job_id,
            parallelism,
            binary,
            yes,
        } => {
            let client = client(&c)?;
            follow::confirm(
                format!("Rescale {job_id} to parallelism {parallelism} (it stops with a savepoint and runs on from it)?"),
                yes,
            )
            .await?;
            let rescaled = rescale(&client, &job_id, parallelism, binary.as_deref()).await?;
            println!("{}", rescaled.savepoint);
        }
        Command::Checkpoints {
            client: c,
            job_id,
            json,
            limit,
        } => {
            let cps = client(&c)?.checkpoints(&job_id).await?;
            if json {
                print_json(&cps)?;
            } else {
                print!("{}", checkpoints_text(&cps, limit));
            }
        }
        Command::Logs {
            client: c,
            job_id,
            follow,
            since,
            tail,
            json,
            interval,
        } => {
            let request = logs::LogsRequest {
                follow,
                since,
                tail,
                json,
                interval: interval.0,
            };
            logs::print(&client(&c)?, &job_id, &request).await?;
        }
        Command::Results {
            client: c,
            job_id,
            json,
        } => {
            let results = client(&c)?.results(&job_id).await?;
            if json {
                print_json(&results)?;
            } else if results.sinks.is_empty() {
                println!("no rows have reached a sink yet");
            } else {
                for (i, s) in results.sinks.iter().enumerate() {
                    if i > 0 {
                        println!();
                    }
                    println!("{} ({} newest rows)", s.name, s.rows.len());
                    let header: Vec<&str> = s.columns.iter().map(String::as_str).collect();
                    print!("{}", table(&header, s.rows.iter().cloned()));
                }
            }
        }
        Command::Cluster { client: c, json } => {
            let info = client(&c)?.cluster().await?;
            if json {
                print_json(&info)?;
            } else {
                println!("workers alive: {}", info.workers_alive);
                println!("slots: {} used of {}", info.used_slots, info.slots);
                let jobs: Vec<String> = info
                    .jobs
                    .iter()
                    .map(|(state, n)| format!("{} {n}", state.name()))
                    .collect();
                println!(
                    "jobs: {}",
                    if jobs.is_empty() {
                        "-".into()
                    } else {
                        jobs.join(", ")
                    }
                );
                println!("heartbeat timeout: {} ms", info.heartbeat_timeout_ms);
                println!("control: {}", info.control);
            }
        }
        Command::Coordinators {
            client: c,
            action,
            id,
            url,
            json,
            yes,
        } => {
            let client = client(&c)?;
            let group = match (action, id, url) {
                (Membership::List, None, None) => client.coordinators().await?,
                (Membership::Add, Some(id), Some(url)) => {
                    follow::confirm(format!("Add coordinator {id} at {url} to the group?"), yes)
                        .await?;
                    client.add_coordinator(id, &url).await?
                }
                (Membership::Remove, Some(id), None) => {
                    follow::confirm(format!("Remove coordinator {id} from the group?"), yes)
                        .await?;
                    client.remove_coordinator(id).await?
                }
                (Membership::List, _, _) => bail!("coordinators list takes no ID or URL"),
                (Membership::Add, _, _) => bail!("coordinators add needs ID and URL"),
                (Membership::Remove, _, _) => bail!("coordinators remove needs ID (and no URL)"),
            };
            if json {
                print_json(&group)?;
            } else {
                let rows = group.members.iter().map(|c| {
                    let role = if group.leader == Some(c.id) {
                        "leader"
                    } else if c.voter {
                        "voter"
                    } else {
                        "learner"
                    };
                    vec![c.id.to_string(), role.to_string(), c.url.clone()]
                });
                print!("{}", table(&["ID", "ROLE", "URL"], rows));
                println!("term: {}", group.term);
            }
        }
        Command::Openapi => print!("{}", sluice_cluster::routes::document()),
        Command::Tls(cmd) => tls::run(cmd)?,
        Command::Config(ConfigCommand::Defaults) => print!("{}", config::reference()),
        Command::Workers { client: c, json } => {
            let workers = client(&c)?.workers().await?;
            if json {
                print_json(&workers)?;
            } else {
                let rows = workers.iter().map(|w| {
                    vec![
                        w.id.clone(),
                        w.slots.to_string(),
                        w.used_slots.to_string(),
                        w.capacity.to_string(),
                        w.host.clone(),
                        if w.alive { "yes" } else { "no" }.to_string(),
                        w.since_heartbeat_ms.to_string(),
                    ]
                });
                print!(
                    "{}",
                    table(
                        &[
                            "ID",
                            "SLOTS",
                            "USED",
                            "CAPACITY",
                            "HOST",
                            "ALIVE",
                            "SINCE_HEARTBEAT_MS"
                        ],
                        rows
                    )
                );
            }
        }
    }
    Ok(())
}

/// The error and its causes, each once: the library's errors already
/// name their source in their message.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}

/// Prints `value` as pretty JSON (the `--json` output of the commands).
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Takes a savepoint (asking first if it stops the job); prints its location.
async fn savepoint(
    client: &Client,
    job_id: String,
    dir: String,
    stop: bool,
    yes: bool,
) -> anyhow::Result<()> {
    if stop {
        follow::confirm(format!("Stop {job_id} with a savepoint in {dir}?"), yes).await?;
    }
    let taken = client
        .savepoint(&job_id, &SavepointRequest { dir, stop })
        .await?;
    println!("{}", taken.location);
    Ok(())
}

/// Describes the job by running its binary in describe mode, then ships it.
async fn submit(args: &SubmitArgs, m: &ArgMatches, file: &FileConfig) -> anyhow::Result<String> {
    let client = client(&args.client, m, file)?;
    let parallelism = submit_settings(args, m, file)?.parallelism;
    if parallelism == Some(0) {
        bail!("--parallelism must be at least 1");
    }
    let binary = &args.binary;
    match tokio::fs::metadata(binary).await {
        Ok(m) if m.is_file() => {}
        Ok(_) => bail!("job binary {} is not a file", binary.display()),
        Err(e) => bail!("job binary {} not found: {e}", binary.display()),
    }
    // Run by absolute path: a bare name would be looked up on PATH.
    let binary = tokio::fs::canonicalize(binary)
        .await
        .with_context(|| format!("resolving {}", binary.display()))?;
    let description = describe(&binary, &args.args, parallelism, None).await?;
    if let Some(range) = args.autoscale {
        autoscalable(&binary, &args.args, &description, range).await?;
    }
    let shipped = ship::prepare(&binary, !args.no_strip, &std::env::temp_dir())
        .await
        .context("preparing the job binary")?;
    tracing::info!(binary = %binary.display(), bytes = shipped.original_bytes,
        shipped = shipped.bytes, debug = ?shipped.debug, "shipping the job binary");
    let workdir = std::env::current_dir()
        .context("the current directory")?
        .to_string_lossy()
        .into_owned();
    let submitted = client
        .submit(Submission {
            binary: shipped.path.clone(),
            args: args.args.clone(),
            parallelism,
            workdir: Some(workdir),
            description,
            autoscale: args.autoscale,
        })
        .await
        .context("submission failed")?;
    Ok(submitted.job_id)
}

/// The coordinator plans an autoscaled job at another parallelism by
/// setting every vertex's; a vertex the job gives a parallelism of its
/// own that happens to equal the job's would be rescaled wrongly. So the
/// binary describes the job at another parallelism of the range too, and
/// it must be the plan the coordinator would derive.
async fn autoscalable(
    binary: &Path,
    args: &[String],
    description: &JobDescription,
    range: sluice_protocol::api::AutoscaleRange,
) -> anyhow::Result<()> {
    let Some(other) = [range.max, range.min]
        .into_iter()
        .find(|p| *p != description.parallelism)
    else {
        return Ok(());
    };
    let derived = coordinator::autoscaler::plan_at(description, other);
    let described = describe(binary, args, Some(other), None).await?;
    if derived.as_ref() != Some(&described) {
        bail!(
            "--autoscale {range}: the job's plan at parallelism {other} is not its plan at {} with \
             every vertex at {other} (a vertex has a parallelism of its own); the autoscaler only \
             rescales jobs whose vertices all follow the job's parallelism",
            description.parallelism
        );
    }
    Ok(())
}

/// Describes the job's binary (`local` if given and it is the job's,
/// else fetched from the coordinator) at `parallelism`, then asks the
/// coordinator to rescale to that plan.
async fn rescale(
    client: &Client,
    job_id: &str,
    parallelism: usize,
    local: Option<&Path>,
) -> anyhow::Result<Rescaled> {
    if parallelism == 0 {
        bail!("--parallelism must be at least 1");
    }
    let status = client.status(job_id).await?;
    let binary = match local {
        Some(path) => {
            let p = path.to_path_buf();
            let mut sha = tokio::task::spawn_blocking(move || sha256_of_file(&p))
                .await
                .context("hashing the binary")??;
            if sha != status.artifact {
                // Submitted stripped: compare what it ships as.
                let shipped = ship::prepare(path, true, &std::env::temp_dir()).await?;
                let p = shipped.path.clone();
                sha = tokio::task::spawn_blocking(move || sha256_of_file(&p))
                    .await
                    .context("hashing the binary")??;
            }
            if sha != status.artifact {
                bail!(
                    "{} is not job {job_id}'s binary: its SHA-256 (stripped as submit ships it) \
                     is {sha}, the job's {}",
                    path.display(),
                    status.artifact
                );
            }
            // Run by absolute path: a bare name would be looked up on PATH.
            tokio::fs::canonicalize(path)
                .await
                .with_context(|| format!("resolving {}", path.display()))?
        }
        None => {
            // This user's own cache, never a shared directory: whatever is
            // there is verified against the job's SHA-256 before it runs.
            let cache = tokio::task::spawn_blocking(ArtifactCache::for_user)
                .await
                .context("opening the artifact cache")??;
            cache
                .get(client, &status.artifact)
                .await
                .context("fetching the job's binary")?
        }
    };
    let workdir = status.workdir.as_deref().map(Path::new);
    let description = describe(&binary, &status.args, Some(parallelism), workdir).await?;
    client
        .rescale(
            job_id,
            &RescaleRequest {
                parallelism,
                description,
            },
        )
        .await
        .context("rescale failed")
}

/// Runs `binary` in describe mode (in `workdir` if given and present, so
/// relative paths in `args` mean what they meant at submission).
async fn describe(
    binary: &Path,
    args: &[String],
    parallelism: Option<usize>,
    workdir: Option<&Path>,
) -> anyhow::Result<JobDescription> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let out = std::env::temp_dir().join(format!(
        "sluice-describe-{}-{nanos}.json",
        std::process::id()
    ));
    let _cleanup = RemoveOnDrop(out.clone());
    let mut command = tokio::process::Command::new(binary);
    command
        .args(args)
        .env("SLUICE_DESCRIBE", &out)
        .env_remove("SLUICE_EXECUTOR")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(p) = parallelism {
        command.env("SLUICE_PARALLELISM", p.to_string());
    }
    if let Some(dir) = workdir.filter(|d| d.is_dir()) {
        command.current_dir(dir);
    }
    let output = command
        .output()
        .await
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "describing the job failed: {} exited with {}{}",
            binary.display(),
            output.status,
            if stderr.trim().is_empty() {
                String::new()
            } else {
                format!(":\n{}", stderr.trim_end())
            }
        );
    }
    let text = tokio::fs::read(&out).await.map_err(|e| {
        anyhow!(
            "{} exited without writing a job description ({e}); is it a Sluice job binary?",
            binary.display()
        )
    })?;
    // The version first: a binary of another release is named as such,
    // never half-understood.
    sluice_protocol::version::decode("the job description", &text).with_context(|| {
        format!(
            "{} is not a job binary this sluice can run",
            binary.display()
        )
    })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::from(sluice_engine::Error::io("reading t", io)).context("startup");
        assert_eq!(
            error_text(&e),
            "startup: I/O error: reading t: No such file"
        );
    }
}
