//! The admin API of a replica, over REST (`/v1/cluster…`) and gRPC (`quartet.db.v1.Admin`):
//! group status, membership changes, leadership transfer and checksums. Bearer tokens from
//! `quartet-auth`; reading needs `db:cluster:read`, changing needs `db:cluster:manage`.
//! Membership changes and transfers must reach the leader; other replicas answer with the
//! leader's address (`not-leader`).
//!
//! The group's shared secret (`raft.secret_file`) is also accepted as a bearer token with both
//! permissions: whoever holds it can already act as a replica, and it is how the operator,
//! which generates it, manages membership without an auth service.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix_web::{HttpResponse, web};
use quartet_kit::error::{ApiError, ErrorKind, Problem};
use quartet_kit::token::{Authenticator, Bearer, Claims, TokenError, authenticate_grpc, require};
use quartet_proto::db::v1 as pb;
use quartet_proto::db::v1::admin_server::{Admin, AdminServer};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::raft::{Member, NodeId};
use crate::replica::{GroupStatus, MemberStatus, Replica, ReplicaError};

/// Permission to read the group's state.
pub const READ: &str = "db:cluster:read";
/// Permission to change membership and leadership.
pub const MANAGE: &str = "db:cluster:manage";

impl ApiError for ReplicaError {
    fn kind(&self) -> ErrorKind {
        match self {
            ReplicaError::NotLeader(_) => ErrorKind::FailedPrecondition,
            ReplicaError::Invalid(_) => ErrorKind::InvalidArgument,
            ReplicaError::Unconfirmed(_) => ErrorKind::DeadlineExceeded,
            ReplicaError::Raft(_) => ErrorKind::Unavailable,
            ReplicaError::Engine(_) | ReplicaError::Refused(_) => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ReplicaError::NotLeader(_) => "not-leader",
            _ => self.kind().slug(),
        }
    }
}

fn problem(e: &ReplicaError) -> Problem {
    Problem::from_error(e)
}

/// A node to add as a learner.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AddLearner {
    /// Its node id (non-zero, unique in the group).
    pub id: NodeId,
    /// Its gRPC address, `host:port`.
    pub addr: String,
    /// Its MySQL address, `host:port`.
    #[serde(default)]
    pub mysql: String,
}

/// Nodes to promote.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Nodes {
    /// Node ids.
    pub ids: Vec<NodeId>,
}

/// Where leadership should go.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Transfer {
    /// The voter to lead.
    pub to: NodeId,
}

/// Query of the checksum call.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ChecksumQuery {
    /// Wait until at least this index is applied here.
    #[serde(default)]
    pub at_least: u64,
}

/// A replica's checksum.
#[derive(Debug, Serialize, ToSchema)]
pub struct Checksum {
    /// The replica.
    pub node: NodeId,
    /// The applied index it was taken at.
    pub applied: u64,
    /// SHA-256 of schema and rows, hex.
    pub sha256: String,
}

/// Accepts the group's shared secret as a bearer token holding [`READ`] and [`MANAGE`];
/// every other token goes to `tokens`.
pub fn accepting_secret(tokens: Arc<dyn Authenticator>, secret: &str) -> Arc<dyn Authenticator> {
    if secret.is_empty() {
        return tokens;
    }
    Arc::new(SecretOrToken {
        tokens,
        secret: secret.into(),
    })
}

struct SecretOrToken {
    tokens: Arc<dyn Authenticator>,
    secret: String,
}

impl Authenticator for SecretOrToken {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Claims, TokenError>> {
        if subtle::ConstantTimeEq::ct_eq(token.as_bytes(), self.secret.as_bytes()).into() {
            let claims = Claims {
                iss: String::new(),
                sub: "cluster:secret".into(),
                aud: String::new(),
                exp: u64::MAX,
                iat: 0,
                nbf: 0,
                jti: String::new(),
                client_id: String::new(),
                scope: String::new(),
                roles: vec![],
                perms: vec![READ.into(), MANAGE.into()],
            };
            return Box::pin(async move { Ok(claims) });
        }
        self.tokens.authenticate(token)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Group status.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, description = "The group as this replica sees it", body = GroupStatus),
              (status = 401, description = "No valid token", body = Problem), (status = 403, description = "Lacks db:cluster:read", body = Problem)),
    security(("bearer" = [])))]
async fn status(replica: web::Data<Arc<Replica>>, caller: Bearer) -> Result<HttpResponse, Problem> {
    caller.require(READ)?;
    Ok(HttpResponse::Ok().json(replica.status()))
}

/// Forms a group of this replica alone, if it belongs to none.
#[utoipa::path(post, path = "/v1/cluster/initialize", tag = "cluster",
    responses((status = 200, description = "A group of this replica", body = GroupStatus),
              (status = 400, description = "Already a member of a group", body = Problem)),
    security(("bearer" = [])))]
