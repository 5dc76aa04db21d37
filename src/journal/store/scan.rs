//! [`SeqScan`]: a portal's events by seq, in either direction, wherever
//! each one lives (a tail event in the memtable, or its sealed block).

use std::sync::Arc;

use super::codec;
use super::error::StoreError;
use super::keys::{seq_key, seq_suffix, BLOCK, TAIL};
use super::memtable::Memtable;
use super::mirror::Mirror;
use crate::journal::record::PortalIx;

/// Where one seq was found.
enum Lookup {
    Found(Vec<u8>),
    /// An empty entry in a block: the event was deleted before sealing.
    Gone,
    /// Neither a tail item nor its block: deleted (retention keeps a prefix,
    /// so everything below is gone too).
    BlockGone(u64),
}

/// Iterator over a portal's events by seq, both directions.
///
/// `hi` must not exceed the portal's last seq committed: then every seq up
/// to `sealed_upto(hi)` is in a sealed block (the commit that fills a block
/// seals it), and only the seqs above can be tail events. Those are looked
/// up in the memtable first and then in their block: a seal writes the
/// block before it drops the tail events (see
/// [`Store::commit_logged`](super::Store::commit_logged)), so in that order
/// a concurrent seal cannot hide an event.
///
/// The tail part is copied out of the memtable once, under one lock.
pub struct SeqScan {
    tree: Option<sled::Tree>,
    memtable: Arc<Memtable>,
    /// Sealed blocks are read from here when it is ready.
    mirror: Option<Arc<Mirror>>,
    err: Option<StoreError>,
    portal: PortalIx,
    lo: u64,
    hi: u64,
    /// The `hi` the scan started with (`hi` moves as a reverse scan goes);
    /// seqs up to `sealed_upto(top)` are in sealed blocks.
    top: u64,
    /// Whether the scan is of one seq.
    point: bool,
    /// The tail events above `sealed_upto(top)`, once read.
    tail: Option<Vec<(u64, Vec<u8>)>>,
    /// The last block read.
    cache: Option<CachedBlock>,
}

/// A block held by a [`SeqScan`]: its number, bytes, and the byte range of
/// each entry.
struct CachedBlock {
    block: u64,
    bytes: sled::IVec,
    ranges: Vec<(usize, usize)>,
}

impl SeqScan {
    pub(super) fn new(
        tree: Result<sled::Tree, StoreError>,
        memtable: Arc<Memtable>,
        mirror: Option<Arc<Mirror>>,
        portal: PortalIx,
        lo: u64,
        hi: u64,
    ) -> Self {
        let (tree, err) = match tree {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        SeqScan {
            tree,
            memtable,
            mirror,
            err,
            portal,
            lo: lo.max(1),
            hi,
            top: hi,
            point: lo.max(1) == hi,
            tail: None,
            cache: None,
        }
    }

    /// The tail events with seqs in `sealed_upto(top) + 1 ..= top` as of
    /// now, read once (fewer than [`codec::BLOCK_SPAN`]). A seq missing
    /// here that a caller may read was sealed (or deleted) before this
    /// read, so its block is where to look.
    fn tail_items(&mut self) -> Result<&mut [(u64, Vec<u8>)], StoreError> {
        if self.tail.is_none() {
            let sealed = codec::sealed_upto(self.top);
            let from = seq_key(TAIL, self.portal, sealed + 1);
            let to = seq_key(TAIL, self.portal, self.top);
            let items = self
                .memtable
                .log_only_range(from.as_slice()..=to.as_slice())
                .into_iter()
                .map(|(k, v)| Ok((seq_suffix(&k)?, v)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            self.tail = Some(items);
        }
        Ok(self.tail.as_deref_mut().unwrap_or_default())
    }

    fn cached(&self, seq: u64) -> Option<Lookup> {
        let c = self.cache.as_ref()?;
        if c.block != codec::event_block(seq) {
            return None;
        }
        // In range: decode_block checked there are BLOCK_SPAN entries.
        let (from, to) = c.ranges[((seq - 1) % codec::BLOCK_SPAN) as usize];
        Some(if from == to {
            Lookup::Gone
        } else {
            Lookup::Found(c.bytes[from..to].to_vec())
        })
    }

    fn lookup(&mut self, tree: &sled::Tree, seq: u64) -> Result<Lookup, StoreError> {
        if let Some(found) = self.cached(seq) {
            return Ok(found);
        }
        if seq > codec::sealed_upto(self.top) {
            if self.point {
                // A one-seq scan (`Reader::event`): a point lookup is cheaper
                // than a range copy.
                if let Some(v) = self.memtable.log_only(&seq_key(TAIL, self.portal, seq)) {
                    return Ok(Lookup::Found(v));
                }
            } else {
                let tail = self.tail_items()?;
                if let Ok(at) = tail.binary_search_by_key(&seq, |(s, _)| *s) {
                    // Each seq is visited once per scan.
                    return Ok(Lookup::Found(std::mem::take(&mut tail[at].1)));
                }
            }
        }
        let block = codec::event_block(seq);
        let key = seq_key(BLOCK, self.portal, block);
        let bytes = match self.mirror.as_ref().and_then(|m| m.get(&key)) {
            Some(found) => Some(sled::IVec::from(found)),
            None => tree.get(key)?,
        };
        let Some(bytes) = bytes else {
            return Ok(Lookup::BlockGone(block));
        };
        let base = bytes.as_ptr() as usize;
        let ranges = codec::decode_block(&bytes)?
            .into_iter()
            .map(|e| {
                let from = e.as_ptr() as usize - base;
                (from, from + e.len())
            })
            .collect();
        self.cache = Some(CachedBlock {
            block,
            bytes,
            ranges,
        });
        // Just cached: present.
        Ok(self.cached(seq).unwrap_or(Lookup::Gone))
    }

    fn step(&mut self, forward: bool) -> Option<Result<(u64, Vec<u8>), StoreError>> {
        if let Some(e) = self.err.take() {
            self.lo = 1;
            self.hi = 0;
            return Some(Err(e));
        }
        let tree = self.tree.clone()?;
        while self.lo <= self.hi {
            let seq = if forward { self.lo } else { self.hi };
            if forward {
                self.lo += 1;
            } else {
                self.hi -= 1;
            }
            match self.lookup(&tree, seq) {
                Ok(Lookup::Found(bytes)) => return Some(Ok((seq, bytes))),
                Ok(Lookup::Gone) => {}
                Ok(Lookup::BlockGone(block)) => {
                    if forward {
                        self.lo = self.lo.max(codec::event_block_first(block + 1));
                    } else {
                        self.hi = 0;
                    }
                }
                Err(e) => {
                    self.lo = 1;
                    self.hi = 0;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

impl Iterator for SeqScan {
    type Item = Result<(u64, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

impl DoubleEndedIterator for SeqScan {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}
