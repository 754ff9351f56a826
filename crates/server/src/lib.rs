//! The HTTP face of Open-AutoGLM — the only crate that speaks HTTP and JSON wire types.
//!
//! [`app`] builds the axum router over an [`AppState`] (the serving engine's handle, the model's
//! tokenizer and chat template), so tests drive it in-process with `tower::ServiceExt::oneshot`;
//! [`serve`] binds it to a socket. Routes:
//!
//! - `POST /v1/chat/completions`, `POST /v1/completions`: OpenAI-compatible, streaming (server-sent
//!   events) or not, with `usage` including cached prompt tokens.
//! - `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text format).
//! - The tasks API (`tasks.rs`): `POST /v1/tasks`, `GET /v1/tasks`, `GET /v1/tasks/{id}`,
//!   `POST /v1/tasks/{id}/cancel`, `GET /v1/tasks/{id}/events` (server-sent events of the
//!   journal), `GET /v1/tasks/{id}/trace`, `POST /v1/tasks/{id}/approvals/{n}`; the tasks run
//!   on the worker pool of `runner.rs` ([`AppState::start_tasks`]).
//! - `GET /v1/memories`, `POST /v1/memories`, `DELETE /v1/memories/{id}` (`memories.rs`): the
//!   tenant's long-term memory.
//! - `GET /v1/admin/audit`: the audit log (admin scope).
//! - `GET /v1/engine`, `GET /v1/tools` (`status.rs`): the engine's load and the tools, as JSON.
//! - `GET /openapi.json` (`openapi.rs`): the OpenAPI document of all of these, generated from
//!   the handlers' declarations, through which every route is registered ([`router`]).
//! - The web UI (`ui.rs`): the page at `/ui/`, open to anyone (it holds no data), the only
//!   routes outside the document.
//!
//! In front of every route but `/health`, `/openapi.json` and the UI's files, [`auth::guard`]
//! authenticates the API key (unless the state was built with [`AuthMode::None`]), checks the
//! route's scope and the key's rate limit, and writes the audit log.
//!
//! Every bad request gets a 4xx in OpenAI's error shape naming the problem; overload gets a 429
//! with `Retry-After` at once; bodies are capped.

mod admin;
mod answer;
pub mod auth;
mod error;
mod memories;
pub mod openapi;
mod queue;
mod routes;
mod runner;
mod schemas;
mod status;
mod tasks;
mod ui;
mod webhook;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use autoglm_engine::{EngineError, EngineHandle, ServeConfig};
use autoglm_model::Model;
use autoglm_store::Store;
use autoglm_tokenizer::{ChatTemplate, Tokenizer};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::AuthMode;
pub use error::ApiError;
pub use runner::TasksConfig;
pub use webhook::{SIGNATURE_HEADER, WebhookConfig, signature};

/// Request bodies larger than this are refused (413) before parsing.
pub const BODY_LIMIT: usize = 4 << 20;

