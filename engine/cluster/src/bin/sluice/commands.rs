//! The command line: the `sluice` command and every subcommand with its
//! flags and help, as clap declares them (what each does is in `main`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{ClientArgs, CoordinatorArgs, HumanDuration, SubmitArgs, WorkerArgs};
use crate::tls;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: coordinator, worker and job client"
)]
pub(crate) struct Cli {
    /// TOML file with [coordinator], [worker] and [client] sections.
    #[arg(long, global = true, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Runs the coordinator: REST API, scheduler, job manager.
    Coordinator(Box<CoordinatorArgs>),
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
    /// Shows a job's state (first line), details and operators.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        job_id: String,
        /// Print the JobStatus JSON.
        #[arg(long)]
        json: bool,
        /// Show it again whenever it changes, until the job ends; exits non-zero unless it FINISHED.
        #[arg(long)]
        watch: bool,
        /// How often --watch asks.
        #[arg(long, value_name = "DURATION", default_value = "1s")]
        interval: HumanDuration,
    },
    /// Cancels a job.
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        job_id: String,
        /// Do not ask for confirmation (asked only when stdin is a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Takes a savepoint and stops the job (savepoint --stop); prints the savepoint's location.
    Stop {
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        job_id: String,
        /// Where the savepoint goes (directory or s3:// URL).
        #[arg(long, env = "SLUICE_SAVEPOINT_DIR", value_name = "DIR")]
        dir: String,
        /// Do not ask for confirmation (asked only when stdin is a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
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
        /// Do not ask for confirmation of --stop (asked only when stdin is a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
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
        /// Do not ask for confirmation (asked only when stdin is a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Shows a job's checkpoints, newest first.
    Checkpoints {
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        job_id: String,
        /// Print JSON (every checkpoint the coordinator keeps).
        #[arg(long)]
        json: bool,
        /// Show at most this many.
        #[arg(long, value_name = "N", default_value_t = 10)]
        limit: usize,
    },
    /// Shows what a job's executors wrote to their stdout and stderr,
    /// each line after its attempt and executor (`a2/e0 ...`).
    ///
    /// Workers forward their executors' new lines with every heartbeat;
    /// the coordinator keeps a job's newest 5000 lines (2 MiB) for as long
    /// as it keeps the job. Without --since or --tail, every line it kept.
    Logs {
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        job_id: String,
        /// Keep printing new lines as they arrive until the job has ended and its last lines are in, then exit 0 (Ctrl-C stops sooner).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Start at line SEQ (the `seq` of --json output; a later run can go on from one past the last it printed).
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// Only the last N lines (then, with --follow, the new ones).
        #[arg(long, short = 'n', value_name = "N")]
        tail: Option<usize>,
        /// Print each line as a JSON object (seq, time_ms, attempt, executor, worker, text), one per line.
        #[arg(long)]
        json: bool,
        /// How often --follow asks.
        #[arg(long, value_name = "DURATION", default_value = "1s")]
        interval: HumanDuration,
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
    /// The coordinators' Raft group: lists it (list), adds a coordinator started with --join (add ID URL), or removes one (remove ID).
    Coordinators {
        #[command(flatten)]
        client: ClientArgs,
        /// What to do.
        #[arg(value_enum, default_value = "list")]
        action: Membership,
        /// The node id to add or remove.
        id: Option<u64>,
        /// The API URL of the coordinator to add.
        url: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Do not ask for confirmation of add or remove (asked only when stdin is a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Prints the REST API's OpenAPI document (JSON), as the coordinator
    /// serves it at /api/v1/openapi.json.
    Openapi,
    /// About the settings themselves.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Makes the cluster's TLS certificates: a CA, then one certificate per
    /// coordinator (and per worker, if you like) signed by it.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
}

/// What `sluice coordinators` does.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Membership {
    /// Show the group.
    List,
    /// Add coordinator ID at URL.
    Add,
    /// Remove coordinator ID.
    Remove,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Prints every setting with its flag, environment variable, default
    /// and meaning (Markdown; docs/config.md).
    Defaults,
}
