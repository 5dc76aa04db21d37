//! The stream's messages: every state change of a cluster, as a command
//! that every node applies in stream order.
//!
//! A command carries everything applying it needs and nothing a node would
//! read locally: a replicated event its id (hence its `received_at`) and
//! its registration effect as the receiving node decided it; a retention
//! step the time its age limit counts back from. So applying is a pure
//! function of the journal and the command, and every node builds the same
//! journal. New kinds of state change (offline pulls, operator
//! registrations) become new variants; a node that does not know a
//! variant skips it (and logs), which is only safe for additions that do
//! not change what existing variants mean.
//!
//! Encoded as JSON: `data` is arbitrary JSON, which postcard cannot carry,
//! and a JSON message can be read with `nats stream get` when debugging.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::journal::pull_state::{PullMerge, PullState};
use crate::journal::record::PortalProfile;
use crate::journal::{Lifecycle, NewEvent, Origin, RetentionPolicy};
use crate::types::{EntityId, EventName, MemberId, TokenDigest, Ts};

/// Subject prefix of every command; the stream takes `b24.>`.
pub const SUBJECT_PREFIX: &str = "b24";

/// One state change, as published.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    /// Journal a verified event.
    Event(Box<WireEvent>),
    /// Erase a portal completely.
    Erase {
        /// The portal.
        member_id: String,
    },
    /// One bounded retention step.
    Retain {
        /// Delete events received before `at_ms - max_age_ms`.
        max_age_ms: Option<u64>,
        /// Keep at most this many events per portal.
        per_portal: Option<u64>,
        /// Most events deleted by this step.
        budget: usize,
        /// The publishing node's clock when it published the step.
        at_ms: u64,
    },
    /// A portal's offline pull state changed: a new grant (an install
    /// received by some node), a refreshed or revoked token, or the
    /// puller's progress. The refresh token travels sealed: every node
    /// holds the same secrets key.
    SavePull {
        /// The state as the publishing node made it.
        state: PullState,
        /// Which fields it owns (see `PullMerge`).
        merge: PullMerge,
    },
    /// A batch of records the portal's puller fetched, each with the id it
    /// was given on receipt, journaled with the pull state it leaves in
    /// one atomic batch (counters advanced by the outcomes on apply).
    Pulled {
        /// The records, as events.
        events: Vec<WireEvent>,
        /// The pull state (reservation in flight) before the counters.
        state: PullState,
        /// Which fields it owns.
        merge: PullMerge,
    },
    /// Nothing: a write whose acknowledgement proves the stream has a
    /// quorum (see `publish`); every node applies it as a skipped message.
    Quorum,
}

/// A verified event without secrets, as it travels in the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireEvent {
    /// The id assigned on receipt (UUIDv7: its time is `received_at`).
    pub id: String,
    /// Upper-case event name.
    pub event: String,
    /// The portal's `ts`, Unix seconds.
    pub ts: u64,
    /// The portal.
    pub member_id: String,
    /// Domain and endpoints at receipt.
    pub profile: PortalProfile,
    /// `event_handler_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_handler_id: Option<String>,
    /// The entity id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// `data` as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Non-secret `auth` fields.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub auth_rest: Map<String, Value>,
    /// The registration effect the receiving node decided.
    pub lifecycle: WireLifecycle,
    /// A pulled offline record's message id and reconcile window (absent:
    /// pushed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline: Option<WireOffline>,
}

/// [`Origin::Offline`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireOffline {
    /// The record's `MESSAGE_ID`.
    pub message_id: String,
    /// The reconcile policy's window, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile_window: Option<u64>,
}

/// [`Lifecycle`] on the wire: the token only as its SHA-256 digest, hex.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WireLifecycle {
    /// No registration change.
    Ordinary,
    /// ONAPPINSTALL.
    Install {
        /// The presented token's digest, hex.
        token_sha256: String,
        /// The portal's token is configured on the nodes.
        configured: bool,
    },
    /// ONAPPUNINSTALL.
    Uninstall,
}

