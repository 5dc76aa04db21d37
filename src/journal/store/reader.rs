//! [`Reader`]: the read side of the store, cloneable into request handlers,
//! and every lookup and scan the journal makes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::codec::{self, ChunkEntry};
use super::error::StoreError;
use super::keys::{
    chunk_key, classify, key, seq_key, seq_suffix, Key, KeyKind, BLOCK, CHUNK, COUNTERS, DEDUP,
    PORTAL, REGISTRATION, ROLLUP, SUMMARY, TAIL, V1_EVENT,
};
use super::scan::SeqScan;
use crate::journal::dedup::key::DedupKey;
use crate::journal::record::{EventRecord, PortalIx, PortalRecord, SpanSummary};
use crate::journal::registration::Registration;

/// A read-only view of the store, cloneable into request handlers. It
/// follows the store through reopens.
#[derive(Clone)]
pub struct Reader {
    /// The current engine's tree; `None` while it is being reopened.
    pub(super) shared: Arc<RwLock<Option<sled::Tree>>>,
    /// Long reads in progress (see [`Reader::long_read`]).
    pub(super) long_reads: Arc<AtomicUsize>,
}

/// A long read (a backup) in progress, until dropped: meanwhile the engine
/// is not reopened for a fresh snapshot, which could not close a database
/// the long read keeps open (see
/// [`Store::refresh_snapshot`](super::Store::refresh_snapshot)).
pub struct LongRead(Arc<AtomicUsize>);

impl Drop for LongRead {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An iterator over the results of a scan, or over the one error that kept
/// the scan from starting.
fn scan<T, I>(
    tree: Result<sled::Tree, StoreError>,
    f: impl FnOnce(sled::Tree) -> I,
) -> impl DoubleEndedIterator<Item = Result<T, StoreError>>
where
    I: DoubleEndedIterator<Item = Result<T, StoreError>>,
{
    let (err, tree) = match tree {
        Ok(t) => (None, Some(t)),
        Err(e) => (Some(Err(e)), None),
    };
    err.into_iter().chain(tree.map(f).into_iter().flatten())
}

impl Reader {
    /// A reader of `tree`, the engine's tree just opened.
    pub(super) fn new(tree: sled::Tree) -> Reader {
        Reader {
            shared: Arc::new(RwLock::new(Some(tree))),
            long_reads: Arc::default(),
        }
    }

    /// A reader fixed to the current engine: it does not follow a reopen,
    /// so a query that makes several reads (an index scan, then the events
    /// it names) sees one database and never waits for a reopen halfway;
    /// a reopen in turn waits the few milliseconds until it is dropped
    /// (see [`Store::refresh_snapshot`](super::Store::refresh_snapshot)).
    pub fn pinned(&self) -> Result<Reader, StoreError> {
        Ok(Reader {
            shared: Arc::new(RwLock::new(Some(self.tree()?))),
            long_reads: Arc::clone(&self.long_reads),
        })
    }

    /// Marks a long read in progress until the guard is dropped.
    pub fn long_read(&self) -> LongRead {
        self.long_reads.fetch_add(1, Ordering::SeqCst);
        LongRead(Arc::clone(&self.long_reads))
    }

    /// The current tree (a cheap handle).
    pub(super) fn tree(&self) -> Result<sled::Tree, StoreError> {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }

    /// Every portal record, in portal-number order: its tables and its
    /// counters concatenated (see [`PortalRecord::to_split_bytes`]); a
    /// version-1 record is whole under `P`, with no counters key.
    pub fn portals(&self) -> Result<Vec<PortalRecord>, StoreError> {
        let tree = self.tree()?;
        tree.scan_prefix([PORTAL])
            .map(|kv| {
                let (k, fixed) = kv?;
                let mut bytes = fixed.to_vec();
                if let Some(c) = tree.get([&[COUNTERS][..], &k[1..]].concat())? {
                    bytes.extend_from_slice(&c);
                }
                Ok(PortalRecord::from_bytes(&bytes)?)
            })
            .collect()
    }

