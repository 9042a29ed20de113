use std::sync::Mutex;

use clap::{CommandFactory, FromArgMatches};

use super::*;
use crate::{Cli, Command};

/// clap reads the real environment: tests that set variables take turns.
static ENV: Mutex<()> = Mutex::new(());

/// Every variable a setting reads, so a test starts from none.
fn all_vars() -> Vec<String> {
    let mut vars = vec!["SLUICE_TOKEN".to_string()];
    for section in SECTIONS {
        for command in section_settings(section) {
            for arg in command.get_arguments() {
                if let Some(e) = arg.get_env() {
                    vars.push(e.to_string_lossy().into_owned());
                }
            }
        }
    }
    vars
}

/// Parses `argv` as `sluice` does with only `env` set, then hands the
/// parsed command and its matches to `f`.
fn with_parsed<T>(
    argv: &[&str],
    env: &[(&str, &str)],
    f: impl FnOnce(Command, &ArgMatches) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let _guard = ENV.lock().unwrap_or_else(|p| p.into_inner());
    let vars = all_vars();
    for v in &vars {
        std::env::remove_var(v);
    }
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let parsed = Cli::command()
        .try_get_matches_from(std::iter::once("sluice").chain(argv.iter().copied()))
        .map_err(anyhow::Error::from)
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    // Token files and variables are read while the configuration is
    // built, so the variables stay set until then.
    let result = parsed.and_then(|(cli, m)| {
        let sub = m.subcommand().expect("a command").1;
        f(cli.command, sub)
    });
    for v in &vars {
        std::env::remove_var(v);
    }
    result
}

fn worker_from(argv: &[&str], env: &[(&str, &str)], toml: &str) -> anyhow::Result<WorkerConfig> {
    with_parsed(argv, env, |command, m| {
        let Command::Worker(args) = command else {
            panic!("not a worker command");
        };
        worker_config(&args, m, &parse_file(toml)?)
    })
}

fn coordinator_from(argv: &[&str], toml: &str) -> anyhow::Result<CoordinatorConfig> {
    with_parsed(argv, &[], |command, m| {
        let Command::Coordinator(args) = command else {
            panic!("not a coordinator command");
        };
        coordinator_config(&args, m, &parse_file(toml)?)
    })
}

#[test]
fn the_token_comes_from_the_flag_the_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for (f, t) in [(&a, "token-a\n"), (&b, "token-b\n")] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(f, t).unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let file = format!(
        "{FILE}token_file = \"{}\"\nca_cert = \"/ca.pem\"\n",
        a.display()
    );
    let token = |c: &WorkerConfig, t: &str| c.security.token.as_ref().is_some_and(|k| k.matches(t));

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

    // A flag equal to the default still beats the file: where a value
    // came from decides, not what it is.
    let file = format!("{FILE}exchange_host = \"10.0.0.2\"\n");
    let c = worker_from(&["worker"], &[], &file).expect("file over default");
    assert_eq!(c.listen_host, "10.0.0.2");
    let c = worker_from(&["worker", "--exchange-host", "127.0.0.1"], &[], &file).unwrap();
    assert_eq!(c.listen_host, "127.0.0.1");
    let c = worker_from(&["worker"], &[("SLUICE_CAPACITY", "1")], &file).unwrap();
    assert_eq!(
        c.capacity, 1.0,
        "a variable equal to the default beats the file"
    );
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
    assert_eq!(
        msg,
        "missing --coordinator (or SLUICE_COORDINATOR, or coordinator in [worker] of the --config file)"
    );
    let err =
        coordinator_from(&["coordinator", "--listen", "127.0.0.1:1"], "").expect_err("no data dir");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("--data-dir")
            && msg.contains("SLUICE_DATA_DIR")
            && msg.contains("data_dir in [coordinator]"),
        "{msg}"
    );
}

#[test]
fn unknown_toml_key_is_named() {
    let err = parse_file("[worker]\nslot = 2\n").expect_err("unknown key");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("[worker] slot:") && msg.contains("slots"),
        "{msg}"
    );
    let err = parse_file("[workers]\n").expect_err("unknown section");
    assert!(format!("{err:#}").contains("workers"), "{err:#}");
    // A key of another section is unknown here too.
    let err = parse_file("[client]\nslots = 2\n").expect_err("a worker key");
    assert!(format!("{err:#}").contains("[client] slots"), "{err:#}");
    // `parallelism` belongs to [client] (submit's), and only there.
    parse_file("[client]\nparallelism = 2\n").expect("submit's setting");
    parse_file("[worker]\nparallelism = 2\n").expect_err("not a worker's");
}

