//! Cluster mode on a real NATS JetStream cluster: three `nats-server`s
//! (`sync_interval: always`, a route mesh) and three `b24-journal` nodes
//! (the real binary, `serve --cluster …`) on loopback.
//!
//! - `three_nodes_build_the_same_journal`: events posted to any node are
//!   in every node's journal with the same ids, seqs and duplicate counts;
//!   an install acknowledged by one node is known by the next at once (the
//!   read barrier); an erasure goes through the stream.
//! - `failure_drill` (in `cluster_drill.rs`): the same under load while
//!   machines die.
//!
//! Needs the pinned nats-server (`scripts/install-nats.sh`; `.ci/run`
//! installs it): without it the tests fail with that advice, never skip.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A portal nobody configured: learnt from its ONAPPINSTALL.
const N1: Portal = Portal {
    member: "77aa55cc33ee11ff00dd22bb44996688",
    domain: "acme.bitrix24.com",
    token: "inst-token-first-0a1b2c3d4e5f",
};
const T: u64 = 1_720_000_000;

/// `serve --cluster` for node `i`, trusting P1..P3 and learning installs.
fn node_args(dir: &Path, nats: &NatsCluster, i: usize) -> Vec<String> {
    let mut args = default_args(dir);
    args.extend(
        [
            "--cluster",
            &nats.urls(),
            "--node-name",
            &format!("j{i}"),
            "--install-domains",
            "*.bitrix24.com",
            "--admin-token",
            ADMIN,
            "--backup-dir",
            dir.parent().unwrap().join("backups").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args
}

const ADMIN: &str = "adm-7Hq2Lw9Xc4Vb8Nm3Kp6Z";

/// Every node's journal as (portal → [(id, seq, duplicates, cursor)]), read
/// through the API.
async fn journal_of(
    c: &Client,
    portals: &[&str],
) -> BTreeMap<String, Vec<(String, u64, u64, String)>> {
    let mut out = BTreeMap::new();
    for p in portals {
        let r = c
            .get(&format!("/v1/portals/{p}/events"), &[("limit", "1")])
            .await;
        if r.status == 404 {
            out.insert(p.to_string(), Vec::new());
            continue;
        }
        let mut events: Vec<(String, u64, u64, String)> = c
            .all_events(p)
            .await
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap().to_owned(),
                    e["seq"].as_u64().unwrap(),
                    e["duplicates"].as_u64().unwrap_or(0),
                    // Cursors name the portal by its number on the node:
                    // equal only if every node numbered portals alike.
                    e["cursor"]
                        .as_str()
                        .expect("every event has a cursor")
                        .to_owned(),
                )
            })
            .collect();
        events.sort_by_key(|e| e.1);
        out.insert(p.to_string(), events);
    }
    out
}

