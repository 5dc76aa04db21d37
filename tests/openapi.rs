//! `openapi.json` against the real server: the served document is the file
//! in the repository, every documented (path, method) exists and answers a
//! documented status, every route the server has is documented, and paths
//! that are not routes answer 404 `no such route`.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

const ADMIN_TOKEN: &str = "adm-Zr4Qp8Ws2Xv6Ny1Lk5Jh9";
const T: u64 = 1_730_000_000;

/// Every route the server serves, as (method, OpenAPI path). Keep it in step
/// with `server::routes`: a route added there must be added here and to
/// `openapi.json`, and gets a probe in `probe` below.
const SERVER_ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/bitrix24/events"),
    ("get", "/v1/portals"),
    ("get", "/v1/portals/{portal}/events"),
    ("get", "/v1/portals/{portal}/events/stream"),
    ("post", "/v1/portals/{portal}/stream-tickets"),
    ("get", "/v1/portals/{portal}/stats"),
    ("get", "/v1/stats"),
    ("get", "/console"),
    ("get", "/console/app.js"),
    ("get", "/console/app.css"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/v1/admin/backup"),
    ("delete", "/v1/admin/portals/{portal}"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn on_disk() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every (method, path) the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("`paths` is an object");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item is an object").keys() {
            if METHODS.contains(&method.as_str()) {
                out.insert((method.clone(), path.clone()));
            }
        }
    }
    out
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

/// A schema of `components/schemas`.
fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "components/schemas/{name} is missing");
    s
}

/// `value` has every `required` key of schema `name`, and (unless the schema
/// allows additional properties) no key it does not describe.
#[track_caller]
fn assert_shape(doc: &Value, name: &str, value: &Value) {
    let s = schema(doc, name);
    let obj = value
        .as_object()
        .unwrap_or_else(|| panic!("{name}: expected an object, got {value}"));
    for key in s["required"].as_array().into_iter().flatten() {
        let key = key.as_str().unwrap();
        assert!(
            obj.contains_key(key),
            "{name}: required `{key}` missing in {value}"
        );
    }
    let props = s["properties"].as_object().expect("schema has properties");
    if s["additionalProperties"] != Value::Bool(true) {
        for key in obj.keys() {
            assert!(
                props.contains_key(key),
                "{name}: the server sends `{key}`, which openapi.json does not describe: {value}"
            );
        }
    }
}

/// The statuses `openapi.json` documents for (method, path).
fn documented_statuses(doc: &Value, method: &str, path: &str) -> Vec<u16> {
    operation(doc, method, path)["responses"]
        .as_object()
        .expect("responses")
        .keys()
        .map(|k| k.parse().expect("numeric status"))
        .collect()
}

