//! Settings: the command line, the environment and the config file, merged
//! into one typed [`Settings`]. Flags beat environment variables, which beat
//! the config file, which beats the built-in defaults.
//!
//! clap already merges flags over the environment into [`ServeArgs`]; this
//! module lays them over the file and the defaults and checks the result.
//! It is the outermost layer: only `commands` and `server` depend on it.

use crate::cluster::{ClusterConfig, ClusterFile};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

mod offline;

pub use offline::{OfflineSettings, CLIENT_SECRET_ENV};

use crate::access::ScopedToken;
use crate::cli::{ServeArgs, DEFAULT_DATA_DIR};
use crate::journal::RetentionPolicy;
use crate::token_policy;
use crate::types::{MemberId, Secret};
use crate::verify::DomainPattern;

pub mod dashboards;

/// Default listen address: loopback, so a fresh install exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default sled page cache, in MiB. Small on purpose: sled 0.34's resident
/// memory is several times its cache setting and grows with it, while
/// queries and ingest gain little from a larger cache.
pub const DEFAULT_CACHE_MB: u64 = 8;
/// Default redo-log volume between engine reopens, in MiB (why: see
/// [`SNAPSHOT_AFTER_LOGGED`](crate::journal::store::SNAPSHOT_AFTER_LOGGED)).
pub const DEFAULT_SNAPSHOT_EVERY_MB: u64 =
    crate::journal::store::SNAPSHOT_AFTER_LOGGED / (1024 * 1024);
/// Default number of appends that may wait for the writer.
pub const DEFAULT_QUEUE: usize = 8192;
/// Default limit of concurrent live streams (SSE and long-polls).
pub const DEFAULT_MAX_STREAMS: usize = 256;
/// Default seconds an ingest request body has to arrive in, counted from
/// the moment the handler starts reading it (the headers have their own
/// limit, `server::HEADER_TIMEOUT`). A real event is one small packet; the
/// bound keeps a client that trickles a body from holding a connection.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
/// Default seconds between retention passes.
pub const DEFAULT_RETAIN_EVERY_SECS: u64 = 60;
/// Default log filter when neither the setting nor `RUST_LOG` gives one.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The config file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    read_token: Option<String>,
    cache_mb: Option<u64>,
    snapshot_every_mb: Option<u64>,
    queue: Option<usize>,
    body_timeout: Option<u64>,
    #[serde(default)]
    install_domains: Vec<String>,
    max_streams: Option<usize>,
    admin_token: Option<String>,
    retain_days: Option<u64>,
    retain_per_portal: Option<u64>,
    retain_every: Option<u64>,
    log_format: Option<String>,
    log_level: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    backup_dir: Option<PathBuf>,
    #[serde(default)]
    cors_origins: Vec<String>,
    console: Option<bool>,
    #[serde(default)]
    read_tokens: Vec<dashboards::FileReadToken>,
    #[serde(default)]
    portals: BTreeMap<String, String>,
    cluster: Option<ClusterFile>,
    #[serde(default)]
    app: offline::FileApp,
    #[serde(default)]
    offline: offline::FileOffline,
}

