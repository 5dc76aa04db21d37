//! Application lifecycle: portals learnt from ONAPPINSTALL (within the
//! `--install-domains` allowlist), revoked by ONAPPUNINSTALL, re-installed;
//! takeover attempts refused; registrations survive restarts; tokens are
//! kept only as digests.

mod common;

use common::*;
use serde_json::Value;

/// A portal nobody configured: it becomes known only through ONAPPINSTALL.
const N1: Portal = Portal {
    member: "77aa55cc33ee11ff00dd22bb44996688",
    domain: "acme.bitrix24.com",
    token: "inst-token-first-0a1b2c3d4e5f",
};
const N1_SECOND_TOKEN: &str = "inst-token-second-9z8y7x6w5v";
const N2: Portal = Portal {
    member: "0000ffff1111eeee2222dddd3333cccc",
    domain: "racers.bitrix24.com",
    token: "unused",
};
const EVIL: Portal = Portal {
    member: "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1",
    domain: "evil.example.com",
    token: "evil-token-123456",
};
const T: u64 = 1_720_000_000;

fn install_args(dir: &std::path::Path) -> Vec<String> {
    let mut args = default_args(dir);
    args.push("--install-domains".into());
    args.push("*.bitrix24.com,crm.example.ru".into());
    args
}

fn install(p: Portal, token: &str, ts: u64) -> EventSpec {
    let mut ev = EventSpec::new(p, "ONAPPINSTALL", None, ts)
        .with("data[VERSION]", "1")
        .with("data[LANGUAGE_ID]", "en");
    ev.token = Some(token.to_string());
    ev
}

fn uninstall(p: Portal, token: &str, ts: u64) -> EventSpec {
    let mut ev = EventSpec::new(p, "ONAPPUNINSTALL", None, ts).with("data[CLEAN]", "0");
    ev.full_auth = false;
    ev.token = Some(token.to_string());
    ev
}

fn activity(p: Portal, token: &str, id: &str, ts: u64) -> EventSpec {
    let mut ev = EventSpec::new(p, "ONCRMACTIVITYADD", Some(id), ts);
    ev.token = Some(token.to_string());
    ev
}

