//! The tasks API: agent tasks submitted, listed, watched (server-sent events of the journal),
//! cancelled, traced and approved over JSON. Wire types live here and are validated into the
//! agent's [`TaskSpec`] at the boundary; every handler acts for a [`Principal`] and sees only
//! its tenant's tasks (another tenant's task is a 404, exactly like an unknown id).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use autoglm_agent::{Agent, AgentError, Event, TaskSpec};
use autoglm_store::{StoreError, TaskRow};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::runner::{Refused, TaskPriority};
#[allow(unused_imports)] // named by the `utoipa::path` attributes
use crate::schemas::{Task, TaskList, Trace};

/// Longest goal accepted, in characters.
const MAX_GOAL_CHARS: usize = 16_000;
const MAX_STEPS: i64 = 1000;
const MAX_TOKENS: i64 = 10_000_000;
const MAX_DURATION_S: i64 = 7 * 24 * 3600;
const MAX_PAGE: i64 = 100;

/// `POST /v1/tasks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"goal": "What is 17 * 23? Use the calculator.", "tools": ["calculator"],
                          "max_steps": 8}))]
pub(crate) struct CreateTask {
    /// Non-empty, at most 16 000 characters.
    goal: String,
    /// The served model's name, or `default`.
    #[serde(default)]
    model: Option<String>,
    /// Tool names offered to the task (default: all).
    #[serde(default)]
    tools: Option<Vec<String>>,
    /// Tools that need a person's approval before each call.
    #[serde(default)]
    ask: Option<Vec<String>>,
    /// Model calls, 1 to 1000 (default 40).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    max_steps: Option<i64>,
    /// Prompt plus completion tokens, 1 to 10 000 000.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10_000_000)]
    max_tokens: Option<i64>,
    /// Wall clock of one run, 1 s to 7 days.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604_800)]
    max_duration_s: Option<i64>,
    /// `interactive` (default), `batch` or `background`.
    #[serde(default)]
    priority: Option<String>,
    /// Not supported yet: refused (400).
    #[serde(default)]
    webhook: Option<String>,
}

/// `GET /v1/tasks` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only tasks in these states, comma-separated (`queued,running`).
    #[serde(default)]
    status: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[serde(default)]
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The `next` of the previous page.
    #[serde(default)]
    before: Option<String>,
}

/// `GET /v1/tasks/{id}/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Send the records after this sequence number (`Last-Event-ID` wins over it).
    #[serde(default)]
    #[param(value_type = Option<i64>, minimum = 0)]
    after: Option<String>,
}

/// `POST /v1/tasks/{id}/approvals/{n}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"approve": true, "reason": "fine by me"}))]
pub(crate) struct Decision {
    /// Run the call (true) or deny it (false).
    approve: bool,
    /// Told to the model when the call is denied; journaled either way.
    #[serde(default)]
    reason: Option<String>,
}

const STATUSES: &[&str] = &[
    "queued",
    "running",
    "waiting_approval",
    "succeeded",
    "failed",
    "budget_exhausted",
    "cancelled",
];

pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}

pub(crate) fn query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad(format!("invalid query: {}", e.body_text())))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn no_task(id: &str) -> ApiError {
    ApiError::NotFound(format!("no task {id}"))
}

fn agent_error(e: AgentError) -> ApiError {
    match e {
        AgentError::Store(StoreError::NoTask(id)) => no_task(&id),
        AgentError::UnknownTool(t) => ApiError::bad_param("tools", format!("unknown tool {t}")),
        e @ AgentError::NoApproval { .. } => ApiError::NotFound(e.to_string()),
        e => internal(e),
    }
}

/// The task if it exists and belongs to the caller's tenant; a 404 otherwise, the same either
/// way so ids of other tenants cannot be probed.
fn owned(st: &AppState, p: &Principal, id: &str) -> Result<TaskRow, ApiError> {
    match st.store.task(id) {
        Ok(t) if t.tenant == p.tenant => Ok(t),
        Ok(_) | Err(StoreError::NoTask(_)) => Err(no_task(id)),
        Err(e) => Err(internal(e)),
    }
}

fn agent(st: &AppState) -> &Agent {
    &st.tasks.agent
}

/// A whole number within `lo..=hi`, named `param` in the error.
fn bounded(v: Option<i64>, param: &str, lo: i64, hi: i64) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(n) if (lo..=hi).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::bad_param(
            param,
            format!("{param} must be from {lo} to {hi}, got {n}"),
        )),
    }
}

