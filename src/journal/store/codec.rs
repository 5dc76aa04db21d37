//! The packing codec: the bytes of a sealed event block and of an entity
//! index chunk, and the seq arithmetic of blocks. Pure functions of bytes
//! and numbers, below the store; when blocks are sealed and chunks
//! extended is the layout policy's business (`journal::layout`).
//!
//! Events are packed because sled's cost on disk and in writer CPU is per
//! stored item, so one item per event and per index entry costs far more
//! than the events themselves.
//!
//! - **Event blocks**: the events of a portal with seqs
//!   `block * BLOCK_SPAN + 1 ..= (block + 1) * BLOCK_SPAN` live in one
//!   stored item: [`BLOCK_SPAN`] entries, an empty one for an event that is
//!   gone.
//! - **Entity chunks**: up to [`CHUNK_MAX`] entries `(seq, ts, name tag)`
//!   of one (portal, entity). An entry carries `ts` and a tag of the event
//!   name so that deduplication of entity events — the dedup key is
//!   (event, entity, ts) — needs no key of its own: a candidate is
//!   confirmed by reading the event itself.

use serde::{Deserialize, Serialize};

/// Events per sealed block.
pub const BLOCK_SPAN: u64 = 64;
/// Most entries per entity chunk: bounds what one append rewrites.
pub const CHUNK_MAX: usize = 64;

/// Stored block or chunk bytes that do not decode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A block is not a postcard sequence of byte strings.
    #[error("block: {0}")]
    Block(#[source] postcard::Error),
    /// A block holds the wrong number of entries.
    #[error("block holds {0} entries, not {BLOCK_SPAN}")]
    BlockSize(usize),
    /// A chunk is not a postcard sequence of entries.
    #[error("chunk: {0}")]
    Chunk(#[source] postcard::Error),
    /// A chunk entry's seq does not fit a u64.
    #[error("chunk seq overflows")]
    ChunkSeqOverflow,
    /// A chunk's seqs are not strictly increasing.
    #[error("chunk seqs not increasing")]
    ChunkSeqsNotIncreasing,
}

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
pub fn decode_block(bytes: &[u8]) -> Result<Vec<&[u8]>, CodecError> {
    let entries: Vec<&[u8]> = postcard::from_bytes(bytes).map_err(CodecError::Block)?;
    if entries.len() as u64 != BLOCK_SPAN {
        return Err(CodecError::BlockSize(entries.len()));
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
pub fn decode_chunk(first: u64, bytes: &[u8]) -> Result<Vec<ChunkEntry>, CodecError> {
    let stored: Vec<StoredEntry> = postcard::from_bytes(bytes).map_err(CodecError::Chunk)?;
    let mut out = Vec::with_capacity(stored.len());
    let mut prev = None;
    for StoredEntry(delta, ts, tag) in stored {
        let seq = first
            .checked_add(delta)
            .ok_or(CodecError::ChunkSeqOverflow)?;
        if prev.is_some_and(|p| p >= seq) {
            return Err(CodecError::ChunkSeqsNotIncreasing);
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
    fn chunks_round_trip_and_refuse_seqs_out_of_order() {
        let entries: Vec<ChunkEntry> = (10..10 + CHUNK_MAX as u64)
            .map(|seq| ChunkEntry {
                seq,
                ts: 1_700_000_000 + seq,
                tag: name_tag("ONCRMACTIVITYUPDATE"),
            })
            .collect();
        let bytes = encode_chunk(10, &entries);
        assert_eq!(decode_chunk(10, &bytes).unwrap(), entries);
        let backwards: Vec<ChunkEntry> = entries.iter().rev().copied().collect();
        assert!(decode_chunk(10, &encode_chunk(10, &backwards[..2])).is_err());
        assert_ne!(name_tag("ONCRMDEALADD"), name_tag("ONCRMDEALUPDATE"));
    }
}
