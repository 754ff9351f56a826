//! The memories API: the caller's tenant's long-term memory (the facts and task outcomes the
//! agent recalls), searched, listed, added to and pruned over JSON. Every handler acts for a
//! [`Principal`] and touches only its tenant's memories: another tenant's id is a 404, exactly
//! like an unknown one.

use std::sync::Arc;

use autoglm_store::Memory;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::tasks::{page_limit, parse, query};

/// Longest fact accepted, in characters.
const MAX_TEXT_CHARS: usize = 4000;

/// `GET /v1/memories` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct MemoriesQuery {
    /// Words to search for, best match first (any word may match; common words are ignored).
    /// Without it (or empty), the newest memories.
    #[serde(default)]
    q: Option<String>,
    /// How many, 1 to 100 (default 20).
    #[serde(default)]
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
}

/// `POST /v1/memories`: a fact to remember.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"text": "Invoices are due on the 5th of each month"}))]
pub(crate) struct NewMemory {
    /// Non-empty, at most 4000 characters.
    text: String,
}

/// A remembered fact or task outcome.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Memory)]
pub(crate) struct MemoryObject {
    id: i64,
    /// `memory`
    object: &'static str,
    /// `fact` (saved by a person or a task's `memory_save`) or `outcome` (a task's result).
    kind: String,
    text: String,
    /// The task it came from, if any.
    task_id: Option<String>,
    /// Unix seconds.
    created_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemoryList {
    /// `list`
    object: &'static str,
    data: Vec<MemoryObject>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemoryDeleted {
    id: i64,
    /// `memory`
    object: &'static str,
    deleted: bool,
}

impl From<Memory> for MemoryObject {
    fn from(m: Memory) -> Self {
        MemoryObject {
            id: m.id,
            object: "memory",
            kind: m.kind,
            text: m.text,
            task_id: m.task_id,
            created_at: m.created_ms / 1000,
        }
    }
}

fn store_error(e: autoglm_store::StoreError) -> ApiError {
    ApiError::Internal(format!("memory: {e}"))
}

/// Search the tenant's memories, or list the newest.
#[utoipa::path(get, path = "/v1/memories", tag = "memories", operation_id = "listMemories",
    params(MemoriesQuery),
    responses((status = 200, description = "Best match (or newest) first", body = MemoryList)))]
pub(crate) async fn list(
    State(st): State<Arc<AppState>>,
    p: Principal,
    uri: Uri,
) -> Result<Json<MemoryList>, ApiError> {
    p.require(Scope::Tasks)?;
    let q: MemoriesQuery = query(&uri)?;
    let limit = page_limit(q.limit.as_deref())?;
    let found = match q.q.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(words) => st.store.search_memory(&p.tenant, words, limit),
        None => st.store.recent_memories(&p.tenant, limit),
    }
    .map_err(store_error)?;
    Ok(Json(MemoryList {
        object: "list",
        data: found.into_iter().map(MemoryObject::from).collect(),
    }))
}

/// Remember a fact; tasks of the tenant recall it when it matches their goal.
#[utoipa::path(post, path = "/v1/memories", tag = "memories", operation_id = "createMemory",
    request_body = NewMemory,
    responses((status = 201, description = "Saved", body = MemoryObject)))]
pub(crate) async fn create(
    State(st): State<Arc<AppState>>,
    p: Principal,
    body: Bytes,
) -> Result<Response, ApiError> {
    p.require(Scope::Tasks)?;
    let req: NewMemory = parse(&body)?;
    let text = req.text.trim();
    if text.is_empty() {
        return Err(ApiError::bad_param("text", "text must not be empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::bad_param(
            "text",
            format!("text must be at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    let id = st
        .store
        .save_memory(&p.tenant, "fact", text, None)
        .map_err(store_error)?;
    let m = MemoryObject {
        id,
        object: "memory",
        kind: "fact".into(),
        text: text.to_string(),
        task_id: None,
        created_at: autoglm_store::now_ms() / 1000,
    };
    Ok((StatusCode::CREATED, Json(m)).into_response())
}

/// Forget a memory.
#[utoipa::path(delete, path = "/v1/memories/{id}", tag = "memories",
    operation_id = "deleteMemory",
    params(("id" = i64, Path, description = "The memory's id")),
    responses((status = 200, description = "Forgotten", body = MemoryDeleted)))]
pub(crate) async fn delete(
    State(st): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<MemoryDeleted>, ApiError> {
    p.require(Scope::Tasks)?;
    let no_memory = || ApiError::NotFound(format!("no memory {id}"));
    // A malformed id names no memory: the same 404 as an unknown or another tenant's one.
    let n: i64 = id.parse().map_err(|_| no_memory())?;
    if !st.store.delete_memory(&p.tenant, n).map_err(store_error)? {
        return Err(no_memory());
    }
    Ok(Json(MemoryDeleted {
        id: n,
        object: "memory",
        deleted: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stored_memory_becomes_the_wire_object() {
        let m = Memory {
            id: 7,
            kind: "outcome".into(),
            text: "t".into(),
            task_id: Some("t1".into()),
            created_ms: 12_345,
            rank: -1.5,
        };
        assert_eq!(
            serde_json::to_value(MemoryObject::from(m)).unwrap(),
            json!({"id": 7, "object": "memory", "kind": "outcome", "text": "t",
                   "task_id": "t1", "created_at": 12})
        );
    }
}
