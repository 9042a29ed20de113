//! Coordinators replicated by Raft (openraft): the group's log holds
//! every change of the coordinator's durable metadata — job records (with
//! their life cycle: state, attempt, restarts, latest checkpoint, pending
//! rescale), the id counters and the index of stored binaries — and each
//! coordinator applies it to the same [`MetaState`]. The leader is the
//! only coordinator with a [`Manager`](super::manager::Manager); its
//! writes go through [`Replica::write`] and return once a majority has
//! the entry on disk. A coordinator that becomes leader builds its manager
//! from the state machine, as a restarted coordinator does from its files.
//!
//! - `store`: the log, the vote and snapshots in RocksDB under
//!   `DATA_DIR/raft`, the state machine in memory;
//! - [`network`]: Raft's messages between coordinators as HTTP calls on
//!   their API listeners (internal routes behind the API's token), and
//!   the push of a stored binary to the others;
//! - [`serve`]: the coordinator service in a group: leadership changes
//!   open and close the manager, followers answer reads of their local
//!   copy or name the leader;
//! - [`membership`]: adding and removing coordinators.

pub mod membership;
pub mod network;
pub mod serve;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::{BasicNode, LogId, ServerState, StoredMembership};
use serde::{Deserialize, Serialize};
use tracing::info;

use sluice_engine::error::{Error, Result};
use sluice_web::Token;

use super::meta::{IdCounters, JobRecord};

/// A coordinator's id in its group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Raft's types for the coordinators' group.
    pub TypeConfig:
        D = Command,
        R = Reply,
);

/// openraft's handle of this coordinator's Raft node.
pub type Raft = openraft::Raft<TypeConfig>;

/// One change of the replicated metadata: an entry of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// A job's record, new or changed (a whole record: applying it twice
    /// is applying it once).
    PutJob(Box<JobRecord>),
    /// A job forgotten by retention.
    DeleteJob(String),
    /// The id counters, raised before an id they hand out is used.
    SetIds(IdCounters),
    /// A binary a majority of coordinators store, verified by its SHA-256.
    ArtifactStored(String),
    /// Binaries removed as unused.
    ArtifactsRemoved(Vec<String>),
    /// Attempt `attempt` of `job` asks to complete checkpoint `id`:
    /// refused unless it is the job's current attempt in the log, so an
    /// attempt a deposed leader runs cannot complete one once a newer
    /// leader started another.
    CheckpointCompleted {
        /// The job.
        job: String,
        /// The attempt asking.
        attempt: u64,
        /// The checkpoint's id.
        id: u64,
        /// Whether it is a savepoint.
        savepoint: bool,
        /// The term of the leader asking: refused when older than the
        /// term serving the attempt (a new leader that adopted it).
        #[serde(default)]
        term: u64,
    },
}

/// What applying a command answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Why the command was refused, if it was.
    pub refused: Option<String>,
}

/// What the log says, applied: the same on every coordinator once it
/// applied the same entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetaState {
    /// Every job kept, by id.
    pub jobs: BTreeMap<String, JobRecord>,
    /// The next ids.
    pub ids: IdCounters,
    /// Binaries a majority stores.
    pub artifacts: BTreeSet<String>,
}

impl MetaState {
    fn apply(&mut self, command: Command) -> Reply {
        match command {
            Command::PutJob(record) => {
                self.jobs.insert(record.id.clone(), *record);
            }
            Command::DeleteJob(id) => {
                self.jobs.remove(&id);
            }
            Command::SetIds(ids) => {
                // Counters only rise: an older write applied late cannot
                // hand an id out twice.
                self.ids.next_job = self.ids.next_job.max(ids.next_job);
                self.ids.next_worker = self.ids.next_worker.max(ids.next_worker);
            }
            Command::ArtifactStored(sha) => {
                self.artifacts.insert(sha);
            }
            Command::ArtifactsRemoved(shas) => {
                for sha in shas {
                    self.artifacts.remove(&sha);
                }
            }
            Command::CheckpointCompleted {
                job,
                attempt,
                id,
                savepoint,
                term,
            } => {
                let Some(record) = self.jobs.get_mut(&job) else {
                    return Reply {
                        refused: Some(format!("no job {job} in the log")),
                    };
                };
                let state = record.life.state;
                let live =
                    state.is_running() || state == sluice_protocol::api::JobState::Scheduling;
                if record.life.attempt != attempt || !live {
                    return Reply {
                        refused: Some(format!(
                            "attempt {attempt} of {job} is not its current attempt ({}, {})",
                            record.life.attempt,
                            record.life.state.name()
                        )),
                    };
                }
                if let Some(run) = record.run.as_ref().filter(|r| r.attempt == attempt) {
                    if run.term > term {
                        return Reply {
                            refused: Some(format!(
                                "attempt {attempt} of {job} is served under term {}, not {term}",
                                run.term
                            )),
                        };
                    }
                }
                if !savepoint && record.latest_checkpoint < Some(id) {
                    record.latest_checkpoint = Some(id);
                }
            }
        }
        Reply::default()
    }
}

