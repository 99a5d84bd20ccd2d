//! The gRPC front (`quartet.rpc.v1.Rpc`): a generic invoke and invoke-stream onto the router,
//! arguments and results as JSON or MessagePack (the reply uses the request's encoding). The
//! same tokens and `rpc:call:<service>.<method>` permissions as REST. A method that raised is
//! `UNKNOWN` with `service.method raised Name: message` and the remote `{name, message,
//! traceback}` as JSON in the status details.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use quartet_kit::token::{Authenticator, authenticate_grpc};
use quartet_proto::rpc::v1 as pb;
use quartet_proto::rpc::v1::rpc_server::{Rpc, RpcServer};
use rmpv::Value;
use tonic::{Code, Request, Response, Status};

use crate::router::{RouteError, Router, to_json};
use crate::zerorpc::client::{CallError, Reply};

/// The gRPC service.
pub struct RpcService {
    router: Arc<Router>,
    authenticator: Arc<dyn Authenticator>,
    max_timeout: Duration,
}

impl RpcService {
    /// The service as a tonic server; request messages above `max_message_bytes` are refused
    /// before they are decoded (tonic answers `OUT_OF_RANGE` naming the limit).
    pub fn server(
        router: Arc<Router>,
        authenticator: Arc<dyn Authenticator>,
        max_timeout: Duration,
        max_message_bytes: usize,
    ) -> RpcServer<Self> {
        RpcServer::new(Self {
            router,
            authenticator,
            max_timeout,
        })
        .max_decoding_message_size(max_message_bytes)
    }
}

#[derive(Clone, Copy)]
enum Encoding {
    Json,
    Msgpack,
}

/// The request's arguments and which encoding the reply uses.
fn arguments(
    args: Option<pb::invoke_request::Args>,
) -> Result<(Vec<Value>, Encoding), crate::input::InputError> {
    match args {
        None => Ok((Vec::new(), Encoding::Json)),
        Some(pb::invoke_request::Args::ArgsJson(text)) => Ok((
            crate::input::json_arguments(text.as_bytes())?,
            Encoding::Json,
        )),
        Some(pb::invoke_request::Args::ArgsMsgpack(bytes)) => {
            Ok((crate::input::msgpack_arguments(&bytes)?, Encoding::Msgpack))
        }
    }
}

fn encode(value: &Value, encoding: Encoding) -> pb::InvokeReply {
    let result = match encoding {
        Encoding::Json => pb::invoke_reply::Result::Json(to_json(value).to_string()),
        Encoding::Msgpack => {
            let mut out = Vec::new();
            rmpv::encode::write_value(&mut out, value).expect("writing to a Vec cannot fail");
            pb::invoke_reply::Result::Msgpack(out)
        }
    };
    pb::InvokeReply {
        result: Some(result),
    }
}

fn failure(service: &str, method: &str, e: RouteError) -> Status {
    match e {
        RouteError::UnknownService(name) => Status::not_found(format!("no service named {name:?}")),
        RouteError::Call(CallError::Remote(remote)) => {
            let details = serde_json::json!({
                "name": remote.name, "message": remote.message, "traceback": remote.traceback,
            });
            Status::with_details(
                Code::Unknown,
                format!(
                    "{service}.{method} raised {}: {}",
                    remote.name, remote.message
                ),
                details.to_string().into_bytes().into(),
            )
        }
        e @ (RouteError::NoBackend { .. } | RouteError::Draining) => {
            Status::unavailable(format!("{service}.{method}: {e}"))
        }
        RouteError::Call(e @ CallError::Timeout(_)) => {
            Status::deadline_exceeded(format!("{service}.{method}: {e}"))
        }
        RouteError::Call(e) => Status::unavailable(format!("{service}.{method}: {e}")),
    }
}

impl RpcService {
    async fn start(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<(String, String, Reply, Encoding), Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let q = request.into_inner();
        let timeout = crate::input::timeout(
            q.timeout_seconds.map(|t| t.to_string()).as_deref(),
            self.max_timeout,
        )
        .map_err(|e| Status::from(e.problem()))?;
        self.router.admit(&caller, &q.service, &q.method)?;
        let (args, encoding) = arguments(q.args).map_err(|e| Status::from(e.problem()))?;
        let reply = self
            .router
            .call(&q.service, &q.method, args, timeout)
            .await
            .map_err(|e| failure(&q.service, &q.method, e))?;
        Ok((q.service, q.method, reply, encoding))
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::InvokeReply, Status>> + Send>>;

#[tonic::async_trait]
impl Rpc for RpcService {
    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeReply>, Status> {
        let (service, method, reply, encoding) = self.start(request).await?;
        match reply {
            Reply::Value(value) => Ok(Response::new(encode(&value, encoding))),
            Reply::Stream(_) => Err(Status::failed_precondition(format!(
                "{service}.{method} answers with a stream: call InvokeStream"
            ))),
        }
    }

    type InvokeStreamStream = ReplyStream;

    async fn invoke_stream(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<Self::InvokeStreamStream>, Status> {
        let (service, method, reply, encoding) = self.start(request).await?;
        let stream: ReplyStream = match reply {
            Reply::Value(value) => Box::pin(futures::stream::iter([Ok(encode(&value, encoding))])),
            Reply::Stream(items) => Box::pin(futures::stream::unfold(
                (items, service, method),
                move |(mut items, service, method)| async move {
                    let item = items.next().await?;
                    let reply = item
                        .map(|v| encode(&v, encoding))
                        .map_err(|e| failure(&service, &method, RouteError::Call(e)));
                    Some((reply, (items, service, method)))
                },
            )),
        };
        Ok(Response::new(stream))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        Ok(Response::new(pb::ListServicesResponse {
            services: self.router.services(),
        }))
    }
}
