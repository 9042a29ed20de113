//! The `sluice` command's settings: flags and environment variables
//! (clap), the `--config` TOML file, and their merge with precedence
//! flag > environment > file > default. Turns them into the library's
//! `CoordinatorConfig`, `WorkerConfig` and `Client`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use sluice_cluster::client::Client;
use sluice_cluster::client::ClientSecurity;
use sluice_cluster::coordinator::{CoordinatorConfig, Scheduling};
use sluice_cluster::worker::WorkerConfig;
use sluice_web::{TlsFiles, Token};

/// Optional everywhere: a value missing from the flags and the environment
/// may still come from the file, so clap must not fill in defaults.
#[derive(Debug, Args)]
pub(crate) struct CoordinatorArgs {
    /// REST API address.
    #[arg(long, env = "SLUICE_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// Durable metadata and artifacts.
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address executors' control connections dial [default: the API's host, any port].
    #[arg(long, env = "SLUICE_CONTROL_LISTEN", value_name = "ADDR")]
    pub(crate) control_listen: Option<SocketAddr>,
    /// A worker silent this long is dead [default: 3s].
    #[arg(long, env = "SLUICE_HEARTBEAT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub(crate) heartbeat_timeout: Option<Duration>,
    /// How often workers heartbeat [default: 500ms].
    #[arg(long, env = "SLUICE_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub(crate) heartbeat_interval: Option<Duration>,
    /// Placement of subtasks on worker slots [default: spread].
    #[arg(long, env = "SLUICE_SCHEDULING")]
    pub(crate) scheduling: Option<SchedulingArg>,
    /// A dead worker is listed this long after its last heartbeat, then forgotten [default: 10m].
    #[arg(long, env = "SLUICE_DEAD_WORKER_RETENTION", value_parser = humantime::parse_duration)]
    pub(crate) dead_worker_retention: Option<Duration>,
    /// Ended jobs kept; older ones are forgotten, records included [default: 100].
    #[arg(long, env = "SLUICE_RETAINED_JOBS", value_name = "N")]
    pub(crate) retained_jobs: Option<usize>,
    /// File holding the bearer token API calls must carry [default: SLUICE_TOKEN, else none].
    #[arg(long, env = "SLUICE_TOKEN_FILE", value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key).
    #[arg(long, env = "SLUICE_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "SLUICE_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// URL clients reach this coordinator at, named by standbys while it leads [default: its --listen address].
    #[arg(long, env = "SLUICE_ADVERTISE", value_name = "URL")]
    pub(crate) advertise: Option<String>,
    /// Largest job binary accepted, in bytes (suffixes K, M, G, T: powers of 1024) [default: 2G].
    #[arg(long, env = "SLUICE_MAX_ARTIFACT_BYTES", value_name = "BYTES", value_parser = parse_bytes)]
    pub(crate) max_artifact_bytes: Option<u64>,
    /// Largest total of stored job binaries and uploads in progress, in bytes (suffixes as above) [default: 20G].
    #[arg(long, env = "SLUICE_MAX_ARTIFACT_STORE_BYTES", value_name = "BYTES", value_parser = parse_bytes)]
    pub(crate) max_artifact_store_bytes: Option<u64>,
}

/// A size in bytes: digits, optionally followed by K, M, G or T (powers
/// of 1024; a trailing `B` or `iB` is allowed: `512M`, `2GiB`).
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

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Coordinator REST URL (http://host:port; several, comma-separated, for a leader and its standbys).
    #[arg(long, env = "SLUICE_COORDINATOR", value_name = "URL")]
    pub(crate) coordinator: Option<String>,
    /// Slots offered.
    #[arg(long, env = "SLUICE_SLOTS", value_name = "N")]
    pub(crate) slots: Option<usize>,
    /// Artifacts, executor specs and logs.
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Host (name or IP address, no port) executors bind for data exchange [default: 127.0.0.1].
    #[arg(long, env = "SLUICE_EXCHANGE_HOST", value_name = "HOST")]
    pub(crate) exchange_host: Option<String>,
    /// Capacity (weight of the weighted scheduler) [default: 1].
    #[arg(long, env = "SLUICE_CAPACITY", value_name = "W")]
    pub(crate) capacity: Option<f64>,
    #[command(flatten)]
    pub(crate) security: SecurityArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// Coordinator REST URL (http://host:port or https://host:port; several, comma-separated, for a leader and its standbys).
    #[arg(long, env = "SLUICE_COORDINATOR", value_name = "URL")]
    pub(crate) coordinator: Option<String>,
    #[command(flatten)]
    pub(crate) security: SecurityArgs,
}

