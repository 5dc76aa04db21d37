//! The server: start-up (open the journal, build the [`App`], start the
//! background retention), the accept loop, and a clean shutdown (stop
//! accepting, finish in-flight requests and backups, commit and flush the
//! journal).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use warp::Filter;

use crate::app::App;
use crate::journal::{Journal, JournalHandle, JournalOptions, OpenError, RetentionPolicy};
use crate::routes::client::WithPeer;
use crate::routes::routes;
use crate::settings::Settings;
use crate::verify::Verifier;

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

/// Events deleted per retention step (one writer job).
const RETAIN_STEP: usize = 2_000;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The journal did not open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Runs the service on `settings.listen` until SIGTERM or SIGINT.
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

/// Serves on `listener` until `shutdown` completes, then shuts down
/// cleanly. The in-process entry point: tests bind a listener on port 0
/// and pass it here.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let started = Instant::now();
    let journal = open_journal(&settings).await?;
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
        backup_dir: settings.backup_dir.clone(),
        trusted_proxies: settings.trusted_proxies.clone(),
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
    join_backups(&app).await;
    // Connections are done: no handler holds a reply channel any more.
    drop(app);
    tracing::info!("stopping: committing and flushing the journal");
    tokio::task::spawn_blocking(move || journal.shutdown())
        .await
        .expect("the shutdown task cannot panic: Journal::shutdown logs its failures");
    tracing::info!("stopped");
    Ok(())
}

/// Opens the journal on a blocking thread: recovery reads the disk.
async fn open_journal(settings: &Settings) -> Result<Journal, OpenError> {
    let data_dir = settings.data_dir.clone();
    let options = JournalOptions {
        cache_bytes: settings.cache_bytes,
        queue: settings.queue,
        snapshot_every_bytes: settings.snapshot_every_bytes,
    };
    tokio::task::spawn_blocking(move || Journal::open(&data_dir, options))
        .await
        .expect("the open task cannot panic: Journal::open returns its failures")
}

/// Waits for the backups still running. A backup outlives its request if
/// the grace period ran out: finish it before the process exits, as a
/// half-written copy would look like a backup.
async fn join_backups(app: &App) {
    let backups = app.backups.close();
    if backups.is_empty() {
        return;
    }
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
    .expect("the join task cannot panic: it ignores the backups' own panics");
}

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
        let (stream, peer) = tokio::select! {
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
        // The peer's address travels with each request, for the logs.
        let service = WithPeer::new(
            hyper_util::service::TowerToHyperService::new(warp::service(filter.clone())),
            peer,
        );
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
