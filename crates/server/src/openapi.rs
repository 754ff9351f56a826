//! The OpenAPI 3.1 document of the HTTP API, generated from the code and served at
//! `GET /openapi.json` (no key needed).
//!
//! Every route is registered through `utoipa_axum::routes!` from its handler's
//! `#[utoipa::path]` attribute ([`crate::router`]), so the router and the document are built from
//! the same declarations: a route cannot be served without being documented. Request schemas
//! come from the wire types' `ToSchema` derives, answers built with `json!` from
//! [`crate::schemas`].
//!
//! What every operation shares is added here once, from the rules the server actually applies,
//! rather than repeated on each handler: the security requirement and required scope from
//! [`auth::required_scope`] (none on the open paths), and the error answers — 400 for operations
//! with a body or parameters, 413 for those with a body, 404 for those with path parameters,
//! 401/403/429 for those behind a key, and `default` — all in the [`ErrorBody`] shape.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::auth;
use crate::wire::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Open-AutoGLM",
        description = "The OpenAI-compatible model API, agent tasks and tenant memories of \
            `autoglm serve`. Every error is an `ErrorBody`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "openai", description = "OpenAI-compatible completions and models (scope `models`)"),
        (name = "tasks", description = "Agent tasks of the caller's tenant (scope `tasks`)"),
        (name = "memories", description = "Long-term memory of the caller's tenant (scope `tasks`)"),
        (name = "admin", description = "Administration (scope `admin`)"),
        (name = "service", description = "Health, metrics and this document"),
    ),
    components(schemas(ErrorBody)),
)]
struct ApiDoc;

/// The name of the security schemes in the document.
const BEARER: &str = "bearer";
const API_KEY_HEADER: &str = "apiKeyHeader";

/// The document, as served.
pub fn document() -> Value {
    let (_, api) = crate::router().split_for_parts();
    let mut doc = serde_json::to_value(ApiDoc::openapi().merge_from(api)).unwrap_or(Value::Null);
    add_conventions(&mut doc);
    doc
}

/// This document, served at `/openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "service", operation_id = "openapi",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object)))]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    let text = DOC.get_or_init(|| document().to_string());
    ([(header::CONTENT_TYPE, "application/json")], text.as_str())
}

fn error_response(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
}

/// The shared parts of every operation (see the module docs).
fn add_conventions(doc: &mut Value) {
    let mut retry = error_response("Rate limit or queue full: try again after `Retry-After`");
    retry["headers"] = json!({"Retry-After": {"description": "Seconds to wait",
                                              "schema": {"type": "integer", "minimum": 1}}});
    let mut unauthorized = error_response("Invalid or missing API key");
    unauthorized["headers"] = json!({"WWW-Authenticate": {"schema": {"type": "string"}}});
    let components = &mut doc["components"];
    components["responses"] = json!({
        "BadRequest": error_response("Malformed body, wrong types, bad parameter values"),
        "Unauthorized": unauthorized,
        "Forbidden": error_response("The key lacks the scope this route needs"),
        "NotFound": error_response("No such thing for this tenant (another tenant's ids look unknown too)"),
        "PayloadTooLarge": error_response("The body is over the limit (4 MiB)"),
        "TooManyRequests": retry,
        "Error": error_response("Any other error, in the same shape"),
    });
    components["securitySchemes"] = json!({
        BEARER: {"type": "http", "scheme": "bearer",
                 "description": "An API key from `autoglm keys create`: `Authorization: Bearer agk_…`"},
        API_KEY_HEADER: {"type": "apiKey", "in": "header", "name": "x-api-key",
                         "description": "The same key as `x-api-key: agk_…`"},
    });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        let scope = auth::required_scope(path);
        for op in item.values_mut().filter_map(Value::as_object_mut) {
            let has_body = op.contains_key("requestBody");
            let params = op
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let in_path = params.iter().any(|p| p["in"] == "path");
            let mut add = |status: &str, name: &str| {
                if let Some(r) = op
                    .entry("responses")
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                {
                    r.entry(status).or_insert_with(
                        || json!({"$ref": format!("#/components/responses/{name}")}),
                    );
                }
            };
            if has_body || !params.is_empty() {
                add("400", "BadRequest");
            }
            if has_body {
                add("413", "PayloadTooLarge");
            }
            if in_path {
                add("404", "NotFound");
            }
            if scope.is_some() {
                add("401", "Unauthorized");
                add("403", "Forbidden");
                add("429", "TooManyRequests");
            }
            add("default", "Error");
            match scope {
                Some(s) => {
                    op.insert(
                        "security".into(),
                        json!([{BEARER: []}, {API_KEY_HEADER: []}]),
                    );
                    op.insert("x-required-scope".into(), json!(s.name()));
                }
                // An empty list: no key needed.
                None => {
                    op.insert("security".into(), json!([]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_get_the_shared_errors_and_security_by_their_path() {
        let doc = document();
        let op = |path: &str, method: &str| doc["paths"][path][method].clone();
        let get_task = op("/v1/tasks/{id}", "get");
        assert_eq!(get_task["x-required-scope"], "tasks");
        assert_eq!(get_task["security"][0], json!({"bearer": []}));
        for s in ["404", "401", "403", "429", "default"] {
            assert!(get_task["responses"].get(s).is_some(), "{s}: {get_task}");
        }
        assert!(get_task["responses"].get("413").is_none(), "no body");
        let create = op("/v1/tasks", "post");
        assert!(create["responses"].get("413").is_some());
        assert!(
            create["responses"].get("404").is_none(),
            "no path parameter"
        );
        assert_eq!(op("/v1/admin/audit", "get")["x-required-scope"], "admin");
        for open in ["/health", "/openapi.json"] {
            let o = op(open, "get");
            assert_eq!(o["security"], json!([]), "{open}");
            assert!(o["responses"].get("401").is_none(), "{open}");
        }
    }
}
