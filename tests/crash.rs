//! Crash consistency: SIGKILL the server at a random moment under load,
//! restart it on the same data directory, and check that every event
//! acknowledged with 200 before the kill is there exactly once.
//!
//! Each cycle: 64 concurrent keep-alive connections post realistic form
//! bodies (about 10% are resends of earlier bodies) → SIGKILL after a random
//! 0.2–2 s → restart → verify:
//! - the database opens (else a reopen failure, and the data dir is kept);
//! - every acknowledged event is listed, once, with the id and seq it was
//!   acknowledged with (by id);
//! - every acknowledged body, sent again, is answered `duplicate` with that
//!   same id and seq (by dedup key);
//! - per portal, the listing is strictly decreasing in seq (so seqs are
//!   unique), the portal's `events` counter equals the number listed, and
//!   new events continue above every stored seq.
//!
//! `crash_consistency_3_cycles` runs in every `cargo test`;
//! `crash_consistency_long` (ignored) is what `scripts/crash-test.sh` runs:
//! `CRASH_CYCLES` (default 20), `CRASH_CONNS` (64), `CRASH_MIN_MS` (200),
//! `CRASH_MAX_MS` (2000), `CRASH_SEED` (random).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// splitmix64: a tiny deterministic generator (no `rand` dependency).
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Debug)]
struct Config {
    cycles: usize,
    conns: usize,
    min_delay: Duration,
    max_delay: Duration,
    seed: u64,
    /// Older acknowledged bodies re-sent after each restart (besides every
    /// body acknowledged in the cycle just killed).
    resend_older: usize,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        Err(_) => default,
    }
}

fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id())
}

/// A body posted during the run, and what the server answered for it.
#[derive(Clone, Debug)]
struct Sent {
    member: &'static str,
    /// The first 200 answer: (id, seq, cycle).
    acked: Option<(String, u64, usize)>,
    /// How many 200 answers said `stored` (must never exceed one).
    stored: u32,
}

#[derive(Default, Debug)]
struct Tally {
    acked: usize,
    lost: usize,
    duplicated: usize,
    reopen_failures: usize,
    /// Kills that came after at least one checkpoint of that run.
    after_checkpoint: usize,
    /// Restarts that applied records from the redo log.
    replayed: usize,
    /// Kills that came after at least one snapshot reopen of that run.
    after_snapshot_reopen: usize,
    mismatches: Vec<String>,
}

impl Tally {
    fn problem(&mut self, what: String) {
        if self.mismatches.len() < 50 {
            self.mismatches.push(what);
        }
    }
}

/// Shared state of the load: every body sent (by body text) and the order
/// they were sent in (for resends).
#[derive(Default)]
struct Ledger {
    bodies: HashMap<String, Sent>,
    order: Vec<String>,
    /// Inconsistent answers seen during the load: (a second copy was
    /// stored, what happened).
    problems: Vec<(bool, String)>,
}

const PORTALS: [Portal; 3] = [P1, P2, P3];

