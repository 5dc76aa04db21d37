//! Committing a batch: lay it out, make it durable, show it to readers,
//! answer its waiters — and recover when a commit fails.
//!
//! Order matters: the writer's own view moves on only once the batch is
//! durable (dedup and seqs of the next batch build on it), then readers
//! see it, then waiters hear. A failed commit answers the whole batch 503
//! and, unless nothing was touched, marks the engine for a reopen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::append::{AppendError, UnavailableCause};
use super::super::directory::PortalDirectory;
use super::super::entities::PortalRuns;
use super::super::layout::{self, runs::RunsUpdate};
use super::super::record::{PortalIx, PortalRecord};
use super::super::registration::Registration;
use super::super::store::codec;
use super::super::store::{CommitError, StoreError, WriteBatch};
use super::{now_ms, Batch, Writer};

/// What laying out a batch leaves to do after its commit.
struct LaidOut {
    /// The entity index runs to show.
    shown: Vec<(PortalIx, PortalRuns)>,
    /// Portals whose runs then wait to be deleted.
    purge: Vec<PortalIx>,
    /// Portals whose runs still have merges due, oldest first.
    pending: Vec<PortalIx>,
}

/// What became of a batch given to [`Writer::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Committed {
    /// Durable, shown and answered.
    Durable,
    /// It had nothing to write (its jobs, if any, were all refused).
    Nothing,
    /// Not committed: its jobs were answered 503.
    Failed,
}

/// How long a stopping writer goes on with merges still due before it
/// leaves them to each portal's next seal (which does them first). Short,
/// because a restart's queued requests wait for it: a journal closed while
/// quiet has none due (the idle writer did them), and one closed in a
/// burst keeps a few more runs per portal until their next seal.
const SHUTDOWN_MERGE_TIME: Duration = Duration::from_millis(250);

impl Writer {
    /// Commits through the store, remembering a failure: sled keeps the
    /// first I/O error for the life of the database object, so after one the
    /// engine is reopened (see [`Writer::recover`]) before the next commit.
    pub(super) fn commit_store(&mut self, writes: WriteBatch) -> Result<(), CommitError> {
        let result = self.store.commit(writes);
        // A refusal for lack of space touched nothing: no reopen needed.
        if result.is_err()
            && !matches!(
                result,
                Err(CommitError::NotApplied(StoreError::DiskFull { .. }))
            )
        {
            self.broken = true;
        }
        result
    }

    /// After a failed commit (a full disk, say): reopen the engine and
    /// rebuild the directory from what it recovered — a batch that failed
    /// after being applied may or may not have reached the disk, so the
    /// in-memory counters cannot be trusted. Until this succeeds every job
    /// is answered 503; it is retried with every batch.
    pub(super) fn recover(&mut self) {
        if let Err(e) = self.store.reopen() {
            tracing::warn!(error = %e, "journal still unavailable; will retry");
            return;
        }
        let reader = self.store.reader();
        let loaded = reader.portals().and_then(|portals| {
            let regs = reader.registrations()?;
            PortalDirectory::from_records(portals, regs)
        });
        let loaded = loaded.and_then(|dir| Ok((dir, reader.stream_seq()?)));
        match loaded {
            Ok((dir, stream_seq)) => {
                self.stream_seq = stream_seq;
                self.directory = dir.clone();
                *self.published.write().unwrap_or_else(|p| p.into_inner()) = dir;
                self.tails.forget_all();
                self.entities.forget_all();
                self.dead_runs.clear();
                // Due merges are done at the latest at each portal's next
                // seal (`RunsUpdate::add_block`).
                self.pending_merges.clear();
                self.broken = false;
                self.commits.send_modify(|n| *n = n.wrapping_add(1));
                tracing::info!("journal reopened after a storage error; accepting events again");
            }
            Err(e) => tracing::error!(error = %e, "journal reopened but unreadable; will retry"),
        }
    }

