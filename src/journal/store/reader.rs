//! [`Reader`]: the read side of the store, cloneable into request handlers,
//! and every lookup and scan the journal makes. Reads of log-only and
//! deferred keys go to the memtable (see `memtable.rs`), the rest to sled.

use std::cmp::Ordering as KeyOrder;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::codec::event_block;
use super::codec::postings::{self, entity_order, ItemStart, RunHead, RunList};
use super::error::StoreError;
use super::keys::{
    classify, key, pull_state_key, run_head_key, run_item_key, run_prefix, seq_key, seq_suffix,
    Key, KeyKind, BLOCK, COUNTERS, DEDUP, PORTAL, PULL_STATE, REGISTRATION, ROLLUP, RUNS, RUN_HEAD,
    RUN_ITEM, SUMMARY, TAIL, V1_EVENT,
};
use super::memtable::Memtable;
use super::mirror::{Mirror, Source};
use super::scan::SeqScan;
use crate::journal::dedup::key::DedupKey;
use crate::journal::pull_state::PullState;
use crate::journal::record::{PortalIx, PortalRecord, SpanSummary};
use crate::journal::registration::Registration;

/// A key with its kind and value, as scans hand them out.
type ClassifiedKey = (Key, KeyKind, Vec<u8>);

/// A read-only view of the store, cloneable into request handlers. It
/// follows the store through reopens.
#[derive(Clone)]
pub struct Reader {
    /// The current engine's tree; `None` while it is being reopened.
    pub(super) shared: Arc<RwLock<Option<sled::Tree>>>,
    /// Long reads in progress (see [`Reader::long_read`]).
    pub(super) long_reads: Arc<AtomicUsize>,
    /// The store's log-only and deferred writes.
    pub(super) memtable: Arc<Memtable>,
    /// The read mirror of the sealed blocks and postings items, if the
    /// store keeps one (the service does; maintenance copies do not).
    pub(super) mirror: Option<Arc<Mirror>>,
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
    /// A reader of `tree`, the engine's tree just opened, and `memtable`.
    pub(super) fn new(
        tree: sled::Tree,
        memtable: Arc<Memtable>,
        mirror: Option<Arc<Mirror>>,
    ) -> Reader {
        Reader {
            shared: Arc::new(RwLock::new(Some(tree))),
            long_reads: Arc::default(),
            memtable,
            mirror,
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
            memtable: Arc::clone(&self.memtable),
            mirror: self.mirror.clone(),
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
                let counters = [&[COUNTERS][..], &k[1..]].concat();
                let counters = match self.memtable.deferred(&counters) {
                    Some(deferred) => deferred,
                    None => tree.get(&counters)?.map(|c| c.to_vec()),
                };
                if let Some(c) = counters {
                    bytes.extend_from_slice(&c);
                }
                Ok(PortalRecord::from_bytes(&bytes)?)
            })
            .collect()
    }

    /// The log-only keys (tail events) with the prefix `prefix`, classified.
    fn log_only_keys(&self, prefix: &[u8]) -> Vec<Result<ClassifiedKey, StoreError>> {
        let mut hi = prefix.to_vec();
        hi.extend_from_slice(&[0xff; 16]);
        self.memtable
            .log_only_range(prefix..=hi.as_slice())
            .into_iter()
            .map(|(k, v)| {
                let kind = classify(&k, &v);
                Ok((Key(k), kind, v))
            })
            .collect()
    }

    /// Every key of one portal (events, entity index, dedup keys, summaries,
    /// and its portal record), with its value.
    pub fn portal_keys(
        &self,
        portal: PortalIx,
    ) -> impl Iterator<Item = Result<(Key, KeyKind, Vec<u8>), StoreError>> + '_ {
        let tails = self.log_only_keys(&key(TAIL, portal, &[]));
        let stored = scan(self.tree(), move |tree| {
            [
                BLOCK, RUN_ITEM, RUN_HEAD, RUNS, DEDUP, SUMMARY, ROLLUP, PORTAL, COUNTERS,
            ]
            .into_iter()
            .flat_map(move |prefix| tree.scan_prefix(key(prefix, portal, &[])))
            .map(|kv| {
                let (k, v) = kv?;
                let kind = classify(&k, &v);
                Ok((Key(k.to_vec()), kind, v.to_vec()))
            })
        });
        tails.into_iter().chain(stored)
    }

    /// Every key in the store, classified: sled's in key order, then the
    /// memtable's tail events.
    pub fn all_keys(
        &self,
    ) -> impl Iterator<Item = Result<(Key, KeyKind, Vec<u8>), StoreError>> + '_ {
        let tails = self.log_only_keys(&[TAIL]);
        scan(self.tree(), |tree| {
            tree.iter().map(|kv| {
                let (k, v) = kv?;
                let kind = classify(&k, &v);
                Ok((Key(k.to_vec()), kind, v.to_vec()))
            })
        })
        .chain(tails)
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

    /// Every portal's offline pull state.
    pub fn pull_states(&self) -> Result<Vec<PullState>, StoreError> {
        self.tree()?
            .scan_prefix([PULL_STATE])
            .values()
            .map(|v| {
                let v = v?;
                Ok(PullState::from_bytes(&v)?)
            })
            .collect()
    }

    /// One portal's offline pull state, if it has one.
    pub fn pull_state(&self, member_id: &str) -> Result<Option<PullState>, StoreError> {
        match self.tree()?.get(pull_state_key(member_id))? {
            None => Ok(None),
            Some(v) => Ok(Some(PullState::from_bytes(&v)?)),
        }
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
        let mut scan = self.events(portal, seq, seq);
        scan.next()
            .transpose()
            .map(|found| found.map(|(_, bytes)| bytes))
    }

    /// Events of `portal` with seq in `lo..=hi`, oldest first (`.rev()` for
    /// newest first); seqs that are gone are skipped. `hi` must not exceed
    /// the portal's last seq committed (see [`SeqScan`]): the scan takes
    /// every seq up to `sealed_upto(hi)` to be in a block.
    pub fn events(&self, portal: PortalIx, lo: u64, hi: u64) -> SeqScan {
        SeqScan::new(
            self.tree(),
            Arc::clone(&self.memtable),
            self.mirror.clone(),
            portal,
            lo,
            hi,
        )
    }

    /// Event `seq` of `portal` if it is in the unsealed tail.
    pub fn tail_event(&self, portal: PortalIx, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.memtable.log_only(&seq_key(TAIL, portal, seq)))
    }

    /// The unsealed tail of `portal` with seqs in `lo..=hi`: (seq, encoded
    /// event), oldest first.
    pub fn tail_range(
        &self,
        portal: PortalIx,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let (lo, hi) = (seq_key(TAIL, portal, lo), seq_key(TAIL, portal, hi));
        self.memtable
            .log_only_range(lo.as_slice()..=hi.as_slice())
            .into_iter()
            .map(|(k, v)| Ok((seq_suffix(&k)?, v)))
            .collect()
    }

    /// The unsealed tail of `portal`: (seq, encoded event), oldest first.
    pub fn tail(&self, portal: PortalIx) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.tail_range(portal, 0, u64::MAX)
    }

    /// The unsealed tail of `portal` as version 3 stored it (one sled item
    /// per event): read only by `migrate`.
    pub fn v3_tail(&self, portal: PortalIx) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.tree()?
            .scan_prefix(key(TAIL, portal, &[]))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((seq_suffix(&k)?, v.to_vec()))
            })
            .collect()
    }

    /// Whether block and postings item reads are answered by the read
    /// mirror (`mirror.rs`), which is rebuilt in the background after each
    /// open.
    pub fn mirror_ready(&self) -> bool {
        self.mirror.as_ref().is_some_and(|m| m.ready())
    }

    /// Checks the read mirror against sled: every value it holds is sled's,
    /// byte for byte, and it holds every block sled holds and every item
    /// the live runs' heads list. Returns how many blocks and items, and
    /// the mirror's current file.
    #[cfg(test)]
    pub(crate) fn mirror_matches_sled(&self) -> Result<(usize, usize, std::path::PathBuf), String> {
        let m = self.mirror.as_ref().ok_or("the store keeps no mirror")?;
        let tree = self.tree().map_err(|e| e.to_string())?;
        let (held, file) = m.held_keys().ok_or("the mirror is not ready")?;
        for k in &held {
            let in_sled = tree.get(k).map_err(|e| e.to_string())?;
            if m.held(k).as_deref() != in_sled.as_deref() {
                return Err(format!(
                    "{:?}: the mirror holds {:?} bytes, sled {:?}",
                    classify(k, &[]),
                    m.held(k).map(|h| h.len()),
                    in_sled.map(|v| v.len())
                ));
            }
        }
        let missing = |k: &[u8]| format!("the mirror lacks {:?}", classify(k, &[]));
        let mut blocks = 0;
        for kv in tree.scan_prefix([BLOCK]) {
            let (k, _) = kv.map_err(|e| e.to_string())?;
            m.held(&k).ok_or_else(|| missing(&k))?;
            blocks += 1;
        }
        let mut items = 0;
        for k in self.mirrored_keys().map_err(|e| e.to_string())? {
            if k[0] == RUN_ITEM {
                m.held(&k).ok_or_else(|| missing(&k))?;
                items += 1;
            }
        }
        Ok((blocks, items, file))
    }

    /// The value of a mirrored key (a block or a postings item): from the
    /// mirror if it holds it, else from sled.
    fn mirrored_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(found) = self.mirror.as_ref().and_then(|m| m.get(key)) {
            return Ok(Some(found));
        }
        Ok(self.tree()?.get(key)?.map(|v| v.to_vec()))
    }

    /// The raw bytes of sealed block `block` of `portal`.
    pub fn block(&self, portal: PortalIx, block: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.mirrored_get(&seq_key(BLOCK, portal, block))
    }

    /// The item of run `run` of `portal` that starts at `start` (a run
    /// deleted under the reader reads as [`StoreError::Corrupt`]: lookups
    /// check the run's version, and retry, before they answer).
    pub fn run_item(
        &self,
        portal: PortalIx,
        run: u32,
        start: &ItemStart,
    ) -> Result<Vec<u8>, StoreError> {
        let key = run_item_key(portal, run, start.entity.as_bytes(), start.seq);
        self.mirrored_get(&key)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "postings item {portal}/{run}/{}/{} is missing",
                start.entity, start.seq
            ))
        })
    }

    /// `portal`'s list of postings runs, if it has one.
    pub fn runs(&self, portal: PortalIx) -> Result<Option<RunList>, StoreError> {
        match self.tree()?.get(key(RUNS, portal, &[]))? {
            Some(v) => Ok(Some(RunList::from_bytes(&v)?)),
            None => Ok(None),
        }
    }

    /// The head of `portal`'s postings run `run`, if it exists.
    pub fn run_head(&self, portal: PortalIx, run: u32) -> Result<Option<RunHead>, StoreError> {
        match self.tree()?.get(run_head_key(portal, run))? {
            Some(v) => Ok(Some(RunHead::from_bytes(&v)?)),
            None => Ok(None),
        }
    }

    /// `entity`'s postings in run `run` of `portal`, as `(seq, ts, name
    /// tag)` in seq order. With the run's item starts (`items`, from its
    /// head), the items that may hold them are read by key; without (heads
    /// written before heads listed their items), by one reverse range
    /// read, from the last item keyed at or before the entity's end back to
    /// the one that holds its first posting (see `codec::postings`).
    pub fn run_postings_of(
        &self,
        portal: PortalIx,
        run: u32,
        items: Option<&[ItemStart]>,
        entity: &str,
    ) -> Result<Vec<(u64, u64, u16)>, StoreError> {
        if let Some(items) = items {
            let mut found = Vec::new();
            for start in &items[postings::items_of(items, entity.as_bytes())] {
                let item = self.run_item(portal, run, start)?;
                found.extend(postings::find_in_item(&item, entity.as_bytes())?);
            }
            return Ok(found);
        }
        let tree = self.tree()?;
        let lo = run_prefix(portal, run);
        let hi = run_item_key(portal, run, entity.as_bytes(), u64::MAX);
        let mut items = Vec::new();
        for kv in tree.range(lo..=hi).rev() {
            let (k, v) = kv?;
            let KeyKind::RunItem { entity: first, .. } = classify(&k, &v) else {
                return Err(StoreError::Corrupt("postings item key".into()));
            };
            let before = entity_order(first.as_bytes(), entity.as_bytes()) == KeyOrder::Less;
            items.push(v);
            if before {
                break;
            }
        }
        let mut found = Vec::new();
        for v in items.iter().rev() {
            found.extend(postings::find_in_item(v, entity.as_bytes())?);
        }
        Ok(found)
    }

    /// Every posting of run `run` of `portal`, in run order (for merges and
    /// verification).
    pub fn run_postings(
        &self,
        portal: PortalIx,
        run: u32,
    ) -> impl Iterator<Item = Result<Vec<postings::Posting>, StoreError>> {
        scan(self.tree(), move |tree| {
            tree.scan_prefix(run_prefix(portal, run)).map(|kv| {
                let (_, v) = kv?;
                Ok(postings::decode_item(&v)?)
            })
        })
    }

    /// The keys of run `run`'s items (to delete the run): those its head
    /// lists, else (no head, or one written before heads listed their
    /// items) those a scan finds.
    pub fn run_keys(&self, portal: PortalIx, run: u32) -> Result<Vec<Key>, StoreError> {
        if let Some(items) = self.run_head(portal, run)?.and_then(|h| h.items) {
            let key = |i: &ItemStart| Key(run_item_key(portal, run, i.entity.as_bytes(), i.seq));
            return Ok(items.iter().map(key).collect());
        }
        self.tree()?
            .scan_prefix(run_prefix(portal, run))
            .keys()
            .map(|k| Ok(Key(k?.to_vec())))
            .collect()
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

impl Source for Reader {
    fn mirrored_keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = Vec::new();
        for p in self.portals()? {
            if p.last_seq() > 0 {
                let blocks = event_block(p.first_seq().max(1))..=event_block(p.last_seq());
                keys.extend(blocks.map(|b| seq_key(BLOCK, p.ix, b)));
            }
            for run in self.runs(p.ix)?.map(|l| l.live).unwrap_or_default() {
                let items = self.run_head(p.ix, run)?.and_then(|h| h.items);
                for i in items.unwrap_or_default() {
                    keys.push(run_item_key(p.ix, run, i.entity.as_bytes(), i.seq));
                }
            }
        }
        Ok(keys)
    }

    fn tree(&self) -> Result<sled::Tree, StoreError> {
        Reader::tree(self)
    }
}
