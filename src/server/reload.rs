//! Reload on SIGHUP (`systemctl reload`): resolve the settings again (the
//! config file is re-read; flags and variables stay as the process got
//! them), and swap what can change while the service runs into
//! [`App::live`] in one step: trusted portals and their tokens, the read
//! and admin tokens, the scoped read tokens, CORS origins, install
//! domains, retention, log level and format.
//!
//! A configuration that does not parse or validate is refused with its
//! reason, and the running one stays. Settings that only a restart can
//! change (listen address, data directory, cache, queue, …) are reported
//! as needing one and left as they are. Tokens are never logged, only
//! whether they changed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::signal::unix::Signal;
use tokio::sync::Notify;

use super::listener::Origin;
use super::notify;
use crate::access::ReadTokens;
use crate::app::{App, Live};
use crate::logging::LogControl;
use crate::settings::{check_exposure, Settings, SettingsSource};
use crate::types::TokenDigest;
use crate::verify::{DomainPattern, Verifier};

/// What a reload needs besides the signal.
pub struct Reloader {
    /// Where the settings come from.
    pub source: SettingsSource,
    /// The running subscriber's filter and format, when this process
    /// installed it.
    pub logs: Option<LogControl>,
}

/// The live part of `settings`.
pub fn live(settings: &Settings) -> Live {
    Live {
        verifier: Verifier::new(settings.portals.clone(), settings.install_domains.clone()),
        read: ReadTokens {
            all: settings.read_token.as_ref().map(|t| t.digest()),
            scoped: settings.read_tokens.clone(),
        },
        cors_origins: settings.cors_origins.clone().into(),
        admin_token: settings.admin_token.as_ref().map(|t| t.digest()),
        retention: settings.retention,
    }
}

/// Where the running service stands, as a reload compares against it.
pub struct Running {
    /// The settings in force (restart-only ones as the process started).
    pub settings: Settings,
    /// The address actually listened on.
    pub addr: SocketAddr,
    /// Where the socket came from.
    pub origin: Origin,
    /// Woken after a reload, so that retention picks up a new policy now.
    pub retention: Arc<Notify>,
}

/// Reloads on every SIGHUP until the task is aborted.
pub async fn reload_on_hangup(
    mut hangup: Signal,
    reloader: Reloader,
    app: Arc<App>,
    mut running: Running,
) {
    while hangup.recv().await.is_some() {
        notify::reloading();
        reload(&reloader, &app, &mut running);
        notify::ready();
    }
}

/// One reload.
fn reload(reloader: &Reloader, app: &App, running: &mut Running) {
    let file = reloader
        .source
        .config_file()
        .map_or_else(|| "no config file".to_owned(), |p| p.display().to_string());
    tracing::info!(config = %file, "SIGHUP received: reloading the configuration");
    let new = match reloader.source.resolve() {
        Ok(new) => new,
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays: {e}");
            return;
        }
    };
    if let Err(e) = check_exposure(running.addr, &new) {
        tracing::error!("reload refused, the running configuration stays: {e}");
        return;
    }
    let old = &running.settings;
    let mut changes = live_changes(old, &new);
    if let Some(logs) = &reloader.logs {
        changes.extend(logs.apply(&new.log_filter, new.log_json));
    }
    let restart = restart_changes(old, &new, running.origin);
    app.live.store(Arc::new(live(&new)));
    running.retention.notify_one();
    for change in &changes {
        tracing::info!("reload: {change}");
    }
    for change in &restart {
        tracing::warn!("reload: {change} needs a restart; the running value stays");
    }
    tracing::info!(
        changed = changes.len(),
        needs_restart = restart.len(),
        "configuration reloaded"
    );
    // The restart-only settings stay as they run, so that the next reload
    // reports them again.
    running.settings = Settings {
        portals: new.portals,
        read_token: new.read_token,
        read_tokens: new.read_tokens,
        cors_origins: new.cors_origins,
        admin_token: new.admin_token,
        install_domains: new.install_domains,
        retention: new.retention,
        log_filter: new.log_filter,
        log_json: new.log_json,
        ..running.settings.clone()
    };
}

