//! Query out: the read API for dashboards.
//!
//! - [`params`]: the query string, parsed ([`EventsQuery`], [`Cursor`]);
//! - [`page`]: a page of events and its cursor ([`newest`], [`follow`]);
//! - [`render`]: one stored event as the API's JSON;
//! - here, the warp filters of the read routes (portals, events, stream).
//!
//! Which stored events match, in which order and within what budget is the
//! journal's (`journal::read`). Readers only ever see events up to the last
//! seq known durable, so a dashboard never shows an event that a crash could
//! still take back. A page scans at most [`SCAN_BUDGET`] entries: a filter
//! that matches rarely then returns a short (even empty) page with a cursor
//! instead of walking the whole portal in one request.

pub mod page;
pub mod params;
pub mod render;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::http::{check_bearer, json_response, respond, ApiError};
use crate::journal::record::PortalRecord;
use crate::journal::registration::{Source, Status};
use crate::journal::store::StoreError;
use crate::server::App;
use crate::types::millis_to_rfc3339;
use params::truncate;

pub use crate::journal::read::SCAN_BUDGET;
pub use page::{follow, newest, Page};
pub use params::{Cursor, EventsQuery, DEFAULT_LIMIT, MAX_LIMIT, MAX_WAIT_SECS};
pub use render::{EventJson, Rendered};

/// Interval of SSE keep-alive comments.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /v1/portals`
pub fn list_portals(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "portals")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::any().map(move || app.clone()))
        .map(|auth: Option<String>, app: Arc<App>| respond(portals(&app, auth.as_deref())))
}

/// `GET /v1/portals/{portal}/events`
pub fn list_events(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "portals" / String / "events")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(raw_query())
        .and(warp::any().map(move || app.clone()))
        .then(
            |portal: String, auth: Option<String>, query: String, app: Arc<App>| async move {
                respond(events(app, &portal, auth.as_deref(), &query).await)
            },
        )
}

/// The raw query string, empty when there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

fn portals(app: &App, auth: Option<&str>) -> Result<Response, ApiError> {
    check_bearer(auth, app.read_token.as_ref())?;
    let list: Vec<Value> = app.journal.with_directory(|dir| {
        let describe = |member: &str| {
            let reg = dir.registration(member);
            let status = match reg.map(|r| r.status) {
                Some(Status::Uninstalled) => "uninstalled",
                _ => "active",
            };
            let source = if app.verifier.is_configured(member) {
                "configured"
            } else {
                match reg.map(|r| r.source) {
                    Some(Source::Install) => "install",
                    Some(Source::Operator) => "operator",
                    // Journaled earlier, no longer configured or registered.
                    None => "none",
                }
            };
            (status, source)
        };
        let mut list: Vec<Value> = dir
            .portals()
            .iter()
            // Erased portals leave a nameless record behind.
            .filter(|p| !p.member_id.is_empty())
            .map(|p| {
                let (status, source) = describe(&p.member_id);
                json!({
                    "member_id": p.member_id,
                    "domain": p.domain(),
                    "status": status,
                    "source": source,
                    "events": p.events,
                    "duplicates": p.duplicates,
                    "first_received_at": p.first_received_ms.map(millis_to_rfc3339),
                    "last_received_at": p.last_received_ms.map(millis_to_rfc3339),
                })
            })
            .collect();
        // Configured or registered portals that sent nothing yet: visible, so
        // an operator can see the configuration took.
        let mut quiet: Vec<(String, Option<String>)> = app
            .verifier
            .members()
            .into_iter()
            .map(|m| (m.as_str().to_owned(), None))
            .chain(
                dir.registrations()
                    .map(|r| (r.member_id.clone(), Some(r.domain.clone()))),
            )
            .filter(|(m, _)| dir.by_member(m).is_none())
            .collect();
        quiet.sort();
        // Keep one entry per member, with the domain if any entry has it.
        quiet.dedup_by(|later, kept| {
            if later.0 != kept.0 {
                return false;
            }
            if kept.1.is_none() {
                kept.1 = later.1.take();
            }
            true
        });
        for (member, domain) in quiet {
            let (status, source) = describe(&member);
            list.push(json!({
                "member_id": member,
                "domain": domain,
                "status": status,
                "source": source,
                "events": 0,
                "duplicates": 0,
                "first_received_at": null,
                "last_received_at": null,
            }));
        }
        list
    });
    Ok(json_response(StatusCode::OK, &json!({ "portals": list })))
}

