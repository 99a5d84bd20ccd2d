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

/// How long a status call may take: a replica that accepts the connection and does not
/// answer must not hold up a reconciliation.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a membership change may take (adding a learner returns once it has caught up;
/// the database gives up on a change after 60 s).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(90);

/// The admin API of one group, as the operator calls it.
#[derive(Clone)]
pub struct Admin {
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
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
    /// Calls authorised with the group's `secret` (as the replicas read it: without a trailing
    /// line break), on the replicas' gRPC port; an error when it cannot be sent as a header.
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim_end_matches(['\n', '\r']);
        let authorization = format!("Bearer {secret}").parse().map_err(|_| {
            "the group's secret holds characters a header cannot carry (printable ASCII only)"
                .to_owned()
        })?;
        Ok(Self {
            authorization,
            port: GRPC_PORT,
        })
    }

    async fn client(
        &self,
        host: &str,
        timeout: Duration,
    ) -> Result<AdminClient<tonic::transport::Channel>, AdminError> {
        let failed = |message: String| AdminError {
            host: host.to_owned(),
            message,
        };
        // A pod IP may be IPv6, which a URL writes in brackets.
        let authority = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, self.port).to_string(),
            Err(_) => format!("{host}:{}", self.port),
        };
        let channel = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| failed(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .connect()
            .await
            .map_err(|e| failed(format!("cannot connect: {e}")))?;
        Ok(AdminClient::new(channel))
    }

    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    async fn call<T, F, Fut>(&self, host: &str, timeout: Duration, f: F) -> Result<T, AdminError>
    where
        F: FnOnce(AdminClient<tonic::transport::Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client(host, timeout).await?;
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
        self.call(host, STATUS_TIMEOUT, |mut c| async move {
            c.status(request).await
        })
        .await
    }

    /// Forms a group of the replica at `host` alone (refused if it is a member of one).
    pub async fn initialize(&self, host: &str) -> Result<pb::GroupStatus, AdminError> {
        let request = self.request(pb::InitializeRequest {});
        self.call(host, CHANGE_TIMEOUT, |mut c| async move {
            c.initialize(request).await
        })
        .await
    }

    /// Ends the abstaining of the replica at `host` (new storage): it votes again.
    pub async fn admit(&self, host: &str) -> Result<pb::GroupStatus, AdminError> {
        let request = self.request(pb::AdmitRequest {});
        self.call(host, STATUS_TIMEOUT, |mut c| async move {
            c.admit(request).await
        })
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
        self.call(leader, CHANGE_TIMEOUT, |mut c| async move {
            c.add_learner(request).await
        })
        .await
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, leader: &str, id: NodeId) -> Result<pb::GroupStatus, AdminError> {
        let request = self.request(pb::NodesRequest { ids: vec![id] });
        self.call(leader, CHANGE_TIMEOUT, |mut c| async move {
            c.promote(request).await
        })
        .await
    }

    /// Takes `id` out of the group.
    pub async fn remove(&self, leader: &str, id: NodeId) -> Result<pb::GroupStatus, AdminError> {
        let request = self.request(pb::NodesRequest { ids: vec![id] });
        self.call(leader, CHANGE_TIMEOUT, |mut c| async move {
            c.remove(request).await
        })
        .await
    }

    /// Moves leadership to voter `to`.
    pub async fn transfer_leader(
        &self,
        leader: &str,
        to: NodeId,
    ) -> Result<pb::GroupStatus, AdminError> {
        let request = self.request(pb::TransferLeaderRequest { to });
        self.call(leader, CHANGE_TIMEOUT, |mut c| async move {
            c.transfer_leader(request).await
        })
        .await
    }
}

/// The members as the leader's status reports them, with their health as the database
/// judges it (the same rule it applies to a removal). A replica older than that judgement
/// reports lag and silence only: then at most 1000 entries behind and heard within 2 s (the
/// database's rule at its default election timeout).
pub fn members(leader: &pb::GroupStatus) -> Vec<Member> {
    leader
        .members
        .iter()
        .map(|m| Member {
            id: m.id,
            voter: m.voter,
            healthy: m.healthy.unwrap_or_else(|| {
                m.id == leader.node
                    || (m.lag.is_some_and(|lag| lag <= 1000)
                        && m.last_heard_ms.is_some_and(|ms| ms <= 2000))
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_the_databases_word_or_from_lag_and_silence_for_older_replicas() {
        let member = |id, lag, heard, healthy| pb::Member {
            id,
            lag,
            last_heard_ms: heard,
            healthy,
            voter: true,
            ..Default::default()
        };
        let status = pb::GroupStatus {
            node: 1,
            members: vec![
                member(1, None, Some(0), None),
                member(2, Some(0), Some(40), None),
                member(3, Some(5000), Some(40), None),
                member(4, Some(0), Some(9000), None),
                member(5, Some(0), Some(40), Some(false)),
                member(6, None, None, Some(true)),
            ],
            ..Default::default()
        };
        let healthy: Vec<bool> = members(&status).iter().map(|m| m.healthy).collect();
        assert_eq!(healthy, [true, true, false, false, false, true]);
    }

    #[test]
    fn secrets_are_read_as_the_replicas_read_them_and_bad_ones_are_refused() {
        let admin = Admin::new("s3cret\n").expect("a secret");
        assert_eq!(admin.authorization, "Bearer s3cret");
        let refused = Admin::new("new\nline").expect_err("refused");
        assert!(refused.contains("printable ASCII"), "{refused}");
    }
}
