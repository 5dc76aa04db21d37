//! The store's errors: what a read, a write or an open can fail with, and
//! how far a failed commit got. Each keeps the error it came from as its
//! source.

use super::codec::CodecError;

/// A storage failure. Never the client's fault: answered 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine reported an error (other than I/O, which is [`Io`]).
    ///
    /// [`Io`]: StoreError::Io
    #[error("storage engine: {0}")]
    Engine(#[source] sled::Error),
    /// A file operation failed.
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Stored bytes break the layout's rules (a key too short, a seq out of
    /// place): there is no decoder error behind it.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The store holds a batch its redo log does not reach: the log lost
    /// its end, and with it unsealed events the store's counters count.
    #[error(
        "the redo log ends at batch {log} but the store holds batch {store}: the log lost \
         its end (a disk that dropped synced writes?) and events with it; do not start on \
         this directory. Restore it from a backup (cluster mode: rebuild this node from a \
         peer's backup, docs/cluster.md)"
    )]
    LogBehind {
        /// The last batch the store (sled) holds.
        store: u64,
        /// The last batch the redo log reaches.
        log: u64,
    },
    /// A stored record did not decode. The decoder's words are part of the
    /// text too, as the logs show only the text.
    #[error("corrupt record: {}{source}", context_prefix(.context))]
    Undecodable {
        /// What was being decoded (`event 3/17`); empty if only the
        /// decoder's error says.
        context: String,
        /// The decoder's error.
        #[source]
        source: postcard::Error,
    },
    /// A stored block or chunk did not decode.
    #[error("corrupt record: {0}")]
    Codec(#[from] CodecError),
    /// Another process holds the engine's files (a running service).
    #[error("{} is locked by another process (a running b24-journal?)", .0.display())]
    Locked(std::path::PathBuf),
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

impl StoreError {
    /// A stored record that did not decode, with what it was (for the
    /// text: `event 3/17: ...`).
    pub fn undecodable(context: impl Into<String>, source: postcard::Error) -> StoreError {
        StoreError::Undecodable {
            context: context.into(),
            source,
        }
    }
}

/// `context: `, or nothing for an empty context.
fn context_prefix(context: &str) -> String {
    if context.is_empty() {
        String::new()
    } else {
        format!("{context}: ")
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StoreError::Io(io),
            other => StoreError::Engine(other),
        }
    }
}

/// A record that did not decode, without more context than the decoder's
/// error: lets `?` and `map_err(StoreError::from)` stand for the
/// conversion everywhere a record is read.
impl From<postcard::Error> for StoreError {
    fn from(source: postcard::Error) -> Self {
        StoreError::undecodable(String::new(), source)
    }
}

/// How far a failed commit got.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Nothing of the batch was applied.
    #[error("batch not applied: {0}")]
    NotApplied(#[source] StoreError),
    /// The batch is applied (readable, will reach disk with a later flush) but
    /// is not known to be on disk: it must not be acknowledged.
    #[error("batch applied but not durable: {0}")]
    NotDurable(#[source] StoreError),
}

impl From<CommitError> for StoreError {
    /// The storage error behind a failed commit, however far it got.
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::NotApplied(e) | CommitError::NotDurable(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_keep_their_text_and_their_source() {
        let source = || postcard::Error::DeserializeUnexpectedEnd;
        let bare = StoreError::from(source());
        assert_eq!(bare.to_string(), format!("corrupt record: {}", source()));
        let named = StoreError::undecodable("event 3/17", source());
        assert_eq!(
            named.to_string(),
            format!("corrupt record: event 3/17: {}", source())
        );
        let inner = std::error::Error::source(&named).expect("a source");
        assert_eq!(inner.to_string(), source().to_string());
    }
}
