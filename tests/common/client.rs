//! The HTTP side of every test, whichever harness started the server: one
//! [`Client`] that both `TestServer` (the real binary) and `TestApp` (the
//! application in-process) hold and dereference to, so a test body reads the
//! same under either. Answers come back as [`Resp`]; every body received is
//! kept for the leak checks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::events::EventSpec;
use super::portals::READ_TOKEN;

pub const EVENTS_PATH: &str = "/v1/bitrix24/events";
pub const FORM_CT: &str = "application/x-www-form-urlencoded";
pub const JSON_CT: &str = "application/json";
pub const MAX_BODY: usize = 65536;

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

/// Requires a 200 `stored` answer; returns its (id, seq).
#[track_caller]
pub fn expect_stored(r: &Resp) -> (String, u64) {
    expect_answer(r, "stored")
}

/// Requires a 200 `duplicate` answer; returns the original's (id, seq).
#[track_caller]
pub fn expect_duplicate(r: &Resp) -> (String, u64) {
    expect_answer(r, "duplicate")
}

#[track_caller]
fn expect_answer(r: &Resp, status: &str) -> (String, u64) {
    assert_eq!(
        r.status, 200,
        "expected 200 {status}, got {} {:?}",
        r.status, r.text
    );
    let v = r.json();
    assert_eq!(v["status"], status, "expected {status}: {v}");
    let id = v["id"].as_str().expect("id string").to_string();
    let seq = v["seq"].as_u64().expect("seq integer");
    (id, seq)
}

/// A server's address and the HTTP helpers the tests call on it.
pub struct Client {
    pub host: String,
    pub port: u16,
    pub client: reqwest::Client,
    responses: Arc<Mutex<Vec<String>>>,
}

impl Client {
    /// Helpers for the server listening on `host:port`.
    pub fn new(host: String, port: u16) -> Client {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Client {
            host,
            port,
            client,
            responses: Arc::new(Mutex::new(Vec::new())),
        }
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

    /// Every response body received through the reqwest helpers so far.
    pub fn responses(&self) -> Vec<String> {
        self.responses.lock().unwrap().clone()
    }

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

    pub async fn store(&self, ev: &EventSpec) -> (String, u64) {
        let r = self.post_form(&ev.form()).await;
        expect_stored(&r)
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
