//! Tests of the layout policy: blocks sealed as tails fill, and the entity
//! index's runs merged as the policy says.

use std::collections::BTreeMap;

use super::runs::{RunsUpdate, FANOUT};
use super::*;
use crate::journal::entities::{EntityIndex, PortalRuns};
use crate::journal::record::{Interned, StoredData};
use crate::journal::store::tests::copy_dir;
use crate::journal::store::Store;
use crate::types::MemberId;

fn event(seq: u64) -> Vec<u8> {
    EventRecord {
        id: uuid::Uuid::now_v7().into_bytes(),
        ts: 1_700_000_000 + seq,
        event: Interned::At(0),
        entity_id: Some((seq % 11).to_string()),
        event_handler_id: None,
        profile: Interned::At(0),
        auth: Vec::new(),
        data: StoredData::FieldsId,
        provenance: Default::default(),
    }
    .to_bytes(0)
}

#[test]
fn runs_merge_into_few_and_hold_every_sealed_entity_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), 8 << 20).unwrap();
    let mut portal = PortalRecord::new(0, &MemberId::parse("m").unwrap());
    portal.name_index("ONCRMACTIVITYADD");
    let entities = EntityIndex::default();
    let blocks = (FANOUT * FANOUT + 3) as u64;
    let mut max_runs = 0;
    // One block per batch, as a busy portal's writer commits them.
    for step in 0..blocks {
        let fresh = block_events(&portal);
        let (writes, shown) = seal_next(&store, &entities, &mut portal, fresh);
        let show = entities.clone();
        store
            .commit_logged(writes, move || show.publish(0, shown))
            .unwrap();
        let runs = entities.runs(store.reader(), 0).unwrap();
        max_runs = max_runs.max(runs.live.len());
        assert_eq!(runs.list.live.len(), runs.live.len(), "step {step}");
    }
    // 19 blocks with a fanout of 4: one run of 16 blocks and three of one.
    let runs = entities.runs(store.reader(), 0).unwrap();
    let levels: Vec<u8> = runs.live.iter().map(|r| r.head.level).collect();
    assert_eq!(levels, vec![2, 0, 0, 0]);
    assert!(max_runs <= 2 * FANOUT, "{max_runs} runs at most");
    // The runs loaded afresh from the store are the ones shown.
    let loaded = PortalRuns::load(store.reader(), 0).unwrap();
    assert_eq!(loaded.list, runs.list);
    let reader = crate::journal::JournalReader::new(
        store.reader().clone(),
        entities.clone(),
        Default::default(),
    );
    let last = blocks * BLOCK_SPAN;
    for entity in ["0", "5", "10"] {
        let want: Vec<u64> = (1..=last)
            .filter(|s| (s % 11).to_string() == entity)
            .collect();
        let got = reader
            .entity_seqs(store.reader(), 0, entity, 1, last)
            .unwrap();
        assert_eq!(got, want, "entity {entity}");
    }
    let candidates = entities
        .candidates(store.reader(), 0, "5", 1_700_000_000 + 16, 0, 1)
        .unwrap();
    let tag = name_tag("ONCRMACTIVITYADD");
    assert!(
        candidates.is_empty(),
        "tag 0 is not the name's: {candidates:?}"
    );
    let candidates = entities
        .candidates(store.reader(), 0, "5", 1_700_000_000 + 16, tag, 1)
        .unwrap();
    assert_eq!(candidates, vec![16]);
}

/// Lays out the next block of `portal`, whose events are `fresh`, into
/// `writes` through `update`; `portal` moves on.
fn lay_out_next(
    store: &Store,
    portal: &mut PortalRecord,
    fresh: BTreeMap<u64, Vec<u8>>,
    update: &mut RunsUpdate,
    writes: &mut WriteBatch,
) {
    let prev_last = portal.last_seq();
    portal.next_seq += BLOCK_SPAN;
    portal.events += BLOCK_SPAN;
    lay_out(writes, store.reader(), portal, prev_last, fresh, update).unwrap();
}

/// The writes that seal the next block of `portal` (whose events are
/// `fresh`), and the runs to show after them; `portal` moves on.
fn seal_next(
    store: &Store,
    entities: &EntityIndex,
    portal: &mut PortalRecord,
    fresh: BTreeMap<u64, Vec<u8>>,
) -> (WriteBatch, PortalRuns) {
    let runs = entities.runs(store.reader(), 0).unwrap();
    let mut update = RunsUpdate::new(0, &runs);
    let mut writes = WriteBatch::default();
    update.purge_dead(&mut writes, store.reader()).unwrap();
    lay_out_next(store, portal, fresh, &mut update, &mut writes);
    update
        .merge_all(&mut writes, store.reader(), portal.first_seq())
        .unwrap();
    let shown = update
        .finish(&mut writes)
        .expect("a sealed block changes the runs");
    (writes, shown)
}

fn block_events(portal: &PortalRecord) -> BTreeMap<u64, Vec<u8>> {
    let last = portal.last_seq();
    (last + 1..=last + BLOCK_SPAN)
        .map(|seq| (seq, event(seq)))
        .collect()
}

