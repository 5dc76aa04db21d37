//! HTTP answers shared by the routes: the API error type and JSON replies.
//! A leaf module: it knows warp's reply types and nothing of the service.

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

/// An error answered to an HTTP caller as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or a field/parameter is bad.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or wrong bearer token; answered with
    /// `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// 401: the credentials in the body (ingest's
    /// `auth[application_token]`) are not valid. No `WWW-Authenticate`: no
    /// header the sender could add would help.
    #[error("{0}")]
    NotTrusted(String),
    /// 403: authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such portal or route.
    #[error("{0}")]
    NotFound(String),
    /// 409: conflicts with what is on record.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over the limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: not a content type we take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 503: storage cannot take the request now; `Retry-After` says when to
    /// try again.
    #[error("{message}")]
    Unavailable {
        /// What is unavailable.
        message: String,
        /// Seconds for `Retry-After`.
        retry_after: u32,
    },
    /// 500: our bug. The cause is logged, the caller sees nothing of it.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) | ApiError::NotTrusted(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let mut res = json_response(
            self.status(),
            &serde_json::json!({ "error": self.to_string() }),
        );
        match &self {
            ApiError::Unavailable { retry_after, .. } => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::Unauthorized(_) => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        res
    }
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body)
        .expect("reply bodies are serde_json values or derived structs of strings and numbers");
    json_bytes_response(status, bytes)
}

/// A response with `bytes`, already JSON, as its body.
pub fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut res = Response::new(bytes.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// Turns a handler result into a response.
pub fn respond<T: Reply>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(ok) => ok.into_response(),
        Err(e) => e.into_response(),
    }
}
