//! Settings: the command line, the environment and the config file, merged
//! into one typed [`Settings`]. Flags beat environment variables, which beat
//! the config file, which beats the built-in defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::journal::RetentionPolicy;
use crate::types::{MemberId, Secret};
use crate::verify::DomainPattern;

/// Default listen address: loopback, so a fresh install exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default sled page cache, in MiB. Small on purpose: sled 0.34's resident
/// memory is several times its cache setting and grows with it. Measured
/// (3M-event fill through the write path; queries on that journal, wrk, 16
/// connections): 16 MiB against 64 MiB took the fill's peak RSS from 294 to
/// 236 MiB and the `entity_id` query server's from 192 to 150 MiB, for 9 %
/// less fill rate and 10–25 % fewer `entity_id` answers/s; latest-50 the
/// same. Then 8 against 16 MiB (fills through the bench's write path,
/// 1,000 portals): peak RSS 124 / 128 against 145 / 144 MiB at 2M events
/// (fill time 104 / 97 against 103 / 96 s), 173 against 186 MiB at 4M
/// (237 against 227 s); on the 10M journal, latest-50 and `entity_id`
/// answers/s, p99 and peak RSS within the run-to-run spread, and ingest at
/// 64 connections the same (21.6k / 23.3k against 21.1k / 23.4k events/s).
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

/// b24-journal: receive, verify, deduplicate and durably journal Bitrix24
/// events, and serve them to dashboards.
#[derive(Debug, Parser)]
#[command(name = "b24-journal", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve` options, also accepted without the subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve(Box<ServeArgs>),
    /// Ask the running service for an online backup: a consistent,
    /// self-contained data directory holding every event acknowledged before
    /// the backup started, written on the service's machine.
    Backup(BackupArgs),
    /// Check a stopped data directory: every tree and index, counts, seq
    /// ranges, format version. Exits non-zero on any problem.
    Verify(DataDirArgs),
    /// Convert a stopped data directory written by an older b24-journal to
    /// this binary's format (in place; the old engine files are kept beside
    /// it until you delete them).
    Migrate(DataDirArgs),
    /// List, add or remove portal tokens kept in a stopped data directory
    /// (as SHA-256 digests).
    Portals(PortalsArgs),
}

/// Options of `backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Absolute path of the directory to write (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Base URL of the running service.
    #[arg(long, env = "B24J_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The service's admin token.
    #[arg(long, env = "B24J_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
}

/// A data directory argument.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// The data directory [default: ./data].
    #[arg(long, env = "B24J_DATA_DIR", value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// Options of `portals`.
#[derive(Debug, Clone, Args)]
pub struct PortalsArgs {
    /// The data directory [default: ./data]; the service must be stopped.
    #[arg(long, env = "B24J_DATA_DIR", value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub action: PortalsAction,
}

/// `portals` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum PortalsAction {
    /// List the portals registered in the data directory.
    List,
    /// Register a portal's application token (stored as a digest). Replaces
    /// an existing registration, so it also resets a portal after a refused
    /// takeover or a token change.
    Add {
        /// The portal's member_id.
        member_id: String,
        /// Its domain.
        #[arg(long)]
        domain: String,
        /// Read the application token from this environment variable
        /// instead of standard input.
        #[arg(long, value_name = "VAR")]
        token_env: Option<String>,
    },
    /// Remove a portal's registration (its journal stays).
    Remove {
        /// The portal's member_id.
        member_id: String,
    },
}

impl Cli {
    /// The command, `serve` when none was given.
    pub fn into_command(self) -> Command {
        self.command
            .unwrap_or_else(|| Command::Serve(Box::new(self.serve)))
    }
}

