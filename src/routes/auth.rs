//! The bearer-token check of the read and admin APIs, as one filter every
//! protected route uses.
//!
//! The filter only extracts the verdict: each handler answers with it at the
//! point its order of checks requires, which is first on every route (the
//! admin backup reads its body only after it), so a caller without the
//! token learns nothing about what a route expects.

use std::sync::Arc;

use warp::{Filter, Rejection};

use crate::app::{App, Live};
use crate::http::ApiError;
use crate::types::{Secret, TokenDigest};

/// An API behind its own bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The read API (`/v1/portals…`), for dashboards.
    Read,
    /// The admin API (`/v1/admin/…`): backup and erasure.
    Admin,
}

impl Api {
    /// The API's name in error messages.
    fn name(self) -> &'static str {
        match self {
            Api::Read => "read",
            Api::Admin => "admin",
        }
    }

    /// The setting that configures the API's token, for error messages.
    fn setting(self) -> &'static str {
        match self {
            Api::Read => "--read-token or B24J_READ_TOKEN",
            Api::Admin => "--admin-token or B24J_ADMIN_TOKEN",
        }
    }

    /// The digest of the API's token, if one is configured.
    fn token(self, live: &Live) -> Option<TokenDigest> {
        match self {
            Api::Read => live.read_token,
            Api::Admin => live.admin_token,
        }
    }
}

/// The verdict on a request's `Authorization` header for one [`Api`].
#[derive(Debug)]
pub struct Bearer(Result<(), ApiError>);

impl Bearer {
    /// `Ok` when the request presented the API's token; else the 401 to
    /// answer.
    pub fn require(self) -> Result<(), ApiError> {
        self.0
    }
}

/// Checks the `Authorization` header against `api`'s token in force when
/// the request comes (a reload can rotate it). Rejects only a header that
/// is not text (400 `invalid header`), as warp's header filter does.
pub fn bearer(
    app: Arc<App>,
    api: Api,
) -> impl Filter<Extract = (Bearer,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").map(move |header: Option<String>| {
        let expected = api.token(&app.live());
        Bearer(check(header.as_deref(), expected, api))
    })
}

/// Checks an `Authorization: Bearer <token>` header against the digest of
/// `api`'s token, in constant time. With no token configured the API is
/// closed: a reverse proxy forwarding everything to a loopback listener would
/// otherwise expose it.
fn check(header: Option<&str>, expected: Option<TokenDigest>, api: Api) -> Result<(), ApiError> {
    let name = api.name();
    let Some(expected) = expected else {
        return Err(ApiError::Unauthorized(format!(
            "the {name} API is disabled: no {name} token is configured ({})",
            api.setting()
        )));
    };
    let presented = header
        .and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or_else(|| {
            ApiError::Unauthorized(format!(
                "missing `Authorization: Bearer <{name} token>` header"
            ))
        })?;
    if Secret::new(presented.to_owned()).digest().ct_eq(&expected) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(format!(
            "wrong {name} token in `Authorization`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check() {
        let d = Secret::new("r".into()).digest();
        let read = |h, d| check(h, d, Api::Read);
        assert!(read(Some("Bearer r"), Some(d)).is_ok());
        assert!(read(Some("bearer r"), Some(d)).is_ok());
        assert!(read(Some("Bearer x"), Some(d)).is_err());
        assert!(read(Some("Basic r"), Some(d)).is_err());
        assert!(read(None, Some(d)).is_err());
        assert!(read(Some("Bearer r"), None).is_err());
    }

    #[test]
    fn messages_name_the_api_and_its_setting() {
        let err = check(None, None, Api::Admin).unwrap_err().to_string();
        assert_eq!(
            err,
            "the admin API is disabled: no admin token is configured (--admin-token or B24J_ADMIN_TOKEN)"
        );
        let d = Secret::new("r".into()).digest();
        let err = check(Some("Bearer x"), Some(d), Api::Read).unwrap_err();
        assert_eq!(err.to_string(), "wrong read token in `Authorization`");
    }
}
