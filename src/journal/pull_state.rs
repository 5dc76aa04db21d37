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

/// How a pull-state change combines with the stored state. Embedded mode
/// has one writer of each portal's state and replaces it; in cluster mode
/// two nodes may change it at once — the one whose ONAPPINSTALL brought a
/// new grant, and the one holding the portal's pulling lease — so each
/// change says which fields it owns, and every node's writer combines it
/// with what it holds in the same way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum PullMerge {
    /// Replace the stored state.
    Replace,
    /// A new grant (an install): its member id, domain, endpoint, sealed
    /// token, a working token state and no error are taken; the pulling
    /// progress stored (clear mode, reservation, counters) is kept.
    Grant,
    /// The puller's change, made from a state whose sealed token was
    /// `base`: taken whole, unless the stored token is no longer `base` (a
    /// new grant was applied meanwhile), whose grant fields then stay.
    Progress {
        /// The sealed token of the state the change was made from.
        base: Vec<u8>,
    },
}

impl PullMerge {
    /// The state to store when `change` meets `stored`.
    pub fn apply(&self, stored: Option<&PullState>, change: PullState) -> PullState {
        let Some(stored) = stored else {
            return change;
        };
        match self {
            PullMerge::Replace => change,
            PullMerge::Grant => PullState {
                member_id: change.member_id,
                domain: change.domain,
                client_endpoint: change.client_endpoint,
                sealed_refresh_token: change.sealed_refresh_token,
                token: TokenState::Ok,
                last_error: None,
                ..stored.clone()
            },
            PullMerge::Progress { base } if *base != stored.sealed_refresh_token => PullState {
                domain: stored.domain.clone(),
                client_endpoint: stored.client_endpoint.clone(),
                sealed_refresh_token: stored.sealed_refresh_token.clone(),
                token: stored.token,
                ..change
            },
            PullMerge::Progress { .. } => change,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(token: &[u8], pulled: u64) -> PullState {
        PullState {
            member_id: "m".into(),
            domain: "a.bitrix24.com".into(),
            client_endpoint: "https://a.bitrix24.com/rest/".into(),
            sealed_refresh_token: token.to_vec(),
            pulled,
            ..PullState::default()
        }
    }

    #[test]
    fn a_grant_keeps_the_progress_and_progress_keeps_a_newer_grant() {
        let stored = state(b"old", 7);
        // An install: new token, the counters stay.
        let mut grant = state(b"new", 0);
        grant.token = TokenState::Revoked;
        let merged = PullMerge::Grant.apply(Some(&stored), grant);
        assert_eq!(merged.sealed_refresh_token, b"new");
        assert_eq!(merged.pulled, 7);
        assert_eq!(merged.token, TokenState::Ok);
        // The puller's change made from the old token after the grant:
        // its counters are taken, the new grant stays.
        let mut progress = state(b"old", 9);
        progress.token = TokenState::Revoked;
        let base = PullMerge::Progress {
            base: b"old".to_vec(),
        };
        let after = base.apply(Some(&merged), progress.clone());
        assert_eq!(after.sealed_refresh_token, b"new");
        assert_eq!(after.token, TokenState::Ok);
        assert_eq!(after.pulled, 9);
        // Made from the stored token (a refresh): taken whole.
        let refreshed = state(b"rotated", 9);
        let after = PullMerge::Progress {
            base: b"new".to_vec(),
        }
        .apply(Some(&merged), refreshed.clone());
        assert_eq!(after, refreshed);
        assert_eq!(
            PullMerge::Replace.apply(Some(&stored), progress.clone()),
            progress
        );
    }
}
