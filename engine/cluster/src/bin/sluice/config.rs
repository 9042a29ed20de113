//! The `sluice` command's settings, each declared once: a field of a
//! section struct that derives clap's `Args` (its flag, its `SLUICE_*`
//! variable, its default, its help) and serde (its key in the `--config`
//! TOML file: the field name, in the section `[coordinator]`, `[worker]`
//! or `[client]`). [`layered`] merges the file under what clap parsed,
//! for any section: flag > environment > file > default. The sections are
//! then turned into the library's `CoordinatorConfig`, `WorkerConfig` and
//! `Client`; [`reference`] lists every setting (`sluice config defaults`,
//! `docs/config.md`).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, ValueEnum};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sluice_cluster::client::Client;
use sluice_cluster::client::ClientSecurity;
use sluice_cluster::coordinator::autoscaler::AutoscaleSettings;
use sluice_cluster::coordinator::raft::RaftSettings;
use sluice_cluster::coordinator::{ClusterCa, CoordinatorConfig, Scheduling};
use sluice_cluster::worker::WorkerConfig;
use sluice_web::{TlsFiles, Token};

/// The library's defaults, which the settings' defaults are taken from.
fn coordinator_defaults() -> CoordinatorConfig {
    CoordinatorConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), "")
}

fn worker_defaults() -> WorkerConfig {
    WorkerConfig::new("", 1, "")
}

/// A duration as people write it (`500ms`, `3s`, `10m`; humantime), in
/// flags, variables and the file alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub(crate) Duration);

impl FromStr for HumanDuration {
    type Err = humantime::DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "{e} (a duration such as \"500ms\", \"3s\", \"10m\")"
            ))
        })
    }
}

