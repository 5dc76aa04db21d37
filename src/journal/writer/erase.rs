//! Erasing a portal: every key of it, in bounded steps that survive a
//! crash.
//!
//! A tombstone record goes first (readers stop seeing the portal at once),
//! then the portal's other keys in chunks of [`ERASE_CHUNK`]. A crash in
//! between leaves a tombstone with leftovers, which the next start
//! finishes erasing ([`Writer::finish_erasures`]).

use std::sync::Arc;

use super::super::append::{AppendError, UnavailableCause};
use super::super::record::{PortalIx, PortalRecord};
use super::super::store::{CommitError, KeyKind, StoreError, WriteBatch};
use super::{unavailable, Writer};
use crate::types::MemberId;

/// Deletes per commit while erasing a portal.
const ERASE_CHUNK: usize = 20_000;

impl Writer {
    /// Erases a portal; `Ok(None)` if it is not in the journal, else the
    /// number of events erased.
    /// `from` is the stream message it came in (cluster mode), recorded
    /// with the tombstone.
    pub(super) fn erase(
        &mut self,
        member: &str,
        from: Option<u64>,
    ) -> Result<Option<u64>, AppendError> {
        let Some(rec) = self.directory.by_member(member).cloned() else {
            self.advance(from)?;
            return Ok(None);
        };
        let erased = rec.events;
        self.tails.forget(rec.ix);
        self.entities.forget(rec.ix);
        self.dead_runs.retain(|&p| p != rec.ix);
        self.pending_merges.retain(|&p| p != rec.ix);
        let tombstone = PortalRecord {
            member_id: String::new(),
            ..PortalRecord::new(rec.ix, &member_placeholder())
        };
        let mut writes = WriteBatch::default();
        writes.put_portal(&tombstone);
        writes.remove_registration(member);
        if let Some(seq) = from {
            writes.put_stream_seq(seq);
        }
        writes.remove_pull_state(member);
        self.commit_store(writes)
            .map_err(|e| AppendError::Unavailable(UnavailableCause::Commit(Arc::new(e))))?;
        if let Some(seq) = from {
            self.stream_seq = seq;
        }
        self.directory.upsert(tombstone.clone());
        self.directory.remove_registration(member);
        {
            let mut shared = self.published.write().unwrap_or_else(|p| p.into_inner());
            shared.upsert(tombstone);
            shared.remove_registration(member);
        }
        self.purge(rec.ix).map_err(unavailable)?;
        tracing::info!(member_id = member, events = erased, "portal erased");
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Some(erased))
    }

    /// Records stream message `from` as applied when its job changed
    /// nothing else.
    pub(super) fn advance(&mut self, from: Option<u64>) -> Result<(), AppendError> {
        let Some(seq) = from else {
            return Ok(());
        };
        let mut writes = WriteBatch::default();
        writes.put_stream_seq(seq);
        self.commit_store(writes)
            .map_err(|e| AppendError::Unavailable(UnavailableCause::Commit(Arc::new(e))))?;
        self.stream_seq = seq;
        Ok(())
    }

    /// Deletes every key of portal `ix` but its (tombstone) record.
    fn purge(&mut self, ix: PortalIx) -> Result<(), StoreError> {
        loop {
            let mut writes = WriteBatch::default();
            for item in self.store.reader().portal_keys(ix) {
                let (key, kind, _) = item?;
                if !matches!(kind, KeyKind::Portal(_)) {
                    writes.delete(&key);
                }
                if writes.len() >= ERASE_CHUNK {
                    break;
                }
            }
            if writes.is_empty() {
                return Ok(());
            }
            self.commit_store(writes).map_err(|e| match e {
                CommitError::NotApplied(e) | CommitError::NotDurable(e) => e,
            })?;
        }
    }

    /// Finishes erasures a crash interrupted.
    pub(in super::super) fn finish_erasures(&mut self) -> Result<(), StoreError> {
        let tombstones: Vec<PortalIx> = self
            .directory
            .portals()
            .iter()
            .filter(|p| p.member_id.is_empty())
            .map(|p| p.ix)
            .collect();
        for ix in tombstones {
            self.purge(ix)?;
        }
        Ok(())
    }
}

/// A member id for building tombstones (the tombstone then clears it).
fn member_placeholder() -> MemberId {
    // Cannot fail: "erased" is a valid member id.
    MemberId::parse("erased").expect("valid member id")
}
