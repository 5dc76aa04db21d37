//! What the journal stores: portal records and event records, and their
//! byte encodings.
//!
//! These are our own types; `store` puts their bytes under keys. The layout is
//! described in `migrations-notes/` and versioned by [`super::FORMAT_VERSION`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::provenance::Provenance;
use super::store::codec::BLOCK_SPAN;
use crate::types::MemberId;

/// Dense per-journal number of a portal; keys carry it instead of the
/// member id so that they stay short and fixed-width.
pub type PortalIx = u32;

/// The portal-constant part of an event's `auth`: stored once per portal,
/// not per event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortalProfile {
    /// `auth[domain]`, lower-case.
    pub domain: String,
    /// `auth[client_endpoint]`, if sent.
    pub client_endpoint: Option<String>,
    /// `auth[server_endpoint]`, if sent.
    pub server_endpoint: Option<String>,
    /// The portal-constant `auth` fields that were sent as strings (see
    /// `decode::PROFILE_FIELDS`), in that order.
    pub fixed: Vec<(String, String)>,
}

/// A portal as the journal knows it. Written in the same atomic batch as the
/// events that change it, so its counters can never disagree with them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortalRecord {
    /// This portal's number.
    pub ix: PortalIx,
    /// `auth[member_id]`.
    pub member_id: String,
    /// Every distinct (domain, endpoints) combination seen, in order; events
    /// refer to one by position. The last one is the current one.
    pub profiles: Vec<PortalProfile>,
    /// Every distinct event name seen (up to [`MAX_NAMES`]); events refer to
    /// one by position instead of repeating the name.
    pub event_names: Vec<String>,
    /// The seq the next new event gets (seqs start at 1).
    pub next_seq: u64,
    /// Events stored.
    pub events: u64,
    /// Duplicates answered.
    pub duplicates: u64,
    /// Unix ms of the first stored event.
    pub first_received_ms: Option<u64>,
    /// Unix ms of the last stored event.
    pub last_received_ms: Option<u64>,
    /// The `ts` range of the newest span (see [`SUMMARY_SPAN`]).
    pub summary: Option<SpanSummary>,
}

/// The range of `ts` over the events of one span of [`SUMMARY_SPAN`] seqs.
/// A time-range query skips every span whose range misses the query's, so
/// it reads only the spans that can match instead of a second index entry
/// per event. A span is one sealed block (see [`SUMMARY_SPAN`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpanSummary {
    /// Span number: seqs `span * SUMMARY_SPAN + 1 ..= (span + 1) * SUMMARY_SPAN`.
    pub span: u64,
    /// Lowest `ts` in the span.
    pub min_ts: u64,
    /// Highest `ts` in the span.
    pub max_ts: u64,
}

/// Seqs per summary span: one block's, so a window reads only the blocks
/// whose `ts` range meets it. `ts` is the sender's and need not grow with
/// seq, so a longer span makes a window read every block of each span it
/// meets (four, at 256) for the one or two that hold its events.
pub const SUMMARY_SPAN: u64 = BLOCK_SPAN;
/// Most event names interned per portal; later new names are stored inline.
pub const MAX_NAMES: usize = 1024;
/// Most profiles interned per portal; later new ones are stored inline.
pub const MAX_PROFILES: usize = 256;

/// The summary span a seq belongs to.
pub fn span_of(seq: u64) -> u64 {
    seq.saturating_sub(1) / SUMMARY_SPAN
}

impl PortalRecord {
    /// A portal seen for the first time.
    pub fn new(ix: PortalIx, member_id: &MemberId) -> Self {
        PortalRecord {
            ix,
            member_id: member_id.as_str().to_owned(),
            profiles: Vec::new(),
            event_names: Vec::new(),
            next_seq: 1,
            events: 0,
            duplicates: 0,
            first_received_ms: None,
            last_received_ms: None,
            summary: None,
        }
    }

    /// The current domain (of the latest profile).
    pub fn domain(&self) -> Option<&str> {
        self.profiles.last().map(|p| p.domain.as_str())
    }

