//! Offline pulling in cluster mode, on a real 3-server JetStream cluster
//! and three real b24-journal nodes sharing one secrets key, against the
//! fake Bitrix24 of the offline tests (`fake-bitrix24`).
//!
//! One node at a time pulls the portal (a lease in a KV bucket); each
//! fetched batch is published to the stream and applied by every node
//! before it is cleared at the portal; killing the node that pulls moves
//! pulling to another node, and nothing is lost or stored twice.
//!
//! Needs the pinned nats-server (`scripts/install-nats.sh`): without it
//! the test fails with that advice, never skips.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use fake_bitrix24::{FakeBitrix24, FakeConfig};
use serde_json::Value;

/// The fake portal's application token (trusted with `--portal`).
const APP_TOKEN: &str = "fa4eapp70ken0123456789abcdef0123";

/// `serve --cluster … --offline pull` for node `i`, every node with the
/// same secrets key.
fn node_args(
    data: &Path,
    nats: &NatsCluster,
    i: usize,
    fake: &FakeBitrix24,
    key: &Path,
    secret_file: &Path,
) -> Vec<String> {
    let mut args = default_args(data);
    for a in [
        "--cluster",
        &nats.urls(),
        "--node-name",
        &format!("j{i}"),
        "--portal",
        &format!("{}={APP_TOKEN}", fake.config().member_id),
        "--offline",
        "pull",
        "--app-client-id",
        &fake.config().client_id,
        "--client-secret-file",
        secret_file.to_str().unwrap(),
        "--oauth-server",
        &fake.oauth_server(),
        "--secrets-key-file",
        key.to_str().unwrap(),
        "--offline-allow-http-loopback",
        "--offline-poll",
        "1",
        "--offline-timeout",
        "2",
    ] {
        args.push(a.to_string());
    }
    args
}

/// The portal's `offline` status at `node`.
async fn offline_status(node: &Client, member: &str) -> Value {
    node.portal_entry(member)
        .await
        .map(|p| p["offline"].clone())
        .unwrap_or(Value::Null)
}

/// The pulled records at `node`: message id → (id, seq, duplicates).
async fn pulled_at(node: &Client, member: &str) -> BTreeMap<String, (String, u64, u64)> {
    let r = node
        .get(&format!("/v1/portals/{member}/events"), &[("limit", "1")])
        .await;
    if r.status == 404 {
        return BTreeMap::new();
    }
    let mut out = BTreeMap::new();
    for e in node.all_events(member).await {
        if e["source"] != "offline" {
            continue;
        }
        let message_id = e["message_id"].as_str().unwrap().to_owned();
        let entry = (
            e["id"].as_str().unwrap().to_owned(),
            e["seq"].as_u64().unwrap(),
            e["duplicates"].as_u64().unwrap_or(0),
        );
        assert!(
            out.insert(message_id.clone(), entry).is_none(),
            "record {message_id} journaled twice"
        );
    }
    out
}

