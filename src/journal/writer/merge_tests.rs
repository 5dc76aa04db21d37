//! The writer's entity index merges across commits: those the budget
//! leaves due are done by an idle writer, and by a stopping one; a backup
//! copy merges at once.
//!
//! One portal, 16 blocks of entity events appended one commit each. With a
//! budget of one seq, the 16th seal merges its four level-0 runs and leaves
//! the merge of the four level-1 runs due: eager merging would leave one
//! level-2 run.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Map;

use crate::journal::record::{PortalIx, PortalProfile};
use crate::journal::store::codec::BLOCK_SPAN;
use crate::journal::{AppendOutcome, Journal, JournalOptions, Lifecycle, NewEvent, Origin};
use crate::types::{EntityId, EventName, MemberId, Ts};

const MEMBER: &str = "merge-tests-member";
const ENTITIES: u64 = 100;
const EVENTS: u64 = 16 * BLOCK_SPAN;

fn options() -> JournalOptions {
    JournalOptions {
        cache_bytes: 8 << 20,
        queue: 64,
        snapshot_every_bytes: 1 << 30,
    }
}

fn event(i: u64) -> NewEvent {
    NewEvent {
        event: EventName::parse("ONCRMACTIVITYUPDATE").unwrap(),
        ts: Ts::from_secs(1_700_000_000 + i).unwrap(),
        member_id: MemberId::parse(MEMBER).unwrap(),
        profile: PortalProfile {
            domain: "merge-tests.bitrix24.com".into(),
            client_endpoint: None,
            server_endpoint: None,
            fixed: Vec::new(),
        },
        event_handler_id: None,
        entity_id: Some(EntityId::parse(&(i % ENTITIES).to_string()).unwrap()),
        data: None,
        auth_rest: Map::new(),
        lifecycle: Lifecycle::Ordinary,
        id: None,
        origin: Origin::default(),
    }
}

/// Opens the journal in `dir` with a budget of one seq per commit and
/// idle merging as `when_idle` says, and appends the events one commit
/// each.
fn filled(dir: &Path, when_idle: bool) -> (Journal, PortalIx) {
    let journal = Journal::open_with(dir, options(), |w| w.set_merging(1, when_idle)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let handle = journal.handle();
    for i in 0..EVENTS {
        let outcome = rt.block_on(handle.append(event(i))).unwrap();
        assert!(
            matches!(outcome, AppendOutcome::Stored { .. }),
            "{outcome:?}"
        );
    }
    let portal = handle.with_directory(|d| d.resolve(MEMBER).map(|p| p.ix));
    (journal, portal.expect("the portal has events"))
}

/// The levels of `portal`'s live runs, oldest first, and how many dead
/// runs still wait to be deleted.
fn runs(journal: &Journal, portal: PortalIx) -> (Vec<u8>, usize) {
    let handle = journal.handle();
    let store = handle.reader().store();
    let list = store.runs(portal).unwrap().expect("a run list");
    let levels = list
        .live
        .iter()
        .map(|&id| store.run_head(portal, id).unwrap().expect("a head").level)
        .collect();
    (levels, list.dead.len())
}

/// Every entity's events are found through the index, each once.
fn assert_every_posting(journal: &Journal, portal: PortalIx) {
    let handle = journal.handle();
    let reader = handle.reader();
    for entity in 0..ENTITIES {
        let seqs = reader
            .entity_seqs(reader.store(), portal, &entity.to_string(), 1, u64::MAX)
            .unwrap();
        let expected: Vec<u64> = (0..EVENTS)
            .filter(|i| i % ENTITIES == entity)
            .map(|i| i + 1)
            .collect();
        assert_eq!(seqs, expected, "entity {entity}");
    }
}

/// The journal in `dir`, as it was written, holds `portal`'s runs as eager
/// merging leaves them (one level-2 run, none dead) and every posting: a
/// freshly opened writer has no merges due, so it changes nothing first.
fn assert_merged_as_written(dir: &Path, portal: PortalIx) {
    let journal = Journal::open(dir, options()).unwrap();
    assert_eq!(runs(&journal, portal), (vec![2], 0));
    assert_every_posting(&journal, portal);
    journal.shutdown();
}

#[test]
fn an_idle_writer_does_the_merges_the_budget_left() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, portal) = filled(dir.path(), true);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (levels, dead) = runs(&journal, portal);
        if levels == [2] && dead == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "merges still due after 10 s idle: live levels {levels:?}, {dead} dead"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_every_posting(&journal, portal);
    journal.shutdown();
}

#[test]
fn a_stopping_writer_does_the_merges_the_budget_left() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, portal) = filled(dir.path(), false);
    // Not idle-merging: the 16th seal's second merge is still due.
    assert_eq!(runs(&journal, portal).0, [1, 1, 1, 1]);
    assert_every_posting(&journal, portal);
    journal.shutdown();
    assert_merged_as_written(dir.path(), portal);
}

#[test]
fn a_backup_copy_merges_its_runs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, portal) = filled(dir.path(), false);
    assert_eq!(runs(&journal, portal).0, [1, 1, 1, 1]);
    let backups = tempfile::tempdir().unwrap();
    let copy_dir = backups.path().join("copy");
    crate::journal::maintain::backup(&journal.handle(), &copy_dir).unwrap();
    journal.shutdown();
    assert_merged_as_written(&copy_dir, portal);
}
