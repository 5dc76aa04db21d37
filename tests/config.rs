//! Configuration sources: flags, B24J_* env vars, --config TOML file, their
//! precedence (flags > env > file), refusing a public listen address
//! without a read token, and refusing weak tokens (the example config's
//! placeholders, short ones, public samples off loopback).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn s(x: &str) -> String {
    x.to_string()
}

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("b24-journal.toml");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

async fn read_status(srv: &TestServer, token: &str) -> u16 {
    srv.get_auth("/v1/portals", &[], Some(&format!("Bearer {token}")))
        .await
        .status
}

async fn ingest_status(srv: &TestServer, portal: Portal, token: &str, entity: &str) -> u16 {
    let mut ev = EventSpec::new(portal, "ONCRMDEALUPDATE", Some(entity), 1700000000);
    ev.token = Some(token.into());
    srv.post_form(&ev.form()).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn env_vars_configure_portals_and_read_token() {
    let dir = tempdir();
    let env_read = "env-read-token-3b9d1f";
    let portals = format!("{}={},{}={}", P1.member, P1.token, P2.member, P2.token);
    let mut srv = TestServer::spawn(
        vec![
            s("serve"),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--data-dir"),
            s(dir.path().to_str().unwrap()),
        ],
        &[
            ("B24J_PORTALS", portals.as_str()),
            ("B24J_READ_TOKEN", env_read),
        ],
    );
    assert_eq!(ingest_status(&srv, P1, P1.token, "1").await, 200);
    assert_eq!(ingest_status(&srv, P2, P2.token, "1").await, 200);
    assert_eq!(
        ingest_status(&srv, P3, P3.token, "1").await,
        401,
        "P3 is not configured here"
    );
    assert_eq!(read_status(&srv, env_read).await, 200);
    assert_eq!(read_status(&srv, READ_TOKEN).await, 401);
    let r = srv
        .get_auth(
            &format!("/v1/portals/{}/events", P2.member),
            &[],
            Some(&format!("Bearer {env_read}")),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 1);
    let logs = srv.stop();
    assert!(!logs.contains(env_read), "read token logged");
    assert!(!logs.contains(P1.token), "portal token logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_file_provides_listen_data_dir_read_token_and_portals() {
    let cfg_dir = tempdir();
    let data = tempdir();
    let file_read = "file-read-token-8c2e7a";
    let cfg = write_config(
        cfg_dir.path(),
        &format!(
            "listen = \"127.0.0.2:0\"\ndata_dir = \"{}\"\nread_token = \"{file_read}\"\n\n[portals]\n\"{}\" = \"{}\"\n{} = \"{}\"\n",
            data.path().to_str().unwrap(),
            P1.member,
            P1.token,
            P2.member,
            P2.token
        ),
    );
    let mut srv = TestServer::spawn(vec![s("serve"), s("--config"), cfg], &[]);
    assert_eq!(srv.host, "127.0.0.2", "listen address taken from the file");
    assert_eq!(ingest_status(&srv, P1, P1.token, "1").await, 200);
    assert_eq!(ingest_status(&srv, P2, P2.token, "1").await, 200);
    assert_eq!(ingest_status(&srv, P3, P3.token, "1").await, 401);
    assert_eq!(read_status(&srv, file_read).await, 200);
    assert_eq!(read_status(&srv, READ_TOKEN).await, 401);
    srv.stop();
    assert!(
        data.path().join("FORMAT").exists(),
        "data_dir from the file is used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_token_precedence_flag_over_env_over_file() {
    let cfg_dir = tempdir();
    let data = tempdir();
    let (f, e, x) = (
        "file-read-aaaa1111",
        "env-read-bbbb2222",
        "flag-read-cccc3333",
    );
    let cfg = write_config(
        cfg_dir.path(),
        &format!(
            "read_token = \"{f}\"\n\n[portals]\n{} = \"{}\"\n",
            P1.member, P1.token
        ),
    );
    let base = vec![
        s("serve"),
        s("--config"),
        cfg.clone(),
        s("--listen"),
        s("127.0.0.1:0"),
        s("--data-dir"),
        s(data.path().to_str().unwrap()),
    ];

    // All three: the flag wins.
    let mut args = base.clone();
    args.extend([s("--read-token"), s(x)]);
    let mut srv = TestServer::spawn(args, &[("B24J_READ_TOKEN", e)]);
    assert_eq!(read_status(&srv, x).await, 200, "flag token");
    assert_eq!(
        read_status(&srv, e).await,
        401,
        "env token must lose to the flag"
    );
    assert_eq!(
        read_status(&srv, f).await,
        401,
        "file token must lose to the flag"
    );
    srv.stop();

    // Env and file: env wins.
    let mut srv = TestServer::spawn(base.clone(), &[("B24J_READ_TOKEN", e)]);
    assert_eq!(read_status(&srv, e).await, 200, "env token");
    assert_eq!(
        read_status(&srv, f).await,
        401,
        "file token must lose to env"
    );
    srv.stop();

    // File only.
    let mut srv = TestServer::spawn(base, &[]);
    assert_eq!(read_status(&srv, f).await, 200, "file token");
    assert_eq!(read_status(&srv, e).await, 401);
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn portal_token_precedence_flag_over_env_over_file() {
    let cfg_dir = tempdir();
    let data = tempdir();
    let (f, e, x) = (
        "filetok0000000000000000000000aa",
        "envtok11111111111111111111111bb",
        "flagtok2222222222222222222222cc",
    );
    let cfg = write_config(
        cfg_dir.path(),
        &format!(
            "read_token = \"{READ_TOKEN}\"\n\n[portals]\n{} = \"{f}\"\n",
            P1.member
        ),
    );
    let base = vec![
        s("serve"),
        s("--config"),
        cfg,
        s("--listen"),
        s("127.0.0.1:0"),
        s("--data-dir"),
        s(data.path().to_str().unwrap()),
    ];
    let env_portals = format!("{}={e}", P1.member);

    let mut args = base.clone();
    args.extend([s("--portal"), format!("{}={x}", P1.member)]);
    let mut srv = TestServer::spawn(args, &[("B24J_PORTALS", env_portals.as_str())]);
    assert_eq!(
        ingest_status(&srv, P1, e, "1").await,
        401,
        "env token loses to flag"
    );
    assert_eq!(
        ingest_status(&srv, P1, f, "2").await,
        401,
        "file token loses to flag"
    );
    assert_eq!(ingest_status(&srv, P1, x, "3").await, 200, "flag token");
    srv.stop();

    let mut srv = TestServer::spawn(base.clone(), &[("B24J_PORTALS", env_portals.as_str())]);
    assert_eq!(
        ingest_status(&srv, P1, f, "4").await,
        401,
        "file token loses to env"
    );
    assert_eq!(
        ingest_status(&srv, P1, x, "5").await,
        401,
        "flag token not configured"
    );
    assert_eq!(ingest_status(&srv, P1, e, "6").await, 200, "env token");
    srv.stop();

    let mut srv = TestServer::spawn(base, &[]);
    assert_eq!(ingest_status(&srv, P1, e, "7").await, 401);
    assert_eq!(ingest_status(&srv, P1, f, "8").await, 200, "file token");
    let events = srv.all_events(P1.member).await;
    let mut ents: Vec<String> = events
        .iter()
        .map(|e| e["entity_id"].as_str().unwrap().to_string())
        .collect();
    ents.sort();
    assert_eq!(
        ents,
        vec!["3", "6", "8"],
        "only the accepted posts were stored"
    );
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flags_beat_file_for_listen_and_data_dir() {
    let cfg_dir = tempdir();
    let file_data = tempdir();
    let flag_data = tempdir();
    let cfg = write_config(
        cfg_dir.path(),
        &format!(
            "listen = \"127.0.0.2:0\"\ndata_dir = \"{}\"\nread_token = \"{READ_TOKEN}\"\n\n[portals]\n{} = \"{}\"\n",
            file_data.path().to_str().unwrap(),
            P1.member,
            P1.token
        ),
    );
    let mut srv = TestServer::spawn(
        vec![
            s("serve"),
            s("--config"),
            cfg,
            s("--listen"),
            s("127.0.0.1:0"),
            s("--data-dir"),
            s(flag_data.path().to_str().unwrap()),
        ],
        &[],
    );
    assert_eq!(srv.host, "127.0.0.1", "--listen beats the file");
    assert_eq!(ingest_status(&srv, P1, P1.token, "1").await, 200);
    srv.stop();
    assert!(flag_data.path().join("FORMAT").exists(), "--data-dir used");
    assert!(
        std::fs::read_dir(file_data.path())
            .unwrap()
            .next()
            .is_none(),
        "the file's data_dir must stay untouched"
    );
}

#[test]
fn public_listen_without_read_token_is_refused() {
    let data = tempdir();
    let args = vec![
        s("serve"),
        s("--listen"),
        s("0.0.0.0:0"),
        s("--data-dir"),
        s(data.path().to_str().unwrap()),
        s("--portal"),
        P1.flag(),
    ];
    let (status, out) = run_to_exit(&args, &[], Duration::from_secs(30));
    assert!(!status.success(), "must exit non-zero; output:\n{out}");
    let lower = out.to_lowercase();
    assert!(
        lower.contains("read token")
            || lower.contains("read-token")
            || lower.contains("read_token"),
        "message must mention the read token; output:\n{out}"
    );
    assert!(
        !out.contains("listening on"),
        "must not listen; output:\n{out}"
    );

    // Same through a config file.
    let cfg_dir = tempdir();
    let cfg = write_config(
        cfg_dir.path(),
        &format!(
            "listen = \"0.0.0.0:0\"\ndata_dir = \"{}\"\n\n[portals]\n{} = \"{}\"\n",
            data.path().to_str().unwrap(),
            P1.member,
            P1.token
        ),
    );
    let (status, out) = run_to_exit(
        &[s("serve"), s("--config"), cfg],
        &[],
        Duration::from_secs(30),
    );
    assert!(
        !status.success(),
        "config file: must exit non-zero; output:\n{out}"
    );
    let lower = out.to_lowercase();
    assert!(
        lower.contains("read token")
            || lower.contains("read-token")
            || lower.contains("read_token"),
        "config file: message must mention the read token; output:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn public_listen_with_env_read_token_starts() {
    let data = tempdir();
    let tok = "env-read-public-4f7e2d";
    // P3: the sample portals' public tokens are refused off loopback.
    let mut srv = TestServer::spawn(
        vec![
            s("serve"),
            s("--listen"),
            s("0.0.0.0:0"),
            s("--data-dir"),
            s(data.path().to_str().unwrap()),
            s("--portal"),
            P3.flag(),
        ],
        &[("B24J_READ_TOKEN", tok)],
    );
    assert_eq!(srv.host, "0.0.0.0");
    assert_eq!(read_status(&srv, tok).await, 200);
    assert_eq!(ingest_status(&srv, P3, P3.token, "1").await, 200);
    srv.stop();
}

/// At the production level (`RUST_LOG=info`) answered requests stay out of
/// the log and failed ones are in it: one line per stored event would run a
/// Bitrix24 burst into journald's rate limit, which then drops the lines
/// that matter too. `b24_journal=debug` (as the README says) brings every
/// request back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn info_logs_failed_requests_and_debug_logs_every_request() {
    let request_lines = |logs: &str, status: u16| {
        logs.lines()
            .filter(|l| l.contains("request") && l.contains(&format!("status={status}")))
            .count()
    };
    for (level, answered_lines) in [("info", 0), ("b24_journal=debug", 2)] {
        let dir = tempdir();
        let args = default_args(dir.path());
        let mut srv = TestServer::spawn(args, &[("RUST_LOG", level)]);
        assert_eq!(ingest_status(&srv, P1, P1.token, "7").await, 200);
        assert_eq!(read_status(&srv, READ_TOKEN).await, 200);
        assert_eq!(ingest_status(&srv, P1, "wrong-token", "8").await, 401);
        let logs = strip_ansi(&srv.stop());
        assert_eq!(
            request_lines(&logs, 200),
            answered_lines,
            "RUST_LOG={level}: lines for answered requests in\n{logs}"
        );
        assert_eq!(
            request_lines(&logs, 401),
            1,
            "RUST_LOG={level}: the refused request is logged in\n{logs}"
        );
    }
}

/// Runs `serve` with `args` expecting a refusal; returns its output.
fn refused(args: &[String]) -> String {
    let (status, out) = run_to_exit(args, &[], Duration::from_secs(30));
    assert!(
        !status.success(),
        "{args:?} must be refused; output:\n{out}"
    );
    assert!(!out.contains("listening on"), "{out}");
    out
}

/// `config.example.toml` as shipped never starts: each placeholder is
/// refused by name, one after the other as they are replaced.
#[test]
fn the_example_config_is_refused_until_its_placeholders_are_replaced() {
    let data = tempdir();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let base = [
        s("serve"),
        s("--config"),
        s(example),
        s("--data-dir"),
        s(data.path().to_str().unwrap()),
    ];
    let portal = s("--portal=5e1d0c9b8a7f6e5d4c3b2a1908f7e6d5=9d8c7b6a5f4e3d2c1b0a998877665544");
    let read = s("--read-token=rd-1f0e9d8c7b6a5f4e3d2c");
    let steps: [(Vec<String>, &str); 3] = [
        (vec![], "invalid portals"),
        (vec![portal.clone()], "invalid read_token"),
        (vec![portal, read], "invalid admin_token"),
    ];
    for (extra, setting) in steps {
        let args: Vec<String> = base.iter().cloned().chain(extra).collect();
        let out = refused(&args);
        let line = out.trim();
        assert!(
            line.starts_with(&format!("b24-journal: {setting}")) && line.contains("CHANGE-ME"),
            "{args:?}: {out}"
        );
        assert_eq!(line.lines().count(), 1, "one line: {out}");
    }
    assert!(
        std::fs::read_dir(data.path()).unwrap().next().is_none(),
        "nothing opened"
    );
}

/// Short tokens are refused wherever they come from; the public sample
/// portal of Bitrix24's docs (the README's first command) runs only on
/// loopback, with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weak_tokens_are_refused_and_the_docs_sample_only_runs_on_loopback() {
    let data = tempdir();
    let d = data.path().to_str().unwrap();
    let read = s("--read-token=rd-1f0e9d8c7b6a5f4e3d2c");
    let p3 = format!("--portal={}", P3.flag());
    let serve = |listen: &str, extra: &[String]| {
        let mut args = vec![s("serve"), s("--listen"), s(listen), s("--data-dir"), s(d)];
        args.extend(extra.iter().cloned());
        args
    };
    for (extra, setting, secret) in [
        (
            vec![p3.clone(), s("--read-token=short-tok-123")],
            "read_token",
            "short-tok-123",
        ),
        (
            vec![p3.clone(), read.clone(), s("--admin-token=adm-0123")],
            "admin_token",
            "adm-0123",
        ),
        (
            vec![format!("--portal={}=0123456789", P3.member)],
            "portals",
            "0123456789",
        ),
    ] {
        let out = refused(&serve("127.0.0.1:0", &extra));
        assert!(
            out.contains(&format!("invalid {setting}")) && out.contains("shorter than 16"),
            "{extra:?}: {out}"
        );
        assert!(!out.contains(secret), "the token is not repeated: {out}");
    }
    let sample = [format!("--portal={}", P1.flag()), read];
    let out = refused(&serve("0.0.0.0:0", &sample));
    assert!(
        out.contains("invalid portals") && out.contains("sample application_token"),
        "{out}"
    );
    assert!(!out.contains(P1.token), "the token is not repeated: {out}");

    let mut srv = TestServer::spawn(serve("127.0.0.1:0", &sample), &[("RUST_LOG", "info")]);
    assert_eq!(ingest_status(&srv, P1, P1.token, "1").await, 200);
    let logs = strip_ansi(&srv.stop());
    let warning = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains("sample application_token"))
        .unwrap_or_else(|| panic!("no warning about the sample token in:\n{logs}"));
    assert!(warning.contains("loopback"), "{warning}");
    assert!(!logs.contains(P1.token), "token logged:\n{logs}");
}

/// Each subcommand's help shows a default once: `verify --help` printed
/// `[default: ./data]` twice (in the doc text and from clap).
#[test]
fn help_shows_each_default_once() {
    for sub in ["verify", "migrate", "portals"] {
        let (status, out) = run_to_exit(&[s(sub), s("--help")], &[], Duration::from_secs(30));
        assert!(status.success(), "{sub} --help: {out}");
        assert_eq!(
            out.matches("[default: ./data]").count(),
            1,
            "{sub} --help:\n{out}"
        );
    }
}
