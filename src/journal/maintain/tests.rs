//! Tests of migration and verification on a version-1 data directory
//! written by hand.

use std::path::Path;

use super::{migrate, verify};
use crate::journal::entities::EntityIndex;
use crate::journal::format::{check_format, OpenError, ENGINE_DIR};
use crate::journal::record::PortalProfile;
use crate::journal::record::{EventRecord, PortalRecord, SpanSummary};
use crate::journal::record::{Interned, StoredData};
use crate::journal::store::{Store, WriteBatch};
use crate::journal::JournalReader;
use crate::types::MemberId;

const EVENTS: u64 = 150;

fn event(seq: u64, name: u32) -> EventRecord {
    let entity = (!seq.is_multiple_of(10)).then(|| (seq % 7).to_string());
    EventRecord {
        id: uuid::Uuid::now_v7().into_bytes(),
        ts: 1_700_000_000 + seq,
        event: Interned::At(name),
        data: match &entity {
            Some(_) => StoredData::FieldsId,
            None => StoredData::Json(format!("{{\"N\":{seq}}}").into_bytes()),
        },
        entity_id: entity,
        event_handler_id: None,
        profile: Interned::At(0),
        auth: Vec::new(),
        provenance: Default::default(),
    }
}

/// Writes a version-1 data directory: one portal, `EVENTS` events, a
/// few with duplicates; returns the stored event bytes by seq.
fn write_v1(data: &Path) -> Vec<Vec<u8>> {
    std::fs::write(
        data.join(crate::journal::FORMAT_FILE),
        "b24-journal data format 1\n",
    )
    .unwrap();
    let mut store = super::offline::open_store(&data.join(ENGINE_DIR), data).unwrap();
    let mut batch = WriteBatch::default();
    let mut p = PortalRecord::new(0, &MemberId::parse("m1").unwrap());
    p.profile_index(&PortalProfile {
        domain: "a.bitrix24.com".into(),
        client_endpoint: None,
        server_endpoint: None,
        fixed: Vec::new(),
    });
    let name = p.name_index("ONCRMACTIVITYADD").unwrap();
    let mut stored = Vec::new();
    for seq in 1..=EVENTS {
        let rec = event(seq, name);
        let dups = u32::from(seq % 40 == 5);
        let bytes = rec.to_bytes(dups);
        batch.put_v1_event(0, seq, bytes.clone());
        stored.push(bytes);
        p.next_seq += 1;
        p.events += 1;
        p.duplicates += u64::from(dups);
    }
    // Version 1 summarised spans of 256 events: all 150 are in span 0.
    let v1_summary = SpanSummary {
        span: 0,
        min_ts: 1_700_000_001,
        max_ts: 1_700_000_000 + EVENTS,
    };
    p.summary = Some(v1_summary);
    batch.put_summary(0, &v1_summary);
    batch.put_v1_portal(&p);
    store.commit(batch).unwrap();
    stored
}

/// The version-1 directory of [`write_v1`] in `data`, migrated, and its
/// store opened.
fn migrated_v1(data: &Path) -> Store {
    write_v1(data);
    migrate(data).unwrap();
    super::offline::open_store(&data.join(ENGINE_DIR), data).unwrap()
}

#[test]
fn migrate_converts_a_version_1_directory_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let stored = write_v1(data);
    assert!(matches!(
        check_format(data),
        Err(OpenError::NeedsMigration { found: 1, .. })
    ));

    let report = migrate(data).unwrap();
    assert_eq!((report.portals, report.events), (1, EVENTS));
    assert!(report.old_files.as_ref().unwrap().exists());
    let v = verify(data).unwrap();
    assert_eq!(v.problem_count, 0, "{:?}", v.problems);
    assert_eq!(v.events, EVENTS);

    let store = super::offline::open_store(&data.join(ENGINE_DIR), data).unwrap();
    let reader = store.reader();
    let events: Vec<(u64, Vec<u8>)> = reader
        .events(0, 1, EVENTS)
        .collect::<Result<_, _>>()
        .unwrap();
    let want: Vec<(u64, Vec<u8>)> = (1..).zip(stored).collect();
    assert_eq!(events, want, "every event, duplicates counters included");
    let three = JournalReader::new(reader.clone(), EntityIndex::default(), Default::default())
        .entity_seqs(reader, 0, "3", 1, EVENTS)
        .unwrap();
    let want: Vec<u64> = (1..=EVENTS)
        .filter(|s| !s.is_multiple_of(10) && s % 7 == 3)
        .collect();
    assert_eq!(three, want);
    let portal = &reader.portals().unwrap()[0];
    assert_eq!((portal.events, portal.duplicates), (EVENTS, 4));
    drop(store);

    // Already current: nothing to do.
    assert_eq!(migrate(data).unwrap().events, 0);
}

#[test]
fn an_interrupted_migration_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_v1(data);
    // As if a run had moved the old engine aside and crashed while
    // building: a stray half-built engine and side directory.
    std::fs::rename(data.join(ENGINE_DIR), data.join("sled.v1")).unwrap();
    std::fs::create_dir(data.join(ENGINE_DIR)).unwrap();
    std::fs::write(data.join(ENGINE_DIR).join("junk"), "x").unwrap();
    std::fs::create_dir(data.join("sled.migrating")).unwrap();
    let report = migrate(data).unwrap();
    assert_eq!(report.events, EVENTS);
    let v = verify(data).unwrap();
    assert_eq!(v.problem_count, 0, "{:?}", v.problems);
}

