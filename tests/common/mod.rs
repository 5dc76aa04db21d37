//! Shared helpers for the integration tests: start the real `b24-journal`
//! binary as a child process, talk HTTP to it (reqwest or raw TCP), build
//! Bitrix24-style event bodies the way PHP's `http_build_query` does.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_b24-journal");
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

pub const READ_TOKEN: &str = "rd-Kq7Vx2Lm9Pz4Tn8Wc3Yb6";
/// Distinctive OAuth values placed in every generated event so that leak
/// checks have something unique to look for.
pub const ACCESS_TOKEN: &str = "acc0f3e1d9c7b5a3918273645zzQ";
pub const REFRESH_TOKEN: &str = "ref9a8b7c6d5e4f3a2b1c0ddeeWW";

pub const EVENTS_PATH: &str = "/v1/bitrix24/events";
pub const FORM_CT: &str = "application/x-www-form-urlencoded";
pub const JSON_CT: &str = "application/json";
pub const MAX_BODY: usize = 65536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Portal {
    pub member: &'static str,
    pub domain: &'static str,
    pub token: &'static str,
}

/// The portal of the docs / activity fixtures.
pub const P1: Portal = Portal {
    member: "a223c6b3710f85df22e9377d6c4f7553",
    domain: "some-domain.bitrix24.com",
    token: "51856fefc120afa4b628cc82d3935cce",
};
/// The portal of the PHP SDK fixture.
pub const P2: Portal = Portal {
    member: "010b6886ebc205e43ae65000ee00addb",
    domain: "bitrix24-php-sdk-playground.bitrix24.com",
    token: "3c6c9248ec54af6bea1159b43ee0ab32",
};
/// A configured portal that the fixtures never use.
pub const P3: Portal = Portal {
    member: "5e1d0c9b8a7f6e5d4c3b2a1908f7e6d5",
    domain: "third-portal.bitrix24.de",
    token: "9d8c7b6a5f4e3d2c1b0a998877665544",
};

impl Portal {
    pub fn flag(&self) -> String {
        format!("{}={}", self.member, self.token)
    }
}

pub fn fixture(name: &str) -> String {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read fixture {path}: {e}"))
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("b24j-test-")
        .tempdir()
        .expect("create temp dir")
}

// ---------------------------------------------------------------------------
// Process management
// ---------------------------------------------------------------------------

/// Remove ANSI escape sequences (CSI ... final byte) from a log line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c2 in chars.by_ref() {
                    if ('@'..='~').contains(&c2) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parse `listening on http://HOST:PORT` out of a log line.
fn parse_listen_line(line: &str) -> Option<(String, u16)> {
    let marker = "listening on http://";
    let idx = line.find(marker)?;
    let rest = &line[idx + marker.len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '/')
        .collect();
    let colon = addr.rfind(':')?;
    let host = addr[..colon]
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port: u16 = addr[colon + 1..].parse().ok()?;
    Some((host, port))
}

/// A command for the binary with a clean, deterministic environment.
pub fn base_command(args: &[String], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("B24J_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "trace");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn drain<R: Read + Send + 'static>(
    reader: R,
    buf: Arc<Mutex<String>>,
    port_tx: Option<mpsc::Sender<(String, u16)>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut sent = port_tx.is_none();
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = strip_ansi(&String::from_utf8_lossy(&line));
                    let text = text.trim_end_matches(['\n', '\r']);
                    {
                        let mut b = buf.lock().unwrap();
                        b.push_str(text);
                        b.push('\n');
                    }
                    if !sent {
                        if let Some(hp) = parse_listen_line(text) {
                            if let Some(tx) = &port_tx {
                                let _ = tx.send(hp);
                            }
                            sent = true;
                        }
                    }
                }
            }
        }
    })
}

