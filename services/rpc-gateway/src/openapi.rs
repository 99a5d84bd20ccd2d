//! The OpenAPI document of the services behind the gateway, generated from what their
//! backends say of themselves (`_zerorpc_inspect`): one `POST /v1/services/{service}/{method}`
//! operation per method, its positional arguments as a JSON array, its docstring as the
//! description. zerorpc carries no types, so arguments and results are schemaless.

use serde_json::{Value, json};

/// The document for `services` (each what [`crate::router::Router::inspect`] returns);
/// `unavailable` lists services that could not be asked, with the reason, under
/// `x-quartet-unavailable`.
pub fn document(services: &[Value], unavailable: &[(String, String)]) -> Value {
    let mut paths = serde_json::Map::new();
    for service in services {
        let name = service["service"].as_str().unwrap_or_default();
        for method in service["methods"].as_array().into_iter().flatten() {
            let method_name = method["name"].as_str().unwrap_or_default();
            let doc = method["doc"].as_str().unwrap_or_default();
            let summary = doc.lines().next().unwrap_or_default();
            let arguments = match method["args"].as_array() {
                Some(args) => {
                    let names: Vec<&str> = args.iter().filter_map(Value::as_str).collect();
                    json!({
                        "type": "array",
                        "description": format!("positional arguments: [{}]", names.join(", ")),
                        "items": {},
                        "minItems": names.len(),
                        "maxItems": names.len(),
                    })
                }
                None => json!({
                    "type": "array",
                    "description": "positional arguments (the backend does not describe them)",
                    "items": {},
                }),
            };
            paths.insert(
                format!("/v1/services/{name}/{method_name}"),
                json!({"post": {
                    "operationId": format!("{name}.{method_name}"),
                    "tags": [name],
                    "summary": summary,
                    "description": doc,
                    "security": [{"bearer": []}],
                    "parameters": [{
                        "name": "timeout", "in": "query", "required": false,
                        "description": "seconds the call may take (at most the gateway's rpc.timeout_seconds)",
                        "schema": {"type": "number"},
                    }],
                    "requestBody": {"required": false, "content": {"application/json": {"schema": arguments}}},
                    "responses": {
                        "200": {"description": "the method's result, or a stream's items", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Reply"}}}},
                        "401": {"description": "no valid token"},
                        "403": {"description": format!("the token lacks rpc:call:{name}.{method_name}")},
                        "422": {"description": "the method raised: its name, message and traceback"},
                        "429": {"description": "over the caller's rate limit"},
                        "503": {"description": "the backend was lost, none is healthy, or the gateway is draining"},
                        "504": {"description": "no answer within the deadline"},
                    },
                }}),
            );
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Services behind quartet-rpc-gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Generated from the zerorpc backends' _zerorpc_inspect.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Reply": {"type": "object", "properties": {"result": {}, "items": {"type": "array", "items": {}}}}},
        },
        "x-quartet-unavailable": unavailable.iter().map(|(s, why)| json!({"service": s, "reason": why})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
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
}
