//! The offline-event settings: the OAuth application (`[app]`), the
//! secrets key file and the puller (`[offline]`), merged like every other
//! setting (flags over environment over file over defaults).
//!
//! The client secret is never taken from the command line (other users
//! see a process's argv): it comes from `B24J_APP_CLIENT_SECRET`, from a
//! file (`--client-secret-file`, `[app] client_secret_file`) or from the
//! config file (`[app] client_secret`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::cli::ServeArgs;
use crate::offline::config::{
    AppCredentials, OfflineConfig, Policy, DEFAULT_CALL_TIMEOUT_SECS, DEFAULT_CONCURRENCY,
    DEFAULT_OAUTH_SERVER, DEFAULT_POLL_SECS, DEFAULT_RECONCILE_WINDOW_SECS,
};
use crate::types::{MemberId, Secret};

/// Environment variable holding the application's client secret.
pub const CLIENT_SECRET_ENV: &str = "B24J_APP_CLIENT_SECRET";

/// Records asked for per `event.offline.get` (the portal's own default).
const FETCH_BATCH: usize = 50;

/// `[app]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileApp {
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    oauth_server: Option<String>,
}

/// `[offline]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileOffline {
    policy: Option<String>,
    secrets_key_file: Option<PathBuf>,
    poll: Option<u64>,
    reconcile_window: Option<u64>,
    timeout: Option<u64>,
    allow_http_loopback: Option<bool>,
    #[serde(default)]
    portals: BTreeMap<String, String>,
}

/// An offline setting that cannot be used (`settings` turns it into its
/// `Invalid::Invalid`).
#[derive(Debug)]
pub struct Invalid {
    /// The setting.
    pub setting: &'static str,
    /// What is wrong.
    pub why: String,
}

fn invalid(setting: &'static str, why: impl Into<String>) -> Invalid {
    Invalid {
        setting,
        why: why.into(),
    }
}

/// The puller's settings, when pulling is on.
#[derive(Debug, Clone)]
pub struct OfflineSettings {
    /// The puller's configuration.
    pub config: OfflineConfig,
    /// Where the key that seals refresh tokens is.
    pub secrets_key_file: PathBuf,
}

fn policy(setting: &'static str, raw: &str) -> Result<Option<Policy>, Invalid> {
    match raw.trim() {
        "" | "off" => Ok(None),
        other => Policy::parse(other)
            .map(Some)
            .ok_or_else(|| invalid(setting, format!("{other:?}: use off, pull or reconcile"))),
    }
}

/// Resolves the offline settings; `None` when no portal is pulled.
pub(super) fn resolve(
    args: &ServeArgs,
    app: FileApp,
    file: FileOffline,
) -> Result<Option<OfflineSettings>, Invalid> {
    const POLICY: &str = "offline (--offline, B24J_OFFLINE, [offline] policy)";
    const PORTALS: &str = "offline portals (--offline-portal, [offline.portals])";
    let default_policy = match args.offline.clone().or(file.policy) {
        Some(raw) => policy(POLICY, &raw)?,
        None => None,
    };
    let mut portals = HashMap::new();
    let pairs: Vec<(String, String)> = if args.offline_portals.is_empty() {
        file.portals.into_iter().collect()
    } else {
        args.offline_portals
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.split_once('=')
                    .map(|(m, v)| (m.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| invalid(PORTALS, "expected MEMBER_ID=POLICY"))
            })
            .collect::<Result<_, _>>()?
    };
    let mut named = false;
    for (member, raw) in pairs {
        let member = MemberId::parse(&member).map_err(|e| invalid(PORTALS, e.0))?;
        named = true;
        if let Some(p) = policy(PORTALS, &raw)? {
            portals.insert(member.as_str().to_owned(), p);
        }
    }
    if default_policy.is_none() && portals.is_empty() {
        if named {
            tracing::debug!("every portal named in the offline settings is off");
        }
        return Ok(None);
    }
    let client_id = args
        .app_client_id
        .clone()
        .or(app.client_id)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            invalid(
                "app client_id (--app-client-id, B24J_APP_CLIENT_ID, [app] client_id)",
                "offline pulling needs the application's client_id",
            )
        })?;
    let client_secret = client_secret(args, app.client_secret, app.client_secret_file)?;
    let secrets_key_file = args
        .secrets_key_file
        .clone()
        .or(file.secrets_key_file)
        .ok_or_else(|| {
            invalid(
                "secrets_key_file (--secrets-key-file, B24J_SECRETS_KEY_FILE, [offline] secrets_key_file)",
                "offline pulling keeps refresh tokens sealed and needs a key; create one with `b24-journal keygen --to FILE`",
            )
        })?;
    let secs = |setting: &'static str, v: u64, max: u64| {
        if (1..=max).contains(&v) {
            Ok(v)
        } else {
            Err(invalid(setting, format!("must be from 1 to {max} seconds")))
        }
    };
    let poll = secs(
        "offline_poll (--offline-poll)",
        args.offline_poll.or(file.poll).unwrap_or(DEFAULT_POLL_SECS),
        86_400,
    )?;
    let timeout = secs(
        "offline_timeout (--offline-timeout)",
        args.offline_timeout
            .or(file.timeout)
            .unwrap_or(DEFAULT_CALL_TIMEOUT_SECS),
        600,
    )?;
    let reconcile_window = args
        .reconcile_window
        .or(file.reconcile_window)
        .unwrap_or(DEFAULT_RECONCILE_WINDOW_SECS);
    if reconcile_window > 3600 {
        return Err(invalid(
            "reconcile_window (--reconcile-window)",
            "must be at most 3600 seconds",
        ));
    }
    Ok(Some(OfflineSettings {
        config: OfflineConfig {
            app: AppCredentials {
                client_id: client_id.trim().to_owned(),
                client_secret,
                oauth_server: args
                    .oauth_server
                    .clone()
                    .or(app.oauth_server)
                    .unwrap_or_else(|| DEFAULT_OAUTH_SERVER.to_owned()),
            },
            default_policy,
            portals,
            poll: Duration::from_secs(poll),
            reconcile_window,
            call_timeout: Duration::from_secs(timeout),
            concurrency: DEFAULT_CONCURRENCY,
            batch: FETCH_BATCH,
            allow_http_loopback: args.offline_allow_http_loopback
                || file.allow_http_loopback.unwrap_or(false),
        },
        secrets_key_file,
    }))
}

/// The client secret: environment, then a file, then the config file.
fn client_secret(
    args: &ServeArgs,
    in_file: Option<String>,
    secret_file: Option<PathBuf>,
) -> Result<Secret, Invalid> {
    const SETTING: &str =
        "app client_secret (B24J_APP_CLIENT_SECRET, --client-secret-file, [app] client_secret)";
    let from_env = std::env::var(CLIENT_SECRET_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty());
    let from_file = match args.client_secret_file.clone().or(secret_file) {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| invalid(SETTING, format!("cannot read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let raw = from_env.or(from_file).or(in_file).ok_or_else(|| {
        invalid(
            SETTING,
            "offline pulling needs the application's client_secret",
        )
    })?;
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(invalid(SETTING, "is empty"));
    }
    Ok(Secret::new(raw.to_owned()))
}