/// The state machine with the log position it reflects.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    meta: MetaState,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

/// Entries between snapshots by default.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1000;

/// How a coordinator takes part in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftSettings {
    /// This coordinator's id (a key of `peers`).
    pub node_id: NodeId,
    /// Every coordinator of the group, this one included: id → API URL.
    pub peers: BTreeMap<NodeId, String>,
    /// A follower that hears nothing from a leader for a random half to
    /// whole of this stands for election, and voters refuse votes for this
    /// long after they heard a leader; the leader heartbeats at a fifth of
    /// it. A dead leader is replaced within one to two of it.
    pub election_timeout: Duration,
    /// A snapshot of the state machine is taken every this many entries;
    /// the log before it is then dropped, and a follower further behind
    /// gets the snapshot.
    pub snapshot_every: u64,
    /// Started to be added to a running group (`--join`): an empty log is
    /// not initialised with `peers`; the member waits for the group's
    /// leader to add it (`sluice coordinators add`).
    pub join: bool,
}

impl RaftSettings {
    /// A group of one: this coordinator alone, at `url`.
    pub fn alone(url: &str) -> Self {
        RaftSettings {
            node_id: 1,
            peers: BTreeMap::from([(1, url.to_string())]),
            election_timeout: Duration::from_secs(1),
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            join: false,
        }
    }

    /// Parses `--peers`: `ID=URL,ID=URL,...`.
    pub fn parse_peers(text: &str) -> std::result::Result<BTreeMap<NodeId, String>, String> {
        let mut peers = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, url) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not ID=URL (e.g. 1=http://10.0.0.1:7070)"))?;
            let id: NodeId = id
                .trim()
                .parse()
                .map_err(|e| format!("{id:?} in {part:?} is not a node id: {e}"))?;
            let url = url.trim().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{url:?} in {part:?} is not an http:// or https:// URL"
                ));
            }
            if peers.insert(id, url.to_string()).is_some() {
                return Err(format!("node id {id} is named twice"));
            }
        }
        if peers.is_empty() {
            return Err("no peers named".into());
        }
        Ok(peers)
    }
}

/// Writes wait this long for a majority; then the change is reported as
/// not made (a leader cut off from the others cannot make any).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// This coordinator's member of the group, shared by the manager (its
/// writes), the routes (reads, Raft's messages) and the leadership watch.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<ReplicaInner>,
}

struct ReplicaInner {
    raft: Raft,
    settings: RaftSettings,
    state: Arc<RwLock<Applied>>,
    /// Raft's own runtime (see [`Replica::start`]).
    runtime: tokio::runtime::Handle,
    owned: Option<tokio::runtime::Runtime>,
    http: reqwest::Client,
    token: Option<Arc<Token>>,
}

impl Drop for ReplicaInner {
    fn drop(&mut self) {
        if let Some(rt) = self.owned.take() {
            // May be dropped inside another runtime: never blocks there.
            rt.shutdown_background();
        }
    }
}

/// How many election timeouts (numerator, denominator) a leader may go
/// without a majority's acknowledgement before it stops acting as leader.
/// One and a half: followers stand for election after a half to one
/// timeout without its heartbeats, and a loaded machine delays an
/// acknowledgement now and then without anything being cut off.
pub const QUORUM_LOSS: (u64, u64) = (3, 2);

