//! What the journal stores: portal records and event records, and their
//! byte encodings.
//!
//! These are our own types; `store` puts their bytes under keys. The layout is
//! described in `migrations-notes/` and versioned by [`super::FORMAT_VERSION`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::decode::PortalProfile;
use crate::types::{EntityId, EventName, MemberId, Ts};

/// Dense per-journal number of a portal; keys carry it instead of the
/// member id so that they stay short and fixed-width.
pub type PortalIx = u32;

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
}

impl PortalRecord {
    /// A portal seen for the first time.
    pub fn new(ix: PortalIx, member_id: &MemberId) -> Self {
        PortalRecord {
            ix,
            member_id: member_id.as_str().to_owned(),
            profiles: Vec::new(),
            next_seq: 1,
            events: 0,
            duplicates: 0,
            first_received_ms: None,
            last_received_ms: None,
        }
    }

    /// The current domain (of the latest profile).
    pub fn domain(&self) -> Option<&str> {
        self.profiles.last().map(|p| p.domain.as_str())
    }

    /// The highest seq stored so far (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The position of `profile`, adding it if new; moves an already-known
    /// profile to "current" only by adding nothing (events keep their index).
    pub fn profile_index(&mut self, profile: &PortalProfile) -> u32 {
        let pos = match self.profiles.iter().position(|p| p == profile) {
            Some(pos) => pos,
            None => {
                self.profiles.push(profile.clone());
                self.profiles.len() - 1
            }
        };
        // Cannot overflow in practice: a new profile needs a domain or endpoint
        // change; u32 positions allow four billion of them.
        u32::try_from(pos).unwrap_or(u32::MAX)
    }

    /// Encodes for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Cannot fail: postcard serialises plain structs of strings and
        // integers into a Vec without error.
        postcard::to_stdvec(self).expect("portal record serialises")
    }

    /// Decodes from storage.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// One journaled event, as stored (secrets were never part of it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRecord {
    /// UUIDv7; its timestamp is the server's `received_at` (ms).
    pub id: u128,
    /// The portal's `ts`, Unix seconds.
    pub ts: u64,
    /// Upper-case event name.
    pub event: String,
    /// `data[FIELDS][ID]` or `data[FIELDS_AFTER][ID]`.
    pub entity_id: Option<String>,
    /// `event_handler_id`.
    pub event_handler_id: Option<String>,
    /// Index into the portal's profiles (domain and endpoints at receipt).
    pub profile: u32,
    /// The remaining non-secret `auth` fields as compact JSON (empty: none).
    pub auth: Vec<u8>,
    /// `data` as compact JSON (empty: absent).
    pub data: Vec<u8>,
}

/// Length of the mutable header in front of an encoded event: the duplicate
/// counter, kept fixed-width so a duplicate rewrites four bytes' worth of
/// meaning without re-encoding the record.
const HEADER: usize = 4;

impl EventRecord {
    /// Encodes with a duplicate counter of `duplicates`.
    pub fn to_bytes(&self, duplicates: u32) -> Vec<u8> {
        let mut out = duplicates.to_be_bytes().to_vec();
        // Cannot fail: see PortalRecord::to_bytes.
        let body = postcard::to_stdvec(self).expect("event record serialises");
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a stored value into the record and its duplicate counter.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Self, u32), postcard::Error> {
        if bytes.len() < HEADER {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        let duplicates = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        Ok((postcard::from_bytes(&bytes[HEADER..])?, duplicates))
    }

    /// `received_at` in Unix ms, taken from the UUIDv7.
    pub fn received_ms(&self) -> u64 {
        // The top 48 bits of a UUIDv7 are Unix milliseconds.
        (self.id >> 80) as u64
    }

    /// `data` parsed back into JSON (`None` when absent).
    pub fn data_value(&self) -> Option<Value> {
        parse_json_bytes(&self.data)
    }

    /// The stored `auth` remainder (empty when none).
    pub fn auth_map(&self) -> Map<String, Value> {
        match parse_json_bytes(&self.auth) {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        }
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

/// The deduplication key of an event within its portal: a 128-bit digest of
/// (event, entity id — or the digest of the canonical `data` when there is
/// none —, ts). 128 bits make an accidental collision practically impossible
/// while keeping keys short.
pub type DedupKey = [u8; 16];

/// Computes the dedup key (the portal is part of the storage key).
pub fn dedup_key(
    event: &EventName,
    entity_id: Option<&EntityId>,
    data: Option<&Value>,
    ts: Ts,
) -> DedupKey {
    let mut h = Sha256::new();
    h.update(event.as_str().as_bytes());
    h.update([0]);
    match entity_id {
        Some(id) => {
            h.update([1]);
            h.update(id.as_str().as_bytes());
        }
        None => {
            h.update([2]);
            let mut canonical = Vec::new();
            if let Some(data) = data {
                write_canonical(data, &mut canonical);
            }
            h.update(Sha256::digest(&canonical));
        }
    }
    h.update([0]);
    h.update(ts.secs().to_be_bytes());
    let digest = h.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// Canonical JSON: object keys sorted, no whitespace. Two bodies that differ
/// only in field order (a form and a JSON post of the same event) dedup.
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String((*k).clone()), out);
                out.push(b':');
                write_canonical(&map[*k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // Cannot fail: serialising a scalar JSON value into a Vec never errors.
        scalar => out.extend_from_slice(&serde_json::to_vec(scalar).expect("scalar serialises")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_round_trip_and_duplicate_bump() {
        let rec = EventRecord {
            id: uuid::Uuid::now_v7().as_u128(),
            ts: 1466439714,
            event: "ONCRMACTIVITYUPDATE".into(),
            entity_id: Some("999".into()),
            event_handler_id: None,
            profile: 0,
            auth: br#"{"scope":"crm"}"#.to_vec(),
            data: br#"{"FIELDS":{"ID":"999"}}"#.to_vec(),
        };
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
    }

    #[test]
    fn dedup_key_ignores_field_order_only() {
        let e = EventName::parse("ONX").unwrap();
        let ts = Ts::from_secs(5).unwrap();
        let a = json!({"a": "1", "b": {"c": "2", "d": "3"}});
        let b = json!({"b": {"d": "3", "c": "2"}, "a": "1"});
        let c = json!({"b": {"d": "3", "c": "2"}, "a": "2"});
        assert_eq!(
            dedup_key(&e, None, Some(&a), ts),
            dedup_key(&e, None, Some(&b), ts)
        );
        assert_ne!(
            dedup_key(&e, None, Some(&a), ts),
            dedup_key(&e, None, Some(&c), ts)
        );
        let id = EntityId::parse("7").unwrap();
        assert_ne!(
            dedup_key(&e, Some(&id), None, ts),
            dedup_key(&e, Some(&id), None, Ts::from_secs(6).unwrap())
        );
    }
}
