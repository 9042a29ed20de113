//! A cluster on this machine for end-to-end tests and benchmarks: a
//! `sluice coordinator` and `sluice worker`s started as processes of a
//! given `sluice` binary, each in its own process group (so signalling a
//! worker's group takes its executors along, as losing a machine would),
//! with logs in the cluster's directory, driven through the CLI as a user
//! would, and killed, executors included, when dropped.
//!
//! Unless told to run plaintext, it makes a throwaway CA in its directory
//! (`tls/`): the coordinator serves HTTPS and mutual TLS on the control
//! connection with a certificate for its host, attempts get their own
//! certificates, and the CLI and workers trust that CA.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sluice_engine::{Error, Result};
use sluice_protocol::api::WorkerInfo;

use crate::certs;

/// Where a worker (or a placed coordinator) runs: the host it listens on, and a command
/// prefix it is started under (`ip netns exec NS` to put it behind a
/// virtual link; empty for none).
#[derive(Debug, Clone)]
pub struct WorkerPlace {
    /// Exchange listen host.
    pub host: String,
    /// Command and arguments the worker command is appended to.
    pub prefix: Vec<String>,
}

impl WorkerPlace {
    /// On loopback, started directly.
    pub fn loopback() -> WorkerPlace {
        WorkerPlace {
            host: "127.0.0.1".into(),
            prefix: Vec::new(),
        }
    }
}

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct LocalClusterConfig {
    /// The `sluice` binary.
    pub sluice: PathBuf,
    /// Directory for logs, data directories and submissions.
    pub dir: PathBuf,
    /// Host the coordinator listens on (API and control).
    pub host: String,
    /// Extra `sluice coordinator` arguments (heartbeat settings, say).
    pub coordinator_args: Vec<String>,
    /// One entry per worker.
    pub workers: Vec<WorkerPlace>,
    /// Slots per worker.
    pub slots: usize,
    /// A token for the API, passed to every process; none: an open API.
    pub security: Option<LocalSecurity>,
    /// Coordinators, at least 1. One is a group of one on the data
    /// directory `coordinator`, started without `--peers`; several form a
    /// Raft group (`--node-id`, `--peers`), each on a port and a data
    /// directory of its own (`coordinator-I`, I from 0). Workers and the
    /// CLI get every coordinator's URL.
    pub coordinators: usize,
    /// `--insecure-plaintext`: HTTP, and no TLS on control connections and
    /// the exchange. Otherwise a throwaway CA in `dir/tls` secures them.
    pub plaintext: bool,
}

/// How a [`LocalCluster`]'s API is protected.
#[derive(Debug, Clone)]
pub struct LocalSecurity {
    /// File with the bearer token (the coordinator's, workers' and CLI's).
    pub token_file: PathBuf,
}

/// The throwaway CA's and the coordinator's files (`dir/tls`).
#[derive(Debug, Clone)]
pub struct LocalTls {
    /// The CA certificate: what workers and the CLI trust.
    pub ca: certs::CaFiles,
    /// The coordinator's certificate, for its host, 127.0.0.1 and
    /// localhost.
    pub coordinator: certs::NodeFiles,
}

impl LocalTls {
    /// Makes them in `dir` (or takes those made there before), the
    /// coordinators' certificate naming every one of `hosts`.
    pub fn make(dir: &Path, hosts: &[&str]) -> Result<LocalTls> {
        let ca = certs::CaFiles::in_dir(dir);
        let coordinator = certs::NodeFiles {
            cert: dir.join("coordinator.pem"),
            key: dir.join("coordinator.key"),
        };
        if ca.cert.exists() && coordinator.cert.exists() {
            return Ok(LocalTls { ca, coordinator });
        }
        let day = Duration::from_secs(24 * 3600);
        certs::init_ca(dir, "Sluice test cluster CA", day)?;
        let mut ips: Vec<std::net::IpAddr> = vec![[127, 0, 0, 1].into()];
        let mut dns = vec!["localhost".to_string()];
        for host in hosts {
            match host.parse() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) => dns.push(host.to_string()),
            }
        }
        let coordinator = certs::node(dir, dir, "coordinator", &dns, &ips, day)?;
        Ok(LocalTls { ca, coordinator })
    }
}

