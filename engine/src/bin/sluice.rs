//! The `sluice` command: the coordinator and worker services, and the
//! client commands (submit, jobs, status, cancel, savepoint, checkpoints,
//! workers) over the coordinator's REST API.
//!
//! Settings come from flags, then environment variables (clap's `env`),
//! then the TOML file named by `--config` / `SLUICE_CONFIG` (sections
//! `[coordinator]`, `[worker]`, `[client]`, keys = flag names with
//! underscores), then built-in defaults. Output meant for scripts goes to
//! stdout; logs go to stderr.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use sluice_engine::cluster::api::{JobDescription, JobState, JobStatus, SavepointRequest};
use sluice_engine::cluster::client::{Client, Submission};
use sluice_engine::cluster::coordinator::{self, CoordinatorConfig, Scheduling};
use sluice_engine::cluster::worker::{self, WorkerConfig};

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

/// Optional everywhere: a value missing from the flags and the environment
/// may still come from the file, so clap must not fill in defaults.
#[derive(Debug, Args)]
struct CoordinatorArgs {
    /// REST API address.
    #[arg(long, env = "SLUICE_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Durable metadata and artifacts.
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address executors' control connections dial [default: the API's host, any port].
    #[arg(long, env = "SLUICE_CONTROL_LISTEN", value_name = "ADDR")]
    control_listen: Option<SocketAddr>,
    /// A worker silent this long is dead [default: 3s].
    #[arg(long, env = "SLUICE_HEARTBEAT_TIMEOUT", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Option<Duration>,
    /// How often workers heartbeat [default: 500ms].
    #[arg(long, env = "SLUICE_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Placement of subtasks on worker slots [default: spread].
    #[arg(long, env = "SLUICE_SCHEDULING")]
    scheduling: Option<SchedulingArg>,
    /// Restarts of a job before it fails for good [default: 20].
    #[arg(long, env = "SLUICE_MAX_RESTARTS", value_name = "N")]
    max_restarts: Option<u32>,
    /// Wait before restarting a failed attempt [default: 200ms].
    #[arg(long, env = "SLUICE_RESTART_DELAY", value_parser = humantime::parse_duration)]
    restart_delay: Option<Duration>,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// Coordinator REST URL (http://host:port).
    #[arg(long, env = "SLUICE_COORDINATOR", value_name = "URL")]
    coordinator: Option<String>,
    /// Slots offered.
    #[arg(long, env = "SLUICE_SLOTS", value_name = "N")]
    slots: Option<usize>,
    /// Artifacts, executor specs and logs.
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Host executors bind for data exchange [default: 127.0.0.1].
    #[arg(long, env = "SLUICE_LISTEN", value_name = "HOST")]
    listen: Option<String>,
    /// Capacity (weight of the weighted scheduler) [default: 1].
    #[arg(long, env = "SLUICE_CAPACITY", value_name = "W")]
    capacity: Option<f64>,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// Coordinator REST URL (http://host:port).
    #[arg(long, env = "SLUICE_COORDINATOR", value_name = "URL")]
    coordinator: Option<String>,
}

#[derive(Debug, Args)]
struct SubmitArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Default parallelism of the job.
    #[arg(long, env = "SLUICE_PARALLELISM", value_name = "P")]
    parallelism: Option<usize>,
    /// The job binary.
    #[arg(value_name = "JOB_BINARY")]
    binary: PathBuf,
    /// Arguments of the job binary (after `--`).
    #[arg(last = true, value_name = "JOB_ARGS")]
    args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SchedulingArg {
    Spread,
    Pack,
    Weighted,
}

impl From<SchedulingArg> for Scheduling {
    fn from(s: SchedulingArg) -> Self {
        match s {
            SchedulingArg::Spread => Scheduling::Spread,
            SchedulingArg::Pack => Scheduling::Pack,
            SchedulingArg::Weighted => Scheduling::Weighted,
        }
    }
}