async fn initialize(
    replica: web::Data<Arc<Replica>>,
    caller: Bearer,
) -> Result<HttpResponse, Problem> {
    caller.require(MANAGE)?;
    replica.initialize().await.map_err(|e| problem(&e))?;
    Ok(HttpResponse::Ok().json(replica.status()))
}

/// Ends this replica's abstaining from votes and elections (new storage): it is new to the
/// group, or was removed and added afresh since its data was lost.
#[utoipa::path(post, path = "/v1/cluster/admit", tag = "cluster",
    responses((status = 200, description = "It votes", body = GroupStatus)),
    security(("bearer" = [])))]
async fn admit(replica: web::Data<Arc<Replica>>, caller: Bearer) -> Result<HttpResponse, Problem> {
    caller.require(MANAGE)?;
    replica.admit();
    Ok(HttpResponse::Ok().json(replica.status()))
}

/// Adds a learner and waits until it has caught up.
#[utoipa::path(post, path = "/v1/cluster/learners", tag = "cluster", request_body = AddLearner,
    responses((status = 200, description = "Added and caught up", body = GroupStatus),
              (status = 400, description = "Invalid node: id 0, an address that is not host:port, or another member's address", body = Problem),
              (status = 412, description = "Not the leader", body = Problem),
              (status = 504, description = "It did not catch up in time (nothing there, or another replica there); it was removed again", body = Problem)),
    security(("bearer" = [])))]
async fn add_learner(
    replica: web::Data<Arc<Replica>>,
    caller: Bearer,
    body: web::Json<AddLearner>,
) -> Result<HttpResponse, Problem> {
    caller.require(MANAGE)?;
    let body = body.into_inner();
    let member = Member {
        addr: body.addr,
        mysql: body.mysql,
    };
    replica
        .add_learner(body.id, member)
        .await
        .map_err(|e| problem(&e))?;
    Ok(HttpResponse::Ok().json(replica.status()))
}

/// Makes learners voters.
#[utoipa::path(post, path = "/v1/cluster/voters", tag = "cluster", request_body = Nodes,
    responses((status = 200, description = "Promoted", body = GroupStatus),
              (status = 400, description = "Not learners of this group", body = Problem), (status = 412, description = "Not the leader", body = Problem)),
    security(("bearer" = [])))]
async fn promote(
    replica: web::Data<Arc<Replica>>,
    caller: Bearer,
    body: web::Json<Nodes>,
) -> Result<HttpResponse, Problem> {
    caller.require(MANAGE)?;
    replica
        .promote(body.ids.iter().copied().collect())
        .await
        .map_err(|e| problem(&e))?;
    Ok(HttpResponse::Ok().json(replica.status()))
}

/// Removes a node from the group.
#[utoipa::path(delete, path = "/v1/cluster/nodes/{id}", tag = "cluster",
    params(("id" = u64, Path, description = "Node id")),
    responses((status = 200, description = "Removed", body = GroupStatus),
              (status = 400, description = "Would leave no voter", body = Problem), (status = 412, description = "Not the leader", body = Problem)),
    security(("bearer" = [])))]
async fn remove(
    replica: web::Data<Arc<Replica>>,
    caller: Bearer,
    id: web::Path<NodeId>,
) -> Result<HttpResponse, Problem> {
    caller.require(MANAGE)?;
    replica
        .remove(BTreeSet::from([id.into_inner()]))
        .await
        .map_err(|e| problem(&e))?;
    Ok(HttpResponse::Ok().json(replica.status()))
}

/// Moves leadership.
#[utoipa::path(post, path = "/v1/cluster/leader", tag = "cluster", request_body = Transfer,
    responses((status = 200, description = "The target leads", body = GroupStatus),
              (status = 400, description = "Not a voter", body = Problem), (status = 412, description = "Not the leader", body = Problem),
              (status = 504, description = "The target did not take over in time", body = Problem)),
    security(("bearer" = [])))]
async fn transfer(
    replica: web::Data<Arc<Replica>>,
    caller: Bearer,
    body: web::Json<Transfer>,
) -> Result<HttpResponse, Problem> {
    caller.require(MANAGE)?;
    replica
        .transfer_leader(body.to)
        .await
        .map_err(|e| problem(&e))?;
    Ok(HttpResponse::Ok().json(replica.status()))
}

/// This replica's checksum.
#[utoipa::path(get, path = "/v1/cluster/checksum", tag = "cluster", params(ChecksumQuery),
    responses((status = 200, description = "Checksum", body = Checksum), (status = 504, description = "Not applied that far in time", body = Problem)),
    security(("bearer" = [])))]
async fn checksum(
    replica: web::Data<Arc<Replica>>,
    caller: Bearer,
    query: web::Query<ChecksumQuery>,
) -> Result<HttpResponse, Problem> {
    caller.require(READ)?;
    let (applied, sum) = replica
        .checksum(query.at_least)
        .await
        .map_err(|e| problem(&e))?;
    Ok(HttpResponse::Ok().json(Checksum {
        node: replica.id(),
        applied,
        sha256: hex(&sum),
    }))
}

