//! `GET /v1/portals/{portal}/events/stream`: the stream — a portal's new
//! events as server-sent events, as they become durable.
//!
//! Each message's id is the event's cursor, so a client that reconnects
//! with `Last-Event-ID` continues where it left off. Streams and long-polls
//! share a fixed number of slots.
//!
//! A browser's `EventSource` cannot send `Authorization`: it opens the
//! stream with `?ticket=` instead (see [`tickets`](crate::tickets)), whose
//! portal and filters it cannot change.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit};
use warp::reply::Response;
use warp::sse::Event;
use warp::{Filter, Rejection, Reply};

use super::auth::{bearer, Api, Bearer};
use super::events::{resolve, too_many_streams};
use super::filters::{raw_query, with_app};
use crate::access::{fingerprint, Access};
use crate::app::App;
use crate::http::{respond, ApiError};
use crate::query::{self, Cursor, EventsQuery, KEEP_ALIVE};
use crate::tickets::{unix_now, TicketError};

/// Most events one read of the journal adds to a stream.
const STREAM_BATCH: usize = 500;

/// `GET /v1/portals/{portal}/events/stream`
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "portals" / String / "events" / "stream")
        .and(warp::get())
        .and(bearer(app.clone(), Api::Read))
        .and(warp::header::optional::<String>("last-event-id"))
        .and(raw_query())
        .and(with_app(app))
        .map(
            |portal: String,
             auth: Bearer,
             last_id: Option<String>,
             query: String,
             app: Arc<App>| {
                respond(stream(app, portal, auth, last_id.as_deref(), &query))
            },
        )
}

/// Where a live stream stands.
struct StreamState {
    app: Arc<App>,
    access: Access,
    /// The fingerprint of the token the stream was opened with: once a
    /// reload removes the token (or changes its portals), the stream ends
    /// at its next wake.
    token: [u8; 16],
    key: String,
    query: EventsQuery,
    after: u64,
    commits: watch::Receiver<u64>,
    ready: VecDeque<Event>,
    _permit: OwnedSemaphorePermit,
}

/// Opens the stream after the cursor in `Last-Event-ID` (else `?cursor=`,
/// else the portal's newest event).
fn stream(
    app: Arc<App>,
    key: String,
    auth: Bearer,
    last_event_id: Option<&str>,
    raw: &str,
) -> Result<Response, ApiError> {
    let (access, token, raw) = match split_ticket(raw)? {
        Some((ticket, rest)) => ticket_access(&app, &key, &ticket, &rest)?,
        None => {
            let (access, digest) = auth.require_token()?;
            (access, fingerprint(&digest), raw.to_owned())
        }
    };
    let query = EventsQuery::parse(&raw)?;
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
    let newest = resolve(&app, &access, &key)?.map_or(0, |p| p.last_seq());
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
        access,
        token,
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
) -> Option<(Result<Event, Infallible>, StreamState)> {
    loop {
        if let Some(event) = st.ready.pop_front() {
            return Some((Ok(event), st));
        }
        st.commits.borrow_and_update();
        if st.app.live().read.by_fingerprint(&st.token).as_ref() != Some(&st.access) {
            tracing::info!("stream closed: its token was removed or changed by a reload");
            return None;
        }
        // Every commit wakes every stream: check cheaply (no clone, no
        // blocking task) whether this portal has anything new first.
        let newest = st
            .app
            .journal
            .with_directory(|d| d.resolve(&st.key).map(|p| p.last_seq()));
        let has_new = newest.is_some_and(|last| last > st.after);
        if let (true, Ok(Some(portal))) = (has_new, resolve(&st.app, &st.access, &st.key)) {
            let reader = st.app.journal.reader().clone();
            let (q, after) = (st.query.clone(), st.after);
            let batch = tokio::task::spawn_blocking(move || {
                query::follow(&reader, &portal, &q, after, STREAM_BATCH)
            })
            .await;
            match batch {
                Ok(Ok((events, scanned_to))) => {
                    st.after = scanned_to;
                    for (seq, value) in events {
                        st.ready.push_back(
                            Event::default()
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

/// The `ticket` parameter, if any, and the rest of the query string.
fn split_ticket(raw: &str) -> Result<Option<(String, String)>, ApiError> {
    let mut ticket = None;
    let mut rest = Vec::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        match part.strip_prefix("ticket=") {
            Some(t) if ticket.is_none() => ticket = Some(t.to_owned()),
            Some(_) => return Err(ApiError::BadRequest("`ticket` given twice".into())),
            None => rest.push(part),
        }
    }
    Ok(ticket.map(|t| (t, rest.join("&"))))
}

/// The access and the query a ticket opens the stream with: its own
/// filters, plus at most a `cursor` from the URL. The ticket must be ours,
/// unexpired, for this portal, and its token still configured.
fn ticket_access(
    app: &App,
    key: &str,
    ticket: &str,
    rest: &str,
) -> Result<(Access, [u8; 16], String), ApiError> {
    let refused = |e: TicketError| ApiError::Unauthorized(e.to_string());
    let ticket = app.tickets.verify(ticket, unix_now()).map_err(refused)?;
    if !ticket.portal.eq_ignore_ascii_case(key) {
        return Err(ApiError::Unauthorized(
            "this stream ticket is for another portal".into(),
        ));
    }
    let access = app
        .live()
        .read
        .by_fingerprint(&ticket.token)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "the token this stream ticket was issued for is no longer configured".into(),
            )
        })?;
    if rest
        .split('&')
        .any(|p| !p.is_empty() && !p.starts_with("cursor="))
    {
        return Err(ApiError::BadRequest(
            "with `ticket`, the stream takes only `cursor`: the filters are the ticket's".into(),
        ));
    }
    let query = [ticket.filters.as_str(), rest]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("&");
    Ok((access, ticket.token, query))
}