/// Waits until every node of `nodes` holds the same `n` pulled records;
/// returns them.
async fn same_records(
    nodes: &[&Client],
    member: &str,
    n: usize,
) -> BTreeMap<String, (String, u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut all = Vec::new();
        for node in nodes {
            all.push(pulled_at(node, member).await);
        }
        if all[0].len() == n && all.windows(2).all(|w| w[0] == w[1]) {
            return all.swap_remove(0);
        }
        let counts: Vec<usize> = all.iter().map(BTreeMap::len).collect();
        assert!(
            Instant::now() < deadline,
            "nodes did not converge on {n} pulled records: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The index (in `nodes`) of the node that pulls; asserts there is one.
async fn puller(nodes: &[&Client], member: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut pulling = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let s = offline_status(n, member).await;
            if s["pulls_here"] == true {
                pulling.push(i);
            }
        }
        if pulling.len() == 1 {
            return pulling[0];
        }
        assert!(
            Instant::now() < deadline,
            "not exactly one node pulls: {pulling:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_pulls_every_node_journals_and_a_kill_moves_pulling() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsCluster::start(dir.path());
    let init = nats.init_stream(&["--replicas", "3", "--max-age-days", "1"]);
    assert_eq!(init["status"], "ok", "{init}");
    let key: PathBuf = dir.path().join("secrets.key");
    let (status, out) = run_to_exit(
        &["keygen".into(), "--to".into(), key.to_str().unwrap().into()],
        &[],
        Duration::from_secs(20),
    );
    assert!(status.success(), "keygen: {out}");
    let fake = FakeBitrix24::start(FakeConfig::default()).await;
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, &fake.config().client_secret).unwrap();
    let member = fake.config().member_id.clone();
    let mut nodes: Vec<TestServer> = (0..3)
        .map(|i| {
            let args = node_args(
                &dir.path().join(format!("j{i}")),
                &nats,
                i,
                &fake,
                &key,
                &secret_file,
            );
            tokio::task::block_in_place(|| TestServer::spawn(args, &[]))
        })
        .collect();

    // Records queued before the install, then the install at node 2: the
    // grant (sealed) goes through the stream, so every node can pull.
    for i in 0..60 {
        fake.change("ONCRMDEALADD", &i.to_string());
        fake.change("ONCRMDEALUPDATE", &i.to_string());
    }
    let r = nodes[2].post_form(&fake.install_form(APP_TOKEN)).await;
    assert_eq!(r.status, 200, "install: {}", r.text);
    wait_until("the queue to drain", Duration::from_secs(40), || async {
        fake.queued() == 0
    })
    .await;
    let clients: Vec<&Client> = nodes.iter().map(|n| &**n).collect();
    let records = same_records(&clients, &member, 120).await;
    assert!(records.values().all(|r| r.2 == 0), "no record twice");
    // 3 batches of 50: each fetched once and cleared once (one node
    // pulled; a second puller would have fetched more).
    let calls = fake.calls();
    assert_eq!(calls.clears, 3, "{calls:?}");
    let holder = puller(&clients, &member).await;
    for (i, n) in clients.iter().enumerate() {
        // A node starts its task for a portal whose grant another node
        // received within a couple of seconds.
        wait_until("the portal's status", Duration::from_secs(10), || async {
            !offline_status(n, &member).await.is_null()
        })
        .await;
        let s = offline_status(n, &member).await;
        assert_eq!(s["recovered"], 120, "node {i}: {s}");
        assert_eq!(s["in_flight"], false, "node {i}: {s}");
        assert_eq!(s["token"], "ok", "node {i}: {s}");
    }

    // Cleared only once durable in the cluster: with the portal's clear
    // hanging, the fetched batch is already on every node.
    fake.stall_clears(true);
    for i in 100..110 {
        fake.change("ONCRMDEALADD", &i.to_string());
    }
    wait_until("a reserved batch", Duration::from_secs(20), || async {
        fake.reserved() == 10
    })
    .await;
    same_records(&clients, &member, 130).await;
    assert_eq!(fake.queued(), 10, "not cleared while the clear hangs");
    fake.stall_clears(false);
    wait_until(
        "the stalled batch to clear",
        Duration::from_secs(30),
        || async { fake.queued() == 0 },
    )
    .await;

    // The node that pulls dies; another takes the lease over and pulls
    // what is queued meanwhile.
    tokio::task::block_in_place(|| nodes[holder].kill9());
    for i in 200..230 {
        fake.change("ONCRMDEALADD", &i.to_string());
    }
    let alive: Vec<&Client> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != holder)
        .map(|(_, n)| &**n)
        .collect();
    wait_until(
        "another node to drain the queue",
        Duration::from_secs(40),
        || async { fake.queued() == 0 },
    )
    .await;
    let records = same_records(&alive, &member, 160).await;
    assert!(records.values().all(|r| r.2 == 0), "no record twice");
    let new_holder = puller(&alive, &member).await;
    let s = offline_status(alive[new_holder], &member).await;
    assert_eq!(s["recovered"], 160, "{s}");
    drop(nodes);
    drop(nats);
}