/// A realistic Bitrix24 form body, unique for (cycle, task, i).
fn make_body(rng: &mut Rng, cycle: usize, task: usize, i: usize) -> (Portal, String) {
    let portal = PORTALS[rng.below(3) as usize];
    let n = (cycle + 1) * 10_000_000 + task * 100_000 + i;
    let entity = n.to_string();
    let ts = 1_700_000_000 + n as u64 % 100_000_000;
    let style = match rng.below(4) {
        0 => Style::Php,
        1 => Style::RawBrackets,
        2 => Style::Pct20,
        _ => Style::RawBracketsPct20,
    };
    let ev = match rng.below(6) {
        0 => EventSpec::new(portal, "ONCRMACTIVITYADD", Some(&entity), ts)
            .with("data[FIELDS][OWNER_TYPE_ID]", "2"),
        1 => EventSpec::new(portal, "ONCRMACTIVITYUPDATE", Some(&entity), ts),
        2 => {
            let mut e = EventSpec::new(portal, "ONCRMACTIVITYDELETE", Some(&entity), ts);
            e.full_auth = false;
            e.handler_id = None;
            e
        }
        3 => EventSpec::new(portal, "ONCRMDYNAMICITEMUPDATE", Some(&entity), ts)
            .with("data[FIELDS][ENTITY_TYPE_ID]", "128"),
        4 => EventSpec::new(portal, "ONTASKUPDATE", None, ts)
            .with("data[FIELDS_BEFORE]", "undefined")
            .with("data[FIELDS_AFTER][ID]", &entity)
            .with("data[IS_ACCESSIBLE_BEFORE]", "N")
            .with("data[IS_ACCESSIBLE_AFTER]", "undefined"),
        _ => EventSpec::new(portal, "ONAPPINSTALL", None, ts)
            .with("data[VERSION]", "1")
            .with("data[LANGUAGE_ID]", "ru")
            .with("data[MARK]", &format!("Заметка {entity} & co")),
    };
    (portal, ev.form_styled(style))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .http1_only()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// One POST; `None` on a transport error (e.g. the server was killed).
async fn post(client: &reqwest::Client, url: &str, body: &str) -> Option<(u16, Value)> {
    let r = client
        .post(url)
        .header("content-type", FORM_CT)
        .body(body.to_owned())
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let text = r.text().await.ok()?;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Some((status, v))
}

/// Runs one connection's load until `stop`, a transport error, or the
/// bounds; records every answer in the ledger.
#[allow(clippy::too_many_arguments)]
async fn load_task(
    url: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
    cycle: usize,
    task: usize,
    deadline: Instant,
    other_statuses: Arc<Mutex<HashMap<u16, usize>>>,
) {
    let client = client();
    for i in 0..200_000 {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            break;
        }
        // About 10% resends of an earlier body (acknowledged or not).
        let resend = if rng.below(10) == 0 {
            let l = ledger.lock().unwrap();
            if l.order.is_empty() {
                None
            } else {
                let k = rng.below(l.order.len() as u64) as usize;
                Some(l.order[k].clone())
            }
        } else {
            None
        };
        let body = match resend {
            Some(b) => b,
            None => {
                let (portal, body) = make_body(&mut rng, cycle, task, i);
                let mut l = ledger.lock().unwrap();
                l.bodies.insert(
                    body.clone(),
                    Sent {
                        member: portal.member,
                        acked: None,
                        stored: 0,
                    },
                );
                l.order.push(body.clone());
                body
            }
        };
        let Some((status, v)) = post(&client, &url, &body).await else {
            break;
        };
        if status != 200 {
            *other_statuses.lock().unwrap().entry(status).or_default() += 1;
            if status < 500 {
                let what = format!("unexpected {status} for a valid body: {v}: {body}");
                ledger.lock().unwrap().problems.push((false, what));
            }
            continue;
        }
        let id = v["id"].as_str().expect("id").to_owned();
        let seq = v["seq"].as_u64().expect("seq");
        let mut l = ledger.lock().unwrap();
        let sent = l.bodies.get_mut(&body).expect("body recorded");
        let stored = v["status"] == "stored";
        sent.stored += u32::from(stored);
        let stored_twice = stored && sent.stored > 1;
        // A body answered more than once (a resend, possibly racing the
        // original) must always be answered with the same event, and stored
        // once. (Answers may be recorded in another order than the writer
        // gave them, so the `duplicate` may come first.)
        let problem = match &sent.acked {
            None => {
                sent.acked = Some((id, seq, cycle));
                None
            }
            Some((id0, seq0, _)) if *id0 != id || *seq0 != seq || stored_twice => Some(format!(
                "body answered {id0}/{seq0} earlier and {id}/{seq} ({}) now: {body}",
                v["status"]
            )),
            Some(_) => None,
        };
        if let Some(what) = problem {
            l.problems.push((stored, what));
        }
    }
}

