//! Query out: the read API for dashboards.
//!
//! Every read is a range scan over big-endian keys, newest first by seq: the
//! portal's event log, or its entity index. A time range (`since`/`until`)
//! first scans the portal's span summaries (one entry per 256 events, with
//! the span's lowest and highest `ts`) and reads only the spans that can
//! match. Readers only ever see events up to the last seq known durable,
//! so a dashboard never shows an event that a crash could still take back.
//! A page scans at most [`SCAN_BUDGET`] entries: a filter that matches rarely
//! then returns a short (even empty) page with a cursor instead of walking
//! the whole portal in one request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::http::{check_bearer, json_bytes_response, json_response, respond, ApiError};
use crate::journal::record::{
    span_of, EventRecord, Interned, PortalProfile, PortalRecord, StoredData, SUMMARY_SPAN,
};
use crate::journal::registration::{Source, Status};
use crate::journal::store::{Reader, StoreError};
use crate::server::App;
use crate::types::{millis_to_rfc3339, EntityId, EventName, Ts};

/// Default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
pub const MAX_LIMIT: usize = 1000;
/// Most index or log entries one page request looks at.
pub const SCAN_BUDGET: usize = 20_000;
/// Longest long-poll wait, in seconds.
pub const MAX_WAIT_SECS: u64 = 300;
/// Interval of SSE keep-alive comments.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Longest query string accepted.
const MAX_QUERY_LEN: usize = 4096;

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
        // work than handing it to another thread and back (harness,
        // latest-50 on 5 events per portal: 22.6k -> 30.1k req/s).
        run(&reader, &portal, &query)
    } else {
        // Filters may scan far: synchronous sled range scans stay off the
        // async workers.
        tokio::task::spawn_blocking(move || run(&reader, &portal, &query))
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
                tail(&reader, &portal, &q, after, q.page_size())
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
                tokio::task::spawn_blocking(move || tail(&reader, &portal, &q, after, 500)).await;
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

/// An event rendered for the API, with its seq.
pub type Rendered = (u64, EventJson);

/// One event object of the API as JSON text, written once by the renderer
/// and spliced as it is into pages and stream messages.
#[derive(Debug)]
pub struct EventJson(String);

impl EventJson {
    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Matching events with seq above `after`, oldest first, at most `max` (and
/// at most [`SCAN_BUDGET`] looked at); returns them with the highest seq
/// looked at, where the next call continues.
pub fn tail(
    reader: &Reader,
    portal: &PortalRecord,
    q: &EventsQuery,
    after: u64,
    max: usize,
) -> Result<(Vec<Rendered>, u64), StoreError> {
    let reader = &reader.pinned()?;
    let ix = portal.ix;
    let upper = portal.last_seq();
    let mut out = Vec::new();
    if after >= upper {
        return Ok((out, after));
    }
    // Retention may have deleted the oldest events.
    let from = (after + 1).max(portal.first_seq());
    let mut renderer = Renderer::new(portal);
    let mut visit = |seq: u64, bytes: &[u8], out: &mut Vec<Rendered>| -> Result<(), StoreError> {
        let (rec, duplicates) =
            EventRecord::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if q.matches(&rec, portal) {
            out.push((seq, renderer.render(seq, &rec, duplicates)?));
        }
        Ok(())
    };
    let mut looked = 0usize;
    if let Some(entity) = &q.entity_id {
        for seq in reader.entity(ix, entity.as_str(), from, upper) {
            let seq = seq?;
            let bytes = reader.event(ix, seq)?.ok_or_else(|| {
                StoreError::Corrupt(format!("entity index names missing event {seq}"))
            })?;
            visit(seq, &bytes, &mut out)?;
            looked += 1;
            if out.len() >= max || looked >= SCAN_BUDGET {
                return Ok((out, seq));
            }
        }
    } else {
        for event in reader.events(ix, from, upper) {
            let (seq, bytes) = event?;
            visit(seq, &bytes, &mut out)?;
            looked += 1;
            if out.len() >= max || looked >= SCAN_BUDGET {
                return Ok((out, seq));
            }
        }
    }
    // Everything up to the durable end was looked at.
    Ok((out, upper))
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(100) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A position in a result: the seq of the last event a page returned (or
/// looked at). The next page starts strictly below it. Results are always
/// in seq order, so one kind of cursor serves every filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub u64);

const CURSOR_VERSION: u8 = 1;

impl Cursor {
    /// The bytes the text form encodes.
    fn bytes(self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0] = CURSOR_VERSION;
        b[1] = b's';
        b[2..].copy_from_slice(&self.0.to_be_bytes());
        b
    }

    /// Opaque text form.
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes())
    }

    /// Appends the text form as a JSON string: URL-safe base64 needs no
    /// escaping, and nothing is allocated.
    fn write_json(self, out: &mut Vec<u8>) {
        // 10 bytes are 14 characters of unpadded base64.
        let mut text = [0u8; 14];
        // Cannot fail: the buffer fits the encoding exactly.
        let len = URL_SAFE_NO_PAD
            .encode_slice(self.bytes(), &mut text)
            .unwrap_or(0);
        out.push(b'"');
        out.extend_from_slice(&text[..len]);
        out.push(b'"');
    }

    /// Parses the text form.
    pub fn decode(raw: &str) -> Result<Cursor, ApiError> {
        let bad = || {
            ApiError::BadRequest(
                "invalid `cursor`: use the `next_cursor` of a previous page".into(),
            )
        };
        if raw.len() > 64 {
            return Err(bad());
        }
        let b = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
        match b.as_slice() {
            [CURSOR_VERSION, b's', seq @ ..] if seq.len() == 8 => {
                let mut x = [0u8; 8];
                x.copy_from_slice(seq);
                Ok(Cursor(u64::from_be_bytes(x)))
            }
            _ => Err(bad()),
        }
    }
}

/// The parameters of `GET /v1/portals/{portal}/events`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// Page size, if given (see [`EventsQuery::page_size`]).
    pub limit: Option<usize>,
    /// Where to continue.
    pub cursor: Option<Cursor>,
    /// Only these event names.
    pub events: Option<Vec<EventName>>,
    /// Only this entity.
    pub entity_id: Option<EntityId>,
    /// `ts >= since`.
    pub since: Option<Ts>,
    /// `ts <= until`.
    pub until: Option<Ts>,
    /// Long-poll: wait up to this long for events newer than `cursor`.
    pub wait: Option<Duration>,
}

impl EventsQuery {
    /// Whether the query reads just one page of consecutive events (no
    /// filter): at most `limit` events, from a handful of blocks.
    pub fn is_plain_page(&self) -> bool {
        self.events.is_none()
            && self.entity_id.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    /// The page size: `limit`, or [`DEFAULT_LIMIT`].
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }

    /// Parses a raw query string; unknown, repeated or bad parameters are
    /// refused by name.
    pub fn parse(raw: &str) -> Result<EventsQuery, ApiError> {
        if raw.len() > MAX_QUERY_LEN {
            return Err(ApiError::BadRequest(format!(
                "query string is longer than {MAX_QUERY_LEN} bytes"
            )));
        }
        let mut q = EventsQuery {
            limit: None,
            cursor: None,
            events: None,
            entity_id: None,
            since: None,
            until: None,
            wait: None,
        };
        let mut seen: Vec<String> = Vec::new();
        let bad = |name: &str, why: &str| ApiError::BadRequest(format!("invalid `{name}`: {why}"));
        for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
            if seen.iter().any(|s| *s == name) {
                return Err(ApiError::BadRequest(format!(
                    "parameter `{}` given more than once",
                    truncate(&name)
                )));
            }
            seen.push(name.to_string());
            match &*name {
                "limit" => {
                    q.limit = Some(value
                        .parse::<usize>()
                        .ok()
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or_else(|| bad("limit", "must be an integer from 1 to 1000"))?);
                }
                "cursor" => q.cursor = Some(Cursor::decode(&value)?),
                "event" => {
                    let names = value
                        .split(',')
                        .map(|n| EventName::parse(n.trim()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| bad("event", e.0))?;
                    q.events = Some(names);
                }
                "entity_id" => {
                    q.entity_id = Some(EntityId::parse(&value).map_err(|e| bad("entity_id", e.0))?)
                }
                "since" => {
                    q.since =
                        Some(Ts::parse_unix_or_rfc3339(&value).map_err(|e| bad("since", e.0))?)
                }
                "until" => {
                    q.until =
                        Some(Ts::parse_unix_or_rfc3339(&value).map_err(|e| bad("until", e.0))?)
                }
                "wait" => {
                    let secs = value
                        .parse::<u64>()
                        .ok()
                        .filter(|w| (1..=MAX_WAIT_SECS).contains(w))
                        .ok_or_else(|| bad("wait", "must be an integer from 1 to 300 (seconds)"))?;
                    q.wait = Some(Duration::from_secs(secs));
                }
                other => {
                    return Err(ApiError::BadRequest(format!(
                    "unknown parameter `{}` (known: limit, cursor, event, entity_id, since, until, wait)",
                    truncate(other)
                )))
                }
            }
        }
        if let (Some(s), Some(u)) = (q.since, q.until) {
            if s > u {
                return Err(bad("since", "is after `until`"));
            }
        }
        Ok(q)
    }

    fn matches(&self, rec: &EventRecord, portal: &PortalRecord) -> bool {
        if let Some(names) = &self.events {
            let name = rec.event_name(portal);
            if !names.iter().any(|n| n.as_str() == name) {
                return false;
            }
        }
        if self.since.is_some_and(|s| rec.ts < s.secs()) {
            return false;
        }
        if self.until.is_some_and(|u| rec.ts > u.secs()) {
            return false;
        }
        true
    }
}

/// One page of results.
#[derive(Debug)]
pub struct Page {
    /// `{"events":[` and the event objects so far, newest first, comma
    /// separated: events are rendered straight into the response body.
    body: Vec<u8>,
    /// Events in `body`.
    count: usize,
    /// Where the next page starts; `null` when there is nothing more.
    next_cursor: Option<String>,
}

impl Page {
    /// A page without events yet.
    fn new() -> Self {
        let mut body = Vec::with_capacity(4096);
        body.extend_from_slice(b"{\"events\":[");
        Page {
            body,
            count: 0,
            next_cursor: None,
        }
    }

    /// A page of already rendered events.
    fn of(events: impl IntoIterator<Item = EventJson>, next_cursor: Option<String>) -> Self {
        let mut page = Page::new();
        for event in events {
            page.separate();
            page.body.extend_from_slice(event.0.as_bytes());
        }
        page.next_cursor = next_cursor;
        page
    }

    /// Makes room for the next event object.
    fn separate(&mut self) {
        if self.count > 0 {
            self.body.push(b',');
        }
        self.count += 1;
    }

    /// Events on the page.
    pub fn event_count(&self) -> usize {
        self.count
    }

    /// The page's JSON: `{"events":[…],"next_cursor":…}`.
    pub fn into_body(self) -> Vec<u8> {
        let mut body = self.body;
        body.extend_from_slice(b"],\"next_cursor\":");
        json_opt_str(&mut body, self.next_cursor.as_deref());
        body.push(b'}');
        body
    }

    /// The page as a 200 response with [`Page::into_body`].
    fn into_response(self) -> Response {
        json_bytes_response(StatusCode::OK, self.into_body())
    }
}

/// Collects one page from candidates offered newest first, enforcing the
/// page size and the scan budget.
struct Collector<'a> {
    q: &'a EventsQuery,
    portal: &'a PortalRecord,
    renderer: Renderer<'a>,
    page: Page,
    last_returned: Option<u64>,
    scanned: usize,
    /// Set when the page is complete: `Some(cursor)` or `None` for "no more".
    done: Option<Option<String>>,
}

