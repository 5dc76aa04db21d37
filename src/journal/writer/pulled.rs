//! Pulled offline records: a batch of them is staged like pushed events,
//! and the portal's pull state — its counters advanced by the outcomes —
//! is written in the same atomic batch, so the counters never disagree
//! with the journal. Under the reconcile policy a record that a pushed
//! event already stands for is counted on that event instead of stored.

use uuid::Uuid;

use super::super::append::{AppendError, AppendOutcome, NewEvent};
use super::super::pull_state::{PullMerge, PullState};
use super::super::record::{EventRecord, PortalIx};
use super::super::store::StoreError;
use super::{unavailable, Batch, PulledReply, Writer};

impl Writer {
    /// `change` combined with the portal's state in this batch or stored
    /// (`merge`); for a stream message `from`, checks first that it is the
    /// next one and then claims its position for the batch, so that a
    /// refused job leaves the position where it was.
    pub(super) fn merge_pull(
        &mut self,
        batch: &mut Batch,
        from: Option<u64>,
        merge: &PullMerge,
        change: PullState,
    ) -> Result<PullState, AppendError> {
        if let Some(from) = from {
            self.next_in_stream(batch, from)?;
        }
        let merged = match merge {
            PullMerge::Replace => change,
            _ => {
                let stored = match batch.pulls.get(&change.member_id) {
                    Some(s) => Some(s.clone()),
                    None => self
                        .store
                        .reader()
                        .pull_state(&change.member_id)
                        .map_err(unavailable)?,
                };
                merge.apply(stored.as_ref(), change)
            }
        };
        if from.is_some() {
            batch.stream_seq = from;
        }
        Ok(merged)
    }

    /// Stages `events` (pulled from one portal) and its `state`, answered
    /// once the batch is durable.
    pub(super) fn stage_pulled(
        &mut self,
        batch: &mut Batch,
        events: Vec<NewEvent>,
        mut state: PullState,
        reply: PulledReply,
    ) {
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            let outcome = self.stage(batch, event);
            if let Ok(o) = &outcome {
                state.pulled += 1;
                match o {
                    AppendOutcome::Stored { .. } => state.recovered += 1,
                    AppendOutcome::Duplicate { .. } => state.duplicates += 1,
                    AppendOutcome::Reconciled { .. } => state.reconciled += 1,
                }
            }
            outcomes.push(outcome);
        }
        batch.pulls.insert(state.member_id.clone(), state.clone());
        batch.pulled.push((reply, outcomes, state));
    }

    /// The pushed event of `portal` that the pulled `event` stands for
    /// (same name and entity, `ts` within `window`), in this batch or
    /// stored; its reconciled counter is bumped. `None`: none does.
    pub(super) fn reconcile(
        &mut self,
        batch: &mut Batch,
        portal: PortalIx,
        event: &NewEvent,
        window: u64,
    ) -> Result<Option<(Uuid, u64)>, AppendError> {
        let Some(entity) = event.entity_id.as_ref().map(|e| e.as_str()) else {
            return Ok(None);
        };
        let (name, ts) = (event.event.as_str(), event.ts.secs());
        if let Some(rec) = batch.portals.get(&portal) {
            let found = batch.new_events.iter().position(|p| {
                p.portal == portal
                    && p.record.provenance.message_id.is_none()
                    && p.record.entity_id.as_deref() == Some(entity)
                    && p.record.ts.abs_diff(ts) <= window
                    && p.record.event_name(rec) == name
            });
            if let Some(i) = found {
                let p = &mut batch.new_events[i];
                p.record.provenance.reconciled = p.record.provenance.reconciled.saturating_add(1);
                return Ok(Some((p.record.uuid(), p.seq)));
            }
        }
        let Some(committed) = self.directory.by_member(event.member_id.as_str()) else {
            return Ok(None);
        };
        let found = self
            .tails
            .near_push(
                self.store.reader(),
                &self.entities,
                committed,
                event,
                window,
            )
            .map_err(unavailable)?;
        match found {
            Some(seq) => self
                .bump_reconciled(batch, portal, seq)
                .map(|id| id.map(|id| (id, seq)))
                .map_err(unavailable),
            None => Ok(None),
        }
    }

    /// Bumps the reconciled counter of stored event `seq`; returns its id.
    fn bump_reconciled(
        &self,
        batch: &mut Batch,
        portal: PortalIx,
        seq: u64,
    ) -> Result<Option<Uuid>, StoreError> {
        let Some(bytes) = self.current_bytes(batch, portal, seq)? else {
            return Ok(None);
        };
        let (mut record, duplicates) = EventRecord::from_bytes(&bytes)
            .map_err(|e| StoreError::undecodable(format!("event {portal}/{seq}"), e))?;
        record.provenance.reconciled = record.provenance.reconciled.saturating_add(1);
        batch
            .rewritten
            .insert((portal, seq), record.to_bytes(duplicates));
        Ok(Some(record.uuid()))
    }
}
