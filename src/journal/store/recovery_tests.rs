//! Recovery of what lives in the redo log and the memtable only: the
//! unsealed tails across checkpoints and a crash, the deferred counters,
//! and a reopen after a failed commit, which must forget what the failed
//! commit put into the memtable.

use super::engine::WAL_DIR;
use super::keys::{seq_key, COUNTERS, TAIL};
use super::log::{self, Tier, SEGMENT_MAX};
use super::tests::{copy_dir, CACHE};
use super::{Store, WriteBatch};
use crate::journal::record::PortalRecord;
use crate::types::MemberId;

/// 64 KiB tail events: the log passes a checkpoint every 256 of them.
fn big(seq: u64) -> Vec<u8> {
    vec![seq as u8; 64 * 1024]
}

fn portal(next_seq: u64) -> PortalRecord {
    PortalRecord {
        next_seq,
        events: next_seq - 1,
        ..PortalRecord::new(1, &MemberId::parse("m").unwrap())
    }
}

/// Commits tail events `0..n` of portal 1, one per batch, each batch also
/// dropping the tail event ten below it (as a seal does) and rewriting the
/// portal's counters; returns the seqs that stay in the tail.
/// The seqs of portal 1's unsealed tail, as a reader sees them.
fn tail_seqs(store: &Store) -> Vec<u64> {
    let tail = store.reader().tail(1).unwrap();
    tail.iter().map(|(s, _)| *s).collect()
}

fn write_tails(store: &mut Store, n: u64) -> Vec<u64> {
    for seq in 0..n {
        let mut b = WriteBatch::default();
        b.put_tail(1, seq, big(seq));
        if seq >= 10 && seq % 10 == 0 {
            for gone in seq - 10..seq {
                if gone % 10 != 9 {
                    b.delete_tail(1, gone);
                }
            }
        }
        b.put_portal(&portal(seq + 2));
        store.commit_logged(b, || {}).unwrap();
    }
    (0..n)
        .filter(|s| s % 10 == 9 || *s >= (n - 1) / 10 * 10)
        .collect()
}

#[test]
fn tails_in_the_log_only_survive_checkpoints_and_a_crash_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let mut store = Store::open(&live, CACHE).unwrap();
    let n = 2 * SEGMENT_MAX / (64 * 1024) + 20;
    let kept = write_tails(&mut store, n);
    // Both checkpoints have run: the first segments, which held most of the
    // tail's inserts, are gone, and only snapshot records carry them now.
    store.wal.wait_idle();
    let found = log::read(&live.join(WAL_DIR)).unwrap();
    assert!(
        found.records.first().is_some_and(|r| r.lsn == 0),
        "the log starts with a snapshot record"
    );
    assert!(
        found.records.iter().filter(|r| r.lsn > 0).count() < 300,
        "older segments were deleted"
    );
    // A crash now: sled's files and the log as they are.
    let crashed = dir.path().join("crashed");
    copy_dir(&live, &crashed);
    drop(store);
    let store = Store::open(&crashed, CACHE).unwrap();
    let tail = store.reader().tail(1).unwrap();
    let seqs: Vec<u64> = tail.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, kept, "every tail event kept, none dropped comes back");
    assert!(tail.iter().all(|(s, v)| *v == big(*s)));
    // The counters of the last batch, written to sled at a checkpoint or
    // rebuilt from the log.
    assert_eq!(store.reader().portals().unwrap(), vec![portal(n + 1)]);
    assert_eq!(
        store.memtable.deferred(&seq_key(COUNTERS, 1, 0)[..5]),
        None,
        "opening wrote the deferred writes to sled"
    );
    let engine = store.engine().unwrap();
    let counters = engine
        .tree
        .get(&seq_key(COUNTERS, 1, 0)[..5])
        .unwrap()
        .unwrap();
    assert_eq!(counters.to_vec(), portal(n + 1).to_split_bytes().1);
    // Opening again (a second crash right after the first start) finds the
    // same: the first open re-logged the tail before dropping the log.
    drop(store);
    let store = Store::open(&crashed, CACHE).unwrap();
    let again = tail_seqs(&store);
    assert_eq!(again, kept);
}

#[test]
fn a_clean_close_keeps_only_the_tails_snapshot_and_opening_it_restores_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), CACHE).unwrap();
    let kept = write_tails(&mut store, 25);
    store.close().unwrap();
    // Segments only: the log directory also names the batch it follows
    // (`log::COVERED_FILE`).
    let segments: Vec<u64> = std::fs::read_dir(dir.path().join(WAL_DIR))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    assert!(segments[0] < (kept.len() as u64 + 1) * 70 * 1024);
    let store = Store::open(dir.path(), CACHE).unwrap();
    let seqs = tail_seqs(&store);
    assert_eq!(seqs, kept);
}

#[test]
fn a_reopen_after_a_failed_commit_forgets_what_was_not_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), CACHE).unwrap();
    let kept = write_tails(&mut store, 15);
    // A commit that failed after changing the memtable (its record may not
    // be on disk): a tail event and counters nobody acknowledged.
    let ghost = seq_key(TAIL, 1, 999);
    store
        .memtable
        .apply(Tier::LogOnly, &ghost, Some(b"never acknowledged"));
    store
        .memtable
        .apply(Tier::LogOnly, &seq_key(TAIL, 1, kept[0]), None);
    let counters = &seq_key(COUNTERS, 1, 0)[..5];
    store
        .memtable
        .apply(Tier::Deferred, counters, Some(b"bogus"));
    store.reopen().unwrap();
    let seqs = tail_seqs(&store);
    assert_eq!(seqs, kept, "the durable tail, and only it");
    let engine = store.engine().unwrap();
    assert_eq!(
        engine.tree.get(counters).unwrap().unwrap().to_vec(),
        portal(16).to_split_bytes().1
    );
    // The store takes commits again, and they last.
    let mut b = WriteBatch::default();
    b.put_tail(1, 500, big(500));
    store.commit(b).unwrap();
    drop(store);
    let store = Store::open(dir.path(), CACHE).unwrap();
    let seqs = tail_seqs(&store);
    assert_eq!(seqs, [kept, vec![500]].concat());
}
