//! The dedup key: what identifies an event within its portal.
//!
//! A pure function of the event's fields, computed at receipt and again
//! from a stored record (verification, retention). Kept apart from the
//! lookup in the parent module so that the store, which files the keys,
//! depends only on this.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::journal::record::{EventRecord, PortalRecord};
use crate::types::{EntityId, EventName, Ts};

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

/// Recomputes the dedup key of a stored event (for verification and for
/// deleting it); `None` if its stored fields no longer parse.
pub fn dedup_key_of_record(rec: &EventRecord, portal: &PortalRecord) -> Option<DedupKey> {
    let event = EventName::parse(rec.event_name(portal)).ok()?;
    let entity = match &rec.entity_id {
        Some(e) => Some(EntityId::parse(e).ok()?),
        None => None,
    };
    let data = rec.data_value();
    let ts = Ts::from_secs(rec.ts).ok()?;
    Some(dedup_key(&event, entity.as_ref(), data.as_ref(), ts))
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