fn tool_list(
    v: Option<Vec<String>>,
    param: &str,
    known: &[String],
) -> Result<Option<Vec<String>>, ApiError> {
    let Some(list) = v else { return Ok(None) };
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, name) in list.into_iter().enumerate() {
        if !known.contains(&name) {
            return Err(ApiError::bad_param(
                &format!("{param}[{i}]"),
                format!("unknown tool {name:?} (available: {})", known.join(", ")),
            ));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(Some(out))
}

/// The request body into the agent's terms, every field checked.
fn validate(
    st: &AppState,
    req: CreateTask,
    tenant: &str,
) -> Result<(TaskSpec, TaskPriority), ApiError> {
    let goal = req.goal.trim();
    if goal.is_empty() {
        return Err(ApiError::bad_param("goal", "goal must not be empty"));
    }
    if goal.chars().count() > MAX_GOAL_CHARS {
        return Err(ApiError::bad_param(
            "goal",
            format!("goal must be at most {MAX_GOAL_CHARS} characters"),
        ));
    }
    st.check_model(req.model.as_deref())?;
    let known = agent(st).tool_names();
    let tools = tool_list(req.tools, "tools", &known)?;
    let ask = tool_list(req.ask, "ask", &known)?.unwrap_or_default();
    if let Some(t) = &tools
        && let Some((i, a)) = ask.iter().enumerate().find(|(_, a)| !t.contains(a))
    {
        return Err(ApiError::bad_param(
            &format!("ask[{i}]"),
            format!("{a:?} is in ask but not in tools"),
        ));
    }
    let max_steps = bounded(req.max_steps, "max_steps", 1, MAX_STEPS)?;
    let max_tokens = bounded(req.max_tokens, "max_tokens", 1, MAX_TOKENS)?;
    let max_duration = bounded(req.max_duration_s, "max_duration_s", 1, MAX_DURATION_S)?
        .map(|s| Duration::from_secs(s as u64));
    let priority = match req.priority.as_deref() {
        None => TaskPriority::Interactive,
        Some(p) => TaskPriority::parse(p).ok_or_else(|| {
            ApiError::bad_param(
                "priority",
                format!("priority must be interactive, batch or background, got {p:?}"),
            )
        })?,
    };
    let mut meta = json!({"priority": priority.as_str()});
    if let Some(w) = &req.webhook {
        let url = st
            .tasks
            .webhooks
            .check(w)
            .map_err(|e| ApiError::bad_param("webhook", e))?;
        meta["webhook"] = json!(url.as_str());
    }
    Ok((
        TaskSpec {
            goal: goal.to_string(),
            tenant: tenant.to_string(),
            workspace: None,
            tools,
            ask,
            max_steps,
            max_tokens,
            max_duration,
            meta,
        },
        priority,
    ))
}

/// A list's `limit` query parameter: 1 to 100, 20 when absent.
pub(crate) fn page_limit(l: Option<&str>) -> Result<usize, ApiError> {
    match l {
        None => Ok(20),
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n as usize),
            _ => Err(ApiError::bad_param(
                "limit",
                format!("limit must be a whole number from 1 to {MAX_PAGE}, got {l:?}"),
            )),
        },
    }
}

/// The task object of every answer.
fn task_json(st: &AppState, t: &TaskRow) -> Result<Value, ApiError> {
    let o = Agent::outcome(&st.store, &t.id).map_err(agent_error)?;
    let mut plan = Value::Array(Vec::new());
    let mut pending: Vec<Value> = Vec::new();
    let mut tool_calls = 0;
    for s in &o.steps {
        match s["kind"].as_str() {
            Some("plan") => plan = s["steps"].clone(),
            Some("tool_result") => tool_calls += 1,
            Some("approval_requested") => pending.push(json!({
                "n": s["n"], "tool": s["tool"], "arguments": s["arguments"], "key": s["key"]})),
            Some("approval") => pending.retain(|p| p["key"] != s["key"]),
            _ => {}
        }
    }
    let ended = !autoglm_agent::UNFINISHED.contains(&t.status.as_str());
    if ended {
        pending.clear();
    }
    for p in &mut pending {
        if let Some(m) = p.as_object_mut() {
            m.remove("key");
        }
    }
    let error = match t.status.as_str() {
        "failed" | "budget_exhausted" => o.status.reason().map(str::to_string),
        _ => None,
    };
    let u = o.usage;
    Ok(json!({
        "id": t.id,
        "object": "task",
        "status": t.status,
        "goal": t.goal,
        "created_at": t.created_ms / 1000,
        "updated_at": t.updated_ms / 1000,
        "priority": t.settings["meta"]["priority"].as_str().unwrap_or("interactive"),
        "tools": t.settings["tools"],
        "ask": t.settings["ask"],
        "max_steps": t.settings["max_steps"],
        "plan": plan,
        "answer": t.answer,
        "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                  "cached_tokens": u.cached_tokens,
                  "total_tokens": u.prompt_tokens + u.completion_tokens},
        "steps": o.steps.iter().filter(|s| s["kind"] == "model_call").count(),
        "tool_calls": tool_calls,
        "pending_approvals": pending,
        "webhook": t.settings["meta"]["webhook"],
        "error": error,
    }))
}

