//! Opening a data directory's store for maintenance, and the file-system
//! step the jobs share.

use std::path::Path;

use super::error::MaintainError;
use crate::journal::format::{read_format, OpenError, ENGINE_DIR};
use crate::journal::store::Store;
use crate::journal::PortalDirectory;

/// Engine page cache for maintenance opens: they stream, caching buys
/// nothing.
const MAINTENANCE_CACHE: u64 = 32 * 1024 * 1024;

/// Opens the store in `engine` (the engine directory of `data_dir`, or a
/// side directory beside it) for maintenance: with a redo log that grows
/// as it is written, so that nothing it leaves behind is padding.
pub(super) fn open_store(engine: &Path, data_dir: &Path) -> Result<Store, OpenError> {
    Store::open_for_maintenance(engine, MAINTENANCE_CACHE).map_err(|source| OpenError::Store {
        dir: data_dir.to_owned(),
        source,
    })
}

/// Opens a stopped data directory for an offline change: its format
/// checked (a version-2 directory is upgraded in place), its store and
/// its portals.
pub(super) fn open_offline(data_dir: &Path) -> Result<(Store, PortalDirectory), MaintainError> {
    read_format(data_dir)?;
    let store = open_store(&data_dir.join(ENGINE_DIR), data_dir)?;
    let dir =
        PortalDirectory::from_records(store.reader().portals()?, store.reader().registrations()?)?;
    Ok((store, dir))
}

/// fsyncs a directory, making renames and new entries in it durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
