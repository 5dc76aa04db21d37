//! Cluster mode's settings: the NATS servers, how to authenticate to them,
//! and the limits of publishing and applying.
//!
//! [`ClusterArgs`] are the flags (and `B24J_*` variables) of `serve` and
//! of the `cluster` subcommands, [`ClusterFile`] the config file's
//! `[cluster]` table; [`ClusterConfig::resolve`] merges them (flags beat
//! the environment, which beats the file) into the checked settings. The
//! rest of the cluster module takes a [`ClusterConfig`] and knows nothing
//! of where it came from.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// The stream every node publishes to and applies from.
pub const DEFAULT_STREAM: &str = "B24J";
/// Longest a receive waits for the stream's acknowledgement, retrying
/// through leader elections: well under the time Bitrix24 waits for an
/// answer, so that a refusal (503) still reaches it.
pub const DEFAULT_PUBLISH_DEADLINE_MS: u64 = 10_000;
/// How long a receive waits, after the acknowledgement, for the local
/// journal to apply the event before it answers `accepted`.
pub const DEFAULT_APPLY_WAIT_MS: u64 = 2_000;
/// Messages a node may be behind the stream before `/healthz` says it is
/// not ready.
pub const DEFAULT_MAX_LAG: u64 = 10_000;

/// Cluster flags of `serve` and `cluster …`.
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// Run as one node of a cluster on NATS JetStream: the comma-separated
    /// NATS servers (`nats://h1:4222,nats://h2:4222,nats://h3:4222`)
    /// [default: off, the embedded single-node mode].
    #[arg(long = "cluster", env = "B24J_CLUSTER", value_name = "URLS")]
    pub cluster: Option<String>,
    /// NATS credentials file (`.creds`: JWT and NKey seed).
    #[arg(long, env = "B24J_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) that NATS servers' TLS certificates chain to;
    /// setting it requires TLS.
    #[arg(long, env = "B24J_NATS_CA", value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients.
    #[arg(long, env = "B24J_NATS_CERT", value_name = "FILE")]
    pub nats_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "B24J_NATS_KEY", value_name = "FILE")]
    pub nats_key: Option<PathBuf>,
    /// This node's name in `cluster status` [default: the host name].
    #[arg(long, env = "B24J_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Milliseconds a receive retries publishing before it answers 503
    /// [default: 10000].
    #[arg(long, env = "B24J_PUBLISH_DEADLINE_MS", value_name = "MS")]
    pub publish_deadline_ms: Option<u64>,
    /// Milliseconds a receive waits for the local journal before it
    /// answers `accepted` [default: 2000].
    #[arg(long, env = "B24J_APPLY_WAIT_MS", value_name = "MS")]
    pub apply_wait_ms: Option<u64>,
    /// Stream messages a node may lag before `/healthz` answers 503
    /// [default: 10000].
    #[arg(long, env = "B24J_MAX_LAG", value_name = "N")]
    pub max_lag: Option<u64>,
}

/// The config file's `[cluster]` table: the same settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// NATS server URLs.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Credentials file.
    pub nats_creds: Option<PathBuf>,
    /// CA certificate.
    pub nats_ca: Option<PathBuf>,
    /// Client certificate.
    pub nats_cert: Option<PathBuf>,
    /// Client key.
    pub nats_key: Option<PathBuf>,
    /// Node name.
    pub node_name: Option<String>,
    /// Publish deadline, ms.
    pub publish_deadline_ms: Option<u64>,
    /// Apply wait, ms.
    pub apply_wait_ms: Option<u64>,
    /// Healthy lag.
    pub max_lag: Option<u64>,
}

/// Cluster mode's checked settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs.
    pub servers: Vec<String>,
    /// Credentials file.
    pub creds: Option<PathBuf>,
    /// CA certificate (TLS required when set).
    pub ca: Option<PathBuf>,
    /// Client certificate and key.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The stream's name.
    pub stream: String,
    /// This node's name.
    pub node: String,
    /// Longest a receive retries publishing.
    pub publish_deadline: Duration,
    /// How long a receive waits for the local apply.
    pub apply_wait: Duration,
    /// Lag beyond which the node is not ready.
    pub max_lag: u64,
}

/// A cluster setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid cluster setting {setting}: {why}")]
pub struct ClusterConfigError {
    /// The setting.
    pub setting: &'static str,
    /// What is wrong.
    pub why: String,
}

impl ClusterConfig {
    /// Merges flags/environment over the file; `Ok(None)` when no servers
    /// are named anywhere (embedded mode).
    pub fn resolve(
        args: &ClusterArgs,
        file: Option<&ClusterFile>,
    ) -> Result<Option<ClusterConfig>, ClusterConfigError> {
        let file = file.cloned().unwrap_or_default();
        let servers: Vec<String> = match &args.cluster {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None => file.servers.clone(),
        };
        if servers.is_empty() {
            if args.cluster.is_some() {
                return Err(ClusterConfigError {
                    setting: "cluster",
                    why: "no NATS server URL given".into(),
                });
            }
            return Ok(None);
        }
        for s in &servers {
            if !(s.starts_with("nats://") || s.starts_with("tls://")) {
                return Err(ClusterConfigError {
                    setting: "cluster",
                    why: format!("{s:?} is not a nats:// or tls:// URL"),
                });
            }
        }
        let cert = args.nats_cert.clone().or(file.nats_cert);
        let key = args.nats_key.clone().or(file.nats_key);
        let client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ClusterConfigError {
                    setting: "nats_cert",
                    why: "a client certificate needs its key (--nats-cert with --nats-key)".into(),
                })
            }
        };
        let node = args
            .node_name
            .clone()
            .or(file.node_name)
            .unwrap_or_else(host_name);
        if node.is_empty()
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return Err(ClusterConfigError {
                setting: "node_name",
                why: "letters, digits, '-' and '_' only".into(),
            });
        }
        let ms = |flag: Option<u64>, file: Option<u64>, default| {
            Duration::from_millis(flag.or(file).unwrap_or(default).max(1))
        };
        Ok(Some(ClusterConfig {
            servers,
            creds: args.nats_creds.clone().or(file.nats_creds),
            ca: args.nats_ca.clone().or(file.nats_ca),
            client_cert,
            stream: DEFAULT_STREAM.to_owned(),
            node,
            publish_deadline: ms(
                args.publish_deadline_ms,
                file.publish_deadline_ms,
                DEFAULT_PUBLISH_DEADLINE_MS,
            ),
            apply_wait: ms(
                args.apply_wait_ms,
                file.apply_wait_ms,
                DEFAULT_APPLY_WAIT_MS,
            ),
            max_lag: args.max_lag.or(file.max_lag).unwrap_or(DEFAULT_MAX_LAG),
        }))
    }

    /// Connects to the NATS servers (any one that answers; the client
    /// follows the cluster's other servers as they are announced).
    pub async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("b24-journal {}", self.node))
            // Keep reconnecting for ever: a node outlives any NATS outage.
            .max_reconnects(None)
            .retry_on_initial_connect();
        if let Some(creds) = &self.creds {
            options = options.credentials_file(creds).await?;
        }
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let urls: Vec<async_nats::ServerAddr> =
            self.servers.iter().filter_map(|s| s.parse().ok()).collect();
        options.connect(urls).await
    }
}

/// This machine's host name, for a default node name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| {
            h.trim()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .unwrap_or_else(|_| "node".into())
}
