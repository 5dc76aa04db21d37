//! Logging: one subscriber for the process, writing to stderr as text or
//! JSON lines, whose filter and format a reload can change while it runs.
//!
//! Both the filter and the output layer sit behind `tracing_subscriber`'s
//! `reload` layers; [`LogControl`] is the handle a reload uses. Nothing
//! anywhere logs a request body or a token.

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// The subscriber below the output layer: the registry and the filter.
type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
/// The output layer, text or JSON.
type Output = Box<dyn Layer<Filtered> + Send + Sync>;

/// Changes the running subscriber's filter and format.
pub struct LogControl {
    filter: reload::Handle<EnvFilter, Registry>,
    output: reload::Handle<Output, Filtered>,
    /// The filter and format in force, to report what a reload changed.
    current: Mutex<(String, bool)>,
}

/// Sets up logging to stderr with `filter` (an `EnvFilter` directive,
/// already checked by the settings), as JSON lines if `json`. `None` when a
/// subscriber is already installed (tests that start several services in
/// one process): that one stays, and the reload handle is missing.
pub fn init(filter: &str, json: bool) -> Option<LogControl> {
    // sled logs through the `log` crate. Forward its records at info and
    // above only: its debug/trace records are noise for operators, and some
    // are emitted from thread-local destructors at thread exit, where the
    // tracing dispatcher is already gone and forwarding them aborts the
    // process. A second call keeps the first logger.
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(tracing_log::log::LevelFilter::Info)
        .init();
    let (filter_layer, filter_handle) = reload::Layer::new(env_filter(filter));
    let (output_layer, output_handle) = reload::Layer::new(output(json));
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(output_layer)
        .try_init()
        .ok()?;
    Some(LogControl {
        filter: filter_handle,
        output: output_handle,
        current: Mutex::new((filter.to_owned(), json)),
    })
}

impl LogControl {
    /// Switches to `filter` and `json`; returns what changed, for the log
    /// (empty when nothing did).
    pub fn apply(&self, filter: &str, json: bool) -> Vec<String> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = Vec::new();
        if current.0 != filter {
            match self.filter.reload(env_filter(filter)) {
                Ok(()) => changed.push(format!("log level: {:?} -> {filter:?}", current.0)),
                Err(e) => tracing::error!(error = %e, "cannot change the log level"),
            }
            current.0 = filter.to_owned();
        }
        if current.1 != json {
            match self.output.reload(output(json)) {
                Ok(()) => changed.push(format!(
                    "log format: {} -> {}",
                    format_name(current.1),
                    format_name(json)
                )),
                Err(e) => tracing::error!(error = %e, "cannot change the log format"),
            }
            current.1 = json;
        }
        changed
    }
}

/// `filter` as an `EnvFilter`; the settings checked it, so the fallback to
/// `info` only guards against a caller that did not.
fn env_filter(filter: &str) -> EnvFilter {
    EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The stderr output layer: JSON lines, or text with colours on a terminal.
fn output(json: bool) -> Output {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if json {
        layer.json().boxed()
    } else {
        layer.with_ansi(std::io::stderr().is_terminal()).boxed()
    }
}

/// The format's name in the settings.
fn format_name(json: bool) -> &'static str {
    if json {
        "json"
    } else {
        "text"
    }
}
