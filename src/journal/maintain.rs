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

use super::dedup::key::dedup_key_of_record;
use super::pack;
use super::record::{span_of, EventRecord, PortalIx, PortalRecord};
use super::registration::Registration;
use super::store::{KeyKind, Store, StoreError, WriteBatch};
use super::{check_format, read_format, JournalHandle, OpenError, PortalDirectory, ENGINE_DIR};

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
    // Keeps the writer from reopening the engine under the copy.
    let _long_read = reader.long_read();
    let mut batch = WriteBatch::default();
    let mut stats = BackupStats {
        portals: 0,
        events: 0,
    };
    for portal in &portals {
        let last = portal.last_seq();
        let events = reader.events(portal.ix, portal.first_seq(), last);
        let copied = copy_portal(&mut out, &mut batch, reader, portal, events)?;
        stats.events += copied;
        stats.portals += usize::from(!portal.member_id.is_empty());
    }
    for reg in &registrations {
        batch.put_registration(reg);
    }
    out.commit(batch).map_err(|e| match e {
        super::store::CommitError::NotApplied(e) | super::store::CommitError::NotDurable(e) => e,
    })?;
    out.close()?;
    Ok(stats)
}

/// Writes `portal` and its `events` (oldest first, none above its last
/// seq) into `out` through the writer's layout code, one block at a time
/// (applying each step lets the next read the entity chunks it extends),
/// with its summaries from `source`. Counters are recomputed from what was
/// copied; the next seq stays, so seqs are never reused. Returns the number
/// of events copied.
fn copy_portal(
    out: &mut Store,
    batch: &mut WriteBatch,
    source: &super::store::Reader,
    portal: &PortalRecord,
    events: impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>>,
) -> Result<u64, MaintainError> {
    let last = portal.last_seq();
    let mut copy = portal.clone();
    copy.duplicates = 0;
    copy.events = 0;
    let mut laid = None;
    let mut fresh = BTreeMap::new();
    let mut events = events.peekable();
    while let Some(item) = events.next() {
        let (seq, bytes) = item?;
        if seq > last {
            break;
        }
        let (rec, dups) =
            EventRecord::from_bytes(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        copy.duplicates += u64::from(dups);
        copy.events += 1;
        if rec.entity_id.is_none() {
            if let Some(key) = dedup_key_of_record(&rec, portal) {
                batch.put_dedup(portal.ix, &key, seq);
            }
        }
        let prev = *laid.get_or_insert(seq - 1);
        fresh.insert(seq, bytes);
        let step_done = seq % pack::BLOCK_SPAN == 0
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
            pack::lay_out(batch, out.reader(), &step, prev, std::mem::take(&mut fresh))?;
            laid = Some(seq);
        }
    }
    for item in source.summaries_desc(portal.ix, span_of(last)) {
        let summary = item?;
        // The open span's summary lives in the portal record.
        if portal.summary.is_none_or(|open| open.span != summary.span) {
            batch.put_summary(portal.ix, &summary);
        }
    }
    out.apply(std::mem::take(batch))?;
    batch.put_portal(&copy);
    Ok(copy.events)
}

/// What `migrate` did.
#[derive(Debug, serde::Serialize)]
pub struct MigrateReport {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Version found.
    pub from: u32,
    /// Version written.
    pub to: u32,
    /// Portals converted (not counting erased ones).
    pub portals: usize,
    /// Events converted.
    pub events: u64,
    /// The old engine files, kept until the operator deletes them.
    pub old_files: Option<PathBuf>,
}