    /// The domains the portal had before the current one, oldest first,
    /// each once: Bitrix24 lets an administrator change a portal's address,
    /// and the member id stays.
    pub fn previous_domains(&self) -> Vec<&str> {
        let current = self.domain();
        let mut out: Vec<&str> = Vec::new();
        for p in &self.profiles {
            let d = p.domain.as_str();
            if Some(d) != current && !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    /// The current domain, if `domain` is one this portal never had: an
    /// event that renames it.
    pub fn renamed_from(&self, domain: &str) -> Option<&str> {
        let current = self.domain()?;
        let known = self.profiles.iter().any(|p| p.domain == domain);
        (!known).then_some(current)
    }

    /// The highest seq stored so far (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The lowest seq still stored: retention deletes oldest first, so the
    /// stored events are exactly `first_seq()..=last_seq()`.
    pub fn first_seq(&self) -> u64 {
        self.next_seq.saturating_sub(self.events).max(1)
    }

    /// The position of `profile`, adding it if new; `None` once
    /// [`MAX_PROFILES`] are taken (the event then carries its profile).
    pub fn profile_index(&mut self, profile: &PortalProfile) -> Option<u32> {
        intern(&mut self.profiles, profile, MAX_PROFILES)
    }

    /// The position of `name`, adding it if new; `None` once [`MAX_NAMES`]
    /// are taken (the event then carries its name).
    pub fn name_index(&mut self, name: &str) -> Option<u32> {
        intern(&mut self.event_names, &name.to_owned(), MAX_NAMES)
    }

    /// Widens the newest span's summary with an event; returns the previous
    /// span's summary when this event starts a new span.
    pub fn summarise(&mut self, seq: u64, ts: u64) -> Option<SpanSummary> {
        let span = span_of(seq);
        match &mut self.summary {
            Some(s) if s.span == span => {
                s.min_ts = s.min_ts.min(ts);
                s.max_ts = s.max_ts.max(ts);
                None
            }
            _ => self.summary.replace(SpanSummary {
                span,
                min_ts: ts,
                max_ts: ts,
            }),
        }
    }

    /// Encodes for storage (the whole record, as version 1 stored it).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Cannot fail: postcard serialises plain structs of strings and
        // integers into a Vec without error.
        postcard::to_stdvec(self).expect("portal record serialises")
    }

    /// Encodes in two parts that concatenate to [`PortalRecord::to_bytes`]:
    /// what rarely changes (member id, profile and name tables) and the
    /// counters every batch changes, so that a batch rewrites ~40 bytes per
    /// portal instead of the whole record (postcard encodes a struct as
    /// its fields in order, so a tuple of the same fields in the same order
    /// encodes the same).
    pub fn to_split_bytes(&self) -> (Vec<u8>, Vec<u8>) {
        // Cannot fail: see to_bytes.
        let fixed =
            postcard::to_stdvec(&(&self.ix, &self.member_id, &self.profiles, &self.event_names))
                .expect("portal tables serialise");
        let counters = postcard::to_stdvec(&(
            &self.next_seq,
            &self.events,
            &self.duplicates,
            &self.first_received_ms,
            &self.last_received_ms,
            &self.summary,
        ))
        .expect("portal counters serialise");
        (fixed, counters)
    }

    /// Whether `self` differs from `old` in more than its counters.
    pub fn tables_differ(&self, old: &PortalRecord) -> bool {
        self.member_id != old.member_id
            || self.profiles.len() != old.profiles.len()
            || self.event_names.len() != old.event_names.len()
    }

    /// Decodes from storage.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// A value stored once per portal and referred to by position, or stored
/// in the event itself when the portal's table is full.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Interned<T> {
    /// Position in the portal's table.
    At(u32),
    /// The value itself.
    Inline(T),
}

/// How `data` is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum StoredData {
    /// No `data` was sent.
    Absent,
    /// Exactly `{"FIELDS":{"ID":"<entity_id>"}}`, what every CRM entity event
    /// sends: rebuilt from the entity id instead of stored.
    FieldsId,
    /// Anything else, as compact JSON.
    Json(Vec<u8>),
}