/// Options of `serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]. A non-loopback address
    /// requires a read token.
    #[arg(long, env = "B24J_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// Directory holding the journal [default: ./data].
    #[arg(long, env = "B24J_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// TOML config file with the same settings (`listen`, `data_dir`,
    /// `read_token`, `admin_token`, `cache_mb`, `snapshot_every_mb`, `queue`,
    /// `body_timeout`,
    /// `install_domains`, `max_streams`, `retain_days`, `retain_per_portal`,
    /// `retain_every`, `log_format`, and a `[portals]` table of
    /// member_id = "application_token"). See config.example.toml.
    #[arg(long, env = "B24J_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// A trusted portal and its application token; repeatable. The env var
    /// takes a comma-separated list: B24J_PORTALS="m1=t1,m2=t2".
    #[arg(
        long = "portal",
        env = "B24J_PORTALS",
        value_name = "MEMBER_ID=TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub portals: Vec<String>,

    /// Bearer token required by the read API (/v1/portals…). Without one the
    /// read API answers 401.
    #[arg(
        long,
        env = "B24J_READ_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub read_token: Option<String>,

    /// sled page cache size in MiB [default: 8].
    #[arg(long, env = "B24J_CACHE_MB", value_name = "MIB")]
    pub cache_mb: Option<u64>,

    /// MiB written to the redo log between reopens of the storage engine,
    /// which make sled write a fresh snapshot: a start after a crash scans
    /// at most about this much of sled's log; each reopen pauses reads and
    /// writes for about one restart's length [default: 512].
    #[arg(long, env = "B24J_SNAPSHOT_EVERY_MB", value_name = "MIB")]
    pub snapshot_every_mb: Option<u64>,

    /// Appends that may wait for the writer before ingest answers 503
    /// [default: 8192].
    #[arg(long, env = "B24J_QUEUE", value_name = "N")]
    pub queue: Option<usize>,

    /// Seconds an ingest request body has to arrive in, once the headers are
    /// in; a slower body is answered 408 and nothing is stored [default: 30].
    #[arg(long, env = "B24J_BODY_TIMEOUT", value_name = "SECS")]
    pub body_timeout: Option<u64>,

    /// Learn portals from ONAPPINSTALL events of these domains
    /// (comma-separated; `*.bitrix24.com` matches sub-domains). Off when
    /// empty [default: off].
    #[arg(
        long,
        env = "B24J_INSTALL_DOMAINS",
        value_name = "PATTERNS",
        value_delimiter = ','
    )]
    pub install_domains: Vec<String>,

    /// Most concurrent live streams (SSE and long-polls); more answer 503
    /// [default: 256].
    #[arg(long, env = "B24J_MAX_STREAMS", value_name = "N")]
    pub max_streams: Option<usize>,

    /// Bearer token for the admin API (/v1/admin/…: online backup, portal
    /// erasure), separate from the read token. Without one the admin API
    /// answers 401.
    #[arg(
        long,
        env = "B24J_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Delete events older than this many days (by receipt time) [default: off].
    #[arg(long, env = "B24J_RETAIN_DAYS", value_name = "DAYS")]
    pub retain_days: Option<u64>,

    /// Keep at most this many events per portal, deleting the oldest
    /// [default: off].
    #[arg(long, env = "B24J_RETAIN_PER_PORTAL", value_name = "N")]
    pub retain_per_portal: Option<u64>,

    /// Seconds between retention passes [default: 60].
    #[arg(long, env = "B24J_RETAIN_EVERY", value_name = "SECS")]
    pub retain_every: Option<u64>,

    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "B24J_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
}

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
    #[serde(default)]
    portals: BTreeMap<String, String>,
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
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file could not be read or parsed.
    #[error("config file {path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
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

impl Settings {
    /// Merges flags/env (already merged by clap) over the config file over
    /// defaults, and checks the result.
    pub fn resolve(args: ServeArgs) -> Result<Settings, SettingsError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let listen_raw = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_raw.parse().map_err(|e| SettingsError::Invalid {
            setting: "listen",
            why: format!("{listen_raw:?}: {e} (expected IP:PORT)"),
        })?;
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
        let read_token = match args.read_token.or(file.read_token) {
            Some(t) if t.is_empty() => {
                return Err(SettingsError::Invalid {
                    setting: "read token",
                    why: "must not be empty".into(),
                })
            }
            Some(t) => Some(Secret::new(t)),
            None => None,
        };
        if read_token.is_none() && !listen.ip().is_loopback() {
            return Err(SettingsError::ReadTokenRequired(listen));
        }
        let cache_mb = args.cache_mb.or(file.cache_mb).unwrap_or(DEFAULT_CACHE_MB);
        if cache_mb == 0 {
            return Err(SettingsError::Invalid {
                setting: "cache_mb",
                why: "must be at least 1".into(),
            });
        }
        let snapshot_every_mb = args
            .snapshot_every_mb
            .or(file.snapshot_every_mb)
            .unwrap_or(DEFAULT_SNAPSHOT_EVERY_MB);
        if snapshot_every_mb == 0 {
            return Err(SettingsError::Invalid {
                setting: "snapshot_every_mb",
                why: "must be at least 1".into(),
            });
        }
        let queue = args.queue.or(file.queue).unwrap_or(DEFAULT_QUEUE);
        if queue == 0 {
            return Err(SettingsError::Invalid {
                setting: "queue",
                why: "must be at least 1".into(),
            });
        }
        let body_timeout_secs = args
            .body_timeout
            .or(file.body_timeout)
            .unwrap_or(DEFAULT_BODY_TIMEOUT_SECS);
        if !(1..=3600).contains(&body_timeout_secs) {
            return Err(SettingsError::Invalid {
                setting: "body_timeout",
                why: "must be from 1 to 3600 seconds".into(),
            });
        }
        let body_timeout = Duration::from_secs(body_timeout_secs);
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
            .map_err(|why| SettingsError::Invalid {
                setting: "install_domains",
                why,
            })?;
        let max_streams = args
            .max_streams
            .or(file.max_streams)
            .unwrap_or(DEFAULT_MAX_STREAMS);
        let admin_token = match args.admin_token.or(file.admin_token) {
            Some(t) if t.is_empty() => {
                return Err(SettingsError::Invalid {
                    setting: "admin token",
                    why: "must not be empty".into(),
                })
            }
            Some(t) => Some(Secret::new(t)),
            None => None,
        };
        let retain_days = args.retain_days.or(file.retain_days);
        let retain_per_portal = args.retain_per_portal.or(file.retain_per_portal);
        if retain_days == Some(0) || retain_per_portal == Some(0) {
            return Err(SettingsError::Invalid {
                setting: "retention",
                why: "retain_days and retain_per_portal must be at least 1 (omit them to keep everything)".into(),
            });
        }
        let log_json = match args
            .log_format
            .or(file.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => false,
            "json" => true,
            other => {
                return Err(SettingsError::Invalid {
                    setting: "log_format",
                    why: format!("{other:?}: use `text` or `json`"),
                })
            }
        };
        Ok(Settings {
            listen,
            data_dir,
            portals,
            read_token,
            cache_bytes: cache_mb.saturating_mul(1024 * 1024),
            snapshot_every_bytes: snapshot_every_mb.saturating_mul(1024 * 1024),
            queue,
            body_timeout,
            install_domains,
            max_streams,
            admin_token,
            retention: RetentionPolicy {
                max_age: retain_days.map(|d| Duration::from_secs(d.saturating_mul(86_400))),
                per_portal: retain_per_portal,
                every: Duration::from_secs(
                    args.retain_every.or(file.retain_every).unwrap_or(60).max(1),
                ),
            },
            log_json,
        })
    }
}

