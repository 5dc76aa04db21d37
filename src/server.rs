//! The server: opens the journal, assembles the routes, accepts connections,
//! and shuts down cleanly (stop accepting, finish in-flight requests, commit
//! and flush the journal).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::http::{json_response, recover};
use crate::journal::{Journal, JournalHandle, JournalOptions, OpenError, RetentionPolicy};
use crate::settings::Settings;
use crate::types::TokenDigest;
use crate::verify::Verifier;
use crate::{admin, metrics, query, receive};

/// Most connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// Most bytes hyper buffers while reading a request head. hyper's default
/// (~400 KiB) is only checked between reads, so a 500 KB header block that
/// arrives in one read was sometimes accepted; 64 KiB is far above any real
/// Bitrix24 request and small enough that an oversized head is always
/// refused.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Time a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time in-flight requests get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// State shared by the request handlers.
pub struct App {
    /// The journal.
    pub journal: JournalHandle,
    /// Trusted portals.
    pub verifier: Verifier,
    /// Digest of the read API's bearer token.
    pub read_token: Option<TokenDigest>,
    /// Digest of the admin API's bearer token.
    pub admin_token: Option<TokenDigest>,
    /// Time an ingest body has to arrive in.
    pub body_timeout: Duration,
    /// The data directory (for the disk-size metric).
    pub data_dir: std::path::PathBuf,
    /// Slots for live streams (SSE and long-polls).
    pub streams: Arc<Semaphore>,
    /// Turns `true` when shutdown begins: live streams end then, so that
    /// they do not hold the graceful shutdown open.
    pub stopping: watch::Receiver<bool>,
    /// Backup threads started by `POST /v1/admin/backup`: a clean stop
    /// waits for them, so that it does not leave a half-written backup.
    pub backups: Backups,
}

/// The backups running in this process. A backup starts and is recorded
/// under the same lock that shutdown takes to close the list, so shutdown
/// either joins a backup or the backup never starts.
#[derive(Default)]
pub struct Backups(std::sync::Mutex<BackupThreads>);

#[derive(Default)]
struct BackupThreads {
    /// Set by [`Backups::close`]: no backup starts after it.
    closed: bool,
    /// The backup threads; finished ones are dropped as new ones start.
    running: Vec<std::thread::JoinHandle<()>>,
}

impl Backups {
    /// Runs `job` on a thread of its own, not tokio's blocking pool: a
    /// backup of a large journal runs for minutes, and the pool (one thread
    /// per core, see `main.rs`) serves the filtered queries and live
    /// streams meanwhile. `Ok(false)`, and `job` does not run, once
    /// shutdown has begun.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) -> std::io::Result<bool> {
        let mut threads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if threads.closed {
            return Ok(false);
        }
        let thread = std::thread::Builder::new()
            .name("backup".into())
            .spawn(job)?;
        threads.running.retain(|t| !t.is_finished());
        threads.running.push(thread);
        Ok(true)
    }

    /// Stops new backups from starting and returns the threads still
    /// running, for shutdown to join.
    fn close(&self) -> Vec<std::thread::JoinHandle<()>> {
        let mut threads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        threads.closed = true;
        let mut running = std::mem::take(&mut threads.running);
        running.retain(|t| !t.is_finished());
        running
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The journal did not open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Every route, with rejections turned into JSON errors and each request
/// logged (method, path without query, status, latency; never a body).
pub fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    // Failed requests at `info` (5xx at `warn`), answered ones at `debug`.
    // One `info` line per request would flood journald during a Bitrix24
    // burst (10,000 mass updates are 10,000 requests) and hit its default
    // rate limit of 10,000 messages per 30 s, after which it drops every
    // line of the service, refusals and storage errors included. Every
    // stored event is in the journal itself and every request in
    // `/metrics`; `RUST_LOG=b24_journal=debug` brings the full access log
    // back.
    let log = warp::log::custom(|info| {
        let (method, path, status) = (info.method(), info.path(), info.status());
        let latency_ms = info.elapsed().as_secs_f64() * 1000.0;
        let status_code = status.as_u16();
        if status.is_server_error() {
            tracing::warn!(%method, path, status = status_code, latency_ms, "request");
        } else if status.is_client_error() {
            tracing::info!(%method, path, status = status_code, latency_ms, "request");
        } else {
            tracing::debug!(%method, path, status = status_code, latency_ms, "request");
        }
    });
    receive::route(app.clone())
        .or(query::list_portals(app.clone()))
        .unify()
        .or(query::list_events(app.clone()))
        .unify()
        .or(query::stream_events(app.clone()))
        .unify()
        .or(admin::backup(app.clone()))
        .unify()
        .or(admin::erase_portal(app.clone()))
        .unify()
        .or(metrics_route(app.clone()))
        .unify()
        .or(crate::openapi::route())
        .unify()
        .or(health(app))
        .unify()
        .recover(recover)
        .unify()
        .with(log)
}

/// `GET /metrics`
fn metrics_route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(warp::any().map(move || app.clone()))
        .then(|app: Arc<App>| async move {
            let m = metrics::metrics();
            m.queue_depth.set(app.journal.queue_depth() as i64);
            m.portals.set(app.journal.with_directory(|d| {
                d.portals()
                    .iter()
                    .filter(|p| !p.member_id.is_empty())
                    .count()
            }) as i64);
            let dir = app.data_dir.clone();
            let bytes = tokio::task::spawn_blocking(move || metrics::dir_bytes(&dir))
                .await
                .unwrap_or(0);
            m.disk_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
            let mut res = Response::new(m.render().into());
            res.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            res
        })
}

