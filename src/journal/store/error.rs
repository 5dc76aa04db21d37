//! The store's errors: what a read, a write or an open can fail with, and
//! how far a failed commit got.

use super::codec::CodecError;

/// A storage failure. Never the client's fault: answered 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine reported an error.
    #[error("storage engine: {0}")]
    Engine(String),
    /// A file operation failed.
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Stored bytes did not decode.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A stored block or chunk did not decode.
    #[error("corrupt record: {0}")]
    Codec(#[from] CodecError),
    /// The engine is being reopened after an I/O failure.
    #[error("storage is being reopened after an I/O error")]
    Reopening,
    /// Too little free disk space to take a write safely; nothing was
    /// written.
    #[error("disk nearly full: {free} bytes free, writes need at least {needed}")]
    DiskFull {
        /// Bytes free.
        free: u64,
        /// Bytes a write needs free.
        needed: u64,
    },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StoreError::Io(io),
            other => StoreError::Engine(other.to_string()),
        }
    }
}

/// How far a failed commit got.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Nothing of the batch was applied.
    #[error("batch not applied: {0}")]
    NotApplied(StoreError),
    /// The batch is applied (readable, will reach disk with a later flush) but
    /// is not known to be on disk: it must not be acknowledged.
    #[error("batch applied but not durable: {0}")]
    NotDurable(StoreError),
}