async fn events(
    app: Arc<App>,
    portal: &str,
    auth: Option<&str>,
    raw: &str,
) -> Result<Response, ApiError> {
    check_bearer(auth, app.read_token.as_ref())?;
    let query = EventsQuery::parse(raw)?;
    if query.wait.is_some() {
        return long_poll(app, portal, query).await;
    }
    let Some(portal) = resolve(&app, portal)? else {
        // Known, but nothing journaled yet.
        return Ok(Page::new().into_response());
    };
    let reader = app.journal.reader().clone();
    let page = if query.is_plain_page() {
        // One page of consecutive events: a few cached block reads, less
        // work than handing it to another thread and back
        // (docs/perf-notes-journal.md, `is_plain_page`).
        newest(&reader, &portal, &query)
    } else {
        // Filters may scan far: synchronous sled range scans stay off the
        // async workers.
        tokio::task::spawn_blocking(move || newest(&reader, &portal, &query))
            .await
            .map_err(|e| ApiError::Internal(format!("query task failed: {e}")))?
    }
    .map_err(storage_unavailable)?;
    Ok(page.into_response())
}

/// The durable record of a portal named by member id or domain: `Ok(None)`
/// for a portal that is configured or registered but has no events yet,
/// 404 for an unknown one.
fn resolve(app: &App, key: &str) -> Result<Option<PortalRecord>, ApiError> {
    let (record, registered) = app
        .journal
        .with_directory(|dir| (dir.resolve(key).cloned(), dir.registration(key).is_some()));
    match record {
        Some(rec) => Ok(Some(rec)),
        None if registered || app.verifier.is_configured(key) => Ok(None),
        None => Err(ApiError::NotFound(format!(
            "unknown portal `{}`",
            truncate(key)
        ))),
    }
}

fn storage_unavailable(cause: StoreError) -> ApiError {
    tracing::error!(%cause, "query failed");
    ApiError::Unavailable {
        message: "storage unavailable".into(),
        retry_after: 5,
    }
}

/// `?wait=`: answers as soon as events newer than `cursor` (or, without a
/// cursor, newer than the request) are durable, oldest first; empty at the
/// timeout. `next_cursor` is where the next poll continues.
async fn long_poll(app: Arc<App>, key: &str, query: EventsQuery) -> Result<Response, ApiError> {
    let _permit = app
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| too_many_streams())?;
    let deadline = tokio::time::Instant::now() + query.wait.unwrap_or_default();
    let mut commits = app.journal.commits();
    let mut after = match query.cursor {
        Some(Cursor(seq)) => seq,
        None => resolve(&app, key)?.map_or(0, |p| p.last_seq()),
    };
    loop {
        commits.borrow_and_update();
        let portal = match resolve(&app, key)? {
            // As for streams: only query when the portal has something new.
            Some(p) if p.last_seq() > after => Some(p),
            _ => None,
        };
        if let Some(portal) = portal {
            let reader = app.journal.reader().clone();
            let q = query.clone();
            let (events, scanned_to) = tokio::task::spawn_blocking(move || {
                follow(&reader, &portal, &q, after, q.page_size())
            })
            .await
            .map_err(|e| ApiError::Internal(format!("query task failed: {e}")))?
            .map_err(storage_unavailable)?;
            after = scanned_to;
            if !events.is_empty() {
                let events = events.into_iter().map(|(_, v)| v);
                let page = Page::of(events, Some(Cursor(after).encode()));
                return Ok(page.into_response());
            }
        }
        let mut stopping = app.stopping.clone();
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = stopping.wait_for(|s| *s) => break,
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(Page::of([], Some(Cursor(after).encode())).into_response())
}

