//! Retention: deleting what the [`RetentionPolicy`] no longer keeps, oldest
//! first, in bounded steps.
//!
//! Each step deletes at most its budget of events, portal by portal, with
//! their blocks, tail items, dedup keys and span summaries, and their
//! counts in the activity rollups, in one atomic commit; entity index runs
//! that hold only deleted events become dead (see `layout::runs`). The
//! caller repeats while a step returns its budget, other jobs running in
//! between, so ingest never waits for more than one step. Readers start at
//! a portal's `first_seq`, so a block or run that still holds a kept event
//! can stay.

use std::sync::Arc;

use super::super::append::{AppendError, UnavailableCause};
use super::super::dedup::key::dedup_key_of_record;
use super::super::layout::runs::RunsUpdate;
use super::super::record::{span_of, EventRecord, PortalIx, PortalRecord};
use super::super::retention::RetentionPolicy;
use super::super::rollup::RollupDelta;
use super::super::store::codec;
use super::super::store::{StoreError, WriteBatch};
use super::{unavailable, Writer};

impl Writer {
    /// One bounded retention step: deletes at most `budget` events; returns
    /// how many it deleted.
    /// The age limit counts back from `at_ms`; `from` is the stream message
    /// the step came in (cluster mode), recorded with its deletions.
    pub(super) fn retain(
        &mut self,
        policy: RetentionPolicy,
        budget: usize,
        at_ms: u64,
        from: Option<u64>,
    ) -> Result<u64, AppendError> {
        // Retention may delete tail events: reload tails when next needed.
        self.tails.forget_all();
        let cutoff_ms = policy.cutoff_ms(at_ms);
        let mut writes = WriteBatch::default();
        let mut touched = Vec::new();
        let mut shown = Vec::new();
        let mut purge = Vec::new();
        let mut deleted = 0u64;
        let mut rollups = RollupDelta::default();
        let portals: Vec<PortalRecord> = self
            .directory
            .portals()
            .iter()
            .filter(|p| !p.member_id.is_empty() && p.events > 0)
            .cloned()
            .collect();
        for mut rec in portals {
            if deleted as usize >= budget {
                break;
            }
            let mut excess = policy
                .per_portal
                .map_or(0, |keep| rec.events.saturating_sub(keep));
            let (first, last) = (rec.first_seq(), rec.last_seq());
            let mut first_kept = rec.next_seq;
            let reader = self.store.reader();
            for item in reader.events(rec.ix, first, last) {
                let (seq, bytes) = item.map_err(unavailable)?;
                let (event, dups) = EventRecord::from_bytes(&bytes)
                    .map_err(|e| unavailable(StoreError::undecodable(format!("event {seq}"), e)))?;
                let too_old = cutoff_ms.is_some_and(|c| event.received_ms() < c);
                if (excess == 0 && !too_old) || deleted as usize >= budget {
                    first_kept = seq;
                    break;
                }
                if event.entity_id.is_none() {
                    if let Some(key) = dedup_key_of_record(&event, &rec) {
                        writes.delete_dedup(rec.ix, &key);
                    }
                }
                let name = event.event_name(&rec).to_owned();
                rollups.add(rec.ix, event.ts, &name, -1, -i64::from(dups));
                rec.events -= 1;
                rec.duplicates = rec.duplicates.saturating_sub(u64::from(dups));
                excess = excess.saturating_sub(1);
                deleted += 1;
            }
            if first_kept == first {
                continue;
            }
            // Whole blocks below the first kept event go; a block still
            // holding kept events stays (readers start at `first_seq`).
            let sealed = codec::sealed_upto(last);
            let mut block = codec::event_block(first);
            while codec::event_block_first(block + 1) <= first_kept
                && codec::event_block_first(block + 1) - 1 <= sealed
            {
                writes.delete_block(rec.ix, block);
                block += 1;
            }
            for seq in first.max(sealed + 1)..first_kept {
                writes.delete_tail(rec.ix, seq);
            }
            let runs = self.entities.runs(reader, rec.ix).map_err(unavailable)?;
            let mut update = RunsUpdate::new(rec.ix, &runs);
            // Made dead by an earlier commit, already shown to readers.
            update
                .purge_dead(&mut writes, reader)
                .map_err(unavailable)?;
            update.drop_below(first_kept);
            if update.has_dead() {
                purge.push(rec.ix);
            }
            if let Some(runs) = update.finish(&mut writes) {
                shown.push((rec.ix, runs));
            }
            let first_span = span_of(first_kept);
            for summary in reader.summaries_desc(rec.ix, first_span.saturating_sub(1)) {
                let summary = summary.map_err(unavailable)?;
                if summary.span < first_span {
                    writes.delete_summary(rec.ix, summary.span);
                }
            }
            writes.put_portal(&rec);
            touched.push(rec);
        }
        if writes.is_empty() {
            self.advance(from)?;
            return Ok(0);
        }
        self.write_rollups(&rollups, &mut writes)
            .map_err(unavailable)?;
        if let Some(seq) = from {
            writes.put_stream_seq(seq);
        }
        self.commit_store(writes)
            .map_err(|e| AppendError::Unavailable(UnavailableCause::Commit(Arc::new(e))))?;
        if let Some(seq) = from {
            self.stream_seq = seq;
        }
        for (portal, runs) in shown {
            self.entities.publish(portal, runs);
        }
        for portal in purge {
            if !self.dead_runs.contains(&portal) {
                self.dead_runs.push(portal);
            }
        }
        let ixs: Vec<PortalIx> = touched.iter().map(|r| r.ix).collect();
        for rec in touched {
            self.directory.upsert(rec);
        }
        self.publish(&ixs, Vec::new());
        tracing::info!(events = deleted, "retention deleted old events");
        Ok(deleted)
    }
}
