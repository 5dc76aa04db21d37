//! Persistence across restarts on the same data dir, SIGTERM exit status,
//! the FORMAT file and refusal of unknown formats.

mod common;

use std::time::Duration;

use b24_journal::journal::FORMAT_VERSION;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_persist_seq_continues_and_dedup_survives_restart() {
    let dir = tempdir();
    let mut evs = Vec::new();
    let mut posted = Vec::new();
    {
        let mut s = TestServer::start(dir.path(), &[]);
        for i in 0..5u64 {
            let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some(&format!("{i}")), 1700000000 + i)
                .with("data[FIELDS][TITLE]", &format!("deal {i}"));
            let (id, seq) = s.store(&ev).await;
            assert_eq!(seq, i + 1);
            posted.push((id, seq));
            evs.push(ev);
        }
        // Also an entity-less event, deduplicated by data.
        let nodata = EventSpec::new(P1, "ONAPPTEST", None, 1700000100).with("data[K]", "v");
        let (id, seq) = s.store(&nodata).await;
        assert_eq!(seq, 6);
        posted.push((id, seq));
        evs.push(nodata);
        expect_duplicate(&s.post_form(&evs[0].form()).await);
        s.store(&EventSpec::new(P2, "ONCRMLEADADD", Some("1"), 1700000000))
            .await;
        s.stop();
    }
    let before_restart;
    {
        let mut s = TestServer::start(dir.path(), &[]);
        let events = s.all_events(P1.member).await;
        before_restart = events.clone();
        let mut want: Vec<String> = posted.iter().map(|p| p.0.clone()).collect();
        want.reverse();
        assert_eq!(ids(&events), want, "events survive a restart, same ids");
        assert_eq!(seqs(&events), vec![6, 5, 4, 3, 2, 1]);
        assert_eq!(events[5]["duplicates"], 1, "duplicate counter persisted");
        assert_eq!(events[5]["data"]["FIELDS"]["TITLE"], "deal 0");

        // Dedup across restart (entity-keyed and data-keyed).
        for (ev, (id, seq)) in evs.iter().zip(posted.iter()) {
            let (did, dseq) = expect_duplicate(&s.post_form(&ev.form()).await);
            assert_eq!((&did, dseq), (id, *seq), "dedup after restart");
        }
        // seq continues at last + 1.
        let (_, seq) = s
            .store(&EventSpec::new(
                P1,
                "ONCRMDEALUPDATE",
                Some("new"),
                1700000200,
            ))
            .await;
        assert_eq!(seq, 7);
        let (_, seq) = s
            .store(&EventSpec::new(P2, "ONCRMLEADADD", Some("2"), 1700000000))
            .await;
        assert_eq!(seq, 2);
        let p1 = s.portal_entry(P1.member).await.unwrap();
        assert_eq!(p1["events"], 7);
        assert_eq!(p1["duplicates"], 1 + 6);
        assert_eq!(p1["domain"], P1.domain);
        s.stop();
    }
    {
        // Third start: counters and the new event persisted too; stored
        // fields are unchanged by the restarts.
        let mut s = TestServer::start(dir.path(), &[]);
        let events = s.all_events(P1.member).await;
        assert_eq!(events.len(), 7);
        assert_eq!(events[0]["seq"], 7);
        for old in &before_restart {
            let now = events.iter().find(|e| e["id"] == old["id"]).unwrap();
            for k in [
                "seq",
                "member_id",
                "domain",
                "event",
                "entity_id",
                "ts",
                "ts_unix",
                "received_at",
                "event_handler_id",
                "data",
                "auth",
            ] {
                assert_eq!(now[k], old[k], "field {k} changed across restart");
            }
            assert_eq!(
                now["duplicates"].as_u64().unwrap(),
                old["duplicates"].as_u64().unwrap() + 1
            );
        }
        let (_, seq) = s
            .store(&EventSpec::new(
                P1,
                "ONCRMDEALUPDATE",
                Some("newer"),
                1700000300,
            ))
            .await;
        assert_eq!(seq, 8);
        s.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paging_cursor_still_valid_after_restart() {
    let dir = tempdir();
    let cursor;
    let first_page;
    {
        let mut s = TestServer::start(dir.path(), &[]);
        for i in 0..20u64 {
            s.store(&EventSpec::new(
                P1,
                "ONCRMDEALUPDATE",
                Some(&format!("{i}")),
                1700000000 + i,
            ))
            .await;
        }
        let (page, next) = s.page(P1.member, &[("limit", "5")]).await;
        first_page = ids(&page);
        cursor = next.expect("more pages");
        s.stop();
    }
    let mut s = TestServer::start(dir.path(), &[]);
    let (page, _) = s
        .page(P1.member, &[("limit", "5"), ("cursor", &cursor)])
        .await;
    let second = ids(&page);
    assert!(!second.is_empty());
    assert!(second.iter().all(|id| !first_page.contains(id)));
    let all = s.all_events(P1.member).await;
    let all_ids = ids(&all);
    assert_eq!(&all_ids[..5], &first_page[..]);
    assert_eq!(&all_ids[5..5 + second.len()], &second[..]);
    s.stop();
}

#[test]
fn format_file_is_written_and_unknown_version_refused() {
    let dir = tempdir();
    {
        let mut s = TestServer::start(dir.path(), &[]);
        s.stop();
    }
    let format_path = dir.path().join("FORMAT");
    let content = std::fs::read_to_string(&format_path)
        .unwrap_or_else(|e| panic!("{format_path:?} must exist after a run: {e}"));
    assert!(!content.trim().is_empty(), "FORMAT must hold a version");

    // Restart with the untouched FORMAT works.
    {
        let mut s = TestServer::start(dir.path(), &[]);
        s.stop();
    }
    assert_eq!(std::fs::read_to_string(&format_path).unwrap(), content);

    for bad in ["999999\n", "9999", "not-a-version\n"] {
        std::fs::write(&format_path, bad).unwrap();
        let (status, out) = run_to_exit(&default_args(dir.path()), &[], Duration::from_secs(30));
        assert!(
            !status.success(),
            "FORMAT {bad:?}: must exit non-zero, got {status:?}; output:\n{out}"
        );
        let lower = out.to_lowercase();
        assert!(
            lower.contains("format") && (lower.contains("version") || out.contains(bad.trim())),
            "FORMAT {bad:?}: message must mention the format version; output:\n{out}"
        );
        assert!(
            !out.contains("listening on"),
            "must not start listening with FORMAT {bad:?}"
        );
    }
    // A version from a newer binary is refused as newer.
    let newer = FORMAT_VERSION + 1;
    std::fs::write(&format_path, format!("b24-journal data format {newer}\n")).unwrap();
    let (status, out) = run_to_exit(&default_args(dir.path()), &[], Duration::from_secs(30));
    assert!(!status.success(), "newer FORMAT must exit non-zero");
    assert!(
        out.contains(&format!(
            "format version {newer}, newer than the {FORMAT_VERSION}"
        )),
        "message must name both versions; output:\n{out}"
    );
    std::fs::write(&format_path, "not-a-version\n").unwrap();
    // The refusal did not rewrite the file.
    assert_eq!(
        std::fs::read_to_string(&format_path).unwrap(),
        "not-a-version\n"
    );
}

#[test]
fn sigterm_while_idle_exits_zero() {
    let dir = tempdir();
    let mut s = TestServer::start(dir.path(), &[]);
    let logs = s.stop();
    assert!(logs.contains("listening on http://127.0.0.1:"));
}

/// Posts distinct events from `tasks` concurrent tasks until `stop` is set or
/// the server stops answering; returns every (id, seq) answered with 200.
async fn hammer(
    s: &TestServer,
    tasks: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    max_per_task: usize,
) -> Vec<tokio::task::JoinHandle<Vec<(String, u64)>>> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let client = s.client.clone();
        let url = s.url(EVENTS_PATH);
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..max_per_task {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let body = EventSpec::new(
                    P1,
                    "ONCRMDEALUPDATE",
                    Some(&format!("t{t}-{i}")),
                    1700000000 + i as u64,
                )
                .form();
                let r = match client
                    .post(&url)
                    .header("content-type", FORM_CT)
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(_) => break,
                };
                let status = r.status().as_u16();
                let Ok(text) = r.text().await else { break };
                if status != 200 {
                    // Shutting down: a refusal is fine, a 200 is a promise.
                    assert!(status >= 500, "unexpected {status} {text}");
                    break;
                }
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["status"], "stored");
                acked.push((
                    v["id"].as_str().unwrap().to_string(),
                    v["seq"].as_u64().unwrap(),
                ));
            }
            acked
        }));
    }
    handles
}