/// Settings, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where the journal lives.
    pub data_dir: PathBuf,
    /// Trusted portals and their tokens.
    pub portals: Vec<(MemberId, Secret)>,
    /// The read API's bearer token.
    pub read_token: Option<Secret>,
    /// sled page cache in bytes.
    pub cache_bytes: u64,
    /// Redo-log bytes between engine reopens (fresh sled snapshots).
    pub snapshot_every_bytes: u64,
    /// Writer queue capacity.
    pub queue: usize,
    /// Time an ingest request body has to arrive in.
    pub body_timeout: Duration,
    /// Domains whose ONAPPINSTALL registers a portal (empty: off).
    pub install_domains: Vec<DomainPattern>,
    /// Most concurrent live streams.
    pub max_streams: usize,
    /// The admin API's bearer token.
    pub admin_token: Option<Secret>,
    /// Retention policy.
    pub retention: RetentionPolicy,
    /// Log as JSON lines instead of text.
    pub log_json: bool,
    /// Peers whose `X-Forwarded-For` names the client in the logs.
    pub trusted_proxies: Vec<IpNet>,
    /// The directory online backups are written into (off when `None`).
    pub backup_dir: Option<PathBuf>,
    /// What was accepted but should not be (a public sample token on a
    /// loopback listener), for the log once logging is set up.
    pub warnings: Vec<String>,
    /// The log filter (`info`, `debug`, `b24_journal=trace`, …).
    pub log_filter: String,
    /// Cluster mode (`None`: embedded, the default).
    pub cluster: Option<ClusterConfig>,
    /// Offline-event pulling (off when `None`). Read at start only: a
    /// reload does not change it.
    pub offline: Option<OfflineSettings>,
    /// Named read tokens limited to some portals (`[[read_tokens]]`).
    pub read_tokens: Vec<ScopedToken>,
    /// Origins whose pages may call the read API (CORS); empty: none.
    pub cors_origins: Vec<String>,
    /// Whether `/console` is served.
    pub console: bool,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file could not be read or parsed.
    #[error("config file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: FileError,
    },
    /// A value is malformed.
    #[error("invalid {setting}: {why}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Listening beyond loopback without a read token.
    #[error("refusing to listen on {0} without a read token: the read API would be reachable from the network; set --read-token (or B24J_READ_TOKEN), or listen on 127.0.0.1")]
    ReadTokenRequired(SocketAddr),
}

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be read.
    #[error(transparent)]
    Read(#[from] std::io::Error),
    /// It is not valid TOML of the expected shape. Only the position and
    /// the reason are kept: `toml`'s own message quotes the offending line,
    /// which may hold a token, and this one is logged.
    #[error("line {line}, column {column}: {reason}")]
    Parse {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong there.
        reason: String,
    },
}

impl FileError {
    /// The position and reason of `error` in `text`.
    fn parse(text: &str, error: &toml::de::Error) -> FileError {
        let at = error.span().map_or(0, |s| s.start.min(text.len()));
        let before = &text[..text.floor_char_boundary(at)];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        FileError::Parse {
            line,
            column,
            reason: error.message().replace('\n', "; "),
        }
    }
}

