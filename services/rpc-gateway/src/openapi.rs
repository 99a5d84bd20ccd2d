//! The gateway's OpenAPI documents.
//!
//! [`GatewayDoc`] describes the REST front's routes, generic over service and method; the kit
//! serves it, completed, at `/openapi.json`. [`document`] is what `GET /v1/openapi.json`
//! answers: the same routes, with the generic call replaced by one `POST
//! /v1/services/{service}/{method}` operation per method the backends describe
//! (`_zerorpc_inspect`), its positional arguments as a JSON array, its docstring as the
//! description. Each such operation answers as the generic one does, so it is a copy of it:
//! every status the gateway can give, problems as `application/problem+json`, completed by
//! the kit ([`quartet_kit::openapi::complete`]) as every Quartet document is. zerorpc carries
//! no types, so arguments and results are schemaless.

use quartet_kit::error::Problem;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::path::{HttpMethod, Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::{ArrayBuilder, Object, Schema, SchemaType};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr};

use crate::rest::{RemoteException, RemoteFailure, ServiceList};

/// The REST front's routes, for every service and method at once.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        crate::rest::services,
        crate::rest::service,
        crate::rest::openapi,
        crate::rest::call
    ),
    components(schemas(
        Problem,
        Reply,
        RemoteFailure,
        RemoteException,
        ServiceList,
        Description,
        Method,
        Backend
    )),
    tags((name = "rpc", description = "Calls to the zerorpc services behind the gateway"))
)]
pub struct GatewayDoc;

/// The path of the generic call operation, which [`document`] replaces with one per method.
const CALL: &str = "/v1/services/{service}/{method}";

/// A call's answer: `result` for a value, `items` for a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reply {
    /// What the method returned (MessagePack binaries as base64 text).
    pub result: Option<Value>,
    /// What it streamed, in order.
    pub items: Option<Vec<Value>>,
}

/// A service's methods, as its backends describe them, and each backend's health.
// What `Router::inspect` answers plus `backends`, as `GET /v1/services/{service}` sends it: a
// description only, never built (the schemathesis run in e2e/tests/openapi.rs checks real
// answers against it).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Description {
    /// The service, as named in `rpc.backends`.
    service: String,
    /// What the backend calls itself (`_zerorpc_name`); absent when no backend could say.
    name: Option<Value>,
    /// Its methods, by name; null when no backend could say.
    methods: Option<Vec<Method>>,
    /// Why no backend could describe it.
    inspect_error: Option<String>,
    /// Each backend and its health.
    backends: Vec<Backend>,
}

/// One method a backend describes.
// A description only, as `Description`.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Method {
    /// Its name.
    name: String,
    /// Its positional arguments' names; null when the backend does not say (zerorpc-python
    /// on Python 3.11 cannot).
    args: Option<Vec<String>>,
    /// Its docstring, as the backend gives it.
    doc: Option<Value>,
}

/// A backend of a service.
// A description only, as `Description`.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Backend {
    /// Its zerorpc endpoint, e.g. `tcp://10.0.0.7:4242`.
    endpoint: String,
    /// `up`, `down` or `unknown` (not heard from yet).
    health: String,
}

/// The generated document (see the module docs) for `services` (each what
/// [`crate::router::Router::inspect`] returns); `unavailable` lists services that could not be
/// asked, with the reason, under `x-quartet-unavailable`.
pub fn document(services: &[Value], unavailable: &[(String, String)]) -> Value {
    let mut doc = <GatewayDoc as utoipa::OpenApi>::openapi();
    let generic = doc.paths.paths.remove(CALL).and_then(|item| item.post);
    if let Some(generic) = generic {
        for service in services {
            let name = service["service"].as_str().unwrap_or_default();
            for method in service["methods"].as_array().into_iter().flatten() {
                let method_name = method["name"].as_str().unwrap_or_default();
                // Names the gateway refuses (upper case, say) are no operation of it.
                if crate::input::callable(name, method_name).is_err() {
                    continue;
                }
                doc.paths.paths.insert(
                    format!("/v1/services/{name}/{method_name}"),
                    PathItem::new(
                        HttpMethod::Post,
                        operation(&generic, name, method_name, method),
                    ),
                );
            }
        }
    }
    let mut doc: OpenApi = quartet_kit::openapi::complete(doc);
    doc.info.title = "Services behind quartet-rpc-gateway".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some("Generated from the zerorpc backends' _zerorpc_inspect.".into());
    let mut doc = serde_json::to_value(doc).unwrap_or_else(|_| json!({}));
    doc["x-quartet-unavailable"] = unavailable
        .iter()
        .map(|(s, why)| json!({"service": s, "reason": why}))
        .collect();
    doc
}

