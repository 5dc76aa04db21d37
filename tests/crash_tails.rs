//! A crash with acknowledged events that live in the redo log only: the
//! unsealed tails and the portal counters never reach sled before their
//! block is sealed or a checkpoint runs, and a checkpoint deletes the log
//! segments that first held them. SIGKILL after such a checkpoint, with
//! more events since: after the restart every acknowledged event is there
//! once, with its id and seq, the counters match, and every body is
//! answered `duplicate` of the same event.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::Value;

/// About 40 KB of `data` per event: a redo log segment (16 MiB) is passed
/// after some 400 events.
fn body(p: Portal, i: u64, entity: u64) -> String {
    EventSpec::new(
        p,
        "ONCRMACTIVITYUPDATE",
        Some(&entity.to_string()),
        1_720_000_000 + i,
    )
    .with(
        "data[FIELDS][DESCRIPTION]",
        &"x".repeat(40_000 + (i % 7) as usize),
    )
    .form()
}

/// Posts `bodies` 16 at a time, expects `stored`, and records the answers.
async fn post(s: &TestServer, acked: &mut Vec<(String, String, u64)>, bodies: Vec<String>) {
    for chunk in bodies.chunks(16) {
        let answers = futures_util::future::join_all(chunk.iter().map(|b| s.post_form(b))).await;
        for (body, r) in chunk.iter().zip(answers) {
            let (id, seq) = expect_stored(&r);
            acked.push((body.clone(), id, seq));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_tail_events_survive_a_checkpoint_and_a_crash() {
    let dir = tempdir();
    let mut s = TestServer::start(dir.path(), &[]);
    let mut acked: Vec<(String, String, u64)> = Vec::new();
    // P1 gets most events (many sealed blocks, a tail of 30); P2 and P3
    // only tails, whose events were all logged before the checkpoint.
    post(
        &s,
        &mut acked,
        (0..20).map(|i| body(P2, i, i % 4)).collect(),
    )
    .await;
    post(&s, &mut acked, vec![body(P3, 0, 1)]).await;
    let mut i = 0u64;
    while !s.logs().contains("journal checkpoint: store flushed") {
        post(
            &s,
            &mut acked,
            (i..i + 32).map(|k| body(P1, k, k % 50)).collect(),
        )
        .await;
        i += 32;
        assert!(
            i < 2_000,
            "no checkpoint after {i} big events:\n{}",
            s.logs()
        );
    }
    // More after the checkpoint, up to a tail of 30 events: in the new
    // segment only.
    let upto = i.div_ceil(64) * 64 + 30;
    post(
        &s,
        &mut acked,
        (i..upto).map(|k| body(P1, k, k % 50)).collect(),
    )
    .await;
    post(
        &s,
        &mut acked,
        (20..25).map(|k| body(P2, k, k % 4)).collect(),
    )
    .await;
    s.kill9();

    let mut s = TestServer::start(dir.path(), &[]);
    let mut by_portal: HashMap<&str, Vec<(String, u64)>> = HashMap::new();
    for p in [P1, P2, P3] {
        let listed: Vec<(String, u64)> = s
            .all_events(p.member)
            .await
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap().to_owned(),
                    e["seq"].as_u64().unwrap(),
                )
            })
            .collect();
        let counted = s.portal_entry(p.member).await.unwrap()["events"]
            .as_u64()
            .unwrap();
        assert_eq!(counted, listed.len() as u64, "{} counter", p.member);
        by_portal.insert(p.member, listed);
    }
    let listed: Vec<&(String, u64)> = by_portal.values().flatten().collect();
    assert_eq!(
        listed.len(),
        acked.len(),
        "every acknowledged event, none twice"
    );
    for (_, id, seq) in &acked {
        assert!(
            listed.contains(&&(id.clone(), *seq)),
            "acknowledged {id} (seq {seq}) missing"
        );
    }
    // 16 at a time: a duplicate of a sealed event rewrites its block, and
    // these blocks are large.
    for chunk in acked.chunks(16) {
        let answers =
            futures_util::future::join_all(chunk.iter().map(|(b, _, _)| s.post_form(b))).await;
        for ((_, id, seq), r) in chunk.iter().zip(answers) {
            let (dup_id, dup_seq) = expect_duplicate(&r);
            assert_eq!((&dup_id, dup_seq), (id, *seq));
        }
    }
    let tail = body(P1, 99_999, 3);
    let (_, seq) = expect_stored(&s.post_form(&tail).await);
    let p1_last = by_portal[P1.member].iter().map(|(_, s)| *s).max().unwrap();
    assert_eq!(seq, p1_last + 1, "new events continue the seqs");
    s.stop();
    let (status, out) = run_to_exit(
        &[
            "verify".to_string(),
            "--data-dir".to_string(),
            dir.path().to_str().unwrap().to_string(),
        ],
        &[],
        std::time::Duration::from_secs(60),
    );
    assert!(status.success(), "{out}");
    let report: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    assert_eq!(report["problem_count"], 0, "{out}");
}