#[test]
fn a_bad_value_in_the_file_names_its_key() {
    let file = "[worker]\ncoordinator = \"http://f:1\"\ndata_dir = \"/f\"\nslots = \"two\"\n";
    let err = worker_from(&["worker"], &[], file).expect_err("a string for a number");
    assert!(
        format!("{err:#}").contains("[worker] slots = \"two\""),
        "{err:#}"
    );
    let err = coordinator_from(
        &["coordinator"],
        "[coordinator]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\nscheduling = \"fast\"\n",
    )
    .expect_err("no such placement");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("[coordinator] scheduling") && msg.contains("spread"),
        "{msg}"
    );
}

#[test]
fn coordinator_durations_from_file_and_flags() {
    let file = r#"
        [coordinator]
        listen = "127.0.0.1:9000"
        data_dir = "/meta"
        heartbeat_timeout = "2s"
        scheduling = "pack"
    "#;
    let c = coordinator_from(&["coordinator", "--heartbeat-interval", "250ms"], file)
        .expect("valid config");
    assert_eq!(c.listen, "127.0.0.1:9000".parse().expect("addr"));
    assert_eq!(c.heartbeat_timeout, Duration::from_secs(2));
    assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
    assert_eq!(c.scheduling, Scheduling::Pack);
    assert_eq!(c.dead_worker_retention, Duration::from_secs(600), "default");
    // The two-word strategies are spelled alike in the file and as a flag.
    let least = file.replace("\"pack\"", "\"least-loaded\"");
    let c = coordinator_from(&["coordinator"], &least).expect("least-loaded");
    assert_eq!(c.scheduling, Scheduling::LeastLoaded);
    let c = coordinator_from(&["coordinator", "--scheduling", "round-robin"], file)
        .expect("round-robin");
    assert_eq!(c.scheduling, Scheduling::RoundRobin);
    assert!(c.tls.is_none());

    let err = coordinator_from(
        &["coordinator"],
        "[coordinator]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\ntls_cert = \"c.pem\"\n",
    )
    .expect_err("a certificate without its key");
    assert!(format!("{err:#}").contains("--tls-key"), "{err:#}");

    let err = coordinator_from(
        &["coordinator"],
        "[coordinator]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\nheartbeat_timeout = \"soon\"\n",
    )
    .expect_err("bad duration");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("heartbeat_timeout = \"soon\"") && msg.contains("3s"),
        "{msg}"
    );
}

#[test]
fn artifact_size_limits_from_file_flags_and_defaults() {
    let base = "[coordinator]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\n";
    let c = coordinator_from(&["coordinator"], base).expect("defaults");
    assert_eq!(
        c.artifact_limits,
        sluice_cluster::coordinator::ArtifactLimits::default()
    );
    let sized =
        format!("{base}max_artifact_bytes = \"512M\"\nmax_artifact_store_bytes = \"3GiB\"\n");
    let c = coordinator_from(&["coordinator"], &sized).expect("valid sizes");
    assert_eq!(c.artifact_limits.max_artifact_bytes, 512 << 20);
    assert_eq!(c.artifact_limits.max_store_bytes, 3 << 30);
    let c = coordinator_from(&["coordinator", "--max-artifact-bytes", "1K"], &sized)
        .expect("flag over file");
    assert_eq!(c.artifact_limits.max_artifact_bytes, 1024);
    let odd = format!("{base}max_artifact_bytes = \"lots\"\n");
    let err = coordinator_from(&["coordinator"], &odd).expect_err("bad size");
    assert!(format!("{err:#}").contains("max_artifact_bytes"), "{err:#}");
    assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
    assert_eq!(parse_bytes("2G"), Ok(2 << 30));
    assert!(parse_bytes("2X").is_err() && parse_bytes("G").is_err());
    assert_eq!(ByteSize(2 << 30).to_string(), "2G");
    assert_eq!(ByteSize(1000).to_string(), "1000");
}

