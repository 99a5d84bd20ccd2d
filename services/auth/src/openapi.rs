//! The REST front's OpenAPI document: what each handler's `#[utoipa::path]` says about itself,
//! completed with what every operation shares, so that the document promises exactly what the
//! server answers and a generator of requests (schemathesis) can reach every operation.
//!
//! The kit adds what every Quartet REST API shares ([`quartet_kit::openapi::complete`]:
//! problem+json, 401 and 403 on guarded operations, 400 where input must parse, the `bearer`
//! security scheme); this adds what is the auth service's own: every operation under `/v1/`
//! may answer 503 (the store or the signing keys unavailable; retry).

use quartet_kit::openapi::{add_problem, for_each_operation};
use utoipa::openapi::OpenApi;

#[cfg(test)]
use quartet_kit::openapi::PROBLEM_JSON;

/// Completes `doc` (see the module documentation).
pub fn complete(mut doc: OpenApi) -> OpenApi {
    for_each_operation(&mut doc, |path, operation| {
        if path.starts_with("/v1/") {
            add_problem(
                operation,
                "503",
                "The store or the signing keys are unavailable; retry after the Retry-After delay",
            );
        }
    });
    quartet_kit::openapi::complete(doc)
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