/// How a client of the API authenticates and what it trusts.
#[derive(Debug, Args)]
pub(crate) struct SecurityArgs {
    /// File holding the coordinator's bearer token [default: SLUICE_TOKEN, else none].
    #[arg(long, env = "SLUICE_TOKEN_FILE", value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// PEM certificates to trust for an https:// coordinator, besides the system's.
    #[arg(long, env = "SLUICE_CA_CERT", value_name = "FILE")]
    pub(crate) ca_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Default parallelism of the job.
    #[arg(long, env = "SLUICE_PARALLELISM", value_name = "P")]
    pub(crate) parallelism: Option<usize>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SchedulingArg {
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
pub(crate) struct FileConfig {
    #[serde(default)]
    pub(crate) coordinator: CoordinatorFile,
    #[serde(default)]
    pub(crate) worker: WorkerFile,
    #[serde(default)]
    pub(crate) client: ClientFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CoordinatorFile {
    pub(crate) listen: Option<String>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) control_listen: Option<String>,
    pub(crate) heartbeat_timeout: Option<String>,
    pub(crate) heartbeat_interval: Option<String>,
    pub(crate) scheduling: Option<String>,
    pub(crate) dead_worker_retention: Option<String>,
    pub(crate) retained_jobs: Option<usize>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) advertise: Option<String>,
    pub(crate) max_artifact_bytes: Option<String>,
    pub(crate) max_artifact_store_bytes: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerFile {
    pub(crate) coordinator: Option<String>,
    pub(crate) slots: Option<usize>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) exchange_host: Option<String>,
    pub(crate) capacity: Option<f64>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) ca_cert: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientFile {
    pub(crate) coordinator: Option<String>,
    pub(crate) parallelism: Option<usize>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) ca_cert: Option<PathBuf>,
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

pub(crate) fn coordinator_config(
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
    if let Some(d) = args.dead_worker_retention.or(file_duration(
        s,
        "dead_worker_retention",
        file.dead_worker_retention.as_ref(),
    )?) {
        config.dead_worker_retention = d;
    }
    let token_file = args.token_file.clone().or_else(|| file.token_file.clone());
    config.token = Token::from_file_or_env(token_file.as_deref())?;
    config.advertise = args.advertise.clone().or_else(|| file.advertise.clone());
    if let Some(n) = args.retained_jobs.or(file.retained_jobs) {
        if n == 0 {
            bail!("--retained-jobs must be at least 1 (the newest ended job keeps the id counter)");
        }
        config.retained_jobs = n;
    }
    config.tls = match (
        args.tls_cert.clone().or_else(|| file.tls_cert.clone()),
        args.tls_key.clone().or_else(|| file.tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => bail!("--tls-cert needs --tls-key (its private key)"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert (the certificate it belongs to)"),
    };
    let file_bytes = |key: &str, v: &Option<String>| {
        v.as_deref()
            .map(|v| parse_bytes(v).map_err(|e| anyhow!("[{s}] {key}: {e}")))
            .transpose()
    };
    if let Some(n) = args
        .max_artifact_bytes
        .or(file_bytes("max_artifact_bytes", &file.max_artifact_bytes)?)
    {
        config.artifact_limits.max_artifact_bytes = n;
    }
    if let Some(n) = args.max_artifact_store_bytes.or(file_bytes(
        "max_artifact_store_bytes",
        &file.max_artifact_store_bytes,
    )?) {
        config.artifact_limits.max_store_bytes = n;
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

pub(crate) fn worker_config(args: &WorkerArgs, file: &WorkerFile) -> anyhow::Result<WorkerConfig> {
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
    if let Some(host) = args
        .exchange_host
        .clone()
        .or_else(|| file.exchange_host.clone())
    {
        check_host(&host)?;
        config.listen_host = host;
    }
    if let Some(w) = args.capacity.or(file.capacity) {
        config.capacity = w;
    }
    config.security = security(&args.security, &file.token_file, &file.ca_cert)?;
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

pub(crate) fn client(args: &ClientArgs, file: &ClientFile) -> anyhow::Result<Client> {
    let url = args
        .coordinator
        .clone()
        .or_else(|| file.coordinator.clone())
        .ok_or_else(|| missing("--coordinator", "SLUICE_COORDINATOR", "client"))?;
    let security = security(&args.security, &file.token_file, &file.ca_cert)?;
    Ok(Client::secured(&url, &security)?)
}

/// Flags and environment first, then the file's keys.
fn security(
    args: &SecurityArgs,
    file_token: &Option<PathBuf>,
    file_ca: &Option<PathBuf>,
) -> anyhow::Result<ClientSecurity> {
    let token_file = args.token_file.clone().or_else(|| file_token.clone());
    Ok(ClientSecurity {
        token: Token::from_file_or_env(token_file.as_deref())?,
        ca_cert: args.ca_cert.clone().or_else(|| file_ca.clone()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

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
            "SLUICE_EXCHANGE_HOST",
            "SLUICE_CAPACITY",
            "SLUICE_TOKEN",
            "SLUICE_TOKEN_FILE",
            "SLUICE_CA_CERT",
        ];
        for v in vars {
            std::env::remove_var(v);
        }
        for (k, v) in env {
            std::env::set_var(k, v);
        }
        let parsed = Cli::try_parse_from(std::iter::once("sluice").chain(argv.iter().copied()));
        let config = parsed.map_err(anyhow::Error::from).and_then(|p| {
            let Command::Worker(args) = p.command else {
                panic!("not a worker command");
            };
            worker_config(&args, &parse_file(toml)?.worker)
        });
        for v in vars {
            std::env::remove_var(v);
        }
        config
    }

    #[test]
    fn the_token_comes_from_the_flag_the_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "token-a\n").unwrap();
        std::fs::write(&b, "token-b\n").unwrap();
        let file = format!(
            "{FILE}token_file = \"{}\"\nca_cert = \"/ca.pem\"\n",
            a.display()
        );
        let token =
            |c: &WorkerConfig, t: &str| c.security.token.as_ref().is_some_and(|k| k.matches(t));

        let c = worker_from(&["worker"], &[], FILE).unwrap();
        assert!(c.security.token.is_none() && c.security.ca_cert.is_none());
        let c = worker_from(&["worker"], &[("SLUICE_TOKEN", "from-env")], FILE).unwrap();
        assert!(token(&c, "from-env"));
        let c = worker_from(&["worker"], &[("SLUICE_TOKEN", "from-env")], &file).unwrap();
        assert!(token(&c, "token-a"), "a file beats the bare variable");
        assert_eq!(c.security.ca_cert, Some(PathBuf::from("/ca.pem")));
        let flag = ["worker", "--token-file", b.to_str().unwrap()];
        let c = worker_from(&flag, &[], &file).unwrap();
        assert!(token(&c, "token-b"), "the flag beats the config file");

        let missing = ["worker", "--token-file", "/no/such/token"];
        let err = format!("{:#}", worker_from(&missing, &[], FILE).unwrap_err());
        assert!(err.contains("/no/such/token"), "{err}");
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

        let env = [("SLUICE_SLOTS", "3"), ("SLUICE_EXCHANGE_HOST", "10.0.0.1")];
        let c = worker_from(&["worker"], &env, FILE).expect("env over file");
        assert_eq!(c.slots, 3);
        assert_eq!(c.listen_host, "10.0.0.1");
        assert_eq!(c.data_dir, PathBuf::from("/file"));

        let c = worker_from(&["worker", "--slots", "4"], &env, FILE).expect("flag over env");
        assert_eq!(c.slots, 4);
        assert_eq!(c.listen_host, "10.0.0.1");
    }

    #[test]
    fn the_exchange_host_is_a_host_not_an_address() {
        let e = worker_from(&["worker", "--exchange-host", "127.0.0.1:7070"], &[], FILE)
            .expect_err("a port");
        assert!(format!("{e:#}").contains("give no port"), "{e:#}");
        let c = worker_from(&["worker", "--exchange-host", "node-2.example"], &[], FILE).unwrap();
        assert_eq!(c.listen_host, "node-2.example");
        let c = worker_from(&["worker", "--exchange-host", "::1"], &[], FILE).unwrap();
        assert_eq!(c.listen_host, "::1");
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
        assert_eq!(c.dead_worker_retention, Duration::from_secs(600), "default");

        assert!(c.tls.is_none());
        let half = parse_file(
            "[coordinator]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\ntls_cert = \"c.pem\"\n",
        )
        .expect("parses");
        let err = coordinator_config(&args, &half.coordinator)
            .expect_err("a certificate without its key");
        assert!(format!("{err:#}").contains("--tls-key"), "{err:#}");

        assert_eq!(
            c.artifact_limits,
            sluice_cluster::coordinator::ArtifactLimits::default()
        );
        let sized = parse_file(
            "[coordinator]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\nmax_artifact_bytes = \"512M\"\nmax_artifact_store_bytes = \"3GiB\"\n",
        )
        .expect("parses");
        let c = coordinator_config(&args, &sized.coordinator).expect("valid sizes");
        assert_eq!(c.artifact_limits.max_artifact_bytes, 512 << 20);
        assert_eq!(c.artifact_limits.max_store_bytes, 3 << 30);
        let odd = parse_file(
            "[coordinator]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\nmax_artifact_bytes = \"lots\"\n",
        )
        .expect("parses");
        let err = coordinator_config(&args, &odd.coordinator).expect_err("bad size");
        assert!(format!("{err:#}").contains("max_artifact_bytes"), "{err:#}");
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert!(parse_bytes("2X").is_err() && parse_bytes("G").is_err());

        let bad = parse_file("[coordinator]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\nheartbeat_timeout = \"soon\"\n").expect("parses");
        let err = coordinator_config(&args, &bad.coordinator).expect_err("bad duration");
        assert!(format!("{err:#}").contains("heartbeat_timeout"), "{err:#}");
    }
}
