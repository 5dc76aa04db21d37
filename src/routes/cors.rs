//! CORS for the read API: pages on the configured origins
//! (`--cors-origins`) may call `/v1/portals…` and `/v1/stats` from a
//! browser, with `Authorization`. Any other origin gets no CORS header, so
//! the browser keeps the answer from the page.
//!
//! Hand-made rather than `warp::cors()`: warp builds its CORS filter once,
//! and the origins here come from [`Live`](crate::app::Live), which a
//! reload swaps. No `Access-Control-Allow-Credentials`: the API takes no
//! cookies, and a page sends its token itself.

use std::sync::Arc;

use warp::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ALLOW, VARY,
};
use warp::http::{HeaderValue, StatusCode};
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::filters::with_app;
use crate::app::App;

/// Headers a page may send to the read API.
const ALLOWED_HEADERS: &str = "Authorization, Content-Type, Last-Event-ID";
/// Headers of the answers a page may read besides the safelisted ones.
const EXPOSED_HEADERS: &str = "Retry-After, WWW-Authenticate";
/// Seconds a browser may cache a preflight.
const MAX_AGE: &str = "600";

/// Whether `path` belongs to the read API, the only one offered to pages.
fn is_read_api(path: &str) -> bool {
    path == "/v1/portals" || path.starts_with("/v1/portals/") || path == "/v1/stats"
}

/// The allowed origin of a request, as it sent it, if it is configured.
fn allowed(app: &App, origin: Option<&str>) -> Option<HeaderValue> {
    let origin = origin?;
    let live = app.live();
    live.cors_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin))
        .then(|| HeaderValue::from_str(origin).ok())
        .flatten()
}

/// The request's `Origin` header; one that is not text counts as none.
pub fn origin() -> impl Filter<Extract = (Option<String>,), Error = std::convert::Infallible> + Clone
{
    warp::header::optional::<String>("origin")
        .or(warp::any().map(|| None))
        .unify()
}

/// `OPTIONS` on any path: the preflight. Allowed only for the read API from
/// a configured origin; otherwise the answer carries no CORS header and
/// the browser does not send the request.
pub fn preflight(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    // Not `warp::options()`: on every other method that would reject with
    // "method not allowed", which outranks "not found" for unknown paths.
    warp::method()
        .and_then(|method: warp::http::Method| async move {
            if method == warp::http::Method::OPTIONS {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("origin"))
        .and(with_app(app))
        .map(|path: FullPath, origin: Option<String>, app: Arc<App>| {
            let mut res = Response::new(Default::default());
            *res.status_mut() = StatusCode::NO_CONTENT;
            let h = res.headers_mut();
            h.insert(ALLOW, HeaderValue::from_static("GET, POST, OPTIONS"));
            if !is_read_api(path.as_str()) {
                return res;
            }
            h.insert(
                VARY,
                HeaderValue::from_static(
                    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                ),
            );
            if let Some(origin) = allowed(&app, origin.as_deref()) {
                h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                h.insert(
                    ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET, POST"),
                );
                h.insert(
                    ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(ALLOWED_HEADERS),
                );
                h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
            }
            res
        })
}

/// Adds the CORS headers to an answer of the read API for a configured
/// origin; `Vary: Origin` on every read answer, so that a cache never
/// hands one origin's answer to another.
pub fn decorate(app: &App, origin: Option<&str>, path: &str, res: &mut Response) {
    if !is_read_api(path) {
        return;
    }
    let h = res.headers_mut();
    if !h.contains_key(VARY) {
        h.insert(VARY, HeaderValue::from_static("Origin"));
    }
    if let Some(origin) = allowed(app, origin) {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
    }
}
