//! The REST front's OpenAPI document: what each handler's `#[utoipa::path]` says about itself,
//! completed here with what every operation shares, so that the document promises exactly what
//! the server answers and a generator of requests (schemathesis) can reach every operation.
//!
//! Added to every operation that lacks them:
//! - with a bearer requirement: 401 (no or bad token) and 403 (a permission lacking), as
//!   problem+json, and the `bearer` security scheme itself;
//! - with a JSON request body, or query parameters: 400 (a body or query that does not parse);
//! - under `/v1/`: 503 (the store or the signing keys unavailable; retry).
//!
//! Every `Problem` body is declared as `application/problem+json`, the type it is sent as.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

/// The content type of every `Problem` answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The security scheme the handlers' `security(("bearer" = []))` name.
pub const BEARER: &str = "bearer";

/// A `Problem` response described by `description`.
fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}

fn is_problem(content: &utoipa::openapi::Content) -> bool {
    matches!(&content.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"))
}

/// Adds the shared responses to one operation of `path`.
fn complete_operation(path: &str, operation: &mut Operation) {
    let guarded = operation
        .security
        .as_ref()
        .is_some_and(|list| !list.is_empty());
    let takes_json = operation
        .request_body
        .as_ref()
        .is_some_and(|body| body.content.contains_key("application/json"));
    let takes_query = operation.parameters.as_ref().is_some_and(|list| {
        list.iter()
            .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query)
    });
    let responses = &mut operation.responses.responses;
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| problem(description));
    };
    if guarded {
        add(
            "401",
            "No bearer token, or one that is not valid (expired, revoked, its user disabled)",
        );
        add("403", "The token lacks the permission the operation needs");
    }
    if path.starts_with("/v1/") {
        if takes_json || takes_query {
            add(
                "400",
                "A body or query that does not parse, or invalid values",
            );
        }
        add(
            "503",
            "The store or the signing keys are unavailable; retry after the Retry-After delay",
        );
    }
    for response in responses.values_mut() {
        if let RefOr::T(response) = response
            && let Some(content) = response.content.shift_remove("application/json")
        {
            let kind = if is_problem(&content) {
                PROBLEM_JSON
            } else {
                "application/json"
            };
            response.content.insert(kind.to_owned(), content);
        }
    }
}

/// Completes `doc` (see the module documentation).
pub fn complete(mut doc: OpenApi) -> OpenApi {
    for (path, item) in doc.paths.paths.iter_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            complete_operation(path, operation);
        }
    }
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from POST /oauth2/token"))
                    .build(),
            ),
        );
    doc
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// The document as served, as JSON.
    fn document() -> Value {
        let api = crate::rest::api_doc();
        serde_json::to_value(&api).expect("the document serializes")
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                found.push((path.clone(), method.clone(), operation.clone()));
            }
        }
        found
    }

    #[test]
    fn every_path_parameter_is_declared() {
        let doc = document();
        let mut missing = Vec::new();
        for (path, method, operation) in operations(&doc) {
            let declared: Vec<&str> = operation["parameters"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter(|p| p["in"] == "path" && p["required"] == true)
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            for segment in path.split('/') {
                if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
                    && !declared.contains(&name)
                {
                    missing.push(format!("{method} {path}: {{{name}}}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "undeclared path parameters: {missing:#?}"
        );
    }

    #[test]
    fn guarded_operations_document_their_refusals_as_problems() {
        let doc = document();
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        for (path, method, operation) in operations(&doc) {
            if operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
            {
                for status in ["401", "403"] {
                    let content = &operation["responses"][status]["content"];
                    assert!(
                        content[super::PROBLEM_JSON].is_object(),
                        "{method} {path} {status}: {content}"
                    );
                }
            }
            for (status, response) in operation["responses"].as_object().expect("responses") {
                if let Some(json) = response["content"]["application/json"].as_object() {
                    assert!(
                        !json["schema"]["$ref"]
                            .as_str()
                            .is_some_and(|r| r.ends_with("/Problem")),
                        "{method} {path} {status}: a Problem declared as application/json"
                    );
                }
            }
        }
    }
}
