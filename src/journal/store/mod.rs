//! The storage engine boundary: the only module that names sled.
//!
//! The rest of the journal sees a small API: a [`Store`] that commits
//! [`WriteBatch`]es, a cloneable [`Reader`], and the errors. The parts are
//! private files:
//!
//! - `keys.rs`: the key layout (one-byte prefixes; the table is there);
//! - `batch.rs`: [`WriteBatch`], the writes of one commit;
//! - `engine.rs`: the sled database: open, redo-log replay, flush, reopen;
//! - `commit.rs`: durable commits and background checkpoints;
//! - `log.rs`: the redo log that makes a group commit durable;
//! - `memtable.rs`: the writes kept in memory and the log instead of sled
//!   (the unsealed tails; the portal counters until a checkpoint);
//! - `reader.rs` and `scan.rs`: lookups and scans;
//! - `mirror.rs`: the sealed blocks and postings items copied into a flat
//!   file, so that a cold read of one is one `pread` instead of a sled leaf;
//! - `stream_pos.rs`: cluster mode's last applied stream sequence;
//! - `rollups.rs`: the activity rollup records' keys;
//! - [`codec`]: how events are packed into blocks and the entity index
//!   into postings runs (pure bytes).
//!
//! Everything lives in one sled tree, because `apply_batch` is atomic
//! within one tree only: an event, its index entries, its dedup key and its
//! portal's counters then land in one atomic batch, with no crash window
//! between them and without sled transactions (which take a
//! process-global lock and may re-run).
//!
//! A group commit is made durable by the redo log (in `wal/` beside sled's
//! files), not by flushing sled; the unsealed tails never reach sled at
//! all, so the log keeps them (see `log.rs`). sled is flushed at checkpoints and by
//! [`Store::sync`]; its `flush()` uses `sync_file_range` on Linux, which is
//! not a full fsync, and it writes large values to `blobs/` without syncing
//! them, so every flush here is followed by `sync_all` on sled's log file
//! and on any new blob file.

mod batch;
pub mod codec;
mod commit;
mod engine;
mod error;
mod keys;
mod log;
mod memtable;
mod mirror;
mod reader;
mod rollups;
mod scan;
mod stream_pos;

pub use batch::WriteBatch;
pub use engine::{engine_config, Store, SNAPSHOT_AFTER_LOGGED};
pub use error::{CommitError, StoreError};
pub use keys::{Key, KeyKind};
pub use reader::{LongRead, Reader};
pub use scan::SeqScan;

#[cfg(test)]
pub(crate) mod mirror_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
pub(crate) mod tests;