fn read_file(path: &Path) -> Result<FileSettings, SettingsError> {
    let err = |why: String| SettingsError::File {
        path: path.to_owned(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    toml::from_str(&text).map_err(|e| err(e.to_string()))
}

/// Parses `MEMBER_ID=TOKEN`. The error never repeats the token.
fn parse_portal(raw: &str) -> Result<(MemberId, Secret), SettingsError> {
    let (member, token) = raw.trim().split_once('=').ok_or(SettingsError::Invalid {
        setting: "portal",
        why: "expected MEMBER_ID=TOKEN".into(),
    })?;
    parse_portal_parts(member, token)
}

fn parse_portal_parts(member: &str, token: &str) -> Result<(MemberId, Secret), SettingsError> {
    let member = MemberId::parse(member.trim()).map_err(|e| SettingsError::Invalid {
        setting: "portal",
        why: format!("member id {}", e.0),
    })?;
    if token.trim().is_empty() {
        return Err(SettingsError::Invalid {
            setting: "portal",
            why: format!("empty token for {member}"),
        });
    }
    Ok((member, Secret::new(token.trim().to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\ndata_dir = \"/tmp/x\"\n[portals]\nm1 = \"t1\"\n",
        )
        .unwrap();
        let s = Settings::resolve(ServeArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:7000".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.listen.port(), 7000);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.portals[0].0.as_str(), "m1");
        assert_eq!(s.cache_bytes, 8 * 1024 * 1024);
        assert_eq!(s.snapshot_every_bytes, 512 * 1024 * 1024);
        assert_eq!(s.body_timeout, Duration::from_secs(30));

        let s = Settings::resolve(ServeArgs {
            config: Some(path),
            portals: vec!["m2=t2".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.portals.len(), 1);
        assert_eq!(s.portals[0].0.as_str(), "m2");
    }

    #[test]
    fn body_timeout_is_bounded() {
        for bad in [0, 3601] {
            let err = Settings::resolve(ServeArgs {
                body_timeout: Some(bad),
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.to_string().contains("body_timeout"), "{err}");
        }
    }

    #[test]
    fn snapshot_every_mb_is_at_least_one() {
        let err = Settings::resolve(ServeArgs {
            snapshot_every_mb: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("snapshot_every_mb"), "{err}");
        let s = Settings::resolve(ServeArgs {
            snapshot_every_mb: Some(3),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.snapshot_every_bytes, 3 * 1024 * 1024);
    }

    #[test]
    fn refuses_public_listen_without_read_token() {
        let err = Settings::resolve(ServeArgs {
            listen: Some("0.0.0.0:8080".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, SettingsError::ReadTokenRequired(_)));
    }

    #[test]
    fn portal_errors_do_not_echo_tokens() {
        let err = parse_portal("bad id=secretvalue").unwrap_err();
        assert!(!err.to_string().contains("secretvalue"));
        assert!(parse_portal("novalue").is_err());
        assert!(parse_portal("m=").is_err());
    }
}