impl<'a> Collector<'a> {
    fn new(q: &'a EventsQuery, portal: &'a PortalRecord) -> Self {
        Collector {
            q,
            portal,
            renderer: Renderer::new(portal),
            page: Page::new(),
            last_returned: None,
            scanned: 0,
            done: None,
        }
    }

    /// Offers event `seq`; returns `false` once the page is complete.
    fn offer(&mut self, seq: u64, bytes: &[u8]) -> Result<bool, StoreError> {
        let (rec, duplicates) =
            EventRecord::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.scanned += 1;
        if self.q.matches(&rec, self.portal) {
            if self.page.count == self.q.page_size() {
                // One more match exists: the page is full and not the last.
                self.done = Some(self.last_returned.map(|s| Cursor(s).encode()));
                return Ok(false);
            }
            self.page.separate();
            self.renderer
                .render_into(&mut self.page.body, seq, &rec, duplicates)?;
            self.last_returned = Some(seq);
        }
        Ok(self.budget_left(seq))
    }

    /// Counts a look at an index entry; returns `false` when the budget is
    /// spent (the next page continues below `seq`).
    fn budget_left(&mut self, seq: u64) -> bool {
        if self.scanned >= SCAN_BUDGET {
            self.done = Some(Some(Cursor(seq).encode()));
            return false;
        }
        true
    }

