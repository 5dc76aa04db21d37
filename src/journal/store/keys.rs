//! The key layout: one-byte prefixes, the key builders, and [`classify`],
//! which reads a key back into a [`KeyKind`].
//!
//! | prefix | key                                       | value                 |
//! |--------|-------------------------------------------|-----------------------|
//! | `T`    | portal u32 BE, seq u64 BE                 | event record (tail)   |
//! | `B`    | portal u32 BE, block u64 BE               | sealed event block    |
//! | `X`    | portal u32 BE, len u8, entity id, seq u64 | entity chunk          |
//! | `S`    | portal u32 BE, block u64 BE               | min ts, max ts u64 BE |
//! | `D`    | portal u32 BE, dedup key (16 bytes)       | seq u64 BE (events without an entity id) |
//! | `P`    | portal u32 BE                             | portal record: tables |
//! | `C`    | portal u32 BE                             | portal record: counters |
//! | `R`    | member id bytes                           | registration          |
//! | `H`    | (none)                                    | last health probe, ms |
//! | `L`    | (none)                                    | LSN of the last logged batch, u64 BE |
//! | `A`    | portal u32 BE, hour u64 BE (of `ts`)      | activity rollup (`journal::rollup`) |
//!
//! Big-endian integers make byte order equal numeric order, so a reverse range
//! scan yields newest-first without sorting.

use super::error::StoreError;
use crate::journal::dedup::key::DedupKey;
use crate::journal::record::{PortalIx, SpanSummary};

pub(super) const TAIL: u8 = b'T';
/// Version 1's per-event key (see migrations-notes/): read by `migrate` only.
pub(super) const V1_EVENT: u8 = b'E';
pub(super) const BLOCK: u8 = b'B';
pub(super) const CHUNK: u8 = b'X';
pub(super) const SUMMARY: u8 = b'S';
pub(super) const DEDUP: u8 = b'D';
pub(super) const PORTAL: u8 = b'P';
pub(super) const COUNTERS: u8 = b'C';
pub(super) const HEALTH: u8 = b'H';
pub(super) const REGISTRATION: u8 = b'R';
/// The LSN of the last logged batch applied (see the redo log, `log.rs`).
pub(super) const LSN: u8 = b'L';
/// Activity rollups, one per portal and hour (see `rollups.rs`).
pub(super) const ROLLUP: u8 = b'A';

/// A stored key, opaque outside the store: scans hand them out so that
/// maintenance (erase) can delete exactly what it found without knowing the
/// layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(pub(super) Vec<u8>);

/// What kind of record a key holds, with the numbers in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// An event of the unsealed tail.
    Tail {
        /// Portal.
        portal: PortalIx,
        /// Seq.
        seq: u64,
    },
    /// A sealed block of events.
    Block {
        /// Portal.
        portal: PortalIx,
        /// Block number (see [`event_block`](super::codec::event_block)).
        block: u64,
    },
    /// An entity index chunk.
    Chunk {
        /// Portal.
        portal: PortalIx,
        /// Entity id.
        entity: String,
        /// Seq of the chunk's first entry.
        first: u64,
    },
    /// A dedup key (events without an entity id), pointing at `seq`.
    Dedup {
        /// Portal.
        portal: PortalIx,
        /// The dedup digest.
        digest: DedupKey,
        /// Seq of the event that holds it.
        seq: u64,
    },
    /// A summary block.
    Summary {
        /// Portal.
        portal: PortalIx,
        /// The summary.
        summary: SpanSummary,
    },
    /// A portal record (either part: tables `P` or counters `C`).
    Portal(PortalIx),
    /// A registration.
    Registration,
    /// The health probe.
    Health,
    /// The LSN of the last logged batch.
    Lsn,
    /// An activity rollup record.
    Rollup {
        /// Portal.
        portal: PortalIx,
        /// Unix hour.
        hour: u64,
    },
    /// Anything else: corruption.
    Unknown,
}

/// The key `prefix`, `portal`, then each of `rest`.
pub(super) fn key(prefix: u8, portal: PortalIx, rest: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + rest.iter().map(|r| r.len()).sum::<usize>());
    k.push(prefix);
    k.extend_from_slice(&portal.to_be_bytes());
    for r in rest {
        k.extend_from_slice(r);
    }
    k
}

