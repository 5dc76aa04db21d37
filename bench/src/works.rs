//! What the connections send in each phase, and what they check.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::client::{get_request, post_request, Work};
use crate::gen::{ingest_entity, mix, pick_event, write_body, FillPlan, Portal, Rng, ENTITY_BASE};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Example answers kept per counter, for the report.
const SAMPLES: usize = 5;

/// A non-200 answer kept as an example for the report.
fn sample(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    format!("{status} {text}")
}

/// Keeps `s` if `samples` holds fewer than [`SAMPLES`].
fn keep_sample(samples: &mut Vec<String>, s: impl FnOnce() -> String) {
    if samples.len() < SAMPLES {
        samples.push(s());
    }
}

// ---------------------------------------------------------------------------
// Ingest
// ---------------------------------------------------------------------------

/// Bodies already acknowledged `stored`, to resend as exact duplicates.
struct Pool {
    items: Vec<(Arc<[u8]>, u128)>,
    next: usize,
}

const POOL: usize = 4096;

/// State shared by all ingest connections of one server.
pub struct IngestShared {
    pub portals: Vec<Portal>,
    pub host: String,
    pub dup_rate: f64,
    /// New events per entity id (the entity mix, see `gen::MIXES`).
    pub per_entity: u64,
    /// `ts` of the first new event; each later one gets the next second.
    base_ts: u64,
    counter: AtomicU64,
    pool: Mutex<Pool>,
}

impl IngestShared {
    pub fn new(portals: Vec<Portal>, host: String, dup_rate: f64, per_entity: u64) -> Arc<Self> {
        Arc::new(IngestShared {
            portals,
            host,
            dup_rate,
            per_entity: per_entity.max(1),
            base_ts: unix_now(),
            counter: AtomicU64::new(0),
            pool: Mutex::new(Pool {
                items: Vec::with_capacity(POOL),
                next: 0,
            }),
        })
    }

    /// The next new event: every `per_entity` consecutive ones share an
    /// entity id (random-looking, never reused after) and its portal; each
    /// has its own `ts`, so none is a duplicate of another.
    fn fresh(&self, rng: &mut Rng, body: &mut Vec<u8>) {
        let k = self.counter.fetch_add(1, Ordering::Relaxed);
        let entity = k / self.per_entity;
        let p = &self.portals[(mix(entity ^ 0x5eed) % self.portals.len() as u64) as usize];
        let event = pick_event(rng.next_u64());
        write_body(body, p, event, ingest_entity(entity), self.base_ts + k, rng);
    }

    fn pick_resend(&self, rng: &mut Rng) -> Option<(Arc<[u8]>, u128)> {
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.items.is_empty() {
            return None;
        }
        let i = rng.below(pool.items.len() as u64) as usize;
        Some(pool.items[i].clone())
    }

    fn remember(&self, body: &[u8], id: u128) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let item = (Arc::from(body), id);
        if pool.items.len() < POOL {
            pool.items.push(item);
        } else {
            let at = pool.next;
            pool.items[at] = item;
            pool.next = (at + 1) % POOL;
        }
    }
}

/// What the ingest answers were.
#[derive(Debug, Default, Clone)]
pub struct IngestCounts {
    /// Fresh (never sent) bodies answered `stored`.
    pub fresh_stored: u64,
    /// Resent bodies answered `duplicate` with the original's id.
    pub resend_duplicate: u64,
    /// 503 answers (queue full / storage unavailable): not stored.
    pub unavailable: u64,
    /// Other non-200 answers: a correctness failure.
    pub other_status: u64,
    pub other_samples: Vec<String>,
    /// Errors: a fresh body answered `duplicate`.
    pub fresh_duplicate: u64,
    /// Errors: a resent body answered `stored`.
    pub resend_stored: u64,
    /// Errors: a duplicate answer naming another id than the original's.
    pub id_mismatch: u64,
    /// Errors: a 200 whose body was not understood.
    pub unparsed: u64,
    pub resends: u64,
}