    /// Every key of one portal (events, entity index, dedup keys, summaries,
    /// and its portal record), with its value.
    pub fn portal_keys(
        &self,
        portal: PortalIx,
    ) -> impl Iterator<Item = Result<(Key, KeyKind, Vec<u8>), StoreError>> + '_ {
        scan(self.tree(), move |tree| {
            [TAIL, BLOCK, CHUNK, DEDUP, SUMMARY, ROLLUP, PORTAL, COUNTERS]
                .into_iter()
                .flat_map(move |prefix| tree.scan_prefix(key(prefix, portal, &[])))
                .map(|kv| {
                    let (k, v) = kv?;
                    let kind = classify(&k, &v);
                    Ok((Key(k.to_vec()), kind, v.to_vec()))
                })
        })
    }

    /// Every key in the store, in key order, classified.
    pub fn all_keys(
        &self,
    ) -> impl Iterator<Item = Result<(Key, KeyKind, Vec<u8>), StoreError>> + '_ {
        scan(self.tree(), |tree| {
            tree.iter().map(|kv| {
                let (k, v) = kv?;
                let kind = classify(&k, &v);
                Ok((Key(k.to_vec()), kind, v.to_vec()))
            })
        })
    }

    /// Every registration, by member id.
    pub fn registrations(&self) -> Result<Vec<Registration>, StoreError> {
        self.tree()?
            .scan_prefix([REGISTRATION])
            .values()
            .map(|v| {
                let v = v?;
                Ok(Registration::from_bytes(&v)?)
            })
            .collect()
    }

    /// The seq that holds `dedup` in `portal`, if any.
    pub fn dedup(&self, portal: PortalIx, dedup: &DedupKey) -> Result<Option<u64>, StoreError> {
        match self.tree()?.get(key(DEDUP, portal, &[dedup]))? {
            None => Ok(None),
            Some(v) => seq_suffix(&v).map(Some),
        }
    }

    /// The encoded event `seq` of `portal`, wherever it lives.
    pub fn event(&self, portal: PortalIx, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut scan = SeqScan::new(self.tree(), portal, seq, seq);
        scan.next()
            .transpose()
            .map(|found| found.map(|(_, bytes)| bytes))
    }

    /// Events of `portal` with seq in `lo..=hi`, oldest first (`.rev()` for
    /// newest first); seqs that are gone are skipped. `hi` must not exceed
    /// the portal's last seq written to the engine (see [`SeqScan`]): the
    /// scan takes every seq up to `sealed_upto(hi)` to be in a block.
    pub fn events(&self, portal: PortalIx, lo: u64, hi: u64) -> SeqScan {
        SeqScan::new(self.tree(), portal, lo, hi)
    }

    /// Event `seq` of `portal` if it is in the unsealed tail.
    pub fn tail_event(&self, portal: PortalIx, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree()?
            .get(seq_key(TAIL, portal, seq))?
            .map(|v| v.to_vec()))
    }

    /// The unsealed tail of `portal`: (seq, encoded event), oldest first.
    pub fn tail(&self, portal: PortalIx) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.tree()?
            .scan_prefix(key(TAIL, portal, &[]))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((seq_suffix(&k)?, v.to_vec()))
            })
            .collect()
    }

    /// The raw bytes of sealed block `block` of `portal`.
    pub fn block(&self, portal: PortalIx, block: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree()?
            .get(seq_key(BLOCK, portal, block))?
            .map(|v| v.to_vec()))
    }

    /// The chunks of `entity` in `portal` whose first seq is `<= hi`, oldest
    /// first: (first seq, entries).
    pub fn chunks(
        &self,
        portal: PortalIx,
        entity: &str,
        hi: u64,
    ) -> impl DoubleEndedIterator<Item = Result<(u64, Vec<ChunkEntry>), StoreError>> {
        let lo = chunk_key(portal, entity, 0);
        let hi = chunk_key(portal, entity, hi);
        scan(self.tree(), move |tree| {
            tree.range(lo..=hi).map(|kv| {
                let (k, v) = kv?;
                let first = seq_suffix(&k)?;
                Ok((first, codec::decode_chunk(first, &v)?))
            })
        })
    }

    /// The newest chunk of `entity` in `portal`, if any.
    pub fn newest_chunk(
        &self,
        portal: PortalIx,
        entity: &str,
    ) -> Result<Option<(u64, Vec<ChunkEntry>)>, StoreError> {
        self.chunks(portal, entity, u64::MAX)
            .next_back()
            .transpose()
    }

    /// Seqs of `portal`'s events about `entity` with seq in `lo..=hi`,
    /// oldest first (`.rev()` for newest first): the sealed ones from the
    /// entity index, the rest from the tail.
    pub fn entity(
        &self,
        portal: PortalIx,
        entity: &str,
        lo: u64,
        hi: u64,
    ) -> impl DoubleEndedIterator<Item = Result<u64, StoreError>> {
        let found = self.entity_seqs(portal, entity, lo, hi);
        let (err, seqs) = match found {
            Ok(seqs) => (None, seqs),
            Err(e) => (Some(Err(e)), Vec::new()),
        };
        err.into_iter().chain(seqs.into_iter().map(Ok))
    }

    fn entity_seqs(
        &self,
        portal: PortalIx,
        entity: &str,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<u64>, StoreError> {
        // The tail first: a block sealed meanwhile moves events from the tail
        // into the index, so reading in this order can see an event twice
        // (removed below) but never miss one.
        let mut seqs = Vec::new();
        for (seq, bytes) in self.tail(portal)? {
            if (lo..=hi).contains(&seq) {
                let (rec, _) = EventRecord::from_bytes(&bytes)?;
                if rec.entity_id.as_deref() == Some(entity) {
                    seqs.push(seq);
                }
            }
        }
        let mut sealed = Vec::new();
        for chunk in self.chunks(portal, entity, hi) {
            let (_, entries) = chunk?;
            sealed.extend(
                entries
                    .into_iter()
                    .map(|e| e.seq)
                    .filter(|s| (lo..=hi).contains(s)),
            );
        }
        sealed.extend(seqs);
        sealed.sort_unstable();
        sealed.dedup();
        Ok(sealed)
    }

    /// Events of `portal` in the version-1 layout (one `E` item per event),
    /// oldest first. Read only by `migrate`.
    pub fn v1_events(
        &self,
        portal: PortalIx,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> {
        scan(self.tree(), move |tree| {
            tree.scan_prefix(key(V1_EVENT, portal, &[])).map(|kv| {
                let (k, v) = kv?;
                Ok((seq_suffix(&k)?, v.to_vec()))
            })
        })
    }

    /// `portal`'s summary blocks numbered `<= upper`, newest first.
    pub fn summaries_desc(
        &self,
        portal: PortalIx,
        upper: u64,
    ) -> impl Iterator<Item = Result<SpanSummary, StoreError>> + '_ {
        let lo = seq_key(SUMMARY, portal, 0);
        let hi = seq_key(SUMMARY, portal, upper);
        scan(self.tree(), move |tree| {
            tree.range(lo..=hi).rev().map(|kv| {
                let (k, v) = kv?;
                if v.len() != 16 {
                    return Err(StoreError::Corrupt("summary value length".into()));
                }
                let mut min = [0u8; 8];
                let mut max = [0u8; 8];
                min.copy_from_slice(&v[..8]);
                max.copy_from_slice(&v[8..]);
                Ok(SpanSummary {
                    span: seq_suffix(&k)?,
                    min_ts: u64::from_be_bytes(min),
                    max_ts: u64::from_be_bytes(max),
                })
            })
        })
    }
}
