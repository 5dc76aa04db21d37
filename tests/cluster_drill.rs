//! The failure drill of cluster mode, on a real 3-server NATS JetStream
//! cluster (`sync_interval: always`) and three real `b24-journal` nodes:
//! 16 clients post realistic events (10% repeats, every other request
//! while quorum is lost) spread over the nodes
//! while, in turn, the stream's leader is SIGKILLed, a journal node is
//! SIGKILLed and restarted, and a second NATS server is SIGSTOPped for a
//! few seconds (no quorum). Then:
//!
//! - every event answered 200 is in every node's journal exactly once;
//! - the three journals are identical (ids, seqs, duplicate counts),
//!   compared through the API;
//! - no request made while quorum was lost was answered 200: a new
//!   event's 200 needs the stream's acknowledgement, which needs a quorum,
//!   and a resend's (which the stream's leader gives from its dedup table
//!   alone) counts only once the stream shows a quorum again;
//! - an SSE client that follows one node and reconnects to another with
//!   `Last-Event-ID` sees every event exactly once, in order.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const CLIENTS: usize = 16;
const LOAD: Duration = Duration::from_secs(32);
const T: u64 = 1_730_000_000;

fn node_args(dir: &Path, port: u16, nats: &NatsCluster, i: usize) -> Vec<String> {
    let mut args = default_args(dir);
    let at = args.iter().position(|a| a == "127.0.0.1:0").unwrap();
    args[at] = format!("127.0.0.1:{port}");
    args.extend(
        [
            "--cluster",
            &nats.urls(),
            "--node-name",
            &format!("j{i}"),
            // Shorter than the default 10 s, so that requests made while
            // quorum is lost are refused within the drill's few seconds.
            "--publish-deadline-ms",
            "2000",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args
}

/// One request of the load and its answer.
#[derive(Debug, Clone)]
struct Post {
    portal: Portal,
    entity: String,
    started: Instant,
    finished: Instant,
    status: u16,
    answer: Value,
    /// Whether it repeated an earlier event of its client.
    resend: bool,
}

/// A realistic activity event: what Bitrix24 sends for ONCRMACTIVITYADD
/// with its fields.
fn body(portal: Portal, entity: &str, ts: u64) -> String {
    EventSpec::new(portal, "ONCRMACTIVITYADD", Some(entity), ts)
        .with("data[FIELDS][OWNER_TYPE_ID]", "2")
        .with("data[FIELDS][OWNER_ID]", "4711")
        .with("data[FIELDS][SUBJECT]", "Call back about the quote")
        .form()
}

async fn client_loop(
    c: usize,
    urls: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    no_quorum: Arc<AtomicBool>,
) -> Vec<Post> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let portal = [P1, P2][c % 2];
    let mut posts = Vec::new();
    let mut sent: Vec<(String, u64)> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // Every tenth request repeats an earlier event of this client, and
        // every other one while quorum is lost: requests then wait for the
        // publish deadline, so few are made, and the drill must see
        // resends refused there.
        let repeat_now =
            n.is_multiple_of(10) || (no_quorum.load(Ordering::Relaxed) && n.is_multiple_of(2));
        let resend = repeat_now && !sent.is_empty();
        let (entity, ts) = if resend {
            sent[(n as usize * 7) % sent.len()].clone()
        } else {
            let e = (format!("c{c}-{n}"), T + n);
            sent.push(e.clone());
            e
        };
        let url = format!("{}/v1/bitrix24/events", urls[(c + n as usize) % urls.len()]);
        let started = Instant::now();
        let result = http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body(portal, &entity, ts))
            .send()
            .await;
        let (status, answer) = match result {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            // Connection refused (a dead node) or reset: no answer.
            Err(_) => (0, Value::Null),
        };
        let finished = Instant::now();
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        posts.push(Post {
            portal,
            entity,
            started,
            finished,
            status,
            answer,
            resend,
        });
    }
    posts
}

