//! The command line: clap's types for the service and its maintenance
//! subcommands, and nothing else. [`settings`](crate::settings) turns
//! [`ServeArgs`] into checked settings; [`commands`](crate::commands) runs
//! each subcommand.

use crate::cluster::ClusterArgs;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default data directory of every subcommand, relative to the working
/// directory.
pub const DEFAULT_DATA_DIR: &str = "./data";

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
    /// (as SHA-256 digests); `list` also shows offline pulling state.
    Portals(PortalsArgs),
    /// Cluster mode's operations: create the stream, show its state.
    Cluster(ClusterCmdArgs),
    /// Create a new secrets key file (mode 0600) for `--secrets-key-file`:
    /// the key that seals the refresh tokens offline pulling keeps.
    Keygen(KeygenArgs),
    /// List, add or remove scoped read tokens (`[[read_tokens]]`) in a
    /// config file; the running service applies them on a reload.
    ReadTokens(ReadTokensArgs),
}

/// Options of `keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// The file to create (never overwritten).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
}

/// Options of `read-tokens`.
#[derive(Debug, Clone, Args)]
pub struct ReadTokensArgs {
    /// The config file to read or edit (its comments are kept).
    #[arg(long, env = "B24J_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub action: ReadTokensAction,
}

/// `read-tokens` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum ReadTokensAction {
    /// List the scoped read tokens: name, how the token is stored, portals.
    List,
    /// Make a new random token for these portals, print it once, and store
    /// its SHA-256 in the file.
    Add {
        /// The token's name (letters, digits, `-`, `_`, `.`).
        name: String,
        /// A portal it opens, by member id or domain; repeatable or
        /// comma-separated.
        #[arg(long = "portal", value_name = "MEMBER_ID_OR_DOMAIN", required = true)]
        portals: Vec<String>,
    },
    /// Remove a token by name.
    Remove {
        /// The token's name.
        name: String,
    },
}

/// Options of `backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Name of the directory to write, relative to the service's backup
    /// directory (`--backup-dir`); it must not exist, or be empty.
    #[arg(long, value_name = "NAME")]
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
    /// The data directory.
    #[arg(long, env = "B24J_DATA_DIR", value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// Options of `portals`.
#[derive(Debug, Clone, Args)]
pub struct PortalsArgs {
    /// The data directory; the service must be stopped.
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
    /// `retain_every`, `log_format`, `log_level`, `trusted_proxies`,
    /// `backup_dir`, `cors_origins`, `console`, `[app]` and `[offline]` for
    /// offline events, a `[portals]` table of member_id =
    /// "application_token", and `[[read_tokens]]` entries of scoped read
    /// tokens). See config.example.toml.
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

    /// Log format: `text` or `json` [default: text]. Changes on a reload.
    #[arg(long, env = "B24J_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Reverse proxies whose `X-Forwarded-For` header names the client in
    /// the logs (comma-separated IP addresses or CIDR networks, e.g.
    /// `127.0.0.1,::1`). From any other peer the header is ignored
    /// [default: none].
    #[arg(
        long,
        env = "B24J_TRUSTED_PROXIES",
        value_name = "CIDRS",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,

    /// Absolute path of the directory online backups are written into
    /// (`POST /v1/admin/backup` and `b24-journal backup --to NAME` take a
    /// name inside it). Without it, online backups are refused
    /// [default: off].
    #[arg(long, env = "B24J_BACKUP_DIR", value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,

    /// Origins whose web pages may call the read API from a browser
    /// (CORS), comma-separated, e.g. `https://dash.example.com`; `*` is
    /// refused. Changes on a reload [default: none].
    #[arg(
        long,
        env = "B24J_CORS_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Do not serve the built-in console at /console [default: served].
    #[arg(long, env = "B24J_NO_CONSOLE")]
    pub no_console: bool,

