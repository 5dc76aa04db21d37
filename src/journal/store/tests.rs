//! The store's tests: redo-log replay, reopen and snapshot refresh, lock
//! waits, and sequence scans across a seal.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::codec;
use super::engine::WAL_DIR;
use super::keys::{seq_key, BLOCK};
use super::log::{self, RedoLog, Segments, Tier};
use super::{Store, StoreError, WriteBatch};

/// Copies the directory tree `from` to `to` (a crash image of a live store;
/// the layout tests use it too).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

pub(super) const CACHE: u64 = 8 << 20;

#[test]
fn writes_sled_lost_come_back_from_the_redo_log() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let mut store = Store::open(&live, CACHE).unwrap();
    let mut first = WriteBatch::default();
    first.put_tail(7, 0, b"zero".to_vec());
    store.commit(first).unwrap();
    // sled's files as they are after a full flush: what a power cut
    // leaves when nothing later reached them.
    let crashed = dir.path().join("crashed");
    copy_dir(&live, &crashed);
    for seq in 1..=3u64 {
        let mut b = WriteBatch::default();
        b.put_tail(7, seq, vec![seq as u8; 3]);
        // And a write that goes to sled.
        b.put_block(7, seq, vec![seq as u8; 5]);
        if seq == 3 {
            b.delete_tail(7, 0);
        }
        // Durable in the redo log only.
        store.commit_logged(b, || {}).unwrap();
    }
    std::fs::remove_dir_all(crashed.join(WAL_DIR)).unwrap();
    copy_dir(&live.join(WAL_DIR), &crashed.join(WAL_DIR));
    drop(store);

    let store = Store::open(&crashed, CACHE).unwrap();
    let tail = store.reader().tail(7).unwrap();
    assert_eq!(
        tail,
        vec![(1, vec![1; 3]), (2, vec![2; 3]), (3, vec![3; 3])]
    );
    assert_eq!(store.reader().block(7, 3).unwrap(), Some(vec![3; 5]));
    assert_eq!(store.engine().unwrap().applied_lsn().unwrap(), 4);
    assert_eq!(store.next_lsn, 5);
    // Opening replayed, flushed and dropped the old log, keeping only the
    // tail events (log-only writes) in a snapshot record: a second open
    // finds nothing to apply and the same state.
    drop(store);
    let found = log::read(&crashed.join(WAL_DIR)).unwrap();
    assert!(
        found.records.iter().all(|r| r.lsn == 0),
        "only a snapshot record: {found:?}"
    );
    let store = Store::open(&crashed, CACHE).unwrap();
    assert_eq!(store.reader().tail(7).unwrap().len(), 3);
    assert_eq!(store.reader().block(7, 3).unwrap(), Some(vec![3; 5]));
}

#[test]
fn open_waits_for_a_lock_that_is_let_go_and_reports_one_that_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let engine = dir.path().join("sled");
    Store::open(&engine, CACHE).unwrap().close().unwrap();
    // Held for a moment, as sled's I/O thread does after a close.
    let held = File::open(engine.join("db")).unwrap();
    held.try_lock().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(held);
    });
    Store::open(&engine, CACHE).unwrap().close().unwrap();
    release.join().unwrap();
    // Held for good, as by a running service: named as such.
    let held = File::open(engine.join("db")).unwrap();
    held.try_lock().unwrap();
    let err = Store::open(&engine, CACHE).err().expect("locked files");
    assert!(matches!(err, StoreError::Locked(_)), "{err:?}");
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
}

#[test]
fn replay_skips_what_sled_holds_and_refuses_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let engine = dir.path().join("sled");
    let mut store = Store::open(&engine, CACHE).unwrap();
    for value in [b"one", b"two"] {
        let mut b = WriteBatch::default();
        b.put_block(1, 0, value.to_vec());
        store.commit(b).unwrap();
    }
    drop(store);
    // An older record than sled holds (LSN 1 of 2) must not undo the
    // newer write.
    let mut writes = Vec::new();
    log::encode_insert(&mut writes, Tier::Engine, &seq_key(BLOCK, 1, 0), b"one");
    // The log follows batch 2, which sled holds.
    let log = RedoLog::start(&engine.join(WAL_DIR), 100, &[], Segments::Prepared, 2).unwrap();
    log.append(1, &writes);
    log.sync().unwrap();
    drop(log);
    let store = Store::open(&engine, CACHE).unwrap();
    assert_eq!(store.reader().block(1, 0).unwrap(), Some(b"two".to_vec()));
    drop(store);

    // A record past a hole (sled holds LSN 2, the log starts at 4).
    let log = RedoLog::start(&engine.join(WAL_DIR), 200, &[], Segments::Prepared, 2).unwrap();
    log.append(4, &writes);
    log.sync().unwrap();
    drop(log);
    let err = Store::open(&engine, CACHE)
        .err()
        .expect("a gap must not open");
    assert!(err.to_string().contains("jumps from LSN 2"), "{err}");
}

fn snapshots(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("snap."))
        .collect();
    names.sort();
    names
}

