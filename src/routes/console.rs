//! `GET /console`: the built-in dashboard, a single page served from the
//! binary (the files are embedded at build time from `console/`; nothing
//! is fetched from elsewhere). Off with `--no-console`.
//!
//! The page signs in with a read token kept in the tab's `sessionStorage`
//! and calls the same read API as any dashboard. Its
//! Content-Security-Policy allows nothing but its own files and calls to
//! this origin.

use std::sync::Arc;

use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::filters::with_app;
use crate::app::App;
use crate::http::json_response;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/app.css");

/// The console's Content-Security-Policy: its own script and style, calls
/// to this origin, no frames, no inline code, no plug-ins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /console`, `/console/app.js`, `/console/app.css`
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("console")
        .and(warp::path::tail())
        .and(warp::get())
        .and(with_app(app))
        .map(|tail: warp::path::Tail, app: Arc<App>| {
            if !app.console {
                return json_response(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({ "error": "the console is off (--no-console)" }),
                );
            }
            let (body, kind) = match tail.as_str() {
                "" | "index.html" => (INDEX, "text/html; charset=utf-8"),
                "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
                "app.css" => (STYLE, "text/css; charset=utf-8"),
                _ => {
                    return json_response(
                        StatusCode::NOT_FOUND,
                        &serde_json::json!({ "error": "no such console file" }),
                    )
                }
            };
            let mut res = Response::new(body.into());
            let h = res.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
            h.insert("content-security-policy", HeaderValue::from_static(CSP));
            h.insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            res
        })
}