    /// The update of `portal`'s entity index runs in this batch, begun with
    /// the deletion of the runs its last change made dead (readers were
    /// shown that change in an earlier commit; see `layout::runs`).
    fn runs_update<'u>(
        &self,
        updates: &'u mut HashMap<PortalIx, RunsUpdate>,
        writes: &mut WriteBatch,
        portal: PortalIx,
    ) -> Result<&'u mut RunsUpdate, StoreError> {
        match updates.entry(portal) {
            std::collections::hash_map::Entry::Occupied(held) => Ok(held.into_mut()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let reader = self.store.reader();
                let runs = self.entities.runs(reader, portal)?;
                let mut update = RunsUpdate::new(portal, &runs);
                update.purge_dead(writes, reader)?;
                Ok(slot.insert(update))
            }
        }
    }

    /// Puts the batch's new and rewritten events into `writes`, laid out
    /// as `layout` describes. Returns the entity index runs to show once
    /// the batch is committed, and the portals whose runs then wait to be
    /// deleted.
    fn lay_out(&self, batch: &mut Batch, writes: &mut WriteBatch) -> Result<LaidOut, StoreError> {
        let mut updates = HashMap::new();
        for &portal in &self.dead_runs {
            let live = self
                .directory
                .portal(portal)
                .is_some_and(|p| !p.member_id.is_empty());
            if live {
                self.runs_update(&mut updates, writes, portal)?;
            }
        }
        let committed_last = |portal: PortalIx| {
            self.directory
                .portal(portal)
                .map_or(0, PortalRecord::last_seq)
        };
        let mut fresh: HashMap<PortalIx, BTreeMap<u64, Vec<u8>>> = HashMap::new();
        for p in &batch.new_events {
            fresh
                .entry(p.portal)
                .or_default()
                .insert(p.seq, p.record.to_bytes(p.duplicates));
            if p.record.entity_id.is_none() {
                writes.put_dedup(p.portal, &p.dedup, p.seq);
            }
        }
        // Duplicate counters: a tail event is rewritten (or sealed) with the
        // rest; one in a sealed block rewrites its block.
        let mut blocks: BTreeMap<(PortalIx, u64), Vec<Vec<u8>>> = BTreeMap::new();
        for ((portal, seq), bytes) in batch.rewritten.drain() {
            if seq > codec::sealed_upto(committed_last(portal)) {
                fresh.entry(portal).or_default().insert(seq, bytes);
                continue;
            }
            let block = codec::event_block(seq);
            let entries = match blocks.entry((portal, block)) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let raw = self.store.reader().block(portal, block)?.ok_or_else(|| {
                        StoreError::Corrupt(format!("block {portal}/{block} vanished"))
                    })?;
                    v.insert(
                        codec::decode_block(&raw)?
                            .into_iter()
                            .map(<[u8]>::to_vec)
                            .collect(),
                    )
                }
            };
            // In range: decode_block checked the block has BLOCK_SPAN entries.
            entries[((seq - 1) % codec::BLOCK_SPAN) as usize] = bytes;
        }
        for ((portal, block), entries) in blocks {
            let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
            writes.put_block(portal, block, codec::encode_block(&refs));
        }
        for (portal, events) in fresh {
            let rec = batch
                .portals
                .get(&portal)
                .ok_or_else(|| StoreError::Corrupt(format!("portal {portal} not in batch")))?;
            let update = self.runs_update(&mut updates, writes, portal)?;
            layout::lay_out(
                writes,
                self.store.reader(),
                rec,
                committed_last(portal),
                events,
                update,
            )?;
        }
        // Merges: those left by earlier commits first, then this batch's.
        let mut queue = self.pending_merges.clone();
        let queued: HashSet<PortalIx> = queue.iter().copied().collect();
        let mut sealed: Vec<PortalIx> = updates
            .iter()
            .filter(|(p, u)| u.pending() && !queued.contains(p))
            .map(|(&p, _)| p)
            .collect();
        sealed.sort_unstable();
        queue.extend(sealed);
        let mut budget = self.merge_budget;
        let mut pending = Vec::new();
        for portal in queue {
            // Out of budget: the rest wait, untouched.
            if budget == 0 {
                pending.push(portal);
                continue;
            }
            let Some(first_live) = batch
                .portals
                .get(&portal)
                .or_else(|| self.directory.portal(portal))
                .map(PortalRecord::first_seq)
            else {
                continue;
            };
            let update = self.runs_update(&mut updates, writes, portal)?;
            if update.merge_some(writes, self.store.reader(), first_live, &mut budget)? {
                pending.push(portal);
            }
        }
        let mut shown = Vec::new();
        let mut purge = Vec::new();
        for (portal, update) in updates {
            if update.has_dead() {
                purge.push(portal);
            }
            if let Some(runs) = update.finish(writes) {
                shown.push((portal, runs));
            }
        }
        Ok(LaidOut {
            shown,
            purge,
            pending,
        })
    }

    /// Commits the batch, then publishes it and answers every waiter; a
    /// batch that cannot be committed is answered 503.
    pub(super) fn commit(&mut self, mut batch: Batch) -> Committed {
        let mut writes = WriteBatch::default();
        let laid_out = self.lay_out(&mut batch, &mut writes);
        for (portal, summary) in &batch.sealed {
            writes.put_summary(*portal, summary);
        }
        // The activity rollups change in the same atomic write.
        let laid_out = laid_out.and_then(|laid| {
            let mut delta = std::mem::take(&mut batch.rollups);
            for p in &batch.new_events {
                if let Some(rec) = batch.portals.get(&p.portal) {
                    let name = p.record.event_name(rec);
                    delta.add(p.portal, p.record.ts, name, 1, i64::from(p.duplicates));
                }
            }
            self.write_rollups(&delta, &mut writes).map(|()| laid)
        });
        // The open span's summary lives in the portal record (queries read
        // it from there); its `S` key is written once, when the span is full.
        for rec in batch.portals.values() {
            match self.directory.portal(rec.ix) {
                Some(old) if !rec.tables_differ(old) => writes.put_portal_counters(rec),
                _ => writes.put_portal(rec),
            }
        }
        for reg in batch.registrations.values() {
            writes.put_registration(reg);
        }
        for state in batch.pulls.values() {
            writes.put_pull_state(state);
        }
        if !batch.probes.is_empty() {
            writes.put_health(now_ms());
        }
        if let Some(seq) = batch.stream_seq {
            writes.put_stream_seq(seq);
        }
        let registrations: Vec<Registration> = batch.registrations.into_values().collect();
        // In number order: new portals must be appended to the directory in
        // the order their numbers were given.
        let mut touched: Vec<PortalRecord> = batch.portals.into_values().collect();
        touched.sort_by_key(|rec| rec.ix);

        if let (Ok(laid), true) = (&laid_out, writes.is_empty()) {
            // Only refused jobs (or nothing): no write to make durable. The
            // merge queues can still have lost portals erased meanwhile.
            self.pending_merges.clone_from(&laid.pending);
            self.dead_runs.clone_from(&laid.purge);
            for (reply, outcome) in batch.replies {
                let _ = reply.send(outcome);
            }
            for (reply, outcomes, state) in batch.pulled {
                let _ = reply.send(Ok((outcomes, state)));
            }
            return Committed::Nothing;
        }
        let entities = self.entities.clone();
        let committed = laid_out.map_err(CommitError::NotApplied).and_then(
            |LaidOut {
                 shown,
                 purge,
                 pending,
             }| {
                // Readers must see the new runs before the tail events they
                // index leave the memtable.
                let show = move || {
                    for (portal, runs) in shown {
                        entities.publish(portal, runs);
                    }
                };
                self.store
                    .commit_logged(writes, show)
                    .map(|()| (purge, pending))
            },
        );
        let committed = match committed {
            Ok((purge, pending)) => {
                self.dead_runs = purge;
                self.pending_merges = pending;
                Ok(())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            tracing::error!(error = %e, "journal batch not committed; answering 503");
            // A refusal for lack of space touched nothing; anything else
            // may have left sled's in-memory state half-changed, or the
            // batch may or may not be durable: reopen before the next.
            if !matches!(e, CommitError::NotApplied(StoreError::DiskFull { .. })) {
                self.broken = true;
            }
            let cause = match e {
                CommitError::NotApplied(e) | CommitError::NotDurable(e) => {
                    UnavailableCause::Store(Arc::new(e))
                }
            };
            for (reply, outcome) in batch.replies {
                let _ = reply.send(outcome.and(Err(AppendError::Unavailable(cause.clone()))));
            }
            for probe in batch.probes.into_iter().chain(batch.saved) {
                let _ = probe.send(Err(AppendError::Unavailable(cause.clone())));
            }
            for (reply, _, _) in batch.pulled {
                let _ = reply.send(Err(AppendError::Unavailable(cause.clone())));
            }
            return Committed::Failed;
        }
        // Durable: the writer's view moves on (dedup and seqs of the next
        // batch build on it), then readers see it, then waiters hear.
        if let Some(seq) = batch.stream_seq {
            self.stream_seq = seq;
        }
        self.tails.committed(
            batch
                .new_events
                .iter()
                .map(|p| (p.portal, p.seq, &p.record)),
            &touched,
        );
        let ixs: Vec<PortalIx> = touched.iter().map(|r| r.ix).collect();
        for rec in touched {
            self.directory.upsert(rec);
        }
        for reg in &registrations {
            self.directory.set_registration(reg.clone());
        }
        self.publish(&ixs, registrations);
        for (reply, outcome) in batch.replies {
            // The handler may have gone (client disconnected).
            let _ = reply.send(outcome);
        }
        for probe in batch.probes.into_iter().chain(batch.saved) {
            let _ = probe.send(Ok(()));
        }
        for (reply, outcomes, state) in batch.pulled {
            let _ = reply.send(Ok((outcomes, state)));
        }
        Committed::Durable
    }

    /// Whether a commit without jobs has work: merges left by the budget,
    /// or runs a merge made dead and not yet deleted.
    pub(super) fn merges_due(&self) -> bool {
        let work = !self.pending_merges.is_empty() || !self.dead_runs.is_empty();
        work && !self.broken
    }

    /// One commit of due merges alone, for a writer with no jobs: the
    /// merges a burst of seals left are done while it is quiet instead of
    /// in the next busy batch. Returns whether it wrote anything: a
    /// failed commit, or one that found nothing to write, leaves the rest
    /// to the next batch of jobs rather than retrying at once.
    pub(super) fn merge_idle(&mut self) -> bool {
        self.commit(Batch::default()) == Committed::Durable
    }

    /// A stopping writer's last merges, for at most
    /// [`SHUTDOWN_MERGE_TIME`].
    pub(super) fn finish_merges(&mut self) {
        let until = Instant::now() + SHUTDOWN_MERGE_TIME;
        while self.merges_due() && Instant::now() < until {
            if !self.merge_idle() {
                break;
            }
        }
        if !self.pending_merges.is_empty() {
            tracing::info!(
                portals = self.pending_merges.len(),
                "journal closed with entity index merges due; each is done at its portal's next seal"
            );
        }
    }

    /// Shows durable state to readers and wakes live readers.
    pub(super) fn publish(&self, ixs: &[PortalIx], registrations: Vec<Registration>) {
        if ixs.is_empty() && registrations.is_empty() {
            return;
        }
        {
            // A poisoned lock means a reader panicked while holding it; the
            // data (plain records) is still consistent, so keep going.
            let mut shared = self.published.write().unwrap_or_else(|p| p.into_inner());
            for &ix in ixs {
                if let Some(rec) = self.directory.portal(ix) {
                    shared.upsert(rec.clone());
                }
            }
            for reg in registrations {
                shared.set_registration(reg);
            }
        }
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }
}
