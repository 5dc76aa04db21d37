//! A corpus of hostile and malformed requests. Each one must be answered
//! with a 4xx, nothing may be stored (every portal's `events` and
//! `duplicates` counters unchanged), and the server must stay healthy
//! (`/healthz` 200) after each. Requests refused by the route handlers answer
//! JSON `{"error": ...}`; requests that hyper's HTTP/1 parser refuses before
//! any route runs (broken framing, oversized head) are marked `Framing`: they
//! must still be 4xx, and whether they carry a JSON body is reported.
//!
//! The bodies carry the real tokens of the sample portals, and at the end the
//! responses, the trace-level logs and the data directory are searched for
//! them: refusals must not echo secrets either.

mod common;

use common::*;
use serde_json::{json, Value};

/// How a case's answer must look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// This exact status with a JSON `{"error": ...}` body.
    Json(u16),
    /// Any 4xx with a JSON `{"error": ...}` body.
    AnyJson4xx,
    /// Any 4xx; refused by the HTTP parser, possibly without a body.
    Framing,
}

struct Case {
    name: String,
    /// The whole request: head (ending in an empty line) and body parts.
    head: String,
    parts: Vec<Vec<u8>>,
    expect: Expect,
}

fn post_head(addr: &str, ct: Option<&str>, extra: &str, len: Option<usize>) -> String {
    let mut h = format!("POST {EVENTS_PATH} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(ct) = ct {
        h.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(len) = len {
        h.push_str(&format!("Content-Length: {len}\r\n"));
    }
    h.push_str(extra);
    h.push_str("Connection: close\r\n\r\n");
    h
}

fn post_case(addr: &str, name: &str, ct: Option<&str>, body: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.to_owned(),
        head: post_head(addr, ct, "", Some(body.len())),
        parts: vec![body],
        expect,
    }
}

fn get_case(addr: &str, name: &str, target: &str, auth: bool, expect: Expect) -> Case {
    let auth = if auth {
        format!("Authorization: Bearer {READ_TOKEN}\r\n")
    } else {
        String::new()
    };
    Case {
        name: name.to_owned(),
        head: format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"),
        parts: Vec::new(),
        expect,
    }
}

/// A valid event of P1 (real tokens) as bracket-key pairs.
fn base() -> EventSpec {
    EventSpec::new(P1, "ONCRMACTIVITYUPDATE", Some("4242"), 1_700_000_123)
}

/// The base event with `key` replaced by `value` (or added).
fn form_with(key: &str, value: &str) -> Vec<u8> {
    let mut pairs = base().pairs_without(key);
    pairs.push((key.to_owned(), value.to_owned()));
    encode_pairs(&pairs, Style::Php).into_bytes()
}

/// The base event with `remove` taken out and `key`=`value` added.
fn form_replace(remove: &str, key: &str, value: &str) -> Vec<u8> {
    let mut pairs = base().pairs_without(remove);
    pairs.push((key.to_owned(), value.to_owned()));
    encode_pairs(&pairs, Style::Php).into_bytes()
}

/// Base-36 digits of `i`, at least three.
fn b36(mut i: usize) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while i > 0 || out.len() < 3 {
        out.push(digits[i % 36]);
        i /= 36;
    }
    String::from_utf8(out).unwrap()
}

/// The base event's form with raw bytes appended.
fn form_plus(raw: &[u8]) -> Vec<u8> {
    let mut b = base().form().into_bytes();
    b.extend_from_slice(raw);
    b
}

/// The base event as JSON with `edit` applied.
fn json_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = base().json();
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

/// The base event as JSON text with `extra` spliced in right after the
/// opening brace (for repeated keys, which `serde_json::Value` cannot hold).
fn json_splice(extra: &str) -> Vec<u8> {
    let text = serde_json::to_string(&base().json()).unwrap();
    format!("{{{extra},{}", &text[1..]).into_bytes()
}

