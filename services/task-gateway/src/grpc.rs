//! The gateway's API over gRPC (`quartet.tasks.v1.Tasks`): the same operations as REST, the
//! same permissions, the same errors (as gRPC codes).

use std::sync::Arc;

use quartet_kit::error::{ErrorKind, Problem};
use quartet_kit::token::{Authenticator, authenticate_grpc};
use quartet_proto::tasks::v1 as pb;
use quartet_proto::tasks::v1::tasks_server::{Tasks, TasksServer};
use serde_json::value::RawValue;
use tonic::{Request, Response, Status};

use crate::api::{Api, Submit};

/// The gRPC service.
pub struct TasksService {
    api: Arc<Api>,
    authenticator: Arc<dyn Authenticator>,
}

impl TasksService {
    /// The service as a tonic server.
    pub fn server(api: Arc<Api>, authenticator: Arc<dyn Authenticator>) -> TasksServer<Self> {
        TasksServer::new(Self { api, authenticator })
    }
}

fn json_field(name: &str, text: &str) -> Result<Option<Box<RawValue>>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    RawValue::from_string(text.to_owned())
        .map(Some)
        .map_err(|e| {
            Problem::new(
                ErrorKind::InvalidArgument,
                "invalid-submission",
                format!("{name} is not JSON: {e}"),
            )
            .into()
        })
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let q = request.into_inner();
        self.api
            .check_size(q.args_json.len() + q.kwargs_json.len() + q.name.len())?;
        let submit = Submit {
            name: q.name,
            args: json_field("args_json", &q.args_json)?,
            kwargs: json_field("kwargs_json", &q.kwargs_json)?,
            queue: (!q.queue.is_empty()).then_some(q.queue),
            priority: q.priority,
            countdown: q.countdown,
            eta: None,
            expires: q.expires,
            idempotency_key: (!q.idempotency_key.is_empty()).then_some(q.idempotency_key),
            time_limit: None,
            soft_time_limit: None,
        };
        let submitted = self.api.submit(&caller, submit).await?;
        Ok(Response::new(pb::SubmitResponse {
            id: submitted.id,
            queue: submitted.queue,
            duplicate: submitted.duplicate,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::TaskStatus>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let q = request.into_inner();
        let status = self.api.status(&caller, q.id, q.wait).await?;
        Ok(Response::new(pb::TaskStatus {
            id: status.id,
            state: status.state,
            result_json: status.result.to_string(),
            traceback: status.traceback,
            date_done: status.date_done,
        }))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        self.api.revoke(&caller, &request.into_inner().id).await?;
        Ok(Response::new(pb::RevokeResponse {}))
    }

    async fn queue_stats(
        &self,
        request: Request<pb::QueueStatsRequest>,
    ) -> Result<Response<pb::QueueStatsResponse>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let stats = self.api.stats(&caller, &request.into_inner().queue).await?;
        Ok(Response::new(pb::QueueStatsResponse {
            stats_json: serde_json::to_string(&stats).unwrap_or_default(),
        }))
    }
}