/// Where this coordinator's copy stands: the term, the index of the last
/// entry applied, and the leader it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The current term.
    pub term: u64,
    /// The index of the last entry applied (0: none).
    pub applied: u64,
    /// The leader known, if any.
    pub leader: Option<NodeId>,
    /// Whether this coordinator leads.
    pub leading: bool,
}

impl Replica {
    /// Opens the log in `dir` and starts this coordinator's Raft node;
    /// a group whose log is empty is initialised with `settings.peers`
    /// (every member does the same, which openraft allows).
    /// With `ca_cert` (the cluster CA, PEM) the peers' HTTPS APIs are
    /// trusted by that CA, as the coordinators' certificates are its.
    pub async fn start(
        dir: &Path,
        settings: RaftSettings,
        token: Option<Arc<Token>>,
        ca_cert: Option<&Path>,
    ) -> Result<Replica> {
        if !settings.peers.contains_key(&settings.node_id) {
            return Err(Error::Config(format!(
                "--node-id {} is not among --peers ({})",
                settings.node_id,
                settings
                    .peers
                    .keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let (log, machine) = store::open(dir).map_err(|e| {
            Error::Internal(format!("opening the Raft log in {}: {e}", dir.display()))
        })?;
        machine.load().map_err(|e| {
            Error::Internal(format!(
                "reading the Raft snapshot in {}: {e}",
                dir.display()
            ))
        })?;
        let state = machine.state.clone();
        let election = settings.election_timeout.as_millis().max(50) as u64;
        let config = openraft::Config {
            cluster_name: "sluice-coordinators".into(),
            heartbeat_interval: (election / 5).max(10),
            // openraft's voters refuse votes for the maximum after they
            // last heard a leader (its lease), and a first candidacy
            // comes before that: it is refused, and the second, half to
            // one timeout later, wins. Between a half and the whole
            // timeout, a leader's death is followed by a new leader in
            // one to two timeouts.
            election_timeout_min: (election / 2).max(1),
            election_timeout_max: election,
            // A follower further behind than the log kept gets the
            // snapshot.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                settings.snapshot_every.max(1),
            ),
            max_in_snapshot_log_to_keep: settings.snapshot_every,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| Error::Config(format!("Raft settings: {e}")))?,
        );
        let ca = match ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                Some(reqwest::Certificate::from_pem(&pem).map_err(|e| {
                    Error::Config(format!("{}: not a PEM certificate: {e}", path.display()))
                })?)
            }
            None => None,
        };
        let client = || {
            let mut b = reqwest::Client::builder().connect_timeout(Duration::from_millis(500));
            if let Some(ca) = &ca {
                b = b.add_root_certificate(ca.clone());
            }
            b.build()
                .map_err(|e| Error::Internal(format!("building the peers' HTTP client: {e}")))
        };
        let http = client()?;
        let network = network::Network {
            http: client()?,
            token: token.clone(),
            health: Arc::default(),
        };
        // Raft runs on a runtime of its own: the manager holds its lock
        // while it waits for a write to commit (an attempt's number must
        // be durable before any worker learns it), and API handlers that
        // wait for that lock on the API's runtime must never keep Raft
        // (its timers, its messages) from running.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("raft")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting Raft's runtime", e))?;
        let handle = runtime.handle().clone();
        let peers = settings.peers.clone();
        let (node_id, join) = (settings.node_id, settings.join);
        let raft = handle
            .spawn(async move {
                let raft = Raft::new(node_id, config, network, log, machine)
                    .await
                    .map_err(|e| Error::Internal(format!("starting Raft: {e}")))?;
                let initialized = raft
                    .is_initialized()
                    .await
                    .map_err(|e| Error::Internal(format!("reading Raft's state: {e}")))?;
                if !initialized && !join {
                    let members: BTreeMap<NodeId, BasicNode> = peers
                        .iter()
                        .map(|(id, url)| (*id, BasicNode::new(url)))
                        .collect();
                    info!(members = ?peers, "initialising the coordinators' Raft group");
                    // Another member may have initialised it first: its
                    // entries reach this one, and this refusal says
                    // nothing new.
                    if let Err(e) = raft.initialize(members).await {
                        info!(error = %e, "the group was initialised by another member");
                    }
                }
                Ok::<_, Error>(raft)
            })
            .await
            .map_err(|e| Error::Internal(format!("starting Raft: {e}")))??;
        Ok(Replica {
            inner: Arc::new(ReplicaInner {
                raft,
                settings,
                state,
                runtime: handle,
                owned: Some(runtime),
                http,
                token,
            }),
        })
    }

