//! Raft between coordinators over HTTP on their API listeners: openraft's
//! three messages (append entries, vote, install snapshot) are JSON posts
//! to `/internal/raft/{append,vote,snapshot}` and the answer is openraft's
//! `Result` as JSON; and stored binaries move between coordinators through
//! `/internal/raft/artifacts/{sha256}` (the leader pushes an upload to the
//! others before the upload is acknowledged; a leader that lacks one a
//! majority stores fetches it). The routes are behind the API's bearer
//! token like every other. One listener and one port per coordinator: its
//! `--peers` URL is both where clients and where the other coordinators
//! reach it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{info, warn};

use sluice_engine::error::{Error, Result};
use sluice_web::{self as jobs_api, Access, Failure, Token};

use super::{Command, NodeId, Replica, TypeConfig};
use crate::coordinator::artifacts::{ArtifactError, ArtifactStore, Uploaded, DOWNLOAD_CHUNK};

/// Largest Raft message body taken (snapshots go in chunks of openraft's
/// 3 MiB by default; entries hold job plans).
const MAX_MESSAGE: usize = 256 << 20;

/// Makes a connection per peer (reqwest pools the sockets).
pub struct Network {
    pub(super) http: reqwest::Client,
    pub(super) token: Option<Arc<Token>>,
    pub(super) health: Arc<PeerHealth>,
}

/// Whether each peer answered its last message. openraft retries an
/// unreachable peer every few hundred milliseconds and logs each failure
/// (its own logs are off by default, see the `sluice` binary); this logs
/// a peer going away once, and its return once.
#[derive(Default)]
pub struct PeerHealth {
    unreachable: Mutex<HashMap<NodeId, bool>>,
}

impl PeerHealth {
    fn answered(&self, peer: NodeId, url: &str) {
        let mut down = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        if down.insert(peer, false) == Some(true) {
            info!(peer, %url, "coordinator reachable again");
        }
    }

    fn failed(&self, peer: NodeId, url: &str, error: &dyn std::fmt::Display) {
        let mut down = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        if down.insert(peer, true) != Some(true) {
            warn!(peer, %url, %error, "coordinator unreachable; Raft keeps trying");
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            http: self.http.clone(),
            token: self.token.clone(),
            health: self.health.clone(),
            target,
            url: node.addr.trim_end_matches('/').to_string(),
        }
    }
}

/// Raft's messages to one peer.
pub struct Peer {
    http: reqwest::Client,
    token: Option<Arc<Token>>,
    health: Arc<PeerHealth>,
    target: NodeId,
    url: String,
}

impl Peer {
    /// Sends one message and decodes openraft's answer; whether the peer
    /// answered goes to [`PeerHealth`].
    async fn call<Req, Resp, E>(
        &self,
        what: &str,
        req: &Req,
        option: &RPCOption,
    ) -> std::result::Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: std::result::Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> =
            async {
                let mut request = self
                    .http
                    .post(format!("{}/internal/raft/{what}", self.url))
                    .timeout(option.hard_ttl())
                    .json(req);
                if let Some(t) = &self.token {
                    request = request.header(header::AUTHORIZATION, t.bearer());
                }
                let answer = request.send().await.map_err(|e| {
                    if e.is_connect() {
                        RPCError::Unreachable(Unreachable::new(&e))
                    } else {
                        RPCError::Network(NetworkError::new(&e))
                    }
                })?;
                if !answer.status().is_success() {
                    let status = answer.status();
                    let text = answer.text().await.unwrap_or_default();
                    return Err(RPCError::Network(NetworkError::new(
                        &std::io::Error::other(format!("{} answered {status}: {text}", self.url)),
                    )));
                }
                let result: std::result::Result<Resp, RaftError<NodeId, E>> =
                    answer
                        .json()
                        .await
                        .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            .await;
        match &answer {
            Err(RPCError::Unreachable(e)) => self.health.failed(self.target, &self.url, e),
            Err(RPCError::Network(e)) => self.health.failed(self.target, &self.url, e),
            _ => self.health.answered(self.target, &self.url),
        }
        answer
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<
        AppendEntriesResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId>>,
    > {
        self.call("append", &req, &option).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &req, &option).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> std::result::Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>>
    {
        self.call("vote", &req, &option).await
    }
}

#[derive(Clone)]
struct Internal {
    replica: Replica,
    artifacts: Arc<ArtifactStore>,
}

/// The internal routes: Raft's messages and binaries between coordinators.
/// Behind the operator token (a read token is refused their POSTs and
/// PUTs); kept out of the audit log, which records users' requests, not
/// the coordinators' own traffic.
pub fn routes(replica: Replica, artifacts: Arc<ArtifactStore>, access: &Access) -> Router {
    let api = Router::new()
        .route("/internal/raft/append", post(append))
        .route("/internal/raft/vote", post(vote))
        .route("/internal/raft/snapshot", post(snapshot))
        .route("/internal/raft/node", get(node))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE))
        // Binaries stream to a file within the store's own limits.
        .route(
            "/internal/raft/artifacts/{sha256}",
            put(receive_artifact)
                .get(send_artifact)
                .layer(DefaultBodyLimit::disable()),
        );
    jobs_api::secure(api, access.unaudited()).with_state(Internal { replica, artifacts })
}

