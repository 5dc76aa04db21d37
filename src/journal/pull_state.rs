//! A portal's offline-event pulling state, as the journal stores it: the
//! sealed refresh token, the REST endpoint, the reservation in flight and
//! the counters. The journal only stores and returns it; what it means is
//! the puller's business (`crate::offline`).
//!
//! The refresh token is stored **only sealed** (XChaCha20-Poly1305 under
//! the key of `--secrets-key-file`, sealed and opened by the puller): the
//! journal never sees it in plaintext. Written through the writer like
//! everything else, so a save is durable when it is answered; counters
//! change in the same atomic batch as the pulled events they count.

use serde::{Deserialize, Serialize};

/// Whether the portal's grant still works.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum TokenState {
    /// Refreshes succeed.
    #[default]
    Ok,
    /// The OAuth server answered `invalid_grant`: the application must be
    /// reinstalled (or re-authorised); pulling stops until then.
    Revoked,
}

/// How the portal's plan lets us fetch.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum ClearMode {
    /// Not known yet: try `clear=0` first.
    #[default]
    Unknown,
    /// `clear=0` works: reserve, journal, then clear.
    Reserve,
    /// The plan lacks "extended offline events" (`WRONG_LICENSE`):
    /// `clear=1`, records are deleted as they are returned.
    Delete,
}

/// One portal's pulling state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PullState {
    /// `auth[member_id]`.
    pub member_id: String,
    /// The portal's domain at install.
    pub domain: String,
    /// Its REST endpoint (`auth[client_endpoint]` of the verified install).
    pub client_endpoint: String,
    /// The refresh token, sealed: nonce then ciphertext and tag.
    pub sealed_refresh_token: Vec<u8>,
    /// Whether the grant works.
    pub token: TokenState,
    /// `clear=0` or `clear=1`.
    pub clear_mode: ClearMode,
    /// The `process_id` of a reserved batch not yet cleared: refetched
    /// after a restart.
    pub in_flight: Option<String>,
    /// Records fetched and journaled (each fetch counts).
    pub pulled: u64,
    /// Records stored as new events.
    pub recovered: u64,
    /// Records a pushed event already stood for (reconcile policy).
    pub reconciled: u64,
    /// Records already in the journal (fetched again).
    pub duplicates: u64,
    /// Unix ms of the last pull that reached the end of the queue.
    pub last_pull_ms: Option<u64>,
    /// The last error, for operators (never a token).
    pub last_error: Option<String>,
}

impl PullState {
    /// Encodes for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Cannot fail: postcard serialises plain structs of strings,
        // integers and enums into a Vec without error.
        postcard::to_stdvec(self).expect("pull state serialises")
    }

    /// Decodes from storage.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}