/// Asserts that a probe reached a real route: not 405, not warp's
/// `no such route`, and a status the document lists for it.
#[track_caller]
fn assert_route_answered(doc: &Value, method: &str, path: &str, r: &Resp) {
    assert_ne!(r.status, 405, "{method} {path}: 405 {}", r.text);
    if r.status == 404 {
        assert_ne!(r.error(), "no such route", "{method} {path} is not a route");
    }
    let statuses = documented_statuses(doc, method, path);
    assert!(
        statuses.contains(&r.status),
        "{method} {path} answered {} ({}), which openapi.json does not document (it lists {statuses:?})",
        r.status,
        r.text
    );
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Calls one documented route with suitable auth and minimal valid input,
/// checks the answer, and returns it.
async fn probe(s: &Client, doc: &Value, method: &str, path: &str) -> Resp {
    let concrete = path.replace("{portal}", P1.member);
    let url = s.url(&concrete);
    let r = match (method, path) {
        ("post", "/v1/bitrix24/events") => {
            let r = s.post_form(&EventSpec::new(P1, "ONCRMACTIVITYADD", Some("1"), T).form()).await;
            assert_eq!(r.status, 200, "ingest: {}", r.text);
            assert_shape(doc, "IngestResult", &r.json());
            r
        }
        ("get", "/v1/portals") => {
            let r = s.get(&concrete, &[]).await;
            assert_eq!(r.status, 200, "portals: {}", r.text);
            let v = r.json();
            assert_shape(doc, "PortalList", &v);
            let portals = v["portals"].as_array().expect("portals array");
            assert!(!portals.is_empty(), "configured portals are listed");
            for p in portals {
                assert_shape(doc, "Portal", p);
            }
            r
        }
        ("get", "/v1/portals/{portal}/events") => {
            let r = s.get(&concrete, &[("limit", "10")]).await;
            assert_eq!(r.status, 200, "events: {}", r.text);
            let v = r.json();
            assert_shape(doc, "Page", &v);
            let events = v["events"].as_array().expect("events array");
            assert!(!events.is_empty(), "the probe's event is listed");
            for e in events {
                assert_shape(doc, "Event", e);
            }
            r
        }
        ("get", "/v1/portals/{portal}/events/stream") => {
            // Status and headers only; dropping the response closes the stream.
            let res = s
                .client
                .get(&url)
                .header(reqwest::header::AUTHORIZATION, bearer(READ_TOKEN))
                .send()
                .await
                .expect("open stream");
            let status = res.status().as_u16();
            let ct = res
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            assert_eq!(status, 200, "stream");
            assert_eq!(ct.as_deref(), Some("text/event-stream"), "stream content type");
            let documented = &operation(doc, method, path)["responses"]["200"]["content"];
            assert!(documented["text/event-stream"].is_object(), "the stream is documented as SSE");
            drop(res);
            Resp {
                status,
                text: String::new(),
                content_type: ct,
            }
        }
        ("post", "/v1/portals/{portal}/stream-tickets") => {
            let r = s
                .send(s.client.post(&url).header(reqwest::header::AUTHORIZATION, bearer(READ_TOKEN)))
                .await;
            assert_eq!(r.status, 201, "stream ticket: {}", r.text);
            let v = r.json();
            assert_shape(doc, "StreamTicket", &v);
            // The ticket opens the stream without Authorization.
            let stream = s
                .client
                .get(s.url(v["stream_url"].as_str().unwrap()))
                .send()
                .await
                .expect("open stream with a ticket");
            assert_eq!(stream.status(), 200, "stream with a ticket");
            r
        }
        ("get", "/v1/portals/{portal}/stats") => {
            let r = s.get(&concrete, &[("bucket", "day")]).await;
            assert_eq!(r.status, 200, "stats: {}", r.text);
            let v = r.json();
            assert_shape(doc, "PortalStats", &v);
            for b in v["buckets"].as_array().unwrap() {
                assert_shape(doc, "StatsBucket", b);
            }
            r
        }
        ("get", "/v1/stats") => {
            let r = s.get(&concrete, &[]).await;
            assert_eq!(r.status, 200, "stats: {}", r.text);
            assert_shape(doc, "AllStats", &r.json());
            r
        }
        ("get", "/console" | "/console/app.js" | "/console/app.css") => {
            let r = s.get_auth(&concrete, &[], None).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text);
            r
        }
        ("get", "/healthz") => {
            let r = s.get_auth(&concrete, &[], None).await;
            assert_eq!(r.status, 200, "healthz: {}", r.text);
            assert_shape(doc, "Health", &r.json());
            r
        }
        ("get", "/metrics") => {
            let r = s.get_auth(&concrete, &[], None).await;
            assert_eq!(r.status, 200, "metrics: {}", r.text);
            let ct = r.content_type.clone().unwrap_or_default();
            assert!(ct.starts_with("text/plain"), "metrics content type {ct:?}");
            r
        }
        ("get", "/openapi.json") => {
            let r = s.get_auth(&concrete, &[], None).await;
            assert_eq!(r.status, 200, "openapi.json: {}", r.text);
            r
        }
        ("post", "/v1/admin/backup") => {
            // An empty object lacks `to`: refused with 400 before anything
            // is written.
            let r = s
                .send(
                    s.client
                        .post(&url)
                        .header(reqwest::header::AUTHORIZATION, bearer(ADMIN_TOKEN))
                        .header(reqwest::header::CONTENT_TYPE, JSON_CT)
                        .body("{}"),
                )
                .await;
            assert_eq!(r.status, 400, "backup without `to`: {}", r.text);
            r.error();
            assert_route_answered(doc, method, path, &r);
            // A name inside the backup directory: the documented result.
            let r = s
                .send(
                    s.client
                        .post(&url)
                        .header(reqwest::header::AUTHORIZATION, bearer(ADMIN_TOKEN))
                        .header(reqwest::header::CONTENT_TYPE, JSON_CT)
                        .body(r#"{"to":"probe"}"#),
                )
                .await;
            assert_eq!(r.status, 200, "backup: {}", r.text);
            assert_shape(doc, "BackupResult", &r.json());
            r
        }
        ("delete", "/v1/admin/portals/{portal}") => {
            // An unknown portal: 404 is the expected answer here, so the
            // route is told apart from a missing one by its error message.
            let url = s.url("/v1/admin/portals/no-such-portal.bitrix24.com");
            let r = s
                .send(
                    s.client
                        .delete(&url)
                        .header(reqwest::header::AUTHORIZATION, bearer(ADMIN_TOKEN)),
                )
                .await;
            r.assert_error(404, "unknown portal", "erase an unknown portal");
            r
        }
        _ => panic!(
            "openapi.json documents {} {path}, which has no probe in tests/openapi.rs (and is not in SERVER_ROUTES?)",
            method.to_uppercase()
        ),
    };
    assert_route_answered(doc, method, path, &r);
    r
}

/// Without credentials a protected route answers 401 with
/// `WWW-Authenticate: Bearer`; the document says which token it takes.
async fn probe_unauthenticated(s: &Client, doc: &Value, method: &str, path: &str) {
    let security = operation(doc, method, path)["security"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| doc["security"].as_array().cloned().unwrap_or_default());
    let schemes: Vec<String> = security
        .iter()
        .flat_map(|req| req.as_object().unwrap().keys().cloned().collect::<Vec<_>>())
        .collect();
    let url = s.url(&path.replace("{portal}", P1.member));
    let rb = match method {
        "get" => s.client.get(&url),
        "post" => s
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, JSON_CT)
            .body("{}"),
        "delete" => s.client.delete(&url),
        other => panic!("no unauthenticated probe for {other}"),
    };
    let res = rb.send().await.expect("request");
    let status = res.status().as_u16();
    let www = res
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_string());
    drop(res);
    if schemes.is_empty() {
        assert_ne!(
            status, 401,
            "{method} {path} is documented without auth but answered 401"
        );
        return;
    }
    assert_eq!(
        status, 401,
        "{method} {path} without credentials (documented: {schemes:?})"
    );
    assert_eq!(
        www.as_deref(),
        Some("Bearer"),
        "{method} {path}: WWW-Authenticate"
    );
    assert!(
        documented_statuses(doc, method, path).contains(&401),
        "{method} {path}: 401 is not documented"
    );
    // The read token does not open the admin API, nor the other way round.
    let wrong = if schemes.iter().any(|s| s == "adminToken") {
        READ_TOKEN
    } else {
        ADMIN_TOKEN
    };
    let rb = match method {
        "get" => s.client.get(&url),
        "post" => s
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, JSON_CT)
            .body("{}"),
        _ => s.client.delete(&url),
    };
    let res = rb
        .header(reqwest::header::AUTHORIZATION, bearer(wrong))
        .send()
        .await
        .expect("request");
    assert_eq!(
        res.status().as_u16(),
        401,
        "{method} {path} must not accept the other API's token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_server() {
    let dir = tempdir();
    let backups = tempdir();
    let s = try_spawn_app({
        let mut args = default_args(dir.path());
        args.extend(["--admin-token".to_string(), ADMIN_TOKEN.to_string()]);
        args.extend([
            "--backup-dir".to_string(),
            backups.path().to_str().unwrap().to_string(),
        ]);
        args
    })
    .await
    .unwrap_or_else(|e| panic!("the server did not start with --admin-token: {e}"));

    // The served document is the file in the repository, byte for byte.
    let served = s.get_auth("/openapi.json", &[], None).await;
    assert_eq!(served.status, 200, "GET /openapi.json: {}", served.text);
    assert_eq!(
        served.content_type.as_deref(),
        Some("application/json"),
        "GET /openapi.json content type"
    );
    let file = on_disk();
    assert!(
        served.text == file,
        "the served /openapi.json differs from openapi.json on disk (rebuild the binary?)"
    );
    let doc: Value = serde_json::from_str(&file).expect("openapi.json is JSON");
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.0"), "openapi {version}");
    for name in ["Event", "Portal", "Page", "Error"] {
        schema(&doc, name);
    }
    for name in ["readToken", "adminToken"] {
        let scheme = &doc["components"]["securitySchemes"][name];
        assert_eq!(scheme["type"], "http", "{name}");
        assert_eq!(scheme["scheme"], "bearer", "{name}");
    }

    // Every route the server has is documented, and nothing else is.
    let documented = documented(&doc);
    let served_routes: BTreeSet<(String, String)> = SERVER_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    for (method, path) in &served_routes {
        assert!(
            documented.contains(&(method.clone(), path.clone())),
            "the server serves {} {path}, which openapi.json does not document",
            method.to_uppercase()
        );
    }
    for (method, path) in &documented {
        assert!(
            served_routes.contains(&(method.clone(), path.clone())),
            "openapi.json documents {} {path}, which SERVER_ROUTES does not list",
            method.to_uppercase()
        );
    }

    // Every documented route exists and answers as documented. Ingest goes
    // first so that the event listing has an event to check.
    for (method, path) in SERVER_ROUTES {
        probe(&s, &doc, method, path).await;
    }
    for (method, path) in SERVER_ROUTES {
        probe_unauthenticated(&s, &doc, method, path).await;
    }

    // Paths that are not routes are warp's 404, with the JSON error body.
    for (method, path) in [
        ("GET", "/v1/admin/nope"),
        ("POST", "/v1/admin/nope"),
        ("GET", "/v1/portals/x/other"),
        ("GET", "/v1/openapi.json"),
    ] {
        let rb = match method {
            "GET" => s.client.get(s.url(path)),
            _ => s.client.post(s.url(path)).body("{}"),
        };
        let r = s
            .send(
                rb.header(reqwest::header::AUTHORIZATION, bearer(ADMIN_TOKEN))
                    .header(reqwest::header::CONTENT_TYPE, JSON_CT),
            )
            .await;
        r.assert_error(404, "no such route", &format!("{method} {path}"));
        assert_eq!(r.error(), "no such route", "{method} {path}");
        assert!(
            !documented.iter().any(|(_, p)| p == path),
            "{path} is documented"
        );
    }
}
