//! Maintenance: online backup, offline verification, and offline portal
//! registrations.
//!
//! **Backup** copies, while the service keeps writing, everything up to a
//! high-water mark taken when the backup starts: for each portal, the last
//! seq known durable at that moment. The journal only ever appends (an event
//! below the mark never changes except for its duplicate counter), so the
//! copy is consistent even though sled's iterators are not snapshots:
//! entries above the mark are skipped, portal counters are recomputed from
//! what was copied, and the copy is flushed and fsynced before it is
//! reported done. The result is an ordinary data directory.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::record::{
    block_of, dedup_key_of_record, EventRecord, PortalIx, PortalRecord, Registration,
};
use super::store::{KeyKind, Store, StoreError, WriteBatch};
use super::{check_format, read_format, Directory, JournalHandle, OpenError, ENGINE_DIR};

/// Writes per intermediate apply during a copy.
const COPY_CHUNK: usize = 10_000;
/// sled cache for maintenance opens: they stream, caching buys nothing.
const MAINTENANCE_CACHE: u64 = 32 * 1024 * 1024;

/// Why a maintenance command failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    /// The target is not usable as given (e.g. a relative path).
    #[error("{0}")]
    Target(String),
    /// The target already holds something.
    #[error("{0}")]
    TargetExists(String),
    /// The data directory did not open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

/// What a backup copied.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BackupStats {
    /// Portals copied.
    pub portals: usize,
    /// Events copied.
    pub events: u64,
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
    let mut out = Store::open(&dest.join(ENGINE_DIR), MAINTENANCE_CACHE).map_err(|source| {
        OpenError::Store {
            dir: dest.to_owned(),
            source,
        }
    })?;
    let reader = handle.reader();
    let mut batch = WriteBatch::default();
    let mut stats = BackupStats {
        portals: 0,
        events: 0,
    };
    for portal in &portals {
        let last = portal.last_seq();
        let mut copy = portal.clone();
        copy.duplicates = 0;
        for item in reader.portal_keys(portal.ix) {
            let (key, kind, value) = item?;
            let keep = match &kind {
                KeyKind::Event { seq, .. } if *seq <= last => {
                    let (_, dups) = EventRecord::from_bytes(&value)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    copy.duplicates += u64::from(dups);
                    stats.events += 1;
                    true
                }
                KeyKind::Entity { seq, .. } | KeyKind::Dedup { seq, .. } => *seq <= last,
                KeyKind::Summary { summary, .. } => summary.block <= block_of(last),
                // Written from the snapshot below.
                _ => false,
            };
            if keep {
                batch.copy(&key, &value);
            }
            if batch.len() >= COPY_CHUNK {
                out.apply(std::mem::take(&mut batch))?;
            }
        }
        batch.put_portal(&copy);
        stats.portals += usize::from(!copy.member_id.is_empty());
    }
    for reg in &registrations {
        batch.put_registration(reg);
    }
    out.commit(batch).map_err(|e| match e {
        super::store::CommitError::NotApplied(e) | super::store::CommitError::NotDurable(e) => e,
    })?;
    Ok(stats)
}

/// What `verify` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Format version.
    pub format: u32,
    /// Portals (not counting erased ones).
    pub portals: usize,
    /// Events.
    pub events: u64,
    /// Entity index entries.
    pub entity_entries: u64,
    /// Dedup keys.
    pub dedup_keys: u64,
    /// Summary blocks.
    pub summaries: u64,
    /// Registrations.
    pub registrations: u64,
    /// Problems found (at most [`MAX_PROBLEMS`] listed; `problem_count` has them all).
    pub problems: Vec<String>,
    /// Number of problems.
    pub problem_count: u64,
}

/// Most problems listed in a report.
pub const MAX_PROBLEMS: usize = 100;

impl VerifyReport {
    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what);
        }
    }
}

#[derive(Default)]
struct PortalTally {
    events: u64,
    duplicates: u64,
    max_seq: u64,
}