async fn listed(s: &Client, member: &str) -> Value {
    s.portal_entry(member)
        .await
        .unwrap_or_else(|| panic!("portal {member} not listed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn install_accept_uninstall_refuse_reinstall_and_restart() {
    let dir = tempdir();
    let mut s = TestServer::spawn(install_args(dir.path()), &[]);

    // Unknown before its install.
    let r = s.post_form(&activity(N1, N1.token, "1", T).form()).await;
    r.assert_error(401, "auth[application_token]", "event before install");
    assert!(s.portal_entry(N1.member).await.is_none());

    // Install: journaled, and the portal is registered.
    s.store(&install(N1, N1.token, T + 1)).await;
    let p = listed(&s, N1.member).await;
    assert_eq!(p["status"], "active", "{p}");
    assert_eq!(p["source"], "install", "{p}");
    assert_eq!(p["domain"], N1.domain, "{p}");

    // Its events are accepted with its token only.
    s.store(&activity(N1, N1.token, "10", T + 2)).await;
    let r = s
        .post_form(&activity(N1, "not-the-token", "11", T + 3).form())
        .await;
    r.assert_error(401, "auth[application_token]", "wrong token after install");

    // A repeated install with the same token is harmless.
    expect_duplicate(&s.post_form(&install(N1, N1.token, T + 1).form()).await);
    s.store(&install(N1, N1.token, T + 4)).await;
    s.store(&activity(N1, N1.token, "12", T + 5)).await;

    // Uninstall: verified like any event, journaled, and revokes.
    s.store(&uninstall(N1, N1.token, T + 6)).await;
    let before = s.count(N1.member).await;
    let r = s
        .post_form(&activity(N1, N1.token, "13", T + 7).form())
        .await;
    r.assert_error(401, "uninstalled", "event after uninstall");
    assert_eq!(s.count(N1.member).await, before, "nothing stored");
    let p = listed(&s, N1.member).await;
    assert_eq!(p["status"], "uninstalled", "{p}");
    // The journal is kept.
    let events = s.all_events(N1.member).await;
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ONAPPUNINSTALL",
            "ONCRMACTIVITYADD",
            "ONAPPINSTALL",
            "ONCRMACTIVITYADD",
            "ONAPPINSTALL"
        ]
    );

    // Re-install with a new token: the new token works, the old one not.
    s.store(&install(N1, N1_SECOND_TOKEN, T + 8)).await;
    s.store(&activity(N1, N1_SECOND_TOKEN, "14", T + 9)).await;
    let r = s
        .post_form(&activity(N1, N1.token, "15", T + 10).form())
        .await;
    r.assert_error(401, "auth[application_token]", "old token after reinstall");
    assert_eq!(listed(&s, N1.member).await["status"], "active");
    s.stop();

    // Registrations survive a restart.
    let mut s = TestServer::spawn(install_args(dir.path()), &[]);
    s.store(&activity(N1, N1_SECOND_TOKEN, "16", T + 11)).await;
    let r = s
        .post_form(&activity(N1, N1.token, "17", T + 12).form())
        .await;
    r.assert_error(401, "auth[application_token]", "old token after restart");
    let p = listed(&s, N1.member).await;
    assert_eq!(
        (p["status"].as_str(), p["source"].as_str()),
        (Some("active"), Some("install"))
    );
    s.stop();

    // Only digests reach the disk.
    for f in all_files(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for t in [N1.token, N1_SECOND_TOKEN] {
            assert!(
                !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                "token {t} found in {}",
                f.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover_attempts_are_refused_with_409() {
    let dir = tempdir();
    let mut s = TestServer::spawn(install_args(dir.path()), &[]);
    s.store(&install(N1, N1.token, T)).await;
    let before = s.count(N1.member).await;

    let r = s
        .post_form(&install(N1, "attacker-token-000", T + 1).form())
        .await;
    r.assert_error(409, "auth[application_token]", "install with another token");
    assert_eq!(s.count(N1.member).await, before, "nothing stored");
    let r = s
        .post_form(&activity(N1, "attacker-token-000", "1", T + 2).form())
        .await;
    r.assert_error(401, "auth[application_token]", "attacker event");
    s.store(&activity(N1, N1.token, "2", T + 3)).await;
    assert!(
        s.logs().contains("different token"),
        "the refusal is logged"
    );

    // Racing first installs of a new portal with different tokens: exactly
    // one wins, the others get 409, and only the winner's token works.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let client = s.client.clone();
        let url = s.url(EVENTS_PATH);
        let body = install(N2, &format!("race-token-{i:02}"), T + 100 + i).form();
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", FORM_CT)
                .body(body)
                .send()
                .await
                .unwrap();
            (i, r.status().as_u16())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, status) = t.await.unwrap();
        match status {
            200 => winners.push(i),
            409 => {}
            other => panic!("install {i}: unexpected {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one install wins: {winners:?}");
    let w = winners[0];
    s.store(&activity(N2, &format!("race-token-{w:02}"), "1", T + 200))
        .await;
    for i in (0..12).filter(|i| *i != w) {
        let r = s
            .post_form(&activity(N2, &format!("race-token-{i:02}"), "2", T + 201).form())
            .await;
        assert_eq!(r.status, 401, "loser {i}");
    }
    assert_eq!(
        s.count(N2.member).await,
        2,
        "the winning install and one event"
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn install_allowlist_is_enforced_and_learning_is_off_by_default() {
    let dir = tempdir();
    let s = spawn_app_with(install_args(dir.path())).await;
    let r = s.post_form(&install(EVIL, EVIL.token, T).form()).await;
    r.assert_error(403, "auth[domain]", "install outside the allowlist");
    let r = s
        .post_form(&activity(EVIL, EVIL.token, "1", T + 1).form())
        .await;
    assert_eq!(r.status, 401);
    assert!(s.portal_entry(EVIL.member).await.is_none());

    // Exact patterns match only themselves.
    let exact = Portal {
        member: "abcabcabcabcabcabcabcabcabcabc12",
        domain: "crm.example.ru",
        token: "exact-token-1",
    };
    let sub = Portal {
        member: "abcabcabcabcabcabcabcabcabcabc34",
        domain: "sub.crm.example.ru",
        token: "sub-token-1",
    };
    s.store(&install(exact, exact.token, T)).await;
    s.store(&activity(exact, exact.token, "1", T + 1)).await;
    let r = s.post_form(&install(sub, sub.token, T).form()).await;
    assert_eq!(r.status, 403, "{}", r.text);
    s.stop().await;

    // Without --install-domains nobody is learnt.
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let r = s.post_form(&install(N1, N1.token, T).form()).await;
    r.assert_error(401, "auth[application_token]", "install with learning off");
    assert!(s.portal_entry(N1.member).await.is_none());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn configured_portals_keep_their_token_across_lifecycle_events() {
    let dir = tempdir();
    let s = spawn_app_with(install_args(dir.path())).await;
    // A configured portal's install must carry the configured token.
    let r = s
        .post_form(&install(P1, "some-other-token", T).form())
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    s.store(&install(P1, P1.token, T)).await;
    assert_eq!(listed(&s, P1.member).await["source"], "configured");
    // Uninstall revokes it too, until it is installed again.
    s.store(&uninstall(P1, P1.token, T + 1)).await;
    let r = s
        .post_form(&activity(P1, P1.token, "1", T + 2).form())
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(listed(&s, P1.member).await["status"], "uninstalled");
    s.store(&install(P1, P1.token, T + 3)).await;
    s.store(&activity(P1, P1.token, "1", T + 4)).await;
    assert_eq!(listed(&s, P1.member).await["status"], "active");
    s.stop().await;
}

/// Bitrix24 lets an administrator change a portal's address and keeps its
/// member id: an event with a new `auth[domain]` is stored, the rename is
/// logged at warn once, `GET /v1/portals` lists the old domain in
/// `previous_domains`, and both names still lead to the portal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renamed_portal_is_logged_and_keeps_its_previous_domain() {
    let dir = tempdir();
    let mut srv = TestServer::start(dir.path(), &[]);
    srv.store(&EventSpec::new(P1, "ONCRMDEALUPDATE", Some("1"), T))
        .await;
    let renamed = Portal {
        domain: "renamed-portal.bitrix24.com",
        ..P1
    };
    for entity in ["2", "3"] {
        srv.store(&EventSpec::new(renamed, "ONCRMDEALUPDATE", Some(entity), T))
            .await;
    }
    let p = srv.portal_entry(P1.member).await.unwrap();
    assert_eq!(p["domain"], renamed.domain, "{p}");
    assert_eq!(p["previous_domains"], serde_json::json!([P1.domain]), "{p}");
    let p2 = srv.portal_entry(P2.member).await.unwrap();
    assert_eq!(p2["previous_domains"], serde_json::json!([]), "{p2}");
    assert_eq!(srv.count(P1.domain).await, 3);
    assert_eq!(srv.count(renamed.domain).await, 3);
    let logs = strip_ansi(&srv.stop());
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("portal renamed"))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains(P1.domain)
            && lines[0].contains(renamed.domain),
        "{}",
        lines[0]
    );
}