impl IngestCounts {
    pub fn add(&mut self, o: &IngestCounts) {
        self.fresh_stored += o.fresh_stored;
        self.resend_duplicate += o.resend_duplicate;
        self.unavailable += o.unavailable;
        self.other_status += o.other_status;
        for s in &o.other_samples {
            keep_sample(&mut self.other_samples, || s.clone());
        }
        self.fresh_duplicate += o.fresh_duplicate;
        self.resend_stored += o.resend_stored;
        self.id_mismatch += o.id_mismatch;
        self.unparsed += o.unparsed;
        self.resends += o.resends;
    }

    /// Answers `stored` (each is one new event in the journal).
    pub fn stored(&self) -> u64 {
        self.fresh_stored + self.resend_stored
    }

    /// Answers `duplicate` (each bumps a counter in the journal).
    pub fn duplicates(&self) -> u64 {
        self.resend_duplicate + self.fresh_duplicate
    }
}

enum Sent {
    Fresh,
    Resend(u128),
}

pub struct IngestWork {
    shared: Arc<IngestShared>,
    rng: Rng,
    body: Vec<u8>,
    sent: Sent,
    pub counts: IngestCounts,
    /// Ids answered `stored` for fresh bodies (must all differ).
    pub stored_ids: Vec<u128>,
    /// Ceiling mode: same requests, only `200` is checked.
    ceiling: bool,
}

impl IngestWork {
    pub fn new(shared: Arc<IngestShared>, seed: u64, ceiling: bool) -> Self {
        IngestWork {
            shared,
            rng: Rng::new(seed),
            body: Vec::with_capacity(1024),
            sent: Sent::Fresh,
            counts: IngestCounts::default(),
            stored_ids: Vec::new(),
            ceiling,
        }
    }
}

/// Parses `"status":"stored|duplicate"` and the UUID of an ingest answer.
fn parse_answer(body: &[u8]) -> Option<(bool, u128)> {
    let stored = if memchr::memmem::find(body, br#""status":"stored""#).is_some() {
        true
    } else if memchr::memmem::find(body, br#""status":"duplicate""#).is_some() {
        false
    } else {
        return None;
    };
    let at = memchr::memmem::find(body, br#""id":""#)? + 6;
    let raw = body.get(at..at + 36)?;
    let mut id: u128 = 0;
    let mut digits = 0;
    for &b in raw {
        if b == b'-' {
            continue;
        }
        id = (id << 4) | (b as char).to_digit(16)? as u128;
        digits += 1;
    }
    (digits == 32).then_some((stored, id))
}

impl Work for IngestWork {
    fn request(&mut self, buf: &mut Vec<u8>) {
        self.body.clear();
        let resend = if self.ceiling || !self.rng.chance(self.shared.dup_rate) {
            None
        } else {
            self.shared.pick_resend(&mut self.rng)
        };
        match resend {
            Some((body, id)) => {
                self.body.extend_from_slice(&body);
                self.sent = Sent::Resend(id);
                self.counts.resends += 1;
            }
            None => {
                self.shared.fresh(&mut self.rng, &mut self.body);
                self.sent = Sent::Fresh;
            }
        }
        post_request(buf, &self.shared.host, &self.body);
    }

    fn response(&mut self, status: u16, body: &[u8]) -> anyhow::Result<()> {
        let c = &mut self.counts;
        match status {
            200 if self.ceiling => c.fresh_stored += 1,
            200 => match (parse_answer(body), &self.sent) {
                (None, _) => {
                    c.unparsed += 1;
                    keep_sample(&mut c.other_samples, || sample(status, body));
                }
                (Some((true, id)), Sent::Fresh) => {
                    c.fresh_stored += 1;
                    self.stored_ids.push(id);
                    self.shared.remember(&self.body, id);
                }
                (Some((false, _)), Sent::Fresh) => c.fresh_duplicate += 1,
                (Some((false, id)), Sent::Resend(orig)) => {
                    c.resend_duplicate += 1;
                    if id != *orig {
                        c.id_mismatch += 1;
                    }
                }
                (Some((true, id)), Sent::Resend(_)) => {
                    c.resend_stored += 1;
                    self.stored_ids.push(id);
                }
            },
            503 => c.unavailable += 1,
            _ => {
                c.other_status += 1;
                keep_sample(&mut c.other_samples, || sample(status, body));
            }
        }
        Ok(())
    }
}

/// Ids that occur more than once across all connections' `stored` answers.
pub fn repeated_ids<'a>(seen: &mut HashSet<u128>, ids: impl Iterator<Item = &'a u128>) -> u64 {
    let mut repeated = 0;
    for id in ids {
        if !seen.insert(*id) {
            repeated += 1;
        }
    }
    repeated
}

