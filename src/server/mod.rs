//! The server: start-up (take or bind the socket, open the journal, build
//! the [`App`], start retention and reloads), the accept loop, and a clean
//! shutdown (stop accepting, finish in-flight requests and backups, commit
//! and flush the journal).
//!
//! - `listener`: the socket, inherited (socket activation) or bound;
//! - `connections`: the accept loop and each connection's shutdown;
//! - `reload`: SIGHUP → new live settings;
//! - `notify`: `READY=1`, `RELOADING=1`, `STOPPING=1` for systemd.

mod connections;
pub mod listener;
mod notify;
pub mod reload;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};

use crate::app::App;
use crate::cluster::Cluster;
use crate::journal::{Journal, JournalHandle, JournalOptions, OpenError};
use crate::routes::routes;
use crate::settings::{check_exposure, Settings, SettingsError};
use crate::tickets::TicketKey;

pub use connections::{FIRST_REQUEST_WAIT, HEADER_TIMEOUT, MAX_CONNECTIONS, SHUTDOWN_GRACE};
pub use listener::{Activation, ListenError, Origin, LISTEN_BACKLOG};
pub use reload::Reloader;

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
    /// No socket to serve on.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The stream-ticket key could not be read or created.
    #[error("stream ticket key in the data directory: {0}")]
    TicketKey(#[source] std::io::Error),
    /// The socket's address needs a setting that is missing.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Cluster mode could not start.
    #[error(transparent)]
    Cluster(crate::cluster::StartError),
    /// The secrets key for offline pulling cannot be used.
    #[error(transparent)]
    SecretsKey(#[from] crate::offline::secrets::KeyError),
    /// Offline pulling cannot start.
    #[error(transparent)]
    Offline(#[from] crate::offline::StartError),
}

/// Runs the service until SIGTERM or SIGINT: on the socket inherited
/// through `activation` if there is one, else on `settings.listen`.
/// SIGHUP reloads the live settings through `reloader`.
pub async fn run(
    settings: Settings,
    activation: Activation,
    reloader: Reloader,
) -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed first: a signal that arrives during start-up is then not
    // fatal (SIGHUP's default action ends the process).
    let hangup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let shutdown = shutdown_signal().map_err(RunError::Signals)?;
    let (listener, origin) = activation.listener(settings.listen)?;
    serve_with(
        settings,
        listener,
        origin,
        shutdown,
        Some((hangup, reloader)),
    )
    .await
}

/// Serves on `listener` until `shutdown` completes, then shuts down
/// cleanly. The in-process entry point: tests bind a listener on port 0
/// and pass it here (no reloads, no supervisor).
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    serve_with(settings, listener, Origin::Bound, shutdown, None).await
}