fn too_many_streams() -> ApiError {
    ApiError::Unavailable {
        message: "too many live streams open; try again later".into(),
        retry_after: 5,
    }
}

/// `GET /v1/portals/{portal}/events/stream`
pub fn stream_events(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "portals" / String / "events" / "stream")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("last-event-id"))
        .and(raw_query())
        .and(warp::any().map(move || app.clone()))
        .map(
            |portal: String,
             auth: Option<String>,
             last_id: Option<String>,
             query: String,
             app: Arc<App>| {
                respond(stream(
                    app,
                    portal,
                    auth.as_deref(),
                    last_id.as_deref(),
                    &query,
                ))
            },
        )
}

/// Where a live stream stands.
struct StreamState {
    app: Arc<App>,
    key: String,
    query: EventsQuery,
    after: u64,
    commits: tokio::sync::watch::Receiver<u64>,
    ready: VecDeque<warp::sse::Event>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

fn stream(
    app: Arc<App>,
    key: String,
    auth: Option<&str>,
    last_event_id: Option<&str>,
    raw: &str,
) -> Result<Response, ApiError> {
    check_bearer(auth, app.read_token.as_ref())?;
    let query = EventsQuery::parse(raw)?;
    if query.wait.is_some() || query.limit.is_some() {
        return Err(ApiError::BadRequest(
            "`wait` and `limit` do not apply to the stream".into(),
        ));
    }
    let resume = match last_event_id {
        Some(id) => Some(Cursor::decode(id.trim()).map_err(|_| {
            ApiError::BadRequest(
                "invalid `Last-Event-ID`: use the id of an event from this stream".into(),
            )
        })?),
        None => query.cursor,
    };
    // Unknown portals are refused before a stream slot is taken.
    let newest = resolve(&app, &key)?.map_or(0, |p| p.last_seq());
    let after = match resume {
        Some(Cursor(seq)) => seq,
        None => newest,
    };
    let permit = app
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| too_many_streams())?;
    let state = StreamState {
        commits: app.journal.commits(),
        app,
        key,
        query,
        after,
        ready: VecDeque::new(),
        _permit: permit,
    };
    let events = futures_util::stream::unfold(state, next_stream_event);
    Ok(
        warp::sse::reply(warp::sse::keep_alive().interval(KEEP_ALIVE).stream(events))
            .into_response(),
    )
}

/// Yields the next SSE message, waiting for commits when caught up. Ends
/// the stream (the client reconnects with `Last-Event-ID`) on storage
/// errors or when the journal stops.
async fn next_stream_event(
    mut st: StreamState,
) -> Option<(Result<warp::sse::Event, Infallible>, StreamState)> {
    loop {
        if let Some(event) = st.ready.pop_front() {
            return Some((Ok(event), st));
        }
        st.commits.borrow_and_update();
        // Every commit wakes every stream: check cheaply (no clone, no
        // blocking task) whether this portal has anything new first.
        let newest = st
            .app
            .journal
            .with_directory(|d| d.resolve(&st.key).map(|p| p.last_seq()));
        let has_new = newest.is_some_and(|last| last > st.after);
        if let (true, Ok(Some(portal))) = (has_new, resolve(&st.app, &st.key)) {
            let reader = st.app.journal.reader().clone();
            let (q, after) = (st.query.clone(), st.after);
            let batch =
                tokio::task::spawn_blocking(move || follow(&reader, &portal, &q, after, 500)).await;
            match batch {
                Ok(Ok((events, scanned_to))) => {
                    st.after = scanned_to;
                    for (seq, value) in events {
                        st.ready.push_back(
                            warp::sse::Event::default()
                                .id(Cursor(seq).encode())
                                .data(value.as_str()),
                        );
                    }
                    if !st.ready.is_empty() {
                        continue;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "stream query failed; closing the stream");
                    return None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "stream task failed; closing the stream");
                    return None;
                }
            }
        }
        let mut stopping = st.app.stopping.clone();
        tokio::select! {
            changed = st.commits.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            _ = stopping.wait_for(|s| *s) => return None,
        }
    }
}
