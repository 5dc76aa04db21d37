//! What the puller is configured with: the application's OAuth
//! credentials, the policy per portal, and its timings. Built by
//! `settings` at the edge; nothing here reads flags or files.

use std::collections::HashMap;
use std::time::Duration;

use crate::types::Secret;

/// Default seconds between polls of each portal's offline queue.
pub const DEFAULT_POLL_SECS: u64 = 30;
/// Default reconcile window, in seconds.
pub const DEFAULT_RECONCILE_WINDOW_SECS: u64 = 5;
/// Default time limit of one outbound call.
pub const DEFAULT_CALL_TIMEOUT_SECS: u64 = 15;
/// Default OAuth server.
pub const DEFAULT_OAUTH_SERVER: &str = "https://oauth.bitrix.info";
/// Portals pulled at the same time.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// How a portal's events reach the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The application binds its events offline only: the journal is fed
    /// by pulling (no public URL needed).
    Pull,
    /// Bound online and offline: pushes are journaled as they come, and
    /// the offline queue is the backstop; a pulled record a push already
    /// stands for is counted as reconciled, not stored.
    Reconcile,
}

impl Policy {
    /// Parses `pull` or `reconcile`.
    pub fn parse(raw: &str) -> Option<Policy> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "pull" => Some(Policy::Pull),
            "reconcile" => Some(Policy::Reconcile),
            _ => None,
        }
    }

    /// Its name in the API and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Pull => "pull",
            Policy::Reconcile => "reconcile",
        }
    }
}

/// The OAuth application b24-journal runs as.
#[derive(Debug, Clone)]
pub struct AppCredentials {
    /// `client_id` (not secret).
    pub client_id: String,
    /// `client_secret`.
    pub client_secret: Secret,
    /// Base URL of the OAuth server (`https://oauth.bitrix.info`).
    pub oauth_server: String,
}

/// The puller's configuration.
#[derive(Debug, Clone)]
pub struct OfflineConfig {
    /// The application.
    pub app: AppCredentials,
    /// The policy of portals without one of their own (`None`: only the
    /// portals named in `portals` are pulled).
    pub default_policy: Option<Policy>,
    /// Policies per member id.
    pub portals: HashMap<String, Policy>,
    /// Time between polls of a portal.
    pub poll: Duration,
    /// Reconcile window in seconds.
    pub reconcile_window: u64,
    /// Time limit of one outbound call.
    pub call_timeout: Duration,
    /// Portals pulled at the same time.
    pub concurrency: usize,
    /// Records asked for per `event.offline.get`.
    pub batch: usize,
    /// TEST ONLY: accept `http://` REST and OAuth endpoints on loopback
    /// addresses (the fake portal of the tests and the demo).
    pub allow_http_loopback: bool,
}

impl OfflineConfig {
    /// The policy of `member_id`, if it is pulled.
    pub fn policy(&self, member_id: &str) -> Option<Policy> {
        self.portals.get(member_id).copied().or(self.default_policy)
    }
}
