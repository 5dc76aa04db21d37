//! The append API's vocabulary: the event handed to the journal, what an
//! append did, and why it was refused.
//!
//! A leaf of the journal: the writer, dedup and the handle all use these
//! types, and they depend on nothing of the journal but its records, the
//! registration rules and the store's errors.

use std::sync::Arc;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::record::PortalProfile;
use super::registration::Lifecycle;
use super::store::{CommitError, StoreError};
use crate::types::{EntityId, EventName, MemberId, Ts};

/// An event ready to be journaled: typed, verified, and without secrets.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Upper-case event name.
    pub event: EventName,
    /// The portal's `ts`.
    pub ts: Ts,
    /// The portal.
    pub member_id: MemberId,
    /// Domain and endpoints at receipt.
    pub profile: PortalProfile,
    /// `event_handler_id`.
    pub event_handler_id: Option<String>,
    /// The entity id, if any.
    pub entity_id: Option<EntityId>,
    /// `data` as received.
    pub data: Option<Value>,
    /// Non-secret `auth` fields besides member id, domain and endpoints.
    pub auth_rest: Map<String, Value>,
    /// What this event does to the portal's registration.
    pub lifecycle: Lifecycle,
    /// The id the event gets if new. `None` (embedded mode): the writer
    /// assigns one when it stages the event. Cluster mode assigns it on
    /// receipt and carries it in the stream, so that every node stores the
    /// same id (and the same `received_at`, which is the id's time).
    pub id: Option<Uuid>,
    /// Pushed to us, or pulled from the portal's offline queue.
    pub origin: Origin,
}

/// How an event reached the journal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Origin {
    /// Posted to the ingest route by Bitrix24.
    #[default]
    Push,
    /// Pulled from the portal's offline queue (`event.offline.get`).
    Offline {
        /// The record's `MESSAGE_ID`.
        message_id: String,
        /// Under the `reconcile` policy: seconds within which a pushed
        /// event of the same name and entity counts as this record (it is
        /// then counted as reconciled on that event, not stored again).
        reconcile_window: Option<u64>,
    },
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored as a new event, durably.
    Stored {
        /// The new event's id.
        id: Uuid,
        /// Its per-portal seq.
        seq: u64,
    },
    /// Already stored; the original's duplicate counter was bumped.
    Duplicate {
        /// The original's id.
        id: Uuid,
        /// The original's seq.
        seq: u64,
    },
    /// A pulled offline record that a pushed event already stands for
    /// (reconcile policy); that event's reconciled counter was bumped.
    Reconciled {
        /// The pushed event's id.
        id: Uuid,
        /// Its seq.
        seq: u64,
    },
}

/// Why an append was not acknowledged. `QueueFull` and `Unavailable` mean
/// "not stored, try later" (503).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// The writer's queue is full.
    #[error("journal queue is full")]
    QueueFull,
    /// The journal could not store or flush the event.
    #[error("journal unavailable: {0}")]
    Unavailable(#[source] UnavailableCause),
    /// An ONAPPINSTALL tried to register a different token for a portal that
    /// is installed with another one.
    #[error("portal {0} is already installed with a different application token")]
    Conflict(String),
    /// The event names a domain that belongs to another portal.
    #[error("domain {0} belongs to another portal")]
    DomainTaken(String),
}

/// Why the journal could not take a job, with the storage error kept
/// (shared, so that one failed commit answers every waiter of its batch).
#[derive(Debug, Clone, thiserror::Error)]
pub enum UnavailableCause {
    /// The writer thread is gone.
    #[error("journal writer stopped")]
    WriterStopped,
    /// The writer is stopping and refuses what is still queued.
    #[error("journal is shutting down")]
    ShuttingDown,
    /// A read, or a batch commit, failed in the store.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// A single-step commit (erase, retention) failed.
    #[error(transparent)]
    Commit(Arc<CommitError>),
    /// Cluster mode: a stream message came out of order (a batch before it
    /// failed, or the stream no longer holds the messages in between); the
    /// applier resumes from the last applied message.
    #[error("stream message {got} out of order: the journal expects {expected}")]
    StreamGap {
        /// The message the journal can apply next.
        expected: u64,
        /// The message it was given.
        got: u64,
    },
    /// Cluster mode: the change was not acknowledged by the stream, or not
    /// applied here in time (it may still be applied: the caller retries
    /// from the state it then finds).
    #[error("not replicated: {0}")]
    NotReplicated(String),
}
