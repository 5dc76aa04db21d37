//! The entity index in memory: per portal, its postings runs with their
//! filters, shared by the writer (dedup, layout) and every reader (entity
//! queries).
//!
//! The postings themselves stay in the store (`store::codec::postings`);
//! what is held here is each run's head, loaded once per portal and
//! replaced whole by the writer when a commit changes the portal's runs
//! (`layout::runs`). A lookup reads only the runs whose filter may hold
//! what it looks for, so a new entity's event is deduplicated without
//! reading the index at all.
//!
//! A merge makes runs *dead* and a later commit deletes them, so a reader
//! that took a portal's runs just before the merge still finds them. Such a
//! reader can still meet a deletion if it is slower than a whole commit:
//! every change bumps the runs' version, and a lookup that finds the
//! version changed under it starts again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::record::PortalIx;
use super::store::codec::filter::{entity_hash, event_hash};
use super::store::codec::postings::{RunHead, RunList};
use super::store::{Reader, StoreError};

/// One postings run: its number and its head.
#[derive(Debug)]
pub struct Run {
    /// The run's number within its portal.
    pub id: u32,
    /// Level, seq range and filters.
    pub head: RunHead,
}

/// A portal's runs as a commit left them.
#[derive(Debug, Default)]
pub struct PortalRuns {
    /// The stored list (version, next number, live and dead runs).
    pub list: RunList,
    /// The live runs, oldest first, as `list.live` names them.
    pub live: Vec<Arc<Run>>,
}

impl PortalRuns {
    /// Reads `portal`'s runs from the store (none if it has no list yet).
    pub fn load(reader: &Reader, portal: PortalIx) -> Result<PortalRuns, StoreError> {
        let Some(list) = reader.runs(portal)? else {
            return Ok(PortalRuns::default());
        };
        let mut live = Vec::with_capacity(list.live.len());
        for &id in &list.live {
            let head = reader.run_head(portal, id)?.ok_or_else(|| {
                StoreError::Corrupt(format!("postings run {portal}/{id} has no head"))
            })?;
            live.push(Arc::new(Run { id, head }));
        }
        Ok(PortalRuns { list, live })
    }
}

/// Every portal's runs that were needed so far; cheap to clone.
#[derive(Clone, Default)]
pub struct EntityIndex {
    portals: Arc<RwLock<HashMap<PortalIx, Arc<PortalRuns>>>>,
}

/// Attempts of a lookup that keeps meeting changes of the runs it reads
/// (each change is one commit, so a second attempt nearly always succeeds).
const ATTEMPTS: usize = 64;