    /// openraft's handle.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// This coordinator's id.
    pub fn id(&self) -> NodeId {
        self.inner.settings.node_id
    }

    /// The group's voters: id → API URL, from the membership in the log
    /// (which `sluice coordinators add/remove` change), or `--peers`
    /// before this member has any.
    pub fn peers(&self) -> BTreeMap<NodeId, String> {
        let voters = self.members(true);
        if voters.is_empty() {
            self.inner.settings.peers.clone()
        } else {
            voters
        }
    }

    /// The members in the membership this coordinator knows (voters only,
    /// or learners too): id → API URL.
    pub fn members(&self, voters_only: bool) -> BTreeMap<NodeId, String> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .filter(|(id, _)| !voters_only || voters.contains(id))
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect()
    }

    /// Whether this member was started to join a group (`--join`).
    pub fn joining(&self) -> bool {
        self.inner.settings.join
    }

    /// Appends `command` to the log and waits until it is committed (on a
    /// majority's disks) and applied here. Blocking: for the manager's
    /// threads and `spawn_blocking`, never an async worker.
    pub fn write(&self, command: Command) -> Result<()> {
        self.inner.runtime.block_on(self.write_async(command))
    }

    /// [`write`](Self::write) for async callers.
    pub async fn write_async(&self, command: Command) -> Result<()> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.inner.raft.client_write(command)).await {
            Ok(Ok(r)) => match r.data.refused {
                None => Ok(()),
                Some(why) => Err(Error::Checkpoint(format!("the Raft log refused it: {why}"))),
            },
            Ok(Err(e)) => Err(Error::Internal(format!(
                "the change was not made: this coordinator cannot commit it to the Raft log ({e})"
            ))),
            Err(_) => Err(Error::Timeout(format!(
                "a majority of coordinators to take a change within {WRITE_TIMEOUT:?} (the change may not have been made)"
            ))),
        }
    }

    /// Reads the applied state.
    pub fn read<T>(&self, f: impl FnOnce(&MetaState) -> T) -> T {
        let state = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        f(&state.meta)
    }

    /// Where this copy stands.
    ///
    /// A leader that has not heard a majority acknowledge it for
    /// [`QUORUM_LOSS`] election timeouts does not count as leading (nor as
    /// a known leader), though openraft keeps it leader until it hears a
    /// newer term: cut off from the majority (a partition, or frozen and
    /// woken), it steps down, so its manager stops and workers turn to the
    /// other coordinators, where the majority elects a new leader.
    pub fn position(&self) -> Position {
        let m = self.inner.raft.metrics().borrow().clone();
        let limit =
            self.inner.settings.election_timeout.as_millis() as u64 * QUORUM_LOSS.0 / QUORUM_LOSS.1;
        let self_elected = m.state == ServerState::Leader && m.current_leader == Some(self.id());
        let acknowledged = m.millis_since_quorum_ack.is_some_and(|ms| ms <= limit);
        Position {
            term: m.current_term,
            applied: m.last_applied.map_or(0, |l| l.index),
            leader: m.current_leader.filter(|_| !self_elected || acknowledged),
            leading: self_elected && acknowledged,
        }
    }

    /// The API URL of the leader this coordinator knows.
    pub fn leader_url(&self) -> Option<String> {
        let leader = self.position().leader?;
        self.members(false)
            .remove(&leader)
            .or_else(|| self.inner.settings.peers.get(&leader).cloned())
    }

    /// Confirms with a majority that this coordinator still leads, and
    /// waits until everything committed before is applied here (a read
    /// index): what it answers next is linearizable.
    pub async fn ensure_linearizable(&self) -> Result<()> {
        self.inner
            .raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| Error::Internal(format!("this coordinator cannot confirm it leads: {e}")))
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn token(&self) -> Option<&Arc<Token>> {
        self.inner.token.as_ref()
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }
}

#[cfg(test)]
mod tests;
