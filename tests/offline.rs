//! Offline events against a fake Bitrix24 on loopback (`fake-bitrix24`,
//! faithful to the documented behaviour: rotating refresh tokens,
//! `clear=0` reservations and refetch by `process_id`, the licence error,
//! `expired_token`, `invalid_grant`, 5xx and slow answers).
//!
//! The service runs as the real binary: the scenarios stop, SIGKILL and
//! restart it on one data directory, and read its trace-level logs for
//! secrets.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use fake_bitrix24::{FakeBitrix24, FakeConfig};
use serde_json::Value;

/// The admin token of the backup check.
const ADMIN: &str = "adm-Offl1ne7Bk9Qz4";
/// The fake portal's application token (trusted with `--portal`).
const APP_TOKEN: &str = "fa4eapp70ken0123456789abcdef0123";

/// A data directory, a secrets key, a client secret file and a fake portal.
struct Setup {
    _dir: tempfile::TempDir,
    data: PathBuf,
    key: PathBuf,
    secret_file: PathBuf,
    fake: FakeBitrix24,
}

impl Setup {
    async fn new(config: FakeConfig) -> Setup {
        let dir = tempdir();
        let data = dir.path().join("data");
        let key = dir.path().join("secrets.key");
        let (status, out) = run_to_exit(
            &["keygen".into(), "--to".into(), key.to_str().unwrap().into()],
            &[],
            Duration::from_secs(20),
        );
        assert!(status.success(), "keygen: {out}");
        let fake = FakeBitrix24::start(config).await;
        let secret_file = dir.path().join("client-secret");
        std::fs::write(&secret_file, &fake.config().client_secret).unwrap();
        Setup {
            _dir: dir,
            data,
            key,
            secret_file,
            fake,
        }
    }

    fn member(&self) -> &str {
        &self.fake.config().member_id
    }

