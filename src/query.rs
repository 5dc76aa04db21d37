//! Query out: the read API for dashboards.
//!
//! Every read is a range scan over big-endian keys, newest first by seq: the
//! portal's event log, or its entity index. A time range (`since`/`until`)
//! first scans the portal's block summaries (one entry per 256 events, with
//! the block's lowest and highest `ts`) and reads only the blocks that can
//! match. Readers only ever see events up to the last seq known durable,
//! so a dashboard never shows an event that a crash could still take back.
//! A page scans at most [`SCAN_BUDGET`] entries: a filter that matches rarely
//! then returns a short (even empty) page with a cursor instead of walking
//! the whole portal in one request.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::http::{check_bearer, json_response, respond, ApiError};
use crate::journal::record::{block_of, EventRecord, PortalRecord, SUMMARY_SPAN};
use crate::journal::store::{Reader, StoreError};
use crate::server::App;
use crate::types::{millis_to_rfc3339, EntityId, EventName, Ts};

/// Default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
pub const MAX_LIMIT: usize = 1000;
/// Most index or log entries one page request looks at.
pub const SCAN_BUDGET: usize = 20_000;
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
    let mut list: Vec<Value> = app.journal.with_directory(|dir| {
        dir.portals()
            .iter()
            .map(|p| {
                json!({
                    "member_id": p.member_id,
                    "domain": p.domain(),
                    "events": p.events,
                    "duplicates": p.duplicates,
                    "first_received_at": p.first_received_ms.map(millis_to_rfc3339),
                    "last_received_at": p.last_received_ms.map(millis_to_rfc3339),
                })
            })
            .collect()
    });
    // Configured portals that sent nothing yet: visible, so an operator can
    // see the configuration took.
    let journaled: Vec<String> = list
        .iter()
        .filter_map(|p| p["member_id"].as_str().map(str::to_owned))
        .collect();
    for member in app.verifier.members() {
        if !journaled.iter().any(|m| m == member.as_str()) {
            list.push(json!({
                "member_id": member.as_str(),
                "domain": null,
                "events": 0,
                "duplicates": 0,
                "first_received_at": null,
                "last_received_at": null,
            }));
        }
    }
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
    let Some(portal) = app
        .journal
        .with_directory(|dir| dir.resolve(portal).cloned())
    else {
        // A configured portal that has not sent anything yet exists, with no
        // events; anything else is unknown.
        if app.verifier.is_configured(portal) {
            return Ok(json_response(
                StatusCode::OK,
                &Page {
                    events: Vec::new(),
                    next_cursor: None,
                },
            ));
        }
        return Err(ApiError::NotFound(format!(
            "unknown portal `{}`",
            truncate(portal)
        )));
    };
    let reader = app.journal.reader().clone();
    // Range scans are synchronous sled calls: keep them off the async workers.
    let page = tokio::task::spawn_blocking(move || run(&reader, &portal, &query))
        .await
        .map_err(|e| ApiError::Internal(format!("query task failed: {e}")))?
        .map_err(|e| {
            ApiError::Unavailable {
                message: "storage unavailable".into(),
                retry_after: 5,
            }
            .log_cause(&e)
        })?;
    Ok(json_response(StatusCode::OK, &page))
}

