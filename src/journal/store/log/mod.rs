//! The redo log: what makes a group commit durable.
//!
//! Making a batch durable through sled would cost two waits per commit (its
//! `flush()` and the `fsync` that must follow it). Instead, every batch is
//! first appended here, as one checksummed record of the very writes it
//! makes, and is durable once that record is: one `write` and one
//! `fdatasync` of a file only we append to. Only then are its writes
//! applied to sled (see
//! [`Store::commit_logged`](super::Store::commit_logged) for why in that
//! order).
//!
//! sled is flushed in the background at a *checkpoint*, when the current
//! segment has grown past [`SEGMENT_MAX`]: new records go to a fresh
//! segment, sled is flushed and fsynced, and only then are the older
//! segments deleted. Opening the store replays every record sled may not
//! have (see [`Store::open`](super::Store::open)), then checkpoints,
//! so the log never holds more than a few segments.
//!
//! Records carry a log sequence number (LSN), and every batch writes its LSN
//! into sled after its other writes. After a crash sled holds a prefix of
//! the writes applied to it (sled recovers its own log up to the first
//! message that did not reach the disk: `clean_tail_tears` in sled's
//! `pagecache/iterator.rs`), so the LSN it holds names the last
//! whole batch; replay applies exactly the records after it — the first
//! one possibly over part of itself, which rewrites the same values — and
//! a batch is never applied on top of a later one.
//!
//! Not every write goes on to sled: a write's *tier* (decided by its key,
//! see `keys::tier`) says where it lives after the log. Engine writes are
//! applied to sled. Log-only writes (the unsealed tails) live in memory and
//! in the log only, so the log must always hold them: every new segment a
//! checkpoint (or an open, or a sync) starts begins with a *snapshot*
//! record that re-logs all of them. Deferred writes (the portal counters)
//! live in memory and in the log until the next checkpoint writes them to
//! sled. Opening the store therefore reads the log-only and deferred writes
//! of every record in the log, whatever sled holds.
//!
//! Record: `len u32 LE | crc32 u32 LE | lsn u64 LE | writes`, where `crc32`
//! covers `lsn` and `writes`, and `writes` is a run of
//! `tag | key len u32 LE | key | value len u32 LE | value` (an insert: tag
//! 1 engine, 3 log-only, 5 deferred) or `tag | key len u32 LE | key` (a
//! remove: tag 0 engine, 2 log-only, 4 deferred), or the one byte `6`: the
//! log-only state is cleared here (a snapshot record starts with it). A
//! snapshot record carries LSN 0: it applies nothing to sled. Version 3's
//! records are the tags 0 and 1 only.

mod record;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

#[cfg(test)]
pub use record::encode_clear_log_only;
#[cfg(test)]
use record::HEADER;
pub use record::{decode_ops, encode_insert, encode_remove, read, Op, Tier};
use record::{frame, segment_path, segments, write_snapshot};

/// The file naming the LSN that the log's current segment follows: every
/// batch up to it is in sled (flushed) or in an older segment still kept.
/// With the records after it, it says how far the log reaches, so that
/// opening can tell a log that lost its end (sled holds a later batch)
/// from one that simply has nothing new since the last checkpoint.
/// Written (and synced) only when a segment starts, never per batch.
pub const COVERED_FILE: &str = "covered";