impl Settings {
    /// Merges flags/env (already merged by clap) over the config file over
    /// defaults, and checks the result.
    pub fn resolve(args: ServeArgs) -> Result<Settings, SettingsError> {
        let mut file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let cluster =
            ClusterConfig::resolve(&args.cluster, file.cluster.as_ref()).map_err(|e| {
                SettingsError::Invalid {
                    setting: e.setting,
                    why: e.why,
                }
            })?;
        let offline = offline::resolve(
            &args,
            std::mem::take(&mut file.app),
            std::mem::take(&mut file.offline),
        )
        .map_err(|e| SettingsError::Invalid {
            setting: e.setting,
            why: e.why,
        })?;
        let listen_raw = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_raw
            .parse()
            .map_err(|e| invalid("listen", format!("{listen_raw:?}: {e} (expected IP:PORT)")))?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let portals = if args.portals.is_empty() {
            file.portals
                .into_iter()
                .map(|(m, t)| parse_portal_parts(&m, &t))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            args.portals
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| parse_portal(p))
                .collect::<Result<Vec<_>, _>>()?
        };
        let read_token = token(
            "read_token (--read-token, B24J_READ_TOKEN)",
            args.read_token.or(file.read_token),
        )?;
        let mut tokens = TokenCheck::new(listen);
        let read_tokens = dashboards::read_tokens(file.read_tokens, &mut tokens)?;
        check_read_token(listen, read_token.is_some() || !read_tokens.is_empty())?;
        let cors_origins = dashboards::cors_origins(if args.cors_origins.is_empty() {
            file.cors_origins
        } else {
            args.cors_origins
        })?;
        let console = !args.no_console && file.console.unwrap_or(true);
        for (member, token) in &portals {
            tokens.check(
                "portals (--portal, B24J_PORTALS, [portals])",
                &format!("the application token of {member}"),
                token,
            )?;
        }
        if let Some(t) = &read_token {
            tokens.check(
                "read_token (--read-token, B24J_READ_TOKEN)",
                "the read token",
                t,
            )?;
        }
        let cache_mb = at_least_one(
            "cache_mb",
            args.cache_mb.or(file.cache_mb).unwrap_or(DEFAULT_CACHE_MB),
        )?;
        let snapshot_every_mb = at_least_one(
            "snapshot_every_mb",
            args.snapshot_every_mb
                .or(file.snapshot_every_mb)
                .unwrap_or(DEFAULT_SNAPSHOT_EVERY_MB),
        )?;
        let queue = at_least_one("queue", args.queue.or(file.queue).unwrap_or(DEFAULT_QUEUE))?;
        let body_timeout_secs = args
            .body_timeout
            .or(file.body_timeout)
            .unwrap_or(DEFAULT_BODY_TIMEOUT_SECS);
        if !(1..=3600).contains(&body_timeout_secs) {
            return Err(invalid("body_timeout", "must be from 1 to 3600 seconds"));
        }
        let install_raw = if args.install_domains.is_empty() {
            file.install_domains
        } else {
            args.install_domains
        };
        let install_domains = install_raw
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| DomainPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| invalid("install_domains", why))?;
        let max_streams = args
            .max_streams
            .or(file.max_streams)
            .unwrap_or(DEFAULT_MAX_STREAMS);
        let admin_token = token(
            "admin_token (--admin-token, B24J_ADMIN_TOKEN)",
            args.admin_token.or(file.admin_token),
        )?;
        if let Some(t) = &admin_token {
            tokens.check(
                "admin_token (--admin-token, B24J_ADMIN_TOKEN)",
                "the admin token",
                t,
            )?;
        }
        let retain_days = args.retain_days.or(file.retain_days);
        let retain_per_portal = args.retain_per_portal.or(file.retain_per_portal);
        if retain_days == Some(0) || retain_per_portal == Some(0) {
            return Err(invalid(
                "retention",
                "retain_days and retain_per_portal must be at least 1 (omit them to keep everything)",
            ));
        }
        let log_json = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(invalid(
                    "log_format",
                    format!("{other:?}: use `text` or `json`"),
                ))
            }
        };
        let proxies_raw = if args.trusted_proxies.is_empty() {
            file.trusted_proxies
        } else {
            args.trusted_proxies
        };
        let trusted_proxies = proxies_raw
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| parse_net(p.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let backup_dir = args.backup_dir.or(file.backup_dir);
        if backup_dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(invalid(
                "backup_dir (--backup-dir, B24J_BACKUP_DIR)",
                "must be an absolute path",
            ));
        }
        // `RUST_LOG` is the fallback, not the environment layer of this
        // setting: a unit that sets it would otherwise pin the level, and a
        // reload could never change it.
        let log_filter = args
            .log_level
            .or(file.log_level)
            .or_else(|| {
                std::env::var("RUST_LOG")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
            })
            .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            return Err(invalid("log_level", format!("{log_filter:?}: {e}")));
        }
        Ok(Settings {
            listen,
            data_dir,
            portals,
            read_token,
            cache_bytes: cache_mb.saturating_mul(1024 * 1024),
            snapshot_every_bytes: snapshot_every_mb.saturating_mul(1024 * 1024),
            queue,
            body_timeout: Duration::from_secs(body_timeout_secs),
            install_domains,
            max_streams,
            admin_token,
            retention: RetentionPolicy {
                max_age: retain_days.map(|d| Duration::from_secs(d.saturating_mul(86_400))),
                per_portal: retain_per_portal,
                every: Duration::from_secs(
                    args.retain_every
                        .or(file.retain_every)
                        .unwrap_or(DEFAULT_RETAIN_EVERY_SECS)
                        .max(1),
                ),
            },
            log_json,
            trusted_proxies,
            backup_dir,
            warnings: tokens.warnings,
            log_filter,
            cluster,
            offline,
            read_tokens,
            cors_origins,
            console,
        })
    }
}

/// Checks configured tokens against the [`token_policy`], collecting the
/// warnings for the ones a loopback listener may still use.
struct TokenCheck {
    listen: SocketAddr,
    warnings: Vec<String>,
}

impl TokenCheck {
    fn new(listen: SocketAddr) -> TokenCheck {
        TokenCheck {
            listen,
            warnings: Vec::new(),
        }
    }

    /// Refuses `token` (described as `what`) if it is weak, unless the
    /// service listens on loopback and the weakness is one a trial run
    /// may have; then it is a warning. Never repeats the token.
    fn check(
        &mut self,
        setting: &'static str,
        what: &str,
        token: &Secret,
    ) -> Result<(), SettingsError> {
        let Some(weakness) = token_policy::weakness(token.expose()) else {
            return Ok(());
        };
        let loopback = self.listen.ip().is_loopback();
        if loopback && weakness.allowed_on_loopback() {
            self.warnings.push(format!(
                "{what} {}; accepted only because the service listens on loopback ({}), never elsewhere",
                weakness.describe(),
                self.listen
            ));
            return Ok(());
        }
        let mut why = format!("{what} {}", weakness.describe());
        if weakness.allowed_on_loopback() {
            why.push_str(&format!(
                " (accepted on a loopback listen address only, not on {})",
                self.listen
            ));
        }
        Err(invalid(setting, why))
    }
}