fn cases(addr: &str) -> Vec<Case> {
    use Expect::*;
    let f = Some(FORM_CT);
    let j = Some(JSON_CT);
    let mut c = Vec::new();
    let mut form = |name: &str, body: Vec<u8>, status: u16| {
        c.push(post_case(addr, name, f, body, Json(status)));
    };

    // --- Nesting and size of the structure -----------------------------
    form(
        "form nested 40 levels",
        form_plus(format!("&data{}=1", "%5Bx%5D".repeat(40)).as_bytes()),
        400,
    );
    form(
        "form nested 33 levels (one over)",
        form_plus(format!("&data{}=1", "[x]".repeat(32)).as_bytes()),
        400,
    );
    let mut many = base().form();
    for i in 0..10_001 {
        many.push_str(&format!("&{}=", b36(i)));
    }
    form("form with 10,001 keys", many.into_bytes(), 400);
    let mut many_appends = base().form();
    for _ in 0..10_001 {
        many_appends.push_str("&l[]=");
    }
    form(
        "form with 10,001 array appends",
        many_appends.into_bytes(),
        400,
    );
    form(
        "form key of 60,000 bytes without brackets closed",
        form_plus(format!("&data[{}=1", "k".repeat(60_000)).as_bytes()),
        400,
    );
    form(
        "event name of 50,000 bytes",
        form_with("event", &"E".repeat(50_000)),
        400,
    );
    form(
        "member_id of 10,000 bytes",
        form_with("auth[member_id]", &"a".repeat(10_000)),
        400,
    );
    form(
        "domain of 10,000 bytes",
        form_with("auth[domain]", &format!("{}.com", "d".repeat(10_000))),
        400,
    );
    form(
        "entity id of 5,000 bytes",
        form_with("data[FIELDS][ID]", &"9".repeat(5_000)),
        400,
    );
    form(
        "event_handler_id of 1,000 bytes",
        form_with("event_handler_id", &"7".repeat(1_000)),
        400,
    );
    form(
        "client_endpoint of 20,000 bytes",
        form_with(
            "auth[client_endpoint]",
            &format!("https://x/{}", "p".repeat(20_000)),
        ),
        400,
    );

    // --- Encoding -------------------------------------------------------
    form("raw 0xFF byte in a value", form_plus(b"&data[X]=\xff"), 400);
    form(
        "raw invalid UTF-8 in a key",
        form_plus(b"&data[\xc3\x28]=1"),
        400,
    );
    form("escaped invalid UTF-8", form_plus(b"&data[X]=%C3%28"), 400);
    form("overlong UTF-8 escape", form_plus(b"&data[X]=%C0%AF"), 400);
    form(
        "UTF-16 surrogate as UTF-8",
        form_plus(b"&data[X]=%ED%A0%80"),
        400,
    );
    form("bad percent-escape %zz", form_plus(b"&data[X]=%zz"), 400);
    form("truncated percent-escape", form_plus(b"&data[X]=%4"), 400);
    form("trailing percent", form_plus(b"&data[X]=%"), 400);
    form(
        "percent-escaped NUL in a value",
        form_plus(b"&data[X]=a%00b"),
        400,
    );
    form(
        "percent-escaped NUL in a key",
        form_plus(b"&data[X%00]=1"),
        400,
    );
    form("raw NUL byte", form_plus(b"&data[X]=a\0b"), 400);
    form("unbalanced bracket key", form_plus(b"&data[FIELDS=1"), 400);
    form("key starting with a bracket", form_plus(b"&[data]=1"), 400);
    form("text after a bracket", form_plus(b"&data[a]x=1"), 400);

    // --- Repeated keys and clashing shapes --------------------------------
    form("form: event twice", form_plus(b"&event=ONCRMDEALADD"), 400);
    form(
        "form: auth[member_id] twice",
        form_plus(format!("&auth%5Bmember_id%5D={}", P2.member).as_bytes()),
        400,
    );
    form(
        "form: application_token twice",
        form_plus(format!("&auth[application_token]={}", P1.token).as_bytes()),
        400,
    );
    form("form: scalar then map", form_plus(b"&event[x]=1"), 400);
    form(
        "form: auth[member_id][]=x (array for a scalar)",
        form_replace("auth[member_id]", "auth[member_id][]", P1.member),
        400,
    );
    form(
        "form: event[]=X",
        form_replace("event", "event[]", "ONCRMDEALADD"),
        400,
    );
    form(
        "form: ts[]=1",
        form_replace("ts", "ts[]", "1700000000"),
        400,
    );
    form(
        "form: auth[domain][a]=b",
        form_replace("auth[domain]", "auth[domain][a]", "b"),
        400,
    );
    form(
        "form: data[FIELDS][ID][]=1",
        form_replace("data[FIELDS][ID]", "data[FIELDS][ID][]", "1"),
        400,
    );
    c.push(post_case(
        addr,
        "JSON: event twice",
        j,
        json_splice(r#""event":"ONCRMDEALADD""#),
        Json(400),
    ));
    c.push(post_case(
        addr,
        "JSON: auth twice",
        j,
        json_splice(&format!(
            r#""auth":{}"#,
            serde_json::to_string(&short_auth_json(P2)).unwrap()
        )),
        Json(400),
    ));
    let mut dup_inner = serde_json::to_string(&base().json()).unwrap();
    dup_inner = dup_inner.replacen(
        r#""member_id":"#,
        &format!(r#""member_id":"{}","member_id":"#, P2.member),
        1,
    );
    c.push(post_case(
        addr,
        "JSON: auth.member_id twice",
        j,
        dup_inner.into_bytes(),
        Json(400),
    ));
    c.push(post_case(
        addr,
        "JSON: repeated key spelled with an escape",
        j,
        json_splice(r#""\u0065vent":"ONCRMDEALADD""#),
        Json(400),
    ));
    let mut json = |name: &str, body: Vec<u8>| {
        c.push(post_case(addr, name, j, body, Json(400)));
    };
    json(
        "JSON: event as an array",
        json_with(|v| v["event"] = json!(["ONCRMDEALADD"])),
    );
    json(
        "JSON: auth as a string",
        json_with(|v| v["auth"] = json!("x")),
    );
    json(
        "JSON: member_id as an array",
        json_with(|v| v["auth"]["member_id"] = json!([P1.member])),
    );
    json(
        "JSON: ts as an object",
        json_with(|v| v["ts"] = json!({"a": 1})),
    );
    json(
        "JSON: NUL in a string",
        json_with(|v| v["data"]["X"] = json!("a\u{0}b")),
    );
    json(
        "JSON: nested 40 levels",
        json_with(|v| {
            let mut deep = json!(1);
            for _ in 0..40 {
                deep = json!({ "x": deep });
            }
            v["data"] = deep;
        }),
    );
    let mut arrays = serde_json::to_string(&base().json()).unwrap();
    arrays.pop();
    arrays.push_str(&format!(
        r#","X":{}{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    ));
    json("JSON: 20,000 nested arrays", arrays.into_bytes());
    let mut keys = base().json();
    keys["auth"] = json!({});
    for i in 0..3000 {
        keys["data"][format!("k{i}")] = json!(i);
    }
    json(
        "JSON: 3,000 keys and no auth",
        serde_json::to_vec(&keys).unwrap(),
    );
    json("JSON: top-level array", b"[1,2,3]".to_vec());
    json("JSON: top-level string", br#""event""#.to_vec());
    json("JSON: trailing garbage", {
        let mut b = serde_json::to_vec(&base().json()).unwrap();
        b.extend_from_slice(b" {}");
        b
    });
    json("JSON: truncated", {
        let b = serde_json::to_vec(&base().json()).unwrap();
        b[..b.len() / 2].to_vec()
    });
    json(
        "JSON: invalid UTF-8 in a string",
        b"{\"event\":\"ONCRM\xffDEALADD\",\"x\":1}".to_vec(),
    );

    // --- ts ---------------------------------------------------------------
    let mut form = |name: &str, body: Vec<u8>| {
        c.push(post_case(addr, name, f, body, Json(400)));
    };
    for ts in [
        "-1",
        "1.5",
        "1e9",
        "99999999999999999999",
        "253402300800",
        " 1700000000",
        "0x10",
        "",
        "+1700000000",
    ] {
        form(&format!("form ts={ts:?}"), form_with("ts", ts));
    }
    let mut json = |name: &str, body: Vec<u8>| {
        c.push(post_case(addr, name, j, body, Json(400)));
    };
    json("JSON ts -1", json_with(|v| v["ts"] = json!(-1)));
    json("JSON ts 1.5", json_with(|v| v["ts"] = json!(1.5)));
    json("JSON ts 1e300", json_with(|v| v["ts"] = json!(1e300)));
    json(
        "JSON ts past 9999",
        json_with(|v| v["ts"] = json!(253402300800u64)),
    );
    let over = serde_json::to_string(&base().json())
        .unwrap()
        .replace(r#""ts":"1700000123""#, r#""ts":18446744073709551616"#);
    assert!(over.contains("18446744073709551616"));
    json("JSON ts 2^64", over.into_bytes());
    json("JSON ts true", json_with(|v| v["ts"] = json!(true)));

    // --- Content types and charsets ------------------------------------
    let body = base().form().into_bytes();
    for (ct, status) in [
        (None, 415),
        (Some("text/plain"), 415),
        (Some("multipart/form-data; boundary=x"), 415),
        (
            Some("application/x-www-form-urlencoded; charset=iso-8859-1"),
            415,
        ),
        (
            Some("application/x-www-form-urlencoded; charset=utf-16"),
            415,
        ),
        (Some("application/json; charset=koi8-r"), 415),
        (Some("application/jsonx"), 415),
        (Some("application/json"), 400),
    ] {
        c.push(post_case(
            addr,
            &format!("form body as {ct:?}"),
            ct,
            body.clone(),
            Json(status),
        ));
    }
    c.push(post_case(
        addr,
        "JSON body as form",
        f,
        serde_json::to_vec(&base().json()).unwrap(),
        Json(400),
    ));
    c.push(post_case(addr, "empty form body", f, Vec::new(), Json(400)));
    c.push(post_case(
        addr,
        "only separators",
        f,
        b"&&&&".to_vec(),
        Json(400),
    ));

    // --- Framing ----------------------------------------------------------
    let body = base().form().into_bytes();
    c.push(Case {
        name: "two different Content-Length headers".into(),
        head: post_head(
            addr,
            f,
            &format!("Content-Length: {}\r\n", body.len() - 5),
            Some(body.len()),
        ),
        parts: vec![body.clone()],
        expect: Framing,
    });
    c.push(Case {
        name: "non-numeric Content-Length".into(),
        head: post_head(addr, f, "Content-Length: 12abc\r\n", None),
        parts: vec![body.clone()],
        expect: Framing,
    });
    c.push(Case {
        name: "negative Content-Length".into(),
        head: post_head(addr, f, "Content-Length: -5\r\n", None),
        parts: vec![body.clone()],
        expect: Framing,
    });
    c.push(Case {
        name: "Content-Length over the limit".into(),
        head: post_head(addr, f, "", Some(10_000_000)),
        parts: vec![vec![b'a'; 100_000]],
        expect: Json(413),
    });
    let big = padded_form(&base(), 200_000);
    c.push(Case {
        name: "chunked body over the limit".into(),
        head: post_head(addr, f, "Transfer-Encoding: chunked\r\n", None),
        parts: chunked(big.as_bytes(), 8192),
        expect: Json(413),
    });
    c.push(Case {
        name: "chunked with a bad chunk size".into(),
        head: post_head(addr, f, "Transfer-Encoding: chunked\r\n", None),
        parts: vec![b"zz\r\nabc\r\n0\r\n\r\n".to_vec()],
        expect: Framing,
    });
    c.push(Case {
        name: "header block of 500 KB".into(),
        head: post_head(
            addr,
            f,
            &format!("X-Junk: {}\r\n", "j".repeat(500_000)),
            Some(body.len()),
        ),
        parts: vec![body.clone()],
        expect: Framing,
    });
    c.push(Case {
        name: "GET on the ingest route".into(),
        head: format!("GET {EVENTS_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        parts: Vec::new(),
        expect: Json(405),
    });

    // --- Read API ---------------------------------------------------------
    let events = format!("/v1/portals/{}/events", P1.member);
    c.push(get_case(
        addr,
        "query string of 5,000 bytes",
        &format!("{events}?event={}", "A".repeat(5_000)),
        true,
        Json(400),
    ));
    c.push(get_case(
        addr,
        "query string of 60,000 bytes",
        &format!("{events}?limit=1&x={}", "y".repeat(60_000)),
        true,
        Json(400),
    ));
    c.push(get_case(
        addr,
        "URL of 70,000 bytes (over http's URI limit)",
        &format!("{events}?limit=1&x={}", "y".repeat(70_000)),
        true,
        Framing,
    ));
    c.push(get_case(
        addr,
        "path of 50,000 bytes",
        &format!("/v1/portals/{}/events", "p".repeat(50_000)),
        true,
        Json(404),
    ));
    c.push(get_case(
        addr,
        "URL of 600,000 bytes",
        &format!("{events}?x={}", "y".repeat(600_000)),
        true,
        Framing,
    ));
    for (name, q) in [
        ("cursor garbage", "cursor=%00%01%02"),
        ("cursor empty", "cursor="),
        (
            "cursor of 10,000 bytes",
            &*format!("cursor={}", "A".repeat(10_000)),
        ),
        ("cursor version 2", "cursor=AnMAAAAAAAAAAQ"),
        ("cursor one byte short", "cursor=AXMAAAAAAAAA"),
        ("cursor non-canonical", "cursor=AXMAAAAAAAAAAR"),
        ("cursor with padding", "cursor=AXMAAAAAAAAAAQ%3D%3D"),
        ("limit twice", "limit=1&limit=2"),
        ("limit huge", "limit=99999999999999999999999"),
        ("since after until", "since=2000000000&until=1000000000"),
        ("invalid percent-escape in query", "event=%FF%FE"),
        ("unknown parameter", "member_id=x"),
    ] {
        c.push(get_case(
            addr,
            &format!("read API: {name}"),
            &format!("{events}?{q}"),
            true,
            AnyJson4xx,
        ));
    }
    c.push(get_case(
        addr,
        "read API without a token",
        &events,
        false,
        Json(401),
    ));
    c
}

/// `(member, events, duplicates)` of every portal.
async fn totals(s: &TestServer) -> Vec<(String, Value, Value)> {
    let mut v: Vec<_> = s
        .portals()
        .await
        .into_iter()
        .map(|p| {
            (
                p["member_id"].as_str().unwrap().to_owned(),
                p["events"].clone(),
                p["duplicates"].clone(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_are_refused_store_nothing_and_leave_the_server_healthy() {
    let dir = tempdir();
    let mut s = TestServer::start(dir.path(), &[]);
    s.store(&EventSpec::new(
        P1,
        "ONCRMDEALADD",
        Some("1"),
        1_700_000_000,
    ))
    .await;
    s.store(&EventSpec::new(
        P2,
        "ONCRMDEALADD",
        Some("1"),
        1_700_000_000,
    ))
    .await;
    let before = totals(&s).await;
    let addr = s.addr();
    let all = cases(&addr);
    assert!(all.len() >= 50, "only {} cases", all.len());

    let mut framing_without_json = Vec::new();
    let mut bodies = Vec::new();
    for case in &all {
        let (a, head, parts) = (addr.clone(), case.head.clone(), case.parts.clone());
        let r = tokio::task::spawn_blocking(move || raw_http(&a, &head, &parts))
            .await
            .unwrap();
        let what = &case.name;
        assert!(
            (400..500).contains(&r.status),
            "{what}: expected a 4xx, got {} {}",
            r.status,
            tail(&r.body, 300)
        );
        let error = serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        match case.expect {
            Expect::Json(status) => {
                assert_eq!(r.status, status, "{what}: {}", tail(&r.body, 300));
                assert!(error.is_some(), "{what}: no JSON error: {:?}", r.body);
                assert!(
                    r.head
                        .to_ascii_lowercase()
                        .contains("content-type: application/json"),
                    "{what}: {}",
                    r.head
                );
            }
            Expect::AnyJson4xx => {
                assert!(error.is_some(), "{what}: no JSON error: {:?}", r.body)
            }
            Expect::Framing => {
                if error.is_none() {
                    framing_without_json.push(format!("{what}: {}", r.status));
                }
            }
        }
        bodies.push(r.body);
        assert_eq!(totals(&s).await, before, "{what}: something was stored");
        let h = s.get_auth("/healthz", &[], None).await;
        assert_eq!(h.status, 200, "{what}: /healthz after it: {}", h.text);
    }
    eprintln!(
        "hostile: {} cases refused; refused by the HTTP parser without a JSON body: {:?}",
        all.len(),
        framing_without_json
    );

    // The events stored before are untouched, and the journal still works.
    assert_eq!(s.count(P1.member).await, 1);
    s.store(&EventSpec::new(
        P1,
        "ONCRMDEALADD",
        Some("2"),
        1_700_000_001,
    ))
    .await;

    // No refusal echoed a secret, in responses, trace logs or the data dir.
    let secrets = [P1.token, P2.token, ACCESS_TOKEN, REFRESH_TOKEN, READ_TOKEN];
    for body in bodies.iter().chain(s.responses().iter()) {
        for secret in secrets {
            assert!(!body.contains(secret), "response echoes a secret: {body}");
        }
    }
    let logs = s.stop();
    assert!(logs.contains("TRACE"), "logs are at trace level");
    for secret in secrets {
        assert!(!logs.contains(secret), "logs hold the secret {secret}");
    }
    for f in all_files(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for secret in secrets {
            assert!(
                !contains_bytes(&bytes, secret.as_bytes()),
                "{f:?} holds the secret {secret}"
            );
        }
    }
}