/// The settings' defaults are the library's, so the command and code that
/// builds a `CoordinatorConfig` or `WorkerConfig` agree.
#[test]
fn defaults_are_the_librarys() {
    let c = coordinator_from(
        &["coordinator", "--listen", "127.0.0.1:5", "--data-dir", "d"],
        "",
    )
    .unwrap();
    let lib = CoordinatorConfig::new("127.0.0.1:5".parse().unwrap(), "d");
    assert_eq!(
        (
            c.heartbeat_timeout,
            c.heartbeat_interval,
            c.dead_worker_retention
        ),
        (
            lib.heartbeat_timeout,
            lib.heartbeat_interval,
            lib.dead_worker_retention
        )
    );
    assert_eq!(
        (c.scheduling, c.retained_jobs),
        (lib.scheduling, lib.retained_jobs)
    );
    assert_eq!(c.control_listen, lib.control_listen);
    let w = worker_from(&["worker"], &[], FILE).unwrap();
    let lib = WorkerConfig::new("x", 1, "d");
    assert_eq!(w.listen_host, lib.listen_host);
}

/// `docs/config.md` is what `sluice config defaults` prints. To
/// regenerate it: `cargo run -p sluice-cluster --bin sluice -- config
/// defaults > docs/config.md`.
#[test]
fn the_settings_reference_is_checked_in() {
    let text = reference();
    for section in SECTIONS {
        assert!(text.contains(&format!("## `[{section}]`")));
        for id in setting_ids(section) {
            assert!(
                text.contains(&format!("| `{id}` |")),
                "{id} of [{section}] is not listed"
            );
        }
    }
    for row in [
        "| `heartbeat_timeout` | `--heartbeat-timeout` | `SLUICE_HEARTBEAT_TIMEOUT` | `3s` |",
        "| `scheduling` | `--scheduling` | `SLUICE_SCHEDULING` | `spread` |",
        "`least-loaded`: the smallest share of slots in use",
        "| `exchange_host` | `--exchange-host` | `SLUICE_EXCHANGE_HOST` | `127.0.0.1` |",
    ] {
        assert!(text.contains(row), "{row}\n{text}");
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == text,
        "{} differs from `sluice config defaults`; regenerate it with \
         `cargo run -p sluice-cluster --bin sluice -- config defaults > docs/config.md`",
        path.display()
    );
}

#[test]
fn plaintext_needs_its_flag_and_tls_needs_all_four_files() {
    let base = ["coordinator", "--listen", "127.0.0.1:1", "--data-dir", "d"];
    let with = |extra: &[&str]| {
        let argv: Vec<&str> = base.iter().chain(extra).copied().collect();
        coordinator_from(&argv, "")
    };
    // Nothing said: refused at start, naming both ways out.
    let c = with(&[]).expect("parsed");
    let err = require_tls(&c).expect_err("plaintext without the flag");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("--insecure-plaintext") && msg.contains("sluice tls init"),
        "{msg}"
    );
    let c = with(&["--insecure-plaintext"]).expect("plaintext asked for");
    assert!(c.cluster_ca.is_none() && c.insecure_plaintext);
    require_tls(&c).expect("plaintext asked for");
    let tls = [
        "--tls-ca",
        "ca.pem",
        "--tls-ca-key",
        "ca.key",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "c.key",
    ];
    let c = with(&tls).expect("all four");
    require_tls(&c).expect("TLS");
    let ca = c.cluster_ca.expect("the cluster CA");
    assert_eq!(ca.cert, PathBuf::from("ca.pem"));
    assert_eq!(ca.key, PathBuf::from("ca.key"));
    for (args, needle) in [
        (&tls[..2], "--tls-ca-key"),
        (&tls[2..4], "--tls-ca"),
        (&tls[..4], "--tls-cert"),
    ] {
        let err = with(args).expect_err("incomplete");
        assert!(format!("{err:#}").contains(needle), "{args:?}: {err:#}");
    }
    let mut both = tls.to_vec();
    both.push("--insecure-plaintext");
    let err = with(&both).expect_err("contradiction");
    assert!(format!("{err:#}").contains("contradict"), "{err:#}");
}