    fn finish(self) -> Page {
        Page {
            next_cursor: self.done.flatten(),
            ..self.page
        }
    }
}

/// Runs a query against a durable snapshot of `portal`.
pub fn run(reader: &Reader, portal: &PortalRecord, q: &EventsQuery) -> Result<Page, StoreError> {
    let reader = &reader.pinned()?;
    let ix = portal.ix;
    // Only events known durable; below the cursor when continuing.
    let start = match q.cursor {
        Some(Cursor(seq)) => seq.saturating_sub(1).min(portal.last_seq()),
        None => portal.last_seq(),
    };
    let mut page = Collector::new(q, portal);
    if start == 0 {
        return Ok(page.finish());
    }
    if let Some(entity) = &q.entity_id {
        for seq in reader
            .entity(ix, entity.as_str(), portal.first_seq(), start)
            .rev()
        {
            let seq = seq?;
            let bytes = reader.event(ix, seq)?.ok_or_else(|| {
                StoreError::Corrupt(format!("entity index names missing event {seq}"))
            })?;
            if !page.offer(seq, &bytes)? {
                break;
            }
        }
    } else if q.since.is_some() || q.until.is_some() {
        let (since, until) = (
            q.since.unwrap_or(Ts::MIN).secs(),
            q.until.unwrap_or(Ts::MAX).secs(),
        );
        // The open span's summary is in the portal record; full spans' are
        // stored.
        let open = portal.summary.filter(|s| s.span <= span_of(start)).map(Ok);
        let stored = reader
            .summaries_desc(ix, span_of(start))
            .filter(|s| !matches!((s, &portal.summary), (Ok(s), Some(o)) if s.span == o.span));
        'spans: for summary in open.into_iter().chain(stored) {
            let summary = summary?;
            let lo = (summary.span * SUMMARY_SPAN + 1).max(portal.first_seq());
            let hi = ((summary.span + 1) * SUMMARY_SPAN).min(start);
            page.scanned += 1;
            if summary.max_ts < since || summary.min_ts > until {
                if !page.budget_left(lo) {
                    break;
                }
                continue;
            }
            for event in reader.events(ix, lo, hi).rev() {
                let (seq, bytes) = event?;
                if !page.offer(seq, &bytes)? {
                    break 'spans;
                }
            }
        }
    } else {
        for event in reader.events(ix, portal.first_seq(), start).rev() {
            let (seq, bytes) = event?;
            if !page.offer(seq, &bytes)? {
                break;
            }
        }
    }
    Ok(page.finish())
}