impl ApiError {
    fn log_cause(self, cause: &StoreError) -> Self {
        tracing::error!(%cause, "query failed");
        self
    }
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
    /// Opaque text form.
    pub fn encode(self) -> String {
        let mut b = vec![CURSOR_VERSION, b's'];
        b.extend_from_slice(&self.0.to_be_bytes());
        URL_SAFE_NO_PAD.encode(b)
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
    /// Page size.
    pub limit: usize,
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
}

impl EventsQuery {
    /// Parses a raw query string; unknown, repeated or bad parameters are
    /// refused by name.
    pub fn parse(raw: &str) -> Result<EventsQuery, ApiError> {
        if raw.len() > MAX_QUERY_LEN {
            return Err(ApiError::BadRequest(format!(
                "query string is longer than {MAX_QUERY_LEN} bytes"
            )));
        }
        let mut q = EventsQuery {
            limit: DEFAULT_LIMIT,
            cursor: None,
            events: None,
            entity_id: None,
            since: None,
            until: None,
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
                    q.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or_else(|| bad("limit", "must be an integer from 1 to 1000"))?;
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
                other => {
                    return Err(ApiError::BadRequest(format!(
                    "unknown parameter `{}` (known: limit, cursor, event, entity_id, since, until)",
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
#[derive(Debug, serde::Serialize)]
pub struct Page {
    /// Event objects, newest first.
    pub events: Vec<Value>,
    /// Where the next page starts; `null` when there is nothing more.
    pub next_cursor: Option<String>,
}

/// Collects one page from candidates offered newest first, enforcing the
/// page size and the scan budget.
struct Collector<'a> {
    q: &'a EventsQuery,
    portal: &'a PortalRecord,
    events: Vec<Value>,
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
            events: Vec::new(),
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
            if self.events.len() == self.q.limit {
                // One more match exists: the page is full and not the last.
                self.done = Some(self.last_returned.map(|s| Cursor(s).encode()));
                return Ok(false);
            }
            self.events.push(render(self.portal, seq, &rec, duplicates));
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
            events: self.events,
            next_cursor: self.done.flatten(),
        }
    }
}

/// Runs a query against a durable snapshot of `portal`.
pub fn run(reader: &Reader, portal: &PortalRecord, q: &EventsQuery) -> Result<Page, StoreError> {
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
        for seq in reader.entity_desc(ix, entity.as_str(), start) {
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
        'blocks: for summary in reader.summaries_desc(ix, block_of(start)) {
            let summary = summary?;
            let lo = summary.block * SUMMARY_SPAN + 1;
            let hi = ((summary.block + 1) * SUMMARY_SPAN).min(start);
            page.scanned += 1;
            if summary.max_ts < since || summary.min_ts > until {
                if !page.budget_left(lo) {
                    break;
                }
                continue;
            }
            for event in reader.events_desc(ix, lo, hi) {
                let (seq, bytes) = event?;
                if !page.offer(seq, &bytes)? {
                    break 'blocks;
                }
            }
        }
    } else {
        for event in reader.events_desc(ix, 1, start) {
            let (seq, bytes) = event?;
            if !page.offer(seq, &bytes)? {
                break;
            }
        }
    }
    Ok(page.finish())
}

/// The public JSON form of a stored event.
fn render(portal: &PortalRecord, seq: u64, rec: &EventRecord, duplicates: u32) -> Value {
    let profile = rec.profile(portal);
    let domain = profile.map(|p| p.domain.clone());
    let mut auth = Map::new();
    auth.insert("domain".into(), json!(domain));
    auth.insert("member_id".into(), json!(portal.member_id));
    if let Some(p) = profile {
        if let Some(c) = &p.client_endpoint {
            auth.insert("client_endpoint".into(), json!(c));
        }
        if let Some(s) = &p.server_endpoint {
            auth.insert("server_endpoint".into(), json!(s));
        }
        for (k, v) in &p.fixed {
            auth.insert(k.clone(), json!(v));
        }
    }
    auth.extend(rec.auth_map());
    // Cannot fail: ts was checked to be within 1970..=9999 when received.
    let ts = Ts::from_secs(rec.ts)
        .map(Ts::to_rfc3339)
        .unwrap_or_default();
    json!({
        "id": rec.uuid().to_string(),
        "seq": seq,
        "member_id": portal.member_id,
        "domain": domain,
        "event": rec.event_name(portal),
        "entity_id": rec.entity_id,
        "ts": ts,
        "ts_unix": rec.ts,
        "received_at": millis_to_rfc3339(rec.received_ms()),
        "duplicates": duplicates,
        "event_handler_id": rec.event_handler_id,
        "data": rec.data_value(),
        "auth": auth,
    })
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
    }

    #[test]
    fn params() {
        let q = EventsQuery::parse(
            "limit=10&event=onCrmActivityAdd,ONCRMACTIVITYDELETE&since=2016-06-20T00:00:00Z",
        )
        .unwrap();
        assert_eq!(q.limit, 10);
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