/// Run the binary expecting it to exit by itself (e.g. refusing to start).
/// Returns the exit status and stderr+stdout. Panics if it keeps running for
/// `timeout` (after killing it), since that means it did not refuse.
pub fn run_to_exit(
    args: &[String],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> (ExitStatus, String) {
    let mut child = base_command(args, envs).spawn().expect("spawn b24-journal");
    let logs = Arc::new(Mutex::new(String::new()));
    let h1 = drain(child.stderr.take().unwrap(), logs.clone(), None);
    let h2 = drain(child.stdout.take().unwrap(), logs.clone(), None);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = h1.join();
            let _ = h2.join();
            panic!(
                "b24-journal {:?} was expected to exit by itself but was still running after {:?}; output:\n{}",
                args,
                timeout,
                logs.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = h1.join();
    let _ = h2.join();
    let out = logs.lock().unwrap().clone();
    (status, out)
}

pub struct Resp {
    pub status: u16,
    pub text: String,
    pub content_type: Option<String>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): status {} body {:?}",
                self.status, self.text
            )
        })
    }

    /// The `error` string of a JSON error body (panics if absent); also
    /// checks the response is labelled as JSON.
    pub fn error(&self) -> String {
        let ct = self.content_type.clone().unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "error response must have a JSON content type, got {ct:?} (status {} body {:?})",
            self.status,
            self.text
        );
        let v = self.json();
        match v.get("error").and_then(Value::as_str) {
            Some(s) => s.to_string(),
            None => panic!(
                "expected a JSON body with an \"error\" string, got status {} body {:?}",
                self.status, self.text
            ),
        }
    }

    /// Assert status and that the JSON error message mentions `needle`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, needle: &str, what: &str) {
        assert_eq!(
            self.status, status,
            "{what}: expected status {status}, got {} body {:?}",
            self.status, self.text
        );
        let msg = self.error();
        assert!(
            msg.contains(needle),
            "{what}: error message {msg:?} should mention {needle:?}"
        );
    }
}

pub struct TestServer {
    child: Option<Child>,
    pub host: String,
    pub port: u16,
    logs: Arc<Mutex<String>>,
    drains: Vec<JoinHandle<()>>,
    pub client: reqwest::Client,
    responses: Arc<Mutex<Vec<String>>>,
    pub args: Vec<String>,
}

pub fn default_args(data_dir: &Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data_dir.to_str().unwrap().into(),
        "--portal".into(),
        P1.flag(),
        "--portal".into(),
        P2.flag(),
        "--portal".into(),
        P3.flag(),
        "--read-token".into(),
        READ_TOKEN.into(),
    ]
}

