//! Packed layouts: how many events share one storage item.
//!
//! sled pays several hundred bytes on disk and tens of microseconds of
//! writer CPU per item it stores (a log fragment per change, whole-leaf
//! rewrites, segments kept until half dead), so one item per event and per
//! index entry cost ~1.4 KB per event. The journal therefore packs:
//!
//! - **Event blocks**: the events of a portal with seqs
//!   `block * BLOCK_SPAN + 1 ..= (block + 1) * BLOCK_SPAN` live in one item,
//!   written once when the block is full ("sealed"). Until then each event of
//!   the unsealed tail is its own small item, moved into the block by the
//!   same atomic batch that writes the block — so a block is never rewritten
//!   as it fills (rewriting a growing value on every append measured 3× the
//!   space).
//! - **Entity chunks**: the entity index keeps, per (portal, entity), chunks
//!   of up to [`CHUNK_MAX`] entries `(seq, ts, name tag)`, appended when the
//!   events' block is sealed. An entry carries `ts` and a tag of the event
//!   name so that deduplication of entity events — the dedup key is
//!   (event, entity, ts) — needs no key of its own: a candidate is confirmed
//!   by reading the event itself.
//!
//! The invariant readers and the writer rely on: with `last` the portal's
//! last seq, seqs `..= sealed_upto(last)` are in blocks and the rest are tail
//! items.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::record::{EventRecord, PortalRecord};
use super::store::{Reader, StoreError, WriteBatch};

/// Events per sealed block.
pub const BLOCK_SPAN: u64 = 64;
/// Most entries per entity chunk: bounds what one append rewrites.
pub const CHUNK_MAX: usize = 64;

/// The block a seq (≥ 1) belongs to.
pub fn event_block(seq: u64) -> u64 {
    seq.saturating_sub(1) / BLOCK_SPAN
}

/// The first seq of `block`.
pub fn event_block_first(block: u64) -> u64 {
    block * BLOCK_SPAN + 1
}

/// The highest seq in a sealed block when the last seq is `last`.
pub fn sealed_upto(last: u64) -> u64 {
    last / BLOCK_SPAN * BLOCK_SPAN
}

/// Encodes a full block: exactly [`BLOCK_SPAN`] entries, an empty entry for
/// an event that is gone (deleted by retention before its block was sealed).
pub fn encode_block(entries: &[&[u8]]) -> Vec<u8> {
    debug_assert_eq!(entries.len() as u64, BLOCK_SPAN);
    // Cannot fail: postcard serialises a sequence of byte strings into a
    // Vec without error.
    postcard::to_stdvec(entries).expect("block serialises")
}

/// The entries of a stored block, borrowed from its bytes.
pub fn decode_block(bytes: &[u8]) -> Result<Vec<&[u8]>, StoreError> {
    let entries: Vec<&[u8]> =
        postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("block: {e}")))?;
    if entries.len() as u64 != BLOCK_SPAN {
        return Err(StoreError::Corrupt(format!(
            "block holds {} entries, not {BLOCK_SPAN}",
            entries.len()
        )));
    }
    Ok(entries)
}

/// One entity index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    /// The event's seq.
    pub seq: u64,
    /// The event's `ts` (seconds).
    pub ts: u64,
    /// [`name_tag`] of the event's name.
    pub tag: u16,
}

/// Stored form of an entry: seq relative to the chunk's first seq, so that
/// postcard's varints keep it to a byte or two.
#[derive(Serialize, Deserialize)]
struct StoredEntry(u64, u64, u16);

/// Encodes the entries of a chunk whose key names `first` (the seq of its
/// first entry). Entries must be in increasing seq order, all `>= first`.
pub fn encode_chunk(first: u64, entries: &[ChunkEntry]) -> Vec<u8> {
    let stored: Vec<StoredEntry> = entries
        .iter()
        .map(|e| StoredEntry(e.seq - first, e.ts, e.tag))
        .collect();
    // Cannot fail: plain integers serialise into a Vec without error.
    postcard::to_stdvec(&stored).expect("chunk serialises")
}

/// Decodes a chunk stored under first seq `first`.
pub fn decode_chunk(first: u64, bytes: &[u8]) -> Result<Vec<ChunkEntry>, StoreError> {
    let stored: Vec<StoredEntry> =
        postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("chunk: {e}")))?;
    let mut out = Vec::with_capacity(stored.len());
    let mut prev = None;
    for StoredEntry(delta, ts, tag) in stored {
        let seq = first
            .checked_add(delta)
            .ok_or_else(|| StoreError::Corrupt("chunk seq overflows".into()))?;
        if prev.is_some_and(|p| p >= seq) {
            return Err(StoreError::Corrupt("chunk seqs not increasing".into()));
        }
        prev = Some(seq);
        out.push(ChunkEntry { seq, ts, tag });
    }
    Ok(out)
}

/// A 16-bit tag of an event name (FNV-1a): lets a dedup check skip entries
/// of other events without reading them. Collisions only cost a read.
pub fn name_tag(name: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h ^ (h >> 16)) as u16
}

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
                    .map_err(|e| StoreError::Corrupt(format!("event {ix}/{seq}: {e}")))?;
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

    #[test]
    fn blocks_round_trip_and_refuse_wrong_sizes() {
        let payloads: Vec<Vec<u8>> = (0..BLOCK_SPAN).map(|i| vec![i as u8; i as usize]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let bytes = encode_block(&refs);
        assert_eq!(decode_block(&bytes).unwrap(), refs);
        let short = postcard::to_stdvec(&refs[..3]).unwrap();
        assert!(decode_block(&short).is_err());
        assert!(decode_block(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn block_arithmetic() {
        assert_eq!(event_block(1), 0);
        assert_eq!(event_block(BLOCK_SPAN), 0);
        assert_eq!(event_block(BLOCK_SPAN + 1), 1);
        assert_eq!(event_block_first(1), BLOCK_SPAN + 1);
        assert_eq!(sealed_upto(BLOCK_SPAN - 1), 0);
        assert_eq!(sealed_upto(BLOCK_SPAN), BLOCK_SPAN);
        assert_eq!(sealed_upto(2 * BLOCK_SPAN + 5), 2 * BLOCK_SPAN);
    }

    #[test]
    fn chunks_round_trip_fill_and_roll_over() {
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
        let bytes = encode_chunk(first, &entries);
        assert_eq!(decode_chunk(first, &bytes).unwrap(), entries);
        // A full chunk starts a new one at the new entry's seq.
        let next = ChunkEntry {
            seq: 500,
            ts: 1,
            tag: 2,
        };
        assert_eq!(append_entry(chunk, next), (500, vec![next]));
        assert_ne!(name_tag("ONCRMDEALADD"), name_tag("ONCRMDEALUPDATE"));
    }
}
