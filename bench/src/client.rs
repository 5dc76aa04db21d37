//! The load generator: a raw HTTP/1.1 keep-alive client over tokio
//! `TcpStream`, and a closed-loop runner at fixed concurrency.
//!
//! Each connection sends its next request as soon as the previous answer has
//! been read completely. Latency is taken from just before the request is
//! written to just after the last byte of the response is read, and recorded
//! as is in an HDR histogram: no coordinated-omission correction.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
    body: Vec<u8>,
}

/// A response: status and body (de-chunked if needed).
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0; 64 * 1024],
            filled: 0,
            body: Vec::new(),
        })
    }

    async fn fill_more(&mut self) -> std::io::Result<()> {
        if self.filled == self.buf.len() {
            let n = self.buf.len() * 2;
            self.buf.resize(n, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.filled += n;
        Ok(())
    }

    /// Writes `request` (a complete HTTP/1.1 request) and reads the answer.
    pub async fn round_trip(&mut self, request: &[u8]) -> std::io::Result<Response<'_>> {
        self.stream.write_all(request).await?;
        // Head.
        let (status, head_len, length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 24];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&self.buf[..self.filled]) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = res.code.unwrap_or(0);
                    let mut length = None;
                    let mut chunked = false;
                    for h in res.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = h.value.eq_ignore_ascii_case(b"chunked");
                        }
                    }
                    break (status, head_len, length, chunked);
                }
                Ok(httparse::Status::Partial) => self.fill_more().await?,
                Err(e) => return Err(bad(format!("bad response head: {e}"))),
            }
        };
        if let Some(len) = length.filter(|_| !chunked) {
            while self.filled < head_len + len {
                self.fill_more().await?;
            }
            self.body.clear();
            self.body
                .extend_from_slice(&self.buf[head_len..head_len + len]);
            self.consume(head_len + len);
        } else if chunked {
            self.body.clear();
            let mut at = head_len;
            loop {
                // Chunk size line.
                let line_end = loop {
                    if let Some(i) = memchr::memmem::find(&self.buf[at..self.filled], b"\r\n") {
                        break at + i;
                    }
                    self.fill_more().await?;
                };
                let size_txt = std::str::from_utf8(&self.buf[at..line_end])
                    .map_err(|_| bad("bad chunk size"))?;
                let size_txt = size_txt.split(';').next().unwrap_or("").trim();
                let size =
                    usize::from_str_radix(size_txt, 16).map_err(|_| bad("bad chunk size"))?;
                at = line_end + 2;
                while self.filled < at + size + 2 {
                    self.fill_more().await?;
                }
                self.body.extend_from_slice(&self.buf[at..at + size]);
                at += size + 2;
                if size == 0 {
                    break;
                }
            }
            self.consume(at);
        } else {
            return Err(bad("response without Content-Length or chunked body"));
        }
        Ok(Response {
            status,
            body: &self.body,
        })
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }
}

/// One GET with `Connection: close` semantics kept simple: a fresh
/// connection per call. For health checks and verification, not load.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut conn = Conn::connect(addr).await?;
    let req = get_request(addr, path, bearer);
    let res = conn.round_trip(&req).await?;
    Ok((res.status, res.body.to_vec()))
}

pub fn get_request(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Appends a form POST to the ingest route.
pub fn post_request(out: &mut Vec<u8>, host: &str, body: &[u8]) {
    out.extend_from_slice(b"POST /v1/bitrix24/events HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ",
    );
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// What one connection does: produce the next request, judge the answer.
pub trait Work: Send + 'static {
    /// Writes the next complete request into `buf` (which is empty).
    fn request(&mut self, buf: &mut Vec<u8>);
    /// Looks at the answer to the last request. An `Err` stops the whole run
    /// (a correctness error: the harness fails).
    fn response(&mut self, status: u16, body: &[u8]) -> anyhow::Result<()>;
}

/// Timing of one phase.
#[derive(Debug, Clone)]
pub struct Spec {
    pub addr: SocketAddr,
    /// More servers: connection i goes to the (i mod n)-th of `addr` and
    /// these.
    pub also: Vec<SocketAddr>,
    pub conns: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

/// What a phase measured.
pub struct Outcome<W> {
    pub works: Vec<W>,
    /// Latency (ns) of requests started inside the measurement window.
    pub hist: Histogram<u64>,
    /// Requests started and completed inside the measurement window.
    pub completed_in_window: u64,
    /// Every request answered, warm-up included.
    pub total: u64,
    pub measure: Duration,
}

impl<W> Outcome<W> {
    pub fn rate(&self) -> f64 {
        self.completed_in_window as f64 / self.measure.as_secs_f64()
    }
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3)
        .expect("constant bounds: low ≥ 1, high ≥ 2 × low, 3 significant digits")
}

struct ConnResult<W> {
    work: W,
    hist: Histogram<u64>,
    in_window: u64,
    total: u64,
}

/// Runs `spec.conns` closed-loop connections for warm-up + measurement.
pub async fn run<W, F>(spec: Spec, mut factory: F) -> anyhow::Result<Outcome<W>>
where
    W: Work,
    F: FnMut(usize) -> W,
{
    let mut conns = Vec::with_capacity(spec.conns);
    for i in 0..spec.conns {
        let addr = match i % (1 + spec.also.len()) {
            0 => spec.addr,
            k => spec.also[k - 1],
        };
        conns.push(
            Conn::connect(addr)
                .await
                .with_context(|| format!("connect to {addr}"))?,
        );
    }
    let start = Instant::now();
    let window_start = start + spec.warmup;
    let end = window_start + spec.measure;
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(spec.conns);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let mut work = factory(i);
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let mut req = Vec::with_capacity(1024);
            let mut in_window = 0u64;
            let mut total = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end || failed.load(Ordering::Relaxed) {
                    break;
                }
                req.clear();
                work.request(&mut req);
                let t0 = Instant::now();
                let res = match conn.round_trip(&req).await {
                    Ok(r) => r,
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(anyhow::Error::new(e).context(format!("connection {i}")));
                    }
                };
                let t1 = Instant::now();
                total += 1;
                if t0 >= window_start {
                    let _ = hist.record((t1 - t0).as_nanos() as u64);
                    if t1 <= end {
                        in_window += 1;
                    }
                }
                let (status, body) = (res.status, res.body);
                if let Err(e) = work.response(status, body) {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e.context(format!("connection {i}")));
                }
            }
            Ok(ConnResult {
                work,
                hist,
                in_window,
                total,
            })
        }));
    }
    let mut out = Outcome {
        works: Vec::with_capacity(spec.conns),
        hist: new_hist(),
        completed_in_window: 0,
        total: 0,
        measure: spec.measure,
    };
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                out.hist
                    .add(&r.hist)
                    .expect("every histogram comes from new_hist, with the same bounds");
                out.completed_in_window += r.in_window;
                out.total += r.total;
                out.works.push(r.work);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow!("load task panicked: {e}"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The runtime the load runs on: current-thread for one thread (the
/// default: about one core at most), else multi-thread with `threads`
/// workers.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}