/// A size in bytes as people write it: digits, optionally followed by K,
/// M, G or T (powers of 1024; a trailing `B` or `iB` is allowed: `512M`,
/// `2GiB`), in flags, variables and the file alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub(crate) u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_bytes(s).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size in bytes (e.g. 1048576, 512M, 2G)"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `[coordinator]`: the `sluice coordinator` service.
#[derive(Debug, Args, Serialize, Deserialize)]
pub(crate) struct CoordinatorArgs {
    /// REST API address (required).
    #[arg(long, env = "SLUICE_LISTEN", value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) listen: Option<SocketAddr>,
    /// Durable metadata and artifacts (required).
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address executors' control connections dial [default: the API's host, any port].
    #[arg(long, env = "SLUICE_CONTROL_LISTEN", value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) control_listen: Option<SocketAddr>,
    /// A worker silent this long is dead.
    #[arg(long, env = "SLUICE_HEARTBEAT_TIMEOUT", value_name = "DURATION",
          default_value_t = HumanDuration(coordinator_defaults().heartbeat_timeout))]
    pub(crate) heartbeat_timeout: HumanDuration,
    /// How often workers heartbeat.
    #[arg(long, env = "SLUICE_HEARTBEAT_INTERVAL", value_name = "DURATION",
          default_value_t = HumanDuration(coordinator_defaults().heartbeat_interval))]
    pub(crate) heartbeat_interval: HumanDuration,
    /// How long running executors wait for a new leader when theirs is gone, and how long a new leader waits for them to rejoin before it restarts their job (0s: a new leader restarts every running job).
    #[arg(long, env = "SLUICE_REJOIN_GRACE", value_name = "DURATION",
          default_value_t = HumanDuration(coordinator_defaults().rejoin_grace))]
    pub(crate) rejoin_grace: HumanDuration,
    /// Placement of subtasks on worker slots (each job needs as many slots as its widest vertex).
    #[arg(long, env = "SLUICE_SCHEDULING", value_enum,
          default_value_t = SchedulingArg::from(coordinator_defaults().scheduling))]
    pub(crate) scheduling: SchedulingArg,
    /// A dead worker is listed this long after its last heartbeat, then forgotten.
    #[arg(long, env = "SLUICE_DEAD_WORKER_RETENTION", value_name = "DURATION",
          default_value_t = HumanDuration(coordinator_defaults().dead_worker_retention))]
    pub(crate) dead_worker_retention: HumanDuration,
    /// Ended jobs kept; older ones are forgotten, records included (at least 1).
    #[arg(long, env = "SLUICE_RETAINED_JOBS", value_name = "N",
          default_value_t = coordinator_defaults().retained_jobs)]
    pub(crate) retained_jobs: usize,
    /// File holding the operator's bearer token, which API calls must carry and which alone may change anything; mode 600 [default: SLUICE_TOKEN, else none].
    #[arg(long, env = "SLUICE_TOKEN_FILE", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token_file: Option<PathBuf>,
    /// File holding a read-only bearer token (GET routes: status, metrics, results, UI); mode 600; needs --token-file.
    #[arg(long, env = "SLUICE_READ_TOKEN_FILE", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) read_token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key).
    #[arg(long, env = "SLUICE_TLS_CERT", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "SLUICE_TLS_KEY", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls_key: Option<PathBuf>,
    /// The cluster CA's certificate (PEM, `sluice tls init`): executors' control connections and the exchange are mutual TLS against it, and a REST client certificate it did not sign is refused.
    #[arg(long, env = "SLUICE_TLS_CA", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// The cluster CA's private key (PEM, mode 600): signs each attempt's own certificate.
    #[arg(long, env = "SLUICE_TLS_CA_KEY", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls_ca_key: Option<PathBuf>,
    /// Run control connections and the exchange without TLS (attempt secrets and job data in clear), instead of the four --tls-* files.
    #[arg(long, env = "SLUICE_INSECURE_PLAINTEXT")]
    #[serde(default)]
    pub(crate) insecure_plaintext: bool,
    /// URL clients reach this coordinator at, named by the other members of its Raft group while it leads [default: its --listen address].
    #[arg(long, env = "SLUICE_ADVERTISE", value_name = "URL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) advertise: Option<String>,
    /// Largest job binary accepted, in bytes (suffixes K, M, G, T: powers of 1024).
    #[arg(long, env = "SLUICE_MAX_ARTIFACT_BYTES", value_name = "BYTES",
          default_value_t = ByteSize(coordinator_defaults().artifact_limits.max_artifact_bytes))]
    pub(crate) max_artifact_bytes: ByteSize,
    /// Largest total of stored job binaries and uploads in progress, in bytes (suffixes as above).
    #[arg(long, env = "SLUICE_MAX_ARTIFACT_STORE_BYTES", value_name = "BYTES",
          default_value_t = ByteSize(coordinator_defaults().artifact_limits.max_store_bytes))]
    pub(crate) max_artifact_store_bytes: ByteSize,
    /// This coordinator's id in its Raft group (a key of --peers; default: the only one, or 1 alone).
    #[arg(long, env = "SLUICE_NODE_ID", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) node_id: Option<u64>,
    /// The coordinators of a Raft group, this one included: ID=URL,... (e.g. 1=http://a:7070,2=http://b:7070,3=http://c:7070); each keeps its own --data-dir [default: none, a group of one: this coordinator alone].
    #[arg(long, env = "SLUICE_PEERS", value_name = "ID=URL,...")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) peers: Option<String>,
    /// A Raft follower that hears no leader for a random half to whole of this stands for election; voters refuse votes for this long after they heard one (a dead leader is replaced within one to two of it).
    #[arg(long, env = "SLUICE_ELECTION_TIMEOUT", value_name = "DURATION",
          default_value_t = HumanDuration(std::time::Duration::from_secs(1)))]
    pub(crate) election_timeout: HumanDuration,
    /// Start as a new member of a running Raft group: its empty log is not initialised with --peers; it waits until the group's leader adds it (sluice coordinators add ID URL).
    #[arg(long, env = "SLUICE_JOIN")]
    #[serde(default)]
    pub(crate) join: bool,
    /// The busy fraction the autoscaler sizes each vertex of a job submitted with --autoscale for (above 0, at most 1).
    #[arg(long, env = "SLUICE_AUTOSCALE_TARGET_UTILIZATION", value_name = "FRACTION",
          default_value_t = coordinator_defaults().autoscale.target_utilization)]
    pub(crate) autoscale_target_utilization: f64,
    /// The autoscaler averages busy time, rates and source backlog growth over this long.
    #[arg(long, env = "SLUICE_AUTOSCALE_METRIC_WINDOW", value_name = "DURATION",
          default_value_t = HumanDuration(coordinator_defaults().autoscale.metric_window))]
    pub(crate) autoscale_metric_window: HumanDuration,
    /// The autoscaler rescales only once its recommendation has pointed the same way this long.
    #[arg(long, env = "SLUICE_AUTOSCALE_STABILIZATION", value_name = "DURATION",
          default_value_t = HumanDuration(coordinator_defaults().autoscale.stabilization))]
    pub(crate) autoscale_stabilization: HumanDuration,
    /// The autoscaler decides nothing this long after a job's attempt started (a start, restart or rescale) or after its last decision.
    #[arg(long, env = "SLUICE_AUTOSCALE_COOLDOWN", value_name = "DURATION",
          default_value_t = HumanDuration(coordinator_defaults().autoscale.cooldown))]
    pub(crate) autoscale_cooldown: HumanDuration,
}