    /// Log level or filter (`info`, `debug`, `b24_journal=trace,warn`, …)
    /// [default: RUST_LOG, else info]. Changes on a reload.
    #[arg(long, env = "B24J_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Offline events: pull every installed portal's offline queue with
    /// this policy, `pull` (events bound offline only) or `reconcile`
    /// (bound online and offline; the queue is the backstop), or `off`
    /// [default: off]. Needs the application's credentials and a secrets
    /// key. The client secret comes from B24J_APP_CLIENT_SECRET or
    /// --client-secret-file, never from the command line.
    #[arg(long, env = "B24J_OFFLINE", value_name = "POLICY")]
    pub offline: Option<String>,

    /// A portal's own offline policy (`MEMBER_ID=pull|reconcile|off`);
    /// repeatable.
    #[arg(
        long = "offline-portal",
        env = "B24J_OFFLINE_PORTALS",
        value_name = "MEMBER_ID=POLICY",
        value_delimiter = ','
    )]
    pub offline_portals: Vec<String>,

    /// The OAuth application's client_id (offline pulling).
    #[arg(long, env = "B24J_APP_CLIENT_ID", value_name = "ID")]
    pub app_client_id: Option<String>,

    /// A file holding the application's client_secret (offline pulling).
    #[arg(long, env = "B24J_CLIENT_SECRET_FILE", value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,

    /// The OAuth server [default: https://oauth.bitrix.info].
    #[arg(long, env = "B24J_OAUTH_SERVER", value_name = "URL")]
    pub oauth_server: Option<String>,

    /// The key that seals refresh tokens at rest (mode 0600; create it
    /// with `b24-journal keygen --to FILE`).
    #[arg(long, env = "B24J_SECRETS_KEY_FILE", value_name = "FILE")]
    pub secrets_key_file: Option<PathBuf>,

    /// Seconds between polls of each portal's offline queue; an
    /// ONOFFLINEEVENT pulls at once [default: 30].
    #[arg(long, env = "B24J_OFFLINE_POLL", value_name = "SECS")]
    pub offline_poll: Option<u64>,

    /// Reconcile policy: seconds within which a pushed event of the same
    /// name and entity stands for an offline record [default: 5].
    #[arg(long, env = "B24J_RECONCILE_WINDOW", value_name = "SECS")]
    pub reconcile_window: Option<u64>,

    /// Time limit of each call to a portal or the OAuth server [default: 15].
    #[arg(long, env = "B24J_OFFLINE_TIMEOUT", value_name = "SECS")]
    pub offline_timeout: Option<u64>,

    /// TEST ONLY: accept plain-http REST and OAuth endpoints on loopback
    /// addresses (the fake portal of the tests and the demo). Never in
    /// production: tokens would travel unencrypted.
    #[arg(long, env = "B24J_OFFLINE_ALLOW_HTTP_LOOPBACK")]
    pub offline_allow_http_loopback: bool,

    /// Cluster mode (NATS JetStream); off by default.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Options of `cluster`.
#[derive(Debug, Clone, Args)]
pub struct ClusterCmdArgs {
    /// The NATS servers and how to reach them.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: ClusterAction,
}

/// `cluster` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterAction {
    /// Create the stream and the nodes' KV bucket, or update their limits.
    Init {
        /// Replicas of every message (3: any one NATS node may fail).
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Days the stream keeps messages: at least the time it takes to
        /// rebuild a node from a peer's backup and replay the rest.
        #[arg(long, default_value_t = 7)]
        max_age_days: u64,
        /// Most bytes the stream keeps (oldest go first).
        #[arg(long, default_value_t = 10 * 1024 * 1024 * 1024)]
        max_bytes: i64,
        /// Seconds in which a repeated Nats-Msg-Id is dropped.
        #[arg(long, default_value_t = 120)]
        duplicate_window_secs: u64,
    },
    /// Show the stream, its replicas, and every node's applied sequence
    /// and lag (JSON).
    Status,
}