impl EntityIndex {
    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PortalIx, Arc<PortalRuns>>> {
        // A poisoned lock means a thread panicked holding it; the map holds
        // whole values only.
        self.portals.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<PortalIx, Arc<PortalRuns>>> {
        self.portals.write().unwrap_or_else(|p| p.into_inner())
    }

    /// `portal`'s runs, loaded from `reader` on first use. A load that
    /// raced a commit and read an older list than the writer has since
    /// shown does not replace it.
    pub fn runs(&self, reader: &Reader, portal: PortalIx) -> Result<Arc<PortalRuns>, StoreError> {
        if let Some(runs) = self.read_map().get(&portal) {
            return Ok(Arc::clone(runs));
        }
        let loaded = Arc::new(PortalRuns::load(reader, portal)?);
        let mut map = self.write_map();
        let held = map.entry(portal).or_insert_with(|| Arc::clone(&loaded));
        if held.list.version < loaded.list.version {
            *held = loaded;
        }
        Ok(Arc::clone(held))
    }

    /// The version of `portal`'s runs as shown now.
    fn version(&self, portal: PortalIx) -> Option<u64> {
        self.read_map().get(&portal).map(|r| r.list.version)
    }

    /// Shows `portal`'s runs as a commit left them (the writer only).
    pub fn publish(&self, portal: PortalIx, runs: PortalRuns) {
        self.write_map().insert(portal, Arc::new(runs));
    }

    /// Forgets `portal`'s runs (erased, or changed outside the writer's
    /// view); they are loaded again when next needed.
    pub fn forget(&self, portal: PortalIx) {
        self.write_map().remove(&portal);
    }

    /// Forgets every portal's runs (the store was reopened).
    pub fn forget_all(&self) {
        self.write_map().clear();
    }

    /// Runs `look` on `portal`'s runs until it has read runs that did not
    /// change meanwhile (see the module documentation).
    fn consistent<T>(
        &self,
        reader: &Reader,
        portal: PortalIx,
        mut look: impl FnMut(&PortalRuns) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for _ in 0..ATTEMPTS {
            let runs = self.runs(reader, portal)?;
            let found = look(&runs);
            if self.version(portal) == Some(runs.list.version) {
                return found;
            }
        }
        Err(StoreError::Corrupt(format!(
            "the entity index of portal {portal} kept changing during a lookup"
        )))
    }

    /// Seqs of `portal`'s sealed events about `entity` within `lo..=hi`,
    /// ascending.
    pub fn sealed_seqs(
        &self,
        reader: &Reader,
        portal: PortalIx,
        entity: &str,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let hash = entity_hash(entity.as_bytes());
        self.consistent(reader, portal, |runs| {
            let mut seqs = Vec::new();
            for run in &runs.live {
                if run.head.hi < lo || run.head.lo > hi || !run.head.entities.may_contain(hash) {
                    continue;
                }
                for (seq, _, _) in
                    reader.run_postings_of(portal, run.id, run.head.items.as_deref(), entity)?
                {
                    if (lo..=hi).contains(&seq) {
                        seqs.push(seq);
                    }
                }
            }
            seqs.sort_unstable();
            seqs.dedup();
            Ok(seqs)
        })
    }

    /// Seqs (at least `first`), newest first and at most `limit`, of
    /// `portal`'s sealed events about `entity` with name tag `tag` and a
    /// `ts` within `window` seconds of `ts`: the pushed events an offline
    /// record may stand for (see `dedup::reconcile`), to be confirmed by
    /// reading them. Only the entity filter can be asked, the `ts` not
    /// being known exactly.
    #[allow(clippy::too_many_arguments)]
    pub fn near(
        &self,
        reader: &Reader,
        portal: PortalIx,
        entity: &str,
        ts: u64,
        window: u64,
        tag: u16,
        first: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let hash = entity_hash(entity.as_bytes());
        self.consistent(reader, portal, |runs| {
            let mut seqs = Vec::new();
            for run in runs.live.iter() {
                if run.head.hi < first || !run.head.entities.may_contain(hash) {
                    continue;
                }
                for (seq, t, g) in
                    reader.run_postings_of(portal, run.id, run.head.items.as_deref(), entity)?
                {
                    if seq >= first && t.abs_diff(ts) <= window && g == tag {
                        seqs.push(seq);
                    }
                }
            }
            seqs.sort_unstable_by(|a, b| b.cmp(a));
            seqs.dedup();
            seqs.truncate(limit);
            Ok(seqs)
        })
    }

    /// Seqs (at least `first`) of `portal`'s sealed events about `entity`
    /// with `ts` and name tag `tag`: the candidates a new event may
    /// duplicate, to be confirmed by reading them.
    pub fn candidates(
        &self,
        reader: &Reader,
        portal: PortalIx,
        entity: &str,
        ts: u64,
        tag: u16,
        first: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let hash = event_hash(entity.as_bytes(), ts, tag);
        self.consistent(reader, portal, |runs| {
            let mut seqs = Vec::new();
            for run in runs.live.iter().rev() {
                if run.head.hi < first || !run.head.events.may_contain(hash) {
                    continue;
                }
                for (seq, t, g) in
                    reader.run_postings_of(portal, run.id, run.head.items.as_deref(), entity)?
                {
                    if seq >= first && t == ts && g == tag {
                        seqs.push(seq);
                    }
                }
            }
            Ok(seqs)
        })
    }
}