/// `[worker]`: the `sluice worker` service.
#[derive(Debug, Args, Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    /// Coordinator REST URL (http://host:port; several, comma-separated, for the coordinators of a Raft group) (required).
    #[arg(long, env = "SLUICE_COORDINATOR", value_name = "URL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) coordinator: Option<String>,
    /// Slots offered (required).
    #[arg(long, env = "SLUICE_SLOTS", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) slots: Option<usize>,
    /// Artifacts, executors' own directories and logs (required).
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Host (name or IP address, no port) executors bind for data exchange.
    #[arg(long, env = "SLUICE_EXCHANGE_HOST", value_name = "HOST",
          default_value_t = worker_defaults().listen_host)]
    pub(crate) exchange_host: String,
    /// Capacity (weight of the weighted scheduler).
    #[arg(long, env = "SLUICE_CAPACITY", value_name = "W",
          default_value_t = worker_defaults().capacity)]
    pub(crate) capacity: f64,
    /// Run executors as this user (name from the user database); the worker must run as root. Executors then cannot read the worker's token, logs or other files [default: the worker's own user].
    #[arg(long, env = "SLUICE_RUN_AS", value_name = "USER")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) run_as: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) security: SecurityArgs,
}

/// `[client]`: every command that calls the coordinator's API.
#[derive(Debug, Args, Serialize, Deserialize)]
pub(crate) struct ClientArgs {
    /// Coordinator REST URL (http://host:port or https://host:port; several, comma-separated, for the coordinators of a Raft group) (required).
    #[arg(long, env = "SLUICE_COORDINATOR", value_name = "URL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) coordinator: Option<String>,
    /// How fresh reads must be from coordinators in a Raft group: linearizable (the leader confirms it leads first), leader (the leader's state), local (any coordinator's copy, perhaps stale) [default: leader].
    #[arg(long, env = "SLUICE_CONSISTENCY", value_name = "LEVEL", value_parser = ["linearizable", "leader", "local"])]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) consistency: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) security: SecurityArgs,
}

/// How a client of the API authenticates and what it trusts (`[worker]`
/// and `[client]`).
#[derive(Debug, Args, Serialize, Deserialize)]
pub(crate) struct SecurityArgs {
    /// File holding the coordinator's bearer token [default: SLUICE_TOKEN, else none].
    #[arg(long, env = "SLUICE_TOKEN_FILE", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token_file: Option<PathBuf>,
    /// PEM certificates to trust for an https:// coordinator, besides the system's.
    #[arg(long, env = "SLUICE_CA_CERT", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_cert: Option<PathBuf>,
}