/// Converts a stopped version-1 data directory to the current version, in
/// place. The new layout is written into a side directory first; the
/// format file, rewritten last (fsynced rename), is the commit point. A
/// crash at any step leaves version 1 readable and `migrate` can run again.
/// Blocking.
pub fn migrate(data_dir: &Path) -> Result<MigrateReport, MaintainError> {
    let from = super::raw_format_version(data_dir)?;
    let engine = data_dir.join(ENGINE_DIR);
    let old = data_dir.join(format!("{ENGINE_DIR}.v1"));
    let building = data_dir.join(format!("{ENGINE_DIR}.migrating"));
    let mut report = MigrateReport {
        data_dir: data_dir.to_owned(),
        from,
        to: super::FORMAT_VERSION,
        portals: 0,
        events: 0,
        old_files: None,
    };
    if from == super::FORMAT_VERSION {
        return Ok(report);
    }
    if from == super::UPGRADES_IN_PLACE_FROM {
        // Nothing to rebuild: rewriting the format file is the upgrade.
        check_format(data_dir)?;
        return Ok(report);
    }
    if from != 1 {
        read_format(data_dir)?;
        return Err(MaintainError::Target(format!(
            "cannot migrate format version {from}"
        )));
    }
    let io = |e: std::io::Error| MaintainError::Store(StoreError::Io(e));
    // An earlier run that got as far as moving the old engine aside left
    // the version-1 files there; anything in `sled` is then its output.
    if old.exists() {
        if engine.exists() {
            std::fs::remove_dir_all(&engine).map_err(io)?;
        }
    } else {
        // Opening takes sled's lock on the files: a running service makes
        // this fail before anything is moved.
        Store::open(&engine, MAINTENANCE_CACHE)
            .map_err(|source| OpenError::Store {
                dir: data_dir.to_owned(),
                source,
            })?
            .close()?;
        std::fs::rename(&engine, &old).map_err(io)?;
        sync_dir(data_dir).map_err(io)?;
    }
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(io)?;
    }
    {
        let src = Store::open(&old, MAINTENANCE_CACHE).map_err(|source| OpenError::Store {
            dir: data_dir.to_owned(),
            source,
        })?;
        let reader = src.reader();
        let records = reader.portals()?;
        let registrations = reader.registrations()?;
        let mut out =
            Store::open(&building, MAINTENANCE_CACHE).map_err(|source| OpenError::Store {
                dir: data_dir.to_owned(),
                source,
            })?;
        let mut batch = WriteBatch::default();
        for portal in &records {
            let copied = copy_portal(
                &mut out,
                &mut batch,
                reader,
                portal,
                reader.v1_events(portal.ix),
            )?;
            if copied != portal.events {
                return Err(MaintainError::Store(StoreError::Corrupt(format!(
                    "portal {}: record says {} events, {copied} found",
                    portal.member_id, portal.events
                ))));
            }
            report.events += copied;
            report.portals += usize::from(!portal.member_id.is_empty());
        }
        for reg in &registrations {
            batch.put_registration(reg);
        }
        out.commit(batch).map_err(commit_error)?;
        out.close()?;
        src.close()?;
    }
    std::fs::rename(&building, &engine).map_err(io)?;
    sync_dir(data_dir).map_err(io)?;
    super::write_format(data_dir).map_err(io)?;
    report.old_files = Some(old);
    Ok(report)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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
    let dir = match PortalDirectory::from_records(records.clone(), registrations.clone()) {
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
                    report.problem(format!("summary {ix}/{} has min > max", summary.span));
                }
                if portal(ix).is_none() {
                    report.problem(format!("summary of a portal without a record: {ix}"));
                }
            }
            KeyKind::Portal(_) | KeyKind::Registration | KeyKind::Health | KeyKind::Lsn => {}
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
fn open_offline(data_dir: &Path) -> Result<(Store, PortalDirectory), MaintainError> {
    read_format(data_dir)?;
    let store = Store::open(&data_dir.join(ENGINE_DIR), MAINTENANCE_CACHE).map_err(|source| {
        OpenError::Store {
            dir: data_dir.to_owned(),
            source,
        }
    })?;
    let dir =
        PortalDirectory::from_records(store.reader().portals()?, store.reader().registrations()?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::{Interned, PortalProfile, StoredData};
    use crate::types::MemberId;

    const EVENTS: u64 = 150;

    fn event(seq: u64, name: u32) -> EventRecord {
        let entity = (!seq.is_multiple_of(10)).then(|| (seq % 7).to_string());
        EventRecord {
            id: uuid::Uuid::now_v7().into_bytes(),
            ts: 1_700_000_000 + seq,
            event: Interned::At(name),
            data: match &entity {
                Some(_) => StoredData::FieldsId,
                None => StoredData::Json(format!("{{\"N\":{seq}}}").into_bytes()),
            },
            entity_id: entity,
            event_handler_id: None,
            profile: Interned::At(0),
            auth: Vec::new(),
        }
    }

    /// Writes a version-1 data directory: one portal, `EVENTS` events, a
    /// few with duplicates; returns the stored event bytes by seq.
    fn write_v1(data: &Path) -> Vec<Vec<u8>> {
        std::fs::write(
            data.join(super::super::FORMAT_FILE),
            "b24-journal data format 1\n",
        )
        .unwrap();
        let mut store = Store::open(&data.join(ENGINE_DIR), MAINTENANCE_CACHE).unwrap();
        let mut batch = WriteBatch::default();
        let mut p = PortalRecord::new(0, &MemberId::parse("m1").unwrap());
        p.profile_index(&PortalProfile {
            domain: "a.bitrix24.com".into(),
            client_endpoint: None,
            server_endpoint: None,
            fixed: Vec::new(),
        });
        let name = p.name_index("ONCRMACTIVITYADD").unwrap();
        let mut stored = Vec::new();
        for seq in 1..=EVENTS {
            let rec = event(seq, name);
            let dups = u32::from(seq % 40 == 5);
            let bytes = rec.to_bytes(dups);
            batch.put_v1_event(0, seq, bytes.clone());
            stored.push(bytes);
            p.next_seq += 1;
            p.events += 1;
            p.duplicates += u64::from(dups);
            if let Some(sealed) = p.summarise(seq, rec.ts) {
                batch.put_summary(0, &sealed);
            }
        }
        if let Some(s) = &p.summary {
            batch.put_summary(0, s);
        }
        batch.put_v1_portal(&p);
        store.commit(batch).unwrap();
        stored
    }

    #[test]
    fn migrate_converts_a_version_1_directory_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let stored = write_v1(data);
        assert!(matches!(
            check_format(data),
            Err(OpenError::NeedsMigration { found: 1, .. })
        ));

        let report = migrate(data).unwrap();
        assert_eq!((report.portals, report.events), (1, EVENTS));
        assert!(report.old_files.as_ref().unwrap().exists());
        let v = verify(data).unwrap();
        assert_eq!(v.problem_count, 0, "{:?}", v.problems);
        assert_eq!(v.events, EVENTS);

        let store = Store::open(&data.join(ENGINE_DIR), MAINTENANCE_CACHE).unwrap();
        let reader = store.reader();
        let events: Vec<(u64, Vec<u8>)> = reader
            .events(0, 1, EVENTS)
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<(u64, Vec<u8>)> = (1..).zip(stored).collect();
        assert_eq!(events, want, "every event, duplicates counters included");
        let three: Vec<u64> = reader
            .entity(0, "3", 1, EVENTS)
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<u64> = (1..=EVENTS)
            .filter(|s| !s.is_multiple_of(10) && s % 7 == 3)
            .collect();
        assert_eq!(three, want);
        let portal = &reader.portals().unwrap()[0];
        assert_eq!((portal.events, portal.duplicates), (EVENTS, 4));
        drop(store);

        // Already current: nothing to do.
        assert_eq!(migrate(data).unwrap().events, 0);
    }

    #[test]
    fn an_interrupted_migration_runs_again() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        write_v1(data);
        // As if a run had moved the old engine aside and crashed while
        // building: a stray half-built engine and side directory.
        std::fs::rename(data.join(ENGINE_DIR), data.join("sled.v1")).unwrap();
        std::fs::create_dir(data.join(ENGINE_DIR)).unwrap();
        std::fs::write(data.join(ENGINE_DIR).join("junk"), "x").unwrap();
        std::fs::create_dir(data.join("sled.migrating")).unwrap();
        let report = migrate(data).unwrap();
        assert_eq!(report.events, EVENTS);
        let v = verify(data).unwrap();
        assert_eq!(v.problem_count, 0, "{:?}", v.problems);
    }
}