/// A store in `dir/live` that is due a snapshot refresh after its one
/// logged batch (portal 7, seq 0, "zero").
fn store_due_a_refresh(dir: &Path) -> (PathBuf, Store) {
    let live = dir.join("live");
    let mut store = Store::open(&live, CACHE).unwrap();
    store.set_snapshot_every(1);
    assert!(!store.snapshot_due());
    let mut b = WriteBatch::default();
    b.put_tail(7, 0, b"zero".to_vec());
    store.commit_logged(b, || {}).unwrap();
    assert!(store.snapshot_due());
    (live, store)
}

#[test]
fn a_snapshot_refresh_keeps_every_write_and_the_redo_log_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (live, mut store) = store_due_a_refresh(dir.path());
    let before = snapshots(&live);
    // A reader handed out before the refresh follows the new engine.
    let reader = store.reader().clone();
    // Postponed while a long read (a backup) is in progress.
    let long = store.reader().long_read();
    assert!(!store.refresh_snapshot().unwrap());
    assert!(store.snapshot_due());
    assert_eq!(snapshots(&live), before);
    drop(long);
    assert!(store.refresh_snapshot().unwrap());
    assert!(!store.snapshot_due());
    let after = snapshots(&live);
    assert_ne!(before, after, "sled wrote a new snapshot");
    assert_eq!(reader.tail(7).unwrap(), vec![(0, b"zero".to_vec())]);

    // sled's files as the refresh left them, then a batch durable in the
    // redo log only: the log went on after the refresh, so a crash now
    // loses nothing.
    let crashed = dir.path().join("crashed");
    copy_dir(&live, &crashed);
    let mut b = WriteBatch::default();
    b.put_tail(7, 1, b"one".to_vec());
    store.commit_logged(b, || {}).unwrap();
    std::fs::remove_dir_all(crashed.join(WAL_DIR)).unwrap();
    copy_dir(&live.join(WAL_DIR), &crashed.join(WAL_DIR));
    drop(store);
    let store = Store::open(&crashed, CACHE).unwrap();
    assert_eq!(
        store.reader().tail(7).unwrap(),
        vec![(0, b"zero".to_vec()), (1, b"one".to_vec())]
    );
    assert_eq!(store.next_lsn, 3);
}

#[test]
fn a_pinned_reader_finishes_its_reads_across_a_snapshot_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut store) = store_due_a_refresh(dir.path());
    // A query: pins the engine, reads, pauses while the refresh starts,
    // then reads again (as an index scan followed by the events it
    // names does).
    let reader = store.reader().clone();
    let (pinned_tx, pinned_rx) = std::sync::mpsc::channel();
    let query = std::thread::spawn(move || {
        let pinned = reader.pinned().unwrap();
        // An open scan holds the engine, like an index scan in flight.
        let scan = pinned.events(7, 0, 10);
        let first = pinned.tail(7).unwrap();
        pinned_tx.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(60));
        let second = pinned.tail(7);
        drop(scan);
        (first, second)
    });
    pinned_rx.recv().unwrap();
    assert!(store.refresh_snapshot().unwrap());
    let (first, second) = query.join().unwrap();
    assert_eq!(first, vec![(0, b"zero".to_vec())]);
    assert_eq!(
        second.unwrap(),
        first,
        "the second read saw the same engine"
    );
    assert_eq!(store.reader().tail(7).unwrap(), first);
}

/// The value stored for `seq` in the scan tests.
fn ev(seq: u64) -> Vec<u8> {
    format!("event {seq}").into_bytes()
}

/// Block `block` of the scan tests, with seqs in `gone` empty and seqs
/// above `last` absent (empty) too.
fn test_block(block: u64, last: u64, gone: &[u64]) -> Vec<u8> {
    let first = codec::event_block_first(block);
    let values: Vec<Vec<u8>> = (first..first + codec::BLOCK_SPAN)
        .map(|seq| {
            if seq > last || gone.contains(&seq) {
                Vec::new()
            } else {
                ev(seq)
            }
        })
        .collect();
    codec::encode_block(&values.iter().map(Vec::as_slice).collect::<Vec<_>>())
}

fn seqs(scan: impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>>) -> Vec<u64> {
    scan.map(|r| {
        let (seq, bytes) = r.unwrap();
        assert_eq!(bytes, ev(seq), "the bytes of seq {seq}");
        seq
    })
    .collect()
}

