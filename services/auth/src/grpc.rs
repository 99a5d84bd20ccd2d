//! The gRPC front: `quartet.auth.v1.Authz`, the same questions as REST `/v1/authz`, answered
//! by the same code ([`crate::authz`]). The caller's token comes in the `authorization` metadata.

use std::sync::Arc;

use quartet_kit::token::authenticate_grpc;
use quartet_proto::auth::v1::authz_server::{Authz, AuthzServer};
use quartet_proto::auth::v1::check_url_response::Outcome as WireOutcome;
use quartet_proto::auth::v1::{CheckRequest, CheckResponse, CheckUrlRequest, CheckUrlResponse};
use tonic::{Request, Response, Status};

use crate::authz::{self, UrlSubject};
use crate::service::Auth;
use crate::urls::{Outcome, Request as UrlRequest};

/// The `Authz` service.
pub struct AuthzService {
    auth: Arc<Auth>,
}

impl AuthzService {
    /// The service as a tonic server, ready for `Routes::add_service`.
    pub fn server(auth: Arc<Auth>) -> AuthzServer<Self> {
        AuthzServer::new(Self { auth })
    }
}

#[tonic::async_trait]
impl Authz for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let caller = authenticate_grpc(self.auth.as_ref(), &request).await?;
        let q = request.into_inner();
        let answers = authz::check(
            &self.auth,
            &caller,
            Some(&q.subject),
            &q.roles,
            &q.permissions,
        )
        .await?;
        Ok(Response::new(CheckResponse {
            subject: answers.subject,
            roles: answers.roles.into_iter().collect(),
            permissions: answers.permissions.into_iter().collect(),
        }))
    }

    async fn check_url(
        &self,
        request: Request<CheckUrlRequest>,
    ) -> Result<Response<CheckUrlResponse>, Status> {
        let caller = authenticate_grpc(self.auth.as_ref(), &request).await?;
        let q = request.into_inner();
        let port = u16::try_from(q.port)
            .map_err(|_| Status::invalid_argument(format!("port {} is out of range", q.port)))?;
        let who = if q.anonymous {
            UrlSubject::Anonymous
        } else if q.subject.is_empty() {
            UrlSubject::Caller
        } else {
            UrlSubject::Named(&q.subject)
        };
        let request = UrlRequest {
            method: &q.method,
            path: &q.path,
            port: if port == 0 { 80 } else { port },
            tls: q.tls,
        };
        let decision = authz::check_url(&self.auth, &caller, Some(&q.rules), &request, who).await?;
        let (outcome, detail) = match decision.outcome {
            Outcome::Allow => (WireOutcome::Allow, String::new()),
            Outcome::Unauthenticated(challenge) => (
                WireOutcome::Unauthenticated,
                format!("{challenge:?}").to_lowercase(),
            ),
            Outcome::Forbidden(why) => (WireOutcome::Forbidden, why),
            Outcome::Redirect { scheme, port } => {
                (WireOutcome::Redirect, format!("{scheme}:{port}"))
            }
        };
        Ok(Response::new(CheckUrlResponse {
            path: decision.path,
            rule: decision.rule.and_then(|r| u32::try_from(r).ok()),
            outcome: outcome as i32,
            detail,
            no_session_creation: decision.no_session_creation,
            logout: decision.logout,
        }))
    }
}
