//! Deduplication: whether an event is one the journal already holds.
//!
//! Within its portal an event is identified by its dedup key: (event name,
//! entity id — or the canonical `data` when there is none —, ts). An event
//! without an entity id stores its key, and a duplicate is found by it. An
//! entity event needs no key of its own: it is looked for among its
//! entity's postings in the entity index (which carry `ts` and a tag of the
//! event name; the runs' filters say where to look, see
//! `journal::entities`) and the portal's unsealed tail, and a candidate is
//! confirmed by reading the event. The writer keeps what it needs of each
//! tail in memory ([`TailCache`]), since decoding the tail's events for
//! every entity event is costly.
//!
//! The key itself is computed in [`key`] (a leaf the store's key layout can
//! use without depending on the lookup here).

pub mod key;
mod reconcile;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use super::append::NewEvent;
use super::entities::EntityIndex;
use super::record::{EventRecord, PortalIx, PortalRecord};
use super::store::codec;
use super::store::{Reader, StoreError};

use key::DedupKey;

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
            tag: codec::name_tag(rec.event_name(portal)),
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
    StoreError::undecodable("stored event", e)
}

/// Per portal, its unsealed tail as deduplication needs it, owned by the
/// writer so that an entity event does not read the tail items again
/// (docs/performance.md, `TailCache`). Loaded from the store on
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
                let sealed = codec::sealed_upto(rec.last_seq());
                tail.retain(|e| e.seq > sealed);
            }
        }
    }

    /// `portal`'s unsealed tail, loaded from the store on first use.
    fn tail_of(
        &mut self,
        reader: &Reader,
        portal: &PortalRecord,
    ) -> Result<&mut Vec<TailEntry>, StoreError> {
        Ok(match self.tails.entry(portal.ix) {
            Entry::Occupied(held) => held.into_mut(),
            Entry::Vacant(slot) => {
                let mut entries = Vec::new();
                for (seq, bytes) in reader.tail(portal.ix)? {
                    let (stored, _) = EventRecord::from_bytes(&bytes).map_err(corrupt)?;
                    entries.push(TailEntry::of(seq, &stored, portal));
                }
                slot.insert(entries)
            }
        })
    }

    /// The seq of the stored event of `portal` (as committed) that `event`,
    /// with dedup key `dedup`, duplicates, if any: an entity event is looked
    /// for among its entity's index entries and the unsealed tail, an event
    /// without an entity id by its dedup key.
    pub(crate) fn stored_duplicate(
        &mut self,
        reader: &Reader,
        entities: &EntityIndex,
        portal: &PortalRecord,
        event: &NewEvent,
        dedup: &DedupKey,
    ) -> Result<Option<u64>, StoreError> {
        let ix = portal.ix;
        let Some(entity) = event.entity_id.as_ref().map(|e| e.as_str()) else {
            return reader.dedup(ix, dedup);
        };
        let (name, ts, first) = (event.event.as_str(), event.ts.secs(), portal.first_seq());
        let tag = codec::name_tag(name);
        let same = |bytes: &[u8]| -> Result<bool, StoreError> {
            let (stored, _) = EventRecord::from_bytes(bytes).map_err(corrupt)?;
            Ok(stored.ts == ts
                && stored.entity_id.as_deref() == Some(entity)
                && stored.event_name(portal) == name)
        };
        let tail = self.tail_of(reader, portal)?;
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
        for seq in entities.candidates(reader, ix, entity, ts, tag, first)? {
            if let Some(bytes) = reader.event(ix, seq)? {
                if same(&bytes)? {
                    return Ok(Some(seq));
                }
            }
        }
        Ok(None)
    }
}