#[derive(OpenApi)]
#[openapi(paths(
    status,
    initialize,
    admit,
    add_learner,
    promote,
    remove,
    transfer,
    checksum
))]
struct Doc;

/// The REST routes and their OpenAPI document.
pub fn rest(replica: Arc<Replica>) -> quartet_kit::RestApi {
    let data = web::Data::new(replica);
    quartet_kit::RestApi::new(
        move |cfg| {
            cfg.app_data(data.clone())
                .route("/v1/cluster", web::get().to(status))
                .route("/v1/cluster/initialize", web::post().to(initialize))
                .route("/v1/cluster/admit", web::post().to(admit))
                .route("/v1/cluster/learners", web::post().to(add_learner))
                .route("/v1/cluster/voters", web::post().to(promote))
                .route("/v1/cluster/nodes/{id}", web::delete().to(remove))
                .route("/v1/cluster/leader", web::post().to(transfer))
                .route("/v1/cluster/checksum", web::get().to(checksum));
        },
        Doc::openapi(),
    )
}

/// The gRPC admin service.
pub struct AdminService {
    replica: Arc<Replica>,
    authenticator: Arc<dyn Authenticator>,
}

impl AdminService {
    /// The service as a tonic server.
    pub fn server(
        replica: Arc<Replica>,
        authenticator: Arc<dyn Authenticator>,
    ) -> AdminServer<Self> {
        AdminServer::new(Self {
            replica,
            authenticator,
        })
    }

    async fn allow<T>(&self, request: &Request<T>, permission: &str) -> Result<(), Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), request).await?;
        require(&caller, permission)?;
        Ok(())
    }

    fn status(&self) -> pb::GroupStatus {
        let s = self.replica.status();
        pb::GroupStatus {
            node: s.node,
            addr: s.addr,
            mysql: s.mysql,
            incarnation: s.incarnation,
            abstaining: s.abstaining,
            role: s.role,
            leader: s.leader,
            term: s.term,
            last_log_index: s.last_log_index,
            committed: s.committed,
            applied: s.applied,
            members: s.members.into_iter().map(member).collect(),
        }
    }
}

fn member(m: MemberStatus) -> pb::Member {
    pb::Member {
        id: m.id,
        addr: m.addr,
        mysql: m.mysql,
        voter: m.voter,
        matched: m.matched,
        lag: m.lag,
        last_heard_ms: m.last_heard_ms,
        healthy: Some(m.healthy),
    }
}

fn status_of(e: &ReplicaError) -> Status {
    problem(e).into()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.allow(&request, READ).await?;
        Ok(Response::new(self.status()))
    }

    async fn initialize(
        &self,
        request: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.allow(&request, MANAGE).await?;
        self.replica.initialize().await.map_err(|e| status_of(&e))?;
        Ok(Response::new(self.status()))
    }

    async fn admit(
        &self,
        request: Request<pb::AdmitRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.allow(&request, MANAGE).await?;
        self.replica.admit();
        Ok(Response::new(self.status()))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.allow(&request, MANAGE).await?;
        let q = request.into_inner();
        let member = Member {
            addr: q.addr,
            mysql: q.mysql,
        };
        self.replica
            .add_learner(q.id, member)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(self.status()))
    }

    async fn promote(
        &self,
        request: Request<pb::NodesRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.allow(&request, MANAGE).await?;
        let ids = request.into_inner().ids.into_iter().collect();
        self.replica.promote(ids).await.map_err(|e| status_of(&e))?;
        Ok(Response::new(self.status()))
    }

    async fn remove(
        &self,
        request: Request<pb::NodesRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.allow(&request, MANAGE).await?;
        let ids = request.into_inner().ids.into_iter().collect();
        self.replica.remove(ids).await.map_err(|e| status_of(&e))?;
        Ok(Response::new(self.status()))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.allow(&request, MANAGE).await?;
        self.replica
            .transfer_leader(request.into_inner().to)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(self.status()))
    }

    async fn checksum(
        &self,
        request: Request<pb::ChecksumRequest>,
    ) -> Result<Response<pb::ChecksumResponse>, Status> {
        self.allow(&request, READ).await?;
        let (applied, sum) = self
            .replica
            .checksum(request.into_inner().at_least)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::ChecksumResponse {
            node: self.replica.id(),
            applied,
            sha256: hex(&sum),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_groups_secret_grants_cluster_permissions_and_other_tokens_go_on() {
        let tokens = quartet_kit::token::authenticator(&Default::default());
        let auth = accepting_secret(tokens.clone(), "s3cret-value");
        let claims = auth.authenticate("s3cret-value").await.expect("accepted");
        require(&claims, MANAGE).expect("may manage");
        require(&claims, READ).expect("may read");
        assert!(require(&claims, "db:data:write").is_err());
        assert!(auth.authenticate("s3cret-valuf").await.is_err());
        assert!(auth.authenticate("").await.is_err());
        // Without a secret nothing extra is accepted, not even an empty token.
        let plain = accepting_secret(tokens, "");
        assert!(plain.authenticate("").await.is_err());
    }
}