#[test]
fn a_crash_in_the_middle_of_a_merge_is_completed_from_the_log_and_its_dead_runs_go_later() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let mut store = Store::open(&live, 8 << 20).unwrap();
    let mut portal = PortalRecord::new(0, &MemberId::parse("m").unwrap());
    portal.name_index("ONCRMACTIVITYADD");
    let entities = EntityIndex::default();
    for _ in 0..FANOUT - 1 {
        let fresh = block_events(&portal);
        let (writes, shown) = seal_next(&store, &entities, &mut portal, fresh);
        let show = entities.clone();
        store
            .commit_logged(writes, move || show.publish(0, shown))
            .unwrap();
    }
    // sled holds the first three runs; then the fourth block's commit,
    // which merges all four runs, is durable in the log only.
    store.sync().unwrap();
    let crashed = dir.path().join("crashed");
    copy_dir(&live, &crashed);
    let fresh = block_events(&portal);
    let mut replica = portal.clone();
    let (mut half, _) = seal_next(&store, &entities, &mut replica, fresh.clone());
    let (writes, shown) = seal_next(&store, &entities, &mut portal, fresh);
    assert_eq!(shown.list.dead.len(), FANOUT, "the fourth seal merges");
    let show = entities.clone();
    store
        .commit_logged(writes, move || show.publish(0, shown))
        .unwrap();
    drop(store);
    // The crash came while sled applied the merge: it holds the first half
    // of the batch's writes (new run items, no head, no list).
    {
        let mut torn = Store::open(&crashed, 8 << 20).unwrap();
        half.split_off_half();
        torn.apply(half).unwrap();
        torn.close().unwrap();
    }
    std::fs::remove_dir_all(crashed.join("wal")).ok();
    copy_dir(&live.join("wal"), &crashed.join("wal"));

    let mut store = Store::open(&crashed, 8 << 20).unwrap();
    let runs = PortalRuns::load(store.reader(), 0).unwrap();
    let levels: Vec<u8> = runs.live.iter().map(|r| r.head.level).collect();
    assert_eq!(levels, vec![1], "the merge was completed from the log");
    assert_eq!(runs.list.dead.len(), FANOUT);
    let entities = EntityIndex::default();
    let reader = crate::journal::JournalReader::new(
        store.reader().clone(),
        entities.clone(),
        Default::default(),
    );
    let last = portal.last_seq();
    for entity in ["1", "7"] {
        let want: Vec<u64> = (1..=last)
            .filter(|s| (s % 11).to_string() == entity)
            .collect();
        let got = reader
            .entity_seqs(store.reader(), 0, entity, 1, last)
            .unwrap();
        assert_eq!(got, want, "entity {entity}");
    }
    assert!(
        store.reader().tail(0).unwrap().is_empty(),
        "sealed events left the tail"
    );
    // The next change of the portal's runs deletes the dead ones.
    let fresh = block_events(&portal);
    let (writes, shown) = seal_next(&store, &entities, &mut portal, fresh);
    assert!(shown.list.dead.is_empty());
    store.commit(writes).unwrap();
    for run in &runs.list.dead {
        assert!(store.reader().run_keys(0, *run).unwrap().is_empty());
        assert!(store.reader().run_head(0, *run).unwrap().is_none());
    }
}

#[test]
fn deferred_merges_done_a_budget_at_a_time_lose_no_posting_and_end_as_eager_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), 8 << 20).unwrap();
    let mut portal = PortalRecord::new(0, &MemberId::parse("m").unwrap());
    portal.name_index("ONCRMACTIVITYADD");
    let entities = EntityIndex::default();
    let reader = crate::journal::JournalReader::new(
        store.reader().clone(),
        entities.clone(),
        Default::default(),
    );
    let blocks = (FANOUT * FANOUT + 3) as u64;
    let mut deferred = 0;
    let mut step = 0;
    // A commit seals one block (while there are blocks to seal) and makes
    // at most one merge (a budget of one seq): the cascades of the 16th
    // block span several commits.
    loop {
        let runs = entities.runs(store.reader(), 0).unwrap();
        let mut update = RunsUpdate::new(0, &runs);
        let mut writes = WriteBatch::default();
        update.purge_dead(&mut writes, store.reader()).unwrap();
        if step < blocks {
            let fresh = block_events(&portal);
            lay_out_next(&store, &mut portal, fresh, &mut update, &mut writes);
        } else if !update.pending() {
            break;
        }
        let left = update
            .merge_some(&mut writes, store.reader(), 1, &mut 1)
            .unwrap();
        if left {
            deferred += 1;
        }
        if let Some(shown) = update.finish(&mut writes) {
            let show = entities.clone();
            store
                .commit_logged(writes, move || show.publish(0, shown))
                .unwrap();
        }
        step += 1;
        // Whatever waits to be merged, every sealed event is found once.
        let last = portal.last_seq();
        let want: Vec<u64> = (1..=last).filter(|s| s % 11 == 5).collect();
        let got = reader.entity_seqs(store.reader(), 0, "5", 1, last).unwrap();
        assert_eq!(got, want, "step {step}");
    }
    assert!(deferred > 0, "the budget deferred merges");
    // The same runs as merging at once leaves (see the first test).
    let runs = PortalRuns::load(store.reader(), 0).unwrap();
    let levels: Vec<u8> = runs.live.iter().map(|r| r.head.level).collect();
    assert_eq!(levels, vec![2, 0, 0, 0]);
}