/// The `--config` file. Durations and addresses are strings here so their
/// errors can name the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    coordinator: CoordinatorFile,
    #[serde(default)]
    worker: WorkerFile,
    #[serde(default)]
    client: ClientFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CoordinatorFile {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    control_listen: Option<String>,
    heartbeat_timeout: Option<String>,
    heartbeat_interval: Option<String>,
    scheduling: Option<String>,
    max_restarts: Option<u32>,
    restart_delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerFile {
    coordinator: Option<String>,
    slots: Option<usize>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    capacity: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    coordinator: Option<String>,
    parallelism: Option<usize>,
}

fn load_file(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_file(&text).with_context(|| format!("config file {}", path.display()))
}

fn parse_file(text: &str) -> anyhow::Result<FileConfig> {
    // toml's message names the unknown key and the expected ones.
    toml::from_str(text).map_err(|e| anyhow!("{}", e.message().trim()))
}

fn file_duration(
    section: &str,
    key: &str,
    value: Option<&String>,
) -> anyhow::Result<Option<Duration>> {
    value
        .map(|v| {
            humantime::parse_duration(v)
                .map_err(|e| anyhow!("[{section}] {key} = \"{v}\": {e} (e.g. \"500ms\", \"3s\")"))
        })
        .transpose()
}

fn file_addr(
    section: &str,
    key: &str,
    value: Option<&String>,
) -> anyhow::Result<Option<SocketAddr>> {
    value
        .map(|v| {
            v.parse::<SocketAddr>()
                .map_err(|e| anyhow!("[{section}] {key} = \"{v}\": {e} (e.g. \"127.0.0.1:8080\")"))
        })
        .transpose()
}

/// Names the three places a required setting can come from.
fn missing(flag: &str, env: &str, section: &str) -> anyhow::Error {
    let key = flag.trim_start_matches("--").replace('-', "_");
    anyhow!("missing {flag} (or {env}, or {key} in [{section}] of the --config file)")
}

fn coordinator_config(
    args: &CoordinatorArgs,
    file: &CoordinatorFile,
) -> anyhow::Result<CoordinatorConfig> {
    let s = "coordinator";
    let listen = match args.listen {
        Some(a) => a,
        None => file_addr(s, "listen", file.listen.as_ref())?
            .ok_or_else(|| missing("--listen", "SLUICE_LISTEN", s))?,
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .ok_or_else(|| missing("--data-dir", "SLUICE_DATA_DIR", s))?;
    let mut config = CoordinatorConfig::new(listen, data_dir);
    if let Some(a) = args.control_listen.or(file_addr(
        s,
        "control_listen",
        file.control_listen.as_ref(),
    )?) {
        config.control_listen = a;
    }
    if let Some(d) = args.heartbeat_timeout.or(file_duration(
        s,
        "heartbeat_timeout",
        file.heartbeat_timeout.as_ref(),
    )?) {
        config.heartbeat_timeout = d;
    }
    if let Some(d) = args.heartbeat_interval.or(file_duration(
        s,
        "heartbeat_interval",
        file.heartbeat_interval.as_ref(),
    )?) {
        config.heartbeat_interval = d;
    }
    let file_scheduling = file
        .scheduling
        .as_ref()
        .map(|v| {
            SchedulingArg::from_str(v, true).map_err(|_| {
                anyhow!("[{s}] scheduling = \"{v}\": expected spread, pack or weighted")
            })
        })
        .transpose()?;
    if let Some(sch) = args.scheduling.or(file_scheduling) {
        config.scheduling = sch.into();
    }
    if let Some(n) = args.max_restarts.or(file.max_restarts) {
        config.max_restarts = n;
    }
    if let Some(d) = args.restart_delay.or(file_duration(
        s,
        "restart_delay",
        file.restart_delay.as_ref(),
    )?) {
        config.restart_delay = d;
    }
    if config.heartbeat_interval.is_zero() || config.heartbeat_interval >= config.heartbeat_timeout
    {
        bail!(
            "the heartbeat interval ({:?}) must be positive and shorter than the heartbeat timeout ({:?})",
            config.heartbeat_interval,
            config.heartbeat_timeout
        );
    }
    Ok(config)
}

fn worker_config(args: &WorkerArgs, file: &WorkerFile) -> anyhow::Result<WorkerConfig> {
    let s = "worker";
    let coordinator = args
        .coordinator
        .clone()
        .or_else(|| file.coordinator.clone())
        .ok_or_else(|| missing("--coordinator", "SLUICE_COORDINATOR", s))?;
    let slots = args
        .slots
        .or(file.slots)
        .ok_or_else(|| missing("--slots", "SLUICE_SLOTS", s))?;
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .ok_or_else(|| missing("--data-dir", "SLUICE_DATA_DIR", s))?;
    let mut config = WorkerConfig::new(coordinator, slots, data_dir);
    if let Some(host) = args.listen.clone().or_else(|| file.listen.clone()) {
        config.listen_host = host;
    }
    if let Some(w) = args.capacity.or(file.capacity) {
        config.capacity = w;
    }
    Ok(config)
}

fn client(args: &ClientArgs, file: &ClientFile) -> anyhow::Result<Client> {
    let url = args
        .coordinator
        .clone()
        .or_else(|| file.coordinator.clone())
        .ok_or_else(|| missing("--coordinator", "SLUICE_COORDINATOR", "client"))?;
    Ok(Client::new(&url)?)
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
            eprintln!("sluice: error: {e:#}");
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
                println!("{}", serde_json::to_string_pretty(&jobs)?);
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
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status_text(&status));
            }
        }
        Command::Cancel { client: c, job_id } => {
            client(&c, &file.client)?.cancel(&job_id).await?;
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
        Command::Checkpoints {
            client: c,
            job_id,
            json,
        } => {
            let cps = client(&c, &file.client)?.checkpoints(&job_id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&cps)?);
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
        Command::Cluster { client: c, json } => {
            let info = client(&c, &file.client)?.cluster().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("workers alive: {}", info.workers_alive);
                println!("slots: {} used of {}", info.used_slots, info.slots);
                let jobs: Vec<String> = info
                    .jobs
                    .iter()
                    .map(|(state, n)| format!("{} {n}", state_name(*state)))
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
                println!("{}", serde_json::to_string_pretty(&workers)?);
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
    let description = describe(&binary, &args.args, parallelism).await?;
    let bytes = tokio::fs::read(&binary)
        .await
        .with_context(|| format!("reading {}", binary.display()))?;
    let workdir = std::env::current_dir()
        .context("the current directory")?
        .to_string_lossy()
        .into_owned();
    let submitted = client
        .submit(Submission {
            binary: bytes,
            args: args.args.clone(),
            parallelism,
            workdir: Some(workdir),
            description,
        })
        .await
        .context("submission failed")?;
    Ok(submitted.job_id)
}

async fn describe(
    binary: &Path,
    args: &[String],
    parallelism: Option<usize>,
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
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} wrote an unreadable job description (built with another Sluice version?)",
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

fn state_name(state: JobState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{state:?}"))
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn jobs_table(jobs: &[JobStatus]) -> String {
    let rows = jobs.iter().map(|j| {
        vec![
            j.id.clone(),
            j.name.clone(),
            state_name(j.state),
            j.attempt.to_string(),
        ]
    });
    table(&["ID", "NAME", "STATE", "ATTEMPT"], rows)
}

fn status_text(s: &JobStatus) -> String {
    let mut out = format!("{}\n", state_name(s.state));
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
    use std::sync::Mutex;

    use super::*;

    /// clap reads the real environment: tests that set variables take turns.
    static ENV: Mutex<()> = Mutex::new(());

    fn worker_from(
        argv: &[&str],
        env: &[(&str, &str)],
        toml: &str,
    ) -> anyhow::Result<WorkerConfig> {
        let _guard = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let vars = [
            "SLUICE_COORDINATOR",
            "SLUICE_SLOTS",
            "SLUICE_DATA_DIR",
            "SLUICE_LISTEN",
            "SLUICE_CAPACITY",
        ];
        for v in vars {
            std::env::remove_var(v);
        }
        for (k, v) in env {
            std::env::set_var(k, v);
        }
        let parsed = Cli::try_parse_from(std::iter::once("sluice").chain(argv.iter().copied()));
        for v in vars {
            std::env::remove_var(v);
        }
        let Command::Worker(args) = parsed?.command else {
            panic!("not a worker command");
        };
        worker_config(&args, &parse_file(toml)?.worker)
    }

    const FILE: &str = r#"
        [worker]
        coordinator = "http://file:1"
        slots = 2
        data_dir = "/file"
        capacity = 0.5
    "#;

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let c = worker_from(&["worker"], &[], FILE).expect("file only");
        assert_eq!((c.slots, c.coordinator.as_str()), (2, "http://file:1"));
        assert_eq!(c.capacity, 0.5);
        assert_eq!(c.listen_host, "127.0.0.1", "default");

        let env = [("SLUICE_SLOTS", "3"), ("SLUICE_LISTEN", "10.0.0.1")];
        let c = worker_from(&["worker"], &env, FILE).expect("env over file");
        assert_eq!(c.slots, 3);
        assert_eq!(c.listen_host, "10.0.0.1");
        assert_eq!(c.data_dir, PathBuf::from("/file"));

        let c = worker_from(&["worker", "--slots", "4"], &env, FILE).expect("flag over env");
        assert_eq!(c.slots, 4);
        assert_eq!(c.listen_host, "10.0.0.1");
    }

    #[test]
    fn missing_required_setting_names_all_sources() {
        let err = worker_from(&["worker", "--slots", "1"], &[], "").expect_err("no coordinator");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("--coordinator") && msg.contains("SLUICE_COORDINATOR"),
            "{msg}"
        );
        assert!(msg.contains("[worker]"), "{msg}");
    }

    #[test]
    fn unknown_toml_key_is_named() {
        let err = parse_file("[worker]\nslot = 2\n").expect_err("unknown key");
        assert!(format!("{err:#}").contains("slot"), "{err:#}");
        let err = parse_file("[workers]\n").expect_err("unknown section");
        assert!(format!("{err:#}").contains("workers"), "{err:#}");
    }

    #[test]
    fn coordinator_durations_from_file_and_flags() {
        let file = parse_file(
            r#"
            [coordinator]
            listen = "127.0.0.1:9000"
            data_dir = "/meta"
            heartbeat_timeout = "2s"
            scheduling = "pack"
            "#,
        )
        .expect("valid file");
        let cli = {
            let _guard = ENV.lock().unwrap_or_else(|p| p.into_inner());
            Cli::try_parse_from(["sluice", "coordinator", "--heartbeat-interval", "250ms"])
                .expect("valid flags")
        };
        let Command::Coordinator(args) = cli.command else {
            panic!("not a coordinator command");
        };
        let c = coordinator_config(&args, &file.coordinator).expect("valid config");
        assert_eq!(c.listen, "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(2));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.scheduling, Scheduling::Pack);
        assert_eq!(c.max_restarts, 20, "default");

        let bad = parse_file("[coordinator]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\nheartbeat_timeout = \"soon\"\n").expect("parses");
        let err = coordinator_config(&args, &bad.coordinator).expect_err("bad duration");
        assert!(format!("{err:#}").contains("heartbeat_timeout"), "{err:#}");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATE"],
            vec![vec!["j-1".into(), "RUNNING".into()]].into_iter(),
        );
        assert_eq!(t, "ID   STATE\nj-1  RUNNING\n");
        assert_eq!(state_name(JobState::Canceled), "CANCELED");
    }
}
