//! Tests of the layout policy: blocks sealed as tails fill, and the entity
//! index's runs merged as the policy says.

use std::collections::BTreeMap;

use super::runs::{RunsUpdate, FANOUT};
use super::*;
use crate::journal::entities::{EntityIndex, PortalRuns};
use crate::journal::record::{Interned, StoredData};
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
        let prev_last = portal.last_seq();
        let fresh: BTreeMap<u64, Vec<u8>> = (prev_last + 1..=prev_last + BLOCK_SPAN)
            .map(|seq| (seq, event(seq)))
            .collect();
        portal.next_seq += BLOCK_SPAN;
        portal.events += BLOCK_SPAN;
        let runs = entities.runs(store.reader(), 0).unwrap();
        let mut update = RunsUpdate::of(0, &runs);
        let mut writes = WriteBatch::default();
        update.purge_dead(&mut writes, store.reader()).unwrap();
        lay_out(
            &mut writes,
            store.reader(),
            &portal,
            prev_last,
            fresh,
            &mut update,
        )
        .unwrap();
        let shown = update
            .finish(&mut writes)
            .expect("a sealed block changes the runs");
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
