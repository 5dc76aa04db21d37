//! The layout policy: where a portal's events are stored as they arrive.
//! Used by the writer and by backups and migrations, so all produce the
//! same layout. The bytes of blocks and postings are the store's
//! [`codec`](super::store::codec); this module decides when a block is
//! sealed, and `runs` how the entity index's runs change.
//!
//! Each event of the unsealed tail is its own small item, kept in memory
//! and in the redo log only, until its block is full; the commit that
//! fills the block writes it to sled ("seals" it), drops the tail items and
//! adds a run of the block's entity events to the entity index. A block is
//! thus written once: rewriting a growing value on every append would cost
//! several times the space.
//!
//! The invariant readers and the writer rely on: with `last` the portal's
//! last seq, seqs `..= sealed_upto(last)` are in blocks and the rest are
//! tail items.

pub mod runs;

use std::collections::BTreeMap;

use super::record::{EventRecord, PortalRecord};
use super::store::codec::postings::Posting;
use super::store::codec::{
    encode_block, event_block, event_block_first, name_tag, sealed_upto, BLOCK_SPAN,
};
use super::store::{Reader, StoreError, WriteBatch};
use runs::RunsUpdate;

/// Lays out events of `portal` in `writes`: `fresh` holds encoded events
/// that are new (seq above `prev_last`, the last seq already in `store`) or
/// rewritten tail events; `portal` is the record as it will be after the
/// batch. Blocks that become full are sealed — their tail items read from
/// `store` and dropped, their entity events added to `runs` — and every
/// other fresh event becomes a tail item. A seq in a block with no event
/// (deleted by retention before the seal) gets an empty entry.
///
/// Shared by the writer and by backups, so both produce the same layout.
pub fn lay_out(
    writes: &mut WriteBatch,
    store: &Reader,
    portal: &PortalRecord,
    prev_last: u64,
    mut fresh: BTreeMap<u64, Vec<u8>>,
    runs: &mut RunsUpdate,
) -> Result<(), StoreError> {
    let ix = portal.ix;
    let last = portal.last_seq();
    let first_live = portal.first_seq();
    let mut block = event_block(sealed_upto(prev_last) + 1);
    while event_block_first(block) + BLOCK_SPAN - 1 <= sealed_upto(last) {
        let lo = event_block_first(block);
        let hi = lo + BLOCK_SPAN - 1;
        let mut entries: Vec<Vec<u8>> = Vec::with_capacity(BLOCK_SPAN as usize);
        let mut postings = Vec::new();
        for seq in lo..=hi {
            let bytes = match fresh.remove(&seq) {
                Some(bytes) => Some(bytes),
                None if seq <= prev_last => store.tail_event(ix, seq)?,
                None => None,
            };
            if seq <= prev_last {
                writes.delete_tail(ix, seq);
            }
            let bytes = match bytes {
                Some(b) if seq >= first_live => b,
                _ => Vec::new(),
            };
            if !bytes.is_empty() {
                let (rec, _) = EventRecord::from_bytes(&bytes)
                    .map_err(|e| StoreError::undecodable(format!("event {ix}/{seq}"), e))?;
                if let Some(entity) = rec.entity_id.as_deref() {
                    postings.push(Posting {
                        entity: entity.to_owned(),
                        seq,
                        ts: rec.ts,
                        tag: name_tag(rec.event_name(portal)),
                    });
                }
            }
            entries.push(bytes);
        }
        let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        writes.put_block(ix, block, encode_block(&refs));
        runs.add_block(writes, store, lo, hi, postings, first_live)?;
        block += 1;
    }
    for (seq, bytes) in fresh {
        writes.put_tail(ix, seq, bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