async fn check_acked_present(dir: &std::path::Path, acked: &[(String, u64)]) {
    let mut s = TestServer::start(dir, &[]);
    let events = s.all_events(P1.member).await;
    let by_id: std::collections::HashMap<String, u64> = events
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    for (id, seq) in acked {
        assert_eq!(
            by_id.get(id),
            Some(seq),
            "event {id} (seq {seq}) was acknowledged with 200 but is missing after restart"
        );
    }
    // Sequence numbers have no holes: 1..=n.
    let mut sq = seqs(&events);
    sq.sort();
    assert_eq!(sq, (1..=sq.len() as u64).collect::<Vec<_>>());
    // And the journal keeps working.
    let (_, seq) = s
        .store(&EventSpec::new(
            P1,
            "ONCRMDEALUPDATE",
            Some("after"),
            1800000000,
        ))
        .await;
    assert_eq!(seq, sq.len() as u64 + 1);
    s.stop();
}

/// A 200 means the event is on disk: it survives the process being killed
/// without any chance to flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_sigkill() {
    let dir = tempdir();
    let mut s = TestServer::start(dir.path(), &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles = hammer(&s, 8, stop.clone(), 40).await;
    let mut acked = Vec::new();
    for h in handles {
        acked.extend(h.await.unwrap());
    }
    assert_eq!(acked.len(), 8 * 40);
    s.kill9();
    check_acked_present(dir.path(), &acked).await;
}