    /// `serve` pulling the fake portal with `policy`, polling every second.
    fn args(&self, policy: &str) -> Vec<String> {
        let mut args = default_args(&self.data);
        for a in [
            "--portal",
            &format!("{}={APP_TOKEN}", self.member()),
            "--offline",
            policy,
            "--app-client-id",
            &self.fake.config().client_id,
            "--client-secret-file",
            self.secret_file.to_str().unwrap(),
            "--oauth-server",
            &self.fake.oauth_server(),
            "--secrets-key-file",
            self.key.to_str().unwrap(),
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

    fn start(&self, policy: &str) -> TestServer {
        self.start_with(policy, &[])
    }

    fn start_with(&self, policy: &str, extra: &[&str]) -> TestServer {
        let mut args = self.args(policy);
        args.extend(extra.iter().map(|a| a.to_string()));
        tokio::task::block_in_place(|| TestServer::spawn(args, &[]))
    }

    /// Posts the install (with fresh tokens) to `server`.
    async fn install(&self, server: &TestServer) {
        let r = server.post_form(&self.fake.install_form(APP_TOKEN)).await;
        assert_eq!(r.status, 200, "install: {}", r.text);
    }
}

/// Stops `server` gracefully (blocking, so off the async workers).
fn stop(server: &mut TestServer) -> String {
    tokio::task::block_in_place(|| server.stop())
}

/// The portal's `offline` status in `GET /v1/portals`.
async fn offline_status(server: &TestServer, member: &str) -> Value {
    server
        .portal_entry(member)
        .await
        .map(|p| p["offline"].clone())
        .unwrap_or(Value::Null)
}

/// Polls `check` every 100 ms until it is true; panics after `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
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

/// Waits until a pull completed after `after_ms` (Unix ms).
async fn wait_pulled(server: &TestServer, member: &str, after: &str) {
    wait_for("a complete pull", Duration::from_secs(30), || async {
        let s = offline_status(server, member).await;
        s["last_pull"].as_str().is_some_and(|t| t > after)
    })
    .await;
}

fn now_rfc3339() -> String {
    rfc3339(now_unix() - 1)
}

/// Events of the fake portal pulled from its offline queue.
fn pulled(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["source"] == "offline").collect()
}

/// No token the fake issued and not the client secret, in any file under
/// `data`, in `logs` or in `answers`.
fn assert_no_secrets(fake: &FakeBitrix24, data: &Path, logs: &str, answers: &[String]) {
    let secrets = fake.secrets();
    assert!(secrets.len() >= 3, "the fake issued tokens");
    for file in all_files(data) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for s in &secrets {
            assert!(
                !contains_bytes(&bytes, s.as_bytes()),
                "a secret in plaintext in {}",
                file.display()
            );
        }
    }
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "a secret in the logs");
        for a in answers {
            assert!(!a.contains(s.as_str()), "a secret in an API answer");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_while_stopped_is_journaled_once_and_cleared_after_commit() {
    let setup = Setup::new(FakeConfig::default()).await;
    let member = setup.member().to_owned();
    let mut server = setup.start("pull");
    setup.install(&server).await;
    wait_pulled(&server, &member, "0").await;
    let first_logs = stop(&mut server);

    // While the service is down: 60 deals added and updated, 10 of them
    // updated again (merged into their record by the portal).
    for i in 0..60 {
        setup.fake.change("ONCRMDEALADD", &i.to_string());
        setup.fake.change("ONCRMDEALUPDATE", &i.to_string());
    }
    for i in 0..10 {
        setup.fake.change("ONCRMDEALUPDATE", &i.to_string());
    }
    assert_eq!(setup.fake.queued(), 120);
    let clears_before = setup.fake.calls().clears;

    let since = now_rfc3339();
    let mut server = setup.start("pull");
    wait_for("the queue to drain", Duration::from_secs(30), || async {
        setup.fake.queued() == 0
    })
    .await;
    wait_pulled(&server, &member, &since).await;
    let events = server.all_events(&member).await;
    let offline = pulled(&events);
    assert_eq!(offline.len(), 120, "every queued record journaled once");
    let mut ids: Vec<&str> = offline
        .iter()
        .map(|e| e["message_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 120);
    let e = offline[0];
    assert_eq!(e["auth"]["user_id"], "1");
    assert!(e["entity_id"].is_string() && e["data"]["FIELDS"]["ID"] == e["entity_id"]);
    assert!(
        events.iter().any(|e| e["source"] == "push"),
        "the install was pushed"
    );
    // Three batches of 50, each cleared once, after it was committed.
    assert_eq!(setup.fake.calls().clears - clears_before, 3);
    let status = offline_status(&server, &member).await;
    assert_eq!(status["recovered"], 120);
    assert_eq!(status["clear_mode"], "reserve");
    assert_eq!(status["token"], "ok");
    assert_eq!(status["in_flight"], false);

    let answers = vec![
        server.get("/v1/portals", &[]).await.text,
        server
            .get(&format!("/v1/portals/{member}/events"), &[])
            .await
            .text,
        server.get("/metrics", &[]).await.text,
    ];
    assert!(answers[2].contains("b24j_offline_records_total{outcome=\"recovered\"} 120"));
    let logs = first_logs + &stop(&mut server);

    // The stopped directory verifies (pull state and provenance included),
    // and the CLI shows the pulling state; neither prints a token.
    let data = setup.data.to_str().unwrap().to_string();
    let (status, verify) = run_to_exit(
        &["verify".into(), "--data-dir".into(), data.clone()],
        &[],
        Duration::from_secs(60),
    );
    assert!(status.success(), "verify: {verify}");
    assert!(verify.contains("\"problem_count\": 0"), "{verify}");
    let (status, list) = run_to_exit(
        &["portals".into(), "--data-dir".into(), data, "list".into()],
        &[],
        Duration::from_secs(60),
    );
    assert!(status.success(), "portals list: {list}");
    assert!(
        list.contains(&format!(
            "{member}\t{}\toffline\ttoken=ok\tclear=reserve\tpulled=120\trecovered=120",
            setup.fake.domain()
        )),
        "{list}"
    );
    let answers = [answers, vec![verify, list]].concat();
    assert_no_secrets(&setup.fake, &setup.data, &logs, &answers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_fetch_and_clear_loses_nothing_and_stores_nothing_twice() {
    let setup = Setup::new(FakeConfig::default()).await;
    let member = setup.member().to_owned();
    let mut server = setup.start("pull");
    setup.install(&server).await;
    wait_pulled(&server, &member, "0").await;
    stop(&mut server);
    for i in 0..40 {
        setup.fake.change("ONCRMCONTACTUPDATE", &i.to_string());
    }
    // A reservation whose process id the service never saw (its answer
    // was lost): found again through event.offline.list.
    for i in 100..105 {
        setup.fake.change("ONCRMCONTACTADD", &i.to_string());
    }
    setup.fake.reserve(5);
    setup.fake.stall_clears(true);

    let mut server = setup.start("pull");
    // The first pull after the start finds the orphaned reservation,
    // journals it and hangs in its clear.
    wait_for(
        "a batch journaled, not cleared",
        Duration::from_secs(30),
        || async { pulled(&server.all_events(&member).await).len() >= 5 },
    )
    .await;
    assert!(setup.fake.reserved() > 0, "nothing cleared yet");
    tokio::task::block_in_place(|| server.kill9());
    setup.fake.stall_clears(false);

    let since = now_rfc3339();
    let mut server = setup.start("pull");
    wait_for(
        "the reservation cleared",
        Duration::from_secs(30),
        || async { setup.fake.queued() == 0 },
    )
    .await;
    wait_pulled(&server, &member, &since).await;
    let events = server.all_events(&member).await;
    let offline = pulled(&events);
    assert_eq!(offline.len(), 45, "no loss, no second copy");
    let status = offline_status(&server, &member).await;
    assert_eq!(status["recovered"], 45);
    assert!(
        status["duplicates"].as_u64().unwrap() > 0,
        "the refetch was recognised: {status}"
    );
    assert_eq!(status["in_flight"], false);
    stop(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_extended_offline_events_it_pulls_with_clear_1() {
    let setup = Setup::new(FakeConfig {
        extended: false,
        ..FakeConfig::default()
    })
    .await;
    let member = setup.member().to_owned();
    for i in 0..10 {
        setup.fake.change("ONCRMLEADADD", &i.to_string());
    }
    let mut server = setup.start("pull");
    setup.install(&server).await;
    wait_for("the queue to drain", Duration::from_secs(30), || async {
        setup.fake.queued() == 0
    })
    .await;
    wait_pulled(&server, &member, "0").await;
    let status = offline_status(&server, &member).await;
    assert_eq!(status["clear_mode"], "delete", "{status}");
    assert_eq!(status["recovered"], 10);
    assert_eq!(pulled(&server.all_events(&member).await).len(), 10);
    assert!(
        server
            .logs()
            .contains("lacks \\\"extended offline events\\\" (WRONG_LICENSE)")
            || server.logs().contains("WRONG_LICENSE")
    );
    stop(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_counts_pushed_changes_and_stores_only_the_missed_ones() {
    let setup = Setup::new(FakeConfig::default()).await;
    let member = setup.member().to_owned();
    let mut server = setup.start("reconcile");
    setup.install(&server).await;
    wait_pulled(&server, &member, "0").await;
    let t = now_unix() - 60;
    // Ten changes both pushed and queued (the queue's time a second or
    // two after the push's): the backstop must not store them again.
    for i in 0..10 {
        let id = i.to_string();
        let r = server
            .post_form(&setup.fake.push_form("ONCRMDEALUPDATE", &id, t, APP_TOKEN))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        setup.fake.change_at("ONCRMDEALUPDATE", &id, Some(t + 2));
    }
    // Five changes whose pushes were lost (the outage): recovered.
    for i in 10..15 {
        setup
            .fake
            .change_at("ONCRMDEALUPDATE", &i.to_string(), Some(t + 2));
    }
    // One change long after its entity's push: outside the window, so a
    // change of its own.
    let r = server
        .post_form(&setup.fake.push_form("ONCRMDEALUPDATE", "20", t, APP_TOKEN))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    setup.fake.change_at("ONCRMDEALUPDATE", "20", Some(t + 100));
    // 64 pushes of contacts seal the block that holds the pushed deals, so
    // that reconcile finds them in the entity index, not in the tail.
    for i in 0..64 {
        let r = server
            .post_form(&setup.fake.push_form(
                "ONCRMCONTACTUPDATE",
                &(1000 + i).to_string(),
                t,
                APP_TOKEN,
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let signal = server
        .post_form(&setup.fake.offline_signal_form(APP_TOKEN))
        .await;
    assert_eq!(signal.status, 200);
    wait_for("the queue to drain", Duration::from_secs(30), || async {
        setup.fake.queued() == 0
    })
    .await;
    let since = now_rfc3339();
    wait_pulled(&server, &member, &since).await;
    let events = server.all_events(&member).await;
    let deals: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "ONCRMDEALUPDATE")
        .collect();
    assert_eq!(
        deals.len(),
        17,
        "one entry per change: 11 pushed, 6 recovered"
    );
    assert_eq!(pulled(&events).len(), 6);
    let reconciled: u64 = deals
        .iter()
        .map(|e| e["reconciled"].as_u64().unwrap())
        .sum();
    assert_eq!(reconciled, 10);
    for e in deals.iter().filter(|e| e["source"] == "push") {
        let expected = if e["entity_id"] == "20" { 0 } else { 1 };
        assert_eq!(e["reconciled"], expected, "{e}");
    }
    let status = offline_status(&server, &member).await;
    assert_eq!(status["policy"], "reconcile");
    assert_eq!(status["reconciled"], 10);
    assert_eq!(status["recovered"], 6);
    stop(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_token_survives_a_restart_and_revocation_stops_pulling() {
    let setup = Setup::new(FakeConfig::default()).await;
    let member = setup.member().to_owned();
    let mut server = setup.start("pull");
    setup.install(&server).await;
    wait_pulled(&server, &member, "0").await;
    assert_eq!(
        setup.fake.calls().refreshes,
        0,
        "the install's access token was used"
    );

    // expired_token → refresh (rotating the refresh token) and retry once.
    setup.fake.expire_access_tokens();
    setup.fake.change("ONCRMCOMPANYADD", "1");
    wait_for("the change pulled", Duration::from_secs(30), || async {
        setup.fake.queued() == 0
    })
    .await;
    assert_eq!(setup.fake.calls().refreshes, 1);
    assert!(setup.fake.calls().expired >= 1);
    let logs = stop(&mut server);

    // The access token was never saved: the restart refreshes with the
    // rotated refresh token read (sealed) from disk.
    setup.fake.change("ONCRMCOMPANYADD", "2");
    let mut server = setup.start("pull");
    wait_for(
        "the change pulled after a restart",
        Duration::from_secs(30),
        || async { setup.fake.queued() == 0 },
    )
    .await;
    assert_eq!(setup.fake.calls().refreshes, 2);
    assert_eq!(setup.fake.calls().invalid_grants, 0);

    // A revoked grant: marked revoked, and not retried in a loop.
    setup.fake.revoke();
    setup.fake.expire_access_tokens();
    setup.fake.change("ONCRMCOMPANYADD", "3");
    wait_for(
        "the portal marked revoked",
        Duration::from_secs(30),
        || async { offline_status(&server, &member).await["token"] == "revoked" },
    )
    .await;
    let refused = setup.fake.calls().invalid_grants;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(setup.fake.calls().invalid_grants, refused, "no retry loop");
    let status = offline_status(&server, &member).await;
    assert!(status["last_error"]
        .as_str()
        .unwrap()
        .contains("invalid_grant"));
    // A new install brings a working grant back.
    setup.install(&server).await;
    wait_for("pulling again", Duration::from_secs(30), || async {
        setup.fake.queued() == 0
    })
    .await;
    assert_eq!(offline_status(&server, &member).await["token"], "ok");
    let answers = vec![server.get("/v1/portals", &[]).await.text];
    let logs = logs + &stop(&mut server);
    assert_no_secrets(&setup.fake, &setup.data, &logs, &answers);

    // An online backup copies the grant only sealed, and says what
    // resuming pulling from the copy needs.
    let backups = setup.data.parent().unwrap().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let mut server = setup.start_with(
        "pull",
        &[
            "--admin-token",
            ADMIN,
            "--backup-dir",
            backups.to_str().unwrap(),
        ],
    );
    let r = server
        .send(
            server
                .client
                .post(server.url("/v1/admin/backup"))
                .bearer_auth(ADMIN)
                .header("content-type", "application/json")
                .body(r#"{"to":"copy"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["sealed_tokens"], 1);
    assert!(r.json()["note"]
        .as_str()
        .unwrap()
        .contains("--secrets-key-file"));
    let logs = stop(&mut server);
    assert_no_secrets(&setup.fake, &backups, &logs, &[r.text]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_slow_answers_are_retried_with_back_off() {
    let setup = Setup::new(FakeConfig::default()).await;
    let member = setup.member().to_owned();
    let mut server = setup.start("pull");
    setup.install(&server).await;
    wait_pulled(&server, &member, "0").await;
    // A 5xx: backed off and retried.
    setup.fake.fail_next(1, 503);
    setup.fake.change("ONCRMDEALADD", "7");
    wait_for(
        "the change pulled despite a 503",
        Duration::from_secs(40),
        || async { setup.fake.queued() == 0 },
    )
    .await;
    // A fetch answered after the time limit (2 s): the portal may still
    // reserve its batch, whose process id the service never saw; the pull
    // after the failure finds it through event.offline.list.
    setup.fake.delay_next(1, Duration::from_secs(3));
    setup.fake.change("ONCRMDEALADD", "8");
    wait_for(
        "the change pulled despite a time-out",
        Duration::from_secs(40),
        || async { setup.fake.queued() == 0 },
    )
    .await;
    assert_eq!(pulled(&server.all_events(&member).await).len(), 2);
    let metrics = server.get("/metrics", &[]).await.text;
    let transient: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("b24j_offline_errors_total{kind=\"transient\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(transient >= 2, "{metrics}");
    stop(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_naming_another_host_as_its_endpoint_is_not_pulled() {
    let setup = Setup::new(FakeConfig::default()).await;
    let member = setup.member().to_owned();
    let mut server = setup.start("pull");
    let form = setup.fake.install_form(APP_TOKEN).replace(
        &format!(
            "auth%5Bclient_endpoint%5D=http%3A%2F%2F{}",
            setup.fake.domain().replace(':', "%3A")
        ),
        "auth%5Bclient_endpoint%5D=https%3A%2F%2Fevil.example",
    );
    assert!(form.contains("evil.example"), "{form}");
    let r = server.post_form(&form).await;
    assert_eq!(r.status, 200, "the install itself is journaled: {}", r.text);
    assert!(offline_status(&server, &member).await.is_null());
    let logs = stop(&mut server);
    assert!(logs.contains("offline pulling not enabled for this portal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_without_a_private_key_file_or_the_app_credentials() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new(FakeConfig::default()).await;
    let without = |flag: &str, args: Vec<String>| -> Vec<String> {
        let mut out = Vec::new();
        let mut skip = false;
        for a in args {
            if skip {
                skip = false;
                continue;
            }
            if a == flag {
                skip = true;
                continue;
            }
            out.push(a);
        }
        out
    };
    let refused = |args: Vec<String>, needle: &str| {
        let (status, out) = run_to_exit(&args, &[], Duration::from_secs(20));
        assert!(!status.success(), "started with {args:?}");
        assert!(out.contains(needle), "{needle:?} not in: {out}");
        for s in setup.fake.secrets() {
            assert!(!out.contains(s.as_str()), "a secret in the error");
        }
    };
    refused(
        without("--secrets-key-file", setup.args("pull")),
        "secrets_key_file (--secrets-key-file",
    );
    refused(
        without("--client-secret-file", setup.args("pull")),
        "app client_secret",
    );
    refused(
        without("--app-client-id", setup.args("pull")),
        "app client_id",
    );
    let mut bad_policy = setup.args("pull");
    let at = bad_policy.iter().position(|a| a == "pull").unwrap();
    bad_policy[at] = "sometimes".into();
    refused(bad_policy, "use off, pull or reconcile");
    std::fs::set_permissions(&setup.key, std::fs::Permissions::from_mode(0o640)).unwrap();
    refused(setup.args("pull"), "chmod 600");
}
