//! Without systemd: the service under `scripts/run-on-socket.sh` (Debian's
//! `systemd-socket-activate` holds the socket, a shell loop restarts the
//! service on it), behind Caddy with TLS that exposes only the ingest
//! route (the shipped `deploy/Caddyfile`). Caddy and systemd are Debian
//! packages (`.ci/run` installs them); curl sends as Bitrix24's PHP sender
//! does, one HTTPS connection per event.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 8;
const RESTARTS: usize = 5;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Caddy on the shipped `deploy/Caddyfile`; killed on drop.
struct Caddy {
    child: Child,
    https_port: u16,
    root_cert: PathBuf,
}

impl Caddy {
    fn start(storage: &Path, upstream: &str) -> Caddy {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Caddyfile");
        let https_port = free_port();
        let child = Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&config)
            .env("HOME", storage)
            .env("XDG_DATA_HOME", storage.join("data"))
            .env("XDG_CONFIG_HOME", storage.join("config"))
            .env("B24J_SITE", "localhost")
            .env("B24J_UPSTREAM", upstream)
            .env("B24J_CADDY_HTTP_PORT", free_port().to_string())
            .env("B24J_CADDY_HTTPS_PORT", https_port.to_string())
            .env("B24J_CADDY_ADMIN", format!("127.0.0.1:{}", free_port()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(storage.join("caddy.log")).unwrap())
            .spawn()
            .expect("start caddy (Debian package `caddy`; .ci/run installs it)");
        let root_cert = storage.join("data/caddy/pki/authorities/local/root.crt");
        let caddy = Caddy {
            child,
            https_port,
            root_cert,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(caddy.root_cert.exists()
            && std::net::TcpStream::connect(("127.0.0.1", https_port)).is_ok())
        {
            assert!(Instant::now() < deadline, "caddy did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        caddy
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https_port)
    }

    /// One request with curl, verifying the certificate against Caddy's
    /// root: (status, body); status 0 when curl itself failed.
    fn curl(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "60",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .arg("--cacert")
        .arg(&self.root_cert);
        if let Some(body) = body {
            cmd.args([
                "-H",
                "Content-Type: application/x-www-form-urlencoded",
                "--data-binary",
                body,
            ]);
        }
        let out = cmd.arg(self.url(path)).output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = status.trim().parse().unwrap_or(0);
        let err = String::from_utf8_lossy(&out.stderr);
        (
            status,
            if status == 0 {
                err.into_owned()
            } else {
                body.to_owned()
            },
        )
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args_on(data_dir: &Path, listen: &str) -> Vec<String> {
    let mut args = default_args(data_dir);
    let i = args.iter().position(|a| a == "127.0.0.1:0").unwrap();
    args[i] = listen.to_owned();
    args
}

/// `CLIENTS` curl senders through `caddy` until `stop`: (portal, entity,
/// status, body, time).
type Sent = (Portal, String, u16, String, Duration);

fn start_senders(
    caddy: &Arc<Caddy>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Sent>>> {
    (0..CLIENTS)
        .map(|c| {
            let (caddy, stop) = (caddy.clone(), stop.clone());
            std::thread::spawn(move || {
                let portal = [P1, P2, P3][c % 3];
                let mut sent = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let entity = format!("c{c}-{n}");
                    let body = EventSpec::new(
                        portal,
                        "ONCRMACTIVITYADD",
                        Some(&entity),
                        1_700_000_000 + n,
                    )
                    .form();
                    let started = Instant::now();
                    let (status, text) = caddy.curl("POST", "/v1/bitrix24/events", Some(&body));
                    sent.push((portal, entity, status, text, started.elapsed()));
                }
                sent
            })
        })
        .collect()
}

/// Every 200 is stored once as acknowledged; returns (requests, failed,
/// longest ms).
fn check_stored(server: &TestServer, sent: &[Sent]) -> (usize, usize, u128) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut stored = HashMap::new();
    for p in [P1, P2, P3] {
        for e in rt.block_on(server.all_events(p.member)) {
            let id = e["id"].as_str().unwrap().to_owned();
            assert!(stored.insert(id, e["seq"].as_u64().unwrap()).is_none());
        }
    }
    let mut ok = 0;
    for (_, entity, status, body, _) in sent {
        if *status != 200 {
            continue;
        }
        ok += 1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], "stored", "{entity}: {body}");
        let id = v["id"].as_str().unwrap();
        assert_eq!(
            stored.get(id),
            v["seq"].as_u64().as_ref(),
            "{entity} stored as acknowledged"
        );
    }
    let longest = sent.iter().map(|s| s.4.as_millis()).max().unwrap_or(0);
    (sent.len(), sent.len() - ok, longest)
}

/// `scripts/run-on-socket.sh ADDR PIDFILE -- b24-journal ARGS`, started
/// (its loop starts the service on the first connection, which this makes).
fn run_on_socket(addr: &str, pidfile: &Path, args: &[String]) -> TestServer {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-on-socket.sh");
    let mut cmd = Command::new(script);
    cmd.arg(addr).arg(pidfile).arg("--").arg(BIN).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("B24J_") || k.starts_with("LISTEN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let target = addr.to_owned();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&target).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    TestServer::try_spawn_command(cmd, args.to_vec()).unwrap_or_else(|e| panic!("{e}"))
}

/// The service's pid, once the loop has written a new one.
fn service_pid(pidfile: &Path, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pid = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        if let Some(pid) = pid.filter(|p| Some(*p) != not) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no new service pid in {pidfile:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills the service named by the pid file when the test ends: killing the
/// loop (`TestServer`'s drop) would leave its child running.
struct KillService(PathBuf);

impl Drop for KillService {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

#[test]
fn restarts_under_run_on_socket_behind_caddy_fail_no_request() {
    let dir = tempdir();
    let storage = tempdir();
    let upstream = format!("127.0.0.1:{}", free_port());
    let pidfile = dir.path().join("service.pid");
    let _kill = KillService(pidfile.clone());
    let args = args_on(&dir.path().join("data"), "127.0.0.1:9");
    let loop_ = run_on_socket(&upstream, &pidfile, &args);
    assert!(
        loop_.logs().contains("inherited fd 3"),
        "the service took the loop's socket:\n{}",
        loop_.logs()
    );
    let caddy = Arc::new(Caddy::start(storage.path(), &upstream));
    // Only the ingest route goes through, over TLS.
    assert_eq!(caddy.curl("GET", "/v1/portals", None).0, 404);
    assert_eq!(caddy.curl("GET", "/metrics", None).0, 404);

    let stop = Arc::new(AtomicBool::new(false));
    let senders = start_senders(&caddy, &stop);
    let mut pid = service_pid(&pidfile, None);
    for i in 0..RESTARTS {
        std::thread::sleep(Duration::from_millis(600));
        // The upgrade path: SIGTERM to the service, the loop starts it
        // again on the same socket.
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        pid = service_pid(&pidfile, Some(pid));
        loop_.wait_log("listening on http://", i + 2, Duration::from_secs(30));
    }
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<Sent> = senders
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let (requests, failed, longest) = check_stored(&loop_, &sent);
    println!("run-on-socket behind caddy: requests={requests} failed={failed} restarts={RESTARTS} longest_ms={longest}");
    assert_eq!(
        failed,
        0,
        "requests failed: {:?}",
        sent.iter().find(|s| s.2 != 200)
    );
    assert_eq!(
        loop_.logs().matches("b24_journal::server: stopped").count(),
        RESTARTS,
        "each restart was a clean stop"
    );
    let mut loop_ = loop_;
    loop_.stop();
    assert!(!pidfile.exists(), "the loop stopped the service and itself");
}

/// Caddy's `lb_try_duration` alone, in front of a plain `--listen`:
/// Debian 12's Caddy (2.6.2) re-sends a retried POST without its body
/// (fixed upstream in caddyserver/caddy#7360), so requests that arrive
/// while the service restarts get a 502. Not part of `cargo test`: it
/// measures that limitation for RELIABILITY.md
/// (`cargo test --test proxy -- --ignored --nocapture`). It checks that
/// nothing answered 200 is missing, and prints how many failed.
#[test]
#[ignore]
fn plain_listen_behind_caddy_retry() {
    let dir = tempdir();
    let storage = tempdir();
    let upstream = format!("127.0.0.1:{}", free_port());
    let args = args_on(dir.path(), &upstream);
    let mut server = TestServer::spawn(args.clone(), &[]);
    let caddy = Arc::new(Caddy::start(storage.path(), &upstream));
    let stop = Arc::new(AtomicBool::new(false));
    let senders = start_senders(&caddy, &stop);
    for _ in 0..RESTARTS {
        std::thread::sleep(Duration::from_millis(600));
        server.stop();
        std::thread::sleep(Duration::from_millis(300));
        server = TestServer::spawn(args.clone(), &[]);
    }
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<Sent> = senders
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let (requests, failed, longest) = check_stored(&server, &sent);
    let statuses: std::collections::BTreeMap<u16, usize> =
        sent.iter().fold(Default::default(), |mut m, s| {
            *m.entry(s.2).or_default() += 1;
            m
        });
    println!("plain --listen behind caddy {}: requests={requests} failed={failed} statuses={statuses:?} restarts={RESTARTS} longest_ms={longest}", caddy_version());
    server.stop();
}

fn caddy_version() -> String {
    Command::new("caddy")
        .arg("version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}
