//! Read API: ordering, limit, cursor paging (also under concurrent writes),
//! every filter and their combinations, portal lookup by domain.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

const T: u64 = 1_700_000_000;

#[derive(Clone, Debug)]
struct Row {
    id: String,
    seq: u64,
    event: &'static str,
    entity: Option<&'static str>,
    ts: u64,
}

/// The shared filter data set: ts deliberately out of seq order.
const DATA: &[(&str, Option<&str>, u64)] = &[
    ("ONCRMDEALADD", Some("1"), 1000),
    ("ONCRMDEALUPDATE", Some("1"), 1010),
    ("ONCRMDEALUPDATE", Some("2"), 990),
    ("ONCRMLEADADD", Some("7"), 1020),
    ("ONCRMDEALUPDATE", Some("1"), 1020),
    ("ONCRMDEALDELETE", Some("2"), 1030),
    ("ONCRMLEADADD", Some("8"), 1005),
    ("ONCRMDEALUPDATE", Some("3"), 1010),
    ("ONCRMDEALUPDATE", Some("1"), 1000),
    ("ONCRMCONTACTADD", None, 1020),
    ("ONCRMDEALUPDATE", Some("2"), 1010),
    ("ONCRMLEADADD", Some("1"), 1010),
];

async fn load(s: &Client) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, &(event, entity, off)) in DATA.iter().enumerate() {
        let mut ev = EventSpec::new(P1, event, entity, T + off);
        if entity.is_none() {
            ev = ev.with("data[N]", &i.to_string());
        }
        let (id, seq) = s.store(&ev).await;
        rows.push(Row {
            id,
            seq,
            event,
            entity,
            ts: T + off,
        });
        // Noise on another portal with the same shapes.
        s.store(&EventSpec::new(P2, event, entity, T + off).with("data[I]", &i.to_string()))
            .await;
    }
    rows
}

#[derive(Default, Clone)]
struct Filter {
    events: Option<Vec<&'static str>>,
    entity: Option<&'static str>,
    since: Option<u64>,
    until: Option<u64>,
}

fn expected(rows: &[Row], f: &Filter) -> Vec<String> {
    let mut m: Vec<&Row> = rows
        .iter()
        .filter(|r| f.events.as_ref().is_none_or(|es| es.contains(&r.event)))
        .filter(|r| f.entity.is_none_or(|e| r.entity == Some(e)))
        .filter(|r| f.since.is_none_or(|s| r.ts >= s))
        .filter(|r| f.until.is_none_or(|u| r.ts <= u))
        .collect();
    // Always newest first by seq, whatever the filter.
    m.sort_by_key(|r| std::cmp::Reverse(r.seq));
    m.into_iter().map(|r| r.id.clone()).collect()
}

