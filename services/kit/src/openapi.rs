//! What every REST API's OpenAPI document shares, added by the kit to the document each server
//! serves at `/openapi.json`, so that the document promises exactly what the server answers and
//! a generator of requests (schemathesis, `quartet_e2e::openapi`) can check every answer.
//!
//! [`complete`] adds, to every operation that lacks them:
//! - with a bearer requirement: 401 (no or bad token) and 403 (a permission lacking), both
//!   problems, and the `bearer` security scheme itself;
//! - under `/v1/`, with a JSON request body, query parameters or a path parameter that is not a
//!   string: 400 (a body, query or path that does not parse, which the kit's extractor settings
//!   answer as a problem).
//!
//! And it declares every `Problem` body as `application/problem+json`, the type
//! [`Problem`](crate::Problem) is sent as: `#[utoipa::path(... body = Problem)]` can only say
//! `application/json`.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

pub use crate::error::PROBLEM_JSON;

/// The security scheme the handlers' `security(("bearer" = []))` name.
pub const BEARER: &str = "bearer";

/// A `Problem` answer described by `description`, as `application/problem+json`.
pub fn problem_response(description: &str) -> RefOr<Response> {
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

/// Adds `status` as a problem described by `description` to `operation`, unless it already
/// documents that status.
pub fn add_problem(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| problem_response(description));
}

/// Calls `visit` with every operation of `doc` and its path.
pub fn for_each_operation(doc: &mut OpenApi, mut visit: impl FnMut(&str, &mut Operation)) {
    for (path, item) in doc.paths.paths.iter_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            visit(path, operation);
        }
    }
}

fn is_problem(content: &utoipa::openapi::Content) -> bool {
    matches!(&content.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"))
}

/// Whether a parameter's value can fail to parse: any type but a string.
fn parses(schema: Option<&RefOr<Schema>>) -> bool {
    match schema {
        Some(RefOr::T(Schema::Object(object))) => {
            !matches!(object.schema_type, SchemaType::Type(Type::String))
        }
        _ => true,
    }
}

fn guarded(operation: &Operation) -> bool {
    operation
        .security
        .as_ref()
        .is_some_and(|list| !list.is_empty())
}

/// Adds the shared answers to one operation of `path`.
fn complete_operation(path: &str, operation: &mut Operation) {
    if guarded(operation) {
        add_problem(
            operation,
            "401",
            "No bearer token, or one that is not valid (expired, revoked, its user disabled)",
        );
        add_problem(
            operation,
            "403",
            "The token lacks the permission the operation needs",
        );
    }
    let takes_json = operation
        .request_body
        .as_ref()
        .is_some_and(|body| body.content.contains_key("application/json"));
    let parsed_parameters = operation.parameters.as_ref().is_some_and(|list| {
        list.iter().any(|p| match p.parameter_in {
            ParameterIn::Query => true,
            ParameterIn::Path => parses(p.schema.as_ref()),
            _ => false,
        })
    });
    if path.starts_with("/v1/") && (takes_json || parsed_parameters) {
        add_problem(
            operation,
            "400",
            "A body, query or path that does not parse, or invalid values",
        );
    }
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response
            && let Some(content) = response.content.get("application/json")
            && is_problem(content)
            && let Some(content) = response.content.shift_remove("application/json")
        {
            response.content.insert(PROBLEM_JSON.to_owned(), content);
        }
    }
}

/// Completes `doc` (see the module documentation). Idempotent.
pub fn complete(mut doc: OpenApi) -> OpenApi {
    let mut any_guarded = false;
    for_each_operation(&mut doc, |path, operation| {
        any_guarded |= guarded(operation);
        complete_operation(path, operation);
    });
    if any_guarded {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                BEARER,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some(
                            "An access token from quartet-auth's POST /oauth2/token",
                        ))
                        .build(),
                ),
            );
    }
    doc
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use utoipa::OpenApi as _;

    use crate::Problem;

    #[derive(serde::Deserialize, utoipa::ToSchema)]
    #[allow(dead_code)]
    struct Body {
        name: String,
    }

    /// A guarded operation with a body and a numeric path parameter, documenting one problem.
    #[utoipa::path(post, path = "/v1/things/{id}", request_body = Body,
        params(("id" = u64, Path, description = "Thing id")),
        responses((status = 200, description = "Done"),
                  (status = 409, description = "Taken", body = Problem)),
        security(("bearer" = [])))]
    #[allow(dead_code)]
    fn post_thing() {}

    /// An open operation with a string path parameter and nothing to parse.
    #[utoipa::path(get, path = "/v1/names/{name}",
        params(("name" = String, Path, description = "A name")),
        responses((status = 200, description = "Found"),
                  (status = 404, description = "No such name", body = Problem)))]
    #[allow(dead_code)]
    fn get_name() {}

    #[derive(utoipa::OpenApi)]
    #[openapi(paths(post_thing, get_name), components(schemas(Problem)))]
    struct Doc;

    fn completed() -> Value {
        serde_json::to_value(super::complete(Doc::openapi())).expect("serializes")
    }

    #[test]
    fn problems_are_declared_as_problem_json() {
        let doc = completed();
        let taken = &doc["paths"]["/v1/things/{id}"]["post"]["responses"]["409"]["content"];
        assert!(taken[super::PROBLEM_JSON].is_object(), "{taken}");
        assert!(taken["application/json"].is_null(), "{taken}");
        let missing = &doc["paths"]["/v1/names/{name}"]["get"]["responses"]["404"]["content"];
        assert!(missing[super::PROBLEM_JSON].is_object(), "{missing}");
    }

    #[test]
    fn guarded_operations_document_401_and_403_and_parsed_input_400() {
        let doc = completed();
        let responses = &doc["paths"]["/v1/things/{id}"]["post"]["responses"];
        for status in ["400", "401", "403"] {
            assert!(
                responses[status]["content"][super::PROBLEM_JSON].is_object(),
                "{status}: {responses}"
            );
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"],
            json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "An access token from quartet-auth's POST /oauth2/token"})
        );
        let open = &doc["paths"]["/v1/names/{name}"]["get"]["responses"];
        for status in ["400", "401", "403"] {
            assert!(open[status].is_null(), "{status}: {open}");
        }
    }

    #[test]
    fn completing_twice_changes_nothing() {
        let once = super::complete(Doc::openapi());
        let twice = super::complete(once.clone());
        assert_eq!(
            serde_json::to_value(once).expect("serializes"),
            serde_json::to_value(twice).expect("serializes")
        );
    }
}
