//! The bearer-token check of the read and admin APIs, as one filter every
//! protected route uses.
//!
//! The filter only extracts the verdict: each handler answers with it at the
//! point its order of checks requires, which is first on every route (the
//! admin backup reads its body only after it), so a caller without the
//! token learns nothing about what a route expects.

use std::sync::Arc;

use warp::{Filter, Rejection};

use crate::access::Access;
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
            Api::Read => "--read-token or B24J_READ_TOKEN, or [[read_tokens]]",
            Api::Admin => "--admin-token or B24J_ADMIN_TOKEN",
        }
    }

    /// The access `presented` gives: `Ok(None)` for a wrong token,
    /// `Err(())` when the API has no token at all.
    fn access(self, live: &Live, presented: &TokenDigest) -> Result<Option<Access>, ()> {
        match self {
            Api::Read if live.read.is_empty() => Err(()),
            Api::Read => Ok(live.read.check(presented)),
            Api::Admin => match &live.admin_token {
                None => Err(()),
                Some(expected) => Ok(expected.ct_eq(presented).then_some(Access::All)),
            },
        }
    }
}

/// The verdict on a request's `Authorization` header for one [`Api`].
#[derive(Debug)]
pub struct Bearer(Result<(Access, TokenDigest), ApiError>);

impl Bearer {
    /// What the request may read when it presented one of the API's
    /// tokens; else the 401 to answer.
    pub fn require(self) -> Result<Access, ApiError> {
        self.0.map(|(access, _)| access)
    }

    /// [`Bearer::require`], with the digest of the token presented (a
    /// stream ticket names its token by it).
    pub fn require_token(self) -> Result<(Access, TokenDigest), ApiError> {
        self.0
    }
}

/// Checks the `Authorization` header against `api`'s tokens in force when
/// the request comes (a reload can rotate them). Rejects only a header that
/// is not text (400 `invalid header`), as warp's header filter does.
pub fn bearer(
    app: Arc<App>,
    api: Api,
) -> impl Filter<Extract = (Bearer,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .map(move |header: Option<String>| Bearer(check(header.as_deref(), &app.live(), api)))
}

/// Checks an `Authorization: Bearer <token>` header against the digests of
/// `api`'s tokens, in constant time. With no token configured the API is
/// closed: a reverse proxy forwarding everything to a loopback listener would
/// otherwise expose it.
fn check(header: Option<&str>, live: &Live, api: Api) -> Result<(Access, TokenDigest), ApiError> {
    let name = api.name();
    let disabled = || {
        ApiError::Unauthorized(format!(
            "the {name} API is disabled: no {name} token is configured ({})",
            api.setting()
        ))
    };
    // Checked first, so that the answer without a header says so too.
    api.access(live, &TokenDigest([0; 32]))
        .map_err(|()| disabled())?;
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
    let digest = Secret::new(presented.to_owned()).digest();
    match api.access(live, &digest) {
        Ok(Some(access)) => Ok((access, digest)),
        Ok(None) => Err(ApiError::Unauthorized(format!(
            "wrong {name} token in `Authorization`"
        ))),
        Err(()) => Err(disabled()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::ReadTokens;
    use crate::journal::RetentionPolicy;
    use crate::verify::Verifier;

    fn live(read: Option<&str>, admin: Option<&str>) -> Live {
        Live {
            verifier: Verifier::new(Vec::new(), Vec::new()),
            read: ReadTokens {
                all: read.map(|t| Secret::new(t.into()).digest()),
                scoped: Vec::new(),
            },
            cors_origins: Vec::new().into(),
            admin_token: admin.map(|t| Secret::new(t.into()).digest()),
            retention: RetentionPolicy {
                max_age: None,
                per_portal: None,
                every: std::time::Duration::from_secs(60),
            },
        }
    }

    #[test]
    fn bearer_check() {
        let l = live(Some("r"), None);
        let read = |h, l: &Live| check(h, l, Api::Read);
        assert_eq!(read(Some("Bearer r"), &l).unwrap().0, Access::All);
        assert!(read(Some("bearer r"), &l).is_ok());
        assert!(read(Some("Bearer x"), &l).is_err());
        assert!(read(Some("Basic r"), &l).is_err());
        assert!(read(None, &l).is_err());
        assert!(read(Some("Bearer r"), &live(None, None)).is_err());
    }

    #[test]
    fn messages_name_the_api_and_its_setting() {
        let err = check(None, &live(None, None), Api::Admin)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the admin API is disabled: no admin token is configured (--admin-token or B24J_ADMIN_TOKEN)"
        );
        let err = check(Some("Bearer x"), &live(Some("r"), None), Api::Read).unwrap_err();
        assert_eq!(err.to_string(), "wrong read token in `Authorization`");
    }
}
