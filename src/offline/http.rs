//! The outbound HTTP client and its limits: rustls with certificates
//! verified against the Mozilla roots, a time limit on every call (connect
//! and whole answer), a cap on answer bodies, no redirects (a redirect
//! could carry a token to another host), and errors that never carry a
//! URL (the OAuth URL's query holds the client secret and refresh token).

use std::time::Duration;

use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

/// Largest answer body read: a batch of offline records is far smaller.
pub const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// A call that did not produce an answer the caller can use.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No answer within the time limit.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connection or protocol trouble (never with the URL).
    #[error("transport: {0}")]
    Transport(String),
    /// The answer body is over [`MAX_ANSWER`].
    #[error("answer larger than {MAX_ANSWER} bytes")]
    TooLarge,
    /// An error answer: Bitrix24's `{"error", "error_description"}`.
    #[error("HTTP {status}: {code}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Bitrix24's error code (`expired_token`, `invalid_grant`, …), or
        /// the status when the body has none.
        code: String,
    },
    /// A 2xx answer that is not the JSON expected.
    #[error("unexpected answer: {0}")]
    BadAnswer(String),
}

impl CallError {
    /// Whether the same call may succeed later (5xx, rate limit,
    /// transport): the puller backs off and retries.
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Timeout(_) | CallError::Transport(_) => true,
            CallError::Refused { status, code } => {
                *status >= 500 || *status == 429 || code == "QUERY_LIMIT_EXCEEDED"
            }
            CallError::TooLarge | CallError::BadAnswer(_) => false,
        }
    }

    /// The error code, if the server gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Builds the client every outbound call uses.
pub fn client(timeout: Duration) -> Result<Client, reqwest::Error> {
    Client::builder()
        .use_rustls_tls()
        .https_only(false)
        .connect_timeout(timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("b24-journal/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A reqwest error, without its URL.
pub fn transport(e: reqwest::Error, timeout: Duration) -> CallError {
    if e.is_timeout() {
        CallError::Timeout(timeout)
    } else {
        CallError::Transport(e.without_url().to_string())
    }
}

/// Reads an answer's JSON body within [`MAX_ANSWER`]; an error status
/// becomes [`CallError::Refused`] with Bitrix24's error code.
pub async fn json_answer(mut res: Response, timeout: Duration) -> Result<Value, CallError> {
    if res.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err(CallError::TooLarge);
    }
    let status = res.status();
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| transport(e, timeout))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(CallError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    if !status.is_success() || parsed.as_ref().is_some_and(|v| v.get("error").is_some()) {
        let code = parsed
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
            .map(|c| c.chars().take(64).collect())
            .unwrap_or_else(|| status.as_u16().to_string());
        let status = if status.is_success() {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        return Err(CallError::Refused {
            status: status.as_u16(),
            code,
        });
    }
    parsed.ok_or_else(|| CallError::BadAnswer("not JSON".into()))
}
