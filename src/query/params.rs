//! The parameters of the events API: the query string of
//! `GET /v1/portals/{portal}/events` (and of its stream), parsed once into
//! an [`EventsQuery`], and the opaque [`Cursor`] that continues a result.
//!
//! Parsing refuses unknown, repeated or malformed parameters by name (400);
//! what is left is typed, and [`EventsQuery::filter`] hands its conditions
//! to the journal's scans.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::http::ApiError;
use crate::journal::read::EventFilter;
use crate::types::{EntityId, EventName, Ts};

/// Default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
pub const MAX_LIMIT: usize = 1000;
/// Longest long-poll wait, in seconds.
pub const MAX_WAIT_SECS: u64 = 300;
/// Longest query string accepted.
const MAX_QUERY_LEN: usize = 4096;

/// At most the first 100 characters of `s`, for echoing client input in
/// error messages.
pub(crate) fn truncate(s: &str) -> &str {
    match s.char_indices().nth(100) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The name/value pairs of a query string, decoded; a name given twice is
/// a 400, not "the last one wins", so that a client's mistake is not
/// answered with a page it did not ask for.
pub(crate) fn unique_pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
        if pairs.iter().any(|(seen, _)| *seen == name) {
            return Err(ApiError::BadRequest(format!(
                "parameter `{}` given more than once",
                truncate(&name)
            )));
        }
        pairs.push((name.into_owned(), value.into_owned()));
    }
    Ok(pairs)
}

/// A position in a result: the seq of the last event a page returned (or
/// looked at). The next page starts strictly below it. Results are always
/// in seq order, so one kind of cursor serves every filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub u64);

/// The first byte of a cursor's bytes: its format.
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
    pub(crate) fn write_json(self, out: &mut Vec<u8>) {
        // 10 bytes are 14 characters of unpadded base64.
        let mut text = [0u8; 14];
        let len = URL_SAFE_NO_PAD
            .encode_slice(self.bytes(), &mut text)
            .expect("14 bytes hold 10 bytes of unpadded base64");
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
        let bad = |name: &str, why: &str| ApiError::BadRequest(format!("invalid `{name}`: {why}"));
        for (name, value) in unique_pairs(raw)? {
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

    /// The journal's filter for this query's conditions.
    pub fn filter(&self) -> EventFilter<'_> {
        EventFilter {
            events: self.events.as_deref(),
            entity_id: self.entity_id.as_ref(),
            since: self.since,
            until: self.until,
        }
    }
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
