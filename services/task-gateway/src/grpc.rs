//! The gateway's API over gRPC (`quartet.tasks.v1.Tasks`): the same operations as REST, the
//! same permissions, the same errors (as gRPC codes).

use std::sync::Arc;

use quartet_kit::error::{ErrorKind, Problem};
use quartet_kit::token::{Authenticator, authenticate_grpc};
use quartet_proto::tasks::v1 as pb;
use quartet_proto::tasks::v1::tasks_server::{Tasks, TasksServer};
use serde_json::value::RawValue;
use tonic::{Request, Response, Status};

use crate::api::{Api, Chord, Submit, TaskList, TaskStatus, WorkflowSubmitted};

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

impl TasksService {
    /// A gRPC submission as the API's, size-checked.
    fn submission(&self, q: pb::SubmitRequest) -> Result<Submit, Status> {
        self.api
            .check_size(q.args_json.len() + q.kwargs_json.len() + q.name.len())?;
        Ok(Submit {
            name: q.name,
            args: json_field("args_json", &q.args_json)?,
            kwargs: json_field("kwargs_json", &q.kwargs_json)?,
            queue: (!q.queue.is_empty()).then_some(q.queue),
            priority: q.priority,
            countdown: q.countdown,
            eta: None,
            expires: q.expires,
            idempotency_key: (!q.idempotency_key.is_empty()).then_some(q.idempotency_key),
            time_limit: q.time_limit,
            soft_time_limit: q.soft_time_limit,
            max_retries: q.max_retries,
            headers: q.headers.into_iter().collect(),
        })
    }

    fn submissions(&self, tasks: Vec<pb::SubmitRequest>) -> Result<Vec<Submit>, Status> {
        tasks.into_iter().map(|t| self.submission(t)).collect()
    }
}

fn workflow(submitted: WorkflowSubmitted) -> Response<pb::WorkflowResponse> {
    Response::new(pb::WorkflowResponse {
        id: submitted.id,
        group_id: submitted.group_id,
        task_ids: submitted.task_ids,
    })
}

fn task_status(status: TaskStatus) -> pb::TaskStatus {
    pb::TaskStatus {
        id: status.id,
        state: status.state,
        result_json: status.result.text().to_owned(),
        traceback: status.traceback,
        date_done: status.date_done,
    }
}

fn schedule(state: &crate::schedule::ScheduleState) -> pb::Schedule {
    pb::Schedule {
        schedule_json: serde_json::to_string(state).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let q = request.into_inner();
        let submitted = self.api.submit(&caller, self.submission(q)?).await?;
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
        Ok(Response::new(task_status(status)))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let q = request.into_inner();
        self.api.revoke(&caller, &q.id, q.terminate).await?;
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

    async fn submit_chain(
        &self,
        request: Request<pb::Workflow>,
    ) -> Result<Response<pb::WorkflowResponse>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let tasks = self.submissions(request.into_inner().tasks)?;
        Ok(workflow(self.api.chain(&caller, TaskList { tasks }).await?))
    }

    async fn submit_group(
        &self,
        request: Request<pb::Workflow>,
    ) -> Result<Response<pb::WorkflowResponse>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let tasks = self.submissions(request.into_inner().tasks)?;
        Ok(workflow(self.api.group(&caller, TaskList { tasks }).await?))
    }

    async fn submit_chord(
        &self,
        request: Request<pb::ChordRequest>,
    ) -> Result<Response<pb::WorkflowResponse>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let q = request.into_inner();
        let body = q.body.ok_or_else(|| {
            Status::from(Problem::new(
                ErrorKind::InvalidArgument,
                "invalid-workflow",
                "a chord needs a body",
            ))
        })?;
        let chord = Chord {
            header: self.submissions(q.header)?,
            body: self.submission(body)?,
        };
        Ok(workflow(self.api.chord(&caller, chord).await?))
    }

    async fn get_group(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let q = request.into_inner();
        let group = self.api.group_status(&caller, &q.id, q.wait).await?;
        Ok(Response::new(pb::GroupStatus {
            group_id: group.group_id,
            completed: group.completed as u32,
            total: group.total as u32,
            tasks: group.tasks.into_iter().map(task_status).collect(),
        }))
    }

    async fn put_schedule(
        &self,
        request: Request<pb::PutScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let q = request.into_inner();
        self.api.check_size(q.schedule_json.len())?;
        let definition = serde_json::from_str(&q.schedule_json).map_err(|e| {
            Status::from(Problem::new(
                ErrorKind::InvalidArgument,
                "invalid-schedule",
                format!("schedule_json is not a schedule {{task, args, kwargs, queue, cron | every}}: {e}"),
            ))
        })?;
        let state = self.api.put_schedule(&caller, &q.name, definition).await?;
        Ok(Response::new(schedule(&state)))
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        let listed = self.api.schedules(&caller).await?;
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: listed.schedules.iter().map(schedule).collect(),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let caller = authenticate_grpc(self.authenticator.as_ref(), &request).await?;
        self.api
            .delete_schedule(&caller, &request.into_inner().name)
            .await?;
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }
}
