//! Deduplication: key = (member_id, event, entity id, ts), or canonical data
//! when there is no entity id; duplicates answer with the original id/seq
//! and bump its counter; exactly-once under heavy concurrency.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_returns_original_id_and_seq_and_counts() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("100"), 1700000000);
    let (id, seq) = s.store(&ev).await;
    assert_eq!(seq, 1);
    for n in 1..=3 {
        let r = s.post_form(&ev.form()).await;
        let (did, dseq) = expect_duplicate(&r);
        assert_eq!(did, id, "duplicate #{n} must carry the original id");
        assert_eq!(dseq, seq, "duplicate #{n} must carry the original seq");
        let events = s.all_events(P1.member).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["duplicates"], n, "counter after {n} duplicates");
    }
    // Duplicates do not consume sequence numbers.
    let (_, seq2) = s
        .store(&EventSpec::new(
            P1,
            "ONCRMDEALUPDATE",
            Some("101"),
            1700000000,
        ))
        .await;
    assert_eq!(seq2, 2);
    let p1 = s.portal_entry(P1.member).await.expect("P1 listed");
    assert_eq!(p1["events"], 2);
    assert_eq!(p1["duplicates"], 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_key_is_member_event_entity_and_ts() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let orig = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("200"), 1700000000)
        .with("data[FIELDS][TITLE]", "first");
    let (id, seq) = s.store(&orig).await;

    // Same key, different other data, other encodings, other event-name case,
    // other auth set, other handler id: all duplicates of the original.
    let mut same_key = Vec::new();
    same_key.push((
        "different data",
        EventSpec::new(P1, "ONCRMDEALUPDATE", Some("200"), 1700000000)
            .with("data[FIELDS][TITLE]", "second")
            .form(),
        FORM_CT,
    ));
    same_key.push((
        "raw brackets",
        orig.form_styled(Style::RawBrackets),
        FORM_CT,
    ));
    let mut lower = orig.clone();
    lower.event = "onCrmDealUpdate".into();
    same_key.push(("lower-case event", lower.form(), FORM_CT));
    let mut short = orig.clone();
    short.full_auth = false;
    short.handler_id = None;
    same_key.push(("short auth, no handler id", short.form(), FORM_CT));
    same_key.push((
        "JSON body",
        serde_json::to_string(&orig.json()).unwrap(),
        JSON_CT,
    ));
    let mut int_ts = orig.json();
    int_ts["ts"] = json!(1700000000);
    same_key.push((
        "JSON body, integer ts",
        serde_json::to_string(&int_ts).unwrap(),
        JSON_CT,
    ));
    for (what, body, ct) in &same_key {
        let r = s.post_raw_ct(Some(ct), body.clone()).await;
        let (did, dseq) = expect_duplicate(&r);
        assert_eq!((did.as_str(), dseq), (id.as_str(), seq), "{what}");
    }

    // Any key component differing: a new event.
    let mut new_events = vec![
        (
            "other ts",
            EventSpec::new(P1, "ONCRMDEALUPDATE", Some("200"), 1700000001),
        ),
        (
            "other event",
            EventSpec::new(P1, "ONCRMDEALADD", Some("200"), 1700000000),
        ),
        (
            "other entity",
            EventSpec::new(P1, "ONCRMDEALUPDATE", Some("201"), 1700000000),
        ),
        (
            "other portal",
            EventSpec::new(P2, "ONCRMDEALUPDATE", Some("200"), 1700000000),
        ),
    ];
    // Entity id via FIELDS_AFTER is a different event type here, but the
    // same (event, ts) with FIELDS_AFTER 200 vs FIELDS 200 shares the key.
    new_events.push((
        "task event",
        EventSpec::new(P1, "ONTASKUPDATE", None, 1700000000).with("data[FIELDS_AFTER][ID]", "200"),
    ));
    for (what, ev) in &new_events {
        let r = s.post_form(&ev.form()).await;
        let (nid, _) = expect_stored(&r);
        assert_ne!(nid, id, "{what}");
    }
    let same_task = EventSpec::new(P1, "ONTASKUPDATE", None, 1700000000)
        .with("data[FIELDS_BEFORE]", "undefined")
        .with("data[FIELDS_AFTER][ID]", "200");
    expect_duplicate(&s.post_form(&same_task.form()).await);

    let p1 = s.all_events(P1.member).await;
    assert_eq!(p1.len(), 5, "original + other ts/event/entity/task");
    let orig_ev = p1.iter().find(|e| e["id"] == id.as_str()).unwrap();
    assert_eq!(orig_ev["duplicates"], same_key.len());
    assert_eq!(
        orig_ev["data"]["FIELDS"]["TITLE"], "first",
        "a duplicate must not overwrite the original"
    );
    let p2 = s.all_events(P2.member).await;
    assert_eq!(p2.len(), 1);
    assert_eq!(p2[0]["seq"], 1);
    assert_eq!(p2[0]["duplicates"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_entity_id_dedup_uses_canonical_data() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;

    // No data at all.
    let nodata = EventSpec::new(P1, "ONAPPTEST", None, 1700000000);
    let (nid, _) = s.store(&nodata).await;
    let (did, _) = expect_duplicate(&s.post_form(&nodata.form()).await);
    assert_eq!(did, nid);

    // Same data, keys in another order (form and JSON): duplicate.
    let ab = EventSpec::new(P1, "ONIMCONNECTORSTATUS", None, 1700000000)
        .with("data[LINE]", "3")
        .with("data[CONNECTOR]", "telegrambot")
        .with("data[OPTS][X]", "1")
        .with("data[OPTS][Y]", "2");
    let (abid, _) = s.store(&ab).await;
    let ba = EventSpec::new(P1, "ONIMCONNECTORSTATUS", None, 1700000000)
        .with("data[OPTS][Y]", "2")
        .with("data[CONNECTOR]", "telegrambot")
        .with("data[OPTS][X]", "1")
        .with("data[LINE]", "3");
    let (did, _) = expect_duplicate(&s.post_form(&ba.form()).await);
    assert_eq!(did, abid, "reordered form keys");
    let json_body = json!({
        "event": "ONIMCONNECTORSTATUS",
        "ts": "1700000000",
        "data": {"OPTS": {"Y": "2", "X": "1"}, "LINE": "3", "CONNECTOR": "telegrambot"},
        "auth": short_auth_json(P1),
    });
    let (did, _) = expect_duplicate(&s.post_json(&json_body).await);
    assert_eq!(did, abid, "reordered JSON keys");

    // Different data: new events.
    let other = EventSpec::new(P1, "ONIMCONNECTORSTATUS", None, 1700000000)
        .with("data[LINE]", "4")
        .with("data[CONNECTOR]", "telegrambot")
        .with("data[OPTS][X]", "1")
        .with("data[OPTS][Y]", "2");
    let (oid, _) = s.store(&other).await;
    assert_ne!(oid, abid);
    let subset = EventSpec::new(P1, "ONIMCONNECTORSTATUS", None, 1700000000)
        .with("data[LINE]", "3")
        .with("data[CONNECTOR]", "telegrambot");
    s.store(&subset).await;
    // Data present vs absent differ.
    let withdata = EventSpec::new(P1, "ONAPPTEST", None, 1700000000).with("data[K]", "v");
    s.store(&withdata).await;

    let events = s.all_events(P1.member).await;
    assert_eq!(events.len(), 5);
    let dups: HashMap<String, Value> = events
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["duplicates"].clone(),
            )
        })
        .collect();
    assert_eq!(dups[&nid], 1);
    assert_eq!(dups[&abid], 2);
    assert_eq!(dups[&oid], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_store_each_event_exactly_once() {
    const TASKS: usize = 32;
    const EVENTS: usize = 50;
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let bodies: Vec<String> = (0..EVENTS)
        .map(|i| {
            // Mix entity-keyed and data-keyed events.
            if i % 5 == 4 {
                EventSpec::new(P1, "ONAPPTEST", None, 1700000000 + (i as u64 % 3))
                    .with("data[N]", &i.to_string())
                    .form()
            } else {
                EventSpec::new(P1, "ONCRMDEALUPDATE", Some(&i.to_string()), 1700000000).form()
            }
        })
        .collect();
    let bodies = std::sync::Arc::new(bodies);
    let url = s.url(EVENTS_PATH);
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let client = s.client.clone();
        let url = url.clone();
        let bodies = bodies.clone();
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for k in 0..EVENTS {
                // Each task walks the events in its own rotation/direction.
                let i = if t % 2 == 0 {
                    (k + t) % EVENTS
                } else {
                    (EVENTS + t - k) % EVENTS
                };
                let r = client
                    .post(&url)
                    .header("content-type", FORM_CT)
                    .body(bodies[i].clone())
                    .send()
                    .await
                    .expect("post");
                let status = r.status().as_u16();
                let text = r.text().await.unwrap();
                assert_eq!(status, 200, "event {i}: {text}");
                let v: Value = serde_json::from_str(&text).unwrap();
                out.push((
                    i,
                    v["status"].as_str().unwrap().to_string(),
                    v["id"].as_str().unwrap().to_string(),
                    v["seq"].as_u64().unwrap(),
                ));
            }
            out
        }));
    }
    let mut per_event: HashMap<usize, Vec<(String, String, u64)>> = HashMap::new();
    for h in handles {
        for (i, st, id, seq) in h.await.unwrap() {
            per_event.entry(i).or_default().push((st, id, seq));
        }
    }
    assert_eq!(per_event.len(), EVENTS);
    let mut all_seqs = Vec::new();
    for (i, rs) in &per_event {
        assert_eq!(rs.len(), TASKS);
        let stored = rs.iter().filter(|r| r.0 == "stored").count();
        let dup = rs.iter().filter(|r| r.0 == "duplicate").count();
        assert_eq!(
            stored, 1,
            "event {i}: exactly one 'stored' answer, got {rs:?}"
        );
        assert_eq!(dup, TASKS - 1, "event {i}");
        let id0 = &rs[0].1;
        let seq0 = rs[0].2;
        assert!(
            rs.iter().all(|r| &r.1 == id0 && r.2 == seq0),
            "event {i}: all answers must carry the same id and seq: {rs:?}"
        );
        all_seqs.push(seq0);
    }
    all_seqs.sort();
    assert_eq!(
        all_seqs,
        (1..=EVENTS as u64).collect::<Vec<_>>(),
        "seqs are 1..=50 without gaps"
    );

    let events = s.all_events(P1.member).await;
    assert_eq!(events.len(), EVENTS);
    for e in &events {
        assert_eq!(e["duplicates"], TASKS - 1, "duplicates counter of {e}");
    }
    let mut from_api = ids(&events);
    from_api.sort();
    let mut from_posts: Vec<String> = per_event.values().map(|rs| rs[0].1.clone()).collect();
    from_posts.sort();
    assert_eq!(from_api, from_posts);
    let p1 = s.portal_entry(P1.member).await.unwrap();
    assert_eq!(p1["events"], EVENTS);
    assert_eq!(p1["duplicates"], EVENTS * (TASKS - 1));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_distinct_events_get_gapless_per_portal_seqs() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 40;
    let dir = tempdir();
    let mut s = TestServer::start(dir.path(), &[]);
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let client = s.client.clone();
        let url = s.url(EVENTS_PATH);
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..PER_TASK {
                let portal = if (t + i) % 2 == 0 { P1 } else { P2 };
                let ev = EventSpec::new(
                    portal,
                    "ONCRMLEADADD",
                    Some(&format!("{t}-{i}")),
                    1700000000,
                );
                let body = if i % 3 == 0 {
                    (JSON_CT, serde_json::to_string(&ev.json()).unwrap())
                } else {
                    (FORM_CT, ev.form())
                };
                let r = client
                    .post(&url)
                    .header("content-type", body.0)
                    .body(body.1)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let text = r.text().await.unwrap();
                assert_eq!(status, 200, "{} event {t}-{i}: {text}", body.0);
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["status"], "stored");
                out.push((
                    portal.member,
                    v["seq"].as_u64().unwrap(),
                    v["id"].as_str().unwrap().to_string(),
                ));
            }
            out
        }));
    }
    let mut per: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut all_ids = Vec::new();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await);
    }
    if results.iter().any(|r| r.is_err()) {
        panic!(
            "a posting task failed; server logs (errors/warnings):\n{}",
            s.logs()
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("panic"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for r in results {
        for (m, seq, id) in r.unwrap() {
            per.entry(m).or_default().push(seq);
            all_ids.push(id);
        }
    }
    assert_unique(&all_ids);
    for (m, mut sq) in per {
        sq.sort();
        let n = sq.len() as u64;
        assert_eq!(sq, (1..=n).collect::<Vec<_>>(), "portal {m}: seqs 1..={n}");
        let events = s.all_events(m).await;
        assert_eq!(events.len() as u64, n);
        assert_eq!(seqs(&events), (1..=n).rev().collect::<Vec<_>>());
    }
    s.stop();
}

/// Many portals receive their very first event at the same moment (so new
/// portals are created together), then a second one each: every portal
/// keeps its own journal with seqs 1 and 2, and the server stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_events_of_many_portals_at_once() {
    const PORTALS: usize = 40;
    let dir = tempdir();
    let members: Vec<String> = (0..PORTALS).map(|i| format!("{i:032x}")).collect();
    let tokens: Vec<String> = (0..PORTALS).map(|i| format!("tok{i:029x}")).collect();
    let domains: Vec<String> = (0..PORTALS)
        .map(|i| format!("portal-{i}.bitrix24.com"))
        .collect();
    let mut extra = Vec::new();
    for i in 0..PORTALS {
        extra.push("--portal".to_string());
        extra.push(format!("{}={}", members[i], tokens[i]));
    }
    let extra_ref: Vec<&str> = extra.iter().map(String::as_str).collect();
    let s = spawn_app(dir.path(), &extra_ref).await;

    let body = |i: usize, n: u64| {
        json!({
            "event": "ONCRMDEALADD",
            "ts": 1700000000 + n,
            "data": {"FIELDS": {"ID": format!("{n}")}},
            "auth": {
                "domain": domains[i],
                "member_id": members[i],
                "application_token": tokens[i],
            },
        })
    };
    for round in 1..=2u64 {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(PORTALS));
        let mut hs = Vec::new();
        for i in 0..PORTALS {
            let client = s.client.clone();
            let url = s.url(EVENTS_PATH);
            let b = body(i, round);
            let barrier = barrier.clone();
            hs.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = client.post(&url).json(&b).send().await.unwrap();
                let status = r.status().as_u16();
                let text = r.text().await.unwrap();
                (i, status, text)
            }));
        }
        for h in hs {
            let (i, status, text) = h.await.unwrap();
            assert_eq!(status, 200, "round {round}, portal {i}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["status"], "stored");
            assert_eq!(v["seq"], round, "portal {i}: seq of event #{round}");
        }
    }
    let portals = s.portals().await;
    for i in 0..PORTALS {
        let p = portals
            .iter()
            .find(|p| p["member_id"] == members[i].as_str())
            .unwrap_or_else(|| panic!("portal {i} missing from /v1/portals"));
        assert_eq!(p["events"], 2, "{p}");
        assert_eq!(p["domain"], domains[i].as_str(), "{p}");
        let ev = s.all_events(&domains[i]).await;
        assert_eq!(seqs(&ev), vec![2, 1], "portal {i}");
        assert!(ev.iter().all(|e| e["member_id"] == members[i].as_str()));
    }
    s.stop().await;
}