/// A trusted proxy: a CIDR network (`10.0.0.0/8`) or one address.
fn parse_net(raw: &str) -> Result<IpNet, SettingsError> {
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            invalid(
                "trusted_proxies (--trusted-proxies, B24J_TRUSTED_PROXIES)",
                format!(
                    "{raw:?} is neither an IP address nor a CIDR network (10.0.0.0/8, ::1/128)"
                ),
            )
        })
}

/// Refuses to serve the read API beyond loopback without a read token. At
/// start-up and on every reload, against the address actually listened on
/// (an inherited socket's, not `listen`).
fn check_read_token(addr: SocketAddr, has_read_token: bool) -> Result<(), SettingsError> {
    if !has_read_token && !addr.ip().is_loopback() {
        return Err(SettingsError::ReadTokenRequired(addr));
    }
    Ok(())
}

/// Checks `settings` against the address the service actually listens on,
/// which differs from `listen` when a supervisor passed the socket: beyond
/// loopback a read token is required and no token that only a loopback
/// trial may use (a public sample) is accepted.
pub fn check_exposure(addr: SocketAddr, settings: &Settings) -> Result<(), SettingsError> {
    check_read_token(
        addr,
        settings.read_token.is_some() || !settings.read_tokens.is_empty(),
    )?;
    if !addr.ip().is_loopback() {
        if let Some(warning) = settings.warnings.first() {
            return Err(invalid(
                "tokens (the socket the service was given is not on loopback)",
                format!("{warning}; the socket listens on {addr}"),
            ));
        }
    }
    Ok(())
}

/// Where the settings come from, kept for a reload: the `serve` arguments
/// as clap merged them at start (flags over `B24J_*` variables; a process's
/// environment is fixed when it starts), laid again over the config file,
/// which is read anew on every [`SettingsSource::resolve`].
#[derive(Debug, Clone)]
pub struct SettingsSource(ServeArgs);

impl SettingsSource {
    /// Keeps `args` for later resolutions.
    pub fn new(args: ServeArgs) -> Self {
        SettingsSource(args)
    }

    /// Resolves the settings now, re-reading the config file.
    pub fn resolve(&self) -> Result<Settings, SettingsError> {
        Settings::resolve(self.0.clone())
    }

    /// The config file, if there is one.
    pub fn config_file(&self) -> Option<&Path> {
        self.0.config.as_deref()
    }
}

/// A [`SettingsError::Invalid`] for `setting`.
fn invalid(setting: &'static str, why: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting,
        why: why.into(),
    }
}

/// `value`, unless it is 0.
fn at_least_one<T: PartialEq + From<u8>>(
    setting: &'static str,
    value: T,
) -> Result<T, SettingsError> {
    if value == T::from(0) {
        return Err(invalid(setting, "must be at least 1"));
    }
    Ok(value)
}

/// A bearer token, if one is set; an empty one is refused rather than taken
/// as "no token".
fn token(setting: &'static str, raw: Option<String>) -> Result<Option<Secret>, SettingsError> {
    match raw {
        Some(t) if t.is_empty() => Err(invalid(setting, "must not be empty")),
        Some(t) => Ok(Some(Secret::new(t))),
        None => Ok(None),
    }
}

/// Reads and parses the TOML config file.
fn read_file(path: &Path) -> Result<FileSettings, SettingsError> {
    let err = |source: FileError| SettingsError::File {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.into()))?;
    toml::from_str(&text).map_err(|e| err(FileError::parse(&text, &e)))
}

/// Parses `MEMBER_ID=TOKEN`. The error never repeats the token.
fn parse_portal(raw: &str) -> Result<(MemberId, Secret), SettingsError> {
    let (member, token) = raw
        .trim()
        .split_once('=')
        .ok_or_else(|| invalid("portal", "expected MEMBER_ID=TOKEN"))?;
    parse_portal_parts(member, token)
}

/// Checks one trusted portal's member id and token.
fn parse_portal_parts(member: &str, token: &str) -> Result<(MemberId, Secret), SettingsError> {
    let member = MemberId::parse(member.trim())
        .map_err(|e| invalid("portal", format!("member id {}", e.0)))?;
    if token.trim().is_empty() {
        return Err(invalid("portal", format!("empty token for {member}")));
    }
    Ok((member, Secret::new(token.trim().to_owned())))
}

#[cfg(test)]
mod tests;