/// Renders the events of one portal into their public JSON form.
///
/// Each event is written once as text straight from the stored record:
/// stored JSON (`data`, the rest of `auth`) is checked and spliced in, never
/// rebuilt as a tree, and nothing goes through an intermediate
/// `serde_json::Value` or map (building those, and serialising every field
/// through serde, dominated query CPU). Keys come in the order the API
/// documents.
///
/// The portal-constant parts (member id, domain, the profile's `auth`
/// fields, event names) are the same for most events of a page, so each is
/// escaped once per renderer and copied after that: escaping them again for
/// every event was ~10 % of the CPU of a latest-50 query (perf, 10M-event
/// journal).
struct Renderer<'a> {
    portal: &'a PortalRecord,
    /// By profile position, filled on first use.
    profiles: Vec<Option<ProfileJson>>,
    /// Profile-less events (a record naming a position the portal lacks).
    no_profile: Option<ProfileJson>,
    /// JSON strings of event names, by name position, filled on first use.
    names: Vec<Option<Vec<u8>>>,
    /// The date of the last `ts` written.
    ts_day: DayCache,
    /// The date of the last `received_at` written.
    received_day: DayCache,
}

/// Writes RFC 3339 UTC timestamps, keeping the date part of the last day
/// written: the events of a page mostly share their day, so only the time
/// of day (plain division of the seconds of the day: UTC, no leap seconds
/// in Unix time) is written per event. Formatting each whole timestamp,
/// calendar and all, was ~5 % of latest-50 CPU (perf, 10M journal).
#[derive(Default)]
struct DayCache(Option<(u64, [u8; 10])>);

