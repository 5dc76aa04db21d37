//! Registrations: which portals installed the application, with which
//! token, and the rules by which an install or uninstall event changes that.
//!
//! A registration is written in the same atomic batch as the lifecycle
//! event that changed it. The writer applies [`Registration::after`] to
//! every such event; because only the writer thread changes registrations,
//! that is also the authoritative takeover check (two racing installs
//! cannot both win). `verify` reads registrations to trust events.

use serde::{Deserialize, Serialize};

use crate::types::TokenDigest;

/// The effect of an application lifecycle event on a portal's registration,
/// applied atomically with journaling the event itself (see
/// [`Registration::after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// An ordinary event: the registration does not change.
    Ordinary,
    /// ONAPPINSTALL: register (or re-activate) the portal with this token.
    Install {
        /// Digest of the presented application token.
        token: TokenDigest,
        /// The portal's token is configured (settings), so no digest is
        /// recorded and no takeover check applies: only the status changes.
        configured: bool,
    },
    /// ONAPPUNINSTALL: mark the portal uninstalled.
    Uninstall,
}

/// An install that would take over a portal installed with another token;
/// the writer answers it as a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the portal is already installed with a different application token")]
pub struct Takeover;

/// How a portal's token came to be on record in the journal.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Source {
    /// Learnt from the portal's ONAPPINSTALL event.
    Install,
    /// Added by an operator (`b24-journal portals add`).
    Operator,
}

/// Whether a portal's application is installed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Status {
    /// Events are accepted.
    Active,
    /// ONAPPUNINSTALL was received: events are refused until a new ONAPPINSTALL.
    Uninstalled,
}

/// A portal registered at runtime: its token digest (never the token) and
/// its state. Written in the same atomic batch as the install or uninstall
/// event that changed it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registration {
    /// `auth[member_id]`.
    pub member_id: String,
    /// SHA-256 of the application token; `None` when only the status is
    /// recorded (a configured portal that was uninstalled).
    pub token_sha256: Option<[u8; 32]>,
    /// The domain at registration.
    pub domain: String,
    /// Where the token came from.
    pub source: Source,
    /// Installed or not.
    pub status: Status,
    /// Unix ms of the last change.
    pub updated_ms: u64,
}

impl Registration {
    /// Encodes for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Cannot fail: postcard serialises plain structs of strings,
        // integers and enums into a Vec without error.
        postcard::to_stdvec(self).expect("registration serialises")
    }

    /// Decodes from storage.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// The registration of `member` (whose event names `domain`) after an
    /// event with `lifecycle`, given its `current` one: `Ok(None)` when
    /// nothing changes. An install with a different token over an active
    /// registration is a [`Takeover`] and refused, unless the portal's
    /// token is configured (then only the status is recorded).
    pub fn after(
        current: Option<&Registration>,
        member: &str,
        domain: &str,
        lifecycle: Lifecycle,
        now_ms: u64,
    ) -> Result<Option<Registration>, Takeover> {
        let next = match lifecycle {
            Lifecycle::Ordinary => return Ok(None),
            Lifecycle::Install { token, configured } => {
                let token = (!configured).then_some(token.0);
                if let Some(cur) = current {
                    let other_token = cur.token_sha256.is_some() && cur.token_sha256 != token;
                    if cur.status == Status::Active && other_token && !configured {
                        return Err(Takeover);
                    }
                    if cur.status == Status::Active && !other_token {
                        // A repeated install: nothing changes.
                        return Ok(None);
                    }
                }
                Registration {
                    member_id: member.to_owned(),
                    token_sha256: token,
                    domain: domain.to_owned(),
                    source: Source::Install,
                    status: Status::Active,
                    updated_ms: now_ms,
                }
            }
            Lifecycle::Uninstall => match current {
                Some(cur) if cur.status == Status::Uninstalled => return Ok(None),
                Some(cur) => Registration {
                    status: Status::Uninstalled,
                    updated_ms: now_ms,
                    ..cur.clone()
                },
                // A configured portal: record only the status.
                None => Registration {
                    member_id: member.to_owned(),
                    token_sha256: None,
                    domain: domain.to_owned(),
                    source: Source::Operator,
                    status: Status::Uninstalled,
                    updated_ms: now_ms,
                },
            },
        };
        Ok(Some(next))
    }
}
