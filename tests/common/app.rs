//! The application in-process, as zero-to-production's `spawn_app` does:
//! [`spawn_app`] builds the real service with `server::serve` on a listener
//! bound to 127.0.0.1:0, on the test's own runtime, and hands back a
//! [`TestApp`] with the same HTTP helpers as the binary's `TestServer`. No
//! process start, no log scraping for the port.
//!
//! Dropping a `TestApp` without [`TestApp::stop`] drops the shutdown
//! sender, which starts the same graceful shutdown; if the test's runtime
//! ends first, the serve task is dropped with it, the journal's channel
//! closes, and the writer thread flushes and exits. Nothing waits forever.

use std::ops::Deref;
use std::path::Path;
use std::time::Duration;

use b24_journal::cli::{Cli, Command};
use b24_journal::server::{self, RunError};
use b24_journal::settings::Settings;
use clap::{CommandFactory, FromArgMatches};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::Client;
use super::portals::default_args;

/// The service running in this process, and the HTTP helpers of its
/// [`Client`].
pub struct TestApp {
    http: Client,
    /// Sending (or dropping) it starts the graceful shutdown.
    stop: oneshot::Sender<()>,
    serving: JoinHandle<Result<(), RunError>>,
}

/// [`Settings`] from `serve`'s command line, as the binary resolves them,
/// except that `B24J_*` variables of the test's own environment are ignored
/// (the binary's harness removes them from the child's environment too).
/// The one place that knows how arguments become settings.
pub fn settings_from_args(args: &[String]) -> Result<Settings, String> {
    let no_env = |arg: clap::Arg| arg.env(None);
    let matches = Cli::command()
        .mut_args(no_env)
        .mut_subcommand("serve", |serve| serve.mut_args(no_env))
        .try_get_matches_from(
            std::iter::once("b24-journal".to_string()).chain(args.iter().cloned()),
        )
        .map_err(|e| e.to_string())?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    match cli.into_command() {
        Command::Serve(serve) => Settings::resolve(*serve).map_err(|e| e.to_string()),
        other => Err(format!("{args:?} is not `serve`: {other:?}")),
    }
}

/// The service in-process on 127.0.0.1:0 with portals P1, P2, P3 and
/// `READ_TOKEN` (the arguments of `default_args`), plus `extra_args`.
pub async fn spawn_app(data_dir: &Path, extra_args: &[&str]) -> TestApp {
    let mut args = default_args(data_dir);
    args.extend(extra_args.iter().map(|s| s.to_string()));
    spawn_app_with(args).await
}

/// The service in-process with exactly these `serve` arguments.
pub async fn spawn_app_with(args: Vec<String>) -> TestApp {
    try_spawn_app(args).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`spawn_app_with`], but a service that does not come up is an
/// `Err` saying why instead of a panic.
pub async fn try_spawn_app(args: Vec<String>) -> Result<TestApp, String> {
    let settings = settings_from_args(&args)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", settings.listen))?;
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let (stop, stopped) = oneshot::channel::<()>();
    let mut serving = tokio::spawn(server::serve(settings, listener, async {
        // A dropped sender means the same as a sent stop.
        let _ = stopped.await;
    }));
    let http = Client::new(addr.ip().to_string(), addr.port());
    // The journal opens before the accept loop starts: the first answer
    // means the service is up, as the binary's `listening on` line does.
    // The static document changes no state (`/healthz` commits a probe).
    let first = http.client.get(http.url("/openapi.json")).send();
    tokio::select! {
        ended = &mut serving => return Err(format!("b24-journal {args:?} stopped before it served: {}", outcome(ended))),
        answered = first => if let Err(e) = answered {
            let ended = tokio::time::timeout(Duration::from_secs(5), &mut serving).await;
            let why = ended.map_or_else(|_| "still running".to_string(), outcome);
            return Err(format!("b24-journal {args:?} did not answer /openapi.json ({e}); serve: {why}"));
        },
    }
    Ok(TestApp {
        http,
        stop,
        serving,
    })
}

fn outcome(ended: Result<Result<(), RunError>, tokio::task::JoinError>) -> String {
    match ended {
        Ok(Ok(())) => "returned Ok".to_string(),
        Ok(Err(e)) => format!("failed: {e}"),
        Err(e) => format!("panicked or was cancelled: {e}"),
    }
}

impl TestApp {
    /// Graceful shutdown, as on SIGTERM: in-flight requests finish and the
    /// journal is committed and closed. Waits up to 20 s (the binary's
    /// harness waits as long for the exit) and panics unless `serve`
    /// returned `Ok`, as that one asserts exit status 0.
    pub async fn stop(self) {
        let TestApp { stop, serving, .. } = self;
        // The receiver lives as long as `serve` runs; if it is gone, `serve`
        // already ended and the join below says how.
        let _ = stop.send(());
        match tokio::time::timeout(Duration::from_secs(20), serving).await {
            Ok(Ok(Ok(()))) => {}
            Ok(ended) => panic!(
                "the in-process service did not stop cleanly: it {}",
                outcome(ended)
            ),
            Err(_) => panic!("the in-process service did not stop within 20 s"),
        }
    }
}

impl Deref for TestApp {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.http
    }
}
