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
//! Record: `len u32 LE | crc32 u32 LE | lsn u64 LE | writes`, where `crc32`
//! covers `lsn` and `writes`, and `writes` is a run of
//! `1 | key len u32 LE | key | value len u32 LE | value` (insert) or
//! `0 | key len u32 LE | key` (remove).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// A segment past this size starts a checkpoint. Bounds both the disk the
/// log takes and the replay at start.
pub const SEGMENT_MAX: u64 = 16 * 1024 * 1024;

const HEADER: usize = 8;

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

/// One write of a batch, as logged.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Insert `key` = `value`.
    Insert(&'a [u8], &'a [u8]),
    /// Remove `key`.
    Remove(&'a [u8]),
}

/// Appends an insert to a batch's encoded writes.
pub fn encode_insert(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.push(1);
    push_bytes(out, key);
    push_bytes(out, value);
}

/// Appends a remove to a batch's encoded writes.
pub fn encode_remove(out: &mut Vec<u8>, key: &[u8]) {
    out.push(0);
    push_bytes(out, key);
}

fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Keys and values are far below 4 GiB (a request body is at most a few
    // MiB), so the length fits.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Decodes a batch's writes; `None` if they are malformed (a record whose
/// checksum matched but does not decode is corruption, not a torn write).
pub fn decode_ops(mut b: &[u8]) -> Option<Vec<Op<'_>>> {
    fn take<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let v = b.get(4..4 + len)?;
        *b = &b[4 + len..];
        Some(v)
    }
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = b.split_first() {
        b = rest;
        let key = take(&mut b)?;
        ops.push(match tag {
            1 => Op::Insert(key, take(&mut b)?),
            0 => Op::Remove(key),
            _ => return None,
        });
    }
    Some(ops)
}

/// A record read back from the log.
#[derive(Debug)]
pub struct Record {
    /// Its log sequence number.
    pub lsn: u64,
    /// Its encoded writes (see [`decode_ops`]).
    pub writes: Vec<u8>,
}

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every whole record, in log order.
    pub records: Vec<Record>,
    /// The first damaged or torn record, if any: its segment and offset.
    /// A crash while appending leaves one at the end of the last segment;
    /// those bytes were never acknowledged.
    pub torn: Option<(PathBuf, u64)>,
    /// Whole records found in segments *after* the damaged one: acknowledged
    /// data behind a hole, which replay cannot apply in order.
    pub after_hole: usize,
    /// Where a new log starts: after every segment with content; a blank
    /// last segment (prepared, never written to) is reused.
    pub next_segment: u64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.log"))
}

/// The segments in `dir`, ascending.
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let n = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every record in the log directory `dir` (created if missing), up
/// to the first damaged one.
pub fn read(dir: &Path) -> std::io::Result<Recovered> {
    fs::create_dir_all(dir)?;
    let mut found = Recovered::default();
    // The first blank segment after the last one with content.
    let (mut blank_since, mut after_content) = (None, 1);
    for (n, path) in segments(dir)? {
        let bytes = fs::read(&path)?;
        if bytes.iter().all(|&b| b == 0) {
            blank_since.get_or_insert(n);
        } else {
            (blank_since, after_content) = (None, n + 1);
        }
        let mut at = 0usize;
        while at < bytes.len() {
            match parse_record(&bytes[at..]) {
                Some((record, used)) => {
                    if found.torn.is_some() {
                        found.after_hole += 1;
                    } else {
                        found.records.push(record);
                    }
                    at += used;
                }
                None => {
                    // Zeros: the unused rest of a prepared segment.
                    let clean_end = bytes[at..].iter().all(|&b| b == 0);
                    if !clean_end && found.torn.is_none() {
                        found.torn = Some((path.clone(), at as u64));
                    }
                    break;
                }
            }
        }
    }
    found.next_segment = blank_since.unwrap_or(after_content);
    Ok(found)
}

