//! Operations: online backup under load (then verify and serve it), the
//! size of a small backup, backups confined to `--backup-dir`, offline
//! verify (and what it says about a running service's directory), portal
//! erasure, offline portal registrations, metrics.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const ADMIN: &str = "adm-7Hc2Qp9Lx4vT3e";
const T: u64 = 1_740_000_000;

fn admin_args(dir: &std::path::Path) -> Vec<String> {
    let mut args = default_args(dir);
    args.extend(["--admin-token".to_string(), ADMIN.to_string()]);
    args
}

/// [`admin_args`] with online backups into `backups`.
fn backup_args(dir: &std::path::Path, backups: &std::path::Path) -> Vec<String> {
    let mut args = admin_args(dir);
    args.extend([
        "--backup-dir".to_string(),
        backups.to_str().unwrap().to_string(),
    ]);
    args
}

fn cli(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (status, out) = run_to_exit(&args, envs, Duration::from_secs(120));
    (status.success(), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_backup_under_load_verifies_and_serves_every_acknowledged_event() {
    let dir = tempdir();
    let backup = tempdir();
    let s = spawn_app_with(backup_args(dir.path(), backup.path())).await;
    let mut before: Vec<(String, String)> = Vec::new();
    for i in 0..300u64 {
        let portal = [P1, P2, P3][(i % 3) as usize];
        let (id, _) = s
            .store(&EventSpec::new(
                portal,
                "ONCRMACTIVITYUPDATE",
                Some(&i.to_string()),
                T + i,
            ))
            .await;
        before.push((portal.member.to_string(), id));
    }
    // Duplicates count too.
    expect_duplicate(
        &s.post_form(&EventSpec::new(P1, "ONCRMACTIVITYUPDATE", Some("0"), T).form())
            .await,
    );

    // Writers keep posting while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let client = s.client.clone();
        let url = s.url(EVENTS_PATH);
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && n < 5_000 {
                let body = EventSpec::new(
                    P2,
                    "ONCRMDEALUPDATE",
                    Some(&format!("w{w}-{n}")),
                    T + 10_000 + n,
                )
                .form();
                post_ok(&client, &url, body).await;
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let target = backup.path().canonicalize().unwrap().join("copy");
    let target_s = target.to_str().unwrap().to_string();
    let url = format!("http://{}", s.addr());
    let (ok, out) = tokio::task::spawn_blocking({
        let u = url.clone();
        move || {
            cli(
                &["backup", "--to", "copy", "--url", &u],
                &[("B24J_ADMIN_TOKEN", ADMIN)],
            )
        }
    })
    .await
    .unwrap();
    assert!(ok, "backup failed: {out}");
    assert!(out.contains("\"status\":\"ok\""), "{out}");
    assert!(
        out.contains(&format!("\"path\":\"{target_s}\"")),
        "the answer names where the copy is: {out}"
    );
    // Everything but the unsealed tails is in sled's files: the copy's
    // redo log is at most one segment holding just their snapshot, never
    // a prepared segment of zeros.
    // (Segments only: `covered`, 8 bytes, names the batch the log follows.)
    let segments: Vec<u64> = std::fs::read_dir(target.join("sled").join("wal"))
        .map(|dir| {
            dir.map(|e| e.unwrap())
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| e.metadata().unwrap().len())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        segments.len() <= 1 && segments.iter().all(|&len| len < 1 << 20),
        "a backup must carry no prepared redo log segments: {segments:?}"
    );
    stop.store(true, Ordering::SeqCst);
    let mut posted_during = 0;
    for w in writers {
        posted_during += w.await.unwrap();
    }
    assert!(posted_during > 0, "writes continued during the backup");

    // A second backup into the same, now non-empty, directory is refused.
    let (ok, out) = cli(
        &["backup", "--to", "copy", "--url", &url],
        &[("B24J_ADMIN_TOKEN", ADMIN)],
    );
    assert!(!ok && out.contains("409"), "{out}");
    // The admin API needs the admin token, not the read token.
    let r = s
        .send(
            s.client
                .post(s.url("/v1/admin/backup"))
                .bearer_auth(READ_TOKEN)
                .body("{\"to\":\"x\"}"),
        )
        .await;
    r.assert_error(401, "admin token", "read token on the admin API");
    s.stop().await;

    // The copy verifies and serves everything acknowledged before it began.
    let (ok, out) = cli(&["verify", "--data-dir", &target_s], &[]);
    assert!(ok, "verify failed: {out}");
    assert!(out.contains("\"problem_count\": 0"), "{out}");
    let b = spawn_app(&target, &[]).await;
    let mut have: HashSet<(String, String)> = HashSet::new();
    for p in [P1, P2, P3] {
        for e in b.all_events(p.member).await {
            have.insert((p.member.to_string(), e["id"].as_str().unwrap().to_string()));
        }
    }
    for item in &before {
        assert!(
            have.contains(item),
            "acknowledged event {item:?} missing from the backup"
        );
    }
    let p1 = b.portal_entry(P1.member).await.unwrap();
    assert_eq!(p1["duplicates"], 1, "{p1}");
    b.stop().await;
    // The live directory verifies too.
    let (ok, out) = cli(&["verify", "--data-dir", dir.path().to_str().unwrap()], &[]);
    assert!(ok, "verify of the live dir failed: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erase_portal_removes_everything_and_it_can_start_over() {
    let dir = tempdir();
    let s = spawn_app_with(admin_args(dir.path())).await;
    for i in 0..40u64 {
        s.store(&EventSpec::new(
            P1,
            "ONCRMACTIVITYADD",
            Some(&i.to_string()),
            T + i,
        ))
        .await;
        s.store(&EventSpec::new(
            P2,
            "ONCRMACTIVITYADD",
            Some(&i.to_string()),
            T + i,
        ))
        .await;
    }
    let del = |auth: Option<&str>, portal: &str| {
        let mut rb = s
            .client
            .delete(s.url(&format!("/v1/admin/portals/{portal}")));
        if let Some(a) = auth {
            rb = rb.bearer_auth(a);
        }
        rb
    };
    s.send(del(None, P1.domain))
        .await
        .assert_error(401, "admin", "no token");
    s.send(del(Some(READ_TOKEN), P1.domain))
        .await
        .assert_error(401, "admin", "read token");
    s.send(del(Some(ADMIN), "no-such.example"))
        .await
        .assert_error(404, "unknown portal", "unknown");
    let r = s.send(del(Some(ADMIN), P1.domain)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["events"], 40);
    assert_eq!(r.json()["member_id"], P1.member);

    // Gone from the API (configured portals show as empty), others intact.
    assert_eq!(s.count(P1.member).await, 0);
    let p1 = s.portal_entry(P1.member).await.unwrap();
    assert_eq!(p1["events"], 0, "{p1}");
    assert_eq!(s.count(P2.member).await, 40);
    // Dedup keys went too: the same event is new again, starting at seq 1.
    let (_, seq) = s
        .store(&EventSpec::new(P1, "ONCRMACTIVITYADD", Some("0"), T))
        .await;
    assert_eq!(seq, 1);
    s.stop().await;
    let (ok, out) = cli(&["verify", "--data-dir", dir.path().to_str().unwrap()], &[]);
    assert!(ok, "verify after erase: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_portal_registrations_and_verify_errors() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    // Create the data directory.
    let mut s = TestServer::start(dir.path(), &[]);
    s.stop();
    let n1 = Portal {
        member: "abababababababababababababababab",
        domain: "offline.bitrix24.com",
        token: "offline-token-42",
    };
    let (ok, out) = cli(
        &[
            "portals",
            "--data-dir",
            &d,
            "add",
            n1.member,
            "--domain",
            n1.domain,
            "--token-env",
            "N1_TOKEN",
        ],
        &[("N1_TOKEN", n1.token)],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(&["portals", "--data-dir", &d, "list"], &[]);
    assert!(
        ok && out.contains(n1.member) && out.contains("operator"),
        "{out}"
    );

    let mut s = TestServer::start(dir.path(), &[]);
    s.store(&EventSpec::new(n1, "ONCRMACTIVITYADD", Some("1"), T))
        .await;
    let mut wrong = EventSpec::new(n1, "ONCRMACTIVITYADD", Some("2"), T);
    wrong.token = Some("nope".into());
    assert_eq!(s.post_form(&wrong.form()).await.status, 401);
    // The data directory is locked while the service runs.
    let (ok, out) = cli(&["portals", "--data-dir", &d, "list"], &[]);
    assert!(!ok, "{out}");
    s.stop();

    let (ok, out) = cli(&["portals", "--data-dir", &d, "remove", n1.member], &[]);
    assert!(ok, "{out}");
    let mut s = TestServer::start(dir.path(), &[]);
    let r = s
        .post_form(&EventSpec::new(n1, "ONCRMACTIVITYADD", Some("3"), T).form())
        .await;
    assert_eq!(r.status, 401);
    s.stop();
    for f in all_files(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes
                .windows(n1.token.len())
                .any(|w| w == n1.token.as_bytes()),
            "token in {}",
            f.display()
        );
    }

    // verify refuses what is not a data directory.
    let empty = tempdir();
    let (ok, out) = cli(
        &["verify", "--data-dir", empty.path().to_str().unwrap()],
        &[],
    );
    assert!(!ok && out.contains("FORMAT"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_what_happened() {
    let dir = tempdir();
    let mut s = TestServer::start(dir.path(), &[]);
    for i in 0..5u64 {
        s.store(&EventSpec::new(
            P1,
            "ONCRMACTIVITYADD",
            Some(&i.to_string()),
            T + i,
        ))
        .await;
    }
    expect_duplicate(
        &s.post_form(&EventSpec::new(P1, "ONCRMACTIVITYADD", Some("0"), T).form())
            .await,
    );
    let mut bad = EventSpec::new(P1, "ONCRMACTIVITYADD", Some("9"), T);
    bad.token = Some("nope".into());
    assert_eq!(s.post_form(&bad.form()).await.status, 401);
    assert_eq!(s.post_raw_ct(Some("text/plain"), "x").await.status, 415);

    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for line in [
        "b24j_events_received_total 8",
        "b24j_events_stored_total 5",
        "b24j_events_duplicate_total 1",
        "b24j_events_rejected_total{reason=\"401\"} 1",
        "b24j_events_rejected_total{reason=\"415\"} 1",
        "b24j_ack_latency_seconds_count 6",
        "b24j_portals 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    for name in [
        "b24j_writer_batch_size_bucket",
        "b24j_writer_queue_depth",
        "b24j_journal_disk_bytes",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    // Each event above was its own group commit. A tail event and its
    // portal's counters stay in the memtable and the redo log until its
    // block is sealed and a checkpoint runs; what reaches sled is the
    // portal record's tables (first event) and, in each of the 6 commits,
    // the hour's activity rollup and so the batch's LSN: 1 + 6 + 6.
    let writes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("b24j_store_writes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no b24j_store_writes_total in:\n{text}"));
    assert_eq!(writes, 13, "sled writes for 6 commits");
    assert!(!text.contains(P1.token));
    s.stop();
}

/// `--retain-per-portal`: the background task deletes the oldest events
/// with their index entries and dedup keys; the rest stays consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_keeps_the_newest_events_per_portal() {
    let dir = tempdir();
    let mut args = admin_args(dir.path());
    args.extend(
        ["--retain-per-portal", "10", "--retain-every", "1"]
            .iter()
            .map(|s| s.to_string()),
    );
    let s = spawn_app_with(args).await;
    let mut ids = Vec::new();
    for i in 0..300u64 {
        let (id, _) = s
            .store(&EventSpec::new(
                P1,
                "ONCRMACTIVITYADD",
                Some(&(i % 7).to_string()),
                T + i,
            ))
            .await;
        ids.push(id);
    }
    for i in 0..4u64 {
        s.store(&EventSpec::new(
            P2,
            "ONCRMACTIVITYADD",
            Some(&i.to_string()),
            T + i,
        ))
        .await;
    }
    // Wait for the counters too: a retention run deletes first and shows
    // the new counters once that is durable, so for a moment a listing
    // already misses the oldest events while the count still has them.
    let mut left = 0;
    for _ in 0..100 {
        left = s.count(P1.member).await;
        let counted = s.portal_entry(P1.member).await.unwrap()["events"].clone();
        if left == 10 && counted == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 10, "retention did not trim P1");
    let kept: Vec<String> = s
        .all_events(P1.member)
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let newest: Vec<String> = ids.iter().rev().take(10).cloned().collect();
    assert_eq!(kept, newest, "the newest ten remain, newest first");
    assert_eq!(
        s.count(P2.member).await,
        4,
        "portals under the limit are untouched"
    );
    assert_eq!(s.portal_entry(P1.member).await.unwrap()["events"], 10);
    // The entity index no longer lists deleted events.
    let e3 = s
        .page(P1.member, &[("entity_id", "3"), ("limit", "1000")])
        .await
        .0;
    assert!(e3
        .iter()
        .all(|e| kept.contains(&e["id"].as_str().unwrap().to_string())));
    // A deleted event's dedup key went with it: a resend is stored anew.
    let (_, seq) = s
        .store(&EventSpec::new(P1, "ONCRMACTIVITYADD", Some("0"), T))
        .await;
    assert_eq!(seq, 301);
    // The kept events were in the unsealed tail, so retention deleted tail
    // items; the next events fill that block (seqs 257..=320), which is
    // sealed with the deleted ones as empty entries, and are trimmed again.
    for i in 0..30u64 {
        s.store(&EventSpec::new(
            P1,
            "ONCRMACTIVITYUPDATE",
            Some(&(i % 7).to_string()),
            T + 1000 + i,
        ))
        .await;
    }
    let mut seqs_left = Vec::new();
    for _ in 0..100 {
        seqs_left = seqs(&s.all_events(P1.member).await);
        if seqs_left.len() == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seqs_left, (322..=331).rev().collect::<Vec<u64>>());
    let e3 = s
        .page(P1.member, &[("entity_id", "3"), ("limit", "1000")])
        .await
        .0;
    let want: Vec<u64> = (322..=331u64)
        .rev()
        .filter(|q| (q - 302) % 7 == 3)
        .collect();
    assert_eq!(
        seqs(&e3),
        want,
        "entity index after sealing a trimmed block"
    );
    s.stop().await;
    let (ok, out) = cli(&["verify", "--data-dir", dir.path().to_str().unwrap()], &[]);
    assert!(ok, "verify after retention: {out}");
}

/// Bytes in the files under `dir` (apparent sizes: a file of zeros counts
/// in full).
fn bytes_under(dir: &std::path::Path) -> u64 {
    all_files(dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

/// A backup of a small journal is about as small as its data: no redo-log
/// segments (16 MiB of zeros each) in it, neither as written nor after
/// `verify` opened it (`scripts/backup.sh` verifies every backup).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_journal_makes_a_small_backup_also_after_verify() {
    let dir = tempdir();
    let backups = tempdir();
    let s = spawn_app_with(backup_args(dir.path(), backups.path())).await;
    for i in 0..20u64 {
        s.store(&EventSpec::new(
            P1,
            "ONCRMACTIVITYUPDATE",
            Some(&i.to_string()),
            T + i,
        ))
        .await;
    }
    let url = format!("http://{}", s.addr());
    let (ok, out) = cli(
        &["backup", "--to", "small", "--url", &url],
        &[("B24J_ADMIN_TOKEN", ADMIN)],
    );
    assert!(ok, "backup failed: {out}");
    s.stop().await;
    let copy = backups.path().join("small");
    let written = bytes_under(&copy);
    let copy_s = copy.to_str().unwrap();
    for round in 0..2 {
        let (ok, out) = cli(&["verify", "--data-dir", copy_s], &[]);
        assert!(
            ok && out.contains("\"events\": 20"),
            "verify {round}: {out}"
        );
    }
    let verified = bytes_under(&copy);
    for (when, total) in [("as written", written), ("after verify", verified)] {
        assert!(
            total < 2 * 1024 * 1024,
            "a backup of 20 events holds {total} bytes {when}: {:?}",
            all_files(&copy)
                .iter()
                .map(|f| (f.clone(), std::fs::metadata(f).unwrap().len()))
                .collect::<Vec<_>>()
        );
    }
}

/// `POST /v1/admin/backup` writes only inside `--backup-dir`, under a
/// relative name; it checks the admin token before anything else about the
/// request; without a backup directory it is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_backups_stay_inside_the_backup_dir_and_check_the_token_first() {
    let dir = tempdir();
    let backups = tempdir();
    let outside = tempdir();
    std::os::unix::fs::symlink(outside.path(), backups.path().join("out")).unwrap();
    let s = spawn_app_with(backup_args(dir.path(), backups.path())).await;
    s.store(&EventSpec::new(P1, "ONCRMACTIVITYADD", Some("1"), T))
        .await;
    let addr = s.addr();
    let raw = move |head: String, body: Vec<u8>| {
        let addr = addr.clone();
        tokio::task::block_in_place(move || raw_http(&addr, &head, &[body]))
    };
    let post = |auth: &str, extra: &str| {
        format!(
            "POST /v1/admin/backup HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}{extra}\r\n"
        )
    };
    let admin = format!("Authorization: Bearer {ADMIN}\r\n");

    // Without the token: 401 whatever the body, also none (no 411) or an
    // oversized one (no 413).
    for (extra, body) in [
        ("", Vec::new()),
        ("Content-Length: 10000\r\n", vec![b'x'; 10_000]),
        ("Content-Length: 2\r\n", b"{}".to_vec()),
    ] {
        let r = raw(post("", extra), body);
        assert_eq!(r.status, 401, "no token, {extra:?}: {} {}", r.head, r.body);
        assert!(r.json()["error"].as_str().unwrap().contains("admin"));
    }
    // With it: a missing body is a 400 that says what to send.
    let r = raw(post(&admin, ""), Vec::new());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("\"to\""),
        "{}",
        r.body
    );
    let r = raw(
        post(&admin, "Content-Length: 10000\r\n"),
        vec![b'x'; 10_000],
    );
    assert_eq!(r.status, 413, "{}", r.body);

    let backup = |s: &Client, to: &str| {
        s.client
            .post(s.url("/v1/admin/backup"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({ "to": to }))
    };
    let outside_s = outside.path().to_str().unwrap().to_string();
    let inner = format!("{outside_s}/inner");
    for (to, why) in [
        (outside_s.as_str(), "absolute"),
        (inner.as_str(), "absolute"),
        ("../escape", "`..`"),
        ("ok/../../escape", "`..`"),
        ("out", "symbolic link"),
        ("out/inner", "symbolic link"),
        ("missing/b1", "do not exist"),
        ("", "empty"),
    ] {
        s.send(backup(&s, to)).await.assert_error(400, why, to);
    }
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "something was written outside the backup directory"
    );
    assert!(!dir.path().parent().unwrap().join("escape").exists());

    let r = s.send(backup(&s, "b1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let want = backups.path().canonicalize().unwrap().join("b1");
    assert_eq!(r.json()["path"], want.to_str().unwrap());
    assert_eq!(r.json()["to"], "b1");
    assert!(want.join("FORMAT").exists());
    s.stop().await;

    // No backup directory: online backups are off, and the answer says
    // which setting turns them on.
    let dir = tempdir();
    let s = spawn_app_with(admin_args(dir.path())).await;
    s.send(backup(&s, "b1"))
        .await
        .assert_error(403, "--backup-dir", "no backup directory");
    s.stop().await;
}

/// `verify` (and `portals`) on the directory of a running service say so
/// and what to do instead, on one line, instead of the storage engine's
/// lock error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_of_a_running_service_says_what_to_do_on_one_line() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    s.store(&EventSpec::new(P1, "ONCRMACTIVITYADD", Some("1"), T))
        .await;
    let d = dir.path().to_str().unwrap();
    for (args, advice) in [
        (
            vec!["verify", "--data-dir", d],
            "b24-journal backup --to NAME",
        ),
        (
            vec!["portals", "--data-dir", d, "list"],
            "stop the service first",
        ),
    ] {
        let (ok, out) = cli(&args, &[("RUST_LOG", "info")]);
        assert!(!ok, "{args:?} must fail: {out}");
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got:\n{out}");
        assert!(
            lines[0].starts_with("b24-journal: ")
                && lines[0].contains("in use by a running b24-journal")
                && lines[0].contains(advice),
            "{args:?}: {out}"
        );
        assert!(!out.contains("WouldBlock"), "{out}");
    }
    s.stop().await;
}

/// `scripts/backup.sh` (the cron job the README installs) against a running
/// service: names the backup inside the service's backup directory,
/// verifies it, keeps the newest `--keep`, and refuses a `--dest` that is
/// not the service's backup directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backup_script_keeps_verified_backups_in_the_backup_dir() {
    let dir = tempdir();
    let backups = tempdir();
    let s = spawn_app_with(backup_args(dir.path(), backups.path())).await;
    s.store(&EventSpec::new(P1, "ONCRMACTIVITYADD", Some("1"), T))
        .await;
    let url = format!("http://{}", s.addr());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/backup.sh");
    let run = |dest: &std::path::Path| {
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new("bash")
                .arg(script)
                .args(["--dest", dest.to_str().unwrap(), "--keep", "2"])
                .args(["--url", &url, "--bin", BIN])
                .env("B24J_ADMIN_TOKEN", ADMIN)
                .output()
                .expect("run scripts/backup.sh")
        });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    for round in 0..3 {
        if round > 0 {
            // Backups are named by the second.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let (ok, out) = run(backups.path());
        assert!(ok && out.contains("backup ok"), "round {round}: {out}");
    }
    let mut names: Vec<String> = std::fs::read_dir(backups.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "--keep 2: {names:?}");
    for name in &names {
        assert!(
            name.starts_with("b24-journal-") && !name.ends_with(".partial"),
            "{names:?}"
        );
        let total = bytes_under(&backups.path().join(name));
        assert!(total < 2 * 1024 * 1024, "{name}: {total} bytes");
    }

    let elsewhere = tempdir();
    let (ok, out) = run(elsewhere.path());
    assert!(!ok && out.contains("backup_dir"), "{out}");
    s.stop().await;
}
