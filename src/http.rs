//! HTTP plumbing shared by the routes: the API error type, JSON replies, the
//! bearer-token check and the one `recover` that turns warp's rejections into
//! JSON errors.

use std::convert::Infallible;

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::types::{Secret, TokenDigest};

/// An error answered to an HTTP caller as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or a field/parameter is bad.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
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
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
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
    // Cannot fail: our bodies are serde_json values and derived structs of
    // strings and numbers, which always serialise.
    let bytes = serde_json::to_vec(body).expect("JSON body serialises");
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

/// Checks an `Authorization: Bearer <token>` header against the read token's
/// digest, in constant time. With no read token configured the read API is
/// closed: a reverse proxy forwarding everything to a loopback listener would
/// otherwise expose it.
pub fn check_bearer(header: Option<&str>, expected: Option<&TokenDigest>) -> Result<(), ApiError> {
    check_bearer_for(header, expected, "read", "--read-token or B24J_READ_TOKEN")
}

/// Like [`check_bearer`] for the API named `api` whose token is set by
/// `setting`.
pub fn check_bearer_for(
    header: Option<&str>,
    expected: Option<&TokenDigest>,
    api: &str,
    setting: &str,
) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Err(ApiError::Unauthorized(format!(
            "the {api} API is disabled: no {api} token is configured ({setting})"
        )));
    };
    let presented = header
        .and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or_else(|| {
            ApiError::Unauthorized(format!(
                "missing `Authorization: Bearer <{api} token>` header"
            ))
        })?;
    if Secret::new(presented.to_owned()).digest().ct_eq(expected) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(format!(
            "wrong {api} token in `Authorization`"
        )))
    }
}

/// Maps rejections left over after routing to JSON errors.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let err = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such route".to_owned())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route".to_owned(),
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required on this route".to_owned(),
        )
    } else if let Some(h) = rejection.find::<warp::reject::InvalidHeader>() {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid header `{}`", h.name()),
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is too large".to_owned(),
        )
    } else {
        tracing::debug!(?rejection, "unhandled rejection");
        (StatusCode::BAD_REQUEST, "bad request".to_owned())
    };
    Ok(json_response(err.0, &serde_json::json!({ "error": err.1 })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check() {
        let d = Secret::new("r".into()).digest();
        assert!(check_bearer(Some("Bearer r"), Some(&d)).is_ok());
        assert!(check_bearer(Some("bearer r"), Some(&d)).is_ok());
        assert!(check_bearer(Some("Bearer x"), Some(&d)).is_err());
        assert!(check_bearer(Some("Basic r"), Some(&d)).is_err());
        assert!(check_bearer(None, Some(&d)).is_err());
        assert!(check_bearer(Some("Bearer r"), None).is_err());
    }
}
