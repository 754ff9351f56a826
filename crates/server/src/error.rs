//! API errors in OpenAI's shape, with the status each deserves: bad input is a 4xx that says
//! what is wrong and where, overload is a 429 with Retry-After, never a 5xx for bad input.

use axum::http::{HeaderValue, StatusCode, header};
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
