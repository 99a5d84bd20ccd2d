//! One mapping from a service's typed errors to the wire: RFC 9457 `application/problem+json`
//! for REST (actix-web) and `tonic::Status` for gRPC.
//!
//! A service's error enum implements [`ApiError`], saying which [`ErrorKind`] each variant is;
//! [`Problem::from_error`] does the rest. The kind decides the HTTP status and the gRPC code
//! together, so the same failure reads the same on both fronts, and says what the caller should
//! do next: fix the request, authenticate, retry later, or report a bug.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// The classes of failure, each with one HTTP status and one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or a value is out of range; fix it, do not retry as is.
    InvalidArgument,
    /// No credentials, or credentials that are not valid; authenticate and retry.
    Unauthenticated,
    /// Authenticated, but not allowed; retrying will not help.
    PermissionDenied,
    /// The named thing does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// The system is not in a state where this can run (e.g. a write to a read-only replica).
    FailedPrecondition,
    /// A concurrent change won; re-read and retry.
    Aborted,
    /// A quota or rate limit is exhausted; back off.
    ResourceExhausted,
    /// Temporarily unable to serve (no leader, store unreachable, draining); retry with backoff.
    Unavailable,
    /// The deadline passed before the work finished; it may or may not have happened.
    DeadlineExceeded,
    /// A bug or an unexpected fault on our side; the detail is logged, not returned.
    Internal,
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::AlreadyExists | ErrorKind::Aborted => StatusCode::CONFLICT,
            ErrorKind::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
            ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code for this kind.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::Aborted => tonic::Code::Aborted,
            ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// A stable, URL-safe name, used in the problem `type`.
    pub fn slug(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::NotFound => "not-found",
            ErrorKind::AlreadyExists => "already-exists",
            ErrorKind::FailedPrecondition => "failed-precondition",
            ErrorKind::Aborted => "aborted",
            ErrorKind::ResourceExhausted => "resource-exhausted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::DeadlineExceeded => "deadline-exceeded",
            ErrorKind::Internal => "internal",
        }
    }
}

/// What a service error must say about itself to be sent over the wire.
pub trait ApiError: std::error::Error {
    /// Which class of failure this is.
    fn kind(&self) -> ErrorKind;

    /// A short, stable code more precise than the kind (e.g. `duplicate-key`), used in the
    /// problem `type`. Defaults to the kind's slug.
    fn code(&self) -> &'static str {
        self.kind().slug()
    }

    /// When the caller may retry, for `Unavailable` and `ResourceExhausted`.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// An RFC 9457 problem document, and the carrier of an error to either front.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Problem {
    /// A URI naming the problem class: `urn:quartet:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the class, the same for every occurrence.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong this time, in words the caller can act on.
    pub detail: String,
    /// The trace this failure belongs to, for finding it in logs and traces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Seconds after which a retry may succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    #[serde(skip)]
    #[schema(ignore)]
    kind: Option<ErrorKind>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.title, self.detail)
    }
}

impl Problem {
    /// A problem of `kind` with `detail`, tagged with the current trace.
    pub fn new(kind: ErrorKind, code: &str, detail: impl Into<String>) -> Self {
        let status = kind.http_status();
        Self {
            problem_type: format!("urn:quartet:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            trace_id: crate::telemetry::current_trace_id(),
            retry_after_seconds: None,
            kind: Some(kind),
        }
    }

    /// The problem for a service error. Internal errors are logged in full and returned
    /// without their detail, which may hold things a caller must not see.
    pub fn from_error<E: ApiError>(error: &E) -> Self {
        let kind = error.kind();
        let detail = if kind == ErrorKind::Internal {
            tracing::error!(error = %error, "internal error");
            "internal error; it has been logged with this trace id".to_owned()
        } else {
            error.to_string()
        };
        let mut problem = Self::new(kind, error.code(), detail);
        problem.retry_after_seconds = error.retry_after().map(|d| d.as_secs().max(1));
        problem
    }

    /// The failure class.
    pub fn kind(&self) -> ErrorKind {
        self.kind.unwrap_or(ErrorKind::Internal)
    }
}

impl<E: ApiError> From<E> for Problem {
    fn from(error: E) -> Self {
        Problem::from_error(&error)
    }
}

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        self.kind().http_status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.content_type(PROBLEM_JSON);
        if let Some(seconds) = self.retry_after_seconds {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        response.json(self)
    }
}

impl From<Problem> for tonic::Status {
    fn from(problem: Problem) -> Self {
        let mut status = tonic::Status::new(problem.kind().grpc_code(), problem.detail.clone());
        if let Some(seconds) = problem.retry_after_seconds
            && let Ok(value) = seconds.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[derive(Debug, thiserror::Error)]
    enum StoreError {
        #[error("user {0:?} already exists")]
        Duplicate(String),
        #[error("no leader for shard {0}; retry shortly")]
        NoLeader(u32),
        #[error("disk checksum mismatch in segment 7")]
        Corrupt,
    }

    impl ApiError for StoreError {
        fn kind(&self) -> ErrorKind {
            match self {
                StoreError::Duplicate(_) => ErrorKind::AlreadyExists,
                StoreError::NoLeader(_) => ErrorKind::Unavailable,
                StoreError::Corrupt => ErrorKind::Internal,
            }
        }
        fn code(&self) -> &'static str {
            match self {
                StoreError::Duplicate(_) => "duplicate-user",
                _ => self.kind().slug(),
            }
        }
        fn retry_after(&self) -> Option<Duration> {
            matches!(self, StoreError::NoLeader(_)).then_some(Duration::from_millis(200))
        }
    }

    #[test]
    fn one_error_maps_to_matching_http_and_grpc_forms() {
        let problem = Problem::from(StoreError::Duplicate("ada".into()));
        let response = problem.error_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .expect("content type"),
            PROBLEM_JSON
        );
        let body = response.into_body().try_into_bytes().expect("sized body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["type"], "urn:quartet:problem:duplicate-user");
        assert_eq!(json["title"], "Conflict");
        assert_eq!(json["status"], 409);
        assert_eq!(json["detail"], "user \"ada\" already exists");

        let status = tonic::Status::from(problem);
        assert_eq!(status.code(), tonic::Code::AlreadyExists);
        assert_eq!(status.message(), "user \"ada\" already exists");
    }

    #[test]
    fn retryable_errors_say_when_and_internal_ones_hide_their_detail() {
        let problem = Problem::from(StoreError::NoLeader(3));
        assert_eq!(problem.retry_after_seconds, Some(1));
        let response = problem.error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get("retry-after").expect("retry-after"),
            "1"
        );
        let status = tonic::Status::from(problem);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            status
                .metadata()
                .get("retry-after")
                .map(|v| v.to_str().ok()),
            Some(Some("1"))
        );

        let internal = Problem::from(StoreError::Corrupt);
        assert_eq!(internal.status, 500);
        assert!(!internal.detail.contains("checksum"), "{}", internal.detail);
    }

    #[test]
    fn every_kind_has_consistent_codes() {
        use ErrorKind::*;
        for kind in [
            InvalidArgument,
            Unauthenticated,
            PermissionDenied,
            NotFound,
            AlreadyExists,
            FailedPrecondition,
            Aborted,
            ResourceExhausted,
            Unavailable,
            DeadlineExceeded,
            Internal,
        ] {
            let client_fault = kind.http_status().is_client_error();
            let server_side = matches!(kind, Unavailable | DeadlineExceeded | Internal);
            assert_eq!(client_fault, !server_side, "{kind:?}");
            assert_ne!(kind.grpc_code(), tonic::Code::Ok);
        }
    }
}