/// `[client]`, for `sluice submit` only.
#[derive(Debug, Args, Serialize, Deserialize)]
pub(crate) struct SubmitSettings {
    /// Default parallelism of the job [default: the job's own].
    #[arg(long, env = "SLUICE_PARALLELISM", value_name = "P")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) parallelism: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    #[command(flatten)]
    pub(crate) settings: SubmitSettings,
    /// Wait until the job ends; print its final state; exit non-zero unless it FINISHED.
    #[arg(long)]
    pub(crate) wait: bool,
    /// Like --wait, printing a line at each change of state, attempt or checkpoint.
    #[arg(long, conflicts_with = "wait")]
    pub(crate) follow: bool,
    /// Let the coordinator's autoscaler choose the job's parallelism between MIN and MAX (e.g. 1..4) from its busy time, rates and source backlog; off by default. The job must checkpoint, start within the range and have no vertex of its own parallelism.
    #[arg(long, value_name = "MIN..MAX")]
    pub(crate) autoscale: Option<sluice_protocol::api::AutoscaleRange>,
    /// Ship the binary as it is, debug info included [default: an ELF binary is shipped stripped with objcopy, its debug info kept beside it as BINARY.debug].
    #[arg(long)]
    pub(crate) no_strip: bool,
    /// The job binary.
    #[arg(value_name = "JOB_BINARY")]
    pub(crate) binary: PathBuf,
    /// Arguments of the job binary (after `--`).
    #[arg(last = true, value_name = "JOB_ARGS")]
    pub(crate) args: Vec<String>,
}

/// `--scheduling`: each value's doc line is its help in `--help` and in
/// `docs/config.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SchedulingArg {
    /// most free slots first: jobs and their executors over as many workers as possible
    Spread,
    /// fill the first worker with room before the next: as few workers as possible
    Pack,
    /// slots in proportion to each worker's --capacity, counting those in use
    Weighted,
    /// each slot to the worker after the one the previous slot went to, across jobs, so successive jobs start on different workers
    RoundRobin,
    /// the smallest share of slots in use, then the least CPU its executors used over the last 5 s (measured from their reports)
    LeastLoaded,
}

impl From<SchedulingArg> for Scheduling {
    fn from(s: SchedulingArg) -> Self {
        match s {
            SchedulingArg::Spread => Scheduling::Spread,
            SchedulingArg::Pack => Scheduling::Pack,
            SchedulingArg::Weighted => Scheduling::Weighted,
            SchedulingArg::RoundRobin => Scheduling::RoundRobin,
            SchedulingArg::LeastLoaded => Scheduling::LeastLoaded,
        }
    }
}

impl From<Scheduling> for SchedulingArg {
    fn from(s: Scheduling) -> Self {
        match s {
            Scheduling::Spread => SchedulingArg::Spread,
            Scheduling::Pack => SchedulingArg::Pack,
            Scheduling::Weighted => SchedulingArg::Weighted,
            Scheduling::RoundRobin => SchedulingArg::RoundRobin,
            Scheduling::LeastLoaded => SchedulingArg::LeastLoaded,
        }
    }
}

/// The settings structs each section of the file holds.
fn section_settings(section: &str) -> Vec<clap::Command> {
    let empty = || clap::Command::new("settings");
    match section {
        "coordinator" => vec![CoordinatorArgs::augment_args(empty())],
        "worker" => vec![WorkerArgs::augment_args(empty())],
        "client" => vec![
            ClientArgs::augment_args(empty()),
            SubmitSettings::augment_args(empty()),
        ],
        _ => Vec::new(),
    }
}

/// The sections of the file, in order.
const SECTIONS: [&str; 3] = ["coordinator", "worker", "client"];

/// The `--config` file, as tables of keys; [`parse_file`] has checked that
/// every key is a setting of its section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(default)]
    pub(crate) coordinator: toml::Table,
    #[serde(default)]
    pub(crate) worker: toml::Table,
    #[serde(default)]
    pub(crate) client: toml::Table,
}

pub(crate) fn load_file(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_file(&text).with_context(|| format!("config file {}", path.display()))
}

fn parse_file(text: &str) -> anyhow::Result<FileConfig> {
    // toml's message names an unknown section and the expected ones.
    let file: FileConfig = toml::from_str(text).map_err(|e| anyhow!("{}", e.message().trim()))?;
    for (section, table) in [
        ("coordinator", &file.coordinator),
        ("worker", &file.worker),
        ("client", &file.client),
    ] {
        let known = setting_ids(section);
        if let Some(key) = table.keys().find(|k| !known.contains(k)) {
            bail!(
                "[{section}] {key}: no such setting (the settings of [{section}] are {})",
                known.join(", ")
            );
        }
    }
    Ok(file)
}

