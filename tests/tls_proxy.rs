//! The shipped TLS example, `deploy/Caddyfile`, run by a real Caddy in
//! front of the real binary: an event posted over HTTPS is stored, plain
//! HTTP only redirects, nothing but the ingest route is reachable through
//! the proxy, and the client's address reaches the service's log through
//! `X-Forwarded-For` from the trusted proxy.
//!
//! Caddy signs a certificate for `localhost` with its own local CA; the
//! client trusts that CA's root (from Caddy's data directory) and nothing
//! else, so the TLS check is real. Needs Debian's `caddy` (`.ci/run`
//! installs it); without it the test fails, it is never skipped.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CADDYFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Caddyfile");

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// Caddy running the shipped Caddyfile; killed on drop.
struct Caddy {
    child: Child,
    log: PathBuf,
    https_port: u16,
    http_port: u16,
    root_cert: PathBuf,
}

impl Caddy {
    /// Starts Caddy for site `localhost` on free ports, proxying to
    /// `upstream`, with its state in `home`.
    fn start(home: &Path, upstream: &str) -> Caddy {
        let (http_port, https_port, admin_port) = (free_port(), free_port(), free_port());
        let log = home.join("caddy.log");
        let out = std::fs::File::create(&log).expect("create the caddy log");
        let child = Command::new("caddy")
            .args(["run", "--config", CADDYFILE, "--adapter", "caddyfile"])
            .env("HOME", home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("B24J_SITE", "localhost")
            .env("B24J_UPSTREAM", upstream)
            .env("B24J_CADDY_HTTP_PORT", http_port.to_string())
            .env("B24J_CADDY_HTTPS_PORT", https_port.to_string())
            .env("B24J_CADDY_ADMIN", format!("127.0.0.1:{admin_port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `caddy` ({e}): install it (apt-get install -y caddy; .ci/run does)"
                )
            });
        let root_cert = home.join("data/caddy/pki/authorities/local/root.crt");
        Caddy {
            child,
            log,
            https_port,
            http_port,
            root_cert,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An HTTPS client that trusts only Caddy's local CA, once Caddy serves
    /// `localhost` with a certificate from it (up to 30 s).
    async fn client(&mut self) -> reqwest::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("caddy exited ({status}):\n{}", self.log());
            }
            if let Ok(pem) = std::fs::read(&self.root_cert) {
                let client = self.https_client(&pem);
                match client.get(self.https_url("/")).send().await {
                    Ok(_) => return client,
                    Err(e) => last = format!("{e:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "caddy did not serve https://localhost:{} with its local CA within 30 s (last error: {last}):\n{}",
            self.https_port,
            self.log()
        );
    }

    fn https_client(&self, root_pem: &[u8]) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(root_pem).expect("Caddy's root is PEM");
        let to = SocketAddr::from(([127, 0, 0, 1], self.https_port));
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .https_only(true)
            .resolve("localhost", to)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("build the HTTPS client")
    }

    fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https_port)
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_caddy_example_serves_ingest_over_https_and_nothing_else() {
    let dir = tempdir();
    let mut srv = TestServer::start(dir.path(), &["--trusted-proxies", "127.0.0.1,::1"]);
    let home = tempdir();
    let mut caddy = Caddy::start(home.path(), &srv.addr());
    let https = caddy.client().await;

    // Bitrix24's delivery, over HTTPS: stored.
    let body = fixture("ONCRMACTIVITYUPDATE-app.form");
    let post = |body: String| {
        https
            .post(caddy.https_url(EVENTS_PATH))
            .header(reqwest::header::CONTENT_TYPE, FORM_CT)
            .body(body)
    };
    let res = post(body.clone()).send().await.expect("POST over HTTPS");
    let status = res.status().as_u16();
    let answer: serde_json::Value = res.json().await.expect("a JSON answer");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "stored", "{answer}");

    // A refused event: the log names the client Caddy saw, through the
    // trusted proxy's X-Forwarded-For.
    let forged = body.replace("51856fefc120afa4b628cc82d3935cce", "0".repeat(32).as_str());
    assert_ne!(forged, body);
    let res = post(forged).send().await.expect("POST over HTTPS");
    assert_eq!(res.status().as_u16(), 401);

    // Nothing else is reachable through the proxy, with or without the
    // right tokens.
    let read = format!("Bearer {READ_TOKEN}");
    for (method, path) in [
        ("GET", "/v1/portals".to_string()),
        ("GET", format!("/v1/portals/{}/events", P1.member)),
        ("GET", format!("/v1/portals/{}/events/stream", P1.member)),
        ("GET", "/metrics".to_string()),
        ("GET", "/healthz".to_string()),
        ("GET", "/openapi.json".to_string()),
        ("POST", "/v1/admin/backup".to_string()),
        ("DELETE", format!("/v1/admin/portals/{}", P1.member)),
        ("GET", EVENTS_PATH.to_string()),
    ] {
        let rb = match method {
            "GET" => https.get(caddy.https_url(&path)),
            "POST" => https.post(caddy.https_url(&path)).body(r#"{"to":"x"}"#),
            _ => https.delete(caddy.https_url(&path)),
        };
        let res = rb
            .header(reqwest::header::AUTHORIZATION, &read)
            .send()
            .await
            .expect("request over HTTPS");
        assert_eq!(
            res.status().as_u16(),
            404,
            "{method} {path} through the proxy"
        );
        let text = res.text().await.unwrap();
        assert!(!text.contains(P1.member), "{method} {path}: {text}");
    }

    // Plain HTTP only redirects to HTTPS: an event sent in clear is not
    // passed on.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(
            "localhost",
            SocketAddr::from(([127, 0, 0, 1], caddy.http_port)),
        )
        .build()
        .unwrap();
    let res = plain
        .post(format!("http://localhost:{}{EVENTS_PATH}", caddy.http_port))
        .header(reqwest::header::CONTENT_TYPE, FORM_CT)
        .body(body)
        .send()
        .await
        .expect("POST over plain HTTP");
    assert!(res.status().is_redirection(), "{:?}", res.status());
    let location = res.headers()[reqwest::header::LOCATION].to_str().unwrap();
    assert!(location.starts_with("https://localhost"), "{location}");

    assert_eq!(srv.count(P1.member).await, 1, "exactly the HTTPS event");
    drop(caddy);
    let logs = strip_ansi(&srv.stop());
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("refused event"))
        .collect();
    assert_eq!(refused.len(), 1, "{logs}");
    assert!(
        refused[0].contains("client=127.0.0.1 via 127.0.0.1:"),
        "{}",
        refused[0]
    );
}