/// The key of `seq` under `prefix` (tail items, blocks, summaries).
pub(super) fn seq_key(prefix: u8, portal: PortalIx, seq: u64) -> Vec<u8> {
    key(prefix, portal, &[&seq.to_be_bytes()])
}

fn entity_prefix(portal: PortalIx, entity: &str) -> Vec<u8> {
    // Entity ids are at most 200 bytes (types::EntityId), so the length fits a
    // byte; the length prefix keeps "1" from matching "12".
    let len = [u8::try_from(entity.len()).unwrap_or(u8::MAX)];
    key(CHUNK, portal, &[&len, entity.as_bytes()])
}

/// The key of `entity`'s chunk whose first entry is `first`.
pub(super) fn chunk_key(portal: PortalIx, entity: &str, first: u64) -> Vec<u8> {
    let mut k = entity_prefix(portal, entity);
    k.extend_from_slice(&first.to_be_bytes());
    k
}

/// The key of a registration.
pub(super) fn registration_key(member_id: &str) -> Vec<u8> {
    let mut k = vec![REGISTRATION];
    k.extend_from_slice(member_id.as_bytes());
    k
}

/// The seq (or block number) a key ends with, or a dedup key's value.
pub(super) fn seq_suffix(k: &[u8]) -> Result<u64, StoreError> {
    let tail = k
        .len()
        .checked_sub(8)
        .map(|at| &k[at..])
        .ok_or_else(|| StoreError::Corrupt("index key too short".into()))?;
    let mut b = [0u8; 8];
    b.copy_from_slice(tail);
    Ok(u64::from_be_bytes(b))
}

/// The big-endian u64 `b` starts with.
pub(super) fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Reads what a key is from its bytes.
pub(super) fn classify(k: &[u8], v: &[u8]) -> KeyKind {
    let portal = || be_u32(k.get(1..)?);
    let parsed = match k.first() {
        Some(&TAIL) if k.len() == 13 => portal()
            .zip(be_u64(&k[5..]))
            .map(|(portal, seq)| KeyKind::Tail { portal, seq }),
        Some(&BLOCK) if k.len() == 13 => portal()
            .zip(be_u64(&k[5..]))
            .map(|(portal, block)| KeyKind::Block { portal, block }),
        Some(&CHUNK) if k.len() >= 15 => {
            let len = k[5] as usize;
            match (
                portal(),
                k.get(6..6 + len),
                k.get(6 + len..).and_then(be_u64),
            ) {
                (Some(portal), Some(entity), Some(first)) if k.len() == 14 + len => {
                    std::str::from_utf8(entity).ok().map(|e| KeyKind::Chunk {
                        portal,
                        entity: e.to_owned(),
                        first,
                    })
                }
                _ => None,
            }
        }
        Some(&DEDUP) if k.len() == 21 => match (portal(), be_u64(v)) {
            (Some(portal), Some(seq)) => {
                let mut digest = [0u8; 16];
                digest.copy_from_slice(&k[5..]);
                Some(KeyKind::Dedup {
                    portal,
                    digest,
                    seq,
                })
            }
            _ => None,
        },
        Some(&SUMMARY) if k.len() == 13 && v.len() == 16 => {
            match (portal(), be_u64(&k[5..]), be_u64(v), be_u64(&v[8..])) {
                (Some(portal), Some(span), Some(min_ts), Some(max_ts)) => Some(KeyKind::Summary {
                    portal,
                    summary: SpanSummary {
                        span,
                        min_ts,
                        max_ts,
                    },
                }),
                _ => None,
            }
        }
        Some(&PORTAL | &COUNTERS) if k.len() == 5 => portal().map(KeyKind::Portal),
        Some(&REGISTRATION) => Some(KeyKind::Registration),
        Some(&HEALTH) if k.len() == 1 => Some(KeyKind::Health),
        Some(&LSN) if k.len() == 1 && v.len() == 8 => Some(KeyKind::Lsn),
        Some(&ROLLUP) if k.len() == 13 => portal()
            .zip(be_u64(&k[5..]))
            .map(|(portal, hour)| KeyKind::Rollup { portal, hour }),
        _ => None,
    };
    parsed.unwrap_or(KeyKind::Unknown)
}