/// The keys of `section`'s settings (their clap ids: the field names).
fn setting_ids(section: &str) -> Vec<String> {
    section_settings(section)
        .iter()
        .flat_map(|c| c.get_arguments().map(|a| a.get_id().to_string()))
        .collect()
}

/// `parsed` (what clap took from flags, variables and defaults) with the
/// keys of `file` (the section's table) laid over every setting that no
/// flag or variable gave: flag > environment > file > default, for any
/// settings struct. A file value that does not fit its setting is an
/// error naming the section, the key and the value.
pub(crate) fn layered<S>(
    parsed: &S,
    matches: &ArgMatches,
    file: &toml::Table,
    section: &str,
) -> anyhow::Result<S>
where
    S: Args + Serialize + DeserializeOwned,
{
    let toml::Value::Table(mut table) =
        toml::Value::try_from(parsed).context("the parsed settings")?
    else {
        bail!("the {section} settings are not a table");
    };
    let ours = S::augment_args(clap::Command::new("settings"));
    for (key, value) in file {
        if ours.get_arguments().all(|a| a.get_id() != key.as_str()) {
            continue; // a setting of another struct of the section
        }
        let given = matches!(
            matches.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let mut trial = table.clone();
        trial.insert(key.clone(), value.clone());
        settings_from::<S>(&trial).map_err(|e| anyhow!("[{section}] {key} = {value}: {e}"))?;
        table = trial;
    }
    settings_from(&table)
}

fn settings_from<S: DeserializeOwned>(table: &toml::Table) -> anyhow::Result<S> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| anyhow!("{}", e.message().trim()))
}

/// `value`, or an error naming the three places setting `id` of `S` can
/// come from.
fn required<S: Args, T>(value: Option<T>, id: &str, section: &str) -> anyhow::Result<T> {
    value.ok_or_else(|| {
        let command = S::augment_args(clap::Command::new("settings"));
        let arg = command.get_arguments().find(|a| a.get_id() == id);
        let flag = arg
            .and_then(|a| a.get_long())
            .map_or(id.to_string(), |l| format!("--{l}"));
        let env = arg
            .and_then(|a| a.get_env())
            .map_or(String::new(), |e| format!("{}, or ", e.to_string_lossy()));
        anyhow!("missing {flag} (or {env}{id} in [{section}] of the --config file)")
    })
}

