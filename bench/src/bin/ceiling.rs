//! The ceiling: a bare warp 0.4 server, served the way b24-journal serves
//! (hyper 1 HTTP/1.1 connections with keep-alive and TCP_NODELAY, one tokio
//! multi-thread runtime with the default worker count), that reads each
//! request body and answers a small JSON 200. No parsing, no storage, no
//! logging: whatever the service does on top of this costs throughput.
//!
//! `GET /bytes/N` answers a JSON body of exactly N bytes instead (built once
//! per worker thread and shared, so the answer costs no rendering): the
//! ceiling for answers as large as the service's query pages.
//!
//! Usage: `b24-bench-ceiling [ADDR]` (default `127.0.0.1:0`). Prints
//! `listening on ADDR` on stdout once bound; stops on SIGTERM/SIGINT.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

fn small_json(body: &'static [u8]) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = StatusCode::OK;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

thread_local! {
    /// The last sized body this worker built: a run asks for one size.
    static SIZED: std::cell::RefCell<bytes::Bytes> = const { std::cell::RefCell::new(bytes::Bytes::new()) };
}

/// A JSON object of exactly `n` bytes (at least the 10 of `{"pad":""}`).
fn sized_json(n: usize) -> Response {
    let n = n.max(10);
    let body = SIZED.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.len() != n {
            let mut b = Vec::with_capacity(n);
            b.extend_from_slice(br#"{"pad":""#);
            b.resize(n - 2, b'x');
            b.extend_from_slice(br#""}"#);
            *cached = bytes::Bytes::from(b);
        }
        cached.clone()
    });
    let mut res = Response::new(body.into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .context("listen address IP:PORT")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    // POST: read the whole body (at most 64 KiB, like the service), answer
    // the size of an ingest answer. GET: answer a small JSON object.
    let post = warp::post()
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::bytes())
        .map(|body: bytes::Bytes| {
            std::hint::black_box(body.len());
            small_json(
                br#"{"status":"stored","id":"0190f3c2-8d2b-7c41-9b1e-4f5a6b7c8d9e","seq":1}"#,
            )
        });
    let sized = warp::get()
        .and(warp::path!("bytes" / usize))
        .map(|n: usize| sized_json(n.min(1 << 20)));
    let get = warp::get().map(|| small_json(br#"{"status":"ok"}"#));
    let routes = post
        .or(sized)
        .unify()
        .or(get)
        .unify()
        .recover(|_r: warp::Rejection| async {
            Ok::<_, Infallible>(small_json(br#"{"error":"rejected"}"#))
        });

    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    println!(
        "listening on {}",
        listener.local_addr().context("local address")?
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    loop {
        let (stream, _) = tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(warp::service(routes));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    Ok(())
}
