//! API errors in OpenAI's shape, with the status each deserves: bad input is a 4xx that says
//! what is wrong and where, overload is a 429 with Retry-After, never a 5xx for bad input.
//! [`uniform`] puts the answers that axum makes itself (an unreadable or oversized body, a
//! method a path does not have) into the same shape, so a client reads every error one way.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::wire::{ErrorBody, ErrorDetail};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    #[error("the model '{0}' does not exist")]
    UnknownModel(String),
    #[error("{0}")]
    NotFound(String),
    /// No valid API key (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key without the scope this route needs (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    Overloaded { message: String, retry_after_s: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    fn parts(
        &self,
    ) -> (
        StatusCode,
        &'static str,
        Option<&'static str>,
        Option<String>,
    ) {
        match self {
            ApiError::BadRequest { param, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                param.clone(),
            ),
            ApiError::UnknownModel(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                Some("model".into()),
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", None, None),
            ApiError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                None,
            ),
            ApiError::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                Some("insufficient_scope"),
                None,
            ),
            ApiError::Overloaded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("overloaded"),
                None,
            ),
            ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error", None, None)
            }
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, code, param) = self.parts();
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::Overloaded { retry_after_s, .. } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after_s.max(1).to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// The middleware that rewrites error answers not already JSON (axum's rejections, which are
/// plain text, and its empty 405s) into [`ErrorBody`], keeping their status and headers.
pub(crate) async fn uniform(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // These bodies are one line of text; a larger one is not read.
    let text = axum::body::to_bytes(body, 16 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        t => t.to_string(),
    };
    let (kind, code) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", Some("body_too_large")),
        StatusCode::METHOD_NOT_ALLOWED => ("invalid_request_error", Some("method_not_allowed")),
        StatusCode::TOO_MANY_REQUESTS => ("rate_limit_error", None),
        s if s.is_server_error() => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            param: None,
            code,
        },
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut out = axum::Json(body).into_response();
    // The original headers (`Allow` of a 405, ...) stay; the body's own replace theirs.
    let new_headers = std::mem::take(out.headers_mut());
    *out.headers_mut() = parts.headers;
    out.headers_mut().extend(new_headers);
    *out.status_mut() = status;
    out
}