/// A message that is not a command this version can apply.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Not JSON of a known shape.
    #[error("undecodable command: {0}")]
    Json(#[from] serde_json::Error),
    /// A field is invalid.
    #[error("invalid command field {0}")]
    Field(&'static str),
}

impl Command {
    /// The command for a verified event with the id it was given on receipt.
    pub fn event(event: NewEvent, id: Uuid) -> Command {
        Command::Event(Box::new(WireEvent::new(event, id)))
    }

    /// A pulled batch: each record gets its id now, on receipt.
    pub fn pulled(events: Vec<NewEvent>, state: PullState, merge: PullMerge) -> Command {
        let events = events
            .into_iter()
            .map(|e| WireEvent::new(e, Uuid::now_v7()))
            .collect();
        Command::Pulled {
            events,
            state,
            merge,
        }
    }

    /// A retention step of `policy` counted back from `at_ms`.
    pub fn retain(policy: RetentionPolicy, budget: usize, at_ms: u64) -> Command {
        Command::Retain {
            max_age_ms: policy.max_age.map(|a| a.as_millis() as u64),
            per_portal: policy.per_portal,
            budget,
            at_ms,
        }
    }

    /// The subject it is published on: events per portal, so that a
    /// portal's traffic can be told apart (`nats stream subjects`).
    pub fn subject(&self) -> String {
        match self {
            Command::Event(e) => format!("{SUBJECT_PREFIX}.events.{}", e.member_id),
            Command::Erase { member_id } => format!("{SUBJECT_PREFIX}.erase.{member_id}"),
            Command::Retain { .. } => format!("{SUBJECT_PREFIX}.retain"),
            Command::SavePull { state, .. } | Command::Pulled { state, .. } => {
                format!("{SUBJECT_PREFIX}.pull.{}", state.member_id)
            }
            Command::Quorum => format!("{SUBJECT_PREFIX}.quorum"),
        }
    }

    /// Encodes for publishing.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Cannot fail: plain structs, strings, numbers and JSON values.
        serde_json::to_vec(self).expect("a command serialises")
    }

    /// Decodes a message.
    pub fn from_bytes(bytes: &[u8]) -> Result<Command, CommandError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

impl WireEvent {
    /// A verified event with the id it was given on receipt.
    pub fn new(event: NewEvent, id: Uuid) -> WireEvent {
        let lifecycle = match event.lifecycle {
            Lifecycle::Ordinary => WireLifecycle::Ordinary,
            Lifecycle::Install { token, configured } => WireLifecycle::Install {
                token_sha256: hex(&token.0),
                configured,
            },
            Lifecycle::Uninstall => WireLifecycle::Uninstall,
        };
        let offline = match event.origin {
            Origin::Push => None,
            Origin::Offline {
                message_id,
                reconcile_window,
            } => Some(WireOffline {
                message_id,
                reconcile_window,
            }),
        };
        WireEvent {
            id: id.to_string(),
            event: event.event.as_str().to_owned(),
            ts: event.ts.secs(),
            member_id: event.member_id.as_str().to_owned(),
            profile: event.profile,
            event_handler_id: event.event_handler_id,
            entity_id: event.entity_id.map(|e| e.as_str().to_owned()),
            data: event.data,
            auth_rest: event.auth_rest,
            lifecycle,
            offline,
        }
    }

    /// The event to apply, with its id fixed.
    pub fn into_new_event(self) -> Result<NewEvent, CommandError> {
        let lifecycle = match self.lifecycle {
            WireLifecycle::Ordinary => Lifecycle::Ordinary,
            WireLifecycle::Install {
                token_sha256,
                configured,
            } => Lifecycle::Install {
                token: TokenDigest(unhex(&token_sha256).ok_or(CommandError::Field("token"))?),
                configured,
            },
            WireLifecycle::Uninstall => Lifecycle::Uninstall,
        };
        Ok(NewEvent {
            event: EventName::parse(&self.event).map_err(|_| CommandError::Field("event"))?,
            ts: Ts::from_secs(self.ts).map_err(|_| CommandError::Field("ts"))?,
            member_id: MemberId::parse(&self.member_id)
                .map_err(|_| CommandError::Field("member_id"))?,
            profile: self.profile,
            event_handler_id: self.event_handler_id,
            entity_id: self
                .entity_id
                .map(|e| EntityId::parse(&e))
                .transpose()
                .map_err(|_| CommandError::Field("entity_id"))?,
            data: self.data,
            auth_rest: self.auth_rest,
            lifecycle,
            id: Some(Uuid::parse_str(&self.id).map_err(|_| CommandError::Field("id"))?),
            origin: match self.offline {
                None => Origin::Push,
                Some(o) => Origin::Offline {
                    message_id: o.message_id,
                    reconcile_window: o.reconcile_window,
                },
            },
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_through_hex() {
        let d = [0xabu8; 32];
        assert_eq!(unhex(&hex(&d)), Some(d));
        assert_eq!(unhex("zz"), None);
    }
}