/// [`serve`], with where the socket came from and, for the binary, the
/// SIGHUP stream and what a reload needs.
async fn serve_with(
    settings: Settings,
    listener: TcpListener,
    origin: Origin,
    shutdown: impl Future<Output = ()>,
    reloads: Option<(tokio::signal::unix::Signal, Reloader)>,
) -> Result<(), RunError> {
    let started = Instant::now();
    let addr = listener.local_addr().map_err(|source| ListenError::Bind {
        addr: settings.listen,
        source,
    })?;
    check_exposure(addr, &settings)?;
    // Checked before the journal opens: a key file others can read is a
    // reason not to start at all.
    let secrets_key = match &settings.offline {
        Some(o) => Some(crate::offline::secrets::SecretsKey::load(
            &o.secrets_key_file,
        )?),
        None => None,
    };
    let journal = open_journal(&settings).await?;
    let cluster = match &settings.cluster {
        Some(config) => Some(
            Cluster::start(config.clone(), journal.handle())
                .await
                .map_err(RunError::Cluster)?,
        ),
        None => None,
    };
    if settings.portals.is_empty() {
        tracing::warn!("no portals configured: every event will be refused with 401 (use --portal MEMBER_ID=TOKEN)");
    }
    if settings.read_token.is_none() && settings.read_tokens.is_empty() {
        tracing::warn!("no read token configured: the read API (/v1/portals…) answers 401");
    }
    // The data directory exists once the journal is open.
    let tickets = TicketKey::load_or_create(&settings.data_dir).map_err(RunError::TicketKey)?;
    let (stop, stopping) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        notify::stopping();
        let _ = stop.send(true);
    };
    let offline = match (&settings.offline, secrets_key) {
        (Some(o), Some(key)) => {
            use crate::offline::sink::Sink;
            let sink = match &cluster {
                Some(c) => Sink::Cluster(c.clone(), journal.handle()),
                None => Sink::Local(journal.handle()),
            };
            Some(Arc::new(crate::offline::Offline::start(
                o.config.clone(),
                key,
                sink,
                stopping.clone(),
            )?))
        }
        _ => None,
    };
    let app = Arc::new(App {
        offline,
        journal: journal.handle(),
        live: ArcSwap::from_pointee(reload::live(&settings)),
        data_dir: settings.data_dir.clone(),
        body_timeout: settings.body_timeout,
        streams: Arc::new(Semaphore::new(settings.max_streams)),
        stopping,
        backups: Default::default(),
        backup_dir: settings.backup_dir.clone(),
        trusted_proxies: settings.trusted_proxies.clone(),
        cluster,
        tickets,
        console: settings.console,
    });
    tracing::info!(
        data_dir = %settings.data_dir.display(),
        portals = app.live().verifier.members().len(),
        socket = origin.as_str(),
        startup_ms = started.elapsed().as_millis() as u64,
        "listening on http://{addr}"
    );

    let retention_changed = Arc::new(Notify::new());
    let retention = tokio::spawn(retain_forever(app.clone(), retention_changed.clone()));
    let reloading = reloads.map(|(hangup, reloader)| {
        let running = reload::Running {
            settings: settings.clone(),
            addr,
            origin,
            retention: retention_changed,
        };
        tokio::spawn(reload::reload_on_hangup(
            hangup,
            reloader,
            app.clone(),
            running,
        ))
    });
    // The journal is open, its writer runs, the socket accepts.
    notify::ready();

    let connections = connections::Connections::new();
    let inherited = connections
        .accept_until(listener, origin, routes(app.clone()), shutdown)
        .await;
    retention.abort();
    if let Some(task) = reloading {
        task.abort();
    }
    join_backups(&app).await;
    // The applier stops before the journal closes; what it had queued is
    // committed with its stream position, and the next start resumes there.
    if let Some(cluster) = &app.cluster {
        cluster.stop();
    }
    drop(app);
    tracing::info!("stopping: committing and flushing the journal");
    tokio::task::spawn_blocking(move || journal.shutdown())
        .await
        .expect("the shutdown task cannot panic: Journal::shutdown logs its failures");
    // Requests still open after the grace got their answer from the
    // writer's shutdown (committed, or 503): let them send it.
    connections.finish().await;
    // Only now: an inherited socket stays open to the end (the supervisor
    // holds it too; nothing waiting in it is lost).
    drop(inherited);
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

/// The lease of the node that publishes retention steps in cluster mode.
const RETENTION_LEASE: &str = "retention";

/// Runs retention every `policy.every`, in bounded steps that queue behind
/// ingest like any other writer job. The policy is read anew for every
/// pass, and a reload wakes the task so that a new one applies at once.
/// In cluster mode only the node holding the retention lease publishes
/// steps (every node applies them); a node whose policy is off lets the
/// lease go.
async fn retain_forever(app: Arc<App>, changed: Arc<Notify>) {
    let mut announced = None;
    // The lease task stops when this pair is dropped.
    let mut lease: Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::sync::watch::Receiver<bool>,
    )> = None;
    loop {
        let policy = app.live().retention;
        if announced != Some(policy) {
            if policy.is_on() {
                tracing::info!(?policy, "retention on");
            } else if announced.is_some() {
                tracing::info!("retention off");
            }
            announced = Some(policy);
        }
        if policy.is_on() {
            match &app.cluster {
                Some(cluster) => {
                    let (_, held) = lease.get_or_insert_with(|| {
                        let (stop, stopped) = tokio::sync::watch::channel(false);
                        (stop, cluster.lease(RETENTION_LEASE, stopped))
                    });
                    // A first attempt to take it is one round trip away.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), held.wait_for(|h| *h)).await;
                    if *held.borrow() {
                        cluster_retain_pass(cluster, policy).await;
                    }
                }
                None => retain_pass(&app.journal, policy).await,
            }
        } else {
            lease = None;
        }
        tokio::select! {
            _ = tokio::time::sleep(policy.every) => {}
            _ = changed.notified() => {}
        }
    }
}

/// One retention pass, in steps of [`RETAIN_STEP`] events.
async fn retain_pass(journal: &JournalHandle, policy: crate::journal::RetentionPolicy) {
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
}

/// One retention pass in cluster mode: each step is a command in the
/// stream, applied by every node with this node's clock as its reference,
/// so that all journals delete the same events.
async fn cluster_retain_pass(cluster: &Cluster, policy: crate::journal::RetentionPolicy) {
    loop {
        let step = cluster.retain(policy, RETAIN_STEP).await;
        tracing::debug!(?step, "retention step published");
        match step {
            Ok(n) if n as usize >= RETAIN_STEP => tokio::task::yield_now().await,
            Ok(_) => break,
            Err(e) => {
                tracing::error!(error = %e, "retention step failed");
                break;
            }
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal that arrives
/// right after start-up is not fatal) and returns a future that resolves on
/// either.
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