fn parse_record(b: &[u8]) -> Option<(Record, usize)> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let body = b.get(HEADER..HEADER + len)?;
    if len < 8 || crc32fast::hash(body) != crc {
        return None;
    }
    let lsn = u64::from_le_bytes(body[..8].try_into().ok()?);
    Some((
        Record {
            lsn,
            writes: body[8..].to_vec(),
        },
        HEADER + len,
    ))
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
    /// Starts the log in segment `n` of `dir` (blank or new) and deletes
    /// every older one: call only once sled holds everything the older ones
    /// do.
    pub fn start(dir: &Path, n: u64, segments: Segments) -> std::io::Result<RedoLog> {
        let file = create_segment(dir, n, segments)?;
        // The first rotation should not prepare its segment on the
        // writer's path either.
        if segments == Segments::Prepared && !segment_path(dir, n + 1).exists() {
            prepare_segment(dir, n + 1)?;
        }
        let wal = RedoLog {
            dir: dir.to_owned(),
            segments,
            pending: Mutex::new(Vec::new()),
            out: Mutex::new(Segment { n, file, len: 0 }),
            checkpoint: Mutex::new(CheckpointState::default()),
            checkpoint_done: Condvar::new(),
        };
        wal.drop_below(n)?;
        Ok(wal)
    }

    /// Appends one batch's record (in memory; durable after [`RedoLog::sync`]).
    pub fn append(&self, lsn: u64, writes: &[u8]) {
        let mut body_crc = crc32fast::Hasher::new();
        body_crc.update(&lsn.to_le_bytes());
        body_crc.update(writes);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // A batch is at most MAX_BATCH events of bounded size: far below
        // 4 GiB.
        pending.extend_from_slice(&((8 + writes.len()) as u32).to_le_bytes());
        pending.extend_from_slice(&body_crc.finalize().to_le_bytes());
        pending.extend_from_slice(&lsn.to_le_bytes());
        pending.extend_from_slice(writes);
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

    /// If the current segment is past [`SEGMENT_MAX`] and no checkpoint is
    /// running: starts a new segment for everything appended from now on
    /// and returns its number — every older segment may be deleted (with
    /// [`RedoLog::finish_checkpoint`]) once sled is flushed. Call only where
    /// every record written so far is already applied to sled (the writer,
    /// right after a commit).
    pub fn begin_checkpoint(&self) -> std::io::Result<Option<u64>> {
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
        let n = out.n + 1;
        out.file = create_segment(&self.dir, n, self.segments)?;
        out.n = n;
        out.len = 0;
        state.running = true;
        Ok(Some(n))
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

    /// After the store flushed sled itself: every record so far is in sled,
    /// so a new segment starts and the older ones go.
    pub fn reset(&self) -> std::io::Result<()> {
        self.wait_idle();
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // An empty segment can stay (inline commits reset often: no need
        // to prepare a segment each time).
        if out.len > 0 {
            let n = out.n + 1;
            out.file = create_segment(&self.dir, n, self.segments)?;
            out.n = n;
            out.len = 0;
        }
        let n = out.n;
        drop(out);
        self.drop_below(n)
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
mod tests {
    use super::*;

    fn writes(ops: &[Op<'_>]) -> Vec<u8> {
        let mut w = Vec::new();
        for op in ops {
            match op {
                Op::Insert(k, v) => encode_insert(&mut w, k, v),
                Op::Remove(k) => encode_remove(&mut w, k),
            }
        }
        w
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let wal = RedoLog::start(dir.path(), 1, Segments::Prepared).unwrap();
        let a = writes(&[Op::Insert(b"k1", b"v1"), Op::Remove(b"k2")]);
        let b = writes(&[Op::Insert(b"", b"")]);
        wal.append(7, &a);
        wal.append(8, &b);
        wal.sync().unwrap();
        drop(wal);
        let seg = segment_path(dir.path(), 1);
        assert_eq!(fs::metadata(&seg).unwrap().len(), SEGMENT_MAX);
        // A clean end: the rest of the prepared segment is zeros.
        let found = read(dir.path()).unwrap();
        assert_eq!(found.records.len(), 2);
        assert!(found.torn.is_none(), "{found:?}");
        // A crash in the middle of the next append.
        let end = (2 * (HEADER + 8) + a.len() + b.len()) as u64;
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[40, 0, 0, 0, 1, 2], end).unwrap();
        drop(f);

        let found = read(dir.path()).unwrap();
        assert_eq!(found.records.len(), 2);
        assert_eq!(found.records[0].lsn, 7);
        assert_eq!(
            decode_ops(&found.records[0].writes).unwrap(),
            vec![Op::Insert(b"k1", b"v1"), Op::Remove(b"k2")]
        );
        assert_eq!(found.records[1].lsn, 8);
        assert_eq!(
            decode_ops(&found.records[1].writes).unwrap(),
            vec![Op::Insert(b"", b"")]
        );
        let (path, at) = found.torn.unwrap();
        assert_eq!(path, seg);
        assert_eq!(at, end);
        assert_eq!(found.after_hole, 0);
        // Segment 2 is the blank one prepared for the first rotation.
        assert!(segment_path(dir.path(), 2).exists());
        assert_eq!(found.next_segment, 2);

        // Starting again deletes what replay consumed and reuses the blank
        // segment.
        let wal = RedoLog::start(dir.path(), found.next_segment, Segments::Prepared).unwrap();
        drop(wal);
        assert!(!seg.exists());
        let found = read(dir.path()).unwrap();
        assert!(found.records.is_empty() && found.torn.is_none());
        assert_eq!(found.next_segment, 2);
    }

    #[test]
    fn a_flipped_bit_stops_the_log_and_later_records_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let wal = RedoLog::start(dir.path(), 1, Segments::Prepared).unwrap();
        wal.append(1, &writes(&[Op::Insert(b"a", b"1")]));
        wal.append(2, &writes(&[Op::Insert(b"b", b"2")]));
        wal.sync().unwrap();
        drop(wal);
        // A second segment, as if a checkpoint had started.
        let next = File::create(segment_path(dir.path(), 2)).unwrap();
        drop(next);
        let mut bytes = fs::read(segment_path(dir.path(), 1)).unwrap();
        // A bit of the second record's body.
        let second = HEADER + 8 + writes(&[Op::Insert(b"a", b"1")]).len();
        bytes[second + HEADER + 9] ^= 1;
        fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
        let wal2 = RedoLog {
            dir: dir.path().to_owned(),
            segments: Segments::Prepared,
            pending: Mutex::new(Vec::new()),
            out: Mutex::new(Segment {
                n: 2,
                file: OpenOptions::new()
                    .append(true)
                    .open(segment_path(dir.path(), 2))
                    .unwrap(),
                len: 0,
            }),
            checkpoint: Mutex::new(CheckpointState::default()),
            checkpoint_done: Condvar::new(),
        };
        wal2.append(3, &writes(&[Op::Insert(b"c", b"3")]));
        wal2.sync().unwrap();

        let found = read(dir.path()).unwrap();
        assert_eq!(found.records.len(), 1);
        assert_eq!(found.records[0].lsn, 1);
        assert!(found.torn.is_some());
        assert_eq!(found.after_hole, 1);
    }

    #[test]
    fn malformed_writes_do_not_decode() {
        assert_eq!(decode_ops(&[]).unwrap(), vec![]);
        assert!(decode_ops(&[2, 0, 0, 0, 0]).is_none());
        assert!(decode_ops(&[1, 5, 0, 0, 0, b'a']).is_none());
        assert!(decode_ops(&[1, 1, 0, 0, 0, b'a']).is_none());
    }
}
