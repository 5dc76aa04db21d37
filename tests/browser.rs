//! The read API and the console in a real browser: Debian's Chromium,
//! headless, through chromedriver (see `browser/chrome.rs`).
//!
//! - a page on another origin reads a portal through CORS with a scoped
//!   token, and is refused another portal;
//! - a page follows a portal with the standard `EventSource` (through a
//!   stream ticket) while the service (the real binary) restarts, and sees
//!   every event exactly once;
//! - the console signs in, lists portals, pages, filters, charts, and
//!   shows an event posted during the test in live mode.

#[path = "browser/chrome.rs"]
mod chrome;
mod common;

use std::time::{Duration, Instant};

use chrome::{free_port, serve_page, Browser};
use common::*;
use fantoccini::Locator;
use serde_json::{json, Value};

/// A scoped token that opens P1 only.
const ACME: &str = "acme-Jp4Rk8Vn2Qx6Ls9Dw3";

fn config(dir: &std::path::Path) -> String {
    let path = dir.join("dash.toml");
    std::fs::write(
        &path,
        format!(
            "[[read_tokens]]\nname = \"acme\"\ntoken = \"{ACME}\"\nportals = [\"{}\"]\n",
            P1.domain
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `fetch` from the page, with the scoped token; calls back with the
/// status and body, or the error a blocked request raises.
const FETCH: &str = r#"
const [url, token, done] = arguments;
fetch(url, { headers: { Authorization: "Bearer " + token } })
  .then(r => r.json().then(body => done({ status: r.status, body })))
  .catch(e => done({ error: String(e) }));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_reads_its_portal_through_cors() {
    let dir = tempfile::tempdir().unwrap();
    let page = serve_page("<!doctype html><title>dashboard</title><p>dashboard</p>".into()).await;
    let stranger = serve_page("<!doctype html><title>other</title><p>other</p>".into()).await;
    let cfg = config(dir.path());
    let s = spawn_app(
        &dir.path().join("data"),
        &["--config", &cfg, "--cors-origins", &page],
    )
    .await;
    s.store(&EventSpec::new(P1, "ONCRMDEALADD", Some("7"), now()))
        .await;
    s.store(&EventSpec::new(P2, "ONCRMDEALADD", Some("8"), now()))
        .await;

    let b = Browser::start().await;
    b.client.goto(&page).await.unwrap();
    let api = |portal: &str| s.url(&format!("/v1/portals/{portal}/events"));
    let ok = b
        .run_async(FETCH, vec![json!(api(P1.domain)), json!(ACME)])
        .await;
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["body"]["events"][0]["entity_id"], "7", "{ok}");
    let refused = b
        .run_async(FETCH, vec![json!(api(P2.domain)), json!(ACME)])
        .await;
    assert_eq!(refused["status"], 404, "another portal: {refused}");
    let list = b
        .run_async(FETCH, vec![json!(s.url("/v1/portals")), json!(ACME)])
        .await;
    let portals = list["body"]["portals"].as_array().unwrap();
    assert_eq!(portals.len(), 1, "{list}");
    assert_eq!(portals[0]["member_id"], P1.member);

    // A page on an origin that is not configured cannot read the answer.
    b.client.goto(&stranger).await.unwrap();
    let blocked = b
        .run_async(FETCH, vec![json!(api(P1.domain)), json!(ACME)])
        .await;
    assert!(
        blocked["error"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch")),
        "{blocked}"
    );
    b.close().await;
    s.stop().await;
}

/// Follows a portal with EventSource through a ticket; every message's
/// entity id lands in `window.got`.
const FOLLOW: &str = r#"
const [base, portal, token, done] = arguments;
window.got = [];
window.opens = 0;
fetch(base + "/v1/portals/" + portal + "/stream-tickets", {
  method: "POST", headers: { Authorization: "Bearer " + token } })
  .then(r => r.json())
  .then(t => {
    if (!t.stream_url) { done("error: " + JSON.stringify(t)); return; }
    const es = new EventSource(base + t.stream_url);
    es.onopen = () => { window.opens += 1; };
    es.onmessage = m => window.got.push(JSON.parse(m.data).entity_id);
    window.es = es;
    done(t.ticket);
  })
  .catch(e => done("error: " + e));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_source_resumes_across_a_restart_with_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let page = serve_page("<!doctype html><title>live</title><p>live</p>".into()).await;
    let cfg = config(dir.path());
    let port = free_port();
    let mut args = default_args(&dir.path().join("data"));
    let listen = args.iter().position(|a| a == "--listen").unwrap() + 1;
    args[listen] = format!("127.0.0.1:{port}");
    args.extend(
        [
            "--config",
            &cfg,
            "--cors-origins",
            &page,
            "--log-level",
            "trace",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut server = TestServer::spawn(args.clone(), &[]);
    let base = server.url("");
    // The token names P1 by its domain, which the service learns from P1's
    // first event.
    let t = now();
    server
        .store(&EventSpec::new(P1, "ONCRMDEALADD", Some("seed"), t))
        .await;
    let b = Browser::start().await;
    b.client.goto(&page).await.unwrap();
    let ticket = b
        .run_async(FOLLOW, vec![json!(base), json!(P1.domain), json!(ACME)])
        .await;
    let ticket = ticket.as_str().unwrap().to_owned();
    assert!(!ticket.starts_with("error"), "{ticket}");
    b.wait_for(
        "return window.opens",
        Duration::from_secs(10),
        "stream open",
    )
    .await;
    let t = now();
    for i in 0..5 {
        server
            .store(&EventSpec::new(
                P1,
                "ONCRMDEALADD",
                Some(&format!("e{i}")),
                t + i,
            ))
            .await;
    }
    b.wait_for(
        "return window.got.length >= 5",
        Duration::from_secs(10),
        "first five",
    )
    .await;

    let mut logs = server.stop();
    let mut server = TestServer::spawn(args, &[]);
    for i in 5..10 {
        server
            .store(&EventSpec::new(
                P1,
                "ONCRMDEALADD",
                Some(&format!("e{i}")),
                t + i,
            ))
            .await;
    }
    b.wait_for(
        "return window.got.length >= 10",
        Duration::from_secs(20),
        "all ten after the restart",
    )
    .await;
    // Anything more would be a repeat.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = b.run("return window.got").await;
    let want: Vec<Value> = (0..10).map(|i| json!(format!("e{i}"))).collect();
    assert_eq!(got, Value::Array(want), "every event once, in order");
    let opens = b.run("return window.opens").await;
    assert!(
        opens.as_u64().unwrap() >= 2,
        "the browser reconnected: {opens}"
    );
    b.close().await;
    logs.push_str(&server.stop());
    assert!(!logs.contains(&ticket), "the ticket must never be logged");
    assert!(!logs.contains(ACME), "the token must never be logged");
    assert!(
        logs.contains("/events/stream"),
        "the stream requests are in the trace log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_browses_filters_charts_and_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    let s = spawn_app(&dir.path().join("data"), &[]).await;
    let t = now() - 3600;
    // 60 events: more than one page of 50.
    for i in 0..60u64 {
        let entity = if i % 10 == 0 {
            "4242".to_string()
        } else {
            format!("{i}")
        };
        s.store(&EventSpec::new(
            P1,
            "ONCRMACTIVITYADD",
            Some(&entity),
            t + i,
        ))
        .await;
    }
    s.store(&EventSpec::new(P2, "ONCRMDEALADD", Some("1"), t))
        .await;

    let b = Browser::start().await;
    let c = &b.client;
    c.goto(&s.url("/console")).await.unwrap();
    b.type_into(Locator::Id("token"), READ_TOKEN).await;
    b.click(Locator::Css("#signin-form button")).await;
    b.wait_for(
        "return document.querySelectorAll('#portal-table tbody tr').length",
        Duration::from_secs(10),
        "portal list",
    )
    .await;
    let text = b
        .run("return document.querySelector('#portal-table').innerText")
        .await;
    let text = text.as_str().unwrap();
    assert!(
        text.contains(P1.domain) && text.contains(P2.domain),
        "{text}"
    );
    assert!(text.contains("60"), "P1's count: {text}");
    b.screenshot("console-portals").await;

    c.find(Locator::Css(&format!("tr[data-portal='{}']", P1.member)))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let started = Instant::now();
    b.wait_for(
        "return document.querySelectorAll('#events tbody tr').length === 50",
        Duration::from_secs(10),
        "first page",
    )
    .await;
    b.wait_for(
        "return Array.from(document.querySelectorAll('#chart rect')).some(r => r.dataset.events > 0)",
        Duration::from_secs(10),
        "chart with data",
    )
    .await;
    println!(
        "console: first view of the portal in {:?}",
        started.elapsed()
    );
    let bars = b
        .run("return document.querySelectorAll('#chart rect').length")
        .await;
    assert_eq!(bars, json!(48), "48 hourly bars");
    let charted = b
        .run("return Array.from(document.querySelectorAll('#chart rect')).reduce((a, r) => a + Number(r.dataset.events), 0)")
        .await;
    assert_eq!(charted, json!(60));

    // Paging: the second page holds the remaining 10.
    b.click(Locator::Id("older")).await;
    b.wait_for(
        "return document.querySelector('#page-info').innerText.startsWith('page 2') && document.querySelectorAll('#events tbody tr').length === 10",
        Duration::from_secs(10),
        "second page",
    )
    .await;
    b.click(Locator::Id("newer")).await;
    b.wait_for(
        "return document.querySelector('#page-info').innerText.startsWith('page 1')",
        Duration::from_secs(10),
        "back to page 1",
    )
    .await;

    // Filter by entity id.
    b.type_into(Locator::Id("f-entity"), "4242").await;
    b.click(Locator::Id("apply")).await;
    b.wait_for(
        "const rows = Array.from(document.querySelectorAll('#events tbody tr')); return rows.length === 6 && rows.every(r => r.cells[2].innerText === '4242')",
        Duration::from_secs(10),
        "entity filter",
    )
    .await;
    // Event detail as JSON.
    b.click(Locator::Css("#events tbody tr")).await;
    let detail = b
        .wait_for("return !document.querySelector('#detail').hidden && document.querySelector('#detail-json').innerText", Duration::from_secs(5), "detail")
        .await;
    let detail: Value = serde_json::from_str(detail.as_str().unwrap()).unwrap();
    assert_eq!(detail["entity_id"], "4242");
    assert!(!detail.to_string().contains(ACCESS_TOKEN));
    b.click(Locator::Id("detail-close")).await;

    // Live: clear the filter, go live, post an event: it shows within 2 s.
    b.click(Locator::Id("clear")).await;
    b.wait_for(
        "return document.querySelectorAll('#events tbody tr').length === 50",
        Duration::from_secs(10),
        "filter cleared",
    )
    .await;
    b.click(Locator::Id("live")).await;
    b.wait_for(
        "return document.querySelector('#live-state').innerText === 'live'",
        Duration::from_secs(10),
        "live mode",
    )
    .await;
    let (id, _) = s
        .store(&EventSpec::new(
            P1,
            "ONCRMACTIVITYUPDATE",
            Some("live-1"),
            now(),
        ))
        .await;
    let posted = Instant::now();
    b.wait_for(
        &format!("return document.querySelector(\"#events tbody tr[data-id='{id}']\") !== null"),
        Duration::from_secs(2),
        "the live event within 2 s",
    )
    .await;
    println!(
        "console: live event shown {:?} after its 200",
        posted.elapsed()
    );
    let first = b
        .run("return document.querySelector('#events tbody tr').dataset.id")
        .await;
    assert_eq!(first, json!(id), "prepended");
    let rows = b
        .run("return document.querySelectorAll('#events tbody tr').length")
        .await;
    assert_eq!(rows, json!(51), "no repeats");
    b.screenshot("console-portal").await;

    // A phone's width: the page still fits.
    c.set_window_size(390, 844).await.unwrap();
    let overflow = b
        .run("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "no horizontal scroll at 390 px: {overflow}"
    );
    b.screenshot("console-phone").await;
    b.close().await;
    s.stop().await;
}
