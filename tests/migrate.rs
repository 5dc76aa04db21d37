//! Migration of journals written by earlier releases: the fixtures
//! `v3-journal.tar.gz` and `v4-journal.tar.gz` are data directories of
//! formats 3 and 4 written by the binaries of the last commits writing them
//! (see `fixtures/PROVENANCE.md`), with the answers they gave and the
//! events they served. The current binary refuses to serve them, `migrate`
//! converts them, and then every event reads back exactly as before, by
//! itself, by entity and by time window, every count matches, every body
//! posted before is answered `duplicate` with its original's id and seq,
//! and the portals learnt from ONAPPINSTALL keep their registrations.
//! `v5-journal.tar.gz`, of the current format but from a release whose
//! run heads did not list their items, is served the same way as it is.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use b24_journal::journal::FORMAT_VERSION;
use common::*;
use serde_json::Value;

/// Learnt from ONAPPINSTALL in the fixture (its token is only there).
const N1: Portal = Portal {
    member: "77aa55cc33ee11ff00dd22bb44996688",
    domain: "acme.bitrix24.com",
    token: "inst-token-first-0a1b2c3d4e5f",
};
/// Installed, then uninstalled, in the fixture.
const N2: Portal = Portal {
    member: "0000ffff1111eeee2222dddd3333cccc",
    domain: "racers.bitrix24.com",
    token: "inst-token-racers-5v6w7x8y9z",
};

/// What the older service answered and served.
struct Recorded {
    posts: Vec<Value>,
    portals: Value,
    events: Value,
}

/// Unpacks the fixture `name` into `dir`; returns the data directory and
/// the records.
fn unpack(dir: &Path, name: &str) -> (PathBuf, Recorded) {
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(format!("{FIXTURES}/{name}"))
        .arg("-C")
        .arg(dir)
        .status()
        .expect("run tar");
    assert!(status.success(), "tar: {status}");
    let json = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
    };
    let recorded = Recorded {
        posts: json("posts.json").as_array().unwrap().clone(),
        portals: json("portals.json"),
        events: json("events.json"),
    };
    (dir.join("data"), recorded)
}

/// The fixture's service ran with the standard portals and learnt
/// installs from *.bitrix24.com.
fn serve_args(data: &Path) -> Vec<String> {
    let mut args = default_args(data);
    args.extend(["--install-domains".into(), "*.bitrix24.com".into()]);
    args
}

fn command(args: &[&str], data: &Path) -> (bool, String) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--data-dir".into(), data.to_str().unwrap().into()]);
    let (status, out) = run_to_exit(&all, &[], Duration::from_secs(120));
    (status.success(), out)
}

/// Migrates the directory of format `from` and checks everything the
/// older service answered and served against the current one.
async fn migrate_and_check(data: &Path, recorded: &Recorded, from: u32, later: &LaterFields) {
    migrate(data, from).await;
    check_served(data, recorded, later).await;
}

/// Checks that the service refuses the directory of format `from` and
/// that `migrate` converts it.
async fn migrate(data: &Path, from: u32) {
    let refused = try_spawn_app(serve_args(data))
        .await
        .err()
        .expect("an older format must not be served");
    assert!(
        refused.contains(&format!("format version {from}"))
            && refused.contains("b24-journal migrate"),
        "the refusal names the version and the command: {refused}"
    );
    let (ok, out) = command(&["migrate"], data);
    assert!(ok, "migrate failed: {out}");
    assert!(out.contains(&format!("\"from\": {from}")), "{out}");
    assert!(out.contains(&format!("\"to\": {FORMAT_VERSION}")), "{out}");
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).unwrap(),
        format!("b24-journal data format {FORMAT_VERSION}\n")
    );
}

