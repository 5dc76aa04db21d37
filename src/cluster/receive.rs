//! Receiving an event in cluster mode: the ingest pipeline with a publish
//! in place of the local append.
//!
//! Decode and verify as in embedded mode (a refused event is never
//! published); give the event its id, and with it its `received_at`;
//! publish it under its dedup key as `Nats-Msg-Id` and wait for the
//! stream's acknowledgement, which is what makes a `200` durable; then
//! wait briefly for the local journal to apply it, so that the answer says
//! `stored` or `duplicate` with the event's seq. If the local journal is
//! late, the answer is `accepted` with the id: the event is durable in the
//! cluster and every node will apply it.

use uuid::Uuid;

use super::apply::Outcome;
use super::commands::Command;
use super::node::Cluster;
use crate::decode::{self, BodyKind, Grant};
use crate::ingest::IngestError;
use crate::journal::dedup::key::dedup_key;
use crate::journal::record::PortalProfile;
use crate::journal::{AppendOutcome, JournalHandle, Lifecycle};
use crate::types::{EventName, MemberId};
use crate::verify::{Verifier, VerifyError};

/// What a node answers for an acknowledged event.
#[derive(Debug)]
pub struct Received {
    /// The portal that sent it.
    pub member_id: MemberId,
    /// Its event name.
    pub event: EventName,
    /// Applied locally (stored or duplicate), or only acknowledged by the
    /// stream (`Err` holds the id it was given, unless the stream took it
    /// for a repeat of an earlier message, whose id is not known yet).
    pub outcome: Result<AppendOutcome, Option<Uuid>>,
    /// An ONAPPINSTALL's OAuth grant and the install's profile, for
    /// offline pulling; never published as such (the puller publishes it
    /// sealed).
    pub grant: Option<(Grant, PortalProfile)>,
}

/// Decodes, verifies (behind the read barrier when the portal or token is
/// unknown here), publishes and waits for the stream's acknowledgement.
pub async fn receive(
    cluster: &Cluster,
    journal: &JournalHandle,
    verifier: &Verifier,
    kind: BodyKind,
    body: &[u8],
) -> Result<Received, IngestError> {
    let mut event = decode::decode(kind, body)?;
    let grant = event.grant.take().map(|g| (g, event.profile.clone()));
    let member_id = event.member_id.clone();
    let name = event.event.clone();
    let verify = || journal.with_directory(|dir| verifier.check(&event, dir));
    let lifecycle = match verify() {
        Ok(l) => l,
        Err(VerifyError::UnknownPortal | VerifyError::WrongToken | VerifyError::Uninstalled) => {
            // Maybe another node has just applied an install or reinstall:
            // catch up with the stream before refusing.
            cluster
                .barrier(cluster.config.publish_deadline)
                .await
                .map_err(|e| IngestError::NotReplicated {
                    member_id: member_id.clone(),
                    reason: e.to_string(),
                })?;
            verify().map_err(|reason| IngestError::Refused {
                member_id: member_id.clone(),
                reason,
            })?
        }
        Err(reason) => {
            return Err(IngestError::Refused {
                member_id: member_id.clone(),
                reason,
            })
        }
    };
    let new = event.into_new_event(lifecycle);
    let dedup = dedup_key(
        &new.event,
        new.entity_id.as_ref(),
        new.data.as_ref(),
        new.ts,
    );
    let mut msg_id = format!("{}.{}", member_id.as_str(), hex(&dedup));
    if let Lifecycle::Install { token, .. } = &new.lifecycle {
        // An install with another token is a different message: it must
        // reach the journal to be refused (409) as a takeover, not be
        // answered as a repeat of the legitimate install.
        msg_id.push('.');
        msg_id.push_str(&hex(&token.0[..8]));
    }
    let id = Uuid::now_v7();
    let command = Command::event(new, id);
    let acked = cluster
        .publisher
        .publish(&command, &msg_id)
        .await
        .map_err(|e| IngestError::NotReplicated {
            member_id: member_id.clone(),
            reason: e.to_string(),
        })?;
    let outcome = match cluster
        .applied
        .wait_for(acked.seq, cluster.config.apply_wait)
        .await
    {
        Some(Outcome::Event(Ok(outcome))) => Ok(repeat_is_duplicate(outcome, acked.repeat, id)),
        Some(Outcome::Event(Err(source))) => {
            return Err(IngestError::NotStored { member_id, source })
        }
        // Not applied yet (or its outcome is no longer kept). A repeat's
        // id is the earlier message's, unknown until it is applied here.
        _ => Err((!acked.repeat).then_some(id)),
    };
    Ok(Received {
        member_id,
        event: name,
        outcome,
        grant,
    })
}

/// A publish the stream recognised as a repeat of an earlier message (a
/// retry of ours, or the same event received by another node within the
/// stream's duplicate window) points at the earlier message's outcome:
/// that is `stored` only for the receive that assigned its id.
fn repeat_is_duplicate(outcome: AppendOutcome, repeat: bool, ours: Uuid) -> AppendOutcome {
    match outcome {
        AppendOutcome::Stored { id, seq } if repeat && id != ours => {
            AppendOutcome::Duplicate { id, seq }
        }
        other => other,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
