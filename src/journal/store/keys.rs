//! The key layout: one-byte prefixes, the key builders, [`tier`], which
//! says where a key's writes live, and [`classify`], which reads a key back
//! into a [`KeyKind`].
//!
//! | prefix | key                                       | value                 | tier |
//! |--------|-------------------------------------------|-----------------------|------|
//! | `T`    | portal u32 BE, seq u64 BE                 | event record (tail)   | log only |
//! | `B`    | portal u32 BE, block u64 BE               | sealed event block    | engine |
//! | `I`    | portal u32 BE, run u32 BE, len u8, entity id, seq u64 BE | entity postings of a run, from this entity and seq on | engine |
//! | `J`    | portal u32 BE, run u32 BE                 | run head (level, seqs, filters) | engine |
//! | `M`    | portal u32 BE                             | the portal's runs     | engine |
//! | `S`    | portal u32 BE, block u64 BE               | min ts, max ts u64 BE | engine |
//! | `D`    | portal u32 BE, dedup key (16 bytes)       | seq u64 BE (events without an entity id) | engine |
//! | `P`    | portal u32 BE                             | portal record: tables | engine |
//! | `C`    | portal u32 BE                             | portal record: counters | deferred |
//! | `R`    | member id bytes                           | registration          | engine |
//! | `H`    | (none)                                    | last health probe, ms | engine |
//! | `L`    | (none)                                    | LSN of the last logged batch, u64 BE | engine |
//! | `Q`    | (none)                                    | cluster mode: last applied stream sequence, u64 BE (`stream_pos.rs`) | engine |
//! | `O`    | member id bytes                           | offline pull state (sealed token) | engine |
//! | `A`    | portal u32 BE, hour u64 BE (of `ts`)      | activity rollup (`journal::rollup`) | engine |
//!
//! Big-endian integers make byte order equal numeric order, so a reverse range
//! scan yields newest-first without sorting. `X` (entity chunks) was version
//! 3's entity index; `migrate` skips it.

use super::error::StoreError;
use super::log::Tier;
use crate::journal::dedup::key::DedupKey;
use crate::journal::record::{PortalIx, SpanSummary};

pub(super) const TAIL: u8 = b'T';
/// Version 1's per-event key (see migrations-notes/): read by `migrate` only.
pub(super) const V1_EVENT: u8 = b'E';
pub(super) const BLOCK: u8 = b'B';
/// Version 3's entity chunks (see migrations-notes/): skipped by `migrate`.
pub(super) const V3_CHUNK: u8 = b'X';
pub(super) const RUN_ITEM: u8 = b'I';
pub(super) const RUN_HEAD: u8 = b'J';
pub(super) const RUNS: u8 = b'M';
pub(super) const SUMMARY: u8 = b'S';
pub(super) const DEDUP: u8 = b'D';
pub(super) const PORTAL: u8 = b'P';
pub(super) const COUNTERS: u8 = b'C';
pub(super) const HEALTH: u8 = b'H';
pub(super) const REGISTRATION: u8 = b'R';
/// The LSN of the last logged batch applied (see the redo log, `log.rs`).
pub(super) const LSN: u8 = b'L';
/// Cluster mode: the last applied stream message (see `stream_pos.rs`).
pub(super) const STREAM_SEQ: u8 = b'Q';
/// Activity rollups, one per portal and hour (see `rollups.rs`).
pub(super) const ROLLUP: u8 = b'A';

/// A portal's offline pull state (`journal::pull_state`): additive, a
/// data directory without any is a directory where pulling never ran.
pub(super) const PULL_STATE: u8 = b'O';

/// Where the writes of `key` live after the redo log (see `log.rs`): the
/// unsealed tail's events in memory and the log only, so that sled is
/// written once per sealed block instead of twice per event; the portal
/// counters, which every batch changes, in memory and the log until a
/// checkpoint; everything else in sled.
pub(super) fn tier(key: &[u8]) -> Tier {
    match key.first() {
        Some(&TAIL) => Tier::LogOnly,
        Some(&COUNTERS) => Tier::Deferred,
        _ => Tier::Engine,
    }
}

