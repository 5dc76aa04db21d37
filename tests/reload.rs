//! Reloading the configuration with SIGHUP (what `systemctl reload` sends):
//! portals and tokens change without a restart, a broken file changes
//! nothing, and what only a restart can change is reported as such.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const TOKEN_A: &str = "read-token-A-6f1c9e2d";
const TOKEN_B: &str = "read-token-B-0a7d3b58";
const WAIT: Duration = Duration::from_secs(20);

fn write_config(path: &Path, read_token: &str, extra: &str, portals: &[Portal]) {
    let mut text = format!("read_token = \"{read_token}\"\n{extra}\n[portals]\n");
    for p in portals {
        text.push_str(&format!("{} = \"{}\"\n", p.member, p.token));
    }
    std::fs::write(path, text).unwrap();
}

async fn status_with(s: &TestServer, token: &str) -> u16 {
    s.get_auth("/v1/portals", &[], Some(&format!("Bearer {token}")))
        .await
        .status
}

/// `serve` on `listen` with its data in `dir/data` and `config`.
fn serve_args(listen: &str, dir: &std::path::Path, config: &std::path::Path) -> Vec<String> {
    let data = dir.join("data");
    let args = ["serve", "--listen", listen, "--data-dir"];
    args.iter()
        .map(|a| a.to_string())
        .chain([
            data.display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_portal_rotates_the_read_token_and_keeps_the_old_config_when_broken() {
    let dir = tempdir();
    let notify_dir = tempdir();
    let notify = Notifications::bind(notify_dir.path());
    let config = dir.path().join("config.toml");
    write_config(&config, TOKEN_A, "log_level = \"info\"", &[P1]);
    let args = serve_args("127.0.0.1:0", dir.path(), &config);
    let mut s = TestServer::spawn(args, &[("NOTIFY_SOCKET", notify.path())]);
    notify.wait_for("READY=1", WAIT);

    let p2_event = EventSpec::new(P2, "ONCRMDEALADD", Some("1"), 1_700_000_000);
    assert_eq!(
        s.post_form(&p2_event.form()).await.status,
        401,
        "P2 not trusted yet"
    );
    assert_eq!(status_with(&s, TOKEN_A).await, 200);
    assert_eq!(status_with(&s, TOKEN_B).await, 401);

    // Add P2, rotate the read token, switch to debug JSON logs, and change
    // a setting that needs a restart.
    write_config(
        &config,
        TOKEN_B,
        "log_level = \"debug\"\nlog_format = \"json\"\ncache_mb = 16",
        &[P1, P2],
    );
    s.sighup();
    let msgs = notify.wait_for("READY=1", WAIT);
    assert!(
        msgs.iter().any(|m| m.lines().any(|l| l == "RELOADING=1")),
        "RELOADING=1 before READY=1: {msgs:?}"
    );
    let logs = s.wait_log("configuration reloaded", 1, WAIT);
    assert!(
        logs.contains(&format!("portals added: {}", P2.member)),
        "{}",
        tail(&logs, 3000)
    );
    assert!(logs.contains("read token changed"), "{}", tail(&logs, 3000));
    assert!(
        logs.contains("cache_mb 8 -> 16 needs a restart"),
        "{}",
        tail(&logs, 3000)
    );

    expect_stored(&s.post_form(&p2_event.form()).await);
    assert_eq!(
        status_with(&s, TOKEN_A).await,
        401,
        "the old read token is gone"
    );
    assert_eq!(status_with(&s, TOKEN_B).await, 200, "the new one works");
    // Debug level and JSON lines: the 200 above is logged, as JSON.
    let logs = s.wait_log("\"level\":\"DEBUG\"", 1, WAIT);
    let after = &logs[logs.find("configuration reloaded").unwrap()..];
    assert!(
        after
            .lines()
            .any(|l| l.starts_with('{') && l.contains("\"status\":200")),
        "a JSON access-log line after the reload:\n{}",
        tail(after, 3000)
    );

    // Not TOML: refused, the running configuration stays.
    std::fs::write(&config, "read_token = \n[portals\n").unwrap();
    s.sighup();
    let logs = s.wait_log("reload refused, the running configuration stays", 1, WAIT);
    assert!(logs.contains("config file"), "{}", tail(&logs, 2000));
    // TOML, but an invalid value: refused too.
    write_config(&config, TOKEN_A, "log_level = \"b24_journal=loud\"", &[P1]);
    s.sighup();
    s.wait_log("reload refused, the running configuration stays", 2, WAIT);
    notify.wait_for("READY=1", WAIT);
    assert_eq!(
        status_with(&s, TOKEN_B).await,
        200,
        "still the token of the last good config"
    );
    assert_eq!(status_with(&s, TOKEN_A).await, 401);
    let again = EventSpec::new(P2, "ONCRMDEALADD", Some("2"), 1_700_000_001);
    expect_stored(&s.post_form(&again.form()).await);

    let logs = s.stop();
    for secret in [TOKEN_A, TOKEN_B, P1.token, P2.token] {
        assert!(!logs.contains(secret), "a token was logged");
    }
}

/// A reload that would leave the read API without a token while the
/// service listens beyond loopback is refused, as such a start would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_to_drop_the_read_token_on_a_public_address() {
    let dir = tempdir();
    let config = dir.path().join("config.toml");
    // P3: P1's token is the docs' public sample, refused beyond loopback.
    write_config(&config, TOKEN_A, "", &[P3]);
    let args = serve_args("0.0.0.0:0", dir.path(), &config);
    let s = TestServer::spawn(args, &[]);
    std::fs::write(
        &config,
        format!("[portals]\n{} = \"{}\"\n", P3.member, P3.token),
    )
    .unwrap();
    s.sighup();
    let logs = s.wait_log("reload refused, the running configuration stays", 1, WAIT);
    assert!(
        logs.contains("without a read token"),
        "{}",
        tail(&logs, 2000)
    );
    assert_eq!(status_with(&s, TOKEN_A).await, 200, "the token stays");
}
