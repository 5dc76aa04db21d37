//! Rebuilding the activity rollups from the stored events: for a journal
//! written before rollups existed (the format 3 → 4 migration calls
//! [`rebuild_rollups`]), or to repair them. Deletes every rollup record and
//! writes them anew, portal by portal. And `verify`'s comparison of the
//! stored rollups with the events.

use std::collections::BTreeMap;

use super::error::MaintainError;
use crate::journal::record::{EventRecord, PortalRecord};
use crate::journal::rollup::{HourRollup, RollupDelta};
use crate::journal::store::{KeyKind, Reader, Store, StoreError, WriteBatch};

/// Rollup records written per commit.
const REBUILD_CHUNK: usize = 10_000;

/// Replaces every rollup record of the stopped journal in `store` with
/// counts of its stored events (duplicates under the event they repeat);
/// returns the number of events counted. O(events); run it offline.
pub fn rebuild_rollups(store: &mut Store) -> Result<u64, MaintainError> {
    // Old records first: an erased or emptied hour must not survive.
    let reader = store.reader().clone();
    let mut writes = WriteBatch::default();
    for item in reader.all_keys() {
        let (key, kind, _) = item?;
        if matches!(kind, KeyKind::Rollup { .. }) {
            writes.delete(&key);
        }
        if writes.len() >= REBUILD_CHUNK {
            store.commit(std::mem::take(&mut writes))?;
        }
    }
    if !writes.is_empty() {
        store.commit(std::mem::take(&mut writes))?;
    }
    let mut counted = 0u64;
    for portal in reader.portals()? {
        if portal.member_id.is_empty() || portal.events == 0 {
            continue;
        }
        let mut delta = RollupDelta::default();
        for item in reader.events(portal.ix, portal.first_seq(), portal.last_seq()) {
            let (seq, bytes) = item?;
            let (event, dups) = EventRecord::from_bytes(&bytes)
                .map_err(|e| StoreError::undecodable(format!("event {}/{seq}", portal.ix), e))?;
            let name = event.event_name(&portal);
            delta.add(portal.ix, event.ts, name, 1, i64::from(dups));
            counted += 1;
        }
        for ((ix, hour), changes) in delta.0 {
            let mut record = HourRollup::default();
            record.apply(&changes);
            if !record.is_empty() {
                writes.put_rollup(ix, hour, record.to_bytes());
            }
            if writes.len() >= REBUILD_CHUNK {
                store.commit(std::mem::take(&mut writes))?;
            }
        }
    }
    if !writes.is_empty() {
        store.commit(writes)?;
    }
    Ok(counted)
}

/// The differences between `portal`'s stored rollups and `expected`
/// (counted from its events), one line each, at most `limit`.
pub(super) fn compare(
    reader: &Reader,
    portal: &PortalRecord,
    expected: &RollupDelta,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut want: BTreeMap<u64, HourRollup> = BTreeMap::new();
    for (&(ix, hour), changes) in &expected.0 {
        if ix == portal.ix {
            want.entry(hour).or_default().apply(changes);
        }
    }
    let mut problems = Vec::new();
    let mut stored: BTreeMap<u64, HourRollup> = BTreeMap::new();
    for (hour, bytes) in reader.rollups(portal.ix, 0, u64::MAX)? {
        match HourRollup::from_bytes(&bytes) {
            Ok(r) => {
                stored.insert(hour, r);
            }
            Err(e) => problems.push(format!("rollup {}/{hour}: {e}", portal.ix)),
        }
    }
    let hours: std::collections::BTreeSet<u64> =
        want.keys().chain(stored.keys()).copied().collect();
    for hour in hours {
        let (w, s) = (want.get(&hour), stored.get(&hour));
        if w.filter(|r| !r.is_empty()) != s {
            problems.push(format!(
                "portal {}: rollup of hour {hour} says {:?}, its events count {:?}",
                portal.member_id,
                s.map(HourRollup::total),
                w.map(HourRollup::total)
            ));
        }
        if problems.len() >= limit {
            break;
        }
    }
    Ok(problems)
}

/// Whether the store holds any rollup record (a journal written before
/// rollups existed holds none until they are rebuilt).
pub(super) fn any(reader: &Reader) -> Result<bool, StoreError> {
    for item in reader.all_keys() {
        if matches!(item?.1, KeyKind::Rollup { .. }) {
            return Ok(true);
        }
    }
    Ok(false)
}