/// Submit a task: it is queued and runs on the worker pool.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", operation_id = "createTask",
    request_body = CreateTask,
    responses((status = 202, description = "Queued", body = Task,
        headers(("Location" = String, description = "The task's URL")))))]
pub(crate) async fn create(
    State(st): State<Arc<AppState>>,
    p: Principal,
    body: Bytes,
) -> Result<Response, ApiError> {
    p.require(Scope::Tasks)?;
    let req: CreateTask = parse(&body)?;
    let (mut spec, priority) = validate(&st, req, &p.tenant)?;
    if let Some(key) = &p.key_id {
        spec.meta["key_id"] = json!(key);
        if let Some(max) = p.max_running_tasks {
            let open = unfinished_of_key(&st, &p.tenant, key)?;
            if open >= max {
                return Err(ApiError::Overloaded {
                    message: format!(
                        "this API key has {open} unfinished tasks, its limit; try again when one ends"
                    ),
                    retry_after_s: 5,
                });
            }
        }
    }
    let t = st.tasks.submit(&spec, priority).map_err(|e| match e {
        Refused::Full { retry_after } => ApiError::Overloaded {
            message: format!(
                "the task queue is full ({} tasks waiting); try again later",
                st.tasks.queued()
            ),
            retry_after_s: retry_after.as_secs().max(1),
        },
        Refused::Agent(e) => agent_error(e),
    })?;
    let mut resp = (StatusCode::ACCEPTED, axum::Json(task_json(&st, &t)?)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/tasks/{}", t.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Tasks submitted with `key` that have not ended (the key's concurrent-task limit counts them).
fn unfinished_of_key(st: &AppState, tenant: &str, key: &str) -> Result<usize, ApiError> {
    let open = st
        .store
        .task_page(
            tenant,
            &["queued", "running", "waiting_approval"],
            None,
            100_000,
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(open
        .iter()
        .filter(|t| t.settings["meta"]["key_id"].as_str() == Some(key))
        .count())
}

/// The tenant's tasks, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", operation_id = "listTasks",
    params(ListQuery),
    responses((status = 200, description = "A page of tasks", body = TaskList)))]
pub(crate) async fn list(
    State(st): State<Arc<AppState>>,
    p: Principal,
    uri: Uri,
) -> Result<Response, ApiError> {
    p.require(Scope::Tasks)?;
    let q: ListQuery = query(&uri)?;
    let statuses: Vec<&str> = match &q.status {
        None => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|one| {
                STATUSES.iter().copied().find(|k| *k == one).ok_or_else(|| {
                    ApiError::bad_param(
                        "status",
                        format!("unknown status {one:?} (one of {})", STATUSES.join(", ")),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let limit = page_limit(q.limit.as_deref())?;
    // One more than asked tells whether another page exists.
    let mut rows = match st
        .store
        .task_page(&p.tenant, &statuses, q.before.as_deref(), limit + 1)
    {
        Ok(r) => r,
        Err(StoreError::NoTask(c)) => {
            return Err(ApiError::bad_param(
                "before",
                format!("{c:?} is not a cursor of this list"),
            ));
        }
        Err(e) => return Err(internal(e)),
    };
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|t| t.id.clone())
    } else {
        None
    };
    let data = rows
        .iter()
        .map(|t| task_json(&st, t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(json!({"object": "list", "data": data, "next": next})).into_response())
}

/// A task: status, plan, answer, usage, pending approvals.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", operation_id = "getTask",
    params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "The task", body = Task)))]
pub(crate) async fn get(
    State(st): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    p.require(Scope::Tasks)?;
    let t = owned(&st, &p, &id)?;
    Ok(axum::Json(task_json(&st, &t)?).into_response())
}

/// Cancel a task (idempotent): a queued one ends at once, a running one at its next step.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", operation_id = "cancelTask",
    params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "The task, cancelled or about to be", body = Task)))]