/// Who answers at a URL: a coordinator's node id and the members it
/// knows (none while it waits to be added to a group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NodeIdentity {
    /// Its node id.
    pub id: NodeId,
    /// The members of the membership it knows.
    pub members: Vec<NodeId>,
}

async fn node(State(s): State<Internal>) -> Json<NodeIdentity> {
    Json(NodeIdentity {
        id: s.replica.id(),
        members: s.replica.members(false).into_keys().collect(),
    })
}

async fn append(
    State(s): State<Internal>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<std::result::Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(s.replica.raft().append_entries(req).await)
}

async fn vote(
    State(s): State<Internal>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<std::result::Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(s.replica.raft().vote(req).await)
}

async fn snapshot(
    State(s): State<Internal>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<
    std::result::Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
> {
    Json(s.replica.raft().install_snapshot(req).await)
}

/// Stores a binary another coordinator pushes (verified against its
/// address as any upload).
async fn receive_artifact(
    State(s): State<Internal>,
    Path(sha): Path<String>,
    body: Body,
) -> std::result::Result<StatusCode, Failure> {
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    match s
        .artifacts
        .upload(&sha, declared, body.into_data_stream())
        .await
    {
        Ok(Uploaded::Created) => Ok(StatusCode::CREATED),
        Ok(Uploaded::AlreadyStored) => Ok(StatusCode::OK),
        Err(e) => Err(Failure(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

/// A stored binary, for a coordinator that lacks it.
async fn send_artifact(
    State(s): State<Internal>,
    Path(sha): Path<String>,
) -> std::result::Result<Response, Failure> {
    let (file, len) = s
        .artifacts
        .open_verified_async(&sha)
        .await
        .map_err(|e| Failure(StatusCode::NOT_FOUND, e.to_string()))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, DOWNLOAD_CHUNK);
    Ok((
        [(header::CONTENT_LENGTH, len.to_string())],
        Body::from_stream(stream),
    )
        .into_response())
}

impl Replica {
    pub(super) fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.token() {
            Some(t) => request.header(header::AUTHORIZATION, t.bearer()),
            None => request,
        }
    }

    /// Sends the stored binary `sha` to the coordinator at `url`, which
    /// verifies it as any upload.
    pub(super) async fn push_artifact(
        &self,
        artifacts: &Arc<ArtifactStore>,
        url: &str,
        sha: &str,
    ) -> Result<()> {
        let (file, len) = artifacts
            .open_verified_async(sha)
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            DOWNLOAD_CHUNK,
        ));
        let answer = self
            .authorized(
                self.http()
                    .put(format!("{url}/internal/raft/artifacts/{sha}")),
            )
            .header(header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(|e| Error::Internal(format!("pushing to {url}: {e}")))?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(Error::Internal(format!(
                "{url} answered {}",
                answer.status()
            )))
        }
    }

    /// Pushes the stored binary `sha` to the other coordinators until a
    /// majority of the group (this one included) stores it, then records
    /// it in the log. Fails, naming how many store it, if no majority does.
    pub async fn replicate_artifact(
        &self,
        artifacts: &Arc<ArtifactStore>,
        sha: &str,
    ) -> Result<()> {
        let others: Vec<(NodeId, String)> = self
            .peers()
            .iter()
            .filter(|(id, _)| **id != self.id())
            .map(|(id, url)| (*id, url.clone()))
            .collect();
        let needed = self.peers().len() / 2 + 1;
        let pushes = others.into_iter().map(|(id, url)| async move {
            let pushed = self.push_artifact(artifacts, &url, sha).await;
            if let Err(e) = &pushed {
                warn!(peer = id, artifact = %sha, error = %e, "a coordinator did not take a binary");
            }
            pushed.is_ok()
        });
        let stored = 1 + futures::future::join_all(pushes)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        if stored < needed {
            return Err(Error::Internal(format!(
                "binary {sha} is stored on {stored} of {} coordinators; a majority ({needed}) must store it \
                 before it is accepted (are the others up?)",
                self.peers().len()
            )));
        }
        self.write_async(Command::ArtifactStored(sha.to_string()))
            .await
    }

    /// Fetches binary `sha` from another coordinator into `artifacts`
    /// (verified against its address); true once it is stored here.
    pub async fn fetch_artifact(&self, artifacts: &Arc<ArtifactStore>, sha: &str) -> bool {
        for (id, url) in self.peers() {
            if id == self.id() {
                continue;
            }
            let answer = match self
                .authorized(
                    self.http()
                        .get(format!("{url}/internal/raft/artifacts/{sha}")),
                )
                .send()
                .await
            {
                Ok(a) if a.status().is_success() => a,
                _ => continue,
            };
            let len = answer.content_length();
            let stream = answer.bytes_stream().map(|c| c.map_err(|e| e.to_string()));
            match artifacts.upload(sha, len, Box::pin(stream)).await {
                Ok(_) => {
                    info!(artifact = %sha, from = %url, "fetched a binary from another coordinator");
                    return true;
                }
                Err(ArtifactError::Mismatch { .. }) | Err(_) => continue,
            }
        }
        false
    }
}
