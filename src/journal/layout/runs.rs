//! The entity index's merge policy: how a portal's postings runs change as
//! blocks are sealed, events retired and merged runs deleted.
//!
//! Every sealed block adds a run of level 0 with its entity events'
//! postings. When the newest [`FANOUT`] runs share a level they are merged
//! into one run of the next level (and so on up): a portal of n events then
//! has O(log n) runs, each posting is rewritten O(log n) times, and a run's
//! items are written once and never changed. Merged runs become *dead*:
//! they are deleted by a later commit, so that a reader that took the
//! runs just before still finds them (see `journal::entities`).
//!
//! Adding a run leaves the merges it makes due ([`RunsUpdate::add_block`]).
//! Copies (backup, migrate) do them at once ([`RunsUpdate::merge_all`]);
//! the writer a budget at a time ([`RunsUpdate::merge_some`]): when many
//! portals seal a block in one batch, their merge cascades would otherwise
//! all be held in that one batch. A due merge is done at the latest before
//! the portal's next run is added, so the runs are the same as if every
//! merge had been done at once; only when they are made differs. A writer
//! without jobs, or stopping, commits the due merges alone.

use std::collections::HashMap;
use std::sync::Arc;

use super::super::entities::{PortalRuns, Run};
use super::super::record::PortalIx;
use super::super::store::codec::postings::{
    decode_item, encode_items, posting_order, Item, Posting, RunHead,
};
use super::super::store::{Reader, StoreError, WriteBatch};

/// Runs of one level merged into one of the next.
pub const FANOUT: usize = 4;

/// A portal's runs as one batch changes them: starts from the runs shown to
/// readers, puts the changes into the batch's writes, and ends as the runs
/// to show once the batch is committed.
pub struct RunsUpdate {
    portal: PortalIx,
    runs: PortalRuns,
    /// Items of the runs this update wrote (not yet in the store), live or
    /// already merged (those by their keys only): kept encoded, because a
    /// batch in which many portals seal a block at once holds every one's
    /// merge cascade until it commits.
    fresh: HashMap<u32, Vec<Item>>,
    changed: bool,
}

impl RunsUpdate {
    /// An update of `portal`'s runs `runs`. Adding a run leaves the merges
    /// it makes due: the writer does them a budget at a time
    /// ([`RunsUpdate::merge_some`]), a copy, which has no readers to keep
    /// answering, at once ([`RunsUpdate::merge_all`]).
    pub fn new(portal: PortalIx, runs: &PortalRuns) -> RunsUpdate {
        RunsUpdate {
            portal,
            runs: PortalRuns {
                list: runs.list.clone(),
                live: runs.live.clone(),
            },
            fresh: HashMap::new(),
            changed: false,
        }
    }

    /// The writes made so far are now in the store (a copy applies them
    /// step by step): runs are read from it from now on, and the postings
    /// held for them are let go.
    pub fn applied(&mut self) {
        self.fresh.clear();
    }

    /// Whether runs wait to be deleted (see [`RunsUpdate::purge_dead`]).
    pub fn has_dead(&self) -> bool {
        !self.runs.list.dead.is_empty()
    }

    /// Adds the run of a sealed block holding seqs `lo..=hi` whose entity
    /// events have `postings` (any order), after the merges still due;
    /// postings below `first_live` (retired) are dropped by merges.
    pub fn add_block(
        &mut self,
        writes: &mut WriteBatch,
        reader: &Reader,
        lo: u64,
        hi: u64,
        mut postings: Vec<Posting>,
        first_live: u64,
    ) -> Result<(), StoreError> {
        if postings.is_empty() {
            return Ok(());
        }
        // Merges deferred so far are done first, so that the new run joins
        // the runs eager merging would have left.
        self.merge_all(writes, reader, first_live)?;
        postings.sort_by(posting_order);
        self.write_run(writes, 0, lo, hi, postings);
        Ok(())
    }

    /// Does every due merge (copies; the writer has a budget).
    pub fn merge_all(
        &mut self,
        writes: &mut WriteBatch,
        reader: &Reader,
        first_live: u64,
    ) -> Result<(), StoreError> {
        let mut unbounded = u64::MAX;
        self.merge_some(writes, reader, first_live, &mut unbounded)
            .map(|_| ())
    }

    /// Whether merges are due.
    pub fn pending(&self) -> bool {
        self.mergeable_level().is_some()
    }

    /// Does due merges while `budget` (seqs the merged runs span, a bound
    /// on their postings) lasts, taking each merge's span from it; the
    /// merge that exhausts it is still done. Returns whether some remain.
    pub fn merge_some(
        &mut self,
        writes: &mut WriteBatch,
        reader: &Reader,
        first_live: u64,
        budget: &mut u64,
    ) -> Result<bool, StoreError> {
        while let Some(level) = self.mergeable_level() {
            if *budget == 0 {
                return Ok(true);
            }
            let spanned = self.merge_newest(writes, reader, level, first_live)?;
            *budget = budget.saturating_sub(spanned);
        }
        Ok(false)
    }

