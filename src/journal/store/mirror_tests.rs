//! The read mirror against sled at the store's level: commits write their
//! blocks through (new, rewritten, deleted), a mirror whose file breaks is
//! dropped and reads go back to sled, and closing deletes its files. The
//! journal's own tests (`journal::mirror_tests`) rebuild it from sled.

use std::time::{Duration, Instant};

use super::tests::CACHE;
use super::{Reader, Store, WriteBatch};

/// Waits until `reader`'s mirror answers block reads.
pub(crate) fn wait_ready(reader: &Reader) {
    let t = Instant::now();
    while !reader.mirror_ready() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the read mirror never became ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn commits_write_through_and_a_broken_mirror_falls_back_to_sled() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), CACHE).unwrap();
    wait_ready(store.reader());
    let mut b = WriteBatch::default();
    for block in 0..4u8 {
        b.put_block(7, u64::from(block), vec![block; 3000]);
    }
    store.commit_logged(b, || {}).unwrap();
    // A rewrite (a duplicate counter) and a deletion (retention).
    let mut b = WriteBatch::default();
    b.put_block(7, 1, vec![9; 2500]);
    b.delete_block(7, 2);
    store.commit_logged(b, || {}).unwrap();
    let reader = store.reader().clone();
    let (blocks, items, file) = reader.mirror_matches_sled().unwrap();
    assert_eq!((blocks, items), (3, 0));
    assert_eq!(reader.block(7, 1).unwrap(), Some(vec![9; 2500]));
    assert_eq!(reader.block(7, 2).unwrap(), None);

    // A mirror whose bytes are gone: the read that meets it drops the
    // mirror and answers from sled.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(reader.block(7, 3).unwrap(), Some(vec![3; 3000]));
    assert!(!reader.mirror_ready(), "the failed read dropped the mirror");
    assert_eq!(reader.block(7, 0).unwrap(), Some(vec![0; 3000]));
    // Commits go on without it.
    let mut b = WriteBatch::default();
    b.put_block(7, 4, vec![4; 10]);
    store.commit_logged(b, || {}).unwrap();
    assert_eq!(reader.block(7, 4).unwrap(), Some(vec![4; 10]));

    drop(store);
    assert!(
        !dir.path().join("mirror").exists(),
        "closing the store deletes the mirror"
    );
}