/// One journaled event, as stored (secrets were never part of it).
/// Everything constant per portal is stored once in the portal record and
/// referred to by position.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRecord {
    /// UUIDv7; its timestamp is the server's `received_at` (ms).
    pub id: [u8; 16],
    /// The portal's `ts`, Unix seconds.
    pub ts: u64,
    /// Upper-case event name.
    pub event: Interned<String>,
    /// `data[FIELDS][ID]` or `data[FIELDS_AFTER][ID]`.
    pub entity_id: Option<String>,
    /// `event_handler_id`.
    pub event_handler_id: Option<String>,
    /// Domain, endpoints and constant auth fields at receipt.
    pub profile: Interned<PortalProfile>,
    /// The remaining non-secret `auth` fields as compact JSON (empty: none).
    pub auth: Vec<u8>,
    /// `data`.
    pub data: StoredData,
    /// Pushed or pulled, and reconciliations: encoded after the body as
    /// an extension (see [`super::provenance`]), not as a field, so that
    /// records written before it decode unchanged.
    #[serde(skip)]
    pub provenance: Provenance,
}

/// Length of the mutable header in front of an encoded event: the duplicate
/// counter, kept fixed-width so a duplicate patches it in place without
/// re-encoding the record.
const HEADER: usize = 4;

impl EventRecord {
    /// Encodes with a duplicate counter of `duplicates`.
    pub fn to_bytes(&self, duplicates: u32) -> Vec<u8> {
        let mut out = duplicates.to_be_bytes().to_vec();
        // Cannot fail: postcard serialises plain structs, enums, strings and
        // integers into a Vec without error.
        let body = postcard::to_stdvec(self).expect("event record serialises");
        out.extend_from_slice(&body);
        self.provenance.encode_into(&mut out);
        out
    }

    /// Decodes a stored value into the record and its duplicate counter.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Self, u32), postcard::Error> {
        if bytes.len() < HEADER {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        let duplicates = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let (mut record, rest): (EventRecord, _) = postcard::take_from_bytes(&bytes[HEADER..])?;
        record.provenance = Provenance::decode(rest)?;
        Ok((record, duplicates))
    }

    /// The id as a UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.id)
    }

    /// `received_at` in Unix ms, taken from the UUIDv7.
    pub fn received_ms(&self) -> u64 {
        // The top 48 bits of a UUIDv7 are Unix milliseconds.
        (u128::from_be_bytes(self.id) >> 80) as u64
    }

    /// The event name, resolved against its portal.
    pub fn event_name<'a>(&'a self, portal: &'a PortalRecord) -> &'a str {
        match &self.event {
            Interned::At(i) => portal
                .event_names
                .get(*i as usize)
                .map(String::as_str)
                .unwrap_or(""),
            Interned::Inline(name) => name,
        }
    }

    /// The profile, resolved against its portal.
    pub fn profile<'a>(&'a self, portal: &'a PortalRecord) -> Option<&'a PortalProfile> {
        match &self.profile {
            Interned::At(i) => portal.profiles.get(*i as usize),
            Interned::Inline(p) => Some(p),
        }
    }

    /// `data` as JSON (`None` when absent).
    pub fn data_value(&self) -> Option<Value> {
        match &self.data {
            StoredData::Absent => None,
            StoredData::FieldsId => Some(serde_json::json!({
                "FIELDS": { "ID": self.entity_id.as_deref().unwrap_or_default() }
            })),
            StoredData::Json(bytes) => parse_json_bytes(bytes),
        }
    }
}

