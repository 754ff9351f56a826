//! Administration over HTTP (admin scope): the audit log. Key management stays on the command
//! line (`autoglm keys`), next to the database, so that a leaked admin key cannot mint more.

use std::sync::Arc;

use autoglm_store::AuditFilter;
use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::{Principal, Scope};
use crate::error::ApiError;
#[allow(unused_imports)] // named by the `utoipa::path` attribute
use crate::schemas::AuditList;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Only this tenant's rows.
    tenant: Option<String>,
    /// Only rows at or after this time, Unix milliseconds.
    since_ms: Option<i64>,
    /// At most this many rows, 1 to 10 000 (default 100).
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<usize>,
}

/// The audit log, newest first: every tenant's unless `tenant` is given (admin scope).
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", operation_id = "auditLog",
    params(AuditQuery),
    responses((status = 200, description = "Audit rows", body = AuditList)))]
pub(crate) async fn audit(
    State(st): State<Arc<AppState>>,
    principal: Principal,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    // The guard already demanded admin for /v1/admin; checked again where the data is served.
    principal.require(Scope::Admin)?;
    let q: AuditQuery = crate::tasks::query(&uri)?;
    let filter = AuditFilter {
        tenant: q.tenant,
        since_ms: q.since_ms,
        limit: match q.limit {
            None => 100,
            Some(n @ 1..=10_000) => n,
            Some(n) => {
                return Err(ApiError::bad_param(
                    "limit",
                    format!("limit must be from 1 to 10000, got {n}"),
                ));
            }
        },
    };
    let store = st.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.audit(&filter))
        .await
        .map_err(|e| ApiError::Internal(format!("reading the audit log: {e}")))?
        .map_err(|e| ApiError::Internal(format!("reading the audit log: {e}")))?;
    Ok(Json(json!({"object": "list", "data": rows})))
}