/// SIGTERM while requests are in flight: exit status 0, and every event
/// answered with 200 is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_zero_and_keeps_every_acknowledged_event() {
    let dir = tempdir();
    let mut s = TestServer::start(dir.path(), &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles = hammer(&s, 8, stop.clone(), 100_000).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waited = tokio::task::block_in_place(|| s.wait_exit());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acked = Vec::new();
    for h in handles {
        acked.extend(h.await.unwrap());
    }
    assert!(
        acked.len() > 8,
        "the load ran before SIGTERM ({} acked); logs tail:\n{}",
        acked.len(),
        tail(&waited, 2000)
    );
    check_acked_present(dir.path(), &acked).await;
}

/// With `--snapshot-every-mb 1` the writer reopens the storage engine every
/// MiB of redo log (so that sled writes a fresh snapshot and a start scans
/// little of its log). Under load: reads (plain and filtered) keep
/// answering 200 through the reopens, and every acknowledged event survives
/// a SIGKILL afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_reopens_under_load_keep_reads_and_lose_nothing() {
    let dir = tempdir();
    let mut s = TestServer::start(dir.path(), &["--snapshot-every-mb", "1"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles = hammer(&s, 8, stop.clone(), 20_000).await;
    let started = std::time::Instant::now();
    let mut pages = 0u64;
    loop {
        // Each asserts 200 and a well-formed page: a plain page, and
        // filtered ones that read an index and then the events it names.
        s.page(P1.member, &[("limit", "50")]).await;
        let entity = format!("t{}-{}", pages % 8, pages % 50);
        s.page(P1.member, &[("entity_id", entity.as_str())]).await;
        s.page(P1.member, &[("since", "1700000010"), ("limit", "20")])
            .await;
        pages += 1;
        if s.logs().matches("sled writes a fresh snapshot").count() >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no two snapshot reopens within 120 s; logs tail:\n{}",
            tail(&s.logs(), 2000)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acked = Vec::new();
    for h in handles {
        acked.extend(h.await.unwrap());
    }
    assert!(pages > 0 && !acked.is_empty());
    s.kill9();
    check_acked_present(dir.path(), &acked).await;
}
