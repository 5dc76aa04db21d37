//! The layout policy: where a portal's events are stored as they arrive.
//! Used by the writer and by backups and migrations, so all produce the
//! same layout. The bytes of blocks and chunks are the store's
//! [`codec`](super::store::codec); this module decides when a block is
//! sealed and which chunk an index entry goes into.
//!
//! Each event of the unsealed tail is its own small item until its block
//! is full; the atomic batch that fills the block writes it ("seals" it),
//! deletes the tail items and appends the block's entity events to their
//! entity chunks. A block is thus written once: rewriting a growing value
//! on every append would cost several times the space.
//!
//! The invariant readers and the writer rely on: with `last` the portal's
//! last seq, seqs `..= sealed_upto(last)` are in blocks and the rest are
//! tail items.

use std::collections::{BTreeMap, HashMap};

use super::record::{EventRecord, PortalRecord};
use super::store::codec::{
    encode_block, event_block, event_block_first, name_tag, sealed_upto, ChunkEntry, BLOCK_SPAN,
    CHUNK_MAX,
};
use super::store::{Reader, StoreError, WriteBatch};

/// Appends `entry` to an entity's chunks, given its newest chunk (first seq
/// and entries) if any; returns the chunk to write (first seq, entries).
pub fn append_entry(
    newest: Option<(u64, Vec<ChunkEntry>)>,
    entry: ChunkEntry,
) -> (u64, Vec<ChunkEntry>) {
    match newest {
        Some((first, mut entries))
            if entries.len() < CHUNK_MAX && entries.last().is_none_or(|l| l.seq < entry.seq) =>
        {
            entries.push(entry);
            (first, entries)
        }
        _ => (entry.seq, vec![entry]),
    }
}

/// Lays out events of `portal` in `writes`: `fresh` holds encoded events
/// that are new (seq above `prev_last`, the last seq already in `store`) or
/// rewritten tail events; `portal` is the record as it will be after the
/// batch. Blocks that become full are sealed — their tail items read from
/// `store` and deleted, their events appended to the entity index — and
/// every other fresh event becomes a tail item. A seq in a block with no
/// event (deleted by retention before the seal) gets an empty entry.
///
/// Shared by the writer and by backups, so both produce the same layout.
pub fn lay_out(
    writes: &mut WriteBatch,
    store: &Reader,
    portal: &PortalRecord,
    prev_last: u64,
    mut fresh: BTreeMap<u64, Vec<u8>>,
) -> Result<(), StoreError> {
    let ix = portal.ix;
    let last = portal.last_seq();
    let first_live = portal.first_seq();
    let mut block = event_block(sealed_upto(prev_last) + 1);
    // Newest chunk of each entity touched, as it will be written.
    let mut chunks: HashMap<String, (u64, Vec<ChunkEntry>)> = HashMap::new();
    while event_block_first(block) + BLOCK_SPAN - 1 <= sealed_upto(last) {
        let mut entries: Vec<Vec<u8>> = Vec::with_capacity(BLOCK_SPAN as usize);
        for seq in event_block_first(block)..event_block_first(block) + BLOCK_SPAN {
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
                    let entry = ChunkEntry {
                        seq,
                        ts: rec.ts,
                        tag: name_tag(rec.event_name(portal)),
                    };
                    let newest = match chunks.remove(entity) {
                        Some(c) => Some(c),
                        None => store.newest_chunk(ix, entity)?,
                    };
                    chunks.insert(entity.to_owned(), append_entry(newest, entry));
                }
            }
            entries.push(bytes);
        }
        let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        writes.put_block(ix, block, encode_block(&refs));
        block += 1;
    }
    for (entity, (first, entries)) in &chunks {
        writes.put_chunk(ix, entity, *first, entries);
    }
    for (seq, bytes) in fresh {
        writes.put_tail(ix, seq, bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::store::codec;

    #[test]
    fn chunks_fill_and_roll_over() {
        let mut chunk = None;
        for seq in 10..10 + CHUNK_MAX as u64 {
            let e = ChunkEntry {
                seq,
                ts: 1_700_000_000 + seq,
                tag: name_tag("ONCRMACTIVITYUPDATE"),
            };
            chunk = Some(append_entry(chunk, e));
        }
        let (first, entries) = chunk.clone().unwrap();
        assert_eq!((first, entries.len()), (10, CHUNK_MAX));
        let bytes = codec::encode_chunk(first, &entries);
        assert_eq!(codec::decode_chunk(first, &bytes).unwrap(), entries);
        // A full chunk starts a new one at the new entry's seq.
        let next = ChunkEntry {
            seq: 500,
            ts: 1,
            tag: 2,
        };
        assert_eq!(append_entry(chunk, next), (500, vec![next]));
    }
}
