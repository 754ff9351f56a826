//! Administration over HTTP (admin scope): the audit log. Key management stays on the command
//! line (`autoglm keys`), next to the database, so that a leaked admin key cannot mint more.

use std::sync::Arc;

use autoglm_store::AuditFilter;
use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{Principal, Scope};
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    tenant: Option<String>,
    /// Unix milliseconds.
    since_ms: Option<i64>,
    limit: Option<usize>,
}

/// `GET /v1/admin/audit?tenant=T&since_ms=MS&limit=N`: rows newest first, every tenant's
/// unless `tenant` is given.
pub(crate) async fn audit(
    State(st): State<Arc<AppState>>,
    principal: Principal,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    // The guard already demanded admin for /v1/admin; checked again where the data is served.
    principal.require(Scope::Admin)?;
    let filter = AuditFilter {
        tenant: q.tenant,
        since_ms: q.since_ms,
        limit: q.limit.unwrap_or(100).clamp(1, 10_000),
    };
    let store = st.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.audit(&filter))
        .await
        .map_err(|e| ApiError::Internal(format!("reading the audit log: {e}")))?
        .map_err(|e| ApiError::Internal(format!("reading the audit log: {e}")))?;
    Ok(Json(json!({"object": "list", "data": rows})))
}
