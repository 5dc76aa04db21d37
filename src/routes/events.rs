//! `GET /v1/portals/{portal}/events`: one page of a portal's events, newest
//! first, or with `?wait=` a long-poll for events newer than a cursor.
//!
//! The read routes' shared steps live here too: naming the portal
//! (`resolve`) and the answers for storage failures and a full stream
//! table.

use std::sync::Arc;

use warp::reply::Response;
use warp::{Filter, Rejection};

use super::auth::{bearer, Api, Bearer};
use super::filters::{raw_query, with_app};
use crate::access::Access;
use crate::app::App;
use crate::http::{respond, ApiError};
use crate::journal::record::PortalRecord;
use crate::journal::store::StoreError;
use crate::query::{self, truncate, Cursor, EventsQuery, Page};

/// `GET /v1/portals/{portal}/events`
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "portals" / String / "events")
        .and(warp::get())
        .and(bearer(app.clone(), Api::Read))
        .and(raw_query())
        .and(with_app(app))
        .then(
            |portal: String, auth: Bearer, query: String, app: Arc<App>| async move {
                respond(events(app, &portal, auth, &query).await)
            },
        )
}

/// One page, or a long-poll when the query has `wait`.
async fn events(
    app: Arc<App>,
    portal: &str,
    auth: Bearer,
    raw: &str,
) -> Result<Response, ApiError> {
    let access = auth.require()?;
    let query = EventsQuery::parse(raw)?;
    if query.wait.is_some() {
        return long_poll(app, &access, portal, query).await;
    }
    let Some(portal) = resolve(&app, &access, portal)? else {
        // Known, but nothing journaled yet.
        return Ok(Page::new().into_response());
    };
    let reader = app.journal.reader().clone();
    let page = if query.is_plain_page() {
        // One page of consecutive events is a few cached block reads: less
        // work than handing it to another thread and back.
        query::newest(&reader, &portal, &query)
    } else {
        // Filters may scan far: synchronous sled range scans stay off the
        // async workers.
        tokio::task::spawn_blocking(move || query::newest(&reader, &portal, &query))
            .await
            .map_err(|e| ApiError::Internal(format!("query task failed: {e}")))?
    }
    .map_err(storage_unavailable)?;
    Ok(page.into_response())
}

/// The durable record of a portal named by member id or domain: `Ok(None)`
/// for a portal that is configured or registered but has no events yet,
/// 404 for an unknown one.
///
/// A portal outside `access` is answered exactly as an unknown one, so
/// that a scoped token does not learn which other portals exist.
pub(super) fn resolve(
    app: &App,
    access: &Access,
    key: &str,
) -> Result<Option<PortalRecord>, ApiError> {
    let (record, registration) = app.journal.with_directory(|dir| {
        (
            dir.resolve(key).cloned(),
            dir.registration(key)
                .map(|r| (r.member_id.clone(), r.domain.clone())),
        )
    });
    let unknown = || ApiError::NotFound(format!("unknown portal `{}`", truncate(key)));
    match record {
        Some(rec) if visible(access, &rec) => Ok(Some(rec)),
        Some(_) => Err(unknown()),
        None => match registration {
            Some((member, domain)) if access.allows(&member, [domain.as_str()]) => Ok(None),
            None if app.live().verifier.is_configured(key) && access.allows_name(key) => Ok(None),
            _ => Err(unknown()),
        },
    }
}

/// Whether `access` opens the journaled portal `rec` (by member id, its
/// domain or a domain it had).
pub(super) fn visible(access: &Access, rec: &PortalRecord) -> bool {
    let mut domains = rec.previous_domains();
    domains.extend(rec.domain());
    access.allows(&rec.member_id, domains)
}

/// 503 for a read the storage could not serve; the cause is logged.
pub(super) fn storage_unavailable(cause: StoreError) -> ApiError {
    tracing::error!(%cause, "query failed");
    ApiError::Unavailable {
        message: "storage unavailable".into(),
        retry_after: 5,
    }
}

/// 503 when every live-stream slot (SSE and long-polls) is taken.
pub(super) fn too_many_streams() -> ApiError {
    ApiError::Unavailable {
        message: "too many live streams open; try again later".into(),
        retry_after: 5,
    }
}

/// `?wait=`: answers as soon as events newer than `cursor` (or, without a
/// cursor, newer than the request) are durable, oldest first; empty at the
/// timeout. `next_cursor` is where the next poll continues.
async fn long_poll(
    app: Arc<App>,
    access: &Access,
    key: &str,
    query: EventsQuery,
) -> Result<Response, ApiError> {
    // Unknown portals are refused before a stream slot is taken.
    resolve(&app, access, key)?;
    let _permit = app
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| too_many_streams())?;
    let deadline = tokio::time::Instant::now() + query.wait.unwrap_or_default();
    let mut commits = app.journal.commits();
    let mut after = match query.cursor {
        Some(Cursor(seq)) => seq,
        None => resolve(&app, access, key)?.map_or(0, |p| p.last_seq()),
    };
    loop {
        commits.borrow_and_update();
        let portal = match resolve(&app, access, key)? {
            // As for streams: only query when the portal has something new.
            Some(p) if p.last_seq() > after => Some(p),
            _ => None,
        };
        if let Some(portal) = portal {
            let reader = app.journal.reader().clone();
            let q = query.clone();
            let (events, scanned_to) = tokio::task::spawn_blocking(move || {
                query::follow(&reader, &portal, &q, after, q.page_size())
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