/// Every event of `member`, newest first (own walk: TestServer's keeps every
/// response body in memory).
async fn list_all(s: &TestServer, member: &str) -> Vec<(String, u64)> {
    let c = client();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100_000 {
        let mut q = vec![("limit", "1000".to_string())];
        if let Some(cur) = &cursor {
            q.push(("cursor", cur.clone()));
        }
        let r = c
            .get(s.url(&format!("/v1/portals/{member}/events")))
            .query(&q)
            .header("authorization", format!("Bearer {READ_TOKEN}"))
            .send()
            .await
            .expect("GET events");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("JSON page");
        for e in v["events"].as_array().expect("events") {
            out.push((
                e["id"].as_str().expect("id").to_owned(),
                e["seq"].as_u64().expect("seq"),
            ));
        }
        match &v["next_cursor"] {
            Value::String(next) => cursor = Some(next.clone()),
            _ => return out,
        }
    }
    panic!("cursor walk did not end");
}

async fn portal_counters(s: &TestServer) -> HashMap<String, u64> {
    let r = client()
        .get(s.url("/v1/portals"))
        .header("authorization", format!("Bearer {READ_TOKEN}"))
        .send()
        .await
        .expect("GET portals");
    let v: Value = r.json().await.expect("JSON");
    v["portals"]
        .as_array()
        .expect("portals")
        .iter()
        .map(|p| {
            (
                p["member_id"].as_str().unwrap().to_owned(),
                p["events"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn start(dir: &std::path::Path) -> Result<TestServer, String> {
    let mut args = default_args(dir);
    // CRASH_SNAPSHOT_EVERY_MB=1 makes the writer reopen the engine every MiB
    // of redo log, so that kills land around those reopens too.
    if let Ok(mb) = std::env::var("CRASH_SNAPSHOT_EVERY_MB") {
        args.extend(["--snapshot-every-mb".to_owned(), mb]);
    }
    // `info` (the listen line is info): per-request trace lines would make
    // the log pipe the bottleneck.
    TestServer::try_spawn(args, &[("RUST_LOG", "info")])
}

/// Checks the restarted server against the ledger; returns the highest seq
/// listed per portal.
async fn verify(
    s: &TestServer,
    ledger: &Arc<Mutex<Ledger>>,
    cycle: usize,
    cfg: &Config,
    rng: &mut Rng,
    tally: &mut Tally,
) -> HashMap<&'static str, u64> {
    let mut max_seq = HashMap::new();
    let mut listed: HashMap<&'static str, HashMap<String, u64>> = HashMap::new();
    let counters = portal_counters(s).await;
    for p in PORTALS {
        let events = list_all(s, p.member).await;
        let mut by_id = HashMap::new();
        for w in events.windows(2) {
            if w[0].1 <= w[1].1 {
                tally.duplicated += usize::from(w[0].1 == w[1].1);
                tally.problem(format!(
                    "{}: listing not strictly decreasing in seq: {} then {}",
                    p.member, w[0].1, w[1].1
                ));
            }
        }
        for (id, seq) in &events {
            if by_id.insert(id.clone(), *seq).is_some() {
                tally.duplicated += 1;
                tally.problem(format!("{}: id {id} listed more than once", p.member));
            }
        }
        let n = events.len() as u64;
        let counter = counters.get(p.member).copied().unwrap_or(0);
        if counter != n {
            tally.problem(format!(
                "{}: portal counter says {counter} events, listing has {n}",
                p.member
            ));
        }
        max_seq.insert(p.member, events.first().map(|e| e.1).unwrap_or(0));
        listed.insert(p.member, by_id);
    }

    // By id: every acknowledged event is there with its seq.
    type Acked = Vec<(String, Sent)>;
    let (this_cycle, older): (Acked, Acked) = {
        let l = ledger.lock().unwrap();
        l.bodies
            .iter()
            .filter(|(_, s)| s.acked.is_some())
            .map(|(b, s)| (b.clone(), s.clone()))
            .partition(|(_, s)| s.acked.as_ref().is_some_and(|a| a.2 == cycle))
    };
    tally.acked = this_cycle.len() + older.len();
    for (stored_again, what) in std::mem::take(&mut ledger.lock().unwrap().problems) {
        tally.duplicated += usize::from(stored_again);
        tally.problem(what);
    }
    for (body, sent) in this_cycle.iter().chain(older.iter()) {
        let (id, seq, _) = sent.acked.as_ref().unwrap();
        match listed[sent.member].get(id) {
            Some(s) if s == seq => {}
            Some(s) => {
                tally.lost += 1;
                tally.problem(format!(
                    "acked {id} seq {seq} is listed with seq {s}: {body}"
                ));
            }
            None => {
                tally.lost += 1;
                tally.problem(format!(
                    "acked {id} seq {seq} ({}) missing after restart: {body}",
                    sent.member
                ));
            }
        }
    }

    // By dedup key: resend this cycle's acknowledged bodies and a sample of
    // older ones; each must be a duplicate of the acknowledged event.
    let mut resend: Vec<(String, Sent)> = this_cycle;
    for _ in 0..cfg.resend_older.min(older.len()) {
        resend.push(older[rng.below(older.len() as u64) as usize].clone());
    }
    let url = s.url(EVENTS_PATH);
    let chunks: Vec<Vec<(String, Sent)>> = resend
        .chunks(resend.len().div_ceil(16).max(1))
        .map(|c| c.to_vec())
        .collect();
    let mut handles = Vec::new();
    for chunk in chunks {
        let url = url.clone();
        handles.push(tokio::spawn(async move {
            let c = client();
            let mut problems = Vec::new();
            for (body, sent) in chunk {
                let (id, seq, _) = sent.acked.as_ref().unwrap();
                let (status, v) = post(&c, &url, &body).await.expect("resend after restart");
                if status != 200
                    || v["status"] != "duplicate"
                    || v["id"] != id.as_str()
                    || v["seq"] != *seq
                {
                    problems.push((
                        v["status"] == "stored",
                        format!("resend of acked {id}/{seq} answered {status} {v}: {body}"),
                    ));
                }
            }
            problems
        }));
    }
    for h in handles {
        for (stored_again, what) in h.await.unwrap() {
            tally.duplicated += usize::from(stored_again);
            tally.problem(what);
        }
    }
    max_seq
}

async fn run(cfg: Config) {
    eprintln!("crash-test: {cfg:?}");
    let dir = tempdir();
    let mut rng = Rng(cfg.seed);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut tally = Tally::default();
    let statuses = Arc::new(Mutex::new(HashMap::new()));
    let mut server = Some(tokio::task::block_in_place(|| start(dir.path())).expect("first start"));
    let mut cycles_done = 0;
    let started = Instant::now();
    for cycle in 0..cfg.cycles {
        let s = server.take().expect("server running");
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + cfg.max_delay + Duration::from_secs(30);
        let mut handles = Vec::new();
        for t in 0..cfg.conns {
            handles.push(tokio::spawn(load_task(
                s.url(EVENTS_PATH),
                ledger.clone(),
                stop.clone(),
                Rng(rng.next()),
                cycle,
                t,
                deadline,
                statuses.clone(),
            )));
        }
        let span = (cfg.max_delay - cfg.min_delay).as_millis() as u64;
        let delay = cfg.min_delay + Duration::from_millis(rng.below(span + 1));
        tokio::time::sleep(delay).await;
        let mut s = s;
        let logs = tokio::task::block_in_place(|| s.kill9());
        stop.store(true, Ordering::SeqCst);
        for h in handles {
            h.await.expect("load task");
        }
        let acked_now = ledger
            .lock()
            .unwrap()
            .bodies
            .values()
            .filter(|b| b.acked.as_ref().is_some_and(|a| a.2 == cycle))
            .count();
        drop(s);

        // Restart on the same directory.
        let restarted = tokio::task::block_in_place(|| start(dir.path()));
        let s = match restarted {
            Ok(s) => s,
            Err(e) => {
                tally.reopen_failures += 1;
                let kept = dir.path().to_owned();
                eprintln!(
                    "crash-test: cycle {cycle}: the journal did not reopen after SIGKILL:\n{}\nlogs before the kill (tail):\n{}",
                    tail(&e, 4000),
                    tail(&logs, 2000)
                );
                let evidence =
                    std::env::temp_dir().join(format!("b24j-crash-evidence-{}", cfg.seed));
                let _ = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(&kept)
                    .arg(&evidence)
                    .status();
                eprintln!(
                    "crash-test: data directory copied to {}",
                    evidence.display()
                );
                cycles_done = cycle + 1;
                break;
            }
        };
        // What the kill interrupted, from the two logs: a checkpoint done
        // before it (the store flushed, older redo log dropped) and a
        // replay of the redo log at the restart.
        if logs.contains("journal checkpoint: store flushed") {
            tally.after_checkpoint += 1;
        }
        if s.logs().contains("replayed the redo log") {
            tally.replayed += 1;
        }
        if logs.contains("sled writes a fresh snapshot") {
            tally.after_snapshot_reopen += 1;
        }
        let max_seq = verify(&s, &ledger, cycle, &cfg, &mut rng, &mut tally).await;
        // New events continue above every stored seq.
        let c = client();
        for p in PORTALS {
            let probe = EventSpec::new(
                p,
                "ONCRMDEALUPDATE",
                Some(&format!("after-crash-{cycle}")),
                1_900_000_000,
            );
            let (status, v) = post(&c, &s.url(EVENTS_PATH), &probe.form())
                .await
                .expect("post after restart");
            assert_eq!(status, 200, "{v}");
            let seq = v["seq"].as_u64().unwrap();
            if seq <= max_seq[p.member] {
                tally.problem(format!(
                    "{}: new event got seq {seq}, not above the stored {}",
                    p.member, max_seq[p.member]
                ));
            }
        }
        eprintln!(
            "crash-test: cycle {}/{}: killed after {:?}, acked this cycle {acked_now}, acked total {}, lost {}, duplicated {}, problems {}",
            cycle + 1,
            cfg.cycles,
            delay,
            tally.acked,
            tally.lost,
            tally.duplicated,
            tally.mismatches.len()
        );
        server = Some(s);
        cycles_done = cycle + 1;
    }
    if let Some(mut s) = server.take() {
        tokio::task::block_in_place(|| s.stop());
    }
    let other = statuses.lock().unwrap().clone();
    eprintln!(
        "crash-test: {} s, seed {}, non-200 answers during load: {other:?}",
        started.elapsed().as_secs(),
        cfg.seed
    );
    for m in &tally.mismatches {
        eprintln!("crash-test: PROBLEM: {m}");
    }
    println!(
        "crash-test: cycles={cycles_done} acked={} lost={} duplicated={} reopen_failures={} \
         kills_after_a_checkpoint={} restarts_that_replayed={} \
         kills_after_a_snapshot_reopen={}",
        tally.acked,
        tally.lost,
        tally.duplicated,
        tally.reopen_failures,
        tally.after_checkpoint,
        tally.replayed,
        tally.after_snapshot_reopen
    );
    assert!(
        tally.acked > 0,
        "no event was acknowledged: the load never ran"
    );
    assert_eq!(
        (tally.lost, tally.duplicated, tally.reopen_failures),
        (0, 0, 0),
        "crash consistency violated (seed {}): {:#?}",
        cfg.seed,
        tally.mismatches
    );
    assert!(
        tally.mismatches.is_empty(),
        "inconsistencies: {:#?}",
        tally.mismatches
    );
}

/// Three short cycles: part of every `cargo test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_consistency_3_cycles() {
    run(Config {
        cycles: 3,
        conns: 64,
        min_delay: Duration::from_millis(200),
        max_delay: Duration::from_millis(700),
        seed: env_u64("CRASH_SEED", random_seed()),
        resend_older: 100,
    })
    .await;
}

/// The full run (`scripts/crash-test.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run by scripts/crash-test.sh"]
async fn crash_consistency_long() {
    run(Config {
        cycles: env_u64("CRASH_CYCLES", 20) as usize,
        conns: env_u64("CRASH_CONNS", 64) as usize,
        min_delay: Duration::from_millis(env_u64("CRASH_MIN_MS", 200)),
        max_delay: Duration::from_millis(env_u64("CRASH_MAX_MS", 2000)),
        seed: env_u64("CRASH_SEED", random_seed()),
        resend_older: 300,
    })
    .await;
}
