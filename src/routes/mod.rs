//! The HTTP API as a tree of warp filters: one file per area, each
//! exporting `routes(app)`, combined here with the access log and the one
//! [`recover`] that turns rejections left over after routing into JSON
//! errors.
//!
//! Every area shares [`filters::with_app`] (the state) and [`auth::bearer`]
//! (the token check); nothing in an area imports this file, so the tree has
//! no cycle. Handlers are plain async functions that return
//! `Result<Response, ApiError>`; nothing below this module knows warp's
//! filters.

pub mod admin;
pub mod auth;
pub mod client;
pub mod console;
pub mod cors;
pub mod events;
pub mod filters;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod openapi;
pub mod portals;
pub mod stats;
pub mod stream;
pub mod tickets;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use warp::http::{Method, StatusCode};
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection};

use self::client::{client, ClientAddr};
use crate::app::App;
use crate::http::json_response;

/// Every route, with rejections turned into JSON errors and each request
/// logged (client, method, path without query, status, latency; never a
/// body).
pub fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    let api = ingest::routes(app.clone())
        .or(portals::routes(app.clone()))
        .unify()
        .or(events::routes(app.clone()))
        .unify()
        .or(stream::routes(app.clone()))
        .unify()
        .or(dashboards(app.clone()))
        .unify()
        .or(admin::routes(app.clone()))
        .unify()
        .or(metrics::routes(app.clone()))
        .unify()
        .or(openapi::routes())
        .unify()
        .or(health::routes(app.clone()))
        .unify()
        .recover(recover)
        .unify();
    client(&app)
        .and(warp::method())
        .and(warp::path::full())
        .and(cors::origin())
        .map(|client, method, path, origin| RequestLine {
            client,
            method,
            path,
            origin,
            started: Instant::now(),
        })
        .and(api)
        .map(move |line: RequestLine, mut res: Response| {
            cors::decorate(&app, line.origin.as_deref(), line.path.as_str(), &mut res);
            line.log(res.status());
            res
        })
}

/// The routes for browser dashboards, as one boxed filter: boxing keeps
/// the type of the whole tree shallow enough for the compiler's recursion
/// limit (a release build overflowed it without).
fn dashboards(app: Arc<App>) -> warp::filters::BoxedFilter<(Response,)> {
    tickets::routes(app.clone())
        .or(stats::routes(app.clone()))
        .unify()
        .or(console::routes(app.clone()))
        .unify()
        .or(cors::preflight(app))
        .unify()
        .boxed()
}

/// What the access log says about a request, gathered before it is routed.
struct RequestLine {
    client: ClientAddr,
    method: Method,
    /// The path without the query string: a stream ticket
    /// (`?ticket=`) must never reach the logs.
    path: FullPath,
    /// The `Origin` header, for CORS.
    origin: Option<String>,
    started: Instant,
}

impl RequestLine {
    /// The access log: failed requests at `info` (5xx at `warn`), answered
    /// ones at `debug`. One `info` line per request would flood journald
    /// during a Bitrix24 burst until its rate limit drops every line of the
    /// service, refusals and storage errors included; stored events are in
    /// the journal and every request is counted in `/metrics`.
    /// `RUST_LOG=b24_journal=debug` brings the full access log back. The
    /// latency is whole microseconds (to the first byte of the answer).
    fn log(self, status: StatusCode) {
        let RequestLine {
            client,
            method,
            path,
            started,
            ..
        } = self;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (path, status) = (path.as_str(), status.as_u16());
        if status >= 500 {
            tracing::warn!(%client, %method, path, status, latency_us, "request");
        } else if status >= 400 {
            tracing::info!(%client, %method, path, status, latency_us, "request");
        } else {
            tracing::debug!(%client, %method, path, status, latency_us, "request");
        }
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
