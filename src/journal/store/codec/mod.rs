//! The packing codec: the bytes of a sealed event block ([here](self)),
//! of the entity index's postings runs ([`postings`]) and of their filters
//! ([`filter`]), and the seq arithmetic of blocks. Pure functions of bytes
//! and numbers, below the store; when blocks are sealed and runs merged is
//! the layout policy's business (`journal::layout`).
//!
//! Events are packed because sled's cost on disk and in writer CPU is per
//! stored item, so one item per event and per index entry costs far more
//! than the events themselves.
//!
//! - **Event blocks**: the events of a portal with seqs
//!   `block * BLOCK_SPAN + 1 ..= (block + 1) * BLOCK_SPAN` live in one
//!   stored item: [`BLOCK_SPAN`] entries, an empty one for an event that is
//!   gone.
//! - **Postings**: `(entity, seq, ts, name tag)` of sealed entity events,
//!   in runs of many entities each (see [`postings`]).

pub mod filter;
pub mod postings;

/// Events per sealed block.
pub const BLOCK_SPAN: u64 = 64;

/// Stored block or postings bytes that do not decode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A block is not a postcard sequence of byte strings.
    #[error("block: {0}")]
    Block(#[source] postcard::Error),
    /// A block holds the wrong number of entries.
    #[error("block holds {0} entries, not {BLOCK_SPAN}")]
    BlockSize(usize),
    /// A postings item, run head or run list does not decode.
    #[error("postings: {0}")]
    Postings(&'static str),
    /// A run head or run list is not valid postcard.
    #[error("run: {0}")]
    Run(#[source] postcard::Error),
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
    fn name_tags_differ() {
        assert_ne!(name_tag("ONCRMDEALADD"), name_tag("ONCRMDEALUPDATE"));
    }
}
