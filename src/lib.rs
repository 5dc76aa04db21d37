//! b24-journal: receive, verify, deduplicate and durably journal Bitrix24
//! events, and serve them to dashboards.
//!
//! The modules follow the data path:
//! [`receive`] (HTTP in) → [`decode`] → [`verify`] → [`journal`] (store) →
//! [`query`] (HTTP out). [`server`] wires them together, [`settings`] reads the
//! configuration, [`types`] holds the typed values parsed at the edge, and
//! [`http`] the error type and JSON plumbing shared by the routes.

#![warn(missing_docs)]

pub mod decode;
pub mod http;
pub mod journal;
pub mod query;
pub mod receive;
pub mod server;
pub mod settings;
pub mod types;
pub mod verify;

use std::io::IsTerminal;

pub use settings::{Cli, Settings};

/// Sets up logging to stderr. The level comes from `RUST_LOG` (default
/// `info`). Nothing anywhere logs a request body or a token.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // sled logs through the `log` crate. Forward its records at info and
    // above only: its debug/trace records are noise for operators, and some
    // are emitted from thread-local destructors at thread exit, where the
    // tracing dispatcher is already gone and forwarding them aborts the
    // process. A second call (tests) keeps the first logger and subscriber.
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(tracing_log::log::LevelFilter::Info)
        .init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Why the program failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad settings.
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    /// The server could not run.
    #[error(transparent)]
    Run(#[from] server::RunError),
}

/// Runs the command the CLI asked for.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let settings = Settings::resolve(cli.into_serve_args())?;
    server::run(settings).await?;
    Ok(())
}