/// What every handler shares.
pub struct AppState {
    pub(crate) engine: EngineHandle,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) template: Arc<ChatTemplate>,
    pub(crate) model_name: String,
    pub(crate) context_length: usize,
    pub(crate) default_max_tokens: usize,
    pub(crate) started: u64,
    /// Tasks, journals, memory, keys and the audit log.
    pub(crate) store: Arc<Store>,
    /// The agent and its worker pool.
    pub(crate) tasks: Arc<runner::Runner>,
    /// API keys (or none), their cache and rate limits.
    pub(crate) auth: Arc<auth::Auth>,
    /// The engine's recent load, for `GET /v1/engine`.
    pub(crate) load: status::LoadHistory,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Template(#[from] autoglm_tokenizer::TokenizerError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    #[error("tasks: {0}")]
    Tasks(#[from] autoglm_agent::AgentError),
}

impl AppState {
    /// Starts the serving engine on `model` and prepares the chat template (the file's, or a
    /// built-in one for models without). `store` holds the durable state, including the API
    /// keys that `auth` says whether to ask for; tasks run with the default pool
    /// ([`TasksConfig::default`]).
    pub fn new(
        model: Model,
        model_name: &str,
        cfg: ServeConfig,
        store: Arc<Store>,
        auth: AuthMode,
    ) -> Result<Arc<AppState>, ServerError> {
        let engine = EngineHandle::start(model, cfg)?;
        engine.prepare_constraints();
        Ok(AppState::with_engine(
            engine,
            model_name,
            store,
            auth,
            TasksConfig::default(),
        ))
    }

    /// Over an engine already started (tests share one between states). The task agent uses
    /// `tasks.llm`, or when that is `None` an embedded client over this same engine, so task
    /// model calls are batched with API requests.
    pub fn with_engine(
        engine: EngineHandle,
        model_name: &str,
        store: Arc<Store>,
        auth: AuthMode,
        tasks: TasksConfig,
    ) -> Arc<AppState> {
        let tokenizer = engine.tokenizer().clone();
        let template = engine.template().clone();
        let context_length = engine.context_length();
        let llm = tasks
            .llm
            .unwrap_or_else(|| Arc::new(autoglm_llm::EmbeddedClient::new(engine.clone())));
        let tools = tasks
            .tools
            .unwrap_or_else(|| autoglm_tools::ToolRegistry::with_memory(store.clone(), "default"));
        let mut agent_cfg = tasks.agent;
        agent_cfg.context_tokens = agent_cfg.context_tokens.min(context_length);
        let agent = autoglm_agent::Agent::new(llm, tools, store.clone(), agent_cfg);
        Arc::new(AppState {
            engine,
            tokenizer,
            template,
            model_name: model_name.to_string(),
            context_length,
            default_max_tokens: 1024,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            auth: Arc::new(auth::Auth::new(auth, store.clone())),
            store,
            tasks: Arc::new(runner::Runner::new(
                agent,
                tasks.workers,
                tasks.max_queued,
                tasks.priority_step,
                tasks.webhooks,
            )),
            load: Default::default(),
        })
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Starts the task workers on the current async runtime and re-enqueues the tasks a
    /// previous run left unfinished (they resume from their journals). Returns how many were
    /// re-enqueued; later calls do nothing. [`serve`] calls it.
    pub fn start_tasks(self: &Arc<Self>) -> Result<usize, ServerError> {
        Ok(self.tasks.start()?)
    }

    pub fn auth_mode(&self) -> AuthMode {
        self.auth.mode()
    }
}

/// Every route, each registered from its handler's `#[utoipa::path]` (its method and path) so
/// that it is in the OpenAPI document ([`openapi::document`]). Register routes only here and
/// only with `routes!`: `tests/openapi.rs` fails on any other registration.
fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(routes::chat_completions))
        .routes(routes!(routes::completions))
        .routes(routes!(routes::models))
        .routes(routes!(routes::health))
        .routes(routes!(routes::metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(tasks::create, tasks::list))
        .routes(routes!(tasks::get))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::events))
        .routes(routes!(tasks::trace))
        .routes(routes!(tasks::decide))
        .routes(routes!(memories::list, memories::create))
        .routes(routes!(memories::delete))
        .routes(routes!(admin::audit))
        .routes(routes!(status::engine))
        .routes(routes!(status::tools))
}

/// The router, ready for `oneshot` in tests or a listener.
pub fn app(state: Arc<AppState>) -> Router {
    let guard = axum::middleware::from_fn_with_state(state.auth.clone(), auth::guard);
    let (routes, _) = router().split_for_parts();
    routes
        // The UI's files are not API operations, so they stay out of the document.
        .merge(ui::routes())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // axum's own refusals (unreadable or oversized bodies, 405s) in the error shape too.
        .layer(axum::middleware::from_fn(error::uniform))
        // Last, so it wraps every route above and the fallback: a route added after this line
        // would bypass authentication.
        .layer(guard)
        .with_state(state)
}

/// Serves until Ctrl-C. `on_ready` receives the bound address (port 0 picks a free one).
pub async fn serve(
    state: Arc<AppState>,
    addr: SocketAddr,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let resumed = state.start_tasks()?;
    status::start_sampler(&state);
    if resumed > 0 {
        eprintln!("resuming {resumed} unfinished tasks");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    on_ready(listener.local_addr()?);
    // The peer address goes into the audit log.
    let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
