//! openraft's RPCs between replicas, over gRPC (`quartet.db.v1.Raft`).
//!
//! Each call carries one openraft value encoded as MessagePack: the request, and as the reply
//! `Result<response, RaftError>`, so a remote Raft error reaches the caller's openraft as the
//! same value it would have got in-process. A transport failure becomes `Unreachable` (the
//! peer is down or partitioned; openraft backs off) and is logged once per change, not per
//! heartbeat.
//!
//! Replicas prove membership of the cluster with a shared secret (`raft.secret_file`, a
//! mounted Secret) in the `x-quartet-raft-secret` metadata, compared in constant time; without
//! one configured (local use) any caller is accepted and the server says so at start.
//!
//! Each of openraft's RPCs also names the node it is meant for (`x-quartet-raft-target`), and a
//! replica refuses one meant for another node: a learner added at an address where another
//! replica listens (a typo, a reused address, the leader's own) would otherwise take that
//! replica's place in the protocol — sent to the leader itself, openraft's core panicked and the
//! group lost its leader. A request without the header (an older replica) is served.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quartet_proto::db::v1::RaftMessage;
use quartet_proto::db::v1::raft_client::RaftClient;
use quartet_proto::db::v1::raft_server::{Raft as RaftRpc, RaftServer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{Member, NodeId, Raft, TypeConfig, decode, encode};

const SECRET_HEADER: &str = "x-quartet-raft-secret";

/// The metadata naming the node an RPC is meant for.
const TARGET_HEADER: &str = "x-quartet-raft-target";

/// When each peer last answered an RPC from this replica.
pub type Contacts = Arc<std::sync::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>>;

/// Makes a client per peer.
#[derive(Clone, Debug, Default)]
pub struct Network {
    secret: Arc<str>,
    contacts: Contacts,
}

impl Network {
    /// Clients presenting `secret` (empty: none), recording answers in `contacts`.
    pub fn new(secret: &str, contacts: Contacts) -> Self {
        Self {
            secret: secret.into(),
            contacts,
        }
    }
}

fn with_secret<T>(secret: &str, body: T) -> Request<T> {
    let mut request = Request::new(body);
    if !secret.is_empty()
        && let Ok(value) = secret.parse()
    {
        request.metadata_mut().insert(SECRET_HEADER, value);
    }
    request
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        let channel = Endpoint::from_shared(format!("http://{}", node.addr))
            .map(|e| {
                e.connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .connect_lazy()
            })
            .map_err(|e| e.to_string());
        Peer {
            target,
            member: node.clone(),
            client: channel.map(RaftClient::new),
            secret: self.secret.clone(),
            contacts: self.contacts.clone(),
        }
    }
}

/// One peer's client.
pub struct Peer {
    target: NodeId,
    member: Member,
    client: Result<RaftClient<Channel>, String>,
    secret: Arc<str>,
    contacts: Contacts,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        method: &'static str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(e) => {
                let error = TransportError(format!("bad address {}: {e}", self.member.addr));
                return Err(RPCError::Unreachable(Unreachable::new(&error)));
            }
        };
        let body = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut message = with_secret(&self.secret, RaftMessage { body });
        message.metadata_mut().insert(
            TARGET_HEADER,
            tonic::metadata::MetadataValue::from(self.target),
        );
        message.set_timeout(option.hard_ttl());
        let reply = match method {
            "append_entries" => client.append_entries(message).await,
            "vote" => client.vote(message).await,
            _ => client.install_snapshot(message).await,
        };
        let reply = reply.map_err(|status| {
            let error = TransportError(format!(
                "{} to node {} at {}: {}",
                method,
                self.target,
                self.member.addr,
                status.message()
            ));
            RPCError::Unreachable(Unreachable::new(&error))
        })?;
        self.contacts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.target, std::time::Instant::now());
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&reply.into_inner().body)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.member.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call("append_entries", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("install_snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// Asks `member` to start an election now (the last step of a leadership transfer).
pub async fn request_election(member: &Member, secret: &str) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(format!("http://{}", member.addr))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let mut client = RaftClient::new(endpoint.connect_lazy());
    client
        .elect(with_secret(secret, RaftMessage { body: Vec::new() }))
        .await
        .map(drop)
        .map_err(|s| format!("node at {}: {}", member.addr, s.message()))
}

/// The server side: hands peers' RPCs to the local Raft.
#[derive(Clone)]
pub struct RaftService {
    raft: Arc<Raft>,
    /// This replica's node id: RPCs meant for another node are refused.
    id: NodeId,
    /// Called when this replica accepts a leader's append (bounded-staleness reads use it).
    on_append: Arc<dyn Fn(u64) + Send + Sync>,
    secret: Arc<str>,
    /// Set while this replica abstains: its storage is new and it has not been admitted, so it
    /// may have forgotten votes it cast before — it grants none.
    abstaining: Arc<std::sync::atomic::AtomicBool>,
}

impl RaftService {
    /// The service as a tonic server for node `id`, ready for `Routes::add_service`.
    /// `on_append` gets the leader's commit index after each accepted append; callers must
    /// present `secret` unless it is empty.
    pub fn server(
        id: NodeId,
        raft: Arc<Raft>,
        on_append: Arc<dyn Fn(u64) + Send + Sync>,
        secret: &str,
        abstaining: Arc<std::sync::atomic::AtomicBool>,
    ) -> RaftServer<Self> {
        RaftServer::new(Self {
            raft,
            id,
            on_append,
            secret: secret.into(),
            abstaining,
        })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
    }
}

impl RaftService {
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.secret.is_empty() {
            return Ok(());
        }
        let presented = request
            .metadata()
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if subtle::ConstantTimeEq::ct_eq(presented, self.secret.as_bytes()).into() {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "not a replica of this group: the raft secret is missing or wrong",
            ))
        }
    }

    /// Refuses an RPC meant for another node (see the module documentation).
    fn addressed_here<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(value) = request.metadata().get(TARGET_HEADER) else {
            return Ok(());
        };
        let target: NodeId = value
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!("{TARGET_HEADER} must be a node id"))
            })?;
        if target == self.id {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "this is node {}, not node {target}: the address given for node {target} is another replica's",
            self.id
        )))
    }

    /// Admits a peer's openraft RPC: the group's secret, and meant for this node.
    fn admit_rpc<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.admit(request)?;
        self.addressed_here(request)
    }
}

fn decode_request<T: DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    decode(&request.into_inner().body)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    encode(value)
        .map(|body| Response::new(RaftMessage { body }))
        .map_err(|e| Status::internal(format!("cannot encode the Raft reply: {e}")))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit_rpc(&request)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request(request)?;
        let leader_commit = rpc.leader_commit.map(|c| c.index);
        let result = self.raft.append_entries(rpc).await;
        if let (Ok(AppendEntriesResponse::Success), Some(commit)) = (&result, leader_commit) {
            (self.on_append)(commit);
        }
        reply(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit_rpc(&request)?;
        if self.abstaining.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Status::unavailable(
                "this replica's storage is new and it has not been admitted: it grants no votes",
            ));
        }
        let rpc: VoteRequest<NodeId> = decode_request(request)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit_rpc(&request)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request(request)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn elect(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?;
        if self.abstaining.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Status::failed_precondition(
                "this replica's storage is new and it has not been admitted: it stands for no election",
            ));
        }
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(RaftMessage { body: Vec::new() }))
    }
}
