//! The zerorpc front: the gateway is itself a zerorpc server, and a call to `service.method`
//! goes through the router to that service's backends, so existing zerorpc clients only
//! change the address they connect to. The caller's token rides in the event header
//! (`authorization: Bearer <token>`, which zerorpc-python's middleware hooks can add); a call
//! needs `rpc:call:<service>.<method>`. Refusals are zerorpc errors naming the reason: a name
//! outside [`crate::input`]'s rule is `InvalidArgument` (a zerorpc protocol event's name,
//! `_zpc_…`, is `NameError`), checked before the token.

use std::sync::Arc;
use std::time::Duration;

use quartet_kit::token::Authenticator;

use crate::router::{RouteError, Router};
use crate::zerorpc::client::{CallError, Reply};
use crate::zerorpc::event::Event;
use crate::zerorpc::server::{Answer, RemoteError, Service, Work};

/// The header key carrying the caller's token.
pub const AUTHORIZATION: &str = "authorization";

/// The gateway as a zerorpc service forwarding `service.method` calls.
pub fn service(
    router: Arc<Router>,
    authenticator: Arc<dyn Authenticator>,
    timeout: Duration,
) -> Service {
    Service::new("quartet-rpc-gateway").fallback(move |request: Event| -> Work {
        let (router, authenticator) = (router.clone(), authenticator.clone());
        Box::pin(async move { forward(&router, authenticator.as_ref(), timeout, request).await })
    })
}

async fn forward(
    router: &Router,
    authenticator: &dyn Authenticator,
    timeout: Duration,
    request: Event,
) -> Result<Answer, RemoteError> {
    let Some((service, method)) = request.name.split_once('.') else {
        return Err(RemoteError::new(
            "NameError",
            format!("{}: call service.method through the gateway", request.name),
        ));
    };
    // The names first, before any token: the same rule as every front (`input::callable`).
    crate::input::callable(service, method)
        .map_err(|e| RemoteError::new(e.zerorpc_name(), e.to_string()))?;
    let token = request
        .header_str(AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            RemoteError::new(
                "Unauthenticated",
                format!("a token is required: header {AUTHORIZATION:?} = \"Bearer <token>\""),
            )
        })?;
    let caller = authenticator
        .authenticate(token)
        .await
        .map_err(|e| RemoteError::new("Unauthenticated", e.to_string()))?;
    router.admit(&caller, service, method).map_err(|p| {
        use quartet_kit::error::ErrorKind;
        let name = match p.kind() {
            ErrorKind::ResourceExhausted => "RateLimited",
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::NotFound => "NameError",
            _ => "PermissionDenied",
        };
        RemoteError::new(name, p.detail)
    })?;
    let args = request.positional_args();
    // Continue the caller's trace when its event header carries one.
    let carried: std::collections::HashMap<String, String> = request
        .header
        .extra
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect();
    let span = tracing::info_span!("zerorpc.front", otel.kind = "server", call = %request.name);
    quartet_kit::telemetry::adopt_parent(&span, &quartet_kit::telemetry::MapView(&carried));
    let routed = {
        use tracing::Instrument as _;
        router
            .call(service, method, args, timeout)
            .instrument(span)
            .await
    };
    match routed {
        Ok(Reply::Value(value)) => Ok(Answer::Value(value)),
        Ok(Reply::Stream(items)) => Ok(Answer::Stream(Box::pin(futures::stream::unfold(
            items,
            |mut items| async move {
                let item = items.next().await?;
                Some((item.map_err(|e| gateway_error(RouteError::Call(e))), items))
            },
        )))),
        Err(e) => Err(gateway_error(e)),
    }
}

fn gateway_error(e: RouteError) -> RemoteError {
    match e {
        RouteError::Call(CallError::Remote(remote)) => remote,
        RouteError::UnknownService(name) => {
            RemoteError::new("NameError", format!("no service named {name:?}"))
        }
        RouteError::NoBackend { .. } | RouteError::Draining => {
            RemoteError::new("Unavailable", e.to_string())
        }
        RouteError::Call(
            CallError::LostRemote(_) | CallError::Disconnected | CallError::Closed,
        ) => RemoteError::new("LostRemote", e.to_string()),
        RouteError::Call(CallError::Timeout(_)) => {
            RemoteError::new("TimeoutExpired", e.to_string())
        }
        RouteError::Call(CallError::Protocol(_)) => {
            RemoteError::new("ProtocolError", e.to_string())
        }
    }
}
