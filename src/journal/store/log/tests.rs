//! Tests of the redo log: records, torn tails, damage, malformed writes.

use super::*;

fn writes(ops: &[Op<'_>]) -> Vec<u8> {
    let mut w = Vec::new();
    for op in ops {
        match op {
            Op::Insert(tier, k, v) => encode_insert(&mut w, *tier, k, v),
            Op::Remove(tier, k) => encode_remove(&mut w, *tier, k),
            Op::ClearLogOnly => encode_clear_log_only(&mut w),
        }
    }
    w
}

#[test]
fn records_round_trip_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let wal = RedoLog::start(dir.path(), 1, &[], Segments::Prepared, 0).unwrap();
    let a = writes(&[
        Op::Insert(Tier::Engine, b"k1", b"v1"),
        Op::Remove(Tier::Engine, b"k2"),
    ]);
    let b = writes(&[Op::Insert(Tier::Engine, b"", b"")]);
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
        vec![
            Op::Insert(Tier::Engine, b"k1", b"v1"),
            Op::Remove(Tier::Engine, b"k2")
        ]
    );
    assert_eq!(found.records[1].lsn, 8);
    assert_eq!(
        decode_ops(&found.records[1].writes).unwrap(),
        vec![Op::Insert(Tier::Engine, b"", b"")]
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
    let wal = RedoLog::start(dir.path(), found.next_segment, &[], Segments::Prepared, 0).unwrap();
    drop(wal);
    assert!(!seg.exists());
    let found = read(dir.path()).unwrap();
    assert!(found.records.is_empty() && found.torn.is_none());
    assert_eq!(found.next_segment, 2);
}

#[test]
fn a_flipped_bit_stops_the_log_and_later_records_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let wal = RedoLog::start(dir.path(), 1, &[], Segments::Prepared, 0).unwrap();
    wal.append(1, &writes(&[Op::Insert(Tier::Engine, b"a", b"1")]));
    wal.append(2, &writes(&[Op::Insert(Tier::Engine, b"b", b"2")]));
    wal.sync().unwrap();
    drop(wal);
    // A second segment, as if a checkpoint had started.
    let next = File::create(segment_path(dir.path(), 2)).unwrap();
    drop(next);
    let mut bytes = fs::read(segment_path(dir.path(), 1)).unwrap();
    // A bit of the second record's body.
    let second = HEADER + 8 + writes(&[Op::Insert(Tier::Engine, b"a", b"1")]).len();
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
    wal2.append(3, &writes(&[Op::Insert(Tier::Engine, b"c", b"3")]));
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
    assert!(decode_ops(&[8, 0, 0, 0, 0]).is_none());
    assert!(decode_ops(&[1, 5, 0, 0, 0, b'a']).is_none());
    assert!(decode_ops(&[1, 1, 0, 0, 0, b'a']).is_none());
    assert!(decode_ops(&[7, 1, 0, 0, 0, b'a']).is_none());
    assert_eq!(decode_ops(&[6]).unwrap(), vec![Op::ClearLogOnly]);
}
