//! Who is calling: the [`Principal`] every handler acts for — a tenant, the key used (if any)
//! and its scopes. A layer in front of the routes puts it into the request's extensions; a
//! handler takes it as an extractor argument, so a route cannot forget whose data it serves.
//! A request that reaches a handler without one is refused (401), never served as someone.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::ApiError;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes {
    /// Submit, watch and cancel agent tasks.
    pub tasks: bool,
    /// Use the OpenAI-compatible model API.
    pub models: bool,
    /// Manage keys, read the audit log and every tenant's engine metrics.
    pub admin: bool,
}

impl Scopes {
    pub const ALL: Scopes = Scopes {
        tasks: true,
        models: true,
        admin: true,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    /// The key's id (never the key itself); `None` without authentication.
    pub key_id: Option<String>,
    pub scopes: Scopes,
}

impl Principal {
    /// The single local user of a server started with `--no-auth`.
    pub fn local() -> Principal {
        Principal {
            tenant: "default".into(),
            key_id: None,
            scopes: Scopes::ALL,
        }
    }

    /// Refuses with 403 unless the principal holds the scope `need` picks.
    pub fn require(&self, name: &str, need: fn(&Scopes) -> bool) -> Result<(), ApiError> {
        if need(&self.scopes) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this API key lacks the \"{name}\" scope"
            )))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Principal, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("an API key is required".into()))
    }
}
