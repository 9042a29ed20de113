//! The `sluice` command: the coordinator and worker services, and the
//! client commands (submit, jobs, status, cancel, savepoint, checkpoints,
//! workers) over the coordinator's REST API.
//!
//! Settings come from flags, then environment variables (clap's `env`),
//! then the TOML file named by `--config` / `SLUICE_CONFIG` (sections
//! `[coordinator]`, `[worker]`, `[client]`, keys = flag names with
//! underscores), then built-in defaults (`sluice/config.rs`). Output meant
//! for scripts goes to stdout; logs go to stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use sluice_cluster::artifact::{sha256_of_file, ArtifactCache};
use sluice_cluster::client::{Client, Submission};
use sluice_cluster::coordinator;
use sluice_cluster::ship;
use sluice_cluster::worker;
use sluice_protocol::api::{JobDescription, JobStatus, RescaleRequest, Rescaled, SavepointRequest};

mod config;

use config::{
    client, coordinator_config, load_file, worker_config, ClientArgs, ClientFile, CoordinatorArgs,
    SubmitArgs, WorkerArgs,
};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: coordinator, worker and job client"
)]
struct Cli {
    /// TOML file with [coordinator], [worker] and [client] sections.
    #[arg(long, global = true, env = "SLUICE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the coordinator: REST API, scheduler, job manager.
    Coordinator(CoordinatorArgs),
    /// Runs a worker: registers, heartbeats, runs executors.
    Worker(WorkerArgs),
    /// Submits a job binary; prints the job id.
    Submit(SubmitArgs),
    /// Lists jobs.
    Jobs {
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows a job's state (first line) and details.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        job_id: String,
        /// Print the JobStatus JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancels a job.
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        job_id: String,
    },
    /// Takes a savepoint; prints its location.
    Savepoint {
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        job_id: String,
        /// Where the savepoint goes (directory or s3:// URL).
        #[arg(long, env = "SLUICE_SAVEPOINT_DIR", value_name = "DIR")]
        dir: String,
        /// Stop the job once the savepoint is taken.
        #[arg(long)]
        stop: bool,
    },
    /// Rescales a running job: stops it with a savepoint and runs it on
    /// from there at the new parallelism; prints the savepoint.
    Rescale {
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        job_id: String,
        /// The new parallelism.
        #[arg(long, short = 'p', value_name = "P")]
        parallelism: usize,
        /// The job's binary here (checked against the job's SHA-256), instead of fetching it from the coordinator.
        #[arg(long, value_name = "JOB_BINARY")]
        binary: Option<PathBuf>,
    },
    /// Shows a job's checkpoints.
    Checkpoints {
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        job_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows the newest rows each sink of a job received.
    Results {
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        job_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows the cluster: live workers, slots, jobs per state.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists workers.
    Workers {
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let service = matches!(cli.command, Command::Coordinator(_) | Command::Worker(_));
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
    match runtime.block_on(run(cli)) {
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
    let default = if service { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = load_file(cli.config.as_deref())?;
    match cli.command {
        Command::Coordinator(args) => {
            let config = coordinator_config(&args, &file.coordinator)?;
            coordinator::serve(config).await?;
        }
        Command::Worker(args) => {
            let config = worker_config(&args, &file.worker)?;
            worker::run(config).await?;
        }
        Command::Submit(args) => {
            let job_id = submit(&args, &file.client).await?;
            println!("{job_id}");
        }
        Command::Jobs { client: c, json } => {
            let jobs = client(&c, &file.client)?.jobs().await?;
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
        } => {
            let status = client(&c, &file.client)?.status(&job_id).await?;
            if json {
                print_json(&status)?;
            } else {
                print!("{}", status_text(&status));
            }
        }
        Command::Cancel { client: c, job_id } => {
            let status = client(&c, &file.client)?.cancel(&job_id).await?;
            // Said on stdout, so a script can tell it happened.
            println!("{} {}", status.id, status.state.name());
        }
        Command::Savepoint {
            client: c,
            job_id,
            dir,
            stop,
        } => {
            let taken = client(&c, &file.client)?
                .savepoint(&job_id, &SavepointRequest { dir, stop })
                .await?;
            println!("{}", taken.location);
        }
        Command::Rescale {
            client: c,
            job_id,
            parallelism,
            binary,
        } => {
            let client = client(&c, &file.client)?;
            let rescaled = rescale(&client, &job_id, parallelism, binary.as_deref()).await?;
            println!("{}", rescaled.savepoint);
        }
        Command::Checkpoints {
            client: c,
            job_id,
            json,
        } => {
            let cps = client(&c, &file.client)?.checkpoints(&job_id).await?;
            if json {
                print_json(&cps)?;
            } else {
                println!("dir: {}", cps.dir.as_deref().unwrap_or("-"));
                println!("latest: {}", opt(cps.latest));
                println!(
                    "completed: {}  aborted: {}  restarts: {}  restored from: {}",
                    cps.stats.completed,
                    cps.stats.aborted,
                    cps.stats.restarts,
                    opt(cps.stats.restored_from)
                );
                let rows = cps.stats.recent.iter().map(|r| {
                    vec![
                        r.id.to_string(),
                        if r.savepoint {
                            "savepoint"
                        } else {
                            "checkpoint"
                        }
                        .to_string(),
                        r.figures.duration_ms.to_string(),
                        r.figures.alignment_ms.to_string(),
                        r.figures.bytes.to_string(),
                    ]
                });
                print!(
                    "{}",
                    table(
                        &["ID", "KIND", "DURATION_MS", "ALIGNMENT_MS", "BYTES"],
                        rows
                    )
                );
            }
        }
        Command::Results {
            client: c,
            job_id,
            json,
        } => {
            let results = client(&c, &file.client)?.results(&job_id).await?;
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
            let info = client(&c, &file.client)?.cluster().await?;
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
        Command::Workers { client: c, json } => {
            let workers = client(&c, &file.client)?.workers().await?;
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

/// Describes the job by running its binary in describe mode, then ships it.
async fn submit(args: &SubmitArgs, file: &ClientFile) -> anyhow::Result<String> {
    let client = client(&args.client, file)?;
    let parallelism = args.parallelism.or(file.parallelism);
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
        })
        .await
        .context("submission failed")?;
    Ok(submitted.job_id)
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

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn jobs_table(jobs: &[JobStatus]) -> String {
    let rows = jobs.iter().map(|j| {
        vec![
            j.id.clone(),
            j.name.clone(),
            j.state.name().to_string(),
            j.attempt.to_string(),
        ]
    });
    table(&["ID", "NAME", "STATE", "ATTEMPT"], rows)
}

fn status_text(s: &JobStatus) -> String {
    let mut out = format!("{}\n", s.state.name());
    out.push_str(&format!("id: {}\n", s.id));
    out.push_str(&format!("name: {}\n", s.name));
    out.push_str(&format!(
        "attempt: {}  restarts: {}\n",
        s.attempt, s.restarts
    ));
    out.push_str(&format!(
        "latest checkpoint: {}\n",
        opt(s.latest_checkpoint)
    ));
    out.push_str(&format!("artifact: {}\n", s.artifact));
    out.push_str(&format!("args: {}\n", s.args.join(" ")));
    if let Some(e) = &s.error {
        out.push_str(&format!("error: {e}\n"));
    }
    if !s.placement.is_empty() {
        let mut workers: Vec<&str> = s.placement.iter().map(|p| p.worker.as_str()).collect();
        workers.sort_unstable();
        workers.dedup();
        out.push_str(&format!(
            "placement: {} subtasks on {} workers ({})\n",
            s.placement.len(),
            workers.len(),
            workers.join(", ")
        ));
    }
    out
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows)
        .collect();
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let last = row.len().saturating_sub(1);
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::api::JobState;

    #[test]
    fn causes_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::from(sluice_engine::Error::io("reading t", io)).context("startup");
        assert_eq!(
            error_text(&e),
            "startup: I/O error: reading t: No such file"
        );
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATE"],
            vec![vec!["j-1".into(), "RUNNING".into()]].into_iter(),
        );
        assert_eq!(t, "ID   STATE\nj-1  RUNNING\n");
        assert_eq!(JobState::Canceled.name(), "CANCELED");
    }
}
