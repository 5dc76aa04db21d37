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

use super::pack;
use super::record::{
    block_of, dedup_key_of_record, EventRecord, PortalIx, PortalRecord, Registration,
};
use super::store::{KeyKind, Store, StoreError, WriteBatch};
use super::{check_format, read_format, Directory, JournalHandle, OpenError, ENGINE_DIR};

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
        let (first, last) = (portal.first_seq(), portal.last_seq());
        let mut copy = portal.clone();
        copy.duplicates = 0;
        copy.events = 0;
        // Events are copied through the same layout code as the writer's,
        // one block at a time; applying each step lets the next one read
        // the entity chunks it extends.
        let mut laid = first.saturating_sub(1);
        let mut fresh = BTreeMap::new();
        let mut events = reader.events(portal.ix, first, last).peekable();
        while let Some(item) = events.next() {
            let (seq, bytes) = item?;
            let (rec, dups) =
                EventRecord::from_bytes(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            copy.duplicates += u64::from(dups);
            copy.events += 1;
            stats.events += 1;
            if rec.entity_id.is_none() {
                if let Some(key) = dedup_key_of_record(&rec, portal) {
                    batch.put_dedup(portal.ix, &key, seq);
                }
            }
            fresh.insert(seq, bytes);
            let block_full = seq % pack::BLOCK_SPAN == 0;
            if block_full || events.peek().is_none() {
                // `copy` as it stands after this step: seqs up to `seq`.
                let step = PortalRecord {
                    next_seq: seq + 1,
                    events: copy.events,
                    ..copy.clone()
                };
                out.apply(std::mem::take(&mut batch))?;
                pack::lay_out(
                    &mut batch,
                    out.reader(),
                    &step,
                    laid,
                    std::mem::take(&mut fresh),
                )?;
                laid = seq;
            }
        }
        for item in reader.summaries_desc(portal.ix, block_of(last)) {
            batch.put_summary(portal.ix, &item?);
        }
        // The next seq stays as it was, so seqs are never reused.
        copy.next_seq = portal.next_seq;
        out.apply(std::mem::take(&mut batch))?;
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

    // Sealed entity events and the index entries for them, per portal:
    // every entry is checked against its event below, so equal counts mean
    // every sealed entity event is indexed exactly once.
    let mut sealed_entity_events: HashMap<PortalIx, u64> = HashMap::new();
    let mut index_entries: HashMap<PortalIx, u64> = HashMap::new();
    let mut prev_chunk: Option<(PortalIx, String, u64)> = None;
    for item in reader.all_keys() {
        let (_, kind, value) = item?;
        match kind {
            KeyKind::Tail { portal: ix, seq } => {
                let Some(p) = portal(ix) else {
                    report.problem(format!("event {ix}/{seq} of a portal without a record"));
                    continue;
                };
                if seq <= pack::sealed_upto(p.last_seq()) || seq < p.first_seq() {
                    report.problem(format!("tail event {ix}/{seq} outside the portal's tail"));
                }
                check_event(&mut report, &mut tallies, reader, p, seq, &value, None)?;
            }
            KeyKind::Block { portal: ix, block } => {
                let Some(p) = portal(ix) else {
                    report.problem(format!("block {ix}/{block} of a portal without a record"));
                    continue;
                };
                let first = pack::event_block_first(block);
                if first + pack::BLOCK_SPAN - 1 > pack::sealed_upto(p.last_seq()) {
                    report.problem(format!("block {ix}/{block} is past the portal's last seq"));
                }
                let entries = match pack::decode_block(&value) {
                    Ok(e) => e,
                    Err(e) => {
                        report.problem(format!("block {ix}/{block}: {e}"));
                        continue;
                    }
                };
                for (seq, bytes) in (first..).zip(entries) {
                    if seq < p.first_seq() {
                        continue;
                    }
                    if bytes.is_empty() {
                        report.problem(format!("event {ix}/{seq} missing from its block"));
                        continue;
                    }
                    let sealed = sealed_entity_events.entry(ix).or_default();
                    check_event(
                        &mut report,
                        &mut tallies,
                        reader,
                        p,
                        seq,
                        bytes,
                        Some(sealed),
                    )?;
                }
            }
            KeyKind::Chunk {
                portal: ix,
                entity,
                first,
            } => {
                let Some(p) = portal(ix) else {
                    report.problem(format!("entity chunk of a portal without a record: {ix}"));
                    continue;
                };
                let entries = match pack::decode_chunk(first, &value) {
                    Ok(e) => e,
                    Err(e) => {
                        report.problem(format!("entity chunk {ix}/{entity}/{first}: {e}"));
                        continue;
                    }
                };
                if let Some((pix, pentity, pmax)) = &prev_chunk {
                    if *pix == ix && *pentity == entity && first <= *pmax {
                        report.problem(format!("entity chunks of {ix}/{entity} overlap"));
                    }
                }
                if let Some(last) = entries.last() {
                    prev_chunk = Some((ix, entity.clone(), last.seq));
                }
                for e in entries.iter().filter(|e| e.seq >= p.first_seq()) {
                    report.entity_entries += 1;
                    *index_entries.entry(ix).or_default() += 1;
                    let matches = match reader.event(ix, e.seq)? {
                        Some(bytes) if e.seq <= pack::sealed_upto(p.last_seq()) => {
                            match EventRecord::from_bytes(&bytes) {
                                Ok((rec, _)) => {
                                    rec.entity_id.as_deref() == Some(entity.as_str())
                                        && rec.ts == e.ts
                                        && pack::name_tag(rec.event_name(p)) == e.tag
                                }
                                Err(_) => false,
                            }
                        }
                        _ => false,
                    };
                    if !matches {
                        report.problem(format!(
                            "entity index {ix}/{entity}/{} does not match a sealed event",
                            e.seq
                        ));
                    }
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
    for p in dir.portals() {
        let sealed = sealed_entity_events.get(&p.ix).copied().unwrap_or(0);
        let indexed = index_entries.get(&p.ix).copied().unwrap_or(0);
        if sealed != indexed {
            report.problem(format!(
                "portal {}: {sealed} sealed entity events but {indexed} index entries",
                p.member_id
            ));
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

/// Checks one stored event and counts it; `sealed` counts sealed events
/// with an entity id (they must be in the entity index).
fn check_event(
    report: &mut VerifyReport,
    tallies: &mut HashMap<PortalIx, PortalTally>,
    reader: &super::store::Reader,
    p: &PortalRecord,
    seq: u64,
    bytes: &[u8],
    sealed: Option<&mut u64>,
) -> Result<(), StoreError> {
    let ix = p.ix;
    report.events += 1;
    let (rec, dups) = match EventRecord::from_bytes(bytes) {
        Ok(r) => r,
        Err(e) => {
            report.problem(format!("event {ix}/{seq} does not decode: {e}"));
            return Ok(());
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
    if rec.entity_id.is_some() {
        if let Some(n) = sealed {
            *n += 1;
        }
        return Ok(());
    }
    match dedup_key_of_record(&rec, p) {
        Some(key) => match reader.dedup(ix, &key)? {
            Some(s) if s == seq => {}
            Some(s) => report.problem(format!("dedup key of event {ix}/{seq} points to seq {s}")),
            None => report.problem(format!("event {ix}/{seq} has no dedup key")),
        },
        None => report.problem(format!("event {ix}/{seq}: stored fields invalid")),
    }
    Ok(())
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
