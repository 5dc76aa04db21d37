//! `b24-journal read-tokens list|add|remove --config FILE`: the binary
//! edits the config file (comments kept, only a digest stored), prints a
//! new token once, and the service accepts it, scoped, after a reload
//! (which applies new CORS origins too).

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;

fn run(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    base_command(&args, &[]).output().expect("run b24-journal")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_list_remove_and_the_service_applies_them_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "# my settings\nmax_streams = 10 # keep\n").unwrap();
    let cfg_s = cfg.to_str().unwrap();

    let out = run(&[
        "read-tokens",
        "--config",
        cfg_s,
        "add",
        "acme",
        "--portal",
        P1.domain,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert_eq!(token.len(), 64, "a 32-byte hex token: {token:?}");
    assert!(
        text(&out.stderr).contains("reload"),
        "{}",
        text(&out.stderr)
    );
    let file = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        file.starts_with("# my settings\nmax_streams = 10 # keep\n"),
        "{file}"
    );
    assert!(
        !file.contains(&token),
        "the file keeps the digest only:\n{file}"
    );
    assert!(file.contains("token_sha256"), "{file}");

    // Names are unique, portals required, bad names refused; nothing changes.
    for bad in [
        vec!["add", "acme", "--portal", P2.domain],
        vec!["add", "bad name", "--portal", P2.domain],
        vec!["remove", "nobody"],
    ] {
        let mut args = vec!["read-tokens", "--config", cfg_s];
        args.extend(bad.iter());
        let out = run(&args);
        assert!(!out.status.success(), "{bad:?} must fail");
        assert_eq!(
            std::fs::read_to_string(&cfg).unwrap(),
            file,
            "{bad:?} changed the file"
        );
    }

    let out = run(&["read-tokens", "--config", cfg_s, "list"]);
    assert_eq!(text(&out.stdout), format!("acme\tsha256\t{}\n", P1.domain));

    // The service takes the token, scoped to P1.
    let mut args = default_args(&dir.path().join("data"));
    args.extend(["--config".to_string(), cfg_s.to_string()]);
    let s = TestServer::spawn(args, &[]);
    s.store(&EventSpec::new(
        P1,
        "ONCRMDEALADD",
        Some("1"),
        1_730_000_000,
    ))
    .await;
    s.store(&EventSpec::new(
        P2,
        "ONCRMDEALADD",
        Some("1"),
        1_730_000_000,
    ))
    .await;
    let auth = format!("Bearer {token}");
    let r = s.get_auth("/v1/portals", &[], Some(&auth)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["portals"].as_array().unwrap().len(), 1);
    let r = s
        .get_auth(
            &format!("/v1/portals/{}/events", P2.member),
            &[],
            Some(&auth),
        )
        .await;
    assert_eq!(r.status, 404);

    // A stream open with the token ends once a reload removes the token.
    let mut stream = s
        .client
        .get(s.url(&format!("/v1/portals/{}/events/stream", P1.member)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    // Removed and reloaded: the token no longer opens anything.
    let out = run(&["read-tokens", "--config", cfg_s, "remove", "acme"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = std::fs::read_to_string(&cfg).unwrap();
    assert!(!file.contains("acme"));
    // The same reload also applies new CORS origins.
    let origin = "http://dash.example.test";
    let cors = |s: &TestServer| {
        s.client
            .get(s.url("/v1/portals"))
            .header("Origin", origin)
            .bearer_auth(READ_TOKEN)
            .send()
    };
    let r = cors(&s).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    std::fs::write(
        &cfg,
        file.replace(
            "max_streams = 10 # keep\n",
            &format!("max_streams = 10 # keep\ncors_origins = [\"{origin}\"]\n"),
        ),
    )
    .unwrap();
    s.sighup();
    s.wait_log("CORS origins", 1, Duration::from_secs(10));
    let r = cors(&s).await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], origin);
    s.wait_log("read token \"acme\" removed", 1, Duration::from_secs(10));
    let r = s.get_auth("/v1/portals", &[], Some(&auth)).await;
    assert_eq!(r.status, 401);
    s.store(&EventSpec::new(
        P1,
        "ONCRMDEALADD",
        Some("2"),
        1_730_000_001,
    ))
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            assert!(
                !String::from_utf8_lossy(&chunk).contains("data:"),
                "no event after the token was removed"
            );
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream of a removed token ends");
    assert!(!s.logs().contains(&token), "the token is never logged");
}