pub(crate) async fn cancel(
    State(st): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    p.require(Scope::Tasks)?;
    owned(&st, &p, &id)?;
    st.tasks.cancel(&id).map_err(agent_error)?;
    // A running task stops at its next step, which is usually quick: answer with the ended
    // task when it comes within a moment, with its state as it is otherwise.
    for _ in 0..50 {
        if !agent(&st).is_running(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = owned(&st, &p, &id)?;
    Ok(axum::Json(task_json(&st, &t)?).into_response())
}

/// The task's trace: its records nested by step, with usage.
#[utoipa::path(get, path = "/v1/tasks/{id}/trace", tag = "tasks", operation_id = "traceTask",
    params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "The trace", body = Trace)))]
pub(crate) async fn trace(
    State(st): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    p.require(Scope::Tasks)?;
    owned(&st, &p, &id)?;
    let v = autoglm_agent::trace(&st.store, &id).map_err(agent_error)?;
    Ok(axum::Json(v).into_response())
}

/// Grant or deny a pending approval of a tool call.
#[utoipa::path(post, path = "/v1/tasks/{id}/approvals/{n}", tag = "tasks",
    operation_id = "decideApproval",
    params(("id" = String, Path, description = "The task's id"),
           ("n" = u64, Path, description = "The approval's number (`pending_approvals[].n`)")),
    request_body = Decision,
    responses((status = 200, description = "The task after the decision", body = Task)))]
pub(crate) async fn decide(
    State(st): State<Arc<AppState>>,
    p: Principal,
    Path((id, n)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    p.require(Scope::Tasks)?;
    owned(&st, &p, &id)?;
    let n: u64 = n.parse().map_err(|_| {
        ApiError::bad(format!(
            "the approval number must be a whole number, got {n:?}"
        ))
    })?;
    let d: Decision = parse(&body)?;
    agent(&st)
        .decide(&id, n, d.approve, d.reason.as_deref())
        .map_err(agent_error)?;
    let t = owned(&st, &p, &id)?;
    Ok(axum::Json(task_json(&st, &t)?).into_response())
}

fn sequence(v: &str, what: &str) -> Result<i64, ApiError> {
    match v.trim().parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(ApiError::bad(format!(
            "{what} must be a record's sequence number (a whole number >= 0), got {v:?}"
        ))),
    }
}

fn sse_event(e: &Event) -> SseEvent {
    let mut data = json!({"seq": e.seq, "kind": e.kind.as_str()});
    if let Value::Object(p) = &e.payload {
        for (k, v) in p {
            data[k] = v.clone();
        }
    }
    SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind.as_str())
        .data(data.to_string())
}

/// Server-sent events of the task's journal: every record after `Last-Event-ID` (or
/// `?after=`), then the live ones, then `event: end` once the task has ended.
#[utoipa::path(get, path = "/v1/tasks/{id}/events", tag = "tasks", operation_id = "taskEvents",
    params(("id" = String, Path, description = "The task's id"),
           ("Last-Event-ID" = Option<i64>, Header,
            description = "The last record's sequence number seen (a reconnecting EventSource sends it)"),
           EventsQuery),
    responses((status = 200, description = "One event per journal record (`id:` its sequence \
        number, `event:` its kind, `data:` the record as JSON), then `event: end`",
        content_type = "text/event-stream", body = String)))]
pub(crate) async fn events(
    State(st): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    p.require(Scope::Tasks)?;
    owned(&st, &p, &id)?;
    let q: EventsQuery = query(&uri)?;
    // A reconnecting EventSource sends the last id it saw; it wins over the query.
    let after = match headers.get("last-event-id") {
        Some(v) => sequence(
            v.to_str()
                .map_err(|_| ApiError::bad("Last-Event-ID must be ASCII"))?,
            "Last-Event-ID",
        )?,
        None => match &q.after {
            Some(a) => sequence(a, "after")?,
            None => 0,
        },
    };
    let records = agent(&st).follow(&id, after).map(|r| {
        Ok::<_, Infallible>(match r {
            Ok(e) => sse_event(&e),
            Err(e) => SseEvent::default()
                .event("error")
                .data(json!({"message": e.to_string()}).to_string()),
        })
    });
    let end = futures_util::stream::once(async {
        Ok::<_, Infallible>(SseEvent::default().event("end").data("{}"))
    });
    Ok(Sse::new(records.chain(end))
        .keep_alive(KeepAlive::default())
        .into_response())
}