/// How `data` is best stored for an event with this entity id.
pub fn store_data(data: Option<&Value>, entity_id: Option<&str>) -> StoredData {
    match (data, entity_id) {
        (None, _) => StoredData::Absent,
        (Some(d), Some(id)) if *d == serde_json::json!({ "FIELDS": { "ID": id } }) => {
            StoredData::FieldsId
        }
        (Some(d), _) => StoredData::Json(
            // Cannot fail: serialising a serde_json::Value only fails for
            // non-string map keys, which Value cannot hold.
            serde_json::to_vec(d).expect("a JSON value serialises"),
        ),
    }
}

fn intern<T: Clone + PartialEq>(table: &mut Vec<T>, value: &T, max: usize) -> Option<u32> {
    match table.iter().position(|v| v == value) {
        Some(pos) => u32::try_from(pos).ok(),
        None if table.len() < max => {
            table.push(value.clone());
            u32::try_from(table.len() - 1).ok()
        }
        None => None,
    }
}

fn parse_json_bytes(bytes: &[u8]) -> Option<Value> {
    if bytes.is_empty() {
        None
    } else {
        serde_json::from_slice(bytes).ok()
    }
}

/// Increments the duplicate counter of an encoded event in place.
pub fn bump_duplicates(bytes: &mut [u8]) -> u32 {
    let mut header = [0u8; HEADER];
    header.copy_from_slice(&bytes[..HEADER]);
    let next = u32::from_be_bytes(header).saturating_add(1);
    bytes[..HEADER].copy_from_slice(&next.to_be_bytes());
    next
}

/// The `ts` and entity id of an encoded event, read without decoding the
/// rest (a scan that filters on them decodes only what matches); `None` if
/// the bytes do not hold an event. Follows postcard's encoding of
/// [`EventRecord`]: the id's 16 bytes, `ts` as a varint, the name (variant
/// varint, then a varint or a length-prefixed string), the entity id
/// (`0`, or `1` and a length-prefixed string).
pub fn peek(bytes: &[u8]) -> Option<(u64, Option<&str>)> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    fn string<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = usize::try_from(varint(b)?).ok()?;
        let s = b.get(..len)?;
        *b = &b[len..];
        Some(s)
    }
    let mut b = bytes.get(HEADER + 16..)?;
    let ts = varint(&mut b)?;
    match varint(&mut b)? {
        0 => {
            varint(&mut b)?;
        }
        1 => {
            string(&mut b)?;
        }
        _ => return None,
    }
    let entity = match b.split_first()? {
        (0, _) => None,
        (1, rest) => {
            b = rest;
            Some(std::str::from_utf8(string(&mut b)?).ok()?)
        }
        _ => return None,
    };
    Some((ts, entity))
}