impl TestServer {
    /// Start `b24-journal serve` on 127.0.0.1:0 with portals P1, P2, P3 and
    /// `READ_TOKEN`, plus `extra_args`.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> TestServer {
        let mut args = default_args(data_dir);
        args.extend(extra_args.iter().map(|s| s.to_string()));
        Self::spawn(args, &[])
    }

    /// Start the binary with exactly these arguments and extra env vars and
    /// wait (up to 30 s) for its `listening on http://HOST:PORT` line.
    pub fn spawn(args: Vec<String>, envs: &[(&str, &str)]) -> TestServer {
        Self::try_spawn(args, envs).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `spawn`, but a server that does not come up (exits, or logs no
    /// `listening on` line within 30 s) is an `Err` with its output instead
    /// of a panic.
    pub fn try_spawn(args: Vec<String>, envs: &[(&str, &str)]) -> Result<TestServer, String> {
        let mut child = base_command(&args, envs)
            .spawn()
            .expect("spawn b24-journal");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let h1 = drain(child.stderr.take().unwrap(), logs.clone(), Some(tx));
        let h2 = drain(child.stdout.take().unwrap(), logs.clone(), None);
        let (host, port) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(hp) => hp,
            Err(e) => {
                let _ = child.kill();
                let st = child.wait();
                let _ = h1.join();
                let _ = h2.join();
                let out = logs.lock().unwrap().clone();
                return Err(format!(
                    "b24-journal {args:?} did not log `listening on http://HOST:PORT` ({e:?}); exit {st:?}; output:\n{out}"
                ));
            }
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Ok(TestServer {
            child: Some(child),
            host,
            port,
            logs,
            drains: vec![h1, h2],
            client,
            responses: Arc::new(Mutex::new(Vec::new())),
            args,
        })
    }

    pub fn addr(&self) -> String {
        let host = match self.host.as_str() {
            "0.0.0.0" | "::" | "" => "127.0.0.1",
            h => h,
        };
        format!("{host}:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Whether the process is still running (not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL (no graceful shutdown) and reap; returns all logs.
    pub fn kill9(&mut self) -> String {
        let mut child = self.child.take().expect("server already stopped");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        for h in self.drains.drain(..) {
            let _ = h.join();
        }
        self.logs()
    }

    /// Send SIGTERM without waiting (see `wait_exit`).
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
    }

    /// Every response body received through the reqwest helpers so far.
    pub fn responses(&self) -> Vec<String> {
        self.responses.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server already stopped").id()
    }

    /// SIGTERM, wait (up to 20 s), assert exit status 0; returns all logs.
    pub fn stop(&mut self) -> String {
        self.sigterm();
        self.wait_exit()
    }

    /// Wait (up to 20 s) for the process to exit after `sigterm`, assert
    /// exit status 0; returns all logs.
    pub fn wait_exit(&mut self) -> String {
        let mut child = self.child.take().expect("server already stopped");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not exit within 20 s of SIGTERM; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for h in self.drains.drain(..) {
            let _ = h.join();
        }
        let logs = self.logs();
        assert!(
            status.success(),
            "server should exit 0 on SIGTERM, got {status:?}; logs tail:\n{}",
            tail(&logs, 4000)
        );
        logs
    }

    // -- HTTP helpers -------------------------------------------------------

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("HTTP request failed");
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = r.text().await.expect("read body");
        self.responses.lock().unwrap().push(text.clone());
        Resp {
            status,
            text,
            content_type,
        }
    }

    pub async fn post_raw_ct(&self, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Resp {
        let mut rb = self.client.post(self.url(EVENTS_PATH)).body(body.into());
        if let Some(ct) = content_type {
            rb = rb.header(reqwest::header::CONTENT_TYPE, ct);
        }
        self.send(rb).await
    }

    pub async fn post_form(&self, body: &str) -> Resp {
        self.post_raw_ct(Some(FORM_CT), body.to_string()).await
    }

    pub async fn post_json(&self, v: &Value) -> Resp {
        self.post_raw_ct(Some(JSON_CT), serde_json::to_vec(v).unwrap())
            .await
    }

    /// Post and require 200 with status "stored"; returns (id, seq).
    #[track_caller]
    pub fn expect_stored(r: &Resp) -> (String, u64) {
        assert_eq!(
            r.status, 200,
            "expected 200 stored, got {} {:?}",
            r.status, r.text
        );
        let v = r.json();
        assert_eq!(v["status"], "stored", "expected stored: {v}");
        let id = v["id"].as_str().expect("id string").to_string();
        let seq = v["seq"].as_u64().expect("seq integer");
        (id, seq)
    }

    #[track_caller]
    pub fn expect_duplicate(r: &Resp) -> (String, u64) {
        assert_eq!(
            r.status, 200,
            "expected 200 duplicate, got {} {:?}",
            r.status, r.text
        );
        let v = r.json();
        assert_eq!(v["status"], "duplicate", "expected duplicate: {v}");
        let id = v["id"].as_str().expect("id string").to_string();
        let seq = v["seq"].as_u64().expect("seq integer");
        (id, seq)
    }

    pub async fn store(&self, ev: &EventSpec) -> (String, u64) {
        let r = self.post_form(&ev.form()).await;
        Self::expect_stored(&r)
    }

    pub async fn get_auth(&self, path: &str, query: &[(&str, &str)], auth: Option<&str>) -> Resp {
        let mut rb = self.client.get(self.url(path)).query(query);
        if let Some(a) = auth {
            rb = rb.header(reqwest::header::AUTHORIZATION, a);
        }
        self.send(rb).await
    }

    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Resp {
        self.get_auth(path, query, Some(&format!("Bearer {READ_TOKEN}")))
            .await
    }

    /// One page of events; asserts 200 and the page shape.
    pub async fn page(&self, portal: &str, query: &[(&str, &str)]) -> (Vec<Value>, Option<String>) {
        let r = self
            .get(&format!("/v1/portals/{portal}/events"), query)
            .await;
        assert_eq!(
            r.status, 200,
            "GET events {portal} {query:?}: {} {:?}",
            r.status, r.text
        );
        let v = r.json();
        let events = v["events"]
            .as_array()
            .unwrap_or_else(|| panic!("events array missing: {v}"))
            .clone();
        let cursor = match &v["next_cursor"] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => panic!("next_cursor must be string or null, got {other}"),
        };
        assert!(
            v.as_object().unwrap().contains_key("next_cursor"),
            "next_cursor key must be present: {v}"
        );
        (events, cursor)
    }

    /// Follow `next_cursor` until null. Asserts no page exceeds `limit`.
    pub async fn walk(&self, portal: &str, query: &[(&str, &str)], limit: usize) -> Vec<Value> {
        let limit_s = limit.to_string();
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..20_000 {
            let mut q: Vec<(&str, &str)> = query.to_vec();
            q.push(("limit", &limit_s));
            if let Some(c) = &cursor {
                q.push(("cursor", c));
            }
            let (events, next) = self.page(portal, &q).await;
            assert!(
                events.len() <= limit,
                "page holds {} events, more than limit {limit}",
                events.len()
            );
            all.extend(events);
            match next {
                None => return all,
                Some(c) => {
                    assert_ne!(
                        cursor.as_deref(),
                        Some(c.as_str()),
                        "cursor did not advance"
                    );
                    cursor = Some(c)
                }
            }
        }
        panic!("cursor walk did not terminate after 20000 pages");
    }

    pub async fn all_events(&self, portal: &str) -> Vec<Value> {
        self.walk(portal, &[], 1000).await
    }

    pub async fn count(&self, portal: &str) -> usize {
        self.all_events(portal).await.len()
    }

    pub async fn portals(&self) -> Vec<Value> {
        let r = self.get("/v1/portals", &[]).await;
        assert_eq!(r.status, 200, "GET /v1/portals: {} {:?}", r.status, r.text);
        r.json()["portals"]
            .as_array()
            .unwrap_or_else(|| panic!("portals array missing: {}", r.text))
            .clone()
    }

    pub async fn portal_entry(&self, member: &str) -> Option<Value> {
        self.portals()
            .await
            .into_iter()
            .find(|p| p["member_id"] == member)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// POSTs a form body with a bare client (for spawned writer tasks), requires
/// 200 and returns the JSON answer.
pub async fn post_ok(client: &reqwest::Client, url: &str, body: String) -> Value {
    let r = client
        .post(url)
        .header("content-type", FORM_CT)
        .body(body)
        .send()
        .await
        .expect("HTTP request failed");
    let status = r.status().as_u16();
    let text = r.text().await.expect("read body");
    assert_eq!(status, 200, "POST {url}: {text}");
    serde_json::from_str(&text).expect("JSON answer")
}

pub fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        s
    } else {
        let mut start = s.len() - n;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        &s[start..]
    }
}

pub fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("event id").to_string())
        .collect()
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().expect("event seq"))
        .collect()
}