    /// The level of the newest [`FANOUT`] runs, if they share one.
    fn mergeable_level(&self) -> Option<u8> {
        let live = &self.runs.live;
        let newest = live.get(live.len().checked_sub(FANOUT)?..)?;
        let level = newest[0].head.level;
        newest
            .iter()
            .all(|r| r.head.level == level)
            .then_some(level)
    }

    /// Writes a new live run of `postings` (in run order).
    fn write_run(
        &mut self,
        writes: &mut WriteBatch,
        level: u8,
        lo: u64,
        hi: u64,
        postings: Vec<Posting>,
    ) {
        let id = self.runs.list.next;
        self.runs.list.next += 1;
        let items = encode_items(&postings);
        for item in &items {
            writes.put_run_item(self.portal, id, item.clone());
        }
        let head = RunHead::of(level, lo, hi, &postings, &items);
        writes.put_run_head(self.portal, id, &head);
        self.runs.live.push(Arc::new(Run { id, head }));
        self.fresh.insert(id, items);
        self.changed = true;
    }

    /// The postings of live run `run`: those this update wrote, else its
    /// items read by the keys its head lists, else (a head written before
    /// heads listed their items) by a scan.
    fn postings(&self, reader: &Reader, run: &Run) -> Result<Vec<Posting>, StoreError> {
        let mut out = Vec::new();
        if let Some(items) = self.fresh.get(&run.id) {
            for item in items {
                out.extend(decode_item(&item.bytes)?);
            }
        } else if let Some(starts) = &run.head.items {
            for start in starts {
                out.extend(decode_item(&reader.run_item(
                    self.portal,
                    run.id,
                    start,
                )?)?);
            }
        } else {
            for item in reader.run_postings(self.portal, run.id) {
                out.extend(item?);
            }
        }
        Ok(out)
    }

    /// Merges the newest [`FANOUT`] runs (all of `level`) into one run of
    /// the next level; they become dead. Returns how many seqs they span.
    fn merge_newest(
        &mut self,
        writes: &mut WriteBatch,
        reader: &Reader,
        level: u8,
        first_live: u64,
    ) -> Result<u64, StoreError> {
        let merged: Vec<Arc<Run>> = self.runs.live.split_off(self.runs.live.len() - FANOUT);
        let mut postings = Vec::new();
        for run in &merged {
            postings.extend(
                self.postings(reader, run)?
                    .into_iter()
                    .filter(|p| p.seq >= first_live),
            );
        }
        postings.sort_by(posting_order);
        // A merged run's items are never read again; only their keys are
        // needed, should this update also delete the run (`purge_dead`).
        for run in &merged {
            for item in self.fresh.get_mut(&run.id).into_iter().flatten() {
                item.bytes = Vec::new();
            }
        }
        let lo = merged.iter().map(|r| r.head.lo).min().unwrap_or(0);
        let hi = merged.iter().map(|r| r.head.hi).max().unwrap_or(0);
        self.runs.list.dead.extend(merged.iter().map(|r| r.id));
        self.changed = true;
        if !postings.is_empty() {
            self.write_run(writes, level.saturating_add(1), lo, hi, postings);
        }
        Ok(merged
            .iter()
            .map(|r| r.head.hi.saturating_sub(r.head.lo) + 1)
            .sum())
    }

    /// Retention: every live run whose events all lie below `first_live`
    /// becomes dead.
    pub fn drop_below(&mut self, first_live: u64) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.runs.live)
            .into_iter()
            .partition(|r| r.head.hi < first_live);
        self.runs.live = kept;
        if !gone.is_empty() {
            self.runs.list.dead.extend(gone.iter().map(|r| r.id));
            self.changed = true;
        }
    }

    /// Deletes the dead runs' items and heads. Call only in a commit after
    /// the one that made them dead was shown to readers (or where no reader
    /// can be: a copy being written).
    pub fn purge_dead(
        &mut self,
        writes: &mut WriteBatch,
        reader: &Reader,
    ) -> Result<(), StoreError> {
        for run in std::mem::take(&mut self.runs.list.dead) {
            match self.fresh.remove(&run) {
                // Written by this very update: its keys are in `writes`.
                Some(items) => {
                    for item in &items {
                        writes.delete_run_item(self.portal, run, item);
                    }
                }
                None => {
                    for key in reader.run_keys(self.portal, run)? {
                        writes.delete(&key);
                    }
                }
            }
            writes.delete_run_head(self.portal, run);
            self.changed = true;
        }
        Ok(())
    }

    /// Puts the changed run list into `writes` and returns the runs to show
    /// once they are committed; `None` if nothing changed.
    pub fn finish(mut self, writes: &mut WriteBatch) -> Option<PortalRuns> {
        if !self.changed {
            return None;
        }
        self.runs.list.version += 1;
        self.runs.list.live = self.runs.live.iter().map(|r| r.id).collect();
        writes.put_runs(self.portal, &self.runs.list);
        Some(self.runs)
    }
}