/// The entity id of an encoded event (see [`peek`]).
pub fn peek_entity(bytes: &[u8]) -> Option<&str> {
    peek(bytes)?.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peek_reads_ts_and_entity_as_decoding_does() {
        for (event, entity) in [
            (Interned::At(3), Some("999")),
            (Interned::Inline("ONCRMDEALADD".to_owned()), None),
            (Interned::At(300), Some("x".repeat(200).as_str())),
        ] {
            let rec = EventRecord {
                id: uuid::Uuid::now_v7().into_bytes(),
                ts: 1_466_439_714,
                event,
                entity_id: entity.map(str::to_owned),
                event_handler_id: Some("7".into()),
                profile: Interned::At(0),
                auth: Vec::new(),
                data: StoredData::Absent,
                provenance: Default::default(),
            };
            let bytes = rec.to_bytes(3);
            assert_eq!(peek(&bytes), Some((rec.ts, entity)));
            // A pulled event's extension follows the body: peek is blind to it.
            let pulled = EventRecord {
                provenance: crate::journal::provenance::Provenance::offline("m".repeat(32)),
                ..rec
            };
            assert_eq!(peek(&pulled.to_bytes(3)), Some((pulled.ts, entity)));
        }
        assert_eq!(peek(&[0; 10]), None);
    }

    #[test]
    fn event_round_trip_and_duplicate_bump() {
        let data = json!({"FIELDS": {"ID": "999"}});
        let rec = EventRecord {
            id: uuid::Uuid::now_v7().into_bytes(),
            ts: 1466439714,
            event: Interned::At(0),
            entity_id: Some("999".into()),
            event_handler_id: None,
            profile: Interned::At(0),
            auth: br#"{"user_id":"1"}"#.to_vec(),
            data: store_data(Some(&data), Some("999")),
            provenance: Provenance::default(),
        };
        assert_eq!(rec.data, StoredData::FieldsId);
        assert_eq!(rec.data_value(), Some(data));
        assert_eq!(
            store_data(Some(&json!({"FIELDS": {"ID": 999}})), Some("999")),
            StoredData::Json(br#"{"FIELDS":{"ID":999}}"#.to_vec())
        );
        let mut bytes = rec.to_bytes(0);
        assert_eq!(bump_duplicates(&mut bytes), 1);
        assert_eq!(bump_duplicates(&mut bytes), 2);
        let (back, dups) = EventRecord::from_bytes(&bytes).unwrap();
        assert_eq!(back, rec);
        assert_eq!(dups, 2);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now_ms.abs_diff(rec.received_ms()) < 5_000);
        // The common CRM event (no per-event auth fields) stays small.
        let common = EventRecord {
            auth: Vec::new(),
            ..rec.clone()
        };
        let len = common.to_bytes(0).len();
        assert!(len < 40, "{len} bytes");
    }

    #[test]
    fn renames_keep_the_previous_domains() {
        let profile = |domain: &str, endpoint: &str| PortalProfile {
            domain: domain.into(),
            client_endpoint: Some(endpoint.into()),
            server_endpoint: None,
            fixed: Vec::new(),
        };
        let mut p = PortalRecord::new(0, &MemberId::parse("m").unwrap());
        assert_eq!(p.renamed_from("a.bitrix24.com"), None);
        p.profile_index(&profile("a.bitrix24.com", "1"));
        assert_eq!(p.renamed_from("a.bitrix24.com"), None);
        p.profile_index(&profile("a.bitrix24.com", "2"));
        assert!(p.previous_domains().is_empty());
        assert_eq!(p.renamed_from("b.bitrix24.com"), Some("a.bitrix24.com"));
        p.profile_index(&profile("b.bitrix24.com", "3"));
        assert_eq!(p.domain(), Some("b.bitrix24.com"));
        assert_eq!(p.previous_domains(), vec!["a.bitrix24.com"]);
        p.profile_index(&profile("c.bitrix24.com", "4"));
        assert_eq!(
            p.previous_domains(),
            vec!["a.bitrix24.com", "b.bitrix24.com"]
        );
    }

    #[test]
    fn split_encoding_concatenates_to_the_whole_record() {
        let mut p = PortalRecord::new(3, &MemberId::parse("m").unwrap());
        p.name_index("ONCRMDEALADD");
        p.next_seq = 77;
        p.events = 70;
        p.duplicates = 5;
        p.last_received_ms = Some(1_700_000_000_000);
        p.summarise(76, 12);
        let (fixed, counters) = p.to_split_bytes();
        assert_eq!([fixed, counters.clone()].concat(), p.to_bytes());
        assert!(counters.len() < 40, "{} bytes", counters.len());
    }

    #[test]
    fn interning_is_bounded_and_summaries_roll_over() {
        let mut p = PortalRecord::new(0, &MemberId::parse("m").unwrap());
        for i in 0..MAX_NAMES {
            assert_eq!(p.name_index(&format!("E{i}")), Some(i as u32));
        }
        assert_eq!(p.name_index("E0"), Some(0));
        assert_eq!(p.name_index("ONE_TOO_MANY"), None);
        assert_eq!(p.summarise(1, 50), None);
        assert_eq!(p.summarise(SUMMARY_SPAN, 40), None);
        let sealed = p.summarise(SUMMARY_SPAN + 1, 60).unwrap();
        assert_eq!((sealed.span, sealed.min_ts, sealed.max_ts), (0, 40, 50));
        assert_eq!(p.summary.unwrap().span, 1);
    }
}