// ---------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// `?limit=50` for a random portal.
    Latest,
    /// Follow `next_cursor` 20 times (limit=50), then start over elsewhere.
    Walk,
    /// `?entity_id=E` for a random portal and entity of its range.
    Entity,
    /// `?since=S&until=S+W-1` for a random portal and window.
    Range,
    /// Ceiling: any GET.
    Ceiling,
    /// Ceiling: `GET /bytes/N`, an answer of N bytes.
    CeilingSized(u64),
}

pub const WALK_PAGES: u32 = 20;

impl QueryKind {
    pub fn label(self) -> &'static str {
        match self {
            QueryKind::Latest => "latest-50",
            QueryKind::Walk => "cursor walk (20 pages × 50)",
            QueryKind::Entity => "entity_id filter",
            QueryKind::Range => "since/until window",
            QueryKind::Ceiling => "ceiling GET",
            QueryKind::CeilingSized(_) => "ceiling GET, sized answer",
        }
    }
}

/// What the query answers held.
#[derive(Debug, Default, Clone)]
pub struct QueryCounts {
    pub ok: u64,
    /// Body bytes of the 200 answers.
    pub bytes: u64,
    pub events: u64,
    pub non200: u64,
    pub samples: Vec<String>,
    /// Walks that reached 20 pages.
    pub walks_done: u64,
    /// Walks that ended early (no `next_cursor`).
    pub walks_short: u64,
    /// Latest-50 answers with fewer than 50 events.
    pub short_pages: u64,
    pub empty: u64,
}

impl QueryCounts {
    pub fn add(&mut self, o: &QueryCounts) {
        self.ok += o.ok;
        self.bytes += o.bytes;
        self.events += o.events;
        self.non200 += o.non200;
        for s in &o.samples {
            keep_sample(&mut self.samples, || s.clone());
        }
        self.walks_done += o.walks_done;
        self.walks_short += o.walks_short;
        self.short_pages += o.short_pages;
        self.empty += o.empty;
    }
}

/// Width of the query phase's `since`/`until` windows, seconds.
pub const WINDOW_SECS: u64 = 30;

pub struct QueryShared {
    pub members: Vec<String>,
    pub host: std::net::SocketAddr,
    pub token: String,
    pub plan: FillPlan,
    /// Events of the plan filled so far (ts span per portal follows).
    pub filled: u64,
    /// Width of the since/until window, seconds.
    pub window: u64,
}

pub struct QueryWork {
    shared: Arc<QueryShared>,
    kind: QueryKind,
    rng: Rng,
    walk: Option<(usize, u32, Option<String>)>,
    pub counts: QueryCounts,
}

impl QueryWork {
    pub fn new(shared: Arc<QueryShared>, kind: QueryKind, seed: u64) -> Self {
        QueryWork {
            shared,
            kind,
            rng: Rng::new(seed),
            walk: None,
            counts: QueryCounts::default(),
        }
    }

    fn portal(&mut self) -> usize {
        self.rng.below(self.shared.members.len() as u64) as usize
    }
}

