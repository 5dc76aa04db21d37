//! Renewing a portal's access token at the OAuth server.
//!
//! `GET {oauth_server}/oauth/token/?grant_type=refresh_token&client_id=…
//! &client_secret=…&refresh_token=…` answers a new access token **and a new
//! refresh token**; the old refresh token stops working. `invalid_grant`
//! means the grant is gone (the application was removed or re-authorised):
//! only a new install brings a working token.

use std::time::Duration;

use reqwest::{Client, Url};
use serde_json::Value;

use super::config::AppCredentials;
use super::http::{json_answer, transport, CallError};
use crate::types::Secret;

/// What a refresh answers.
#[derive(Debug)]
pub struct Tokens {
    /// The new access token.
    pub access_token: Secret,
    /// The new refresh token (the old one no longer works).
    pub refresh_token: Secret,
}

/// Why a refresh failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    /// `invalid_grant`: the refresh token is revoked or stale.
    #[error("the OAuth server refused the refresh token (invalid_grant): reinstall the application on the portal")]
    Revoked,
    /// Anything else (network, 5xx, `invalid_client`, …).
    #[error("token refresh failed: {0}")]
    Call(#[from] CallError),
}

/// Exchanges `refresh_token` for new tokens.
pub async fn refresh(
    http: &Client,
    token_url: &Url,
    app: &AppCredentials,
    refresh_token: &Secret,
    timeout: Duration,
) -> Result<Tokens, RefreshError> {
    let res = http
        .get(token_url.clone())
        .query(&[
            ("grant_type", "refresh_token"),
            ("client_id", app.client_id.as_str()),
            ("client_secret", app.client_secret.expose()),
            ("refresh_token", refresh_token.expose()),
        ])
        .send()
        .await
        .map_err(|e| transport(e, timeout))?;
    let body = json_answer(res, timeout)
        .await
        .map_err(|e| match e.code() {
            Some("invalid_grant") => RefreshError::Revoked,
            _ => RefreshError::Call(e),
        })?;
    let field = |name: &str| match body.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(Secret::new(s.clone())),
        _ => Err(CallError::BadAnswer(format!(
            "no {name} in the token answer"
        ))),
    };
    Ok(Tokens {
        access_token: field("access_token")?,
        refresh_token: field("refresh_token")?,
    })
}
