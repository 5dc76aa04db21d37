//! Reconciliation lookup: the pushed event an offline record stands for.
//!
//! Under the `reconcile` policy a pulled record (event name, entity id,
//! `TIMESTAMP_X`) matches a stored event pushed with the same name and
//! entity and a `ts` within the window: Bitrix24 merges an object's
//! changes into one record whose time is the last change's, and the push
//! of that change carries (about) the same time. Looked for like an entity
//! duplicate (the unsealed tail, then the entity's index chunks, newest
//! first), but with the window instead of equality and only among pushed
//! events.

use super::{corrupt, entity_hash, TailCache, TailEntry};
use crate::journal::append::NewEvent;
use crate::journal::entities::EntityIndex;
use crate::journal::record::{EventRecord, PortalRecord};
use crate::journal::store::codec;
use crate::journal::store::{Reader, StoreError};

/// Sealed candidates read, newest first: the pushed event a record stands
/// for is recent, and the bound keeps a hot entity from making each pulled
/// record read its whole history.
const SEALED_LOOKED_AT: usize = 64;

impl TailCache {
    /// The seq of a stored pushed event of `portal` with `event`'s name
    /// and entity id and a `ts` within `window` seconds of its own.
    pub(crate) fn near_push(
        &mut self,
        reader: &Reader,
        entities: &EntityIndex,
        portal: &PortalRecord,
        event: &NewEvent,
        window: u64,
    ) -> Result<Option<u64>, StoreError> {
        let ix = portal.ix;
        let Some(entity) = event.entity_id.as_ref().map(|e| e.as_str()) else {
            return Ok(None);
        };
        let (name, ts, first) = (event.event.as_str(), event.ts.secs(), portal.first_seq());
        let tag = codec::name_tag(name);
        let near = |t: u64| t.abs_diff(ts) <= window;
        let matches = |bytes: &[u8]| -> Result<bool, StoreError> {
            let (stored, _) = EventRecord::from_bytes(bytes).map_err(corrupt)?;
            Ok(near(stored.ts)
                && stored.provenance.message_id.is_none()
                && stored.entity_id.as_deref() == Some(entity)
                && stored.event_name(portal) == name)
        };
        let tail = self.tail_of(reader, portal)?;
        let hash = entity_hash(entity);
        let candidates: Vec<TailEntry> = tail
            .iter()
            .rev()
            .filter(|e| e.seq >= first && e.entity == hash && near(e.ts) && e.tag == tag)
            .copied()
            .collect();
        for e in candidates {
            if let Some(bytes) = reader.tail_event(ix, e.seq)? {
                if matches(&bytes)? {
                    return Ok(Some(e.seq));
                }
            }
        }
        let sealed = entities.near(reader, ix, entity, ts, window, tag, first, SEALED_LOOKED_AT)?;
        for seq in sealed {
            if let Some(bytes) = reader.event(ix, seq)? {
                if matches(&bytes)? {
                    return Ok(Some(seq));
                }
            }
        }
        Ok(None)
    }
}
