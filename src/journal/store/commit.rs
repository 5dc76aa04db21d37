//! Commits: making a batch durable (through the redo log, or by flushing
//! sled for inline commits) and the background checkpoints that let the
//! redo log go.

use std::sync::Arc;

use super::batch::WriteBatch;
use super::engine::{apply_in_order, Flusher, Store};
use super::error::{CommitError, StoreError};
use super::log::CheckpointCause;

/// Free space below which a commit is refused before sled sees it. sled
/// 0.34.7 handles running out of space mid-write badly: part of a batch can
/// stay linked in memory, a leaf it filled then needs a split that every
/// later *read* retries and fails, and the engine keeps the error until it
/// is reopened. Refusing early keeps reads working and lets writes resume
/// by themselves once space is back. Several sled segments (512 KiB) plus
/// the largest batch fit in this margin.
const WRITE_MIN_FREE: u64 = 8 * 1024 * 1024;

impl Store {
    /// Applies `batch` atomically without logging it (bulk copies into a
    /// new store, which end with [`Store::sync`]).
    pub fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        Ok(self.engine()?.tree.apply_batch(batch.into_sled(None))?)
    }

    /// Applies `batch` atomically and makes it and everything before it
    /// durable in sled's own files (inline commits: erase, retention,
    /// maintenance). Only after `Ok` may it be acknowledged.
    pub fn commit(&mut self, batch: WriteBatch) -> Result<(), CommitError> {
        self.check_space().map_err(CommitError::NotApplied)?;
        let lsn = self.next_lsn;
        let keys = batch.writes.len() as u64 + 1;
        self.engine()
            .map_err(CommitError::NotApplied)?
            .tree
            .apply_batch(batch.into_sled(Some(lsn)))
            .map_err(|e| CommitError::NotDurable(e.into()))?;
        crate::metrics::metrics().store_writes.inc_by(keys);
        self.next_lsn += 1;
        self.sync().map_err(CommitError::NotDurable)
    }

    /// Commits a group of events: the batch's record is written to the redo
    /// log and fdatasynced *first*, then its writes are applied to sled one
    /// by one. sled writes its log buffers to disk whenever they fill, so a
    /// write applied before its record was durable could outlive a crash
    /// that the record did not; logged first, every write sled holds is
    /// replayable. One by one instead of one atomic sled batch because an
    /// atomic batch makes sled wait for the device twice; the log record
    /// already makes the batch atomic across a crash. Inserts go first, then removes, then
    /// the LSN: a reader sees an event sealed into its block before it
    /// leaves the tail.
    ///
    /// Refused (nothing written) when the disk is nearly full. After `Ok`
    /// the batch may be acknowledged.
    pub fn commit_logged(&mut self, batch: WriteBatch) -> Result<(), CommitError> {
        self.check_space().map_err(CommitError::NotApplied)?;
        let tree = self.engine().map_err(CommitError::NotApplied)?.tree.clone();
        let lsn = self.next_lsn;
        let record = batch.encode();
        self.logged_since_open += record.len() as u64;
        self.wal.append(lsn, &record);
        // From here the record may be on disk: a failure means "maybe
        // durable", and the engine is reopened (which replays the log).
        self.wal
            .sync()
            .map_err(|e| CommitError::NotDurable(e.into()))?;
        self.next_lsn += 1;
        // The batch's keys and its LSN.
        let keys = batch.writes.len() as u64 + 1;
        apply_in_order(&tree, batch.writes, lsn).map_err(CommitError::NotDurable)?;
        crate::metrics::metrics().store_writes.inc_by(keys);
        self.maybe_checkpoint();
        Ok(())
    }

    /// Refuses a write when the disk is nearly full (see
    /// [`WRITE_MIN_FREE`]).
    fn check_space(&self) -> Result<(), StoreError> {
        let free = fs4::available_space(&self.dir)?;
        if free < WRITE_MIN_FREE {
            return Err(StoreError::DiskFull {
                free,
                needed: WRITE_MIN_FREE,
            });
        }
        Ok(())
    }

    /// When the log's segment is full, starts a checkpoint in the
    /// background: it flushes sled, then drops the older segments. Every
    /// record logged so far is applied by now, as the checkpoint requires.
    fn maybe_checkpoint(&self) {
        let Ok(engine) = self.engine() else { return };
        let below = match self.wal.begin_checkpoint() {
            Ok(Some(below)) => below,
            Ok(None) => return,
            Err(e) => {
                // The log stays in its segment; the next commit tries again.
                tracing::warn!(error = %e, "could not start a journal checkpoint");
                return;
            }
        };
        let flusher = Flusher::new(engine, &self.dir, &self.synced_blobs);
        let wal = Arc::clone(&self.wal);
        let spawned = std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || {
                let flushed = flusher
                    .flush()
                    .map_err(|e| -> CheckpointCause { Arc::new(e) });
                drop(flusher);
                if flushed.is_ok() {
                    wal.prepare(below + 1);
                }
                wal.finish_checkpoint(below, flushed);
            });
        if let Err(e) = spawned {
            self.wal.finish_checkpoint(below, Err(Arc::new(e)));
        }
    }

    /// Flushes and fsyncs everything applied so far into sled's own files
    /// (so the redo log is no longer needed), then starts a new log
    /// segment. Waits for a background checkpoint first: sled must not be
    /// flushed from two threads.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.flush_engine()?;
        self.wal.reset()?;
        Ok(())
    }

    /// Waits for a running checkpoint (one sled flusher at a time), then
    /// flushes sled and fsyncs its files.
    pub(super) fn flush_engine(&self) -> Result<(), StoreError> {
        self.wal.wait_idle();
        Flusher::new(self.engine()?, &self.dir, &self.synced_blobs).flush()
    }
}