/// Follows `portal`'s SSE stream at `base` (after `last_id`, if any) until
/// `until` returns true or the connection ends; returns the events seen
/// as (id, seq, cursor).
async fn follow(
    base: &str,
    portal: &str,
    last_id: Option<String>,
    until: impl Fn(usize) -> bool,
    limit: Duration,
) -> Vec<(String, u64, String)> {
    let http = reqwest::Client::new();
    let mut rq = http
        .get(format!("{base}/v1/portals/{portal}/events/stream"))
        .bearer_auth(READ_TOKEN);
    if let Some(id) = &last_id {
        rq = rq.header("Last-Event-ID", id);
    }
    let mut resp = rq.send().await.expect("SSE request");
    assert_eq!(resp.status(), 200, "SSE at {base}");
    let deadline = Instant::now() + limit;
    let mut buf = String::new();
    let mut seen = Vec::new();
    let mut data: Option<Value> = None;
    while !until(seen.len()) && Instant::now() < deadline {
        let chunk = match tokio::time::timeout(Duration::from_millis(500), resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(_) => break,
            Err(_) => continue,
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let line = line.trim_end();
            if let Some(d) = line.strip_prefix("data:") {
                data = serde_json::from_str(d).ok();
            } else if let Some(cursor) = line.strip_prefix("id:") {
                let d = data.take().expect("data before id");
                seen.push((
                    d["id"].as_str().unwrap().to_owned(),
                    d["seq"].as_u64().unwrap(),
                    cursor.to_owned(),
                ));
            }
        }
    }
    seen
}

type Journal = BTreeMap<String, Vec<(String, u64, u64, String)>>;