async fn check(s: &Client, portal: &str, rows: &[Row], q: &[(&str, &str)], f: &Filter) {
    let want = expected(rows, f);
    let mut q1000 = q.to_vec();
    q1000.push(("limit", "1000"));
    let (page, next) = s.page(portal, &q1000).await;
    assert_eq!(ids(&page), want, "query {q:?} (single page)");
    assert!(
        next.is_none(),
        "query {q:?}: everything fit, next_cursor must be null"
    );
    for lim in [1, 2, 5] {
        let walked = s.walk(portal, q, lim).await;
        assert_eq!(ids(&walked), want, "query {q:?} walked with limit {lim}");
    }
    for e in &page {
        assert_eq!(e["member_id"], P1.member, "no other portal's events");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn newest_first_limit_and_default_limit() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let mut posted = Vec::new();
    for i in 0..60u64 {
        // ts decreasing: the default order must still be by seq.
        let (id, seq) = s
            .store(&EventSpec::new(
                P1,
                "ONCRMDEALUPDATE",
                Some(&i.to_string()),
                T + 1000 - i,
            ))
            .await;
        posted.push((id, seq));
    }
    posted.reverse();
    let want: Vec<String> = posted.iter().map(|p| p.0.clone()).collect();

    let (page, next) = s.page(P1.member, &[("limit", "5")]).await;
    assert_eq!(ids(&page), want[..5].to_vec());
    assert!(
        next.is_some(),
        "more events remain: next_cursor must be set"
    );

    // Default limit is 50: never more than 50, and walking without a limit
    // parameter visits all 60 exactly once.
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let q: Vec<(&str, &str)> = match &cursor {
            Some(c) => vec![("cursor", c.as_str())],
            None => vec![],
        };
        let (page, next) = s.page(P1.member, &q).await;
        assert!(page.len() <= 50, "default page of {} events", page.len());
        all.extend(page);
        cursor = next;
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none());
    assert_eq!(ids(&all), want);
    let sq = seqs(&all);
    assert!(sq.windows(2).all(|w| w[0] > w[1]), "seq descending: {sq:?}");

    let (page, next) = s.page(P1.member, &[("limit", "1000")]).await;
    assert_eq!(page.len(), 60);
    assert!(next.is_none());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_and_entity_filters() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let rows = load(&s).await;
    let f = |events: Option<Vec<&'static str>>, entity: Option<&'static str>| Filter {
        events,
        entity,
        ..Default::default()
    };
    check(
        &s,
        P1.member,
        &rows,
        &[("event", "oncrmdealupdate")],
        &f(Some(vec!["ONCRMDEALUPDATE"]), None),
    )
    .await;
    check(
        &s,
        P1.member,
        &rows,
        &[("event", "ONCRMDEALUPDATE,onCrmLeadAdd")],
        &f(Some(vec!["ONCRMDEALUPDATE", "ONCRMLEADADD"]), None),
    )
    .await;
    check(
        &s,
        P1.member,
        &rows,
        &[("event", "OnCrmDealAdd,ONCRMDEALDELETE,ONCRMCONTACTADD")],
        &f(
            Some(vec!["ONCRMDEALADD", "ONCRMDEALDELETE", "ONCRMCONTACTADD"]),
            None,
        ),
    )
    .await;
    check(
        &s,
        P1.member,
        &rows,
        &[("event", "ONCRMNOTHING")],
        &f(Some(vec![]), None),
    )
    .await;
    check(
        &s,
        P1.member,
        &rows,
        &[("entity_id", "1")],
        &f(None, Some("1")),
    )
    .await;
    check(
        &s,
        P1.member,
        &rows,
        &[("entity_id", "2")],
        &f(None, Some("2")),
    )
    .await;
    check(
        &s,
        P1.member,
        &rows,
        &[("entity_id", "999")],
        &f(None, Some("999")),
    )
    .await;
    check(
        &s,
        P1.member,
        &rows,
        &[
            ("entity_id", "1"),
            ("event", "oncrmdealupdate,ONCRMLEADADD"),
        ],
        &f(Some(vec!["ONCRMDEALUPDATE", "ONCRMLEADADD"]), Some("1")),
    )
    .await;
    check(
        &s,
        P1.member,
        &rows,
        &[("event", "ONCRMDEALDELETE"), ("entity_id", "2")],
        &f(Some(vec!["ONCRMDEALDELETE"]), Some("2")),
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn since_until_unix_and_rfc3339_inclusive_in_seq_order() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let rows = load(&s).await;
    let u = |x: u64| (T + x).to_string();
    let r = |x: u64| rfc3339((T + x) as i64);
    // RFC 3339 with a +03:00 offset for T+1010.
    let off = {
        let t = time::OffsetDateTime::from_unix_timestamp((T + 1010) as i64)
            .unwrap()
            .to_offset(time::macros::offset!(+3));
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    assert!(off.ends_with("+03:00"), "{off}");

    let ts = |since: Option<u64>, until: Option<u64>| Filter {
        since: since.map(|x| T + x),
        until: until.map(|x| T + x),
        ..Default::default()
    };
    let cases: Vec<(Vec<(&str, String)>, Filter)> = vec![
        (vec![("since", u(1010))], ts(Some(1010), None)),
        (vec![("until", u(1010))], ts(None, Some(1010))),
        (
            vec![("since", u(1005)), ("until", u(1020))],
            ts(Some(1005), Some(1020)),
        ),
        (
            vec![("since", u(1010)), ("until", u(1010))],
            ts(Some(1010), Some(1010)),
        ),
        (
            vec![("since", u(1021)), ("until", u(1029))],
            ts(Some(1021), Some(1029)),
        ),
        (vec![("since", r(1010))], ts(Some(1010), None)),
        (vec![("until", r(1005))], ts(None, Some(1005))),
        (
            vec![("since", r(1000)), ("until", r(1010))],
            ts(Some(1000), Some(1010)),
        ),
        (vec![("since", off.clone())], ts(Some(1010), None)),
        (
            vec![("since", r(1000)), ("until", u(1010))],
            ts(Some(1000), Some(1010)),
        ),
        (
            vec![("since", "0".to_string())],
            Filter {
                since: Some(0),
                ..Default::default()
            },
        ),
    ];
    for (q, f) in cases {
        let qr: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        check(&s, P1.member, &rows, &qr, &f).await;
    }
    // since after until: a 400 naming the bounds.
    let r = s
        .get(
            &format!("/v1/portals/{}/events", P1.member),
            &[("since", &u(1020)), ("until", &u(1000))],
        )
        .await;
    assert_eq!(r.status, 400, "since > until: {}", r.text);
    let msg = r.error();
    assert!(msg.contains("since") && msg.contains("until"), "{msg}");
    // Sanity: ts really is out of seq order in this data set, so the checks
    // above prove the order is by seq.
    let mut by_seq: Vec<&Row> = rows.iter().collect();
    by_seq.sort_by_key(|r| r.seq);
    assert!(by_seq.windows(2).any(|w| w[0].ts > w[1].ts));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn combined_filters() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let rows = load(&s).await;
    let a = (T + 1000).to_string();
    let b = (T + 1020).to_string();
    let br = rfc3339((T + 1020) as i64);
    check(
        &s,
        P1.member,
        &rows,
        &[("event", "oncrmdealupdate"), ("since", &a), ("until", &b)],
        &Filter {
            events: Some(vec!["ONCRMDEALUPDATE"]),
            since: Some(T + 1000),
            until: Some(T + 1020),
            ..Default::default()
        },
    )
    .await;
    check(
        &s,
        P1.member,
        &rows,
        &[("entity_id", "1"), ("since", &a), ("until", &br)],
        &Filter {
            entity: Some("1"),
            since: Some(T + 1000),
            until: Some(T + 1020),
            ..Default::default()
        },
    )
    .await;
    check(
        &s,
        P1.member,
        &rows,
        &[
            ("event", "ONCRMDEALUPDATE,oncrmdealadd"),
            ("entity_id", "1"),
            ("until", &(T + 1010).to_string()),
        ],
        &Filter {
            events: Some(vec!["ONCRMDEALUPDATE", "ONCRMDEALADD"]),
            entity: Some("1"),
            until: Some(T + 1010),
            ..Default::default()
        },
    )
    .await;
    check(
        &s,
        P1.member,
        &rows,
        &[
            ("event", "ONCRMLEADADD"),
            ("since", &(T + 1006).to_string()),
        ],
        &Filter {
            events: Some(vec!["ONCRMLEADADD"]),
            since: Some(T + 1006),
            ..Default::default()
        },
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn portal_by_domain_and_unknown_portal() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let rows = load(&s).await;
    let by_member = s.all_events(P1.member).await;
    let by_domain = s.all_events(P1.domain).await;
    assert_eq!(ids(&by_member), ids(&by_domain));
    assert_eq!(by_member.len(), rows.len());
    let p2 = s.all_events(P2.domain).await;
    assert_eq!(p2.len(), DATA.len());
    assert!(p2
        .iter()
        .all(|e| e["member_id"] == P2.member && e["domain"] == P2.domain));
    check(
        &s,
        P1.domain,
        &rows,
        &[("event", "oncrmleadadd")],
        &Filter {
            events: Some(vec!["ONCRMLEADADD"]),
            ..Default::default()
        },
    )
    .await;
    for unknown in [
        "unknown.bitrix24.com",
        "ffffffffffffffffffffffffffffffff",
        "some-domain.bitrix24",
    ] {
        let r = s.get(&format!("/v1/portals/{unknown}/events"), &[]).await;
        assert_eq!(r.status, 404, "{unknown}: {}", r.text);
        r.error();
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sparse_filters_page_through_every_match_once() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let mut rows = Vec::new();
    for i in 0..300u64 {
        let event = if i % 37 == 5 {
            "ONCRMLEADADD"
        } else {
            "ONCRMDEALUPDATE"
        };
        let entity = if i % 41 == 3 { "target" } else { "other" };
        let mut ev = EventSpec::new(P1, event, Some(entity), T + (i * 7919) % 500);
        ev.extra.push(("data[I]".into(), i.to_string()));
        let (id, seq) = s.store(&ev).await;
        rows.push(Row {
            id,
            seq,
            event,
            entity: Some(entity),
            ts: T + (i * 7919) % 500,
        });
    }
    let mut seen = HashSet::new();
    for r in &rows {
        assert!(
            seen.insert(r.id.clone()),
            "all posts stored, not deduplicated"
        );
    }
    let cases: Vec<(Vec<(&str, String)>, Filter)> = vec![
        (
            vec![("event", "oncrmleadadd".into())],
            Filter {
                events: Some(vec!["ONCRMLEADADD"]),
                ..Default::default()
            },
        ),
        (
            vec![("entity_id", "target".into())],
            Filter {
                entity: Some("target"),
                ..Default::default()
            },
        ),
        (
            vec![("since", (T + 495).to_string())],
            Filter {
                since: Some(T + 495),
                ..Default::default()
            },
        ),
        (
            vec![
                ("since", (T + 100).to_string()),
                ("until", rfc3339((T + 130) as i64)),
                ("event", "ONCRMDEALUPDATE".into()),
            ],
            Filter {
                events: Some(vec!["ONCRMDEALUPDATE"]),
                since: Some(T + 100),
                until: Some(T + 130),
                ..Default::default()
            },
        ),
    ];
    for (q, f) in cases {
        let qr: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let want = expected(&rows, &f);
        assert!(!want.is_empty(), "test self-check: {q:?} matches something");
        for lim in [3usize, 7] {
            let got = s.walk(P1.member, &qr, lim).await;
            assert_eq!(ids(&got), want, "{q:?} limit {lim}");
        }
    }
    let all = s.walk(P1.member, &[], 7).await;
    assert_eq!(all.len(), 300);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursor_walk_is_complete_while_events_are_posted_concurrently() {
    const PRE: u64 = 150;
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let mut pre_ids = Vec::new();
    for i in 0..PRE {
        let (id, _) = s
            .store(&EventSpec::new(
                P1,
                "ONCRMDEALUPDATE",
                Some(&format!("pre{i}")),
                T + i,
            ))
            .await;
        pre_ids.push(id);
    }

    let done = Arc::new(AtomicBool::new(false));
    let client = s.client.clone();
    let url = s.url(EVENTS_PATH);
    let d = done.clone();
    let writer = tokio::spawn(async move {
        let mut posted = Vec::new();
        let mut i = 0u64;
        while !d.load(Ordering::SeqCst) || posted.len() < 20 {
            let body = EventSpec::new(
                P1,
                "ONCRMDEALUPDATE",
                Some(&format!("new{i}")),
                T + 10_000 + i,
            )
            .form();
            let v = post_ok(&client, &url, body).await;
            assert_eq!(v["status"], "stored");
            posted.push(v["id"].as_str().unwrap().to_string());
            i += 1;
        }
        posted
    });

    // Walk slowly enough that the writer interleaves with every page.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q: Vec<(&str, &str)> = vec![("limit", "7")];
        if let Some(c) = &cursor {
            q.push(("cursor", c.as_str()));
        }
        let (page, next) = s.page(P1.member, &q).await;
        assert!(page.len() <= 7);
        walked.extend(page);
        pages += 1;
        assert!(pages < 10_000);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    done.store(true, Ordering::SeqCst);
    let posted = writer.await.unwrap();

    let walked_ids = ids(&walked);
    assert_unique(&walked_ids);
    let set: HashSet<&String> = walked_ids.iter().collect();
    for id in &pre_ids {
        assert!(
            set.contains(id),
            "pre-existing event {id} missed by the walk"
        );
    }
    let sq = seqs(&walked);
    assert!(
        sq.windows(2).all(|w| w[0] > w[1]),
        "walk must be strictly seq-descending"
    );
    // Everything posted meanwhile is there afterwards, exactly once.
    let all = s.all_events(P1.member).await;
    let all_ids = ids(&all);
    assert_unique(&all_ids);
    assert_eq!(all_ids.len(), PRE as usize + posted.len());
    let all_set: HashSet<&String> = all_ids.iter().collect();
    for id in posted.iter().chain(pre_ids.iter()) {
        assert!(all_set.contains(id));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn time_range_walk_is_complete_while_events_are_posted_concurrently() {
    const PRE: u64 = 150;
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    // Pre-existing events with scattered, repeating ts.
    let mut pre = Vec::new();
    for i in 0..PRE {
        let ts = T + (i * 7) % 100;
        let (id, seq) = s
            .store(&EventSpec::new(
                P1,
                "ONCRMDEALUPDATE",
                Some(&format!("pre{i}")),
                ts,
            ))
            .await;
        pre.push((id, seq, ts));
    }
    let (since, until) = (T + 10, T + 89);

    let done = Arc::new(AtomicBool::new(false));
    let client = s.client.clone();
    let url = s.url(EVENTS_PATH);
    let d = done.clone();
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        while !d.load(Ordering::SeqCst) || n < 20 {
            // New events land everywhere in the range, also behind the cursor.
            let ts = T + (n * 13) % 100;
            let body = EventSpec::new(P1, "ONCRMDEALUPDATE", Some(&format!("new{n}")), ts).form();
            post_ok(&client, &url, body).await;
            n += 1;
        }
        n
    });

    let since_s = since.to_string();
    let until_s = rfc3339(until as i64);
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut q: Vec<(&str, &str)> =
            vec![("since", &since_s), ("until", &until_s), ("limit", "7")];
        if let Some(c) = &cursor {
            q.push(("cursor", c.as_str()));
        }
        let (page, next) = s.page(P1.member, &q).await;
        assert!(page.len() <= 7);
        walked.extend(page);
        match next {
            Some(c) => cursor = Some(c),
            None => {
                cursor = None;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(cursor.is_none(), "walk did not end");
    done.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    let walked_ids = ids(&walked);
    assert_unique(&walked_ids);
    let set: HashSet<&String> = walked_ids.iter().collect();
    for (id, _, ts) in &pre {
        if (since..=until).contains(ts) {
            assert!(set.contains(id), "pre-existing event {id} (ts {ts}) missed");
        }
    }
    let keys: Vec<(u64, u64)> = walked
        .iter()
        .map(|e| (e["ts_unix"].as_u64().unwrap(), e["seq"].as_u64().unwrap()))
        .collect();
    for k in &keys {
        assert!(
            (since..=until).contains(&k.0),
            "ts {} outside the range",
            k.0
        );
    }
    assert!(
        keys.windows(2).all(|w| w[0].1 > w[1].1),
        "walk must be strictly descending in seq: {keys:?}"
    );
    s.stop().await;
}

/// More events than one page may scan: a rare filter yields short (even
/// empty) pages with a non-null cursor, and walking on finds every match.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rare_matches_beyond_the_scan_budget_are_all_found() {
    const N: usize = 21_000;
    const TASKS: usize = 16;
    let dir = tempdir();
    let s = spawn_app_with(default_args(dir.path())).await;
    let rare_at = [0usize, 1, 10_500, N - 1];
    let started = std::time::Instant::now();
    // Post in order-insensitive parallel batches; the rare ones are posted
    // alone at their moment so their seq position is what we intend.
    let mut rare_ids = Vec::new();
    let mut prev = 0usize;
    for &r in &rare_at {
        // Common events before this rare one.
        let count = r - prev;
        if count > 0 {
            let mut hs = Vec::new();
            for t in 0..TASKS {
                let client = s.client.clone();
                let url = s.url(EVENTS_PATH);
                let (lo, hi) = (prev + count * t / TASKS, prev + count * (t + 1) / TASKS);
                hs.push(tokio::spawn(async move {
                    for i in lo..hi {
                        let body = EventSpec::new(
                            P1,
                            "ONCRMDEALUPDATE",
                            Some(&format!("c{i}")),
                            T + (i as u64 % 1000),
                        )
                        .form();
                        post_ok(&client, &url, body).await;
                    }
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
        }
        let (id, _) = s
            .store(&EventSpec::new(
                P1,
                "ONCRMLEADADD",
                Some(&format!("r{r}")),
                T + (r as u64 % 1000),
            ))
            .await;
        rare_ids.push(id);
        prev = r + 1;
    }
    eprintln!("posted {N} events in {:?}", started.elapsed());
    rare_ids.reverse();

    for lim in ["2", "50"] {
        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let mut q = vec![("event", "oncrmleadadd"), ("limit", lim)];
            if let Some(c) = &cursor {
                q.push(("cursor", c.as_str()));
            }
            let (page, next) = s.page(P1.member, &q).await;
            got.extend(page);
            cursor = next;
            if cursor.is_none() {
                break;
            }
        }
        assert!(cursor.is_none(), "walk did not end");
        assert_eq!(ids(&got), rare_ids, "event filter, limit {lim}");
    }
    // The same with a time range (which reads block summaries first).
    let since = T.to_string();
    let got = s
        .walk(
            P1.member,
            &[("event", "ONCRMLEADADD"), ("since", &since)],
            3,
        )
        .await;
    let mut want: Vec<(u64, u64, String)> = got
        .iter()
        .map(|e| {
            (
                e["ts_unix"].as_u64().unwrap(),
                e["seq"].as_u64().unwrap(),
                e["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), rare_at.len());
    want.sort_by_key(|w| std::cmp::Reverse(w.1));
    assert_eq!(
        ids(&got),
        want.into_iter().map(|w| w.2).collect::<Vec<_>>(),
        "seq order"
    );
    let mut a = ids(&got);
    a.sort();
    let mut b = rare_ids.clone();
    b.sort();
    assert_eq!(a, b);
    // Unfiltered: every event exactly once.
    let all = s.walk(P1.member, &[], 1000).await;
    assert_eq!(all.len(), N);
    assert_unique(&ids(&all));
    s.stop().await;
}

/// A time range over more events than one summary block (256 seqs): blocks
/// whose ts range misses the query are skipped, an out-of-order event in an
/// early block is still found, and a walk returns exactly the matches in seq
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn time_range_spanning_many_summary_blocks() {
    const N: u64 = 1100;
    let dir = tempdir();
    let s = spawn_app_with(default_args(dir.path())).await;
    let mut rows: Vec<(String, u64, u64)> = Vec::new();
    for i in 0..N {
        // ts follows seq, except a few events far from their neighbours.
        let ts = match i {
            5 => T + 620,
            1050 => T + 3,
            700 => T + 10_000,
            _ => T + i,
        };
        let (id, seq) = s
            .store(&EventSpec::new(
                P1,
                "ONCRMACTIVITYUPDATE",
                Some(&i.to_string()),
                ts,
            ))
            .await;
        rows.push((id, seq, ts));
    }
    for (since, until) in [
        (600, 650),
        (0, 4),
        (9_999, 10_001),
        (2_000, 3_000),
        (0, 2_000),
    ] {
        let (lo, hi) = (T + since, T + until);
        let mut want: Vec<&(String, u64, u64)> =
            rows.iter().filter(|r| (lo..=hi).contains(&r.2)).collect();
        want.sort_by_key(|r| std::cmp::Reverse(r.1));
        let want: Vec<String> = want.into_iter().map(|r| r.0.clone()).collect();
        let (lo_s, hi_s) = (lo.to_string(), hi.to_string());
        for limit in [7, 1000] {
            let got = s
                .walk(P1.member, &[("since", &lo_s), ("until", &hi_s)], limit)
                .await;
            assert_eq!(ids(&got), want, "since {since} until {until} limit {limit}");
        }
    }
    s.stop().await;
}

/// Event objects are written as JSON text, not through serde: strings that
/// need escaping come back exactly as sent, in a body that is valid JSON,
/// in pages and in long-poll answers (the stream sends the same text).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strings_that_need_escaping_come_back_exactly() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let awkward = "q\"uote \\ back/slash \u{1} ctl \t tab — тест 😀 </script> \u{2028}";
    let entity = "id \"1\" \\ тест";
    let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some(entity), 1700000000)
        .with("data[FIELDS][TITLE]", awkward)
        .with("data[FIELDS][LIST][0]", "x")
        .with("auth[note]", awkward);
    let (id, _) = s.store(&ev).await;
    let check = |e: &serde_json::Value| {
        assert_eq!(e["id"], id.as_str());
        assert_eq!(e["entity_id"], entity);
        assert_eq!(e["data"], expected_data(&ev));
        assert_eq!(e["data"]["FIELDS"]["TITLE"], awkward);
        assert_eq!(e["auth"]["note"], awkward);
        assert_eq!(e["auth"]["member_id"], P1.member);
    };
    // A page (`json()` panics unless the body is valid JSON).
    let r = s
        .get(&format!("/v1/portals/{}/events", P1.member), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    check(&r.json()["events"][0]);
    // A long-poll answer from the start.
    let r = s
        .get(
            &format!("/v1/portals/{}/events", P1.member),
            &[("wait", "1"), ("cursor", &first_cursor())],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    check(&r.json()["events"][0]);
    s.stop().await;
}

/// The cursor that starts before the first event.
fn first_cursor() -> String {
    use base64::Engine as _;
    let mut b = vec![1u8, b's'];
    b.extend_from_slice(&0u64.to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
