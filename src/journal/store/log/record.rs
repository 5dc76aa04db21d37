//! The redo log's record format: the writes of a batch with their tiers,
//! the framing of a record, and reading every record of a log directory
//! back (see the parent module for what they mean).

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of a record's length and checksum.
pub(super) const HEADER: usize = 8;

/// Where a write lives once it is logged (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Applied to sled.
    Engine,
    /// Kept in memory and in the log only.
    LogOnly,
    /// Kept in memory and in the log until a checkpoint writes it to sled.
    Deferred,
}

impl Tier {
    fn tag(self, insert: bool) -> u8 {
        let base = match self {
            Tier::Engine => 0,
            Tier::LogOnly => 2,
            Tier::Deferred => 4,
        };
        base + u8::from(insert)
    }
}

/// The tag that clears the log-only state (a snapshot record's first).
const CLEAR_LOG_ONLY: u8 = 6;

/// One write of a batch, as logged.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Insert `key` = `value`.
    Insert(Tier, &'a [u8], &'a [u8]),
    /// Remove `key`.
    Remove(Tier, &'a [u8]),
    /// Forget every log-only write before this one (a snapshot follows).
    ClearLogOnly,
}

/// Appends an insert to a batch's encoded writes.
pub fn encode_insert(out: &mut Vec<u8>, tier: Tier, key: &[u8], value: &[u8]) {
    out.push(tier.tag(true));
    push_bytes(out, key);
    push_bytes(out, value);
}

/// Appends a remove to a batch's encoded writes.
pub fn encode_remove(out: &mut Vec<u8>, tier: Tier, key: &[u8]) {
    out.push(tier.tag(false));
    push_bytes(out, key);
}

/// Appends the clearing of the log-only state (see [`Op::ClearLogOnly`]).
pub fn encode_clear_log_only(out: &mut Vec<u8>) {
    out.push(CLEAR_LOG_ONLY);
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
        if tag == CLEAR_LOG_ONLY {
            ops.push(Op::ClearLogOnly);
            continue;
        }
        let tier = match tag / 2 {
            0 => Tier::Engine,
            1 => Tier::LogOnly,
            2 => Tier::Deferred,
            _ => return None,
        };
        let key = take(&mut b)?;
        ops.push(if tag % 2 == 1 {
            Op::Insert(tier, key, take(&mut b)?)
        } else {
            Op::Remove(tier, key)
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

pub(super) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.log"))
}

/// The segments in `dir`, ascending.
pub(super) fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
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

/// Appends the record of `writes` with `lsn` to `out`.
pub(super) fn frame(out: &mut Vec<u8>, lsn: u64, writes: &[u8]) {
    let mut body_crc = crc32fast::Hasher::new();
    body_crc.update(&lsn.to_le_bytes());
    body_crc.update(writes);
    // A batch is at most MAX_BATCH events of bounded size, and a snapshot
    // the unsealed tails: far below 4 GiB.
    out.extend_from_slice(&((8 + writes.len()) as u32).to_le_bytes());
    out.extend_from_slice(&body_crc.finalize().to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(writes);
}

/// Writes the snapshot record of `snapshot` (encoded log-only inserts) at
/// the start of the new segment `file` and fdatasyncs it; returns its
/// length (0, writing nothing, when `snapshot` is empty). It carries LSN 0:
/// it applies nothing to sled.
pub(super) fn write_snapshot(file: &File, snapshot: &[u8]) -> std::io::Result<u64> {
    if snapshot.is_empty() {
        return Ok(0);
    }
    let mut writes = Vec::with_capacity(snapshot.len() + 1);
    encode_clear_log_only(&mut writes);
    writes.extend_from_slice(snapshot);
    let mut record = Vec::with_capacity(writes.len() + HEADER + 8);
    frame(&mut record, 0, &writes);
    file.write_all_at(&record, 0)?;
    file.sync_data()?;
    Ok(record.len() as u64)
}
