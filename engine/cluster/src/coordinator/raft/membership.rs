//! Adding and removing coordinators (`sluice coordinators add/remove`,
//! `POST /api/v1/coordinators`, `DELETE /api/v1/coordinators/{id}`),
//! through openraft's joint-consensus membership changes, on the leader.
//!
//! A new coordinator is started with `--join` (its empty log is not
//! initialised), then added: first as a learner that the leader brings up
//! to date (entries, or the snapshot), and only once it has caught up as a
//! voter. A voter that could not follow would make every majority larger
//! without adding a member that takes part in it, so one that does not
//! catch up in time is removed again and the change is refused.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use tracing::{info, warn};

use sluice_protocol::api::{CoordinatorMember, Coordinators};

use super::network::NodeIdentity;
use super::{NodeId, Replica};
use crate::coordinator::artifacts::ArtifactStore;

/// How long a new coordinator may take to answer at all.
const REACH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a learner may take to catch up before it is refused.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a membership change was not made.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The request is wrong in itself (a bad URL, the last voter).
    #[error("{0}")]
    Invalid(String),
    /// It contradicts the group as it is (an id in use, an unknown id).
    #[error("{0}")]
    Conflict(String),
    /// The new coordinator cannot be reached or did not catch up.
    #[error("{0}")]
    Unreachable(String),
    /// This coordinator could not make it (not the leader, no majority).
    #[error("{0}")]
    NotMade(String),
}

fn not_made(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> MembershipError {
    MembershipError::NotMade(format!("the membership change was not made: {e}"))
}

impl Replica {
    /// The group as this coordinator knows it.
    pub fn coordinators(&self) -> Coordinators {
        let voters = self.members(true);
        let position = self.position();
        Coordinators {
            leader: position.leader,
            term: position.term,
            members: self
                .members(false)
                .into_iter()
                .map(|(id, url)| CoordinatorMember {
                    voter: voters.contains_key(&id),
                    id,
                    url,
                })
                .collect(),
        }
    }

    /// Adds coordinator `id` at `url` as a voter once it caught up and
    /// stores every binary of the index (in `artifacts`), so a majority
    /// still stores each after other members are removed.
    pub async fn add_member(
        &self,
        id: NodeId,
        url: &str,
        artifacts: &Arc<ArtifactStore>,
    ) -> Result<(), MembershipError> {
        let url = url.trim().trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(MembershipError::Invalid(format!(
                "{url:?} is not an http:// or https:// URL"
            )));
        }
        let members = self.members(false);
        match members.get(&id) {
            Some(known) if self.members(true).contains_key(&id) => {
                return Err(MembershipError::Conflict(format!(
                    "coordinator {id} is a voter already (at {known})"
                )));
            }
            Some(known) if *known != url => {
                return Err(MembershipError::Conflict(format!(
                    "node id {id} is the learner at {known}, not {url}"
                )));
            }
            _ => {}
        }
        if let Some((other, _)) = members.iter().find(|(i, u)| **u == url && **i != id) {
            return Err(MembershipError::Conflict(format!(
                "{url} is coordinator {other}'s URL"
            )));
        }
        // The coordinator at the URL must be node `id`, in no other group:
        // a member added at a URL where another answers (this leader
        // itself, say) would get Raft's messages meant for another node,
        // which openraft does not survive; one that answers nothing would
        // make every majority wait for it.
        let identity = self.identify(&url).await?;
        if identity.id != id {
            return Err(MembershipError::Conflict(format!(
                "the coordinator at {url} is node {}, not {id}",
                identity.id
            )));
        }
        if let Some(stranger) = identity.members.iter().find(|m| !members.contains_key(m)) {
            return Err(MembershipError::Conflict(format!(
                "the coordinator at {url} belongs to another group (it knows node {stranger}); \
                 start it with --join on an empty data directory"
            )));
        }
        let raft = self.raft().clone();
        let node = BasicNode::new(&url);
        let learned = tokio::time::timeout(CATCH_UP_TIMEOUT, async move {
            raft.add_learner(id, node, true).await
        })
        .await;
        match learned {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(not_made(e)),
            Err(_) => {
                warn!(node = id, %url, "a new coordinator did not catch up: removing it again");
                let _ = self
                    .raft()
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await;
                return Err(MembershipError::Unreachable(format!(
                    "coordinator {id} at {url} did not catch up within {CATCH_UP_TIMEOUT:?} \
                     (was it started with --join and the group's token?)"
                )));
            }
        }
        let indexed: Vec<String> = self.read(|m| m.artifacts.iter().cloned().collect());
        for sha in &indexed {
            if let Err(e) = self.push_artifact(artifacts, &url, sha).await {
                // It can still fetch it from the others when it needs it.
                warn!(node = id, artifact = %sha, error = %e,
                    "a binary did not reach the new coordinator");
            }
        }
        self.raft()
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(not_made)?;
        info!(node = id, %url, "coordinator added to the group");
        Ok(())
    }

    /// A leader whose URL is not the one the membership holds for it (its
    /// `--advertise` or port changed since: a lone coordinator on another
    /// port, say) writes its URL there, so the others' messages and the
    /// leader named to clients reach it. Returns whether it changed.
    pub async fn correct_own_url(&self) -> Result<bool, MembershipError> {
        let Some(mine) = self.inner.settings.peers.get(&self.id()).cloned() else {
            return Ok(false);
        };
        match self.members(false).get(&self.id()) {
            Some(known) if *known != mine => {
                self.raft()
                    .change_membership(
                        ChangeMembers::SetNodes([(self.id(), BasicNode::new(&mine))].into()),
                        false,
                    )
                    .await
                    .map_err(not_made)?;
                info!(node = self.id(), from = %known, to = %mine, "this coordinator's URL changed");
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Asks the coordinator at `url` who it is.
    async fn identify(&self, url: &str) -> Result<NodeIdentity, MembershipError> {
        let unreachable = |e: String| {
            MembershipError::Unreachable(format!("no coordinator answers at {url}: {e}"))
        };
        let answer = self
            .authorized(self.http().get(format!("{url}/internal/raft/node")))
            .timeout(REACH_TIMEOUT)
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !answer.status().is_success() {
            return Err(unreachable(format!("it answered {}", answer.status())));
        }
        answer
            .json::<NodeIdentity>()
            .await
            .map_err(|e| unreachable(format!("not a coordinator's answer: {e}")))
    }

    /// Removes coordinator `id` from the group (a leader that removes
    /// itself steps down once the change is committed).
    pub async fn remove_member(&self, id: NodeId) -> Result<(), MembershipError> {
        let voters = self.members(true);
        if !self.members(false).contains_key(&id) {
            return Err(MembershipError::Conflict(format!(
                "coordinator {id} is not a member (members: {:?})",
                voters.keys().collect::<Vec<_>>()
            )));
        }
        if voters.len() == 1 && voters.contains_key(&id) {
            return Err(MembershipError::Invalid(format!(
                "coordinator {id} is the group's last voter"
            )));
        }
        let change = if voters.contains_key(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft()
            .change_membership(change, false)
            .await
            .map_err(not_made)?;
        info!(node = id, "coordinator removed from the group");
        Ok(())
    }
}
