//! Query out: the read API for dashboards.
//!
//! Every read is a range scan over big-endian keys, newest first: the portal's
//! event log by seq, its entity index, or its `ts` index when a time range is
//! asked for. Readers only ever see events up to the last seq known durable,
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
use crate::journal::record::{EventRecord, PortalRecord};
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

/// A position in a result order: the last event a page returned (or looked
/// at). The next page starts strictly after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// In seq order (the default, and with `entity_id`).
    Seq(u64),
    /// In (ts, seq) order (with `since`/`until` and no `entity_id`).
    Ts {
        /// The event's ts.
        ts: u64,
        /// The event's seq.
        seq: u64,
    },
}

const CURSOR_VERSION: u8 = 1;

impl Cursor {
    /// Opaque text form.
    pub fn encode(self) -> String {
        let mut b = vec![CURSOR_VERSION];
        match self {
            Cursor::Seq(seq) => {
                b.push(b's');
                b.extend_from_slice(&seq.to_be_bytes());
            }
            Cursor::Ts { ts, seq } => {
                b.push(b't');
                b.extend_from_slice(&ts.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
            }
        }
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
        let u64_at = |at: usize| -> Option<u64> {
            let mut x = [0u8; 8];
            x.copy_from_slice(b.get(at..at + 8)?);
            Some(u64::from_be_bytes(x))
        };
        match (b.first(), b.get(1), b.len()) {
            (Some(&CURSOR_VERSION), Some(b's'), 10) => Ok(Cursor::Seq(u64_at(2).ok_or_else(bad)?)),
            (Some(&CURSOR_VERSION), Some(b't'), 18) => Ok(Cursor::Ts {
                ts: u64_at(2).ok_or_else(bad)?,
                seq: u64_at(10).ok_or_else(bad)?,
            }),
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
    /// Whether results come in (ts, seq) order rather than seq order.
    pub fn by_ts(&self) -> bool {
        self.entity_id.is_none() && (self.since.is_some() || self.until.is_some())
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
        match (q.cursor, q.by_ts()) {
            (Some(Cursor::Ts { .. }), false) | (Some(Cursor::Seq(_)), true) => Err(bad(
                "cursor",
                "belongs to a query with different since/until/entity_id parameters",
            )),
            _ => Ok(q),
        }
    }

    fn matches(&self, rec: &EventRecord) -> bool {
        if let Some(names) = &self.events {
            if !names.iter().any(|n| n.as_str() == rec.event) {
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

/// A candidate event: its position and stored bytes.
type Candidate = Result<(Cursor, Vec<u8>), StoreError>;

/// Runs a query against a durable snapshot of `portal`.
pub fn run(reader: &Reader, portal: &PortalRecord, q: &EventsQuery) -> Result<Page, StoreError> {
    let ix = portal.ix;
    let upper = portal.last_seq();
    let load = move |seq: u64| -> Result<Vec<u8>, StoreError> {
        reader
            .event(ix, seq)?
            .ok_or_else(|| StoreError::Corrupt(format!("index entry for missing event {seq}")))
    };
    let candidates: Box<dyn Iterator<Item = Candidate> + '_> = match (&q.entity_id, q.by_ts()) {
        (Some(entity), _) => {
            let start = match q.cursor {
                Some(Cursor::Seq(s)) => s.saturating_sub(1).min(upper),
                _ => upper,
            };
            Box::new(
                reader
                    .entity_desc(ix, entity.as_str(), start)
                    .map(move |seq| {
                        let seq = seq?;
                        Ok((Cursor::Seq(seq), load(seq)?))
                    }),
            )
        }
        (None, true) => {
            let lo = (q.since.unwrap_or(Ts::MIN).secs(), 0);
            let mut hi = (q.until.unwrap_or(Ts::MAX).secs(), u64::MAX);
            if let Some(Cursor::Ts { ts, seq }) = q.cursor {
                // Strictly below the cursor in (ts, seq) order.
                let below = if seq > 0 {
                    (ts, seq - 1)
                } else {
                    (ts.saturating_sub(1), u64::MAX)
                };
                hi = hi.min(below);
            }
            if hi < lo {
                return Ok(Page {
                    events: Vec::new(),
                    next_cursor: None,
                });
            }
            Box::new(
                reader
                    .ts_desc(ix, lo, hi)
                    // Skip events applied but not yet durable.
                    .filter(move |r| !matches!(r, Ok((_, seq)) if *seq > upper))
                    .map(move |r| {
                        let (ts, seq) = r?;
                        Ok((Cursor::Ts { ts, seq }, load(seq)?))
                    }),
            )
        }
        (None, false) => {
            let start = match q.cursor {
                Some(Cursor::Seq(s)) => s.saturating_sub(1).min(upper),
                _ => upper,
            };
            Box::new(
                reader
                    .events_desc(ix, start)
                    .map(|r| r.map(|(seq, bytes)| (Cursor::Seq(seq), bytes))),
            )
        }
    };

    let mut events = Vec::new();
    let mut last_returned = None;
    for (scanned, candidate) in candidates.enumerate() {
        let (pos, bytes) = candidate?;
        let (rec, duplicates) =
            EventRecord::from_bytes(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if q.matches(&rec) {
            if events.len() == q.limit {
                // One more match exists: the page is full and not the last.
                return Ok(Page {
                    events,
                    next_cursor: last_returned.map(Cursor::encode),
                });
            }
            let seq = match pos {
                Cursor::Seq(seq) | Cursor::Ts { seq, .. } => seq,
            };
            events.push(render(portal, seq, &rec, duplicates));
            last_returned = Some(pos);
        }
        if scanned + 1 >= SCAN_BUDGET {
            // Stop here; continue from this position on the next request.
            return Ok(Page {
                events,
                next_cursor: Some(pos.encode()),
            });
        }
    }
    Ok(Page {
        events,
        next_cursor: None,
    })
}

/// The public JSON form of a stored event.
fn render(portal: &PortalRecord, seq: u64, rec: &EventRecord, duplicates: u32) -> Value {
    let profile = portal
        .profiles
        .get(rec.profile as usize)
        .or_else(|| portal.profiles.last());
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
    }
    auth.extend(rec.auth_map());
    // Cannot fail: ts was checked to be within 1970..=9999 when received.
    let ts = Ts::from_secs(rec.ts)
        .map(Ts::to_rfc3339)
        .unwrap_or_default();
    json!({
        "id": uuid::Uuid::from_u128(rec.id).to_string(),
        "seq": seq,
        "member_id": portal.member_id,
        "domain": domain,
        "event": rec.event,
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
        for c in [
            Cursor::Seq(7),
            Cursor::Ts {
                ts: 1466439714,
                seq: 3,
            },
        ] {
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
        assert!(q.by_ts());
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
        let seq_cursor = Cursor::Seq(5).encode();
        assert!(EventsQuery::parse(&format!("since=1&cursor={seq_cursor}")).is_err());
        assert!(EventsQuery::parse(&format!("cursor={seq_cursor}")).is_ok());
    }
}
