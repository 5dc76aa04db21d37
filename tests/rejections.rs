//! Every rejection of the ingest and read APIs: status code, JSON error
//! naming the offending field, and nothing stored.

mod common;

use common::*;
use serde_json::{json, Value};

/// Posts one valid event so "nothing stored" is checked against a non-empty
/// journal; returns the baseline counts (P1, P2).
async fn baseline(s: &Client) -> (usize, usize) {
    s.store(&EventSpec::new(P1, "ONCRMDEALADD", Some("1"), 1700000000))
        .await;
    s.store(&EventSpec::new(P2, "ONCRMDEALADD", Some("1"), 1700000000))
        .await;
    (1, 1)
}

#[track_caller]
fn assert_nothing_stored_sync(before: (usize, usize), after: (usize, usize), what: &str) {
    assert_eq!(
        after, before,
        "{what}: the journal changed after a rejected request"
    );
}

async fn counts(s: &Client) -> (usize, usize) {
    (s.count(P1.member).await, s.count(P2.member).await)
}

async fn portal_totals(s: &Client) -> Vec<(String, Value, Value)> {
    let mut v: Vec<_> = s
        .portals()
        .await
        .into_iter()
        .map(|p| {
            (
                p["member_id"].as_str().unwrap().to_string(),
                p["events"].clone(),
                p["duplicates"].clone(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_required_fields_are_400_naming_the_field() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let base = baseline(&s).await;
    let totals = portal_totals(&s).await;
    let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("2"), 1700000100);
    for field in [
        "event",
        "ts",
        "auth[member_id]",
        "auth[domain]",
        "auth[application_token]",
    ] {
        // Form body.
        let body = encode_pairs(&ev.pairs_without(field), Style::Php);
        let r = s.post_form(&body).await;
        r.assert_error(400, field, &format!("form without {field}"));
        // JSON body.
        let v = nest(&ev.pairs_without(field));
        let r = s.post_json(&v).await;
        r.assert_error(400, field, &format!("JSON without {field}"));
    }
    // No auth at all.
    let body = encode_pairs(
        &ev.pairs()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("auth"))
            .collect::<Vec<_>>(),
        Style::Php,
    );
    let r = s.post_form(&body).await;
    assert_eq!(r.status, 400, "form without auth: {}", r.text);
    assert!(r.error().contains("auth"), "{}", r.text);
    // Empty event name.
    let mut empty = ev.clone();
    empty.event = String::new();
    s.post_form(&empty.form())
        .await
        .assert_error(400, "event", "empty event");
    // Empty form body.
    let r = s.post_form("").await;
    assert_eq!(r.status, 400, "empty form body: {}", r.text);
    r.error();
    assert_nothing_stored_sync(base, counts(&s).await, "missing fields");
    assert_eq!(portal_totals(&s).await, totals);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_ts_values_are_400_naming_ts() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let base = baseline(&s).await;
    for bad in [
        "",
        "abc",
        "-1",
        "1.5",
        "1e9",
        " 1700000000",
        "1700000000 ",
        "0x10",
        "17000000000000000000000000",
        "2016-06-20T16:21:54Z",
    ] {
        let mut ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("3"), 0);
        ev.ts = bad.to_string();
        s.post_form(&ev.form())
            .await
            .assert_error(400, "ts", &format!("form ts={bad:?}"));
    }
    for bad in [
        json!(-1),
        json!(1.5),
        json!(true),
        json!(null),
        json!({"a": 1}),
        json!([1]),
        json!("x1"),
    ] {
        let mut v = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("3"), 0).json();
        v["ts"] = bad.clone();
        s.post_json(&v)
            .await
            .assert_error(400, "ts", &format!("JSON ts={bad}"));
    }
    assert_nothing_stored_sync(base, counts(&s).await, "bad ts");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_types_and_malformed_bodies_are_400() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let base = baseline(&s).await;
    let good = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("4"), 1700000100).json();

    // Malformed JSON and non-object JSON.
    for body in [
        "{",
        "{\"event\": \"X\",}",
        "[]",
        "\"event\"",
        "42",
        "null",
        "",
    ] {
        let r = s.post_raw_ct(Some(JSON_CT), body.to_string()).await;
        assert_eq!(r.status, 400, "JSON body {body:?}: {} {}", r.status, r.text);
        r.error();
    }
    // event of the wrong type.
    let mut v = good.clone();
    v["event"] = json!(123);
    s.post_json(&v)
        .await
        .assert_error(400, "event", "numeric event");
    let mut v = good.clone();
    v["event"] = json!({"a": "b"});
    s.post_json(&v)
        .await
        .assert_error(400, "event", "object event");
    // auth fields of the wrong type.
    for field in ["member_id", "domain", "application_token"] {
        let mut v = good.clone();
        v["auth"][field] = json!({"nested": "x"});
        s.post_json(&v).await.assert_error(
            400,
            &format!("auth[{field}]"),
            &format!("object auth.{field}"),
        );
    }
    // auth not an object.
    let mut v = good.clone();
    v["auth"] = json!("nope");
    let r = s.post_json(&v).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.error().contains("auth"), "{}", r.text);
    // A JSON body sent as form and vice versa.
    let r = s
        .post_raw_ct(Some(FORM_CT), serde_json::to_string(&good).unwrap())
        .await;
    assert_eq!(r.status, 400, "JSON sent as form: {}", r.text);
    r.error();
    let r = s
        .post_raw_ct(
            Some(JSON_CT),
            EventSpec::new(P1, "ONCRMDEALUPDATE", Some("4"), 1700000100).form(),
        )
        .await;
    assert_eq!(r.status, 400, "form sent as JSON: {}", r.text);
    r.error();
    assert_nothing_stored_sync(base, counts(&s).await, "malformed bodies");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authentication_failures_are_401_and_store_nothing() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let base = baseline(&s).await;
    let totals = portal_totals(&s).await;
    let mk = |member: Option<&str>, token: Option<&str>| {
        let mut ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("5"), 1700000200);
        ev.member = member.map(str::to_string);
        ev.token = token.map(str::to_string);
        ev
    };
    let upper = P1.token.to_uppercase();
    let prefix = &P1.token[..P1.token.len() - 1];
    let longer = format!("{}0", P1.token);
    let cases: Vec<(&str, EventSpec)> = vec![
        (
            "unknown member_id",
            mk(Some("ffffffffffffffffffffffffffffffff"), None),
        ),
        (
            "wrong application_token",
            mk(None, Some("00000000000000000000000000000000")),
        ),
        ("token of another portal", mk(None, Some(P2.token))),
        (
            "member of P2 with P1 token",
            mk(Some(P2.member), Some(P1.token)),
        ),
        ("token in other case", mk(None, Some(&upper))),
        ("token prefix", mk(None, Some(prefix))),
        ("token with extra char", mk(None, Some(&longer))),
    ];
    for (what, ev) in &cases {
        let r = s.post_form(&ev.form()).await;
        assert_eq!(r.status, 401, "{what} (form): {} {}", r.status, r.text);
        r.error();
        let r = s.post_json(&ev.json()).await;
        assert_eq!(r.status, 401, "{what} (JSON): {} {}", r.status, r.text);
        r.error();
    }
    // A 401 does not count as a duplicate either: the same event with the
    // right token afterwards is stored fresh.
    let ok = mk(None, None);
    let (_, seq) = s.store(&ok).await;
    assert_eq!(seq, 2);
    assert_eq!(counts(&s).await, (base.0 + 1, base.1));
    let after = portal_totals(&s).await;
    let p2_before = totals.iter().find(|t| t.0 == P2.member).unwrap();
    let p2_after = after.iter().find(|t| t.0 == P2.member).unwrap();
    assert_eq!(p2_before, p2_after, "P2 must be untouched");
    assert!(
        after
            .iter()
            .all(|t| t.0 != "ffffffffffffffffffffffffffffffff"),
        "unknown member must not appear in /v1/portals"
    );
    let p1 = s.all_events(P1.member).await;
    assert!(p1.iter().all(|e| e["duplicates"] == 0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsupported_content_types_are_415() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let base = baseline(&s).await;
    let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("6"), 1700000300);
    let form = ev.form();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/xml"),
        Some("application/octet-stream"),
        Some("multipart/form-data; boundary=xyz"),
        Some("text/html; charset=utf-8"),
    ] {
        let r = s.post_raw_ct(ct, form.clone()).await;
        assert_eq!(
            r.status, 415,
            "content type {ct:?}: {} {}",
            r.status, r.text
        );
        r.error();
    }
    let r = s
        .post_raw_ct(Some("text/plain"), serde_json::to_vec(&ev.json()).unwrap())
        .await;
    assert_eq!(r.status, 415, "JSON as text/plain: {}", r.text);
    assert_nothing_stored_sync(base, counts(&s).await, "415");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_over_64_kib_are_413_with_and_without_content_length() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let base = baseline(&s).await;
    let addr = s.addr();
    let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("7"), 1700000400);

    // One byte over, with Content-Length.
    let body = padded_form(&ev, MAX_BODY + 1);
    let head = format!(
        "POST {EVENTS_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {FORM_CT}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let a = addr.clone();
    let b = body.clone();
    let r = tokio::task::spawn_blocking(move || raw_http(&a, &head, &[b.into_bytes()]))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "Content-Length 65537: {} {}", r.head, r.body);
    assert!(r.json()["error"].is_string(), "{}", r.body);

    // A much larger one with Content-Length.
    let big = padded_form(&ev, 1_000_000);
    let head = format!(
        "POST {EVENTS_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {FORM_CT}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    );
    let a = addr.clone();
    let r = tokio::task::spawn_blocking(move || raw_http(&a, &head, &[big.into_bytes()]))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "Content-Length 1e6: {} {}", r.head, r.body);

    // Chunked, no Content-Length, one byte over.
    let head = format!(
        "POST {EVENTS_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {FORM_CT}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let a = addr.clone();
    let h = head.clone();
    let r = tokio::task::spawn_blocking(move || raw_http(&a, &h, &chunked(body.as_bytes(), 4096)))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "chunked 65537: {} {}", r.head, r.body);
    assert!(r.json()["error"].is_string(), "{}", r.body);

    // Chunked JSON, far over the limit.
    let mut v = ev.json();
    v["data"]["PAD"] = json!("y".repeat(300_000));
    let jb = serde_json::to_vec(&v).unwrap();
    let head_json = format!(
        "POST {EVENTS_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {JSON_CT}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let a = addr.clone();
    let r = tokio::task::spawn_blocking(move || raw_http(&a, &head_json, &chunked(&jb, 16384)))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "chunked JSON 300k: {} {}", r.head, r.body);

    assert_nothing_stored_sync(base, counts(&s).await, "413");
    // The server is still healthy afterwards.
    let r = s.get_auth("/healthz", &[], None).await;
    assert_eq!(r.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflicting_framing_headers_never_store() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let base = baseline(&s).await;
    let addr = s.addr();
    let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("8"), 1700000500);
    let body = ev.form();

    // Two different Content-Length values: must be rejected with 400.
    let head = format!(
        "POST {EVENTS_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {FORM_CT}\r\nContent-Length: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len(),
        body.len() - 10
    );
    let a = addr.clone();
    let b = body.clone();
    let r = tokio::task::spawn_blocking(move || raw_http(&a, &head, &[b.into_bytes()]))
        .await
        .unwrap();
    assert_eq!(
        r.status, 400,
        "duplicate Content-Length: {} {}",
        r.head, r.body
    );

    // Small Content-Length plus chunked Transfer-Encoding carrying an
    // oversized body: the body limit must still hold (413), or the request
    // is refused as ambiguous (400); it is never stored.
    let big = padded_form(&ev, 100_000);
    let head = format!(
        "POST {EVENTS_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {FORM_CT}\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let a = addr.clone();
    let r =
        tokio::task::spawn_blocking(move || raw_http(&a, &head, &chunked(big.as_bytes(), 8192)))
            .await
            .unwrap();
    assert!(
        r.status == 413 || r.status == 400,
        "CL + TE with oversized body: {} {}",
        r.head,
        r.body
    );
    assert_nothing_stored_sync(base, counts(&s).await, "conflicting headers");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_routes_are_404_json_and_wrong_methods_404_or_405() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let base = baseline(&s).await;
    for path in [
        "/",
        "/nope",
        "/v1",
        "/v1/bitrix24/event",
        "/v1/portals/x/y",
        "/v2/portals",
    ] {
        let r = s.get(path, &[]).await;
        assert_eq!(r.status, 404, "GET {path}: {} {}", r.status, r.text);
        r.error();
    }
    let r = s
        .send(
            s.client
                .post(s.url("/v1/bitrix24/eventz"))
                .header("content-type", FORM_CT)
                .body(EventSpec::new(P1, "X", None, 1).form()),
        )
        .await;
    assert_eq!(r.status, 404, "POST unknown path: {}", r.text);
    r.error();
    // Wrong methods on known routes.
    let r = s.get(EVENTS_PATH, &[]).await;
    assert_eq!(r.status, 405, "GET events ingest: {}", r.text);
    r.error();
    let r = s
        .send(
            s.client
                .post(s.url("/v1/portals"))
                .bearer_auth(READ_TOKEN)
                .header("content-type", JSON_CT)
                .body("{}"),
        )
        .await;
    assert_eq!(r.status, 405, "POST /v1/portals: {}", r.text);
    r.error();
    let r = s.send(s.client.delete(s.url(EVENTS_PATH))).await;
    assert_eq!(r.status, 405, "DELETE ingest: {}", r.text);
    r.error();
    assert_nothing_stored_sync(base, counts(&s).await, "unknown routes");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_api_requires_the_bearer_read_token() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    baseline(&s).await;
    let wrong = format!("Bearer {READ_TOKEN}x");
    let prefix = format!("Bearer {}", &READ_TOKEN[..READ_TOKEN.len() - 1]);
    let raw = READ_TOKEN.to_string();
    let basic = format!("Basic {READ_TOKEN}");
    let app_token = format!("Bearer {}", P1.token);
    let auths: Vec<Option<&str>> = vec![
        None,
        Some("Bearer"),
        Some("Bearer "),
        Some(wrong.as_str()),
        Some(prefix.as_str()),
        Some(raw.as_str()),
        Some(basic.as_str()),
        Some(app_token.as_str()),
    ];
    let paths = [
        "/v1/portals".to_string(),
        format!("/v1/portals/{}/events", P1.member),
        format!("/v1/portals/{}/events", P1.domain),
        "/v1/portals/unknown-portal/events".to_string(),
    ];
    for path in &paths {
        for a in &auths {
            let r = s.get_auth(path, &[], *a).await;
            assert_eq!(
                r.status, 401,
                "GET {path} with auth {a:?}: {} {}",
                r.status, r.text
            );
            r.error();
            assert!(
                !r.text.contains(P1.member) && !r.text.contains("ONCRMDEALADD"),
                "401 body leaks data: {}",
                r.text
            );
        }
        let r = s.get(path, &[]).await;
        assert_ne!(r.status, 401, "GET {path} with the right token");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_query_parameters_are_400_naming_them_and_unknown_portal_404() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    baseline(&s).await;
    let path = format!("/v1/portals/{}/events", P1.member);
    let cases: Vec<(&str, &str, &str)> = vec![
        ("limit", "0", "limit"),
        ("limit", "1001", "limit"),
        ("limit", "-1", "limit"),
        ("limit", "abc", "limit"),
        ("limit", "", "limit"),
        ("limit", "1.5", "limit"),
        ("cursor", "not-a-cursor", "cursor"),
        ("cursor", "!!!!", "cursor"),
        ("since", "yesterday", "since"),
        ("since", "2016-13-45T00:00:00Z", "since"),
        ("until", "soon", "until"),
        ("until", "2016-06-20", "until"),
        ("bogus", "1", "bogus"),
        ("member_id", "x", "member_id"),
    ];
    for (k, v, needle) in cases {
        let r = s.get(&path, &[(k, v)]).await;
        r.assert_error(400, needle, &format!("{k}={v:?}"));
    }
    // Valid bounds are accepted.
    for lim in ["1", "1000"] {
        let r = s.get(&path, &[("limit", lim)]).await;
        assert_eq!(r.status, 200, "limit={lim}: {}", r.text);
    }
    // Unknown portals.
    for p in ["ffffffffffffffffffffffffffffffff", "nobody.bitrix24.com"] {
        let r = s.get(&format!("/v1/portals/{p}/events"), &[]).await;
        assert_eq!(r.status, 404, "unknown portal {p}: {}", r.text);
        r.error();
    }
    s.stop().await;
}

/// Two common mistakes get an answer that says what to do: JSON posted
/// with curl's default content type (`curl -d '{…}'` declares a form), and
/// `ts` in milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_sent_as_form_and_millisecond_ts_get_hints() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let base = baseline(&s).await;
    let ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("9"), 1700000300);
    let body = ev.json().to_string();
    for sent in [body.clone(), format!("\n  {body}")] {
        let r = s.post_raw_ct(Some(FORM_CT), sent).await;
        r.assert_error(400, "looks like JSON", "a JSON body sent as a form");
        let msg = r.error();
        assert!(
            msg.contains("Content-Type: application/json") && msg.contains("missing field"),
            "the hint says what to send and keeps the error: {msg}"
        );
    }
    // A form that is only wrong gets no hint about JSON.
    let r = s.post_raw_ct(Some(FORM_CT), "event=ONCRMDEALUPDATE").await;
    r.assert_error(400, "missing field", "an incomplete form");
    assert!(!r.error().contains("JSON"), "{}", r.text);
    assert_nothing_stored_sync(base, counts(&s).await, "JSON sent as a form");

    let mut millis = ev.clone();
    millis.ts = "1700000000000".into();
    s.post_form(&millis.form()).await.assert_error(
        400,
        "looks like milliseconds",
        "form ts in milliseconds",
    );
    let mut v = ev.json();
    v["ts"] = json!(1_700_000_000_000u64);
    s.post_json(&v)
        .await
        .assert_error(400, "looks like milliseconds", "JSON ts in milliseconds");
    // Query bounds parse the same way.
    s.get(
        &format!("/v1/portals/{}/events", P1.member),
        &[("since", "1700000000000")],
    )
    .await
    .assert_error(400, "milliseconds", "since in milliseconds");
    assert_nothing_stored_sync(base, counts(&s).await, "millisecond ts");

    // The same event, sent right, is stored.
    s.store(&ev).await;
    s.stop().await;
}

/// Ingest authenticates by `auth[application_token]` in the body, so its
/// 401 carries no `WWW-Authenticate` challenge (no header would help); the
/// read API's bearer 401 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_bearer_401s_carry_www_authenticate() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let mut ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("9"), 1700000300);
    ev.token = Some("00000000000000000000000000000000".into());
    let res = s
        .client
        .post(s.url(EVENTS_PATH))
        .header(reqwest::header::CONTENT_TYPE, FORM_CT)
        .body(ev.form())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(
        res.headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .is_none(),
        "ingest 401: {:?}",
        res.headers()
    );
    let res = s.client.get(s.url("/v1/portals")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()[reqwest::header::WWW_AUTHENTICATE], "Bearer");
    s.stop().await;
}