/// Opens a stopped data directory and checks every tree and index.
/// Blocking.
pub fn verify(data_dir: &Path) -> Result<VerifyReport, MaintainError> {
    let format = read_format(data_dir)?;
    let store = Store::open(&data_dir.join(ENGINE_DIR), MAINTENANCE_CACHE).map_err(|source| {
        OpenError::Store {
            dir: data_dir.to_owned(),
            source,
        }
    })?;
    let reader = store.reader();
    let mut report = VerifyReport {
        data_dir: data_dir.to_owned(),
        format,
        ..VerifyReport::default()
    };
    let records = reader.portals()?;
    let registrations = reader.registrations()?;
    let dir = match Directory::from_records(records.clone(), registrations.clone()) {
        Ok(dir) => dir,
        Err(e) => {
            report.problem(format!("portal records: {e}"));
            return Ok(report);
        }
    };
    report.registrations = registrations.len() as u64;
    report.portals = records.iter().filter(|p| !p.member_id.is_empty()).count();
    let portal = |ix: PortalIx| dir.portals().get(ix as usize);
    let mut tallies: HashMap<PortalIx, PortalTally> = HashMap::new();
    let mut seen_dedup: BTreeMap<(PortalIx, u64), u32> = BTreeMap::new();

    for item in reader.all_keys() {
        let (_, kind, value) = item?;
        match kind {
            KeyKind::Event { portal: ix, seq } => {
                report.events += 1;
                let Some(p) = portal(ix) else {
                    report.problem(format!("event {ix}/{seq} of a portal without a record"));
                    continue;
                };
                let (rec, dups) = match EventRecord::from_bytes(&value) {
                    Ok(r) => r,
                    Err(e) => {
                        report.problem(format!("event {ix}/{seq} does not decode: {e}"));
                        continue;
                    }
                };
                let t = tallies.entry(ix).or_default();
                t.events += 1;
                t.duplicates += u64::from(dups);
                t.max_seq = t.max_seq.max(seq);
                if seq > p.last_seq() {
                    report.problem(format!(
                        "event {ix}/{seq} is past the portal's last seq {}",
                        p.last_seq()
                    ));
                }
                if let Some(entity) = &rec.entity_id {
                    if !reader.has_entity(ix, entity, seq)? {
                        report.problem(format!("event {ix}/{seq} missing from the entity index"));
                    }
                }
                match dedup_key_of_record(&rec, p) {
                    Some(key) => match reader.dedup(ix, &key)? {
                        Some(s) if s == seq => {}
                        Some(s) => report
                            .problem(format!("dedup key of event {ix}/{seq} points to seq {s}")),
                        None => report.problem(format!("event {ix}/{seq} has no dedup key")),
                    },
                    None => report.problem(format!("event {ix}/{seq}: stored fields invalid")),
                }
            }
            KeyKind::Entity {
                portal: ix,
                entity,
                seq,
            } => {
                report.entity_entries += 1;
                match reader.event(ix, seq)? {
                    Some(bytes) => match EventRecord::from_bytes(&bytes) {
                        Ok((rec, _)) if rec.entity_id.as_deref() == Some(entity.as_str()) => {}
                        _ => report.problem(format!(
                            "entity index {ix}/{entity}/{seq} does not match its event"
                        )),
                    },
                    None => report.problem(format!(
                        "entity index {ix}/{entity}/{seq} points to a missing event"
                    )),
                }
            }
            KeyKind::Dedup {
                portal: ix, seq, ..
            } => {
                report.dedup_keys += 1;
                *seen_dedup.entry((ix, seq)).or_default() += 1;
                if reader.event(ix, seq)?.is_none() {
                    report.problem(format!("dedup key {ix}/{seq} points to a missing event"));
                }
            }
            KeyKind::Summary {
                portal: ix,
                summary,
            } => {
                report.summaries += 1;
                if summary.min_ts > summary.max_ts {
                    report.problem(format!("summary {ix}/{} has min > max", summary.block));
                }
                if portal(ix).is_none() {
                    report.problem(format!("summary of a portal without a record: {ix}"));
                }
            }
            KeyKind::Portal(_) | KeyKind::Registration | KeyKind::Health => {}
            KeyKind::Unknown => report.problem("a key of unknown kind".into()),
        }
    }
    for ((ix, seq), n) in seen_dedup {
        if n > 1 {
            report.problem(format!("{n} dedup keys point to event {ix}/{seq}"));
        }
    }
    for p in dir.portals() {
        let t = tallies.remove(&p.ix).unwrap_or_default();
        if t.events != p.events {
            report.problem(format!(
                "portal {}: record says {} events, found {}",
                p.member_id, p.events, t.events
            ));
        }
        if t.duplicates != p.duplicates {
            report.problem(format!(
                "portal {}: record says {} duplicates, events count {}",
                p.member_id, p.duplicates, t.duplicates
            ));
        }
        if t.max_seq > p.last_seq() {
            report.problem(format!(
                "portal {}: events up to seq {} but next seq is {}",
                p.member_id, t.max_seq, p.next_seq
            ));
        }
    }
    Ok(report)
}

/// Opens a stopped data directory for an offline change.
fn open_offline(data_dir: &Path) -> Result<(Store, Directory), MaintainError> {
    read_format(data_dir)?;
    let store = Store::open(&data_dir.join(ENGINE_DIR), MAINTENANCE_CACHE).map_err(|source| {
        OpenError::Store {
            dir: data_dir.to_owned(),
            source,
        }
    })?;
    let dir = Directory::from_records(store.reader().portals()?, store.reader().registrations()?)?;
    Ok((store, dir))
}

/// The registrations of a stopped data directory.
pub fn list_registrations(data_dir: &Path) -> Result<Vec<Registration>, MaintainError> {
    let (_, dir) = open_offline(data_dir)?;
    let mut regs: Vec<Registration> = dir.registrations().cloned().collect();
    regs.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    Ok(regs)
}

/// Writes (adds or replaces) a registration in a stopped data directory.
pub fn put_registration(data_dir: &Path, reg: Registration) -> Result<(), MaintainError> {
    let (mut store, _) = open_offline(data_dir)?;
    let mut batch = WriteBatch::default();
    batch.put_registration(&reg);
    store.commit(batch).map_err(commit_error)?;
    Ok(())
}

/// Removes a registration from a stopped data directory; `false` if there
/// was none.
pub fn remove_registration(data_dir: &Path, member_id: &str) -> Result<bool, MaintainError> {
    let (mut store, dir) = open_offline(data_dir)?;
    if dir.registration(member_id).is_none() {
        return Ok(false);
    }
    let mut batch = WriteBatch::default();
    batch.remove_registration(member_id);
    store.commit(batch).map_err(commit_error)?;
    Ok(true)
}

fn commit_error(e: super::store::CommitError) -> MaintainError {
    match e {
        super::store::CommitError::NotApplied(e) | super::store::CommitError::NotDurable(e) => {
            MaintainError::Store(e)
        }
    }
}