/// Waits until all nodes show the same journal; returns it.
async fn converged(
    nodes: &[&Client],
    portals: &[&str],
    timeout: Duration,
) -> BTreeMap<String, Vec<(String, u64, u64, String)>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut journals = Vec::new();
        for n in nodes {
            journals.push(journal_of(n, portals).await);
        }
        if journals.windows(2).all(|w| w[0] == w[1]) {
            return journals.swap_remove(0);
        }
        if Instant::now() > deadline {
            for (i, j) in journals.iter().enumerate() {
                let counts: Vec<usize> = j.values().map(Vec::len).collect();
                eprintln!("node {i}: {counts:?}");
            }
            panic!("journals did not converge within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every node's activity rollups of `portal` around `T`, read through
/// `GET /v1/portals/{portal}/stats`; asserts they are the same on all
/// nodes and returns them. Rollups are kept by each node's writer as it
/// applies the stream, keyed by the events' own `ts`: equal journals must
/// give equal counts.
async fn same_stats(nodes: &[&Client], portal: &str) -> Value {
    let since = (T - T % 3600).to_string();
    let until = (T + 3600).to_string();
    let q = [("since", since.as_str()), ("until", until.as_str())];
    let mut all = Vec::new();
    for n in nodes {
        let r = n.get(&format!("/v1/portals/{portal}/stats"), &q).await;
        assert_eq!(r.status, 200, "stats: {}", r.text);
        all.push(r.json());
    }
    for (i, v) in all.iter().enumerate().skip(1) {
        assert_eq!(v, &all[0], "node {i}'s rollups differ from node 0's");
    }
    all.swap_remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_build_the_same_journal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("backups")).unwrap();
    let nats = NatsCluster::start(dir.path());
    let init = nats.init_stream(&["--replicas", "3", "--max-age-days", "1"]);
    assert_eq!(init["status"], "ok", "{init}");
    let nodes: Vec<TestServer> = (0..3)
        .map(|i| {
            let d = dir.path().join(format!("j{i}"));
            TestServer::spawn(node_args(&d, &nats, i), &[])
        })
        .collect();

    // Events to every node, some of them repeats sent to another node.
    let mut stored = Vec::new();
    for n in 0..30u64 {
        let ev = EventSpec::new(P1, "ONCRMACTIVITYADD", Some(&format!("{n}")), T + n);
        let r = nodes[(n % 3) as usize].post_form(&ev.form()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = r.json();
        assert!(
            v["status"] == "stored" || v["status"] == "accepted",
            "first post answered {v}"
        );
        stored.push(v["id"].as_str().unwrap().to_owned());
        if n.is_multiple_of(5) {
            // The same event again, through the next node: a duplicate
            // (caught by the stream's window or by the journal's dedup).
            let r = nodes[((n + 1) % 3) as usize].post_form(&ev.form()).await;
            assert_eq!(r.status, 200, "{}", r.text);
            let v = r.json();
            assert!(
                v["status"] == "duplicate" || v["status"] == "accepted",
                "repeat answered {v}"
            );
        }
    }
    let clients: Vec<&Client> = nodes.iter().map(|n| &**n).collect();
    let journal = converged(&clients, &[P1.member], Duration::from_secs(30)).await;
    let events = &journal[P1.member];
    assert_eq!(events.len(), 30);
    let ids: Vec<String> = events.iter().map(|e| e.0.clone()).collect();
    assert_eq!(ids, stored, "ids and order as answered on receipt");
    let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    let stats = same_stats(&clients, P1.member).await;
    assert_eq!(stats["events"], 30, "{stats}");

    // An install acknowledged by node 0 is known at node 1 right away.
    let mut install = EventSpec::new(N1, "ONAPPINSTALL", None, T + 100)
        .with("data[VERSION]", "1")
        .with("data[LANGUAGE_ID]", "en");
    install.token = Some(N1.token.to_string());
    let r = nodes[0].post_form(&install.form()).await;
    assert_eq!(r.status, 200, "install: {}", r.text);
    let mut ev = EventSpec::new(N1, "ONCRMACTIVITYADD", Some("7"), T + 101);
    ev.token = Some(N1.token.to_string());
    let r = nodes[1].post_form(&ev.form()).await;
    assert_eq!(
        r.status, 200,
        "event right after an install on another node: {}",
        r.text
    );
    // A wrong token is still refused, after the barrier.
    let mut bad = EventSpec::new(N1, "ONCRMACTIVITYADD", Some("8"), T + 102);
    bad.token = Some("not-the-token-000000".into());
    let r = nodes[2].post_form(&bad.form()).await;
    r.assert_error(401, "auth[application_token]", "wrong token");
    // The same install with another token, at another node, within the
    // stream's duplicate window: a takeover, refused, not a repeat.
    let mut takeover = install.clone();
    takeover.token = Some("takeover-token-99887766".into());
    let r = nodes[2].post_form(&takeover.form()).await;
    assert_eq!(r.status, 409, "takeover install: {}", r.text);

    // Erasure goes through the stream: gone on every node.
    let r = nodes[2]
        .send(
            reqwest::Client::new()
                .delete(nodes[2].url(&format!("/v1/admin/portals/{}", N1.member)))
                .bearer_auth(ADMIN),
        )
        .await;
    assert_eq!(r.status, 200, "erase: {}", r.text);
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let gone = n.portal_entry(N1.member).await.is_none();
            if gone {
                break;
            }
            assert!(Instant::now() < deadline, "portal not erased on a node");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A new node bootstraps from a peer's backup (which records its stream
    // position) and replays the rest, including what came after the copy.
    let r = nodes[0]
        .send(
            reqwest::Client::new()
                .post(nodes[0].url("/v1/admin/backup"))
                .bearer_auth(ADMIN)
                .body(r#"{"to":"boot"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "backup: {}", r.text);
    let backup = r.json();
    assert!(backup["stream_seq"].as_u64().unwrap() > 0, "{backup}");
    for n in 100..110u64 {
        let ev = EventSpec::new(P2, "ONCRMACTIVITYADD", Some(&format!("{n}")), T + n);
        let r = nodes[(n % 3) as usize].post_form(&ev.form()).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let boot_dir = backup["path"].as_str().unwrap().to_owned();
    let mut nodes = nodes;
    nodes.push(TestServer::spawn(
        node_args(Path::new(&boot_dir), &nats, 3),
        &[],
    ));
    let clients: Vec<&Client> = nodes.iter().map(|n| &**n).collect();
    let journal = converged(&clients, &[P1.member, P2.member], Duration::from_secs(30)).await;
    assert_eq!(journal[P1.member].len(), 30);
    assert_eq!(journal[P2.member].len(), 10);
    // The bootstrapped node's rollups came with the backup and the replay.
    let stats = same_stats(&clients, P2.member).await;
    assert_eq!(stats["events"], 10, "{stats}");

    // Health: caught up.
    for n in &nodes {
        let r = n.get("/healthz", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Nodes report their progress to a replicated KV bucket every second,
    // on their own schedule: wait for the reports rather than race them.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = nats.status().expect("cluster status");
        assert_eq!(status["replicas"], 3, "{status}");
        if !status["nodes"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes report their progress: {status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(nodes);
    drop(nats);
}

/// Retention passes are commands in the stream: every node deletes the
/// same events (per-portal limit here), and the journals stay identical.
/// Every node runs retention, but only the holder of the retention lease
/// publishes steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_runs_through_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("backups")).unwrap();
    let nats = NatsCluster::start(dir.path());
    // A 1 s duplicate window: the late repeats below reach the journals'
    // own dedup, so the rollups count duplicates too.
    nats.init_stream(&[
        "--replicas",
        "3",
        "--max-age-days",
        "1",
        "--duplicate-window-secs",
        "1",
    ]);
    let nodes: Vec<TestServer> = (0..3)
        .map(|i| {
            let mut args = node_args(&dir.path().join(format!("j{i}")), &nats, i);
            args.extend(["--retain-per-portal", "5", "--retain-every", "1"].map(String::from));
            TestServer::spawn(args, &[])
        })
        .collect();
    for n in 0..12u64 {
        let ev = EventSpec::new(P1, "ONCRMACTIVITYADD", Some(&format!("{n}")), T + n);
        let r = nodes[(n % 3) as usize].post_form(&ev.form()).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Repeats of events retention keeps, after the stream's window.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in 9..12u64 {
        let ev = EventSpec::new(P1, "ONCRMACTIVITYADD", Some(&format!("{n}")), T + n);
        let r = nodes[((n + 1) % 3) as usize].post_form(&ev.form()).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let clients: Vec<&Client> = nodes.iter().map(|n| &**n).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let journal = converged(&clients, &[P1.member], Duration::from_secs(30)).await;
        let seqs: Vec<u64> = journal[P1.member].iter().map(|e| e.1).collect();
        let dups: u64 = journal[P1.member].iter().map(|e| e.2).sum();
        if seqs == (8..=12).collect::<Vec<_>>() && dups == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not run: {seqs:?}, {dups} duplicates"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Retention took the deleted events back out of the rollups, the same
    // on every node; the repeats count under the events they repeat.
    let stats = same_stats(&clients, P1.member).await;
    assert_eq!(stats["events"], 5, "{stats}");
    assert_eq!(stats["duplicates"], 3, "{stats}");
    let publishers = nodes
        .iter()
        .filter(|n| n.logs().contains("retention step published"))
        .count();
    assert_eq!(publishers, 1, "one node publishes retention steps");
}
