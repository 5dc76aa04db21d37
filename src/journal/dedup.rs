//! Deduplication: whether an event is one the journal already holds.
//!
//! Within its portal an event is identified by its dedup key: (event name,
//! entity id — or the canonical `data` when there is none —, ts). An event
//! without an entity id stores its key, and a duplicate is found by it. An
//! entity event needs no key of its own: it is looked for among its
//! entity's index entries (which carry `ts` and a tag of the event name,
//! see `pack`) and the portal's unsealed tail, and a candidate is
//! confirmed by reading the event. The writer keeps what it needs of each
//! tail in memory ([`TailCache`]), since scanning the tail items for every
//! entity event is costly.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::pack;
use super::record::{EventRecord, PortalIx, PortalRecord};
use super::store::{Reader, StoreError};
use super::NewEvent;
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

/// What deduplication needs to know about one event of a portal's
/// unsealed tail; a candidate is confirmed by reading the event.
#[derive(Debug, Clone, Copy)]
struct TailEntry {
    seq: u64,
    ts: u64,
    tag: u16,
    /// Hash of the entity id (0 when none).
    entity: u64,
}

impl TailEntry {
    fn of(seq: u64, rec: &EventRecord, portal: &PortalRecord) -> TailEntry {
        TailEntry {
            seq,
            ts: rec.ts,
            tag: pack::name_tag(rec.event_name(portal)),
            entity: rec.entity_id.as_deref().map_or(0, entity_hash),
        }
    }
}

/// A hash of an entity id for [`TailEntry`] (in memory only, so the
/// process-stable std hasher is fine).
fn entity_hash(entity: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    entity.hash(&mut h);
    h.finish()
}

fn corrupt(e: postcard::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Per portal, its unsealed tail as deduplication needs it, owned by the
/// writer so that an entity event does not read the tail items again
/// (docs/perf-notes-journal.md, `TailCache`). Loaded from the store on
/// first use, kept in step by every durable commit
/// ([`TailCache::committed`]), and forgotten whenever the tail may have
/// changed otherwise (a failed commit, erase, retention, reopen).
#[derive(Debug, Default)]
pub(crate) struct TailCache {
    tails: HashMap<PortalIx, Vec<TailEntry>>,
}

impl TailCache {
    /// Forgets every portal's tail.
    pub(crate) fn forget_all(&mut self) {
        self.tails.clear();
    }

    /// Forgets one portal's tail.
    pub(crate) fn forget(&mut self, portal: PortalIx) {
        self.tails.remove(&portal);
    }

    /// Follows a durable commit: adds its new events (`(portal, seq,
    /// record)`) to the tails held, then drops what the commit sealed.
    /// `touched` holds the committed records of the portals it changed, in
    /// number order.
    pub(crate) fn committed<'a>(
        &mut self,
        new_events: impl IntoIterator<Item = (PortalIx, u64, &'a EventRecord)>,
        touched: &[PortalRecord],
    ) {
        for (portal, seq, record) in new_events {
            if let (Some(tail), Ok(at)) = (
                self.tails.get_mut(&portal),
                touched.binary_search_by_key(&portal, |r| r.ix),
            ) {
                tail.push(TailEntry::of(seq, record, &touched[at]));
            }
        }
        for rec in touched {
            if let Some(tail) = self.tails.get_mut(&rec.ix) {
                let sealed = pack::sealed_upto(rec.last_seq());
                tail.retain(|e| e.seq > sealed);
            }
        }
    }

    /// The seq of the stored event of `portal` (as committed) that `event`,
    /// with dedup key `dedup`, duplicates, if any: an entity event is looked
    /// for among its entity's index entries and the unsealed tail, an event
    /// without an entity id by its dedup key.
    pub(crate) fn stored_duplicate(
        &mut self,
        reader: &Reader,
        portal: &PortalRecord,
        event: &NewEvent,
        dedup: &DedupKey,
    ) -> Result<Option<u64>, StoreError> {
        let ix = portal.ix;
        let Some(entity) = event.entity_id.as_ref().map(|e| e.as_str()) else {
            return reader.dedup(ix, dedup);
        };
        let (name, ts, first) = (event.event.as_str(), event.ts.secs(), portal.first_seq());
        let tag = pack::name_tag(name);
        let same = |bytes: &[u8]| -> Result<bool, StoreError> {
            let (stored, _) = EventRecord::from_bytes(bytes).map_err(corrupt)?;
            Ok(stored.ts == ts
                && stored.entity_id.as_deref() == Some(entity)
                && stored.event_name(portal) == name)
        };
        let tail = match self.tails.entry(ix) {
            Entry::Occupied(held) => held.into_mut(),
            Entry::Vacant(slot) => {
                let mut entries = Vec::new();
                for (seq, bytes) in reader.tail(ix)? {
                    let (stored, _) = EventRecord::from_bytes(&bytes).map_err(corrupt)?;
                    entries.push(TailEntry::of(seq, &stored, portal));
                }
                slot.insert(entries)
            }
        };
        let hash = entity_hash(entity);
        let candidates = tail
            .iter()
            .filter(|e| e.seq >= first && e.entity == hash && e.ts == ts && e.tag == tag);
        for e in candidates {
            // A candidate sealed meanwhile is found in the index below.
            if let Some(bytes) = reader.tail_event(ix, e.seq)? {
                if same(&bytes)? {
                    return Ok(Some(e.seq));
                }
            }
        }
        for chunk in reader.chunks(ix, entity, u64::MAX).rev() {
            let (_, entries) = chunk?;
            for e in entries.iter().rev() {
                if e.seq >= first && e.ts == ts && e.tag == tag {
                    if let Some(bytes) = reader.event(ix, e.seq)? {
                        if same(&bytes)? {
                            return Ok(Some(e.seq));
                        }
                    }
                }
            }
        }
        Ok(None)
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