impl DayCache {
    /// Appends `"YYYY-MM-DDTHH:MM:SSZ"`, or with `.mmm` before the `Z`
    /// when `millis` (below 1000) is given. `secs` must be within
    /// [`Ts`]'s range.
    fn write(&mut self, out: &mut Vec<u8>, secs: u64, millis: Option<u64>) {
        let day = secs / 86_400;
        let date = match self.0 {
            Some((cached, date)) if cached == day => date,
            _ => {
                let mut date = *b"1970-01-01";
                // The date part of the day's midnight.
                if let Ok(midnight) = Ts::from_secs(day * 86_400) {
                    let text = midnight.to_rfc3339();
                    if let Some(part) = text.as_bytes().get(..10) {
                        date.copy_from_slice(part);
                    }
                }
                self.0 = Some((day, date));
                date
            }
        };
        let of_day = secs % 86_400;
        out.push(b'"');
        out.extend_from_slice(&date);
        out.push(b'T');
        two_digits(out, of_day / 3600);
        out.push(b':');
        two_digits(out, of_day / 60 % 60);
        out.push(b':');
        two_digits(out, of_day % 60);
        if let Some(ms) = millis {
            out.push(b'.');
            out.push(b'0' + (ms / 100 % 10) as u8);
            two_digits(out, ms % 100);
        }
        out.extend_from_slice(b"Z\"");
    }
}

