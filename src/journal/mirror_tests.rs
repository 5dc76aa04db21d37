//! The read mirror of a journal: rebuilt from sled when the journal opens
//! (every block of every portal and every item of its live postings runs,
//! as sled holds them), kept equal to sled by the writer's seals, merges
//! and duplicate-counter rewrites, and rebuilt again once rewrites have
//! left enough dead bytes; entity queries answer the same through it.

use std::time::{Duration, Instant};

use serde_json::Map;

use super::read::{EventFilter, ScanEnd};
use super::read_tests::newest_seqs;
use super::record::PortalProfile;
use super::store::mirror_tests::wait_ready;
use super::{AppendOutcome, Journal, JournalHandle, JournalOptions, Lifecycle, NewEvent, Origin};
use crate::types::{EntityId, EventName, MemberId, Ts};

const MEMBERS: [&str; 2] = ["mirror-tests-a", "mirror-tests-b"];
/// Per portal: 31 full blocks and a tail of 16.
const EVENTS: u64 = 2_000;
/// Entity ids per portal: 20 events each.
const ENTITIES: u64 = 100;

fn event(member: &str, i: u64) -> NewEvent {
    NewEvent {
        event: EventName::parse("ONCRMACTIVITYUPDATE").unwrap(),
        ts: Ts::from_secs(1_700_000_000 + i).unwrap(),
        member_id: MemberId::parse(member).unwrap(),
        profile: PortalProfile {
            domain: format!("{member}.bitrix24.com"),
            client_endpoint: None,
            server_endpoint: None,
            fixed: Vec::new(),
        },
        event_handler_id: None,
        entity_id: Some(EntityId::parse(&(i % ENTITIES).to_string()).unwrap()),
        data: Some(serde_json::json!({ "FIELDS": { "ID": (i % ENTITIES).to_string() } })),
        auth_rest: Map::new(),
        lifecycle: Lifecycle::Ordinary,
        id: None,
        origin: Origin::default(),
    }
}

fn options() -> JournalOptions {
    JournalOptions {
        cache_bytes: 8 << 20,
        queue: 1024,
        snapshot_every_bytes: 1 << 30,
    }
}

/// Appends events `range` of both portals, 256 in flight; returns how many
/// were stored new and how many were duplicates.
fn append(handle: &JournalHandle, range: std::ops::Range<u64>) -> (u64, u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut stored, mut duplicates) = (0, 0);
        let mut next = range.start;
        while next < range.end {
            let mut set = tokio::task::JoinSet::new();
            for i in next..(next + 128).min(range.end) {
                for member in MEMBERS {
                    let handle = handle.clone();
                    set.spawn(async move { handle.append(event(member, i)).await });
                }
            }
            for outcome in set.join_all().await {
                match outcome {
                    Ok(AppendOutcome::Stored { .. }) => stored += 1,
                    Ok(AppendOutcome::Duplicate { .. }) => duplicates += 1,
                    other => panic!("append: {other:?}"),
                }
            }
            next += 128;
        }
        (stored, duplicates)
    })
}

/// The seqs an `entity_id` query of `member` answers, newest first.
fn entity_seqs(handle: &JournalHandle, member: &str, entity: u64) -> Vec<u64> {
    let portal = handle
        .with_directory(|d| d.resolve(member).cloned())
        .expect("the portal has events");
    let id = EntityId::parse(&entity.to_string()).unwrap();
    let filter = EventFilter {
        entity_id: Some(&id),
        ..EventFilter::default()
    };
    let (end, seqs) = newest_seqs(handle.reader(), &portal, &filter);
    assert_eq!(end, ScanEnd::Exhausted);
    seqs
}

#[test]
fn the_mirror_is_rebuilt_from_sled_and_kept_equal_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), options()).unwrap();
    assert_eq!(append(&journal.handle(), 0..EVENTS), (2 * EVENTS, 0));
    journal.shutdown();

    // Opened again: the mirror is rebuilt from sled, portal by portal.
    let journal = Journal::open(dir.path(), options()).unwrap();
    let handle = journal.handle();
    let store = handle.reader().store().clone();
    wait_ready(&store);
    let (blocks, items, first_file) = store.mirror_matches_sled().unwrap();
    assert_eq!(blocks as u64, 2 * (EVENTS / 64));
    // Each portal's 1,984 sealed postings, in items of at most 2 KiB.
    assert!(items >= 2, "{items} items mirrored");
    let before: Vec<Vec<u64>> = (0..ENTITIES)
        .map(|e| entity_seqs(&handle, MEMBERS[0], e))
        .collect();
    assert!(before.iter().all(|s| s.len() as u64 == EVENTS / ENTITIES));

    // Resends of sealed events rewrite their blocks (the duplicate
    // counters), through to the mirror; enough of them leave more dead
    // bytes than a rebuild lets stand.
    let t = Instant::now();
    let mut rounds = 0;
    loop {
        let (stored, duplicates) = append(&handle, 0..1_000);
        assert_eq!((stored, duplicates), (0, 2_000));
        rounds += 1;
        wait_ready(&store);
        let (blocks, _, file) = store.mirror_matches_sled().unwrap();
        assert_eq!(blocks as u64, 2 * (EVENTS / 64));
        if file != first_file {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{rounds} rounds of rewrites never started a rebuild"
        );
    }
    // The same answers as before the rewrites.
    let after: Vec<Vec<u64>> = (0..ENTITIES)
        .map(|e| entity_seqs(&handle, MEMBERS[0], e))
        .collect();
    assert_eq!(after, before);

    // New events seal blocks whose postings runs are written and merged,
    // and merged runs deleted, through to the mirror.
    assert_eq!(append(&handle, EVENTS..2 * EVENTS), (2 * EVENTS, 0));
    let (blocks, items, _) = store.mirror_matches_sled().unwrap();
    assert_eq!(blocks as u64, 2 * (2 * EVENTS / 64));
    assert!(items >= 2, "{items} items mirrored");
    for (e, seqs) in before.iter().enumerate() {
        let now = entity_seqs(&handle, MEMBERS[0], e as u64);
        assert_eq!(now.len() as u64, 2 * EVENTS / ENTITIES);
        assert!(now.ends_with(seqs), "entity {e}: {now:?} then {seqs:?}");
    }
    journal.shutdown();
}
