//! Continuous senders, as Bitrix24's PHP sender behaves: each event is one
//! POST on a new connection (`Connection: close`), the next one as soon as
//! the answer is in. Every event is distinct (its entity id names sender
//! and number), so each acknowledged one must be stored exactly once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::events::EventSpec;
use super::portals::Portal;

/// Time a request may take (connect to last byte) before it counts as
/// failed: far above a restart, so waiting in the backlog is not a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How one request ended.
#[derive(Debug, Clone)]
pub enum Answer {
    /// An HTTP answer: status and body.
    Http(u16, String),
    /// `connect` was refused: nothing listened.
    Refused,
    /// Connected, but the connection failed before a whole answer came
    /// (reset, or closed without one).
    Dropped(String),
}

/// One request and its answer.
#[derive(Debug, Clone)]
pub struct Sent {
    pub portal: Portal,
    /// The event's entity id, unique in the run.
    pub entity: String,
    /// When the connection was attempted and when the answer was complete.
    pub started: Instant,
    pub finished: Instant,
    pub answer: Answer,
}

impl Sent {
    /// The acknowledged `(id, seq)`, when the answer was 200 `stored`.
    pub fn stored(&self) -> Option<(String, u64)> {
        let Answer::Http(200, body) = &self.answer else {
            return None;
        };
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        (v["status"] == "stored").then(|| {
            (
                v["id"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            )
        })
    }
}

/// Senders running against one address.
pub struct Senders {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<Sent>>>,
}

impl Senders {
    /// `clients` senders, spread over `portals`, until [`Senders::stop`].
    pub fn start(addr: SocketAddr, clients: usize, portals: &[Portal]) -> Senders {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                let portal = portals[c % portals.len()];
                tokio::spawn(async move {
                    let mut sent = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let entity = format!("c{c}-{n}");
                        sent.push(send_one(addr, portal, entity, 1_700_000_000 + n).await);
                    }
                    sent
                })
            })
            .collect();
        Senders { stop, tasks }
    }

    /// Stops after each sender's current request; returns every request.
    pub async fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("a sender panicked"));
        }
        all
    }
}

/// One event on a new connection.
pub async fn send_one(addr: SocketAddr, portal: Portal, entity: String, ts: u64) -> Sent {
    let body = EventSpec::new(portal, "ONCRMACTIVITYADD", Some(&entity), ts)
        .with("data[FIELDS][SUBJECT]", "restart test")
        .form();
    let started = Instant::now();
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, exchange(addr, &body)).await {
        Ok(answer) => answer,
        Err(_) => Answer::Dropped(format!("no answer within {REQUEST_TIMEOUT:?}")),
    };
    Sent {
        portal,
        entity,
        started,
        finished: Instant::now(),
        answer,
    }
}

async fn exchange(addr: SocketAddr, body: &str) -> Answer {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Answer::Refused,
        Err(e) => return Answer::Dropped(format!("connect: {e}")),
    };
    let request = format!(
        "POST /v1/bitrix24/events HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Bitrix24 Webhook Engine\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Answer::Dropped(format!("write: {e}"));
    }
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw).await {
        return Answer::Dropped(format!("read: {e}"));
    }
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Answer::Dropped(format!("closed without an answer ({} bytes)", raw.len()));
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // warp answers JSON with a Content-Length; the object is the body.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if a <= b => body[a..=b].to_owned(),
        _ => body.to_owned(),
    };
    Answer::Http(status, json)
}