/// Checks a directory of the current format against everything an older
/// service answered and served: `verify`, the portals, every event by
/// itself, by entity and by time window, every body answered `duplicate`,
/// the registrations, and new events after the old ones.
async fn check_served(data: &Path, recorded: &Recorded, later: &LaterFields) {
    let events = recorded.events.as_object().unwrap();
    let total: usize = events.values().map(|e| e.as_array().unwrap().len()).sum();
    let (ok, out) = command(&["verify"], data);
    assert!(ok, "verify failed: {out}");
    assert!(out.contains("\"problem_count\": 0"), "{out}");
    assert!(out.contains(&format!("\"events\": {total}")), "{out}");
    assert!(out.contains("\"registrations\": 2"), "{out}");

    let s = spawn_app_with(serve_args(data)).await;
    // Every portal, with its counts and times, as listed before.
    let listed = s.get("/v1/portals", &[]).await;
    assert_eq!(listed.status, 200);
    let mut listed = listed.json();
    for portal in listed["portals"].as_array_mut().unwrap() {
        without_later_fields(portal, later.portal);
    }
    assert_eq!(listed, recorded.portals);
    // Every event, as served before.
    for (member, before) in events {
        let mut now = s.all_events(member).await;
        now.iter_mut()
            .for_each(|e| without_later_fields(e, later.event));
        assert_eq!(&Value::Array(now), before, "the events of {member}");
    }
    // Each entity's events through the entity index, as in the full list.
    for (member, before) in events {
        assert_entity_walks(&s, member, before.as_array().unwrap(), later).await;
    }
    // Time windows around every fifth event's `ts`, through the span
    // summaries the migration worked out again: the events in them, as in
    // the full list.
    for (member, before) in events {
        let before = before.as_array().unwrap();
        for at in before.iter().step_by(5) {
            let ts = at["ts_unix"].as_u64().unwrap();
            let window = (ts - 4)..=(ts + 4);
            let want = before
                .iter()
                .filter(|e| window.contains(&e["ts_unix"].as_u64().unwrap()));
            let (since, until) = (window.start().to_string(), window.end().to_string());
            let query = [("since", since.as_str()), ("until", until.as_str())];
            assert_walk(&s, member, &query, want, later).await;
        }
    }
    // Every body the old service took is a duplicate of the same event.
    for post in &recorded.posts {
        if post["status"] != 200 {
            continue;
        }
        let ct = post["content_type"].as_str().unwrap();
        let body = post["body"].as_str().unwrap().to_owned();
        let r = s.post_raw_ct(Some(ct), body).await;
        let (id, seq) = expect_duplicate(&r);
        assert_eq!(
            (id.as_str(), seq),
            (
                post["answer"]["id"].as_str().unwrap(),
                post["answer"]["seq"].as_u64().unwrap()
            ),
            "{}",
            post["label"]
        );
    }
    // The registrations: the learnt portal's token still works (and only
    // it), the uninstalled portal is still refused, new events go on
    // after the old seqs.
    let mut ev = EventSpec::new(N1, "ONCRMCONTACTUPDATE", Some("5"), 1_720_000_999);
    ev.token = Some(N1.token.into());
    let (_, seq) = s.store(&ev).await;
    assert_eq!(seq, 7, "after the learnt portal's six events");
    ev.token = Some("not-the-installed-token".into());
    ev.ts = "1720001000".into();
    assert_eq!(s.post_form(&ev.form()).await.status, 401);
    let mut ev = EventSpec::new(N2, "ONCRMCONTACTADD", Some("1"), 1_720_000_999);
    ev.token = Some(N2.token.into());
    assert_eq!(s.post_form(&ev.form()).await.status, 401);
    s.stop().await;
    let (ok, out) = command(&["verify"], data);
    assert!(ok && out.contains("\"problem_count\": 0"), "{out}");
}

/// Walks `member`'s events that match `query` and checks that they are
/// `want`, the recorded events that match, in the same order.
async fn assert_walk<'r>(
    s: &TestApp,
    member: &str,
    query: &[(&str, &str)],
    want: impl Iterator<Item = &'r Value>,
    later: &LaterFields,
) {
    let mut got = s.walk(member, query, 1000).await;
    got.iter_mut()
        .for_each(|e| without_later_fields(e, later.event));
    assert_eq!(
        got.iter().collect::<Vec<_>>(),
        want.collect::<Vec<_>>(),
        "{member} {query:?}"
    );
}

/// Walks each entity of `events` (`member`'s, as listed) through the
/// entity index and checks that it gets that entity's events of the list.
async fn assert_entity_walks(s: &TestApp, member: &str, events: &[Value], later: &LaterFields) {
    let mut entities: Vec<&str> = events
        .iter()
        .filter_map(|e| e["entity_id"].as_str())
        .collect();
    entities.sort_unstable();
    entities.dedup();
    for entity in entities {
        let want = events
            .iter()
            .filter(|e| e["entity_id"].as_str() == Some(entity));
        assert_walk(s, member, &[("entity_id", entity)], want, later).await;
    }
}

/// Fields the API gained after a recording, with the value every migrated
/// portal and event must show.
struct LaterFields {
    portal: &'static [(&'static str, &'static str)],
    event: &'static [(&'static str, &'static str)],
}

