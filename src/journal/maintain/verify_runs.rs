//! Verification of the entity index: every posting of a live run names a
//! sealed event with the same entity, `ts` and name tag, inside its run's
//! seq range and in its run's filters; every sealed entity event has
//! exactly one posting; every run item and head belongs to a live run or
//! to one waiting to be deleted; a head that lists its items lists exactly
//! those stored.

use std::collections::HashMap;

use crate::journal::entities::PortalRuns;
use crate::journal::record::{EventRecord, PortalIx, PortalRecord};
use crate::journal::store::codec::filter::{entity_hash, event_hash};
use crate::journal::store::codec::postings::{decode_item, entity_order, RunHead};
use crate::journal::store::codec::{name_tag, sealed_upto};
use crate::journal::store::{Reader, StoreError};
use crate::journal::PortalDirectory;

/// The runs of every portal, and what was found of them so far.
pub(super) struct RunsCheck {
    /// Problems found, for the report.
    pub(super) problems: Vec<String>,
    /// Postings of live runs at or above their portal's first seq.
    pub(super) entries: u64,
    /// Live runs whose heads do not list their items.
    pub(super) without_item_list: u64,
    runs: HashMap<PortalIx, PortalRuns>,
    /// Postings and items counted per live run (checked against its head).
    counted: HashMap<(PortalIx, u32), (u64, usize)>,
    /// Per portal, a bit per seq that has a posting.
    indexed: HashMap<PortalIx, Vec<u64>>,
}

impl RunsCheck {
    /// Loads every portal's run list and live heads.
    pub(super) fn load(reader: &Reader, dir: &PortalDirectory) -> Result<RunsCheck, StoreError> {
        let mut runs = HashMap::new();
        let mut problems = Vec::new();
        for p in dir.portals() {
            match PortalRuns::load(reader, p.ix) {
                Ok(r) => {
                    runs.insert(p.ix, r);
                }
                Err(e @ (StoreError::Corrupt(_) | StoreError::Codec(_))) => {
                    problems.push(format!("entity index runs of portal {}: {e}", p.ix));
                }
                Err(e) => return Err(e),
            }
        }
        let without_item_list = runs
            .values()
            .flat_map(|r| &r.live)
            .filter(|r| r.head.items.is_none())
            .count() as u64;
        Ok(RunsCheck {
            problems,
            entries: 0,
            without_item_list,
            runs,
            counted: HashMap::new(),
            indexed: HashMap::new(),
        })
    }

    fn live_head(&self, portal: PortalIx, run: u32) -> Option<&RunHead> {
        self.runs
            .get(&portal)?
            .live
            .iter()
            .find(|r| r.id == run)
            .map(|r| &r.head)
    }

    fn is_dead(&self, portal: PortalIx, run: u32) -> bool {
        self.runs
            .get(&portal)
            .is_some_and(|r| r.list.dead.contains(&run))
    }

