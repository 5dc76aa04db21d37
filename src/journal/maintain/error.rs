//! [`MaintainError`]: why a maintenance command failed.

use crate::journal::format::OpenError;
use crate::journal::store::{CommitError, StoreError};

/// Why a maintenance command failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    /// The target is not usable as given (e.g. a relative path).
    #[error("{0}")]
    Target(String),
    /// The target already holds something.
    #[error("{0}")]
    TargetExists(String),
    /// The configured backup directory cannot be used.
    #[error("{0}")]
    BackupRoot(String),
    /// The data directory did not open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

impl From<CommitError> for MaintainError {
    /// The storage error behind a failed commit: a maintenance command
    /// reports it the same way however far the commit got.
    fn from(e: CommitError) -> Self {
        MaintainError::Store(e.into())
    }
}
