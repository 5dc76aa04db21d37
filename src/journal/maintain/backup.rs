//! Online backup: a consistent copy of a running journal into a new data
//! directory.
//!
//! The copy takes everything up to a high-water mark taken when the backup
//! starts: for each portal, the last seq known durable at that moment. The
//! journal only ever appends (an event below the mark never changes except
//! for its duplicate counter), so the copy is consistent even though the
//! engine's iterators are not snapshots: entries above the mark are
//! skipped, portal counters are recomputed from what was copied, and the
//! copy is flushed and fsynced before it is reported done. The result is
//! an ordinary data directory.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::MaintainError;
use super::offline::open_store;
use crate::journal::dedup::key::dedup_key_of_record;
use crate::journal::entities::PortalRuns;
use crate::journal::format::{check_format, ENGINE_DIR};
use crate::journal::layout::{self, runs::RunsUpdate};
use crate::journal::record::{EventRecord, PortalRecord};
use crate::journal::registration::Registration;
use crate::journal::rollup::{HourRollup, RollupDelta};
use crate::journal::store::codec;
use crate::journal::store::{Store, StoreError, WriteBatch};
use crate::journal::JournalHandle;

/// What a backup copied.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BackupStats {
    /// Portals copied.
    pub portals: usize,
    /// Events copied.
    pub events: u64,
    /// Cluster mode: the last stream message the copy holds (0: none); a
    /// node started on the copy resumes the stream after it.
    pub stream_seq: u64,
    /// Offline pull states copied, with their refresh tokens sealed: the
    /// `--secrets-key-file` is needed to resume pulling from the copy.
    pub sealed_tokens: usize,
}

/// Checks that `dest` can receive a backup: absolute, and missing or empty.
pub fn check_backup_target(dest: &Path) -> Result<(), MaintainError> {
    if !dest.is_absolute() {
        return Err(MaintainError::Target(format!(
            "backup target {} must be an absolute path",
            dest.display()
        )));
    }
    if dest.exists() && !dest.is_dir() {
        return Err(MaintainError::TargetExists(format!(
            "backup target {} exists and is not a directory",
            dest.display()
        )));
    }
    let not_empty = std::fs::read_dir(dest)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if not_empty {
        return Err(MaintainError::TargetExists(format!(
            "backup target {} exists and is not empty",
            dest.display()
        )));
    }
    Ok(())
}

/// Copies the journal behind `handle` into the new data directory `dest`.
/// Blocking: run it off the async workers.
pub fn backup(handle: &JournalHandle, dest: &Path) -> Result<BackupStats, MaintainError> {
    check_backup_target(dest)?;
    // The high-water mark: the durable state right now.
    let (portals, registrations): (Vec<PortalRecord>, Vec<Registration>) =
        handle.with_directory(|d| (d.portals().to_vec(), d.registrations().cloned().collect()));
    check_format(dest)?;
    let mut out = open_store(&dest.join(ENGINE_DIR), dest)?;
    let reader = handle.reader().store();
    // Keeps the writer from reopening the engine under the copy.
    let _long_read = reader.long_read();
    let mut batch = WriteBatch::default();
    let mut stats = BackupStats {
        portals: 0,
        events: 0,
        stream_seq: reader.stream_seq()?,
        sealed_tokens: 0,
    };
    if stats.stream_seq > 0 {
        batch.put_stream_seq(stats.stream_seq);
    }
    for portal in &portals {
        let last = portal.last_seq();
        let events = reader.events(portal.ix, portal.first_seq(), last);
        let copied = copy_portal(&mut out, &mut batch, portal, events)?;
        stats.events += copied;
        stats.portals += usize::from(!portal.member_id.is_empty());
    }
    for reg in &registrations {
        batch.put_registration(reg);
    }
    for state in reader.pull_states()? {
        batch.put_pull_state(&state);
        stats.sealed_tokens += 1;
    }
    out.commit(batch)?;
    out.close()?;
    Ok(stats)
}

/// Writes `portal` and its `events` (oldest first, none above its last
/// seq) into `out` through the writer's layout code, one block at a time
/// (applying each step lets the next read the postings runs it merges).
/// Counters and span summaries are worked out again from what was copied
/// (a migration from format 4 changes the summaries' span); the next seq
/// stays, so seqs are never reused. Returns the number of events copied.
pub(super) fn copy_portal(
    out: &mut Store,
    batch: &mut WriteBatch,
    portal: &PortalRecord,
    events: impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>>,
) -> Result<u64, MaintainError> {
    let last = portal.last_seq();
    let mut copy = portal.clone();
    copy.duplicates = 0;
    copy.events = 0;
    copy.summary = None;
    let mut laid = None;
    let mut fresh = BTreeMap::new();
    let mut runs = RunsUpdate::new(portal.ix, &PortalRuns::default());
    // The copy is a new store: its rollups are counted from what it holds.
    let mut rollups = RollupDelta::default();
    let mut events = events.peekable();
    while let Some(item) = events.next() {
        let (seq, bytes) = item?;
        if seq > last {
            break;
        }
        let (rec, dups) = EventRecord::from_bytes(&bytes).map_err(StoreError::from)?;
        copy.duplicates += u64::from(dups);
        copy.events += 1;
        // The open span's summary stays in the record, as the writer
        // leaves it.
        if let Some(full) = copy.summarise(seq, rec.ts) {
            batch.put_summary(portal.ix, &full);
        }
        rollups.add(
            portal.ix,
            rec.ts,
            rec.event_name(portal),
            1,
            i64::from(dups),
        );
        if rec.entity_id.is_none() {
            if let Some(key) = dedup_key_of_record(&rec, portal) {
                batch.put_dedup(portal.ix, &key, seq);
            }
        }
        let prev = *laid.get_or_insert(seq - 1);
        fresh.insert(seq, bytes);
        let step_done = seq % codec::BLOCK_SPAN == 0
            || events
                .peek()
                .is_none_or(|next| next.as_ref().map_or(true, |(s, _)| *s > last));
        if step_done {
            // The portal as it stands after this step: seqs up to `seq`.
            let step = PortalRecord {
                next_seq: seq + 1,
                events: copy.events,
                ..copy.clone()
            };
            out.apply(std::mem::take(batch))?;
            runs.applied();
            layout::lay_out(
                batch,
                out.reader(),
                &step,
                prev,
                std::mem::take(&mut fresh),
                &mut runs,
            )?;
            // A copy being written has no readers: runs merge, and merged
            // runs go, at once.
            runs.merge_all(batch, out.reader(), step.first_seq())?;
            runs.purge_dead(batch, out.reader())?;
            laid = Some(seq);
        }
    }
    for ((ix, hour), changes) in rollups.0 {
        let mut record = HourRollup::default();
        record.apply(&changes);
        if !record.is_empty() {
            batch.put_rollup(ix, hour, record.to_bytes());
        }
    }
    out.apply(std::mem::take(batch))?;
    // The list goes with the portal record, in the caller's last batch.
    let _ = runs.finish(batch);
    batch.put_portal(&copy);
    Ok(copy.events)
}