    /// Checks one item of run `run` of portal `p`, keyed by its first
    /// posting's entity and seq (`start`).
    pub(super) fn item(
        &mut self,
        reader: &Reader,
        p: &PortalRecord,
        run: u32,
        start: (&str, u64),
        value: &[u8],
    ) -> Result<(), StoreError> {
        let ix = p.ix;
        if self.is_dead(ix, run) {
            return Ok(());
        }
        let Some(head) = self.live_head(ix, run).cloned() else {
            self.problems.push(format!(
                "postings of run {ix}/{run}, which no run list names"
            ));
            return Ok(());
        };
        let postings = match decode_item(value) {
            Ok(p) => p,
            Err(e) => {
                self.problems.push(format!(
                    "postings of run {ix}/{run}: {}",
                    StoreError::from(e)
                ));
                return Ok(());
            }
        };
        if let Some(starts) = &head.items {
            // Listed in run order, as the items are keyed.
            let at = starts.binary_search_by(|i| {
                entity_order(i.entity.as_bytes(), start.0.as_bytes()).then(i.seq.cmp(&start.1))
            });
            if at.is_err() {
                self.problems.push(format!(
                    "postings item {ix}/{run}/{}/{} is not listed by its head",
                    start.0, start.1
                ));
            }
        }
        let counted = self.counted.entry((ix, run)).or_default();
        counted.0 += postings.len() as u64;
        counted.1 += 1;
        let sealed = sealed_upto(p.last_seq());
        for posting in postings.iter().filter(|x| x.seq >= p.first_seq()) {
            self.entries += 1;
            let seq = posting.seq;
            let bits = self
                .indexed
                .entry(ix)
                .or_insert_with(|| vec![0; (p.next_seq as usize).div_ceil(64)]);
            match bits.get_mut(seq as usize / 64) {
                Some(word) if *word & (1 << (seq % 64)) != 0 => {
                    self.problems
                        .push(format!("event {ix}/{seq} is indexed twice"));
                }
                Some(word) => *word |= 1 << (seq % 64),
                None => {}
            }
            let entity = posting.entity.as_bytes();
            if !(head.lo..=head.hi).contains(&seq)
                || !head.entities.may_contain(entity_hash(entity))
                || !head
                    .events
                    .may_contain(event_hash(entity, posting.ts, posting.tag))
            {
                self.problems.push(format!(
                    "posting {ix}/{}/{seq} is outside its run's range or filters",
                    posting.entity
                ));
            }
            let matches = match reader.event(ix, seq)? {
                Some(bytes) if seq <= sealed => match EventRecord::from_bytes(&bytes) {
                    Ok((rec, _)) => {
                        rec.entity_id.as_deref() == Some(posting.entity.as_str())
                            && rec.ts == posting.ts
                            && name_tag(rec.event_name(p)) == posting.tag
                    }
                    Err(_) => false,
                },
                _ => false,
            };
            if !matches {
                self.problems.push(format!(
                    "entity index {ix}/{}/{seq} does not match a sealed event",
                    posting.entity
                ));
            }
        }
        Ok(())
    }

    /// Checks that run `run` of `portal` is live or dead (its head comes
    /// after its items, so their count is complete).
    pub(super) fn head(&mut self, portal: PortalIx, run: u32) {
        if self.is_dead(portal, run) {
            return;
        }
        match self.live_head(portal, run) {
            None => self.problems.push(format!(
                "head of run {portal}/{run}, which no run list names"
            )),
            Some(head) => {
                let (want, listed) = (head.postings, head.items.as_ref().map(|l| l.len()));
                let (postings, items) = self.counted.get(&(portal, run)).copied().unwrap_or((0, 0));
                if postings != want {
                    self.problems.push(format!(
                        "run {portal}/{run}: its head says {want} postings, its items hold {postings}"
                    ));
                }
                if let Some(listed) = listed.filter(|&listed| listed != items) {
                    self.problems.push(format!(
                        "run {portal}/{run}: its head lists {listed} items, {items} are stored"
                    ));
                }
            }
        }
    }

    /// Checks that each portal's sealed entity events (counted by the
    /// caller) are all indexed: postings were each matched to a distinct
    /// sealed event above, so equal counts mean every one has one.
    pub(super) fn finish(
        &mut self,
        sealed_entity_events: &HashMap<PortalIx, u64>,
        dir: &PortalDirectory,
    ) {
        for p in dir.portals() {
            let sealed = sealed_entity_events.get(&p.ix).copied().unwrap_or(0);
            let indexed: u64 = self.indexed.get(&p.ix).map_or(0, |bits| {
                bits.iter().map(|w| u64::from(w.count_ones())).sum()
            });
            if sealed != indexed {
                self.problems.push(format!(
                    "portal {}: {sealed} sealed entity events but {indexed} index entries",
                    p.member_id
                ));
            }
            let Some(runs) = self.runs.get(&p.ix) else {
                continue;
            };
            for run in &runs.live {
                if !self.counted.contains_key(&(p.ix, run.id)) && run.head.postings > 0 {
                    self.problems
                        .push(format!("run {}/{} has no items", p.ix, run.id));
                }
            }
        }
    }
}
