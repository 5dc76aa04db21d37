//! The redo log: what makes a group commit durable.
//!
//! Making a batch durable through sled costs two waits per commit — its
//! `flush()` (about 0.66 ms measured at 64 connections, the single biggest
//! cost of an acknowledgement) and the `fsync` that must follow it
//! (../shared/SLED.md). Instead, every batch applied to sled is also
//! appended here, as one checksummed record of the very writes it made, and
//! a commit is durable once that record is: one `write` and one
//! `fdatasync` of a file only we append to.
//!
//! sled is flushed in the background at a *checkpoint*, when the current
//! segment has grown past [`SEGMENT_MAX`]: new records go to a fresh
//! segment, sled is flushed and fsynced, and only then are the older
//! segments deleted. Opening the store replays every record sled may not
//! have (see [`Store::open`](super::store::Store::open)), then checkpoints,
//! so the log never holds more than a few segments.
//!
//! Records carry a log sequence number (LSN), and every batch writes its LSN
//! into sled in the same atomic batch. After a crash sled holds a prefix of
//! the batches applied to it (what sled had written of its own log, which
//! may be *more* than this log holds durably); replay applies exactly the
//! records past sled's LSN, so a batch is never applied on top of a later
//! one.
//!
//! Record: `len u32 LE | crc32 u32 LE | lsn u64 LE | writes`, where `crc32`
//! covers `lsn` and `writes`, and `writes` is a run of
//! `1 | key len u32 LE | key | value len u32 LE | value` (insert) or
//! `0 | key len u32 LE | key` (remove).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// A segment past this size starts a checkpoint. Bounds both the disk the
/// log takes and the replay at start (~16k events).
pub const SEGMENT_MAX: u64 = 16 * 1024 * 1024;

const HEADER: usize = 8;

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
    /// The highest segment number present.
    pub last_segment: u64,
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
    for (n, path) in segments(dir)? {
        found.last_segment = n;
        let bytes = fs::read(&path)?;
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
                    if found.torn.is_none() {
                        found.torn = Some((path.clone(), at as u64));
                    }
                    break;
                }
            }
        }
    }
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

/// The log of one open store, shared by the writer (which appends records
/// in memory), the syncer (which writes and fdatasyncs them) and a
/// checkpoint (which deletes segments sled no longer needs).
pub struct Wal {
    dir: PathBuf,
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

#[derive(Default)]
struct CheckpointState {
    running: bool,
    /// A checkpoint failed: sled could not be flushed. Its engine keeps the
    /// error, so every later sync of this log fails too until the store is
    /// reopened.
    failed: Option<String>,
}

impl Wal {
    /// Starts a fresh segment after `last` in `dir` and deletes every older
    /// one: call only once sled holds everything the older ones do.
    pub fn start(dir: &Path, last: u64) -> std::io::Result<Wal> {
        let n = last + 1;
        let file = create_segment(dir, n)?;
        let wal = Wal {
            dir: dir.to_owned(),
            pending: Mutex::new(Vec::new()),
            out: Mutex::new(Segment { n, file, len: 0 }),
            checkpoint: Mutex::new(CheckpointState::default()),
            checkpoint_done: Condvar::new(),
        };
        wal.drop_below(n)?;
        Ok(wal)
    }

    /// Appends one batch's record (in memory; durable after [`Wal::sync`]).
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

    /// Writes every record appended so far and fdatasyncs them. Returns the
    /// segment's new length.
    pub fn sync(&self) -> std::io::Result<u64> {
        if let Some(e) = &self.lock_checkpoint().failed {
            return Err(std::io::Error::other(format!(
                "a background flush of the store failed: {e}"
            )));
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if !bytes.is_empty() {
            out.file.write_all(&bytes)?;
            out.len += bytes.len() as u64;
        }
        // Also after an empty write: a caller may be waiting for records an
        // earlier call wrote but whose fdatasync it did not see finish.
        out.file.sync_data()?;
        Ok(out.len)
    }

    /// If the current segment is past [`SEGMENT_MAX`] and no checkpoint is
    /// running: starts a new segment for everything appended from now on
    /// and returns its number — every older segment may be deleted (with
    /// [`Wal::finish_checkpoint`]) once sled is flushed. Call only where
    /// every record written so far is already applied to sled (the syncer,
    /// right after a sync: records are appended after they are applied).
    pub fn begin_checkpoint(&self) -> std::io::Result<Option<u64>> {
        let mut state = self.lock_checkpoint();
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if state.running || state.failed.is_some() || out.len < SEGMENT_MAX {
            return Ok(None);
        }
        // Whatever was appended since the last sync must land in the old
        // segment: it was applied to sled before this call, so the flush
        // covers it, and it must not be lost with the old segment if the
        // flush does not happen.
        let bytes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        out.file.write_all(&bytes)?;
        out.file.sync_data()?;
        let n = out.n + 1;
        out.file = create_segment(&self.dir, n)?;
        out.n = n;
        out.len = 0;
        state.running = true;
        Ok(Some(n))
    }

    /// Ends the checkpoint [`Wal::begin_checkpoint`] started: with sled
    /// flushed (`flushed` is `Ok`), deletes the segments before `below`.
    pub fn finish_checkpoint(&self, below: u64, flushed: Result<(), String>) {
        let result = flushed.and_then(|()| self.drop_below(below).map_err(|e| e.to_string()));
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
        let n = out.n + 1;
        out.file = create_segment(&self.dir, n)?;
        out.n = n;
        out.len = 0;
        drop(out);
        self.drop_below(n)
    }

    fn drop_below(&self, n: u64) -> std::io::Result<()> {
        let mut removed = false;
        for (m, path) in segments(&self.dir)? {
            if m < n {
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
/// record in it is acknowledged.
fn create_segment(dir: &Path, n: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, n))?;
    sync_dir(dir)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
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
        let wal = Wal::start(dir.path(), 0).unwrap();
        let a = writes(&[Op::Insert(b"k1", b"v1"), Op::Remove(b"k2")]);
        let b = writes(&[Op::Insert(b"", b"")]);
        wal.append(7, &a);
        wal.append(8, &b);
        wal.sync().unwrap();
        drop(wal);
        let seg = segment_path(dir.path(), 1);
        // A crash in the middle of the next append.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2]).unwrap();
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
        assert_eq!(at, fs::metadata(&seg).unwrap().len() - 6);
        assert_eq!(found.after_hole, 0);
        assert_eq!(found.last_segment, 1);

        // Starting again deletes what replay consumed.
        let wal = Wal::start(dir.path(), found.last_segment).unwrap();
        drop(wal);
        let found = read(dir.path()).unwrap();
        assert!(found.records.is_empty() && found.torn.is_none());
        assert_eq!(found.last_segment, 2);
    }

    #[test]
    fn a_flipped_bit_stops_the_log_and_later_records_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 0).unwrap();
        wal.append(1, &writes(&[Op::Insert(b"a", b"1")]));
        wal.append(2, &writes(&[Op::Insert(b"b", b"2")]));
        wal.sync().unwrap();
        drop(wal);
        // A second segment, as if a checkpoint had started.
        let next = File::create(segment_path(dir.path(), 2)).unwrap();
        drop(next);
        let mut bytes = fs::read(segment_path(dir.path(), 1)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
        let wal2 = Wal {
            dir: dir.path().to_owned(),
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
