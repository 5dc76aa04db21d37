//! Ingest of well-formed events: every shared fixture, encoding variants,
//! JSON bodies, entity-id extraction, seq numbering, /healthz, /v1/portals.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("expected object, got {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(xs: &[&str]) -> BTreeSet<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

/// Checks the invariant shape of an event object.
#[track_caller]
fn check_event_shape(e: &Value, before: i64) {
    let want = set(&[
        "id",
        "seq",
        "member_id",
        "domain",
        "event",
        "entity_id",
        "ts",
        "ts_unix",
        "received_at",
        "duplicates",
        "event_handler_id",
        "data",
        "auth",
    ]);
    let got = keys(e);
    for k in &want {
        assert!(got.contains(k), "event object lacks {k:?}: {e}");
    }
    assert_uuid_v7(e["id"].as_str().unwrap());
    assert!(e["seq"].as_u64().unwrap() >= 1);
    let ts = e["ts"].as_str().expect("ts string");
    assert!(ts.ends_with('Z'), "ts must be UTC with Z: {ts}");
    assert_eq!(
        parse_rfc3339(ts).unix_timestamp(),
        e["ts_unix"].as_i64().expect("ts_unix int")
    );
    let ra = e["received_at"].as_str().expect("received_at string");
    assert!(ra.ends_with('Z'), "received_at must be UTC with Z: {ra}");
    let ra_unix = parse_rfc3339(ra).unix_timestamp();
    assert!(
        ra_unix >= before - 2 && ra_unix <= now_unix() + 2,
        "received_at {ra} is not the time of receipt"
    );
    assert!(e["duplicates"].as_u64().is_some(), "duplicates int: {e}");
    let auth = e["auth"].as_object().expect("auth object");
    for secret in ["access_token", "refresh_token", "application_token"] {
        assert!(!auth.contains_key(secret), "auth exposes {secret}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixture_contact_add_app_form_is_stored_with_every_field() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let before = now_unix();
    let r = s.post_form(&fixture("ONCRMCONTACTADD-app.form")).await;
    let (id, seq) = expect_stored(&r);
    assert_uuid_v7(&id);
    assert_eq!(seq, 1, "first event of a portal has seq 1");

    let events = s.all_events(P2.member).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    check_event_shape(e, before);
    assert_eq!(e["id"], id.as_str());
    assert_eq!(e["seq"], 1);
    assert_eq!(e["member_id"], P2.member);
    assert_eq!(e["domain"], "bitrix24-php-sdk-playground.bitrix24.com");
    assert_eq!(e["event"], "ONCRMCONTACTADD");
    assert_eq!(e["entity_id"], "134806");
    assert_eq!(e["ts"], "2024-09-22T15:28:46Z");
    assert_eq!(e["ts_unix"], 1727018926);
    assert_eq!(e["duplicates"], 0);
    assert_eq!(e["event_handler_id"], "58");
    assert_eq!(e["data"], json!({"FIELDS": {"ID": "134806"}}));
    assert_eq!(
        e["auth"],
        json!({
            "expires": "1727022526",
            "expires_in": "3600",
            "scope": "crm,placement,user_brief",
            "domain": "bitrix24-php-sdk-playground.bitrix24.com",
            "server_endpoint": "https://oauth.bitrix.info/rest/",
            "status": "L",
            "client_endpoint": "https://bitrix24-php-sdk-playground.bitrix24.com/rest/",
            "member_id": "010b6886ebc205e43ae65000ee00addb",
            "user_id": "1",
        })
    );
    // Other portals untouched: a configured portal without events answers
    // an empty page.
    let r = s
        .get(&format!("/v1/portals/{}/events", P1.member), &[])
        .await;
    assert_eq!(r.status, 200, "P1: {}", r.text);
    assert_eq!(r.json()["events"], json!([]), "P1 must hold no events");
    assert_eq!(r.json()["next_cursor"], Value::Null);
    s.stop().await;
}

fn activity_update_auth() -> Value {
    json!({
        "expires_in": "3600",
        "scope": "crm",
        "domain": "some-domain.bitrix24.com",
        "server_endpoint": "https://oauth.bitrix.info/rest/",
        "status": "L",
        "client_endpoint": "https://some-domain.bitrix24.com/rest/",
        "member_id": "a223c6b3710f85df22e9377d6c4f7553",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixture_activity_update_app_form_without_handler_id() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let before = now_unix();
    let r = s.post_form(&fixture("ONCRMACTIVITYUPDATE-app.form")).await;
    let (id, seq) = expect_stored(&r);
    assert_eq!(seq, 1);
    let events = s.all_events(P1.member).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    check_event_shape(e, before);
    assert_eq!(e["id"], id.as_str());
    assert_eq!(e["event"], "ONCRMACTIVITYUPDATE");
    assert_eq!(e["entity_id"], "999");
    assert_eq!(e["ts"], "2016-06-20T16:21:54Z");
    assert_eq!(e["ts_unix"], 1466439714);
    assert_eq!(e["domain"], "some-domain.bitrix24.com");
    assert_eq!(e["member_id"], P1.member);
    assert_eq!(e["event_handler_id"], Value::Null);
    assert_eq!(e["data"], json!({"FIELDS": {"ID": "999"}}));
    assert_eq!(e["auth"], activity_update_auth());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixture_docs_json_lower_case_event_is_stored_upper_cased() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let before = now_unix();
    let body = fixture("onCrmActivityUpdate-docs.json");
    let r = s.post_raw_ct(Some(JSON_CT), body).await;
    let (id, seq) = expect_stored(&r);
    assert_eq!(seq, 1);
    let events = s.all_events(P1.member).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    check_event_shape(e, before);
    assert_eq!(e["id"], id.as_str());
    assert_eq!(
        e["event"], "ONCRMACTIVITYUPDATE",
        "event must be upper-cased"
    );
    assert_eq!(e["entity_id"], "999");
    assert_eq!(e["ts"], "2016-06-20T16:21:54Z");
    assert_eq!(e["ts_unix"], 1466439714);
    assert_eq!(e["event_handler_id"], Value::Null);
    assert_eq!(e["data"], json!({"FIELDS": {"ID": "999"}}));
    assert_eq!(e["auth"], activity_update_auth());
    // The event filter matches it whatever the case used in the query.
    let (f, _) = s.page(P1.member, &[("event", "onCrmActivityUpdate")]).await;
    assert_eq!(ids(&f), vec![id]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixture_activity_delete_webhook_short_auth() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let before = now_unix();
    let r = s
        .post_form(&fixture("ONCRMACTIVITYDELETE-webhook.form"))
        .await;
    let (id, _) = expect_stored(&r);
    let events = s.all_events("some-domain.bitrix24.com").await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    check_event_shape(e, before);
    assert_eq!(e["id"], id.as_str());
    assert_eq!(e["event"], "ONCRMACTIVITYDELETE");
    assert_eq!(e["entity_id"], "1000");
    assert_eq!(e["event_handler_id"], "77");
    assert_eq!(e["ts"], "2016-06-20T16:23:20Z");
    assert_eq!(e["ts_unix"], 1466439800);
    assert_eq!(e["data"], json!({"FIELDS": {"ID": "1000"}}));
    assert_eq!(
        e["auth"],
        json!({
            "domain": "some-domain.bitrix24.com",
            "client_endpoint": "https://some-domain.bitrix24.com/rest/",
            "server_endpoint": "https://oauth.bitrix.info/rest/",
            "member_id": "a223c6b3710f85df22e9377d6c4f7553",
        })
    );
    s.stop().await;
}

/// The docs JSON and the app form are the same delivery in two encodings:
/// posting both yields one stored event and one duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_fixtures_together_form_and_docs_json_deduplicate() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let (upd_id, upd_seq) =
        expect_stored(&s.post_form(&fixture("ONCRMACTIVITYUPDATE-app.form")).await);
    let dup = s
        .post_raw_ct(Some(JSON_CT), fixture("onCrmActivityUpdate-docs.json"))
        .await;
    let (dup_id, dup_seq) = expect_duplicate(&dup);
    assert_eq!((dup_id.as_str(), dup_seq), (upd_id.as_str(), upd_seq));
    let (_, del_seq) = expect_stored(
        &s.post_form(&fixture("ONCRMACTIVITYDELETE-webhook.form"))
            .await,
    );
    assert_eq!(del_seq, upd_seq + 1);
    let (_, add_seq) = expect_stored(&s.post_form(&fixture("ONCRMCONTACTADD-app.form")).await);
    assert_eq!(add_seq, 1, "seq is per portal");

    let p1 = s.all_events(P1.member).await;
    assert_eq!(p1.len(), 2);
    assert_eq!(p1[0]["event"], "ONCRMACTIVITYDELETE");
    assert_eq!(p1[1]["event"], "ONCRMACTIVITYUPDATE");
    assert_eq!(p1[1]["duplicates"], 1);
    assert_eq!(p1[0]["duplicates"], 0);
    assert_eq!(s.count(P2.member).await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encoding_variants_raw_brackets_plus_and_pct20_decode_identically() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let title = "Call back: Müller & Sons + co = 100% (ok) [x] ~/é";
    let styles = [
        Style::Php,
        Style::RawBrackets,
        Style::Pct20,
        Style::RawBracketsPct20,
    ];
    let mut posted = Vec::new();
    for (i, style) in styles.iter().enumerate() {
        let entity = format!("{}", 500 + i);
        let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some(&entity), 1700000000)
            .with("data[FIELDS][TITLE]", title)
            .with("data[FIELDS][STAGE ID]", "NEW STAGE");
        let body = ev.form_styled(*style);
        match style {
            Style::RawBrackets | Style::RawBracketsPct20 => {
                assert!(body.contains("data[FIELDS][ID]="), "{body}")
            }
            _ => assert!(body.contains("data%5BFIELDS%5D%5BID%5D="), "{body}"),
        }
        match style {
            Style::Php | Style::RawBrackets => assert!(body.contains("Call+back")),
            _ => assert!(body.contains("Call%20back")),
        }
        let (id, _) = expect_stored(&s.post_form(&body).await);
        posted.push((id, entity, *style));
    }
    // charset parameter on the content type is accepted too.
    let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("600"), 1700000000)
        .with("data[FIELDS][TITLE]", title)
        .with("data[FIELDS][STAGE ID]", "NEW STAGE");
    let r = s
        .post_raw_ct(
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            ev.form(),
        )
        .await;
    let (id, _) = expect_stored(&r);
    posted.push((id, "600".into(), Style::Php));

    let events = s.all_events(P1.member).await;
    assert_eq!(events.len(), posted.len());
    for (id, entity, style) in &posted {
        let e = events
            .iter()
            .find(|e| e["id"] == id.as_str())
            .unwrap_or_else(|| panic!("event {id} missing"));
        assert_eq!(e["entity_id"], entity.as_str(), "{style:?}");
        assert_eq!(
            e["data"],
            json!({"FIELDS": {"ID": entity, "TITLE": title, "STAGE ID": "NEW STAGE"}}),
            "{style:?} must decode to the same data"
        );
        assert_eq!(e["event"], "ONCRMDEALUPDATE");
        assert_eq!(e["auth"]["scope"], "crm,user_brief", "{style:?}");
        assert_eq!(
            e["auth"]["client_endpoint"], "https://some-domain.bitrix24.com/rest/",
            "{style:?}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_bodies_ts_as_string_or_integer_and_nested_data_preserved() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let data = json!({
        "FIELDS": {"ID": "77", "ENTITY_TYPE_ID": "128", "TAGS": ["a", "b"], "N": 5, "B": true, "Z": null},
        "EXTRA": {"deep": {"deeper": {"deepest": "x y"}}},
    });
    let body = json!({
        "event": "onCrmDynamicItemUpdate",
        "event_handler_id": "9",
        "data": data,
        "ts": 1700000100,
        "auth": short_auth_json(P1),
    });
    let (id_int, _) = expect_stored(&s.post_json(&body).await);

    let body2 = json!({
        "event": "ONCRMDEALADD",
        "data": {"FIELDS": {"ID": "78"}},
        "ts": "1700000200",
        "auth": short_auth_json(P1),
    });
    let r = s
        .post_raw_ct(
            Some("application/json; charset=utf-8"),
            serde_json::to_vec(&body2).unwrap(),
        )
        .await;
    let (id_str, _) = expect_stored(&r);

    let events = s.all_events(P1.member).await;
    assert_eq!(events.len(), 2);
    let e1 = events.iter().find(|e| e["id"] == id_int.as_str()).unwrap();
    assert_eq!(e1["event"], "ONCRMDYNAMICITEMUPDATE");
    assert_eq!(e1["entity_id"], "77");
    assert_eq!(e1["ts_unix"], 1700000100);
    assert_eq!(e1["ts"], rfc3339(1700000100));
    assert_eq!(e1["event_handler_id"], "9");
    assert_eq!(e1["data"], data, "JSON data must come back as received");
    let e2 = events.iter().find(|e| e["id"] == id_str.as_str()).unwrap();
    assert_eq!(e2["ts_unix"], 1700000200);
    assert_eq!(e2["entity_id"], "78");
    assert_eq!(e2["event_handler_id"], Value::Null);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entity_id_comes_from_fields_then_fields_after_else_null() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let cases: Vec<(EventSpec, Value, Value)> = vec![
        (
            // Task event: FIELDS_BEFORE is the literal "undefined".
            EventSpec::new(P1, "ONTASKADD", None, 1700001000)
                .with("data[FIELDS_BEFORE]", "undefined")
                .with("data[FIELDS_AFTER][ID]", "55")
                .with("data[IS_ACCESSIBLE_BEFORE]", "N")
                .with("data[IS_ACCESSIBLE_AFTER]", "undefined"),
            json!("55"),
            json!({"FIELDS_BEFORE": "undefined", "FIELDS_AFTER": {"ID": "55"},
                   "IS_ACCESSIBLE_BEFORE": "N", "IS_ACCESSIBLE_AFTER": "undefined"}),
        ),
        (
            // Both present: FIELDS wins.
            EventSpec::new(P1, "ONTASKUPDATE", Some("10"), 1700001001)
                .with("data[FIELDS_AFTER][ID]", "20"),
            json!("10"),
            json!({"FIELDS": {"ID": "10"}, "FIELDS_AFTER": {"ID": "20"}}),
        ),
        (
            // Smart-process item.
            EventSpec::new(P1, "ONCRMDYNAMICITEMADD", Some("7"), 1700001002)
                .with("data[FIELDS][ENTITY_TYPE_ID]", "128"),
            json!("7"),
            json!({"FIELDS": {"ID": "7", "ENTITY_TYPE_ID": "128"}}),
        ),
        (
            // Deep form nesting.
            EventSpec::new(P1, "ONCRMDEALUPDATE", Some("9"), 1700001005)
                .with("data[FIELDS][UF][CRM][1]", "deep value")
                .with("data[FIELDS][UF][CRM][2]", "other")
                .with("data[FIELDS][UF][X]", "x"),
            json!("9"),
            json!({"FIELDS": {"ID": "9", "UF": {"CRM": {"1": "deep value", "2": "other"}, "X": "x"}}}),
        ),
        (
            // No data key at all (event with empty data).
            EventSpec::new(P1, "ONAPPTEST", None, 1700001003),
            Value::Null,
            Value::Null,
        ),
        (
            // Data without any ID.
            EventSpec::new(P1, "ONIMCONNECTORSTATUS", None, 1700001004)
                .with("data[LINE]", "3")
                .with("data[CONNECTOR]", "telegrambot"),
            Value::Null,
            json!({"LINE": "3", "CONNECTOR": "telegrambot"}),
        ),
    ];
    let mut posted = Vec::new();
    for (ev, entity, data) in &cases {
        assert_eq!(&expected_data(ev), data, "test self-check");
        let (id, _) = s.store(ev).await;
        posted.push((id, entity.clone(), data.clone(), ev.event.clone()));
    }
    let events = s.all_events(P1.member).await;
    assert_eq!(events.len(), cases.len());
    for (id, entity, data, name) in posted {
        let e = events.iter().find(|e| e["id"] == id.as_str()).unwrap();
        assert_eq!(e["entity_id"], entity, "{name}");
        assert_eq!(e["data"], data, "{name}");
    }
    // entity_id filter finds the FIELDS_AFTER-derived id.
    let (f, _) = s.page(P1.member, &[("entity_id", "55")]).await;
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["event"], "ONTASKADD");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seq_is_per_portal_starts_at_one_and_increases() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let mut ids_seen = Vec::new();
    for i in 0..3u64 {
        let (id, seq) = s
            .store(&EventSpec::new(
                P1,
                "ONCRMLEADADD",
                Some(&format!("{i}")),
                1700000000 + i,
            ))
            .await;
        assert_eq!(seq, i + 1);
        ids_seen.push(id);
    }
    let (id, seq) = s
        .store(&EventSpec::new(P2, "ONCRMLEADADD", Some("0"), 1700000000))
        .await;
    assert_eq!(seq, 1, "P2's first event");
    ids_seen.push(id);
    let (id, seq) = s
        .store(&EventSpec::new(P1, "ONCRMLEADADD", Some("3"), 1700000003))
        .await;
    assert_eq!(seq, 4);
    ids_seen.push(id);
    let (id, seq) = s
        .store(&EventSpec::new(P3, "ONCRMLEADADD", Some("3"), 1700000003))
        .await;
    assert_eq!(seq, 1, "P3's first event");
    ids_seen.push(id);
    assert_unique(&ids_seen);
    for id in &ids_seen {
        assert_uuid_v7(id);
    }
    let p1 = s.all_events(P1.member).await;
    assert_eq!(seqs(&p1), vec![4, 3, 2, 1]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn body_of_exactly_64_kib_is_accepted() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("64"), 1700000000);
    let body = padded_form(&ev, MAX_BODY);
    let r = s.post_form(&body).await;
    expect_stored(&r);
    let events = s.all_events(P1.member).await;
    assert_eq!(events.len(), 1);
    let pad = events[0]["data"]["PAD"].as_str().expect("PAD kept");
    assert!(pad.len() > 60000 && pad.bytes().all(|b| b == b'x'));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_body_without_content_length_is_accepted() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("c1"), 1700000000)
        .with("data[FIELDS][TITLE]", "chunked delivery");
    let body = ev.form();
    let head = format!(
        "POST {EVENTS_PATH} HTTP/1.1\r\nHost: {}\r\nContent-Type: {FORM_CT}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        s.addr()
    );
    let addr = s.addr();
    let r =
        tokio::task::spawn_blocking(move || raw_http(&addr, &head, &chunked(body.as_bytes(), 37)))
            .await
            .unwrap();
    assert_eq!(r.status, 200, "{} {}", r.head, r.body);
    assert_eq!(r.json()["status"], "stored");
    let events = s.all_events(P1.member).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["FIELDS"]["TITLE"], "chunked delivery");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_needs_no_auth() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let r = s.get_auth("/healthz", &[], None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"status": "ok"}));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn portals_listing_counts_events_and_duplicates() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let t0 = now_unix();
    for i in 0..3u64 {
        s.store(&EventSpec::new(
            P1,
            "ONCRMDEALADD",
            Some(&format!("{i}")),
            1700000000 + i,
        ))
        .await;
    }
    // Two duplicates of the first one.
    let dup = EventSpec::new(P1, "ONCRMDEALADD", Some("0"), 1700000000);
    for _ in 0..2 {
        expect_duplicate(&s.post_form(&dup.form()).await);
    }
    s.post_form(&fixture("ONCRMCONTACTADD-app.form")).await;

    let portals = s.portals().await;
    let p1 = portals
        .iter()
        .find(|p| p["member_id"] == P1.member)
        .expect("P1 listed");
    for k in [
        "member_id",
        "domain",
        "events",
        "duplicates",
        "first_received_at",
        "last_received_at",
    ] {
        assert!(p1.get(k).is_some(), "portal object lacks {k}: {p1}");
    }
    assert_eq!(p1["domain"], P1.domain);
    assert_eq!(p1["events"], 3);
    assert_eq!(p1["duplicates"], 2);
    let first = parse_rfc3339(p1["first_received_at"].as_str().unwrap()).unix_timestamp();
    let last = parse_rfc3339(p1["last_received_at"].as_str().unwrap()).unix_timestamp();
    assert!(first <= last);
    assert!(first >= t0 - 2 && last <= now_unix() + 2);

    let p2 = portals
        .iter()
        .find(|p| p["member_id"] == P2.member)
        .expect("P2 listed");
    assert_eq!(p2["domain"], P2.domain);
    assert_eq!(p2["events"], 1);
    assert_eq!(p2["duplicates"], 0);

    // A configured portal with no events is listed, empty.
    let p3 = portals
        .iter()
        .find(|p| p["member_id"] == P3.member)
        .expect("configured portal P3 listed");
    assert_eq!(p3["events"], 0, "{p3}");
    assert_eq!(p3["domain"], Value::Null, "{p3}");
    // Nothing unknown is listed.
    for p in &portals {
        let m = p["member_id"].as_str().unwrap();
        assert!(
            [P1.member, P2.member, P3.member].contains(&m),
            "unexpected portal {p}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ts_zero_is_valid_and_far_future_ts_never_breaks_reads() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let (id0, _) = s
        .store(&EventSpec::new(P1, "ONCRMDEALADD", Some("0"), 0))
        .await;
    let (page, _) = s.page(P1.member, &[("until", "0")]).await;
    assert_eq!(ids(&page), vec![id0]);
    assert_eq!(page[0]["ts"], "1970-01-01T00:00:00Z");
    assert_eq!(page[0]["ts_unix"], 0);
    // Year 5138 is still RFC 3339.
    let (id1, _) = s
        .store(&EventSpec::new(
            P1,
            "ONCRMDEALADD",
            Some("1"),
            99_999_999_999,
        ))
        .await;
    let (page, _) = s.page(P1.member, &[("since", "99999999999")]).await;
    assert_eq!(ids(&page), vec![id1]);
    assert_eq!(page[0]["ts"], "5138-11-16T09:46:39Z");
    // Beyond year 9999 RFC 3339 has no form: refusing (400 naming ts) is
    // fine, accepting is fine, but reads must keep working.
    let r = s
        .post_form(&EventSpec::new(P1, "ONCRMDEALADD", Some("2"), 253_402_300_800).form())
        .await;
    if r.status != 200 {
        r.assert_error(400, "ts", "ts beyond year 9999");
    }
    let r = s
        .get(&format!("/v1/portals/{}/events", P1.member), &[])
        .await;
    assert_eq!(r.status, 200, "reads after a far-future ts: {}", r.text);
    let r = s.get("/v1/portals", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.stop().await;
}
