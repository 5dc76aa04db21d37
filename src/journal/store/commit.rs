//! Commits: making a batch durable (through the redo log, and for inline
//! commits by flushing sled too) and the background checkpoints that let
//! the redo log go.

use std::sync::Arc;

use super::batch::WriteBatch;
use super::engine::{apply_in_order, Flusher, Store};
use super::error::{CommitError, StoreError};
use super::keys::tier;
use super::log::{CheckpointCause, Tier};
use super::mirror;

/// Free space below which a commit is refused before sled sees it. sled
/// 0.34.7 handles running out of space mid-write badly: part of a batch can
/// stay linked in memory, a leaf it filled then needs a split that every
/// later *read* retries and fails, and the engine keeps the error until it
/// is reopened. Refusing early keeps reads working and lets writes resume
/// by themselves once space is back. Several sled segments (512 KiB) plus
/// the largest batch fit in this margin.
const WRITE_MIN_FREE: u64 = 8 * 1024 * 1024;

impl Store {
    /// Applies `batch` without logging it (bulk copies into a new store,
    /// which end with [`Store::close`]): its engine writes as one atomic
    /// sled batch, the rest into the memtable.
    pub fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        let tree = self.engine()?.tree.clone();
        let mut engine = sled::Batch::default();
        for (k, v) in &batch.writes {
            match (tier(k), v) {
                (Tier::Engine, Some(v)) => engine.insert(k.as_slice(), v.as_slice()),
                (Tier::Engine, None) => engine.remove(k.as_slice()),
                (t, v) => self.memtable.apply(t, k, v.as_deref()),
            }
        }
        tree.apply_batch(engine)?;
        self.write_through(&batch);
        Ok(())
    }

    /// Writes `batch`'s blocks and postings items through to the read
    /// mirror, if the store keeps one, once sled holds them (see
    /// `mirror.rs`).
    fn write_through(&self, batch: &WriteBatch) {
        if let Some(m) = &self.reader().mirror {
            let values: Vec<_> = batch
                .writes
                .iter()
                .filter(|(k, _)| mirror::mirrored(k))
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            m.apply(self.reader(), &values);
        }
    }

    /// Commits `batch` through the redo log and then makes it and
    /// everything before it durable in sled's own files (inline commits:
    /// erase, retention, maintenance). Only after `Ok` may it be
    /// acknowledged.
    pub fn commit(&mut self, batch: WriteBatch) -> Result<(), CommitError> {
        self.commit_logged(batch, || {})?;
        self.sync().map_err(CommitError::NotDurable)
    }

    /// Commits a group of events: the batch's record is written to the redo
    /// log and fdatasynced *first*, then its writes are applied to sled one
    /// by one. sled writes its log buffers to disk whenever they fill, so a
    /// write applied before its record was durable could outlive a crash
    /// that the record did not; logged first, every write sled holds is
    /// replayable. One by one instead of one atomic sled batch because an
    /// atomic batch makes sled wait for the device twice; the log record
    /// already makes the batch atomic across a crash.
    ///
    /// The order of the writes is what lets readers, which never lock
    /// against the writer, see each event somewhere at every moment: new
    /// log-only writes (tail events) first; then sled's inserts (a sealed
    /// block), removes, and the LSN; then the deferred writes; then
    /// `before_drops` (the caller shows readers what the batch indexed);
    /// and only then the log-only removes (the tail events just sealed).
    ///
    /// Refused (nothing written) when the disk is nearly full. After `Ok`
    /// the batch may be acknowledged.
    pub fn commit_logged(
        &mut self,
        batch: WriteBatch,
        before_drops: impl FnOnce(),
    ) -> Result<(), CommitError> {
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
        let mut engine = Vec::new();
        let mut deferred = Vec::new();
        let (mut kept, mut dropped) = (Vec::new(), Vec::new());
        for (k, v) in &batch.writes {
            match (tier(k), v) {
                (Tier::Engine, _) => engine.push((k.as_slice(), v.as_deref())),
                (Tier::Deferred, _) => deferred.push((k.as_slice(), v.as_deref())),
                (Tier::LogOnly, Some(v)) => kept.push((k.as_slice(), Some(v.as_slice()))),
                (Tier::LogOnly, None) => dropped.push((k.as_slice(), None)),
            }
        }
        self.memtable.apply_log_only(kept);
        // The engine's keys and its LSN, if any.
        let keys = engine.len() as u64 + u64::from(!engine.is_empty());
        apply_in_order(&tree, engine, lsn).map_err(CommitError::NotDurable)?;
        crate::metrics::metrics().store_writes.inc_by(keys);
        // Before readers are shown the batch (`before_drops`), as sled.
        self.write_through(&batch);
        for (k, v) in deferred {
            self.memtable.apply(Tier::Deferred, k, v);
        }
        before_drops();
        self.memtable.apply_log_only(dropped);
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

    /// When the log's segment is full, starts a checkpoint: the deferred
    /// writes go to sled here, a new segment starts with the snapshot of
    /// the log-only writes, and a background thread flushes sled and then
    /// drops the older segments. Every record logged so far is applied by
    /// now, as the checkpoint requires.
    fn maybe_checkpoint(&self) {
        let Ok(engine) = self.engine() else { return };
        if !self.wal.checkpoint_due() {
            return;
        }
        if let Err(e) = engine.settle(&self.memtable, self.next_lsn - 1) {
            // The log keeps everything; the next commit tries again.
            tracing::warn!(error = %e, "could not start a journal checkpoint");
            return;
        }
        let below = match self
            .wal
            .begin_checkpoint(&self.memtable.snapshot(), self.next_lsn - 1)
        {
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

    /// Flushes and fsyncs everything applied so far into sled's own files,
    /// the deferred writes included (so the redo log is no longer needed
    /// but for the log-only writes), then starts a new log segment with
    /// their snapshot. Waits for a background checkpoint first: sled must
    /// not be flushed from two threads.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.flush_engine()?;
        self.wal
            .reset(&self.memtable.snapshot(), self.next_lsn - 1)?;
        Ok(())
    }

    /// Waits for a running checkpoint (one sled flusher at a time), then
    /// writes the deferred writes to sled, flushes it and fsyncs its files.
    pub(super) fn flush_engine(&self) -> Result<(), StoreError> {
        self.wal.wait_idle();
        let engine = self.engine()?;
        engine.settle(&self.memtable, self.next_lsn - 1)?;
        Flusher::new(engine, &self.dir, &self.synced_blobs).flush()
    }
}
