//! Offline migration of an older data directory (version 1 to 4) to the
//! current format: every event is copied through the current layout code
//! into a new engine, as a backup copies a running journal, and the span
//! summaries are worked out again from the events copied.

use std::path::{Path, PathBuf};

use super::backup::copy_portal;
use super::error::MaintainError;
use super::offline::{open_store, sync_dir};
use crate::journal::format::{
    raw_format_version, read_format, write_format, ENGINE_DIR, FORMAT_VERSION,
};
use crate::journal::record::PortalRecord;
use crate::journal::store::codec::sealed_upto;
use crate::journal::store::{Reader, StoreError, WriteBatch};

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

/// A portal's events in seq order, as migration reads them.
type Events<'r> = Box<dyn Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + 'r>;

/// The events of `portal` as an older version stored them, oldest first:
/// version 1 as one item per event; versions 2 and 3 in sealed blocks and
/// an unsealed tail of one sled item per event; version 4 as this one does
/// (blocks, and the tail in the redo log), only with longer summary spans.
fn old_events<'r>(
    from: u32,
    reader: &'r Reader,
    portal: &PortalRecord,
) -> Result<Events<'r>, StoreError> {
    let (first, last) = (portal.first_seq(), portal.last_seq());
    match from {
        1 => return Ok(Box::new(reader.v1_events(portal.ix))),
        4 => return Ok(Box::new(reader.events(portal.ix, first, last))),
        _ => {}
    }
    let sealed = sealed_upto(last);
    // The blocks alone: the memtable of a store of these versions is empty.
    let blocks = reader.events(portal.ix, first, sealed);
    let tail = reader
        .v3_tail(portal.ix)?
        .into_iter()
        .filter(move |(seq, _)| *seq > sealed && *seq >= first && *seq <= last)
        .map(Ok);
    Ok(Box::new(blocks.chain(tail)))
}

/// Converts a stopped data directory of version 1 to 4 to the current
/// version, in place. The new layout is written into a side directory
/// first; the format file, rewritten last (fsynced rename), is the commit
/// point. A crash at any step leaves the old version readable and
/// `migrate` can run again. Blocking.
pub fn migrate(data_dir: &Path) -> Result<MigrateReport, MaintainError> {
    let from = raw_format_version(data_dir)?;
    let engine = data_dir.join(ENGINE_DIR);
    let old = data_dir.join(format!("{ENGINE_DIR}.v{from}"));
    let building = data_dir.join(format!("{ENGINE_DIR}.migrating"));
    let mut report = MigrateReport {
        data_dir: data_dir.to_owned(),
        from,
        to: FORMAT_VERSION,
        portals: 0,
        events: 0,
        old_files: None,
    };
    if from == FORMAT_VERSION {
        return Ok(report);
    }
    if !(1..FORMAT_VERSION).contains(&from) {
        read_format(data_dir)?;
        return Err(MaintainError::Target(format!(
            "cannot migrate format version {from}"
        )));
    }
    let io = |e: std::io::Error| MaintainError::Store(StoreError::Io(e));
    // An earlier run that got as far as moving the old engine aside left
    // the old files there; anything in `sled` is then its output.
    if old.exists() {
        if engine.exists() {
            std::fs::remove_dir_all(&engine).map_err(io)?;
        }
    } else {
        // Opening takes the engine's lock on the files: a running service makes
        // this fail before anything is moved.
        open_store(&engine, data_dir)?.close()?;
        std::fs::rename(&engine, &old).map_err(io)?;
        sync_dir(data_dir).map_err(io)?;
    }
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(io)?;
    }
    {
        let src = open_store(&old, data_dir)?;
        let reader = src.reader();
        let records = reader.portals()?;
        let registrations = reader.registrations()?;
        let mut out = open_store(&building, data_dir)?;
        let mut batch = WriteBatch::default();
        for portal in &records {
            let copied = copy_portal(
                &mut out,
                &mut batch,
                portal,
                old_events(from, reader, portal)?,
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
        out.commit(batch)?;
        out.close()?;
        src.close()?;
    }
    std::fs::rename(&building, &engine).map_err(io)?;
    sync_dir(data_dir).map_err(io)?;
    write_format(data_dir).map_err(io)?;
    report.old_files = Some(old);
    Ok(report)
}