/// What changed among the live settings, without a token.
fn live_changes(old: &Settings, new: &Settings) -> Vec<String> {
    let mut changes = Vec::new();
    let digests = |s: &Settings| -> BTreeMap<String, TokenDigest> {
        s.portals
            .iter()
            .map(|(m, t)| (m.as_str().to_owned(), t.digest()))
            .collect()
    };
    let (before, after) = (digests(old), digests(new));
    let added: Vec<&str> = after
        .keys()
        .filter(|m| !before.contains_key(*m))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = before
        .keys()
        .filter(|m| !after.contains_key(*m))
        .map(String::as_str)
        .collect();
    let rotated: Vec<&str> = after
        .iter()
        .filter(|(m, t)| before.get(*m).is_some_and(|b| b != *t))
        .map(|(m, _)| m.as_str())
        .collect();
    for (what, list) in [
        ("portals added", added),
        ("portals removed", removed),
        ("portal tokens changed", rotated),
    ] {
        if !list.is_empty() {
            changes.push(format!("{what}: {}", list.join(", ")));
        }
    }
    let token_change =
        |name: &str, old: Option<TokenDigest>, new: Option<TokenDigest>| match (old, new) {
            (None, Some(_)) => Some(format!("{name} set")),
            (Some(_), None) => Some(format!("{name} removed")),
            (Some(a), Some(b)) if a != b => Some(format!("{name} changed")),
            _ => None,
        };
    let digest = |t: &Option<crate::types::Secret>| t.as_ref().map(|t| t.digest());
    changes.extend(token_change(
        "read token",
        digest(&old.read_token),
        digest(&new.read_token),
    ));
    changes.extend(token_change(
        "admin token",
        digest(&old.admin_token),
        digest(&new.admin_token),
    ));
    changes.extend(scoped_token_changes(old, new));
    if old.cors_origins != new.cors_origins {
        changes.push(format!(
            "CORS origins: [{}] -> [{}]",
            old.cors_origins.join(", "),
            new.cors_origins.join(", ")
        ));
    }
    if old.install_domains != new.install_domains {
        changes.push(format!(
            "install domains: [{}] -> [{}]",
            patterns(&old.install_domains),
            patterns(&new.install_domains)
        ));
    }
    if old.retention != new.retention {
        changes.push(format!(
            "retention: {:?} -> {:?}",
            old.retention, new.retention
        ));
    }
    changes
}

/// Scoped read tokens added, removed or changed, by name.
fn scoped_token_changes(old: &Settings, new: &Settings) -> Vec<String> {
    let find = |s: &Settings, name: &str| s.read_tokens.iter().find(|t| t.name == name).cloned();
    let mut changes = Vec::new();
    for t in &new.read_tokens {
        match find(old, &t.name) {
            None => changes.push(format!("read token {:?} added", t.name)),
            Some(o) if o != *t => changes.push(format!("read token {:?} changed", t.name)),
            _ => {}
        }
    }
    for t in &old.read_tokens {
        if find(new, &t.name).is_none() {
            changes.push(format!("read token {:?} removed", t.name));
        }
    }
    changes
}

/// The settings that changed but only take effect on a restart.
fn restart_changes(old: &Settings, new: &Settings, origin: Origin) -> Vec<String> {
    let mut changes = Vec::new();
    let mut compare = |name: &str, a: String, b: String| {
        if a != b {
            changes.push(format!("{name} {a} -> {b}"));
        }
    };
    if origin == Origin::Bound {
        compare("listen", old.listen.to_string(), new.listen.to_string());
    }
    compare(
        "data_dir",
        old.data_dir.display().to_string(),
        new.data_dir.display().to_string(),
    );
    compare(
        "cache_mb",
        (old.cache_bytes >> 20).to_string(),
        (new.cache_bytes >> 20).to_string(),
    );
    compare(
        "snapshot_every_mb",
        (old.snapshot_every_bytes >> 20).to_string(),
        (new.snapshot_every_bytes >> 20).to_string(),
    );
    compare("queue", old.queue.to_string(), new.queue.to_string());
    compare(
        "body_timeout",
        old.body_timeout.as_secs().to_string(),
        new.body_timeout.as_secs().to_string(),
    );
    compare("console", old.console.to_string(), new.console.to_string());
    compare(
        "max_streams",
        old.max_streams.to_string(),
        new.max_streams.to_string(),
    );
    changes
}

/// Install-domain patterns as written in the settings.
fn patterns(list: &[DomainPattern]) -> String {
    list.iter()
        .map(|p| match p {
            DomainPattern::Exact(d) => d.clone(),
            DomainPattern::Suffix(s) => format!("*{s}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