fn next_cursor(body: &[u8]) -> Option<String> {
    let at = memchr::memmem::rfind(body, br#""next_cursor":"#)? + 14;
    let rest = body.get(at..)?;
    if rest.first() != Some(&b'"') {
        return None;
    }
    let end = memchr::memchr(b'"', &rest[1..])?;
    Some(String::from_utf8_lossy(&rest[1..1 + end]).into_owned())
}

impl Work for QueryWork {
    fn request(&mut self, buf: &mut Vec<u8>) {
        let s = self.shared.clone();
        let path = match self.kind {
            QueryKind::Ceiling => "/v1/portals/x/events?limit=50".to_owned(),
            QueryKind::CeilingSized(n) => format!("/bytes/{n}"),
            QueryKind::Latest => {
                let p = self.portal();
                format!("/v1/portals/{}/events?limit=50", s.members[p])
            }
            QueryKind::Entity => {
                let p = self.portal();
                let e = ENTITY_BASE + self.rng.below(s.plan.entity_range);
                format!("/v1/portals/{}/events?entity_id={e}", s.members[p])
            }
            QueryKind::Range => {
                let p = self.portal();
                let per_portal = s.filled.div_ceil(s.plan.portals).max(1);
                let span = per_portal.saturating_sub(s.window).max(1);
                let since = s.plan.base_ts + self.rng.below(span);
                let until = since + s.window - 1;
                format!(
                    "/v1/portals/{}/events?since={since}&until={until}",
                    s.members[p]
                )
            }
            QueryKind::Walk => {
                if self.walk.is_none() {
                    let p = self.portal();
                    self.walk = Some((p, 0, None));
                }
                let (p, _, cursor) = self.walk.as_ref().expect("a walk was started just above");
                match cursor {
                    None => format!("/v1/portals/{}/events?limit=50", s.members[*p]),
                    Some(c) => format!("/v1/portals/{}/events?limit=50&cursor={c}", s.members[*p]),
                }
            }
        };
        buf.extend_from_slice(&get_request(s.host, &path, Some(&s.token)));
    }

    fn response(&mut self, status: u16, body: &[u8]) -> anyhow::Result<()> {
        let c = &mut self.counts;
        if status != 200 {
            c.non200 += 1;
            keep_sample(&mut c.samples, || sample(status, body));
            self.walk = None;
            return Ok(());
        }
        c.ok += 1;
        c.bytes += body.len() as u64;
        if matches!(self.kind, QueryKind::Ceiling | QueryKind::CeilingSized(_)) {
            return Ok(());
        }
        let n = memchr::memmem::find_iter(body, br#""seq":"#).count() as u64;
        c.events += n;
        if n == 0 {
            c.empty += 1;
        }
        match self.kind {
            QueryKind::Latest if n < 50 => c.short_pages += 1,
            QueryKind::Walk => {
                let cursor = next_cursor(body);
                let (_, pages, cur) = self.walk.as_mut().expect(
                    "every walk request is sent with a walk started, and only its answer ends it",
                );
                *pages += 1;
                if *pages >= WALK_PAGES {
                    c.walks_done += 1;
                    self.walk = None;
                } else if cursor.is_none() {
                    c.walks_short += 1;
                    self.walk = None;
                } else {
                    *cur = cursor;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let (stored, id) = parse_answer(
            br#"{"status":"stored","id":"0190f3c2-8d2b-7c41-9b1e-4f5a6b7c8d9e","seq":1}"#,
        )
        .unwrap();
        assert!(stored);
        assert_eq!(id, 0x0190f3c28d2b7c419b1e4f5a6b7c8d9e);
        let (stored, _) = parse_answer(
            br#"{"status":"duplicate","id":"0190f3c2-8d2b-7c41-9b1e-4f5a6b7c8d9e","seq":1}"#,
        )
        .unwrap();
        assert!(!stored);
        assert!(parse_answer(br#"{"error":"x"}"#).is_none());
    }

    #[test]
    fn cursor_parse() {
        assert_eq!(
            next_cursor(br#"{"events":[],"next_cursor":"AXMAAAAAAAAAHg"}"#).as_deref(),
            Some("AXMAAAAAAAAAHg")
        );
        assert_eq!(next_cursor(br#"{"events":[],"next_cursor":null}"#), None);
    }
}
