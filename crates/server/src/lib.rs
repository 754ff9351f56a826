//! The HTTP face of Open-AutoGLM — the only crate that speaks HTTP and JSON wire types.
//!
//! [`app`] builds the axum router over an [`AppState`] (the serving engine's handle, the model's
//! tokenizer and chat template), so tests drive it in-process with `tower::ServiceExt::oneshot`;
//! [`serve`] binds it to a socket. Routes:
//!
//! - `POST /v1/chat/completions`, `POST /v1/completions`: OpenAI-compatible, streaming (server-sent
//!   events) or not, with `usage` including cached prompt tokens.
//! - `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text format).
//! - `GET /v1/admin/audit`: the audit log (admin scope).
//!
//! In front of every route but `/health`, [`auth::guard`] authenticates the API key (unless the
//! state was built with [`AuthMode::None`]), checks the route's scope and the key's rate limit,
//! and writes the audit log.
//!
//! Every bad request gets a 4xx in OpenAI's error shape naming the problem; overload gets a 429
//! with `Retry-After` at once; bodies are capped.

mod admin;
mod answer;
pub mod auth;
mod error;
mod routes;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use autoglm_engine::{EngineError, EngineHandle, ServeConfig};
use autoglm_model::Model;
use autoglm_store::Store;
use autoglm_tokenizer::{ChatTemplate, Tokenizer};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use auth::AuthMode;
pub use error::ApiError;

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
    /// API keys (or none), their cache and rate limits.
    pub(crate) auth: Arc<auth::Auth>,
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
}

impl AppState {
    /// Starts the serving engine on `model` and prepares the chat template (the file's, or a
    /// built-in one for models without). `store` holds the durable state, including the API
    /// keys that `auth` says whether to ask for.
    pub fn new(
        model: Model,
        model_name: &str,
        cfg: ServeConfig,
        store: Arc<Store>,
        auth: AuthMode,
    ) -> Result<Arc<AppState>, ServerError> {
        let engine = EngineHandle::start(model, cfg)?;
        engine.prepare_constraints();
        let tokenizer = engine.tokenizer().clone();
        let template = engine.template().clone();
        let context_length = engine.context_length();
        Ok(Arc::new(AppState {
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
        }))
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn auth_mode(&self) -> AuthMode {
        self.auth.mode()
    }
}

/// The router, ready for `oneshot` in tests or a listener.
pub fn app(state: Arc<AppState>) -> Router {
    let guard = axum::middleware::from_fn_with_state(state.auth.clone(), auth::guard);
    Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .route("/v1/admin/audit", get(admin::audit))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
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