/// Since the version-3 recording: `previous_domains` (a portal that never
/// changed its domain lists none) and `offline` (never pulled); every
/// recorded event was pushed.
const SINCE_V3: LaterFields = LaterFields {
    portal: &[("previous_domains", "[]"), ("offline", "null")],
    event: &[
        ("source", "\"push\""),
        ("message_id", "null"),
        ("reconciled", "0"),
    ],
};
/// The version-4 and version-5 recordings have every field the API
/// serves.
const SINCE_V4: LaterFields = LaterFields {
    portal: &[],
    event: &[],
};

/// Checks and removes from `object` the fields added after the recording,
/// so that the rest compares with it.
fn without_later_fields(object: &mut Value, fields: &[(&str, &str)]) {
    for (name, want) in fields {
        let got = object.as_object_mut().unwrap().remove(*name);
        let want: Value = serde_json::from_str(want).unwrap();
        assert_eq!(got, Some(want), "{name} of {object}");
    }
}

/// Unpacks the fixture of format `from`, migrates and checks it.
async fn migrate_fixture(from: u32, later: &LaterFields) {
    let dir = tempdir();
    let (data, recorded) = unpack(dir.path(), &format!("v{from}-journal.tar.gz"));
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).unwrap(),
        format!("b24-journal data format {from}\n")
    );
    migrate_and_check(&data, &recorded, from, later).await;
    // The old engine stays beside the new one until the operator deletes it.
    assert!(data.join(format!("sled.v{from}")).join("db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_3_journal_is_migrated_keeping_every_event_answer_and_registration() {
    migrate_fixture(3, &SINCE_V3).await;
}

/// Version 2 is version 3 without the redo log: the same journal as a
/// version-2 binary left it migrates the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_2_journal_is_migrated_too() {
    let dir = tempdir();
    let (data, recorded) = unpack(dir.path(), "v3-journal.tar.gz");
    std::fs::remove_dir_all(data.join("sled").join("wal")).unwrap();
    std::fs::write(data.join("FORMAT"), "b24-journal data format 2\n").unwrap();
    migrate_and_check(&data, &recorded, 2, &SINCE_V3).await;
}

/// Version 4 differs in its summary spans (256 events, now one block's) and
/// keeps the unsealed tail in the redo log: its journal, with a portal of
/// nine blocks whose `ts` is out of seq order, migrates the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_4_journal_is_migrated_with_summaries_per_block() {
    migrate_fixture(4, &SINCE_V4).await;
}

/// A version-5 journal written before run heads listed their items (their
/// items are found by range reads, and merged into runs whose heads list
/// them) is served as it was, without a migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_5_journal_from_before_item_lists_is_served_as_before() {
    let dir = tempdir();
    let (data, recorded) = unpack(dir.path(), "v5-journal.tar.gz");
    assert_eq!(FORMAT_VERSION, 5);
    let unlisted = runs_without_item_list(&data);
    assert!(unlisted > 0, "the fixture's runs are of the first form");
    check_served(&data, &recorded, &SINCE_V4).await;

    // Eleven more blocks of the documentation's portal: their runs merge
    // with the old ones (read by range, deleted by scan) into runs that
    // list their items, and every entity's events are the old ones and the
    // new ones.
    let s = spawn_app_with(serve_args(&data)).await;
    let member = P1.member;
    for i in 0..704u64 {
        let entity = (i % 40 + 1).to_string();
        let ev = EventSpec::new(P1, "ONCRMACTIVITYUPDATE", Some(&entity), 1_720_100_000 + i);
        s.store(&ev).await;
    }
    let all = s.all_events(member).await;
    assert_eq!(
        all.len(),
        recorded.events[member].as_array().unwrap().len() + 704
    );
    assert_entity_walks(&s, member, &all, &SINCE_V4).await;
    s.stop().await;
    let (ok, out) = command(&["verify"], &data);
    assert!(ok && out.contains("\"problem_count\": 0"), "{out}");
    let now = runs_without_item_list(&data);
    assert!(
        now < unlisted,
        "merges left {now} of {unlisted} runs unlisted"
    );
}

/// `verify`'s count of live runs whose heads do not list their items.
fn runs_without_item_list(data: &Path) -> u64 {
    let (ok, out) = command(&["verify"], data);
    assert!(ok, "verify failed: {out}");
    let field = "\"runs_without_item_list\": ";
    let at = out.find(field).unwrap_or_else(|| panic!("{out}")) + field.len();
    let digits: String = out[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}