/// The operation calling `service.method`, described by `about` (`name`, `args`, `doc`): the
/// generic call's, with the method's name, docstring and arguments.
fn operation(generic: &Operation, service: &str, method: &str, about: &Value) -> Operation {
    let mut operation = generic.clone();
    let doc = about["doc"].as_str().unwrap_or_default();
    operation.operation_id = Some(format!("{service}.{method}"));
    operation.tags = Some(vec![service.to_owned()]);
    operation.summary = Some(doc.lines().next().unwrap_or_default().to_owned());
    operation.description = Some(doc.to_owned());
    if let Some(parameters) = operation.parameters.as_mut() {
        parameters.retain(|p| p.parameter_in != ParameterIn::Path);
    }
    let arguments = match about["args"].as_array() {
        Some(args) => {
            let names: Vec<&str> = args.iter().filter_map(Value::as_str).collect();
            ArrayBuilder::new()
                .description(Some(format!(
                    "positional arguments: [{}]",
                    names.join(", ")
                )))
                .min_items(Some(names.len()))
                .max_items(Some(names.len()))
        }
        None => ArrayBuilder::new().description(Some(
            "positional arguments (the backend does not describe them)",
        )),
    }
    .items(Object::with_type(SchemaType::AnyValue));
    if let Some(body) = operation.request_body.as_mut() {
        body.content.insert(
            "application/json".to_owned(),
            ContentBuilder::new()
                .schema(Some(RefOr::T(Schema::Array(arguments.build()))))
                .build(),
        );
    }
    operation.responses.responses.insert(
        "403".to_owned(),
        quartet_kit::openapi::problem_response(&format!(
            "The token lacks rpc:call:{service}.{method}"
        )),
    );
    operation
}

#[cfg(test)]
mod tests {
    use quartet_kit::openapi::PROBLEM_JSON;

    use super::*;

    #[test]
    fn each_method_becomes_an_operation_with_its_arguments() {
        let reports = json!({"service": "reports", "name": "reports", "methods": [
            {"name": "total", "args": ["rows", "column"], "doc": "Sums a column.\nMore words."},
            {"name": "ping", "args": null, "doc": null},
        ]});
        let doc = document(&[reports], &[("mail".into(), "no healthy backend".into())]);
        let total = &doc["paths"]["/v1/services/reports/total"]["post"];
        assert_eq!(total["operationId"], "reports.total");
        assert_eq!(total["summary"], "Sums a column.");
        let schema = &total["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(
            (&schema["minItems"], &schema["maxItems"]),
            (&json!(2), &json!(2))
        );
        assert!(
            schema["description"]
                .as_str()
                .unwrap_or_default()
                .contains("rows, column")
        );
        let ping = &doc["paths"]["/v1/services/reports/ping"]["post"];
        assert!(ping["requestBody"]["content"]["application/json"]["schema"]["maxItems"].is_null());
        assert!(
            ping["responses"]["403"]["description"]
                .as_str()
                .unwrap_or_default()
                .contains("rpc:call:reports.ping")
        );
        assert_eq!(doc["x-quartet-unavailable"][0]["service"], "mail");
    }

    /// The content type and schema reference of `status` in `responses`, when it has exactly
    /// one content type.
    fn answer<'a>(responses: &'a Value, status: &str) -> (&'a str, &'a Value) {
        let content = responses[status]["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{status} declares no content: {responses}"));
        assert_eq!(content.len(), 1, "{status}: {responses}");
        let (kind, body) = content.iter().next().expect("one content type");
        (kind.as_str(), &body["schema"]["$ref"])
    }

    #[test]
    fn every_answer_of_every_route_is_documented_with_its_type_and_schema() {
        let demo = json!({"service": "demo", "name": "demo", "methods": [
            {"name": "add", "args": null, "doc": null},
            {"name": "Upper", "args": null, "doc": null},
        ]});
        let doc = document(&[demo], &[]);
        let problem = json!("#/components/schemas/Problem");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.get(CALL).is_none(), "the generic call is replaced");
        assert!(
            paths.get("/v1/services/demo/Upper").is_none(),
            "a method the gateway refuses to call is no operation"
        );
        let add = &doc["paths"]["/v1/services/demo/add"]["post"]["responses"];
        for status in [
            "400", "401", "403", "404", "412", "413", "429", "503", "504",
        ] {
            assert_eq!(
                answer(add, status),
                (PROBLEM_JSON, &problem),
                "{status}: {add}"
            );
        }
        assert_eq!(
            answer(add, "422"),
            (PROBLEM_JSON, &json!("#/components/schemas/RemoteFailure"))
        );
        assert_eq!(
            answer(add, "200"),
            ("application/json", &json!("#/components/schemas/Reply"))
        );
        let parameters = &doc["paths"]["/v1/services/demo/add"]["post"]["parameters"];
        assert_eq!(
            parameters.as_array().map(|p| p.len()),
            Some(1),
            "{parameters}"
        );
        assert_eq!(parameters[0]["name"], "timeout");
        for (path, statuses, body) in [
            ("/v1/services", &["401", "503"][..], "ServiceList"),
            (
                "/v1/services/{service}",
                &["400", "401", "403", "404", "429", "503"][..],
                "Description",
            ),
            ("/v1/openapi.json", &["401", "429", "503"][..], ""),
        ] {
            let responses = &doc["paths"][path]["get"]["responses"];
            for status in statuses {
                assert_eq!(
                    answer(responses, status),
                    (PROBLEM_JSON, &problem),
                    "{path} {status}: {responses}"
                );
            }
            let (kind, schema) = answer(responses, "200");
            assert_eq!(kind, "application/json", "{path}");
            if !body.is_empty() {
                assert_eq!(schema, &json!(format!("#/components/schemas/{body}")));
            }
        }
        for schema in ["Problem", "Reply", "RemoteFailure", "Description"] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
        }
    }
}