/// A stored key, opaque outside the store: scans hand them out so that
/// maintenance (erase) can delete exactly what it found without knowing the
/// layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(pub(super) Vec<u8>);

impl Key {
    /// Its length in bytes (what it costs in storage, before the engine's
    /// own overhead).
    pub fn stored_len(&self) -> usize {
        self.0.len()
    }
}

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
    /// An item of an entity postings run.
    RunItem {
        /// Portal.
        portal: PortalIx,
        /// Run number.
        run: u32,
        /// Entity id of the item's first posting.
        entity: String,
        /// Seq of the item's first posting.
        seq: u64,
    },
    /// The head of an entity postings run.
    RunHead {
        /// Portal.
        portal: PortalIx,
        /// Run number.
        run: u32,
    },
    /// A portal's list of entity postings runs.
    Runs(PortalIx),
    /// A version-3 entity chunk (read by nothing; `verify` reports it).
    V3Chunk,
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
    /// Cluster mode: the last applied stream sequence.
    StreamSeq,
    /// A portal's offline pull state.
    PullState,
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

/// The key of run `run`'s item whose first posting is (`entity`, `seq`).
/// A run keeps its postings in the order of these keys — entity length,
/// entity bytes, seq (see `codec::postings`) — so the item holding an
/// entity's first posting is the last one keyed at or before it. Entity ids
/// are at most 200 bytes (types::EntityId), so the length fits a byte.
pub(super) fn run_item_key(portal: PortalIx, run: u32, entity: &[u8], seq: u64) -> Vec<u8> {
    let len = [u8::try_from(entity.len()).unwrap_or(u8::MAX)];
    key(
        RUN_ITEM,
        portal,
        &[&run.to_be_bytes(), &len, entity, &seq.to_be_bytes()],
    )
}

/// The prefix of every item of run `run`.
pub(super) fn run_prefix(portal: PortalIx, run: u32) -> Vec<u8> {
    key(RUN_ITEM, portal, &[&run.to_be_bytes()])
}

/// The key of run `run`'s head.
pub(super) fn run_head_key(portal: PortalIx, run: u32) -> Vec<u8> {
    key(RUN_HEAD, portal, &[&run.to_be_bytes()])
}

/// The key of a registration.
pub(super) fn registration_key(member_id: &str) -> Vec<u8> {
    let mut k = vec![REGISTRATION];
    k.extend_from_slice(member_id.as_bytes());
    k
}

/// The key of a portal's offline pull state.
pub(super) fn pull_state_key(member_id: &str) -> Vec<u8> {
    let mut k = vec![PULL_STATE];
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
        Some(&RUN_ITEM) if k.len() >= 18 => {
            let len = k[9] as usize;
            match (
                portal(),
                be_u32(&k[5..]),
                k.get(10..10 + len),
                k.get(10 + len..).and_then(be_u64),
            ) {
                (Some(portal), Some(run), Some(entity), Some(seq)) if k.len() == 18 + len => {
                    std::str::from_utf8(entity).ok().map(|e| KeyKind::RunItem {
                        portal,
                        run,
                        entity: e.to_owned(),
                        seq,
                    })
                }
                _ => None,
            }
        }
        Some(&RUN_HEAD) if k.len() == 9 => portal()
            .zip(be_u32(&k[5..]))
            .map(|(portal, run)| KeyKind::RunHead { portal, run }),
        Some(&RUNS) if k.len() == 5 => portal().map(KeyKind::Runs),
        Some(&V3_CHUNK) => Some(KeyKind::V3Chunk),
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
        Some(&PULL_STATE) if k.len() > 1 => Some(KeyKind::PullState),
        Some(&HEALTH) if k.len() == 1 => Some(KeyKind::Health),
        Some(&LSN) if k.len() == 1 && v.len() == 8 => Some(KeyKind::Lsn),
        Some(&STREAM_SEQ) if k.len() == 1 && v.len() == 8 => Some(KeyKind::StreamSeq),
        Some(&ROLLUP) if k.len() == 13 => portal()
            .zip(be_u64(&k[5..]))
            .map(|(portal, hour)| KeyKind::Rollup { portal, hour }),
        _ => None,
    };
    parsed.unwrap_or(KeyKind::Unknown)
}
