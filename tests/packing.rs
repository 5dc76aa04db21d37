//! Events packed into sealed blocks and entity chunks (journal::pack):
//! everything the API promises holds across block boundaries — listing,
//! cursors, entity and time filters, duplicates of sealed and unsealed
//! events, events without an entity id — and survives a restart and
//! `verify`.

mod common;

use std::time::Duration;

use common::*;

const T: u64 = 1_700_000_000;
/// Enough events for three sealed blocks of 64 and a tail.
const N: u64 = 200;

fn spec(i: u64) -> EventSpec {
    if i % 20 == 7 {
        // No entity id: deduplicated by a digest of its data instead.
        EventSpec::new(P1, "ONCUSTOMTHING", None, T + i).with("data[VALUE]", &i.to_string())
    } else {
        let name = if i.is_multiple_of(2) {
            "ONCRMACTIVITYADD"
        } else {
            "ONCRMACTIVITYUPDATE"
        };
        EventSpec::new(P1, name, Some(&(i % 9).to_string()), T + i)
    }
}

fn cli(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (status, out) = run_to_exit(&args, &[], Duration::from_secs(120));
    (status.success(), out)
}

/// One stored event as the test expects it back.
#[derive(Clone)]
struct Stored {
    id: String,
    ts: u64,
    entity: Option<String>,
    duplicates: u64,
}