#[track_caller]
pub fn assert_unique(ids: &[String]) {
    let mut seen = HashSet::new();
    for id in ids {
        assert!(seen.insert(id.clone()), "id {id} returned more than once");
    }
}

// ---------------------------------------------------------------------------
// Body builders
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// PHP http_build_query (RFC 1738): brackets %5B %5D, spaces '+'.
    Php,
    /// Brackets left raw, spaces '+'.
    RawBrackets,
    /// Brackets encoded, spaces %20.
    Pct20,
    /// Brackets raw, spaces %20.
    RawBracketsPct20,
}

fn enc(s: &str, raw_brackets: bool, plus_space: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b'[' | b']' if raw_brackets => out.push(b as char),
            b' ' if plus_space => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn encode_pairs(pairs: &[(String, String)], style: Style) -> String {
    let (raw, plus) = match style {
        Style::Php => (false, true),
        Style::RawBrackets => (true, true),
        Style::Pct20 => (false, false),
        Style::RawBracketsPct20 => (true, false),
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k, raw, plus), enc(v, false, plus)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `http_build_query` of a flat list of bracket-key pairs.
pub fn php_form(pairs: &[(&str, &str)]) -> String {
    let owned: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    encode_pairs(&owned, Style::Php)
}

/// "a[b][c]" -> ["a", "b", "c"]
pub fn split_key(k: &str) -> Vec<String> {
    let (head, mut rest) = match k.find('[') {
        Some(i) => (&k[..i], &k[i..]),
        None => (k, ""),
    };
    let mut parts = vec![head.to_string()];
    while let Some(s) = rest.strip_prefix('[') {
        let end = s.find(']').expect("unbalanced bracket key");
        parts.push(s[..end].to_string());
        rest = &s[end + 1..];
    }
    parts
}

/// Nest bracket-key pairs into a JSON object, as PHP's parse_str would.
pub fn nest(pairs: &[(String, String)]) -> Value {
    let mut root = Map::new();
    for (k, v) in pairs {
        let parts = split_key(k);
        let mut cur = &mut root;
        for (i, p) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                cur.insert(p.clone(), Value::String(v.clone()));
            } else {
                let entry = cur
                    .entry(p.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                cur = entry.as_object_mut().unwrap();
            }
        }
    }
    Value::Object(root)
}

#[derive(Clone, Debug)]
pub struct EventSpec {
    pub portal: Portal,
    pub event: String,
    pub ts: String,
    pub entity: Option<String>,
    /// Extra pairs with full keys, e.g. ("data[FIELDS][TITLE]", "x").
    pub extra: Vec<(String, String)>,
    pub handler_id: Option<String>,
    /// Full application auth set (with access/refresh token) or the short
    /// webhook set.
    pub full_auth: bool,
    /// Override the application token sent.
    pub token: Option<String>,
    /// Override the member_id sent.
    pub member: Option<String>,
}

impl EventSpec {
    pub fn new(portal: Portal, event: &str, entity: Option<&str>, ts: u64) -> EventSpec {
        EventSpec {
            portal,
            event: event.to_string(),
            ts: ts.to_string(),
            entity: entity.map(str::to_string),
            extra: Vec::new(),
            handler_id: Some("42".into()),
            full_auth: true,
            token: None,
            member: None,
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> EventSpec {
        self.extra.push((key.to_string(), value.to_string()));
        self
    }

    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = vec![("event".into(), self.event.clone())];
        if let Some(h) = &self.handler_id {
            p.push(("event_handler_id".into(), h.clone()));
        }
        if let Some(e) = &self.entity {
            p.push(("data[FIELDS][ID]".into(), e.clone()));
        }
        p.extend(self.extra.iter().cloned());
        p.push(("ts".into(), self.ts.clone()));
        let member = self
            .member
            .clone()
            .unwrap_or_else(|| self.portal.member.to_string());
        let token = self
            .token
            .clone()
            .unwrap_or_else(|| self.portal.token.to_string());
        let endpoint = format!("https://{}/rest/", self.portal.domain);
        if self.full_auth {
            p.push(("auth[access_token]".into(), ACCESS_TOKEN.into()));
            p.push(("auth[expires]".into(), "1727022526".into()));
            p.push(("auth[expires_in]".into(), "3600".into()));
            p.push(("auth[scope]".into(), "crm,user_brief".into()));
            p.push(("auth[domain]".into(), self.portal.domain.into()));
            p.push((
                "auth[server_endpoint]".into(),
                "https://oauth.bitrix.info/rest/".into(),
            ));
            p.push(("auth[status]".into(), "L".into()));
            p.push(("auth[client_endpoint]".into(), endpoint));
            p.push(("auth[member_id]".into(), member));
            p.push(("auth[user_id]".into(), "1".into()));
            p.push(("auth[refresh_token]".into(), REFRESH_TOKEN.into()));
            p.push(("auth[application_token]".into(), token));
        } else {
            p.push(("auth[domain]".into(), self.portal.domain.into()));
            p.push(("auth[client_endpoint]".into(), endpoint));
            p.push((
                "auth[server_endpoint]".into(),
                "https://oauth.bitrix.info/rest/".into(),
            ));
            p.push(("auth[member_id]".into(), member));
            p.push(("auth[application_token]".into(), token));
        }
        p
    }

    /// Pairs without the given keys (for "missing field" cases).
    pub fn pairs_without(&self, key: &str) -> Vec<(String, String)> {
        self.pairs().into_iter().filter(|(k, _)| k != key).collect()
    }

    pub fn form(&self) -> String {
        encode_pairs(&self.pairs(), Style::Php)
    }

    pub fn form_styled(&self, style: Style) -> String {
        encode_pairs(&self.pairs(), style)
    }

    pub fn json(&self) -> Value {
        nest(&self.pairs())
    }
}

/// The data object a generated event should come back with.
pub fn expected_data(ev: &EventSpec) -> Value {
    let pairs: Vec<(String, String)> = ev
        .pairs()
        .into_iter()
        .filter(|(k, _)| k.starts_with("data["))
        .collect();
    if pairs.is_empty() {
        return Value::Null;
    }
    nest(&pairs)["data"].clone()
}

pub fn short_auth_json(p: Portal) -> Value {
    json!({
        "domain": p.domain,
        "client_endpoint": format!("https://{}/rest/", p.domain),
        "server_endpoint": "https://oauth.bitrix.info/rest/",
        "member_id": p.member,
        "application_token": p.token,
    })
}

// ---------------------------------------------------------------------------
// Raw HTTP over TcpStream
// ---------------------------------------------------------------------------

pub struct RawResp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "raw response body is not JSON ({e}): status {} head {:?} body {:?}",
                self.status, self.head, self.body
            )
        })
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&b[..nl]);
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        b = &b[nl + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

/// Send `head` (request line + headers, must end with an empty line) and
/// then each of `parts`, while a second thread reads the response, so an
/// early answer (e.g. 413) is captured even if the server stops reading.
pub fn raw_http(addr: &str, head: &str, parts: &[Vec<u8>]) -> RawResp {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let rh = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        buf
    });
    let mut w = stream;
    if w.write_all(head.as_bytes()).is_ok() {
        for p in parts {
            if w.write_all(p).is_err() {
                break;
            }
        }
        let _ = w.flush();
    }
    let bytes = rh.join().unwrap();
    drop(w);
    let Some(split) = bytes.windows(4).position(|x| x == b"\r\n\r\n") else {
        panic!(
            "no HTTP response head received; got {:?}",
            String::from_utf8_lossy(&bytes)
        );
    };
    let head_s = String::from_utf8_lossy(&bytes[..split]).to_string();
    let status: u16 = head_s
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rest = &bytes[split + 4..];
    let lower = head_s.to_ascii_lowercase();
    let body = if lower.contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else if let Some(cl) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        rest[..cl.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    RawResp {
        status,
        head: head_s,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

/// Encode a body as HTTP/1.1 chunks of `size` bytes plus the last chunk.
pub fn chunked(body: &[u8], size: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for c in body.chunks(size) {
        let mut v = format!("{:x}\r\n", c.len()).into_bytes();
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
        out.push(v);
    }
    out.push(b"0\r\n\r\n".to_vec());
    out
}

/// A valid form body for `ev`, padded with `data[PAD]` to exactly `len` bytes.
pub fn padded_form(ev: &EventSpec, len: usize) -> String {
    let base = ev.form();
    let prefix = format!("{base}&data%5BPAD%5D=");
    assert!(prefix.len() < len, "base body already longer than {len}");
    let pad = len - prefix.len();
    let mut s = prefix;
    s.push_str(&"x".repeat(pad));
    assert_eq!(s.len(), len);
    s
}

// ---------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------

pub fn parse_rfc3339(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[track_caller]
pub fn assert_uuid_v7(id: &str) {
    let u = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?} is not a UUID: {e}"));
    assert_eq!(u.get_version_num(), 7, "{id} is not a UUIDv7");
    assert_eq!(
        id,
        u.hyphenated().to_string(),
        "id should be the canonical lower-case hyphenated form"
    );
}

/// Every file under `dir`, recursively.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {d:?}: {e}")) {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
