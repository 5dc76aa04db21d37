//! Maintenance: online backup (and where it may write), offline
//! verification and migration, and offline portal registrations. Each job
//! is one file; they share the way a
//! stopped data directory is opened (`offline.rs`) and the layout code the
//! writer uses, so a copy is laid out as the service would lay it out.

mod backup;
mod error;
mod migrate;
mod offline;
mod registrations;
mod rollups;
mod target;
mod verify;
mod verify_runs;

pub use backup::{backup, check_backup_target, BackupStats};
pub use error::MaintainError;
pub use migrate::{migrate, MigrateReport};
pub use registrations::{
    list_pull_states, list_registrations, put_registration, remove_registration,
};
pub use rollups::rebuild_rollups;
pub use target::backup_target;
pub use verify::{verify, VerifyReport, MAX_PROBLEMS};

#[cfg(test)]
mod tests;
