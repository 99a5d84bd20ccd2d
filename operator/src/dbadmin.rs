//! The client of `quartet-db`'s admin API (gRPC `quartet.db.v1.Admin`): the group's status
//! and its membership changes, reached at a pod's address and authorised with the group's
//! shared secret, which the operator generates and the replicas accept for these calls.

use std::time::Duration;

use quartet_proto::db::v1 as pb;
use quartet_proto::db::v1::admin_client::AdminClient;
use tonic::transport::Endpoint;

use crate::membership::{Member, NodeId};

/// The gRPC port of every replica.
pub const GRPC_PORT: u16 = 7140;

/// A leader reports a member this many entries behind or less as caught up (the database's
/// own threshold for removals).
const CAUGHT_UP: u64 = 1000;

/// A member the leader has not heard from for longer than this is not healthy.
const HEARD_WITHIN_MS: u64 = 2000;

/// The admin API of one group, as the operator calls it.
#[derive(Clone)]
pub struct Admin {
    secret: String,
    port: u16,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("port", &self.port).finish()
    }
}

/// A failed admin call, with the replica it went to.
#[derive(Debug, thiserror::Error)]
#[error("{host}: {message}")]
pub struct AdminError {
    /// The replica's host.
    pub host: String,
    /// What went wrong.
    pub message: String,
}

impl Admin {
    /// Calls authorised with the group's `secret`, on the replicas' gRPC port.
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.to_owned(),
            port: GRPC_PORT,
        }
    }

    async fn client(
        &self,
        host: &str,
    ) -> Result<AdminClient<tonic::transport::Channel>, AdminError> {
        let failed = |message: String| AdminError {
            host: host.to_owned(),
            message,
        };
        let channel = Endpoint::from_shared(format!("http://{host}:{}", self.port))
            .map_err(|e| failed(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(90))
            .connect()
            .await
            .map_err(|e| failed(format!("cannot connect: {e}")))?;
        Ok(AdminClient::new(channel))
    }

    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        if let Ok(value) = format!("Bearer {}", self.secret).parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    async fn call<T, F, Fut>(&self, host: &str, f: F) -> Result<T, AdminError>
    where
        F: FnOnce(AdminClient<tonic::transport::Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client(host).await?;
        f(client)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| AdminError {
                host: host.to_owned(),
                message: status.message().to_owned(),
            })
    }

    /// The group as the replica at `host` sees it.
    pub async fn status(&self, host: &str) -> Result<pb::GroupStatus, AdminError> {
        let request = self.request(pb::StatusRequest {});
        self.call(host, |mut c| async move { c.status(request).await })
            .await
    }

    /// Adds the replica whose own status is `joining` as a learner, through the leader at
    /// `leader`; returns once it has caught up.
    pub async fn add_learner(
        &self,
        leader: &str,
        joining: &pb::GroupStatus,
    ) -> Result<pb::GroupStatus, AdminError> {
        let request = self.request(pb::AddLearnerRequest {
            id: joining.node,
            addr: joining.addr.clone(),
            mysql: joining.mysql.clone(),
        });
        self.call(leader, |mut c| async move { c.add_learner(request).await })
            .await
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, leader: &str, id: NodeId) -> Result<pb::GroupStatus, AdminError> {
        let request = self.request(pb::NodesRequest { ids: vec![id] });
        self.call(leader, |mut c| async move { c.promote(request).await })
            .await
    }

    /// Takes `id` out of the group.
    pub async fn remove(&self, leader: &str, id: NodeId) -> Result<pb::GroupStatus, AdminError> {
        let request = self.request(pb::NodesRequest { ids: vec![id] });
        self.call(leader, |mut c| async move { c.remove(request).await })
            .await
    }

    /// Moves leadership to voter `to`.
    pub async fn transfer_leader(
        &self,
        leader: &str,
        to: NodeId,
    ) -> Result<pb::GroupStatus, AdminError> {
        let request = self.request(pb::TransferLeaderRequest { to });
        self.call(
            leader,
            |mut c| async move { c.transfer_leader(request).await },
        )
        .await
    }
}

/// The members as the leader's status reports them, with their health.
pub fn members(leader: &pb::GroupStatus) -> Vec<Member> {
    leader
        .members
        .iter()
        .map(|m| Member {
            id: m.id,
            voter: m.voter,
            healthy: m.id == leader.node
                || (m.lag.is_some_and(|lag| lag <= CAUGHT_UP)
                    && m.last_heard_ms.is_some_and(|ms| ms <= HEARD_WITHIN_MS)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_healthy_when_caught_up_and_heard_from() {
        let member = |id, lag, heard| pb::Member {
            id,
            addr: String::new(),
            mysql: String::new(),
            voter: true,
            matched: None,
            lag,
            last_heard_ms: heard,
        };
        let status = pb::GroupStatus {
            node: 1,
            members: vec![
                member(1, None, None),
                member(2, Some(0), Some(40)),
                member(3, Some(5000), Some(40)),
                member(4, Some(0), Some(9000)),
                member(5, None, None),
            ],
            ..Default::default()
        };
        let healthy: Vec<bool> = members(&status).iter().map(|m| m.healthy).collect();
        assert_eq!(healthy, [true, true, false, false, false]);
    }
}