pub(crate) fn coordinator_config(
    args: &CoordinatorArgs,
    matches: &ArgMatches,
    file: &FileConfig,
) -> anyhow::Result<CoordinatorConfig> {
    let s = "coordinator";
    let a: CoordinatorArgs = layered(args, matches, &file.coordinator, s)?;
    let listen = required::<CoordinatorArgs, _>(a.listen, "listen", s)?;
    let data_dir = required::<CoordinatorArgs, _>(a.data_dir, "data_dir", s)?;
    let mut config = CoordinatorConfig::new(listen, data_dir);
    if let Some(c) = a.control_listen {
        config.control_listen = c;
    }
    config.heartbeat_timeout = a.heartbeat_timeout.0;
    config.rejoin_grace = a.rejoin_grace.0;
    config.heartbeat_interval = a.heartbeat_interval.0;
    config.scheduling = a.scheduling.into();
    config.dead_worker_retention = a.dead_worker_retention.0;
    if a.retained_jobs == 0 {
        bail!("--retained-jobs must be at least 1 (the newest ended job keeps the id counter)");
    }
    config.retained_jobs = a.retained_jobs;
    config.artifact_limits.max_artifact_bytes = a.max_artifact_bytes.0;
    config.artifact_limits.max_store_bytes = a.max_artifact_store_bytes.0;
    config.token = Token::from_file_or_env(a.token_file.as_deref())?;
    config.read_token = a
        .read_token_file
        .as_deref()
        .map(Token::from_file)
        .transpose()?;
    if config.read_token.is_some() && config.token.is_none() {
        bail!("--read-token-file needs --token-file (or SLUICE_TOKEN): without an operator token the API is open to everyone");
    }
    config.advertise = a.advertise;
    let target = a.autoscale_target_utilization;
    if !(target > 0.0 && target <= 1.0) {
        bail!("--autoscale-target-utilization must be above 0 and at most 1, not {target}");
    }
    if a.autoscale_metric_window.0.is_zero() {
        bail!("--autoscale-metric-window must be positive");
    }
    config.autoscale = AutoscaleSettings {
        target_utilization: target,
        metric_window: a.autoscale_metric_window.0,
        stabilization: a.autoscale_stabilization.0,
        cooldown: a.autoscale_cooldown.0,
    };
    if a.election_timeout.0.is_zero() {
        bail!("--election-timeout must be positive");
    }
    if a.join && a.node_id.is_none() {
        bail!("--join needs --node-id (the id the group's leader adds it under)");
    }
    config.raft = match (a.peers, a.node_id) {
        // A group of one, at the coordinator's advertised URL.
        (None, node_id) => Some(RaftSettings {
            node_id: node_id.unwrap_or(1),
            peers: Default::default(),
            election_timeout: a.election_timeout.0,
            snapshot_every: sluice_cluster::coordinator::raft::DEFAULT_SNAPSHOT_EVERY,
            join: a.join,
        }),
        (Some(peers), node_id) => {
            let peers =
                RaftSettings::parse_peers(&peers).map_err(|e| anyhow::anyhow!("--peers: {e}"))?;
            let node_id = match node_id {
                Some(n) => n,
                None if peers.len() == 1 => *peers.keys().next().expect("one peer"),
                None => {
                    bail!("--node-id is needed with several --peers (which of them is this one?)")
                }
            };
            if !peers.contains_key(&node_id) {
                bail!("--node-id {node_id} is not among --peers");
            }
            Some(RaftSettings {
                node_id,
                peers,
                election_timeout: a.election_timeout.0,
                snapshot_every: sluice_cluster::coordinator::raft::DEFAULT_SNAPSHOT_EVERY,
                join: a.join,
            })
        }
    };
    config.tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => bail!("--tls-cert needs --tls-key (its private key)"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert (the certificate it belongs to)"),
    };
    config.cluster_ca = match (a.tls_ca, a.tls_ca_key, a.insecure_plaintext) {
        (Some(_), _, true) | (_, Some(_), true) => {
            bail!("--insecure-plaintext and --tls-ca/--tls-ca-key contradict each other; give one")
        }
        (None, None, true) => None,
        (Some(cert), Some(key), false) => {
            if config.tls.is_none() {
                bail!("--tls-ca needs the coordinator's own certificate: --tls-cert and --tls-key");
            }
            Some(ClusterCa { cert, key })
        }
        (Some(_), None, false) => {
            bail!("--tls-ca needs --tls-ca-key (the CA's key signs each attempt's certificate)")
        }
        (None, Some(_), false) => bail!("--tls-ca-key needs --tls-ca (the CA certificate)"),
        (None, None, false) => None,
    };
    config.insecure_plaintext = a.insecure_plaintext;
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

/// Refuses a coordinator that would run control connections and the
/// exchange in plaintext without being told `--insecure-plaintext`.
pub(crate) fn require_tls(config: &CoordinatorConfig) -> anyhow::Result<()> {
    if config.cluster_ca.is_none() && !config.insecure_plaintext {
        bail!(
            "connections between the cluster's processes need TLS: give --tls-ca, --tls-ca-key, \
             --tls-cert and --tls-key (make them with `sluice tls init --dir DIR` and \
             `sluice tls node --ca-dir DIR --name coordinator --ip ...`), \
             or run with --insecure-plaintext"
        );
    }
    Ok(())
}

pub(crate) fn worker_config(
    args: &WorkerArgs,
    matches: &ArgMatches,
    file: &FileConfig,
) -> anyhow::Result<WorkerConfig> {
    let s = "worker";
    let a: WorkerArgs = layered(args, matches, &file.worker, s)?;
    let coordinator = required::<WorkerArgs, _>(a.coordinator, "coordinator", s)?;
    let slots = required::<WorkerArgs, _>(a.slots, "slots", s)?;
    let data_dir = required::<WorkerArgs, _>(a.data_dir, "data_dir", s)?;
    let mut config = WorkerConfig::new(coordinator, slots, data_dir);
    check_host(&a.exchange_host)?;
    config.listen_host = a.exchange_host;
    config.capacity = a.capacity;
    config.security = security(&a.security)?;
    config.run_as = a
        .run_as
        .as_deref()
        .map(sluice_cluster::confine::RunAs::lookup)
        .transpose()?;
    Ok(config)
}

/// Refuses an address with a port (or anything else that is not a host)
/// where a host is wanted.
fn check_host(host: &str) -> anyhow::Result<()> {
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let is_name = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if is_ip || is_name {
        Ok(())
    } else {
        bail!(
            "--exchange-host {host:?} is not a host name or IP address \
             (executors pick their own ports; give no port)"
        )
    }
}

pub(crate) fn client(
    args: &ClientArgs,
    matches: &ArgMatches,
    file: &FileConfig,
) -> anyhow::Result<Client> {
    let s = "client";
    let a: ClientArgs = layered(args, matches, &file.client, s)?;
    let url = required::<ClientArgs, _>(a.coordinator, "coordinator", s)?;
    let client = Client::secured(&url, &security(&a.security)?)?;
    Ok(match a.consistency.as_deref() {
        Some(level) => client.with_consistency(level)?,
        None => client,
    })
}

/// `sluice submit`'s own settings, layered like the client's.
pub(crate) fn submit_settings(
    args: &SubmitArgs,
    matches: &ArgMatches,
    file: &FileConfig,
) -> anyhow::Result<SubmitSettings> {
    layered(&args.settings, matches, &file.client, "client")
}

fn security(args: &SecurityArgs) -> anyhow::Result<ClientSecurity> {
    Ok(ClientSecurity {
        token: Token::from_file_or_env(args.token_file.as_deref())?,
        ca_cert: args.ca_cert.clone(),
    })
}

/// Every setting of every section with its flag, variable, default and
/// help, as Markdown: what `sluice config defaults` prints and
/// `docs/config.md` holds.
pub(crate) fn reference() -> String {
    let mut out = String::from(
        "# `sluice` settings\n\n\
         Generated by `sluice config defaults` (a test checks that this file is its output).\n\n\
         Every setting is read, in this order of precedence, from its flag, its environment\n\
         variable, its key in the section of the TOML file named by `--config` (or\n\
         `SLUICE_CONFIG`), and its default. A key the file's section does not know is an error.\n\
         Durations are written as `500ms`, `3s`, `10m`. A token can also come from\n\
         `SLUICE_TOKEN` itself.\n",
    );
    for section in SECTIONS {
        out.push_str(&format!(
            "\n## `[{section}]`\n\n| key | flag | environment | default | meaning |\n|---|---|---|---|---|\n"
        ));
        for command in section_settings(section) {
            for arg in command.get_arguments() {
                let default: Vec<String> = arg
                    .get_default_values()
                    .iter()
                    .map(|v| format!("`{}`", v.to_string_lossy()))
                    .collect();
                let mut help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                // Values that explain themselves (`--scheduling`'s) are
                // listed with their help.
                let values: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .filter_map(|v| Some(format!("`{}`: {}", v.get_name(), v.get_help()?)))
                    .collect();
                if !values.is_empty() {
                    help.push_str(&format!(". {}", values.join("; ")));
                }
                out.push_str(&format!(
                    "| `{}` | `--{}` | `{}` | {} | {} |\n",
                    arg.get_id(),
                    arg.get_long().unwrap_or_default(),
                    arg.get_env()
                        .map(|e| e.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    if default.is_empty() {
                        "–".to_string()
                    } else {
                        default.join(", ")
                    },
                    help.replace('|', "\\|"),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
