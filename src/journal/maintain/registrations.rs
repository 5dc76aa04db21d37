//! Offline portal registrations: list, add or replace, remove, in a
//! stopped data directory.

use std::path::Path;

use super::error::MaintainError;
use super::offline::open_offline;
use crate::journal::registration::Registration;
use crate::journal::store::WriteBatch;

/// The registrations of a stopped data directory.
pub fn list_registrations(data_dir: &Path) -> Result<Vec<Registration>, MaintainError> {
    let (_, dir) = open_offline(data_dir)?;
    let mut regs: Vec<Registration> = dir.registrations().cloned().collect();
    regs.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    Ok(regs)
}

/// The offline pull states of a stopped data directory (tokens sealed).
pub fn list_pull_states(
    data_dir: &Path,
) -> Result<Vec<crate::journal::pull_state::PullState>, MaintainError> {
    let (store, _) = open_offline(data_dir)?;
    let mut states = store.reader().pull_states()?;
    states.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    Ok(states)
}

/// Writes (adds or replaces) a registration in a stopped data directory.
pub fn put_registration(data_dir: &Path, reg: Registration) -> Result<(), MaintainError> {
    let (mut store, _) = open_offline(data_dir)?;
    let mut batch = WriteBatch::default();
    batch.put_registration(&reg);
    store.commit(batch)?;
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
    store.commit(batch)?;
    Ok(true)
}