/// Checks every answer the API gives about the stored events (`want[k]` is
/// seq `k + 1`).
async fn check_listing(s: &TestServer, want: &[Stored], what: &str) {
    let n = want.len() as u64;
    let all = s.walk(P1.member, &[], 17).await;
    assert_eq!(
        seqs(&all),
        (1..=n).rev().collect::<Vec<u64>>(),
        "{what}: every event listed once, newest first"
    );
    for e in &all {
        let seq = e["seq"].as_u64().unwrap();
        let w = &want[seq as usize - 1];
        assert_eq!(e["id"], w.id.as_str(), "{what}: id of {seq}");
        assert_eq!(e["ts_unix"], w.ts, "{what}: ts of {seq}");
        assert_eq!(e["duplicates"], w.duplicates, "{what}: duplicates of {seq}");
    }
    // Entity filter: the sealed events come from the entity index, the
    // newest from the tail.
    for entity in ["4", "3"] {
        let got = s.walk(P1.member, &[("entity_id", entity)], 5).await;
        let expected: Vec<u64> = (1..=n)
            .rev()
            .filter(|seq| want[*seq as usize - 1].entity.as_deref() == Some(entity))
            .collect();
        assert!(expected.len() > 5, "{what}: entity {entity} spans pages");
        assert_eq!(seqs(&got), expected, "{what}: entity {entity}");
    }
    // A time window inside the sealed blocks.
    let (window, _) = s
        .page(
            P1.member,
            &[
                ("since", &(T + 100).to_string()),
                ("until", &(T + 109).to_string()),
                ("limit", "50"),
            ],
        )
        .await;
    let expected: Vec<u64> = (1..=n)
        .rev()
        .filter(|seq| (T + 100..=T + 109).contains(&want[*seq as usize - 1].ts))
        .collect();
    assert_eq!(seqs(&window), expected, "{what}: since/until");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_across_sealed_blocks_query_dedup_restart_and_verify() {
    let dir = tempdir();
    let mut s = TestServer::start(dir.path(), &[]);
    let mut want = Vec::new();
    for i in 0..N {
        let ev = spec(i);
        let (id, seq) = s.store(&ev).await;
        assert_eq!(seq, i + 1);
        want.push(Stored {
            id,
            ts: T + i,
            entity: ev.entity.clone(),
            duplicates: 0,
        });
    }
    // Duplicates of events in the first block, a middle block, and the
    // unsealed tail, with and without an entity id.
    for (i, times) in [(3u64, 2u64), (150, 1), (198, 3), (27, 1), (187, 2)] {
        for _ in 0..times {
            let r = s.post_form(&spec(i).form()).await;
            let (id, seq) = expect_duplicate(&r);
            assert_eq!((id.as_str(), seq), (want[i as usize].id.as_str(), i + 1));
        }
        want[i as usize].duplicates += times;
    }
    // Same entity and ts but another event name is not a duplicate.
    let other = EventSpec::new(P1, "ONCRMACTIVITYDELETE", Some("3"), T + 3);
    let (id, seq) = s.store(&other).await;
    assert_eq!(seq, N + 1);
    want.push(Stored {
        id,
        ts: T + 3,
        entity: Some("3".into()),
        duplicates: 0,
    });
    check_listing(&s, &want, "before restart").await;
    let p1 = s.portal_entry(P1.member).await.unwrap();
    assert_eq!(p1["events"], N + 1);
    assert_eq!(p1["duplicates"], 9);

    // Restart: the same answers, and dedup still finds sealed events.
    s.stop();
    let mut s = TestServer::start(dir.path(), &[]);
    check_listing(&s, &want, "after restart").await;
    let r = s.post_form(&spec(10).form()).await;
    assert_eq!(expect_duplicate(&r).1, 11);
    want[10].duplicates += 1;
    s.stop();

    let (ok, out) = cli(&["verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(ok, "verify: {out}");
    assert!(out.contains(&format!("\"events\": {}", N + 1)), "{out}");

    let mut s = TestServer::start(dir.path(), &[]);
    check_listing(&s, &want, "after verify").await;
    s.stop();
}

/// The `ts` of the `i`-th event of [`windows_follow_spans_as_they_fill_and_retire`]:
/// one second apart, but every 50th event is late news about the first
/// ten seconds (an offline record, say), so old times turn up in new spans.
fn window_ts(i: u64) -> u64 {
    if i % 50 == 49 {
        T + i % 10
    } else {
        T + i
    }
}

/// Asserts that the window `since..=until` answers exactly the stored
/// events with seq `first..=last` whose `ts` is in it, newest first.
async fn check_window(s: &TestApp, since: u64, until: u64, first: u64, last: u64, what: &str) {
    let (since_s, until_s) = ((T + since).to_string(), (T + until).to_string());
    let got = s
        .walk(P1.member, &[("since", &since_s), ("until", &until_s)], 100)
        .await;
    let want: Vec<u64> = (first..=last)
        .rev()
        .filter(|seq| (T + since..=T + until).contains(&window_ts(seq - 1)))
        .collect();
    assert!(!want.is_empty(), "{what}: the window holds events");
    assert_eq!(seqs(&got), want, "{what}: window {since}..={until}");
}

/// Time windows read the span summaries the service keeps in memory: a
/// span that was open when they were first read and filled later, spans
/// filled since, and spans retention deleted must all be answered as the
/// stored events say.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn windows_follow_spans_as_they_fill_and_retire() {
    let dir = tempdir();
    let s = spawn_app(
        dir.path(),
        &["--retain-per-portal", "600", "--retain-every", "1"],
    )
    .await;
    let post = |from: u64, to: u64| {
        let s = &s;
        async move {
            for i in from..to {
                let ev = EventSpec::new(P1, "ONCRMACTIVITYADD", Some(&i.to_string()), window_ts(i));
                assert_eq!(s.store(&ev).await.1, i + 1);
            }
        }
    };
    let settle = |count: usize| {
        let s = &s;
        async move {
            for _ in 0..100 {
                let counted = s.portal_entry(P1.member).await.unwrap()["events"].clone();
                if s.count(P1.member).await == count && counted == count {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("retention did not leave {count} events");
        }
    };
    // Spans 0 and 1 full, span 2 open (seqs 513..=520).
    post(0, 520).await;
    check_window(&s, 10, 19, 1, 520, "full span").await;
    check_window(&s, 0, 9, 1, 520, "late news in every span").await;
    check_window(&s, 513, 519, 1, 520, "open span").await;
    // Span 2 fills and span 3 opens; retention keeps seqs 221..=820.
    post(520, 820).await;
    settle(600).await;
    check_window(&s, 513, 519, 221, 820, "the span that was open").await;
    check_window(&s, 250, 259, 221, 820, "a span retention cut into").await;
    check_window(&s, 0, 9, 221, 820, "late news after retention").await;
    // Spans 0 and 1 go whole (seqs 521..=1120 kept).
    post(820, 1120).await;
    settle(600).await;
    check_window(&s, 0, 9, 521, 1120, "late news after spans were deleted").await;
    check_window(&s, 1000, 1019, 521, 1120, "a span filled meanwhile").await;
    let (old, _) = s
        .page(
            P1.member,
            &[("since", &T.to_string()), ("until", &(T + 400).to_string())],
        )
        .await;
    assert!(
        seqs(&old).iter().all(|&seq| seq >= 521),
        "nothing retention deleted comes back: {:?}",
        seqs(&old)
    );
    s.stop().await;
}
