//! The read API for browser dashboards, in-process: scoped read tokens,
//! CORS, stream tickets, activity statistics (and their rollups kept by
//! retention and erase), and the console's files.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// A scoped token that opens P1 (named by its domain) only.
const ACME: &str = "acme-Jp4Rk8Vn2Qx6Ls9Dw3";
/// A scoped token that opens P2 (by member id) and P3.
const OTHER: &str = "other-Hb5Tm7Zc1Wy8Kf4Ng6";
const ADMIN: &str = "adm-Ux3Pe9Lr5Vd2Qm7Hs4";
const ORIGIN: &str = "http://dash.example.test:8000";
const T: u64 = 1_730_000_000;

fn config(dir: &std::path::Path) -> String {
    let path = dir.join("dash.toml");
    std::fs::write(
        &path,
        format!(
            "[[read_tokens]]\nname = \"acme\"\ntoken = \"{ACME}\"\nportals = [\"{}\"]\n\n\
             [[read_tokens]]\nname = \"other\"\ntoken_sha256 = \"{}\"\nportals = [\"{}\", \"{}\"]\n",
            P1.domain,
            sha256_hex(OTHER),
            P2.member,
            P3.member
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn sha256_hex(s: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

async fn app(dir: &std::path::Path, extra: &[&str]) -> TestApp {
    let cfg = config(dir);
    let mut args = vec!["--config", cfg.as_str(), "--cors-origins", ORIGIN];
    args.extend_from_slice(extra);
    spawn_app(&dir.join("data"), &args).await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn scoped_tokens_see_only_their_portals() {
    let dir = tempfile::tempdir().unwrap();
    let s = app(dir.path(), &[]).await;
    s.store(&EventSpec::new(P1, "ONCRMDEALADD", Some("1"), T))
        .await;
    s.store(&EventSpec::new(P2, "ONCRMDEALADD", Some("2"), T))
        .await;

    let members = |v: Value| -> Vec<String> {
        v["portals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["member_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let acme = s.get_auth("/v1/portals", &[], Some(&bearer(ACME))).await;
    assert_eq!(members(acme.json()), [P1.member]);
    let other = s.get_auth("/v1/portals", &[], Some(&bearer(OTHER))).await;
    let mut seen = members(other.json());
    seen.sort();
    let mut want = vec![P2.member.to_owned(), P3.member.to_owned()];
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(members(s.get("/v1/portals", &[]).await.json()).len(), 3);

    for portal in [P1.member, P1.domain] {
        let r = s
            .get_auth(
                &format!("/v1/portals/{portal}/events"),
                &[],
                Some(&bearer(ACME)),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["events"].as_array().unwrap().len(), 1);
    }
    // Another portal answers as an unknown one: 404, same message shape.
    for path in ["events", "events/stream", "stats"] {
        let r = s
            .get_auth(
                &format!("/v1/portals/{}/{path}", P2.domain),
                &[],
                Some(&bearer(ACME)),
            )
            .await;
        r.assert_error(404, "unknown portal", "a portal outside the token");
        let unknown = s
            .get_auth(
                "/v1/portals/nobody.bitrix24.com/events",
                &[],
                Some(&bearer(ACME)),
            )
            .await;
        assert_eq!(unknown.status, 404);
    }
    let r = s
        .get_auth(
            &format!("/v1/portals/{}/events", P1.member),
            &[("wait", "1")],
            Some(&bearer(OTHER)),
        )
        .await;
    r.assert_error(
        404,
        "unknown portal",
        "long-poll of a portal outside the token",
    );
    let r = s
        .get_auth("/v1/portals", &[], Some("Bearer not-a-token"))
        .await;
    r.assert_error(401, "wrong read token", "unknown token");
    s.stop().await;
}

#[tokio::test]
async fn cors_answers_configured_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = app(dir.path(), &[]).await;
    let preflight = |origin: &'static str, path: &'static str| {
        s.client
            .request(reqwest::Method::OPTIONS, s.url(path))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
    };
    let r = preflight(ORIGIN, "/v1/portals").await.unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("Authorization"));
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("GET"));
    assert!(h["vary"].to_str().unwrap().contains("Origin"));
    assert!(h.get("access-control-allow-credentials").is_none());

    let r = preflight("http://evil.example", "/v1/portals")
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = preflight(ORIGIN, "/v1/admin/backup").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = preflight(ORIGIN, "/v1/bitrix24/events").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let get = |origin: &'static str| {
        s.client
            .get(s.url("/v1/portals"))
            .header("Origin", origin)
            .bearer_auth(ACME)
            .send()
    };
    let r = get(ORIGIN).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    assert!(r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("Retry-After"));
    assert_eq!(r.headers()["vary"], "Origin");
    let r = get("http://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(r.headers()["vary"], "Origin");
    // Errors carry the headers too, so the page can read the 401's reason.
    let r = s
        .client
        .get(s.url("/v1/portals"))
        .header("Origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    s.stop().await;

    let err = try_spawn_app({
        let mut a = default_args(&dir.path().join("d2"));
        a.extend(["--cors-origins".into(), "*".into()]);
        a
    })
    .await
    .err()
    .expect("`*` must be refused");
    assert!(
        err.contains("invalid cors_origins") && err.contains("`*` is refused"),
        "{err}"
    );
}

/// An SSE reader over a streaming response (data lines only).
async fn sse_events(mut resp: reqwest::Response, want: usize) -> Vec<(String, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < want {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("stream events in time")
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let id = block
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .map(|s| s.trim().to_owned());
            let data = block.lines().find_map(|l| l.strip_prefix("data:"));
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, serde_json::from_str(data.trim()).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn stream_tickets_open_one_portal_with_fixed_filters() {
    let dir = tempfile::tempdir().unwrap();
    let s = app(dir.path(), &["--admin-token", ADMIN]).await;
    s.store(&EventSpec::new(P1, "ONCRMDEALADD", Some("1"), T))
        .await;
    let issue = |portal: &'static str, token: &'static str, query: &'static str| {
        s.client
            .post(s.url(&format!("/v1/portals/{portal}/stream-tickets{query}")))
            .bearer_auth(token)
            .send()
    };
    let r = issue(P1.domain, ACME, "?event=ONCRMDEALUPDATE")
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let ticket = v["ticket"].as_str().unwrap().to_owned();
    let url = v["stream_url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("/v1/portals/{}/events/stream?ticket=", P1.domain)));
    assert_eq!(v["expires_in"], 3600);

    // No Authorization header: the ticket alone opens the stream.
    let stream = s.client.get(s.url(&url)).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    s.store(&EventSpec::new(P1, "ONCRMDEALADD", Some("2"), T + 1))
        .await;
    s.store(&EventSpec::new(P1, "ONCRMDEALUPDATE", Some("3"), T + 2))
        .await;
    let got = sse_events(stream, 1).await;
    assert_eq!(
        got[0].1["event"], "ONCRMDEALUPDATE",
        "the ticket's filter applies"
    );
    assert_eq!(got[0].1["entity_id"], "3");

    let get = |url: String| s.client.get(s.url(&url)).send();
    // The filters are the ticket's: the URL cannot widen them.
    let r = get(format!("{url}&event=ONCRMDEALADD")).await.unwrap();
    assert_eq!(r.status(), 400);
    // Another portal's URL, an altered ticket, garbage: 401.
    let r = get(format!(
        "/v1/portals/{}/events/stream?ticket={ticket}",
        P2.domain
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let mut altered = ticket.clone().into_bytes();
    let last = altered.len() - 5;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let r = get(format!(
        "/v1/portals/{}/events/stream?ticket={altered}",
        P1.domain
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    // A token asks only for its own portals.
    let r = issue(P2.domain, ACME, "").await.unwrap();
    assert_eq!(r.status(), 404);
    let r = issue(P1.domain, ACME, "?wait=3").await.unwrap();
    assert_eq!(r.status(), 400);
    let r = issue(P1.domain, "nope-token-0000000000", "").await.unwrap();
    assert_eq!(r.status(), 401);
    s.stop().await;
}

#[tokio::test]
async fn tickets_and_tokens_survive_a_restart_of_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let s = app(dir.path(), &[]).await;
    s.store(&EventSpec::new(P1, "ONCRMDEALADD", Some("8"), T))
        .await;
    let r = s
        .client
        .post(s.url(&format!("/v1/portals/{}/stream-tickets", P1.member)))
        .bearer_auth(ACME)
        .send()
        .await
        .unwrap();
    let url = r.json::<Value>().await.unwrap()["stream_url"]
        .as_str()
        .unwrap()
        .to_owned();
    s.stop().await;
    let s = app(dir.path(), &[]).await;
    s.store(&EventSpec::new(P1, "ONCRMDEALADD", Some("9"), T))
        .await;
    let resp = s
        .client
        .get(s.url(&format!("{url}&cursor={}", cursor_after_first())))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a ticket outlives a restart");
    let got = sse_events(resp, 1).await;
    assert_eq!(got[0].1["entity_id"], "9");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("data/stream-tickets.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    s.stop().await;
}

/// The cursor of seq 1, as the API encodes cursors.
fn cursor_after_first() -> String {
    use base64::Engine as _;
    let mut b = vec![1u8, b's'];
    b.extend_from_slice(&1u64.to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn stats_count_per_bucket_from_the_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let s = app(dir.path(), &["--admin-token", ADMIN]).await;
    let h0 = T - T % 3600;
    for (i, (event, ts)) in [
        ("ONCRMDEALADD", h0 + 10),
        ("ONCRMDEALADD", h0 + 20),
        ("ONCRMDEALUPDATE", h0 + 30),
        ("ONCRMDEALADD", h0 + 3600 * 2 + 5),
    ]
    .into_iter()
    .enumerate()
    {
        s.store(&EventSpec::new(P1, event, Some(&i.to_string()), ts))
            .await;
    }
    // A duplicate counts under the event it repeats.
    let dup = s
        .post_form(&EventSpec::new(P1, "ONCRMDEALADD", Some("0"), h0 + 10).form())
        .await;
    expect_duplicate(&dup);
    s.store(&EventSpec::new(P2, "ONCRMDEALADD", Some("x"), h0 + 40))
        .await;

    let since = h0.to_string();
    let until = (h0 + 3 * 3600 - 1).to_string();
    let q = [("since", since.as_str()), ("until", until.as_str())];
    let r = s.get(&format!("/v1/portals/{}/stats", P1.domain), &q).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["portal"], P1.member);
    assert_eq!(v["bucket"], "hour");
    let buckets = v["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3);
    assert_eq!(buckets[0]["events"], 3);
    assert_eq!(buckets[0]["duplicates"], 1);
    assert_eq!(buckets[0]["by_event"]["ONCRMDEALADD"]["events"], 2);
    assert_eq!(buckets[0]["by_event"]["ONCRMDEALADD"]["duplicates"], 1);
    assert_eq!(buckets[0]["by_event"]["ONCRMDEALUPDATE"]["events"], 1);
    assert_eq!(buckets[1]["events"], 0);
    assert_eq!(buckets[2]["events"], 1);
    assert_eq!(v["events"], 4);

    let mut qe = q.to_vec();
    qe.push(("event", "onCrmDealUpdate"));
    let v = s
        .get(&format!("/v1/portals/{}/stats", P1.member), &qe)
        .await
        .json();
    assert_eq!(v["events"], 1);

    let mut qd = q.to_vec();
    qd.push(("bucket", "day"));
    let v = s.get("/v1/stats", &qd).await.json();
    assert_eq!(v["events"], 5, "both portals: {v}");
    assert_eq!(v["portals"].as_array().unwrap().len(), 2);
    let v = s
        .get_auth("/v1/stats", &qd, Some(&bearer(ACME)))
        .await
        .json();
    assert_eq!(v["events"], 4, "only the token's portal: {v}");
    assert_eq!(v["portals"].as_array().unwrap().len(), 1);

    for bad in [
        vec![("bucket", "week")],
        vec![("since", "1"), ("until", "999999999")],
        vec![("since", "tomorrow")],
        vec![("limit", "3")],
    ] {
        let r = s
            .get(&format!("/v1/portals/{}/stats", P1.member), &bad)
            .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text);
        assert!(r.error().len() > 10);
    }

    // Erasing the portal takes its rollups with it.
    let r = s
        .client
        .delete(s.url(&format!("/v1/admin/portals/{}", P1.member)))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v = s.get("/v1/stats", &qd).await.json();
    assert_eq!(v["events"], 1, "after the erase: {v}");
    s.stop().await;
    // `verify` recounts the rollups from the events: they agree.
    let data = dir.path().join("data");
    let (status, out) = run_to_exit(
        &[
            "verify".into(),
            "--data-dir".into(),
            data.to_str().unwrap().into(),
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(status.success(), "{out}");
    assert!(out.contains("\"problem_count\": 0"), "{out}");
}

#[tokio::test]
async fn retention_takes_its_events_out_of_the_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let s = app(
        dir.path(),
        &["--retain-per-portal", "2", "--retain-every", "1"],
    )
    .await;
    let h0 = T - T % 3600;
    for i in 0..5u64 {
        s.store(&EventSpec::new(
            P1,
            "ONCRMDEALADD",
            Some(&i.to_string()),
            h0 + i * 3600,
        ))
        .await;
    }
    let since = h0.to_string();
    let q = [("since", since.as_str()), ("until", "1730030000")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = s
            .get(&format!("/v1/portals/{}/stats", P1.member), &q)
            .await
            .json();
        if v["events"] == 2 {
            let hours: Vec<u64> = v["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["events"].as_u64().unwrap())
                .collect();
            assert_eq!(&hours[..5], [0, 0, 0, 1, 1], "the oldest went: {v}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.count(P1.member).await, 2);
    s.stop().await;
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let s = app(dir.path(), &[]).await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
    }
    let r = s
        .client
        .get(s.url("/console/../Cargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
    let s = app(dir.path(), &["--no-console"]).await;
    let r = s.client.get(s.url("/console")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
}