/// A node's journal through the API: portal → (id, seq, duplicates, entity).
async fn journal_of(c: &Client) -> Journal {
    let mut out = BTreeMap::new();
    for p in [P1, P2] {
        let mut events: Vec<_> = c
            .all_events(p.member)
            .await
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap().to_owned(),
                    e["seq"].as_u64().unwrap(),
                    e["duplicates"].as_u64().unwrap_or(0),
                    e["entity_id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        events.sort_by_key(|e| e.1);
        out.insert(p.member.to_owned(), events);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_drill() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsCluster::start(dir.path());
    nats.init_stream(&["--replicas", "3", "--max-age-days", "1"]);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let args: Vec<Vec<String>> = (0..3)
        .map(|i| node_args(&dir.path().join(format!("j{i}")), ports[i], &nats, i))
        .collect();
    let mut nodes: Vec<TestServer> = args
        .iter()
        .map(|a| TestServer::spawn(a.clone(), &[]))
        .collect();
    let urls: Arc<Vec<String>> = Arc::new(
        ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
    );

    // Both portals exist before the SSE client starts at node 0.
    for p in [P1, P2] {
        let r = nodes[0].post_form(&body(p, "warm-up", T)).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let warm_seq = 1;
    let stop = Arc::new(AtomicBool::new(false));
    let no_quorum = Arc::new(AtomicBool::new(false));
    let sse_first = {
        let base = urls[0].clone();
        tokio::spawn(async move {
            follow(&base, P1.member, None, |_| false, Duration::from_secs(12)).await
        })
    };
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(client_loop(
                c,
                urls.clone(),
                stop.clone(),
                no_quorum.clone(),
            ))
        })
        .collect();
    let at = |secs: u64| async move {
        let when = started + Duration::from_secs(secs);
        tokio::time::sleep_until(when.into()).await;
    };

    // 1. SIGKILL the stream's leader.
    at(3).await;
    let leader = nats.leader().expect("a stream leader");
    eprintln!("drill: SIGKILL stream leader {}", nats.nodes[leader].name);
    nats.nodes[leader].kill9();

    // 2. SIGKILL journal node 2, restart it on the same directory.
    at(9).await;
    eprintln!("drill: SIGKILL journal node 2");
    nodes[2].kill9();
    at(12).await;
    nodes[2] = TestServer::spawn(args[2].clone(), &[]);
    eprintln!("drill: journal node 2 restarted");

    // 3. SIGSTOP a second NATS server: one of three left, no quorum.
    at(17).await;
    let second = (0..3).find(|&i| i != leader).unwrap();
    eprintln!("drill: SIGSTOP {}", nats.nodes[second].name);
    nats.nodes[second].signal(SIGSTOP);
    let quorum_lost = Instant::now();
    no_quorum.store(true, Ordering::Relaxed);
    at(25).await;
    no_quorum.store(false, Ordering::Relaxed);
    nats.nodes[second].signal(SIGCONT);
    let quorum_back = Instant::now();
    eprintln!("drill: SIGCONT; restarting {}", nats.nodes[leader].name);
    nats.nodes[leader].restart();

    at(LOAD.as_secs()).await;
    stop.store(true, Ordering::Relaxed);
    let mut posts = Vec::new();
    for c in clients {
        posts.extend(c.await.unwrap());
    }
    let first_part = sse_first.await.unwrap();

    // The journals converge and are identical.
    let clients_view: Vec<&Client> = nodes.iter().map(|n| &**n).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let journal = loop {
        let mut js = Vec::new();
        for c in &clients_view {
            js.push(journal_of(c).await);
        }
        if js.windows(2).all(|w| w[0] == w[1]) {
            break js.swap_remove(0);
        }
        assert!(
            Instant::now() < deadline,
            "journals did not converge: sizes {:?}\n{}",
            js.iter()
                .map(|j| j.values().map(Vec::len).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            nats.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Every 200 is in the journal, exactly once.
    let mut by_id: HashMap<&str, (&str, u64)> = HashMap::new();
    let mut entities: HashSet<(String, String)> = HashSet::new();
    for (portal, events) in &journal {
        for (id, seq, _, entity) in events {
            by_id.insert(id, (portal, *seq));
            assert!(
                entities.insert((portal.clone(), entity.clone())),
                "entity {entity} of {portal} journaled twice"
            );
        }
    }
    let ok: Vec<&Post> = posts.iter().filter(|p| p.status == 200).collect();
    assert!(ok.len() > 100, "too few events acknowledged: {}", ok.len());
    for p in &ok {
        let status = p.answer["status"].as_str().unwrap_or("");
        assert!(
            ["stored", "duplicate", "accepted"].contains(&status),
            "200 with {}",
            p.answer
        );
        assert!(
            entities.contains(&(p.portal.member.to_owned(), p.entity.clone())),
            "acknowledged event {} of {} missing from the journal",
            p.entity,
            p.portal.member
        );
        if let Some(id) = p.answer["id"].as_str() {
            let (portal, seq) = by_id
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged id {id} not in the journal"));
            assert_eq!(*portal, p.portal.member);
            if let Some(s) = p.answer["seq"].as_u64() {
                assert_eq!(*seq, s, "seq answered for {id}");
            }
        }
    }

    // No 200 at all while quorum was lost, resends included.
    let margin = Duration::from_millis(300);
    let during: Vec<&Post> = posts
        .iter()
        .filter(|p| p.started > quorum_lost + margin && p.finished < quorum_back)
        .collect();
    let ok_without_quorum: Vec<&&Post> = during.iter().filter(|p| p.status == 200).collect();
    assert!(
        ok_without_quorum.is_empty(),
        "200 answered while quorum was lost: {ok_without_quorum:?}"
    );
    assert!(
        during.iter().any(|p| p.resend),
        "the drill sent no resend while quorum was lost, so it cannot show they are refused"
    );
    let in_window: Vec<(u16, Duration)> = posts
        .iter()
        .filter(|p| p.finished > quorum_lost && p.started < quorum_back)
        .map(|p| (p.status, p.finished - p.started))
        .collect();
    assert!(
        during.iter().any(|p| p.status == 503),
        "no request was refused while quorum was lost: the drill did not take effect; \
         requests overlapping the loss (status, time): {in_window:?}\n{}",
        nats.logs()
    );

    // SSE: follow node 0, then resume at node 1 with Last-Event-ID.
    let expected: Vec<(String, u64)> = journal[P1.member]
        .iter()
        .filter(|e| e.1 > warm_seq)
        .map(|e| (e.0.clone(), e.1))
        .collect();
    assert!(
        !first_part.is_empty(),
        "the SSE client saw nothing at node 0"
    );
    let last = first_part.last().unwrap().2.clone();
    let want = expected.len() - first_part.len();
    let second_part = follow(
        &urls[1],
        P1.member,
        Some(last),
        |n| n >= want,
        Duration::from_secs(30),
    )
    .await;
    let seen: Vec<(String, u64)> = first_part
        .iter()
        .chain(second_part.iter())
        .map(|e| (e.0.clone(), e.1))
        .collect();
    assert_eq!(
        seen, expected,
        "SSE across two nodes: every event once, in order"
    );

    let answered = posts.iter().filter(|p| p.status != 0).count();
    let max_ok = ok
        .iter()
        .map(|p| p.finished - p.started)
        .max()
        .unwrap_or_default();
    eprintln!(
        "drill: {} requests, {} answered, {} acknowledged, longest 200 {:?}, {} events journaled",
        posts.len(),
        answered,
        ok.len(),
        max_ok,
        journal.values().map(Vec::len).sum::<usize>()
    );
    drop(nodes);
    drop(nats);
}