/// A running coordinator and workers; see the module comment.
pub struct LocalCluster {
    config: LocalClusterConfig,
    /// API ports, one per coordinator.
    ports: Vec<u16>,
    /// Coordinators started with `--join` (added after the start).
    joining: Vec<bool>,
    /// Where each coordinator runs, when not all on `config.host`.
    coordinator_places: Vec<WorkerPlace>,
    coordinators: Vec<Option<Child>>,
    workers: Vec<Child>,
    tls: Option<LocalTls>,
}

/// The API port of coordinators started in places of their own.
pub const PLACED_PORT: u16 = 7400;

/// A port nothing listens on at `host` now.
fn free_port(host: &str) -> Result<u16> {
    std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io(format!("finding a free port on {host}"), e))
}

/// Lines of each log shown by [`LocalCluster::logs`].
const LOG_TAIL: usize = 15;

impl LocalCluster {
    /// Starts the coordinators, waits until one leads, then starts the
    /// workers and waits until every worker is registered and alive.
    pub fn start(config: LocalClusterConfig) -> Result<LocalCluster> {
        LocalCluster::start_placed(config, Vec::new())
    }

    /// [`start`](Self::start) with coordinator `i` listening on
    /// `coordinator_places[i].host` and started under its prefix (one
    /// place per coordinator; a network namespace of its own, say, so a
    /// test can cut it off from the others). Placed coordinators listen
    /// on port [`PLACED_PORT`], each on its own address.
    pub fn start_placed(
        config: LocalClusterConfig,
        coordinator_places: Vec<WorkerPlace>,
    ) -> Result<LocalCluster> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| Error::io(format!("creating {}", config.dir.display()), e))?;
        if config.coordinators == 0 {
            return Err(Error::Config("a cluster needs a coordinator".into()));
        }
        if !coordinator_places.is_empty() && coordinator_places.len() != config.coordinators {
            return Err(Error::Config(format!(
                "{} coordinator places for {} coordinators",
                coordinator_places.len(),
                config.coordinators
            )));
        }
        let ports = if coordinator_places.is_empty() {
            (0..config.coordinators)
                .map(|_| free_port(&config.host))
                .collect::<Result<Vec<u16>>>()?
        } else {
            vec![PLACED_PORT; config.coordinators]
        };
        let tls = if config.plaintext {
            None
        } else {
            let mut hosts = vec![config.host.as_str()];
            hosts.extend(coordinator_places.iter().map(|p| p.host.as_str()));
            Some(LocalTls::make(&config.dir.join("tls"), &hosts)?)
        };
        let mut c = LocalCluster {
            coordinators: ports.iter().map(|_| None).collect(),
            joining: ports.iter().map(|_| false).collect(),
            coordinator_places,
            config,
            ports,
            workers: Vec::new(),
            tls,
        };
        // A group answers once a majority is up and elected a leader.
        for i in 0..c.ports.len() {
            c.start_coordinator_at(i)?;
        }
        c.wait_for_api()?;
        for i in 0..c.config.workers.len() {
            let child = c.spawn_worker(i)?;
            c.workers.push(child);
        }
        let n = c.workers.len();
        c.wait_for(
            Duration::from_secs(30),
            "the workers to register",
            |c| -> Result<bool> {
                let out = c.sluice(&["workers", "--json"])?;
                let w: Vec<WorkerInfo> = serde_json::from_slice(&out.stdout).unwrap_or_default();
                Ok(w.iter().filter(|w| w.alive).count() == n)
            },
        )?;
        Ok(c)
    }

    fn spawn_worker(&self, i: usize) -> Result<Child> {
        let place = &self.config.workers[i];
        let dir = &self.config.dir;
        let mut cmd = match place.prefix.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(&self.config.sluice);
                cmd
            }
            None => Command::new(&self.config.sluice),
        };
        cmd.args(["worker", "--coordinator", &self.url(), "--slots"])
            .arg(self.config.slots.to_string())
            .args(self.client_security())
            .args(["--exchange-host", &place.host])
            .arg("--data-dir")
            .arg(dir.join(format!("worker-{i}")));
        spawn_logged(cmd, &dir.join(format!("worker-{i}.log")))
    }

    /// Starts the coordinator (again, after [`kill_coordinator`]: same
    /// address and data directory, log appended) and waits until it
    /// answers.
    ///
    /// [`kill_coordinator`]: LocalCluster::kill_coordinator
    pub fn start_coordinator(&mut self) -> Result<()> {
        self.start_coordinator_at(0)?;
        self.wait_for_api()
    }

    /// Waits until a coordinator answers the API (in a Raft group: the
    /// leader, once one is elected).
    pub fn wait_for_api(&self) -> Result<()> {
        self.wait_for(
            Duration::from_secs(30),
            "the coordinator to answer",
            |c| -> Result<bool> { Ok(c.sluice(&["workers", "--json"])?.status.success()) },
        )
    }

    /// Starts coordinator `i`; again after it was killed: same address
    /// and data directory, log appended.
    pub fn start_coordinator_at(&mut self, i: usize) -> Result<()> {
        let mut cmd = match self
            .coordinator_places
            .get(i)
            .map(|p| p.prefix.split_first())
        {
            Some(Some((first, rest))) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(&self.config.sluice);
                cmd
            }
            _ => Command::new(&self.config.sluice),
        };
        cmd.args(["coordinator", "--listen"])
            .arg(format!("{}:{}", self.coordinator_host(i), self.ports[i]))
            .args(["--advertise", &self.coordinator_url(i)]);
        if self.joining[i] {
            cmd.arg("--node-id")
                .arg((i + 1).to_string())
                .arg("--join")
                .arg("--data-dir")
                .arg(self.config.dir.join(format!("coordinator-{i}")));
        } else if self.config.coordinators > 1 {
            let peers = (0..self.config.coordinators)
                .map(|p| format!("{}={}", p + 1, self.coordinator_url(p)))
                .collect::<Vec<_>>()
                .join(",");
            cmd.arg("--node-id")
                .arg((i + 1).to_string())
                .args(["--peers", &peers])
                .arg("--data-dir")
                .arg(self.config.dir.join(format!("coordinator-{i}")));
        } else {
            cmd.arg("--data-dir")
                .arg(self.config.dir.join("coordinator"));
        }
        cmd.args(&self.config.coordinator_args);
        if let Some(s) = &self.config.security {
            cmd.arg("--token-file").arg(&s.token_file);
        }
        match &self.tls {
            Some(tls) => {
                cmd.arg("--tls-ca").arg(&tls.ca.cert);
                cmd.arg("--tls-ca-key").arg(&tls.ca.key);
                cmd.arg("--tls-cert").arg(&tls.coordinator.cert);
                cmd.arg("--tls-key").arg(&tls.coordinator.key);
            }
            None => {
                cmd.arg("--insecure-plaintext");
            }
        }
        let log = if i == 0 {
            "coordinator.log".to_string()
        } else {
            format!("coordinator-{i}.log")
        };
        self.coordinators[i] = Some(spawn_logged(cmd, &self.config.dir.join(log))?);
        Ok(())
    }

    /// Starts one more coordinator with `--join` (node id `I + 1` for
    /// coordinator `I`, on its own port and data directory) and returns
    /// its index once it listens; `sluice coordinators add` then adds it.
    pub fn start_joining_coordinator(&mut self) -> Result<usize> {
        if !self.coordinator_places.is_empty() {
            return Err(Error::Config(
                "a coordinator joins only a cluster whose coordinators are not placed".into(),
            ));
        }
        let port = free_port(&self.config.host)?;
        self.ports.push(port);
        self.joining.push(true);
        self.coordinators.push(None);
        let i = self.ports.len() - 1;
        self.start_coordinator_at(i)?;
        let addr = (self.config.host.clone(), port);
        self.wait_for(
            Duration::from_secs(30),
            "the new coordinator to listen",
            |_| Ok::<_, Error>(std::net::TcpStream::connect(addr.clone()).is_ok()),
        )?;
        Ok(i)
    }

    /// SIGKILLs the first coordinator and waits for it.
    pub fn kill_coordinator(&mut self) {
        self.kill_coordinator_at(0);
    }

    /// SIGKILLs coordinator `i`.
    pub fn kill_coordinator_at(&mut self, i: usize) {
        if let Some(mut c) = self.coordinators[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every coordinator's URL, comma-separated (as `--coordinator` takes them).
    pub fn url(&self) -> String {
        (0..self.ports.len())
            .map(|i| self.coordinator_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The host coordinator `i` listens on.
    pub fn coordinator_host(&self, i: usize) -> &str {
        self.coordinator_places
            .get(i)
            .map_or(self.config.host.as_str(), |p| p.host.as_str())
    }

    /// The URL of coordinator `i`.
    pub fn coordinator_url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.coordinator_host(i), self.ports[i])
    }

    /// The token and CA flags of a worker or CLI command.
    fn client_security(&self) -> Vec<PathBuf> {
        let mut args = Vec::new();
        if let Some(s) = &self.config.security {
            args.extend(["--token-file".into(), s.token_file.clone()]);
        }
        if let Some(tls) = &self.tls {
            args.extend(["--ca-cert".into(), tls.ca.cert.clone()]);
        }
        args
    }

    /// The throwaway CA and the coordinator's certificate (none for a
    /// plaintext cluster).
    pub fn tls(&self) -> Option<&LocalTls> {
        self.tls.as_ref()
    }

    /// The process id of coordinator `i`, if running.
    pub fn coordinator_pid(&self, i: usize) -> Option<u32> {
        self.coordinators.get(i)?.as_ref().map(Child::id)
    }

    /// The first coordinator's port.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Workers started (alive or not).
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Sends `signal` (`-KILL`, `-STOP`, `-CONT`…) to worker `i`'s process
    /// group: the worker and the executors it started.
    pub fn signal_worker(&self, i: usize, signal: &str) {
        signal_group(&self.workers[i], signal);
    }

    /// Waits for worker `i`'s process to exit (after a `-KILL`).
    pub fn wait_worker(&mut self, i: usize) {
        let _ = self.workers[i].wait();
    }

    /// The position of the worker whose id is `id` (its log names it on
    /// registration).
    pub fn worker_position(&self, id: &str) -> Result<usize> {
        (0..self.workers.len())
            .find(|i| {
                std::fs::read_to_string(self.config.dir.join(format!("worker-{i}.log")))
                    .is_ok_and(|log| log.contains(id))
            })
            .ok_or_else(|| Error::NotFound(format!("no worker log names {id}\n{}", self.logs())))
    }

    /// Runs `sluice ARGS --coordinator URL`.
    pub fn sluice(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.config.sluice)
            .args(args)
            .args(["--coordinator", &self.url()])
            .args(self.client_security())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("running {}", self.config.sluice.display()), e))
    }

    /// `sluice submit --parallelism P BINARY -- JOB_ARGS` from the cluster's
    /// directory; returns the job id.
    pub fn submit(&self, parallelism: usize, binary: &Path, job_args: &[&str]) -> Result<String> {
        let out = Command::new(&self.config.sluice)
            .args(["submit", "--coordinator", &self.url(), "--parallelism"])
            .arg(parallelism.to_string())
            .args(self.client_security())
            .arg(binary)
            .arg("--")
            .args(job_args)
            .current_dir(&self.config.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("running {}", self.config.sluice.display()), e))?;
        if !out.status.success() {
            return Err(Error::Config(format!(
                "sluice submit failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Calls `ok` every 100 ms until it says yes (or fails); fails after
    /// `timeout` naming `what`, with the tails of the logs.
    pub fn wait_for<E: From<Error>>(
        &self,
        timeout: Duration,
        what: &str,
        mut ok: impl FnMut(&LocalCluster) -> std::result::Result<bool, E>,
    ) -> std::result::Result<(), E> {
        let start = Instant::now();
        while !ok(self)? {
            if start.elapsed() > timeout {
                return Err(Error::Timeout(format!("{what}\n{}", self.logs())).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The tails of every log (coordinator, workers, executors), for
    /// failure messages.
    pub fn logs(&self) -> String {
        let dir = &self.config.dir;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "log"));
        for i in 0..self.workers.len() {
            if let Ok(rd) = std::fs::read_dir(dir.join(format!("worker-{i}/logs"))) {
                files.extend(rd.flatten().map(|e| e.path()));
            }
        }
        files.sort();
        let mut out = String::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            out.push_str(&format!("--- {}\n{}\n", f.display(), tail.join("\n")));
        }
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            signal_group(w, "-KILL");
            let _ = w.wait();
        }
        for c in self.coordinators.iter_mut().flatten() {
            signal_group(c, "-KILL");
            let _ = c.wait();
        }
    }
}

/// Starts `cmd` in its own process group with the services' default
/// logging (`info`, openraft's own off) unless `RUST_LOG` says otherwise,
/// stderr appended to `log`.
fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,openraft=off");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("starting {:?}", cmd.get_program()), e))
}

/// Sends `signal` to a child's whole process group. The group may be gone
/// already (killed by a test): not an error.
fn signal_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