/// Records that `dir`'s current segment follows batch `lsn` (see
/// [`COVERED_FILE`]): written to a temporary file, synced, renamed.
pub fn write_covered(dir: &Path, lsn: u64) -> std::io::Result<()> {
    let tmp = dir.join("covered.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(&lsn.to_be_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(COVERED_FILE))?;
    sync_dir(dir)
}

/// The LSN [`write_covered`] last recorded in `dir`; `None` for a log
/// written before it existed (or closed without a segment).
pub fn read_covered(dir: &Path) -> std::io::Result<Option<u64>> {
    match fs::read(dir.join(COVERED_FILE)) {
        Ok(bytes) => Ok(<[u8; 8]>::try_from(bytes.as_slice())
            .ok()
            .map(u64::from_be_bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A segment past this size starts a checkpoint. Bounds both the disk the
/// log takes and the replay at start.
pub const SEGMENT_MAX: u64 = 16 * 1024 * 1024;

/// How a log makes room for its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segments {
    /// Each segment is written full of zeros before records go into it,
    /// and the next one is prepared ahead (see [`create_segment`]): fast
    /// syncs, for the service.
    Prepared,
    /// Segments grow with their records: for maintenance stores (backups,
    /// migrations, offline edits, `verify`), which commit a few batches and
    /// must not leave 16 MiB files of zeros in a copy.
    Growing,
}

/// The log of one open store, shared by the writer (which appends, writes
/// and fdatasyncs records) and a checkpoint thread (which deletes segments
/// sled no longer needs).
pub struct RedoLog {
    dir: PathBuf,
    segments: Segments,
    /// Records appended but not yet written to the segment file.
    pending: Mutex<Vec<u8>>,
    out: Mutex<Segment>,
    checkpoint: Mutex<CheckpointState>,
    checkpoint_done: Condvar,
}

/// The segment being appended to.
struct Segment {
    n: u64,
    file: File,
    len: u64,
}

/// Why a checkpoint failed: sled's flush, a file operation, or the thread
/// that was to run it. Shared: every later sync reports it.
pub type CheckpointCause = Arc<dyn std::error::Error + Send + Sync>;

/// A checkpoint failed, so nothing more can be made durable through this
/// log (see [`RedoLog::sync`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("a background flush of the store failed: {0}")]
pub struct CheckpointFailed(#[source] pub CheckpointCause);

#[derive(Default)]
struct CheckpointState {
    running: bool,
    /// A checkpoint failed: sled could not be flushed. Its engine keeps the
    /// error, so every later sync of this log fails too until the store is
    /// reopened.
    failed: Option<CheckpointCause>,
}

impl RedoLog {
    /// Starts the log in segment `n` of `dir` (blank or new), beginning
    /// with the snapshot record of `snapshot` (the log-only writes, see
    /// [`encode_clear_log_only`]; none if empty), and deletes every older
    /// segment: call only once sled holds everything else the older ones
    /// do.
    pub fn start(
        dir: &Path,
        n: u64,
        snapshot: &[u8],
        segments: Segments,
        covered: u64,
    ) -> std::io::Result<RedoLog> {
        let file = create_segment(dir, n, segments)?;
        let len = write_snapshot(&file, snapshot)?;
        write_covered(dir, covered)?;
        // The first rotation should not prepare its segment on the
        // writer's path either.
        if segments == Segments::Prepared && !segment_path(dir, n + 1).exists() {
            prepare_segment(dir, n + 1)?;
        }
        let wal = RedoLog {
            dir: dir.to_owned(),
            segments,
            pending: Mutex::new(Vec::new()),
            out: Mutex::new(Segment { n, file, len }),
            checkpoint: Mutex::new(CheckpointState::default()),
            checkpoint_done: Condvar::new(),
        };
        wal.drop_below(n)?;
        Ok(wal)
    }

    /// Appends one batch's record (in memory; durable after [`RedoLog::sync`]).
    pub fn append(&self, lsn: u64, writes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        frame(&mut pending, lsn, writes);
    }

    /// Drops records appended but not written (the store is being reopened:
    /// they were never acknowledged).
    pub fn discard_pending(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Writes every record appended so far and fdatasyncs them: after `Ok`
    /// they survive a crash. Returns the segment's new length.
    pub fn sync(&self) -> std::io::Result<u64> {
        if let Some(e) = &self.lock_checkpoint().failed {
            return Err(std::io::Error::other(CheckpointFailed(Arc::clone(e))));
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        out.file.write_all_at(&bytes, out.len)?;
        out.len += bytes.len() as u64;
        out.file.sync_data()?;
        Ok(out.len)
    }

    /// Whether [`RedoLog::begin_checkpoint`] would start one: the current
    /// segment is past [`SEGMENT_MAX`] and no checkpoint runs or failed.
    pub fn checkpoint_due(&self) -> bool {
        let state = self.lock_checkpoint();
        let out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        !state.running && state.failed.is_none() && out.len >= SEGMENT_MAX
    }

    /// If the current segment is past [`SEGMENT_MAX`] and no checkpoint is
    /// running: starts a new segment for everything appended from now on,
    /// beginning with the snapshot record of `snapshot` (the log-only
    /// writes as they stand), and returns its number — every older segment
    /// may be deleted (with [`RedoLog::finish_checkpoint`]) once sled is
    /// flushed. Call only where every record written so far is already
    /// applied to sled and the deferred writes too (the writer, right after
    /// a commit).
    /// `covered` is the LSN of the last batch appended (see [`COVERED_FILE`]).
    pub fn begin_checkpoint(&self, snapshot: &[u8], covered: u64) -> std::io::Result<Option<u64>> {
        let mut state = self.lock_checkpoint();
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if state.running || state.failed.is_some() || out.len < SEGMENT_MAX {
            return Ok(None);
        }
        // Records appended and not yet written belong to the old segment:
        // they were applied to sled before this call, so the flush covers
        // them. (The writer syncs each record before applying it, so there
        // are none; this keeps the rule true whoever calls.)
        let bytes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if !bytes.is_empty() {
            out.file.write_all_at(&bytes, out.len)?;
            out.len += bytes.len() as u64;
            out.file.sync_data()?;
        }
        self.start_next_segment(&mut out, snapshot, covered)?;
        state.running = true;
        Ok(Some(out.n))
    }

    /// Starts segment `out.n + 1` with the snapshot record of `snapshot`
    /// and records `covered` (see [`COVERED_FILE`]): records go there from
    /// now on.
    fn start_next_segment(
        &self,
        out: &mut Segment,
        snapshot: &[u8],
        covered: u64,
    ) -> std::io::Result<()> {
        let n = out.n + 1;
        let file = create_segment(&self.dir, n, self.segments)?;
        // Durable before the older segments may go: they hold the only
        // copies of the log-only writes until then.
        out.len = write_snapshot(&file, snapshot)?;
        out.file = file;
        out.n = n;
        write_covered(&self.dir, covered)
    }

    /// Ends the checkpoint [`RedoLog::begin_checkpoint`] started: with sled
    /// flushed (`flushed` is `Ok`), deletes the segments before `below`.
    pub fn finish_checkpoint(&self, below: u64, flushed: Result<(), CheckpointCause>) {
        let result = flushed.and_then(|()| {
            self.drop_below(below)
                .map_err(|e| -> CheckpointCause { Arc::new(e) })
        });
        let mut state = self.lock_checkpoint();
        state.running = false;
        match result {
            Ok(()) => tracing::info!(
                segment = below,
                "journal checkpoint: store flushed, older redo log dropped"
            ),
            Err(e) => {
                tracing::error!(error = %e, "journal checkpoint failed");
                state.failed = Some(e);
            }
        }
        self.checkpoint_done.notify_all();
    }

    /// Waits until no checkpoint is running (before the store flushes
    /// itself or closes: sled must not be flushed from two threads).
    pub fn wait_idle(&self) {
        let mut state = self.lock_checkpoint();
        while state.running {
            state = self
                .checkpoint_done
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// After the store flushed sled itself (the deferred writes included):
    /// everything but the log-only writes is in sled, so a new segment
    /// starts with their snapshot record (see [`RedoLog::start`]) and the
    /// older ones go.
    /// `covered`: the LSN of the last batch, which sled now holds.
    pub fn reset(&self, snapshot: &[u8], covered: u64) -> std::io::Result<()> {
        self.wait_idle();
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // A segment holding nothing but the same snapshot can stay (inline
        // commits reset often: no need to prepare a segment each time).
        if out.len > 0 || !snapshot.is_empty() {
            self.start_next_segment(&mut out, snapshot, covered)?;
        }
        let n = out.n;
        drop(out);
        self.drop_below(n)
    }

    /// Closes a log whose store was flushed (the deferred writes included)
    /// for good: keeps only a segment of just the snapshot record of
    /// `snapshot`, without the zeros of a prepared one, or no log directory
    /// at all when `snapshot` is empty. A store written once (a backup, a
    /// migration) then carries no prepared segments; opening it starts a
    /// new log.
    /// `covered`: the LSN of the last batch, which sled now holds.
    pub fn finish(&self, snapshot: &[u8], covered: u64) -> std::io::Result<()> {
        self.wait_idle();
        let dir = self.dir.clone();
        let n = self.out.lock().unwrap_or_else(|p| p.into_inner()).n + 1;
        if snapshot.is_empty() {
            fs::remove_dir_all(&dir)?;
            return match dir.parent() {
                Some(parent) => sync_dir(parent),
                None => Ok(()),
            };
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(segment_path(&dir, n))?;
        write_snapshot(&file, snapshot)?;
        sync_dir(&dir)?;
        write_covered(&dir, covered)?;
        for (m, path) in segments(&dir)? {
            if m != n {
                fs::remove_file(path)?;
            }
        }
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "prep") {
                fs::remove_file(path)?;
            }
        }
        sync_dir(&dir)
    }

    /// Prepares segment `n` (see `prepare_segment`): a checkpoint does
    /// this for the segment after the one it started, so that the next
    /// rotation does not write 16 MiB of zeros on the writer's path.
    pub fn prepare(&self, n: u64) {
        if self.segments == Segments::Growing {
            return;
        }
        if let Err(e) = prepare_segment(&self.dir, n) {
            // The rotation prepares it itself then.
            tracing::warn!(error = %e, "could not prepare the next redo log segment");
        }
    }

    fn drop_below(&self, n: u64) -> std::io::Result<()> {
        let mut removed = false;
        for (m, path) in segments(&self.dir)? {
            if m < n {
                fs::remove_file(path)?;
                removed = true;
            }
        }
        // A preparation a crash interrupted.
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "prep") {
                fs::remove_file(path)?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn lock_checkpoint(&self) -> std::sync::MutexGuard<'_, CheckpointState> {
        self.checkpoint.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates segment `n` and makes its directory entry durable before any
/// record in it is acknowledged. A segment is written full of zeros first
/// (unless a checkpoint already prepared it, see [`prepare_segment`]):
/// records then overwrite allocated blocks, so an fdatasync has no file size
/// or extent change to write besides the data, and syncs are faster.
///
/// On a nearly full disk the segment is created empty and grows with its
/// records instead (slower syncs, but the journal still opens and reads
/// keep working: see [`PREPARE_MIN_FREE`]), and always with
/// [`Segments::Growing`].
fn create_segment(dir: &Path, n: u64, segments: Segments) -> std::io::Result<File> {
    let path = segment_path(dir, n);
    let prepared = fs::metadata(&path).is_ok_and(|m| m.len() == SEGMENT_MAX);
    if !prepared && segments == Segments::Prepared {
        if let Err(e) = prepare_segment(dir, n) {
            // Not needed for correctness: go on with a growing segment.
            tracing::warn!(error = %e, "could not prepare a redo log segment");
        }
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    sync_dir(dir)?;
    Ok(file)
}

/// Free space below which a new segment is not filled with zeros first:
/// the zeros of two segments must never be what fills the disk.
pub const PREPARE_MIN_FREE: u64 = 4 * SEGMENT_MAX;

/// Writes segment `n` full of zeros and makes it durable, so that
/// [`create_segment`] finds it ready. A checkpoint prepares the next
/// segment this way, off the writer's path. Does nothing while less than
/// [`PREPARE_MIN_FREE`] is free (the segment then grows as it is written).
fn prepare_segment(dir: &Path, n: u64) -> std::io::Result<()> {
    if fs4::available_space(dir)? < PREPARE_MIN_FREE {
        return Ok(());
    }
    let tmp = dir.join(format!("{n:020}.prep"));
    let written = (|| {
        let mut file = File::create(&tmp)?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = SEGMENT_MAX;
        while left > 0 {
            let chunk = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..chunk])?;
            left -= chunk as u64;
        }
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Renamed when complete: a crash mid-way leaves only a `.prep` file,
    // which is not a segment (and `drop_below` removes it).
    fs::rename(&tmp, segment_path(dir, n))?;
    sync_dir(dir)
}

/// fsyncs a directory, making the entries of files created in it durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
