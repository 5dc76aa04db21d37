//! What the logs say: the client of a refused or failed request (the peer,
//! and `X-Forwarded-For` only from `--trusted-proxies`), latencies as whole
//! microseconds, and one line per command-line error. Runs the binary: the
//! tests read its log.

mod common;

use std::time::Duration;

use common::*;

/// Posts an event with a wrong token and `X-Forwarded-For: forwarded`.
async fn refused_with_forwarded_for(srv: &TestServer, forwarded: &str) {
    let mut ev = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("1"), 1_700_000_000);
    ev.token = Some("00000000000000000000000000000000".into());
    let res = srv
        .client
        .post(srv.url(EVENTS_PATH))
        .header(reqwest::header::CONTENT_TYPE, FORM_CT)
        .header("X-Forwarded-For", forwarded)
        .body(ev.form())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

/// The lines of `logs` that contain `needle`.
fn lines_with<'a>(logs: &'a str, needle: &str) -> Vec<&'a str> {
    logs.lines().filter(|l| l.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_name_the_client_and_believe_only_trusted_proxies() {
    // Behind a trusted proxy (here: the test itself, on loopback): the
    // client is the right-most untrusted address of the header.
    let dir = tempdir();
    let srv = TestServer::start(dir.path(), &["--trusted-proxies", "127.0.0.1/32,::1"]);
    refused_with_forwarded_for(&srv, "198.51.100.9, 203.0.113.7").await;
    let mut srv = srv;
    let logs = strip_ansi(&srv.stop());
    for needle in ["refused event", "status=401"] {
        let lines = lines_with(&logs, needle);
        assert_eq!(lines.len(), 1, "{needle}: {logs}");
        assert!(
            lines[0].contains("client=203.0.113.7 via 127.0.0.1:"),
            "{needle}: {}",
            lines[0]
        );
        assert!(!lines[0].contains("198.51.100.9"), "{}", lines[0]);
    }

    // Without it, the header is whatever the peer wrote: ignored.
    let dir = tempdir();
    let srv = TestServer::start(dir.path(), &[]);
    refused_with_forwarded_for(&srv, "203.0.113.7").await;
    let mut srv = srv;
    let logs = strip_ansi(&srv.stop());
    for needle in ["refused event", "status=401"] {
        let lines = lines_with(&logs, needle);
        assert_eq!(lines.len(), 1, "{needle}: {logs}");
        assert!(lines[0].contains("client=127.0.0.1:"), "{}", lines[0]);
        assert!(!lines[0].contains("203.0.113.7"), "{}", lines[0]);
    }
}

/// Request latencies are whole microseconds: no `0.040469000000000005`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_latency_is_whole_microseconds() {
    let dir = tempdir();
    let mut srv = TestServer::spawn(
        default_args(dir.path()),
        &[("RUST_LOG", "b24_journal=debug")],
    );
    srv.store(&EventSpec::new(
        P1,
        "ONCRMDEALUPDATE",
        Some("1"),
        1_700_000_000,
    ))
    .await;
    assert_eq!(srv.get_auth("/v1/portals", &[], None).await.status, 401);
    let logs = strip_ansi(&srv.stop());
    let lines = lines_with(&logs, " request ");
    assert!(lines.len() >= 2, "{logs}");
    for line in lines {
        assert!(!line.contains("latency_ms"), "{line}");
        let value = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("latency_us="))
            .unwrap_or_else(|| panic!("no latency_us in {line}"));
        assert!(
            !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
            "{line}"
        );
    }
}

/// A command that fails says so once, on stderr, as `b24-journal: …`: no
/// log line repeating it (under systemd both reach the journal).
#[test]
fn a_failed_command_prints_one_line() {
    let dir = tempdir();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let file = file.to_str().unwrap().to_string();
    for args in [
        vec!["serve", "--listen", "nonsense"],
        vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", &file],
        vec!["verify", "--data-dir", &file],
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (status, out) = run_to_exit(&args, &[], Duration::from_secs(30));
        assert!(!status.success(), "{args:?}: {out}");
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got:\n{out}");
        assert!(lines[0].starts_with("b24-journal: "), "{args:?}: {out}");
    }
}