/// `verify` compares the rollups with the events; `rebuild_rollups`
/// recounts them (what the format 3 → 4 migration calls).
#[test]
fn verify_checks_rollups_and_rebuild_restores_them() {
    use crate::journal::rollup::{hour_of, HourRollup};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut store = migrated_v1(data);
    let hour = hour_of(1_700_000_000 + 1);
    let stored = store
        .reader()
        .rollup(0, hour)
        .unwrap()
        .expect("migrated rollups");
    let counted = HourRollup::from_bytes(&stored).unwrap().total();
    assert!(counted.events > 0);
    // Make one hour wrong: one event fewer.
    let mut wrong = HourRollup::from_bytes(&stored).unwrap();
    wrong.names.values_mut().next().unwrap().events -= 1;
    let mut batch = WriteBatch::default();
    batch.put_rollup(0, hour, wrong.to_bytes());
    store.commit(batch).unwrap();
    drop(store);
    let v = verify(data).unwrap();
    assert!(v.problem_count > 0, "a wrong rollup is a problem");
    assert!(v.problems[0].contains("rollup"), "{:?}", v.problems);

    let mut store = super::offline::open_store(&data.join(ENGINE_DIR), data).unwrap();
    assert_eq!(super::rebuild_rollups(&mut store).unwrap(), EVENTS);
    let rebuilt = store.reader().rollup(0, hour).unwrap().unwrap();
    assert_eq!(HourRollup::from_bytes(&rebuilt).unwrap().total(), counted);
    drop(store);
    let v = verify(data).unwrap();
    assert_eq!(v.problem_count, 0, "{:?}", v.problems);
}

/// A migration works the span summaries out again from the events, one
/// per block; `verify` reports a summary that misses an event's `ts`
/// (a window query would pass over that event) or a span without one.
#[test]
fn migrated_summaries_cover_each_block_and_verify_checks_them() {
    use crate::journal::record::SUMMARY_SPAN;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut store = migrated_v1(data);
    let reader = store.reader();
    let summary = |span: u64, last: u64| SpanSummary {
        span,
        min_ts: 1_700_000_000 + span * SUMMARY_SPAN + 1,
        max_ts: 1_700_000_000 + last,
    };
    let stored: Vec<SpanSummary> = reader
        .summaries_desc(0, u64::MAX)
        .collect::<Result<_, _>>()
        .unwrap();
    // 150 events: spans 0 and 1 full (stored), span 2 open (in the record).
    assert_eq!(stored, [summary(1, 128), summary(0, 64)]);
    assert_eq!(
        reader.portals().unwrap()[0].summary,
        Some(summary(2, EVENTS))
    );

    let mut batch = WriteBatch::default();
    batch.put_summary(
        0,
        &SpanSummary {
            min_ts: 1_700_000_000 + 70,
            ..summary(1, 128)
        },
    );
    batch.delete_summary(0, 0);
    store.commit(batch).unwrap();
    drop(store);
    let v = verify(data).unwrap();
    // What each part stores: 150 events of ~40 bytes, the postings of the
    // sealed ones with an entity id, one summary (span 1's: span 0's is
    // deleted, the open span's is in the portal record).
    let bytes = &v.stored_bytes;
    assert!(bytes.events > 150 * 30, "{bytes:?}");
    assert!(
        bytes.postings > 0 && bytes.postings < bytes.events,
        "{bytes:?}"
    );
    assert!(bytes.runs > 0 && bytes.other > 0, "{bytes:?}");
    assert!(bytes.summaries > 0 && bytes.summaries < 100, "{bytes:?}");
    assert_eq!(v.problem_count, 2, "{:?}", v.problems);
    assert!(v
        .problems
        .iter()
        .any(|p| p.contains("span 0 has events but no summary")));
    assert!(
        v.problems
            .iter()
            .any(|p| p.contains("summary of span 1") && p.contains("misses")),
        "{:?}",
        v.problems
    );
}

/// `verify` holds a run head's list of items to the items stored, and
/// counts the runs whose heads were written before heads listed them.
#[test]
fn verify_checks_the_items_a_run_head_lists() {
    use crate::journal::store::codec::postings::{Item, RunHead};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let store = migrated_v1(data);
    let runs = store
        .reader()
        .runs(0)
        .unwrap()
        .expect("the portal has runs");
    let run = runs.live[0];
    let head = store.reader().run_head(0, run).unwrap().unwrap();
    let starts = head.items.clone().expect("a migration lists items");
    assert!(!starts.is_empty());
    drop(store);
    let v = verify(data).unwrap();
    assert_eq!((v.problem_count, v.runs_without_item_list), (0, 0));

    // A head without its list, as written before heads listed items.
    let mut store = super::offline::open_store(&data.join(ENGINE_DIR), data).unwrap();
    let mut batch = WriteBatch::default();
    let old = RunHead {
        items: None,
        ..head.clone()
    };
    batch.put_run_head(0, run, &old);
    store.commit(batch).unwrap();
    drop(store);
    let v = verify(data).unwrap();
    assert_eq!((v.problem_count, v.runs_without_item_list), (0, 1));

    // A listed item gone.
    let mut store = super::offline::open_store(&data.join(ENGINE_DIR), data).unwrap();
    let mut batch = WriteBatch::default();
    batch.put_run_head(0, run, &head);
    let gone = &starts[0];
    let item = Item {
        entity: gone.entity.to_string(),
        seq: gone.seq,
        bytes: Vec::new(),
    };
    batch.delete_run_item(0, run, &item);
    store.commit(batch).unwrap();
    drop(store);
    let v = verify(data).unwrap();
    let lists = format!(
        "its head lists {} items, {} are stored",
        starts.len(),
        starts.len() - 1
    );
    assert!(
        v.problems.iter().any(|p| p.contains(&lists)),
        "{:?}",
        v.problems
    );
}