/// Appends `n` (below 100) as two digits.
fn two_digits(out: &mut Vec<u8>, n: u64) {
    out.push(b'0' + (n / 10 % 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// The JSON fragments one portal profile contributes to every event.
struct ProfileJson {
    /// `,"member_id":…,"domain":…`
    head: Vec<u8>,
    /// `,"auth":{"domain":…,"member_id":…` and the profile's constant
    /// fields, left open for the event's own `auth` members.
    auth: Vec<u8>,
}

impl ProfileJson {
    fn new(portal: &PortalRecord, profile: Option<&PortalProfile>) -> Self {
        let domain = profile.map(|p| p.domain.as_str());
        let mut head = Vec::with_capacity(96);
        head.extend_from_slice(b",\"member_id\":");
        json_str(&mut head, &portal.member_id);
        head.extend_from_slice(b",\"domain\":");
        json_opt_str(&mut head, domain);
        let mut auth = Vec::with_capacity(256);
        auth.extend_from_slice(b",\"auth\":{\"domain\":");
        json_opt_str(&mut auth, domain);
        auth.extend_from_slice(b",\"member_id\":");
        json_str(&mut auth, &portal.member_id);
        if let Some(p) = profile {
            let fields = [
                ("client_endpoint", p.client_endpoint.as_deref()),
                ("server_endpoint", p.server_endpoint.as_deref()),
            ];
            let fixed = p.fixed.iter().map(|(k, v)| (k.as_str(), Some(v.as_str())));
            for (key, value) in fields.into_iter().chain(fixed) {
                if let Some(value) = value {
                    auth.push(b',');
                    json_str(&mut auth, key);
                    auth.push(b':');
                    json_str(&mut auth, value);
                }
            }
        }
        ProfileJson { head, auth }
    }
}

impl<'a> Renderer<'a> {
    /// A renderer for events of `portal`.
    fn new(portal: &'a PortalRecord) -> Self {
        Renderer {
            portal,
            profiles: std::iter::repeat_with(|| None)
                .take(portal.profiles.len())
                .collect(),
            no_profile: None,
            names: vec![None; portal.event_names.len()],
            ts_day: DayCache::default(),
            received_day: DayCache::default(),
        }
    }

    /// Event `seq` as JSON. Fails only on a corrupt record.
    fn render(
        &mut self,
        seq: u64,
        rec: &EventRecord,
        duplicates: u32,
    ) -> Result<EventJson, StoreError> {
        let mut out = Vec::with_capacity(768);
        self.render_into(&mut out, seq, rec, duplicates)?;
        String::from_utf8(out)
            .map(EventJson)
            .map_err(|_| StoreError::Corrupt(format!("event {seq}: stored text")))
    }

    /// Appends event `seq` as JSON to `out`. The text is UTF-8 by
    /// construction: every piece is a `str` or stored JSON that
    /// `RawValue` checked. Fails only on a corrupt record, with `out` partly
    /// written: callers drop it (the whole answer fails).
    fn render_into(
        &mut self,
        out: &mut Vec<u8>,
        seq: u64,
        rec: &EventRecord,
        duplicates: u32,
    ) -> Result<(), StoreError> {
        let portal = self.portal;
        let corrupt = |what: &str| StoreError::Corrupt(format!("event {seq}: stored {what}"));
        let inline;
        let profile = match &rec.profile {
            Interned::At(i) => match portal.profiles.get(*i as usize) {
                Some(p) => self.profiles[*i as usize]
                    .get_or_insert_with(|| ProfileJson::new(portal, Some(p))),
                None => self
                    .no_profile
                    .get_or_insert_with(|| ProfileJson::new(portal, None)),
            },
            Interned::Inline(p) => {
                inline = ProfileJson::new(portal, Some(p));
                &inline
            }
        };
        let mut uuid = uuid::Uuid::encode_buffer();
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(rec.uuid().hyphenated().encode_lower(&mut uuid).as_bytes());
        out.extend_from_slice(b"\",\"seq\":");
        json_u64(out, seq);
        out.extend_from_slice(b",\"cursor\":");
        Cursor(seq).write_json(out);
        out.extend_from_slice(&profile.head);
        out.extend_from_slice(b",\"event\":");
        match &rec.event {
            Interned::At(i) if (*i as usize) < self.names.len() => {
                let name = self.names[*i as usize].get_or_insert_with(|| {
                    let mut name = Vec::new();
                    json_str(&mut name, rec.event_name(portal));
                    name
                });
                out.extend_from_slice(name);
            }
            _ => json_str(out, rec.event_name(portal)),
        }
        out.extend_from_slice(b",\"entity_id\":");
        json_opt_str(out, rec.entity_id.as_deref());
        out.extend_from_slice(b",\"ts\":");
        // ts was checked to be within 1970..=9999 when received.
        self.ts_day
            .write(out, Ts::from_secs(rec.ts).unwrap_or(Ts::MIN).secs(), None);
        out.extend_from_slice(b",\"ts_unix\":");
        json_u64(out, rec.ts);
        out.extend_from_slice(b",\"received_at\":");
        let received = rec.received_ms();
        if received / 1000 <= Ts::MAX.secs() {
            self.received_day
                .write(out, received / 1000, Some(received % 1000));
        } else {
            json_str(out, &millis_to_rfc3339(received));
        }
        out.extend_from_slice(b",\"duplicates\":");
        json_u64(out, u64::from(duplicates));
        out.extend_from_slice(b",\"event_handler_id\":");
        json_opt_str(out, rec.event_handler_id.as_deref());
        out.extend_from_slice(b",\"data\":");
        match &rec.data {
            StoredData::Absent => out.extend_from_slice(b"null"),
            StoredData::FieldsId => {
                out.extend_from_slice(b"{\"FIELDS\":{\"ID\":");
                json_str(out, rec.entity_id.as_deref().unwrap_or_default());
                out.extend_from_slice(b"}}");
            }
            StoredData::Json(bytes) => {
                serde_json::from_slice::<&RawValue>(bytes).map_err(|_| corrupt("data"))?;
                out.extend_from_slice(bytes);
            }
        }
        // The non-secret `auth` fields: the portal-constant ones from the
        // profile, then the ones stored with the event.
        out.extend_from_slice(&profile.auth);
        if !rec.auth.is_empty() {
            // A JSON object written by serde_json at receipt: its members go
            // in as they are.
            let raw =
                serde_json::from_slice::<&RawValue>(&rec.auth).map_err(|_| corrupt("auth"))?;
            let members = raw
                .get()
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .ok_or_else(|| corrupt("auth"))?;
            if !members.is_empty() {
                out.push(b',');
                out.extend_from_slice(members.as_bytes());
            }
        }
        out.extend_from_slice(b"}}");
        Ok(())
    }
}

/// Writes `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Cannot fail: a str always serialises and writing to a Vec does not
    // fail.
    let _ = serde_json::to_writer(out, s);
}

/// Writes `s` as a JSON string, or `null`.
fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Writes `n` as a JSON number.
fn json_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_garbage() {
        for c in [Cursor(7), Cursor(u64::MAX)] {
            assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }
        assert!(Cursor::decode("").is_err());
        assert!(Cursor::decode("!!!").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode([9u8; 10])).is_err());
        for c in [Cursor(0), Cursor(7), Cursor(1 << 40), Cursor(u64::MAX)] {
            let mut out = Vec::new();
            c.write_json(&mut out);
            assert_eq!(out, serde_json::to_vec(&c.encode()).unwrap());
        }
    }

    /// The day cache writes what `Ts::to_rfc3339` and `millis_to_rfc3339`
    /// write for the whole timestamp,
    /// whether the day is cached or not: day and year boundaries, leap
    /// days, the last second of year 9999, and a pseudo-random spread.
    #[test]
    fn day_cache_matches_whole_timestamps() {
        let mut secs: Vec<u64> = vec![
            0,
            59,
            86_399,
            86_400,
            951_782_399,
            951_782_400,
            951_868_799,
            1_466_439_714,
            1_700_000_000,
            Ts::MAX.secs(),
            Ts::MAX.secs() - 86_399,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let last = *secs.last().unwrap();
            // Mostly near the previous value (cache hits), sometimes anywhere.
            secs.push(if x.is_multiple_of(4) {
                (x >> 11) % (Ts::MAX.secs() + 1)
            } else {
                (last + (x >> 40) % 7_200).min(Ts::MAX.secs())
            });
        }
        let (mut plain, mut precise) = (DayCache::default(), DayCache::default());
        for (i, &s) in secs.iter().enumerate() {
            let mut out = Vec::new();
            plain.write(&mut out, s, None);
            let want = format!("\"{}\"", Ts::from_secs(s).unwrap().to_rfc3339());
            assert_eq!(String::from_utf8(out).unwrap(), want, "secs {s}");
            let ms = s * 1000 + (i as u64 * 37) % 1000;
            let mut out = Vec::new();
            precise.write(&mut out, s, Some(ms % 1000));
            let want = format!("\"{}\"", millis_to_rfc3339(ms));
            assert_eq!(String::from_utf8(out).unwrap(), want, "ms {ms}");
        }
    }

    #[test]
    fn params() {
        let q = EventsQuery::parse(
            "limit=10&event=onCrmActivityAdd,ONCRMACTIVITYDELETE&since=2016-06-20T00:00:00Z",
        )
        .unwrap();
        assert_eq!(q.page_size(), 10);
        assert_eq!(q.events.as_ref().unwrap()[0].as_str(), "ONCRMACTIVITYADD");
        assert_eq!(q.since.unwrap().secs(), 1466380800);
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "lmit=3",
            "limit=1&limit=2",
            "since=yesterday",
            "since=10&until=5",
            "cursor=zz",
            "entity_id=",
        ] {
            let err = EventsQuery::parse(bad).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{bad}");
        }
        let cursor = Cursor(5).encode();
        assert_eq!(
            EventsQuery::parse(&format!("since=1&cursor={cursor}"))
                .unwrap()
                .cursor,
            Some(Cursor(5))
        );
    }
}
