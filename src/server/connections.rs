//! The accept loop and the connections' shutdown.
//!
//! On shutdown the service stops accepting, and every connection finishes
//! what it has: a request in progress is answered (the journal is still
//! open), an accepted connection whose request has not arrived yet gets a
//! short wait for it and is then served, and idle keep-alive connections
//! close. Connections the kernel completed but the service never accepted
//! stay in an inherited socket's backlog for the next process; a bound
//! socket accepts those first, since closing it would reset them.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use warp::Filter;

use super::listener::Origin;
use crate::routes::client::WithPeer;

/// Most connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// Most bytes hyper buffers while reading a request head: far above any
/// real Bitrix24 request, and small enough that an oversized head that
/// arrives in one read is still refused (hyper checks its limit only
/// between reads).
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Time a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time in-flight requests get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Time an accepted connection that has not sent a request yet gets for it
/// once shutdown began. A client sends its request right after connecting;
/// the bound keeps an idle connection (a port probe) from holding a restart
/// for the whole [`HEADER_TIMEOUT`] while new connections queue.
pub const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(3);
/// Time connections get to send answers the journal gave at its shutdown
/// (commits, or 503 for what came after) once the grace ran out.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// The connections being served, for shutdown to wait on.
pub struct Connections {
    slots: Arc<Semaphore>,
    /// Turns `true` when shutdown begins.
    stop: watch::Sender<bool>,
}

impl Connections {
    /// Room for [`MAX_CONNECTIONS`].
    pub fn new() -> Self {
        Connections {
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            stop: watch::channel(false).0,
        }
    }

    /// Accepts connections until `shutdown`, serving each with `filter`; then
    /// lets in-flight requests finish for up to [`SHUTDOWN_GRACE`]. A bound
    /// listener is closed as soon as its backlog is served, so that later
    /// connections are refused (a proxy retries those) rather than reset
    /// after their request was sent; an inherited one is handed back, to
    /// stay open until the process ends.
    pub async fn accept_until<F>(
        &self,
        listener: TcpListener,
        origin: Origin,
        filter: F,
        shutdown: impl Future<Output = ()>,
    ) -> Option<TcpListener>
    where
        F: Filter<Error = Infallible> + Clone + Send + Sync + 'static,
        F::Extract: warp::Reply,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = self.slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            self.serve(stream, filter.clone(), permit);
        }
        let _ = self.stop.send(true);
        let kept = match origin {
            Origin::Bound => {
                self.accept_backlog(&listener, &filter);
                drop(listener);
                None
            }
            Origin::Inherited => Some(listener),
        };
        self.wait(SHUTDOWN_GRACE, "in-flight requests did not finish")
            .await;
        kept
    }

    /// Waits (up to a short time) for the answers that the journal's own
    /// shutdown gave to requests still open after the grace.
    pub async fn finish(&self) {
        self.wait(LAST_WORDS, "connections still open at exit")
            .await;
    }

    /// Waits until every connection is done, or `limit` passed.
    async fn wait(&self, limit: Duration, late: &str) {
        let all = MAX_CONNECTIONS as u32;
        match tokio::time::timeout(limit, self.slots.acquire_many(all)).await {
            Ok(_) => {}
            Err(_) => tracing::warn!(
                open = MAX_CONNECTIONS - self.slots.available_permits(),
                "{late} within {limit:?}; going on"
            ),
        }
    }

    /// Accepts what a bound socket's backlog holds at shutdown: closing the
    /// socket would reset those connections, whose clients already sent
    /// (or are sending) a request.
    fn accept_backlog<F>(&self, listener: &TcpListener, filter: &F)
    where
        F: Filter<Error = Infallible> + Clone + Send + Sync + 'static,
        F::Extract: warp::Reply,
    {
        let mut taken = 0usize;
        while let Ok(permit) = self.slots.clone().try_acquire_owned() {
            // A direct `accept(2)`: tokio's `accept` would wait for the
            // reactor to report readiness, and may not know of the newest
            // connections yet.
            let Ok(stream) = accept_now(listener) else {
                break;
            };
            self.serve(stream, filter.clone(), permit);
            taken += 1;
        }
        if taken > 0 {
            tracing::info!(connections = taken, "stopping: served the listen backlog");
        }
    }

    /// Serves one connection on its own task.
    fn serve<F>(&self, stream: TcpStream, filter: F, permit: tokio::sync::OwnedSemaphorePermit)
    where
        F: Filter<Error = Infallible> + Clone + Send + Sync + 'static,
        F::Extract: warp::Reply,
    {
        let _ = stream.set_nodelay(true);
        // Turns `true` when the connection's first request has come.
        let (asked_tx, mut asked) = watch::channel(false);
        // The peer's address travels with each request, for the logs.
        let warp_service = WithPeer::new(
            hyper_util::service::TowerToHyperService::new(warp::service(filter)),
            stream.peer_addr().ok(),
        );
        let service = hyper::service::service_fn(move |req| {
            asked_tx.send_if_modified(|seen| !std::mem::replace(seen, true));
            warp_service.call(req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_READ_BUFFER)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let mut stopping = self.stop.subscribe();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let done = tokio::select! {
                done = conn.as_mut() => done,
                () = turned_true(&mut stopping) => {
                    // hyper's graceful shutdown closes a connection that has
                    // not sent anything yet, and its client may be sending
                    // its request right now: wait for that request first.
                    let first = turned_true(&mut asked);
                    let waited = tokio::select! {
                        done = conn.as_mut() => Some(done),
                        _ = tokio::time::timeout(FIRST_REQUEST_WAIT, first) => None,
                    };
                    let has_asked = *asked.borrow();
                    match waited {
                        Some(done) => done,
                        _ if !has_asked => Ok(()),
                        _ => {
                            // Keep-alive off: the request in progress is
                            // answered with `Connection: close`; an idle
                            // keep-alive connection closes now.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
            };
            if let Err(e) = done {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

impl Default for Connections {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves once `flag` is `true` (or its sender is gone).
async fn turned_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

/// One non-blocking `accept(2)` on `listener`.
fn accept_now(listener: &TcpListener) -> std::io::Result<TcpStream> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: `accept4` on a valid listening fd; the returned fd is new and
    // owned by the `std` stream that wraps it.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a connected socket that nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    TcpStream::from_std(stream)
}