#[test]
fn seq_scans_read_tail_and_blocks_both_ways_and_across_a_seal() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), CACHE).unwrap();
    // Block 0 sealed (seq 10 deleted before sealing), 65..=70 in the tail.
    let mut b = WriteBatch::default();
    b.put_block(7, 0, test_block(0, 64, &[10]));
    for seq in 65..=70 {
        b.put_tail(7, seq, ev(seq));
    }
    // Another portal's tail right next to it in key order.
    b.put_tail(8, 1, b"other".to_vec());
    store.commit(b).unwrap();
    let reader = store.reader().clone();
    let all: Vec<u64> = (1..=70).filter(|s| *s != 10).collect();
    let newest_first: Vec<u64> = all.iter().rev().copied().collect();
    assert_eq!(seqs(reader.events(7, 1, 70)), all);
    assert_eq!(seqs(reader.events(7, 1, 70).rev()), newest_first);
    assert_eq!(
        seqs(reader.events(7, 60, 66).rev()),
        vec![66, 65, 64, 63, 62, 61, 60]
    );
    assert_eq!(seqs(reader.events(7, 66, 68)), vec![66, 67, 68]);
    assert_eq!(reader.event(7, 65).unwrap(), Some(ev(65)));
    assert_eq!(reader.event(7, 64).unwrap(), Some(ev(64)));
    assert_eq!(reader.event(7, 10).unwrap(), None);

    // A scan that has read the tail, then a seal moves the tail into
    // block 1 (block first, tail items removed after, as the writer
    // applies them): the scan still returns every event once.
    let mut during = reader.events(7, 1, 70).rev();
    assert_eq!(during.next().unwrap().unwrap().0, 70);
    let mut seal = WriteBatch::default();
    seal.put_block(7, 1, test_block(1, 70, &[]));
    for seq in 65..=70 {
        seal.delete_tail(7, seq);
    }
    store.commit(seal).unwrap();
    let mut rest = vec![70];
    rest.extend(seqs(during));
    assert_eq!(rest, newest_first);
    // Scans started after the seal find the moved events in the block.
    assert_eq!(seqs(reader.events(7, 1, 70).rev()), newest_first);
    assert_eq!(seqs(reader.events(7, 1, 70)), all);
    assert_eq!(reader.tail(8).unwrap(), vec![(1, b"other".to_vec())]);
}

/// A redo log that lost its end while sled kept later batches (what a
/// disk that drops synced writes, or a log not synced per batch, leaves
/// after a power cut) must not open: the lost batches' unsealed events
/// are gone while sled counts them.
#[test]
fn a_log_that_ends_before_sled_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let mut store = Store::open(&live, CACHE).unwrap();
    for seq in 1..=5u64 {
        let mut b = WriteBatch::default();
        b.put_tail(7, seq, vec![seq as u8; 3]);
        b.put_block(7, seq, vec![seq as u8; 5]);
        store.commit_logged(b, || {}).unwrap();
    }
    let wal = live.join(WAL_DIR);
    let found = log::read(&wal).unwrap();
    let batches: Vec<(u64, Vec<u8>)> = found
        .records
        .iter()
        .filter(|r| r.lsn > 0)
        .map(|r| (r.lsn, r.writes.clone()))
        .collect();
    assert_eq!(batches.len(), 5);
    // Dropping the store flushes sled: it holds batch 5.
    drop(store);

    // The log keeps batches 1..=3 only.
    let lost_end = dir.path().join("lost-end");
    copy_dir(&live, &lost_end);
    std::fs::remove_dir_all(lost_end.join(WAL_DIR)).unwrap();
    std::fs::create_dir_all(lost_end.join(WAL_DIR)).unwrap();
    let log = RedoLog::start(&lost_end.join(WAL_DIR), 1, &[], Segments::Prepared, 0).unwrap();
    for (lsn, writes) in &batches[..3] {
        log.append(*lsn, writes);
    }
    log.sync().unwrap();
    drop(log);
    let err = Store::open(&lost_end, CACHE)
        .err()
        .expect("a log that lost its end must not open");
    assert!(
        matches!(err, StoreError::LogBehind { store: 5, log: 3 }),
        "{err}"
    );
    assert!(err.to_string().contains("do not start"), "{err}");

    // Every batch after the segment's start lost looks like a log closed
    // cleanly (by this release, or by one from before the `covered` file
    // after a rollback, which leaves that file stale): it opens.
    let all_lost = dir.path().join("all-lost");
    copy_dir(&live, &all_lost);
    std::fs::remove_dir_all(all_lost.join(WAL_DIR)).unwrap();
    std::fs::create_dir_all(all_lost.join(WAL_DIR)).unwrap();
    drop(RedoLog::start(&all_lost.join(WAL_DIR), 1, &[], Segments::Prepared, 0).unwrap());
    Store::open(&all_lost, CACHE).expect("a log with no batches opens");

    // The whole log, as written: opens, and a clean close and reopen too.
    let store = Store::open(&live, CACHE).unwrap();
    assert_eq!(store.reader().tail(7).unwrap().len(), 5);
    store.close().unwrap();
    let store = Store::open(&live, CACHE).unwrap();
    assert_eq!(store.reader().tail(7).unwrap().len(), 5);
    store.close().unwrap();

    // Closed by a release from before the `covered` file: its log holds
    // only the snapshot of the tails, and says nothing about how far it
    // reaches. It opens (an upgrade must not refuse a good journal).
    std::fs::remove_file(live.join(WAL_DIR).join(log::COVERED_FILE)).unwrap();
    let store = Store::open(&live, CACHE).expect("a journal from before `covered` opens");
    assert_eq!(store.reader().tail(7).unwrap().len(), 5);
}
