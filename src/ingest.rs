//! Ingest: a received body through the domain pipeline — decode, verify
//! against the trusted portals and the portal directory, append to the
//! journal — to a typed outcome.
//!
//! Nothing here knows HTTP: the ingest route reads the body and turns an
//! [`IngestError`] into a status. A refused event never reaches the writer,
//! so it changes nothing.

use crate::decode::{self, BodyKind, DecodeError, Grant};
use crate::journal::record::PortalProfile;
use crate::journal::{AppendError, AppendOutcome, JournalHandle};
use crate::types::{EventName, MemberId};
use crate::verify::{Verifier, VerifyError};

/// An event the journal acknowledged.
#[derive(Debug)]
pub struct Ingested {
    /// The portal that sent it.
    pub member_id: MemberId,
    /// Its event name.
    pub event: EventName,
    /// Stored anew, or recognised as a duplicate.
    pub outcome: AppendOutcome,
    /// An ONAPPINSTALL's OAuth grant and the install's profile (domain,
    /// `client_endpoint`), for offline pulling; never journaled.
    pub grant: Option<(Grant, PortalProfile)>,
}

/// Why an event was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body is not a Bitrix24 event.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The event's credentials or domain are not trusted.
    #[error("event of portal {member_id} refused")]
    Refused {
        /// The portal the event claims to come from.
        member_id: MemberId,
        /// Why it is not trusted.
        #[source]
        reason: VerifyError,
    },
    /// Cluster mode: the stream did not acknowledge the event (no quorum,
    /// an election that outlasted the deadline), or the node could not
    /// catch up with it to check an unknown portal.
    #[error("event of portal {member_id} not replicated: {reason}")]
    NotReplicated {
        /// The portal that sent it.
        member_id: MemberId,
        /// What failed.
        reason: String,
    },
    /// The journal did not store the event.
    #[error("event of portal {member_id} not stored")]
    NotStored {
        /// The portal that sent it.
        member_id: MemberId,
        /// Why the journal refused or failed.
        #[source]
        source: AppendError,
    },
}

/// Decodes `body`, verifies the event and appends it to `journal`.
pub async fn ingest(
    journal: &JournalHandle,
    verifier: &Verifier,
    kind: BodyKind,
    body: &[u8],
) -> Result<Ingested, IngestError> {
    let mut event = decode::decode(kind, body)?;
    let grant = event.grant.take();
    let lifecycle = journal
        .with_directory(|dir| verifier.check(&event, dir))
        .map_err(|reason| IngestError::Refused {
            member_id: event.member_id.clone(),
            reason,
        })?;
    let member_id = event.member_id.clone();
    let name = event.event.clone();
    let grant = grant.map(|g| (g, event.profile.clone()));
    match journal.append(event.into_new_event(lifecycle)).await {
        Ok(outcome) => Ok(Ingested {
            member_id,
            event: name,
            outcome,
            grant,
        }),
        Err(source) => Err(IngestError::NotStored { member_id, source }),
    }
}
