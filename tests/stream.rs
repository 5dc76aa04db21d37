//! Live tail: `GET /v1/portals/{portal}/events/stream` (Server-Sent Events,
//! resumable with `Last-Event-ID`) and `?wait=` long-polls.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: u64 = 1_730_000_000;

/// A minimal SSE reader over a streaming reqwest response.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug)]
struct Message {
    id: Option<String>,
    data: Value,
}

impl Sse {
    async fn open(s: &Client, portal: &str, query: &str, last_id: Option<&str>) -> Sse {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut rb = client
            .get(s.url(&format!("/v1/portals/{portal}/events/stream{query}")))
            .bearer_auth(READ_TOKEN);
        if let Some(id) = last_id {
            rb = rb.header("Last-Event-ID", id);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status(), 200, "stream open");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next data message (comments are skipped), or `None` on timeout.
    async fn next(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    return Some(Message {
                        id,
                        data: serde_json::from_str(&data).expect("data is JSON"),
                    });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
}

/// A client that disconnects mid-stream and resumes with Last-Event-ID sees
/// every event exactly once, in order, while writers keep posting (also to
/// another portal and to filtered-out event types).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_resume_with_last_event_id_sees_every_event_exactly_once() {
    const N: u64 = 240;
    let dir = tempdir();
    let s = spawn_app_with(default_args(dir.path())).await;
    // History before the stream starts is not replayed without a cursor.
    for i in 0..5 {
        s.store(&EventSpec::new(
            P1,
            "ONCRMDEALADD",
            Some(&format!("old{i}")),
            T + i,
        ))
        .await;
    }
    let mut sse = Sse::open(&s, P1.member, "?event=onCrmActivityAdd", None).await;

    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = s.client.clone();
        let url = s.url(EVENTS_PATH);
        let done = done.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..N {
                for (portal, event) in [
                    (P1, "ONCRMACTIVITYADD"),
                    (P1, "ONCRMACTIVITYDELETE"),
                    (P2, "ONCRMACTIVITYADD"),
                ] {
                    let body =
                        EventSpec::new(portal, event, Some(&i.to_string()), T + 100 + i).form();
                    let v = post_ok(&client, &url, body).await;
                    if portal == P1 && event == "ONCRMACTIVITYADD" {
                        seqs.push(v["seq"].as_u64().unwrap());
                    }
                }
                if i % 40 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            done.store(true, Ordering::SeqCst);
            seqs
        })
    };

    let mut got: Vec<u64> = Vec::new();
    let mut reconnects = 0;
    while got.len() < N as usize {
        let last_id = match sse.next(Duration::from_secs(20)).await {
            Some(m) => {
                assert_eq!(m.data["event"], "ONCRMACTIVITYADD", "filter applies");
                assert_eq!(m.data["member_id"], P1.member);
                let id = m.id.expect("every message has an id");
                assert_eq!(m.data["cursor"].as_str(), Some(id.as_str()));
                got.push(m.data["seq"].as_u64().unwrap());
                id
            }
            None => panic!("stream stalled after {} events", got.len()),
        };
        // Drop the connection every 50 events and resume where we were.
        if got.len().is_multiple_of(50) && got.len() < N as usize {
            drop(sse);
            reconnects += 1;
            // Let events arrive while we are away.
            tokio::time::sleep(Duration::from_millis(50)).await;
            sse = Sse::open(&s, P1.member, "?event=ONCRMACTIVITYADD", Some(&last_id)).await;
        }
    }
    let posted = writer.await.unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert!(reconnects >= 4, "{reconnects} reconnects");
    assert_eq!(got, posted, "every event exactly once, in order");
    // Nothing more arrives.
    assert!(sse.next(Duration::from_millis(300)).await.is_none());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_cursor_entity_filter_errors_and_limit() {
    let dir = tempdir();
    let mut args = default_args(dir.path());
    args.extend(["--max-streams".to_string(), "2".to_string()]);
    let s = spawn_app_with(args).await;
    let (_, first_seq) = s
        .store(&EventSpec::new(P1, "ONCRMDEALADD", Some("7"), T))
        .await;
    s.store(&EventSpec::new(P1, "ONCRMDEALUPDATE", Some("8"), T + 1))
        .await;
    s.store(&EventSpec::new(P1, "ONCRMDEALUPDATE", Some("7"), T + 2))
        .await;
    let first = s.page(P1.member, &[("limit", "1000")]).await.0;
    let oldest_cursor = first.last().unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(first.last().unwrap()["seq"], first_seq);

    // ?cursor= replays what came after it; entity_id filters.
    let mut sse = Sse::open(
        &s,
        P1.domain,
        &format!("?cursor={oldest_cursor}&entity_id=7"),
        None,
    )
    .await;
    let m = sse
        .next(Duration::from_secs(10))
        .await
        .expect("replayed event");
    assert_eq!(
        (m.data["entity_id"].as_str(), m.data["seq"].as_u64()),
        (Some("7"), Some(first_seq + 2))
    );
    assert!(sse.next(Duration::from_millis(300)).await.is_none());

    // A second stream fits; a third is refused while two are open.
    let _second = Sse::open(&s, P1.member, "", None).await;
    let r = s
        .get(&format!("/v1/portals/{}/events/stream", P1.member), &[])
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    r.error();
    drop(sse);
    // The slot is released once the server notices the disconnect.
    let mut reopened = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let client = reqwest::Client::new();
        let r = client
            .get(s.url(&format!("/v1/portals/{}/events/stream", P1.member)))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            reopened = true;
            break;
        }
    }
    assert!(reopened, "a closed stream frees its slot");

    // Errors: auth, unknown portal, bad Last-Event-ID, bad parameters.
    let path = format!("/v1/portals/{}/events/stream", P1.member);
    s.get_auth(&path, &[], None)
        .await
        .assert_error(401, "Authorization", "no token");
    s.get("/v1/portals/nope.example/events/stream", &[])
        .await
        .assert_error(404, "unknown portal", "unknown portal");
    let client = reqwest::Client::new();
    let r = client
        .get(s.url(&path))
        .bearer_auth(READ_TOKEN)
        .header("Last-Event-ID", "garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Last-Event-ID"));
    s.get(&path, &[("wait", "5")])
        .await
        .assert_error(400, "wait", "wait on the stream");
    s.get(&path, &[("bogus", "1")])
        .await
        .assert_error(400, "bogus", "unknown parameter");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_returns_new_events_or_empty_at_timeout() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    s.store(&EventSpec::new(P1, "ONCRMDEALADD", Some("1"), T))
        .await;
    let head = s.page(P1.member, &[("limit", "1")]).await.0[0]["cursor"]
        .as_str()
        .unwrap()
        .to_string();

    // Nothing new: empty at the timeout, with a cursor to poll again.
    let r = s
        .get(
            &format!("/v1/portals/{}/events", P1.member),
            &[("wait", "1"), ("cursor", &head)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["events"], serde_json::json!([]));
    assert_eq!(r.json()["next_cursor"].as_str(), Some(head.as_str()));

    // A poll waiting when an event arrives answers with it.
    let poll = {
        let client = s.client.clone();
        let url = s.url(&format!("/v1/portals/{}/events", P1.member));
        let head = head.clone();
        tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(READ_TOKEN)
                .query(&[
                    ("wait", "30"),
                    ("cursor", head.as_str()),
                    ("event", "ONCRMDEALUPDATE"),
                ])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Filtered out: the poll keeps waiting.
    s.store(&EventSpec::new(P1, "ONCRMDEALADD", Some("2"), T + 1))
        .await;
    let (id, seq) = s
        .store(&EventSpec::new(P1, "ONCRMDEALUPDATE", Some("1"), T + 2))
        .await;
    let v = poll.await.unwrap();
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{v}");
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["seq"], seq);
    // The next poll continues after it.
    let next = v["next_cursor"].as_str().unwrap();
    let r = s
        .get(
            &format!("/v1/portals/{}/events", P1.member),
            &[("wait", "1"), ("cursor", next)],
        )
        .await;
    assert_eq!(r.json()["events"], serde_json::json!([]));

    // Bad wait values.
    for bad in ["0", "301", "x"] {
        s.get(
            &format!("/v1/portals/{}/events", P1.member),
            &[("wait", bad)],
        )
        .await
        .assert_error(400, "wait", bad);
    }
    s.stop().await;
}
