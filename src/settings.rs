//! Settings: the command line, the environment and the config file, merged
//! into one typed [`Settings`]. Flags beat environment variables, which beat
//! the config file, which beats the built-in defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::types::{MemberId, Secret};

/// Default listen address: loopback, so a fresh install exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default sled page cache, in MiB.
pub const DEFAULT_CACHE_MB: u64 = 64;
/// Default number of appends that may wait for the writer.
pub const DEFAULT_QUEUE: usize = 8192;

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
    Serve(ServeArgs),
}

impl Cli {
    /// The serve arguments, whichever way they were given.
    pub fn into_serve_args(self) -> ServeArgs {
        match self.command {
            Some(Command::Serve(args)) => args,
            None => self.serve,
        }
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
    /// `read_token`, `cache_mb`, `queue`, and a `[portals]` table of
    /// member_id = "application_token").
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

    /// sled page cache size in MiB [default: 64].
    #[arg(long, env = "B24J_CACHE_MB", value_name = "MIB")]
    pub cache_mb: Option<u64>,

    /// Appends that may wait for the writer before ingest answers 503
    /// [default: 8192].
    #[arg(long, env = "B24J_QUEUE", value_name = "N")]
    pub queue: Option<usize>,
}

/// The config file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    read_token: Option<String>,
    cache_mb: Option<u64>,
    queue: Option<usize>,
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
    /// Writer queue capacity.
    pub queue: usize,
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
        let queue = args.queue.or(file.queue).unwrap_or(DEFAULT_QUEUE);
        if queue == 0 {
            return Err(SettingsError::Invalid {
                setting: "queue",
                why: "must be at least 1".into(),
            });
        }
        Ok(Settings {
            listen,
            data_dir,
            portals,
            read_token,
            cache_bytes: cache_mb * 1024 * 1024,
            queue,
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
        assert_eq!(s.cache_bytes, 64 * 1024 * 1024);

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
