//! Offline migration of a version-1 data directory to the current format.

use std::path::{Path, PathBuf};

use super::backup::copy_portal;
use super::error::MaintainError;
use super::offline::{open_store, sync_dir};
use crate::journal::format::{
    check_format_upgrading, raw_format_version, read_format_upgrading, write_format, ENGINE_DIR,
    FORMAT_VERSION, UPGRADES_IN_PLACE_FROM,
};
use crate::journal::store::{StoreError, WriteBatch};

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
    let from = raw_format_version(data_dir)?;
    let engine = data_dir.join(ENGINE_DIR);
    let old = data_dir.join(format!("{ENGINE_DIR}.v1"));
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
    if from == UPGRADES_IN_PLACE_FROM {
        // Nothing to rebuild: rewriting the format file is the upgrade.
        check_format_upgrading(data_dir)?;
        return Ok(report);
    }
    if from != 1 {
        read_format_upgrading(data_dir)?;
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