/// `GET /healthz`
fn health(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .and(warp::any().map(move || app.clone()))
        .then(|app: Arc<App>| async move {
            match tokio::time::timeout(Duration::from_secs(5), app.journal.probe()).await {
                Ok(Ok(())) => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "health probe failed");
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({"status": "unavailable", "error": "journal is not writable"}),
                    )
                }
                Err(_) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"status": "unavailable", "error": "journal did not answer within 5 s"}),
                ),
            }
        })
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> Result<(), RunError> {
    let shutdown = shutdown_signal().map_err(RunError::Signals)?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: settings.listen,
            source,
        })?;
    serve(settings, listener, shutdown).await
}

/// Serves on `listener` until `shutdown` completes.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let started = Instant::now();
    let data_dir = settings.data_dir.clone();
    let journal = tokio::task::spawn_blocking(move || {
        Journal::open(
            &data_dir,
            JournalOptions {
                cache_bytes: settings.cache_bytes,
                queue: settings.queue,
                snapshot_every_bytes: settings.snapshot_every_bytes,
            },
        )
    })
    .await
    .expect("journal open task does not panic")?;
    if settings.portals.is_empty() {
        tracing::warn!("no portals configured: every event will be refused with 401 (use --portal MEMBER_ID=TOKEN)");
    }
    if settings.read_token.is_none() {
        tracing::warn!("no read token configured: the read API (/v1/portals…) answers 401");
    }
    let (stop, stopping) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let app = Arc::new(App {
        journal: journal.handle(),
        verifier: Verifier::new(settings.portals, settings.install_domains),
        read_token: settings.read_token.as_ref().map(|t| t.digest()),
        admin_token: settings.admin_token.as_ref().map(|t| t.digest()),
        data_dir: settings.data_dir.clone(),
        body_timeout: settings.body_timeout,
        streams: Arc::new(Semaphore::new(settings.max_streams)),
        stopping,
        backups: Default::default(),
    });
    let addr = listener.local_addr().map_err(|source| RunError::Bind {
        addr: settings.listen,
        source,
    })?;
    tracing::info!(
        data_dir = %settings.data_dir.display(),
        portals = app.verifier.members().len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "listening on http://{addr}"
    );

    let retention = settings
        .retention
        .is_on()
        .then(|| tokio::spawn(retain_forever(app.journal.clone(), settings.retention)));

    accept_loop(listener, routes(app.clone()), shutdown).await;
    if let Some(task) = retention {
        task.abort();
    }

    // A backup outlives its request if the grace period ran out: finish
    // it before the process exits, as a half-written copy would look like
    // a backup.
    let backups = app.backups.close();
    if !backups.is_empty() {
        tracing::info!(
            running = backups.len(),
            "stopping: waiting for backups to finish"
        );
        tokio::task::spawn_blocking(move || {
            for backup in backups {
                // A panicked backup has nothing left to wait for.
                let _ = backup.join();
            }
        })
        .await
        .expect("backup join task does not panic");
    }
    // Connections are done: no handler holds a reply channel any more.
    drop(app);
    tracing::info!("stopping: committing and flushing the journal");
    tokio::task::spawn_blocking(move || journal.shutdown())
        .await
        .expect("journal shutdown task does not panic");
    tracing::info!("stopped");
    Ok(())
}

/// Events deleted per retention step (one writer job).
const RETAIN_STEP: usize = 2_000;

/// Runs retention every `policy.every`, in bounded steps that queue behind
/// ingest like any other writer job.
async fn retain_forever(journal: JournalHandle, policy: RetentionPolicy) {
    tracing::info!(?policy, "retention on");
    loop {
        loop {
            match journal.retain(policy, RETAIN_STEP).await {
                Ok(n) if n as usize >= RETAIN_STEP => tokio::task::yield_now().await,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "retention step failed");
                    break;
                }
            }
        }
        tokio::time::sleep(policy.every).await;
    }
}

/// Accepts connections (at most [`MAX_CONNECTIONS`] at once) until
/// `shutdown`, then lets in-flight requests finish for up to
/// [`SHUTDOWN_GRACE`].
async fn accept_loop<F>(listener: TcpListener, filter: F, shutdown: impl Future<Output = ()>)
where
    F: Filter<Error = Infallible> + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(warp::service(filter.clone()));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_READ_BUFFER)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}; stopping anyway");
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal that arrives
/// right after start-up is not fatal) and returns a future that resolves on
/// either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::Backups;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};

    /// A running backup is handed to shutdown; once closed, no backup
    /// starts.
    #[test]
    fn close_returns_running_backups_and_refuses_new_ones() {
        let backups = Backups::default();
        let (release, wait) = mpsc::channel::<()>();
        assert!(backups
            .spawn(move || {
                let _ = wait.recv();
            })
            .unwrap());
        let running = backups.close();
        assert_eq!(running.len(), 1);
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        assert!(!backups
            .spawn(move || flag.store(true, Ordering::SeqCst))
            .unwrap());
        release.send(()).unwrap();
        for thread in running {
            thread.join().unwrap();
        }
        assert!(!ran.load(Ordering::SeqCst));
        assert!(backups.close().is_empty());
    }
}
