//! Time windows on a portal of 157 spans, whose `ts` is out of seq order:
//! the span index hands the scan each summary that meets the window and
//! the scan resumes below it, so every event in the window is found once,
//! in seq order, wherever the window lies.

use std::ops::ControlFlow;

use serde_json::Map;

use super::read::{newest, EventFilter, ScanEnd};
use super::record::{PortalProfile, PortalRecord};
use super::{AppendOutcome, Journal, JournalOptions, JournalReader, Lifecycle, NewEvent, Origin};
use crate::types::{EventName, MemberId, Ts};

const MEMBER: &str = "read-tests-member";
const T: u64 = 1_700_000_000;
/// 156 full spans of 64 and an open one of 16.
const EVENTS: u64 = 10_000;

/// The `ts` of the event with seq `seq`: up to 10 s out of seq order, as
/// a sender's clock and retries make it.
fn ts_of(seq: u64) -> u64 {
    T + seq + (seq * 37) % 11
}

/// Every seq `newest` hands over for `filter` on `portal`, newest first,
/// and how the scan ended.
pub(super) fn newest_seqs(
    reader: &JournalReader,
    portal: &PortalRecord,
    filter: &EventFilter<'_>,
) -> (ScanEnd, Vec<u64>) {
    let mut seqs = Vec::new();
    let end = newest(reader, portal, filter, u64::MAX, |found| {
        seqs.push(found.seq);
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    (end, seqs)
}

fn event(seq: u64) -> NewEvent {
    NewEvent {
        event: EventName::parse("ONCRMDEALUSERFIELDADD").unwrap(),
        ts: Ts::from_secs(ts_of(seq)).unwrap(),
        member_id: MemberId::parse(MEMBER).unwrap(),
        profile: PortalProfile {
            domain: "read-tests.bitrix24.com".into(),
            client_endpoint: None,
            server_endpoint: None,
            fixed: Vec::new(),
        },
        event_handler_id: None,
        entity_id: None,
        // Events without an entity id are deduplicated by their data.
        data: Some(serde_json::json!({ "N": seq })),
        auth_rest: Map::new(),
        lifecycle: Lifecycle::Ordinary,
        id: None,
        origin: Origin::default(),
    }
}

#[test]
fn windows_find_every_event_wherever_they_lie() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        cache_bytes: 8 << 20,
        queue: 1024,
        snapshot_every_bytes: 1 << 30,
    };
    let journal = Journal::open(dir.path(), options).unwrap();
    let handle = journal.handle();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    // Many appends in flight, so that they share commits.
    rt.block_on(async {
        let mut seq = 1;
        while seq <= EVENTS {
            let mut batch = tokio::task::JoinSet::new();
            for s in seq..(seq + 512).min(EVENTS + 1) {
                let handle = handle.clone();
                batch.spawn(async move { (s, handle.append(event(s)).await) });
            }
            let mut done: Vec<_> = batch.join_all().await;
            done.sort_by_key(|(s, _)| *s);
            for (s, outcome) in done {
                assert!(
                    matches!(outcome, Ok(AppendOutcome::Stored { .. })),
                    "{s}: {outcome:?}"
                );
            }
            seq += 512;
        }
    });
    let portal = handle
        .with_directory(|d| d.resolve(MEMBER).cloned())
        .expect("the portal has events");
    assert_eq!(portal.last_seq(), EVENTS);
    // seq i is not the i-th append to commit: read each event's ts.
    let mut all = Vec::new();
    let end = newest(
        handle.reader(),
        &portal,
        &EventFilter::default(),
        u64::MAX,
        |found| {
            all.push((found.seq, found.record.ts));
            Ok(ControlFlow::Continue(()))
        },
    )
    .unwrap();
    assert_eq!((end, all.len() as u64), (ScanEnd::Exhausted, EVENTS));

    // The oldest events, the first chunk's boundary, the middle, the open
    // span and the tail.
    for centre in [1, 40, 4_096, 4_100, 5_000, 9_990] {
        let (since, until) = (T + centre - 5, T + centre + 5);
        let want: Vec<u64> = all
            .iter()
            .filter(|(_, ts)| (since..=until).contains(ts))
            .map(|(seq, _)| *seq)
            .collect();
        assert!(!want.is_empty(), "test self-check: {centre} matches");
        let filter = EventFilter {
            since: Some(Ts::from_secs(since).unwrap()),
            until: Some(Ts::from_secs(until).unwrap()),
            ..EventFilter::default()
        };
        let (end, got) = newest_seqs(handle.reader(), &portal, &filter);
        assert_eq!(end, ScanEnd::Exhausted, "window at {centre}");
        assert_eq!(got, want, "window at {centre}");
    }
    journal.shutdown();
}
