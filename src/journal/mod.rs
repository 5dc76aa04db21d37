//! Journal: the durable, deduplicated, per-portal ordered store of events.
//!
//! - [`store`] is the storage engine boundary (the only code naming sled);
//! - [`record`] defines what is stored and how it is encoded;
//! - `writer` is the single writer thread doing group commit.
//!
//! The rest of the program talks to a [`JournalHandle`]: `append` (answers
//! only once the event is on disk), `probe`, and read access for queries.

mod format;
pub mod layout;
pub mod maintain;
pub mod record;
pub mod store;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::decode::{IncomingEvent, PortalProfile};
use crate::types::{EntityId, EventName, MemberId, TokenDigest, Ts};
use record::{PortalIx, PortalRecord, Registration};
use store::{Reader, Store, StoreError};

pub use writer::MAX_BATCH;

pub(crate) use format::{check_format_upgrading, ENGINE_DIR};
pub use format::{OpenError, FORMAT_FILE, FORMAT_VERSION};

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
}

/// The effect of an application lifecycle event on a portal's registration,
/// applied atomically with journaling the event itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// An ordinary event.
    None,
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

impl From<IncomingEvent> for NewEvent {
    /// Drops the application token: past verification nothing needs it.
    fn from(e: IncomingEvent) -> Self {
        NewEvent {
            event: e.event,
            ts: e.ts,
            member_id: e.member_id,
            profile: e.profile,
            event_handler_id: e.event_handler_id,
            entity_id: e.entity_id,
            data: e.data,
            auth_rest: e.auth_rest,
            lifecycle: Lifecycle::None,
        }
    }
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
}

/// Why an append was not acknowledged. Both mean "not stored, try later" (503).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    /// The writer's queue is full.
    #[error("journal queue is full")]
    QueueFull,
    /// The journal could not store or flush the event.
    #[error("journal unavailable: {0}")]
    Unavailable(String),
    /// An ONAPPINSTALL tried to register a different token for a portal that
    /// is installed with another one.
    #[error("portal {0} is already installed with a different application token")]
    Conflict(String),
    /// The event names a domain that belongs to another portal.
    #[error("domain {0} belongs to another portal")]
    DomainTaken(String),
}

/// Portals by number, member id and domain, as last committed.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    portals: Vec<PortalRecord>,
    by_member: HashMap<String, PortalIx>,
    by_domain: HashMap<String, PortalIx>,
    registrations: HashMap<String, Registration>,
}

impl Directory {
    pub(crate) fn from_records(
        records: Vec<PortalRecord>,
        registrations: Vec<Registration>,
    ) -> Result<Self, StoreError> {
        let mut dir = Directory {
            registrations: registrations
                .into_iter()
                .map(|r| (r.member_id.clone(), r))
                .collect(),
            ..Directory::default()
        };
        for rec in records {
            if rec.ix as usize != dir.portals.len() {
                return Err(StoreError::Corrupt(format!(
                    "portal numbers are not dense at {}",
                    rec.ix
                )));
            }
            dir.upsert(rec);
        }
        Ok(dir)
    }

    /// Inserts or replaces a portal record. New portals must come in number
    /// order (the writer sorts them), so a new one is always the next index.
    /// An erased portal (empty member id) loses its member and domain names.
    fn upsert(&mut self, rec: PortalRecord) {
        if rec.member_id.is_empty() {
            let ix = rec.ix;
            self.by_member.retain(|_, v| *v != ix);
            self.by_domain.retain(|_, v| *v != ix);
        }
        debug_assert!(
            rec.ix as usize <= self.portals.len(),
            "portal numbers are dense"
        );
        if !rec.member_id.is_empty() {
            self.by_member.insert(rec.member_id.clone(), rec.ix);
            for p in &rec.profiles {
                self.by_domain.insert(p.domain.clone(), rec.ix);
            }
        }
        let ix = rec.ix as usize;
        if ix < self.portals.len() {
            self.portals[ix] = rec;
        } else {
            self.portals.push(rec);
        }
    }

    /// A portal's registration, if it has one.
    pub fn registration(&self, member: &str) -> Option<&Registration> {
        self.registrations.get(member)
    }

    /// Every registration.
    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.registrations.values()
    }

    fn set_registration(&mut self, reg: Registration) {
        self.registrations.insert(reg.member_id.clone(), reg);
    }

    fn remove_registration(&mut self, member: &str) {
        self.registrations.remove(member);
    }

    /// A portal by member id, or else by domain (case-insensitive).
    pub fn resolve(&self, key: &str) -> Option<&PortalRecord> {
        let ix = self
            .by_member
            .get(key)
            .or_else(|| self.by_domain.get(&key.to_ascii_lowercase()))?;
        self.portals.get(*ix as usize)
    }

    /// The portal that owns `domain`, if any.
    pub fn domain_owner(&self, domain: &str) -> Option<PortalIx> {
        self.by_domain.get(domain).copied()
    }

    /// A portal by member id.
    pub fn by_member(&self, member: &str) -> Option<&PortalRecord> {
        self.portals.get(*self.by_member.get(member)? as usize)
    }

    /// All portals, in number order (erased ones have an empty member id).
    pub fn portals(&self) -> &[PortalRecord] {
        &self.portals
    }
}

/// The open journal: owns the writer thread.
pub struct Journal {
    handle: JournalHandle,
    writer: std::thread::JoinHandle<()>,
}

/// The name of the thread that commits every write: what `top -H` and
/// `/proc/<pid>/task/*/comm` show for it (the benchmark harness measures its
/// CPU by this name).
pub const WRITER_THREAD: &str = "journal-writer";

/// How a journal is opened and run.
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// sled page cache in bytes (sled's own default is 1 GiB, and its RSS
    /// can exceed the setting, so it is always given).
    pub cache_bytes: u64,
    /// Appends that may wait for the writer before more are refused.
    pub queue: usize,
    /// Redo-log bytes between engine reopens, which bound how much of
    /// sled's log a start scans (see [`store::SNAPSHOT_AFTER_LOGGED`]).
    pub snapshot_every_bytes: u64,
}

/// A cheap, cloneable handle for request handlers.
#[derive(Clone)]
pub struct JournalHandle {
    tx: mpsc::Sender<writer::Job>,
    reader: Reader,
    directory: Arc<RwLock<Directory>>,
    commits: watch::Receiver<u64>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `data_dir`.
    pub fn open(data_dir: &Path, options: JournalOptions) -> Result<Journal, OpenError> {
        check_format_upgrading(data_dir)?;
        let store_err = |source| OpenError::Store {
            dir: data_dir.to_owned(),
            source,
        };
        let mut store =
            Store::open(&data_dir.join(ENGINE_DIR), options.cache_bytes).map_err(store_err)?;
        store.set_snapshot_every(options.snapshot_every_bytes);
        let records = store.reader().portals().map_err(store_err)?;
        let registrations = store.reader().registrations().map_err(store_err)?;
        let directory = Directory::from_records(records, registrations).map_err(store_err)?;
        let published = Arc::new(RwLock::new(directory.clone()));
        let reader = store.reader().clone();
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let (commits_tx, commits) = watch::channel(0);
        let mut writer = writer::Writer::new(store, directory, published.clone(), commits_tx);
        writer.finish_erasures().map_err(store_err)?;
        let writer = std::thread::Builder::new()
            .name(WRITER_THREAD.into())
            .spawn(move || writer.run(rx))
            .map_err(|source| OpenError::Io {
                dir: data_dir.to_owned(),
                source,
            })?;
        Ok(Journal {
            handle: JournalHandle {
                tx,
                reader,
                directory: published,
                commits,
            },
            writer,
        })
    }

    /// A handle for request handlers.
    pub fn handle(&self) -> JournalHandle {
        self.handle.clone()
    }

    /// Commits everything queued, flushes, and stops the writer. Appends
    /// after this are refused with [`AppendError::Unavailable`].
    pub fn shutdown(self) {
        // `send` waits for room: everything already queued is committed
        // before the writer sees this.
        let tx = self.handle.tx.clone();
        drop(self.handle);
        if tx.blocking_send(writer::Job::Shutdown).is_err() {
            tracing::warn!("journal writer was already gone at shutdown");
        }
        if self.writer.join().is_err() {
            tracing::error!("journal writer thread panicked");
        }
    }
}

impl JournalHandle {
    /// Journals `event`; resolves once it is durable (or known duplicate).
    pub async fn append(&self, event: NewEvent) -> Result<AppendOutcome, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(writer::Job::Append {
                event: Box::new(event),
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AppendError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => {
                    AppendError::Unavailable("journal writer stopped".into())
                }
            })?;
        rx.await
            .map_err(|_| AppendError::Unavailable("journal writer stopped".into()))?
    }

    /// Erases a portal completely (events, indexes, dedup keys, counters,
    /// registration); `Ok(None)` if it is not in the journal. Returns the
    /// number of events erased.
    pub async fn erase(&self, member_id: &str) -> Result<Option<u64>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::Job::Erase {
                member_id: member_id.to_owned(),
                reply,
            })
            .await
            .map_err(|_| AppendError::Unavailable("journal writer stopped".into()))?;
        rx.await
            .map_err(|_| AppendError::Unavailable("journal writer stopped".into()))?
    }

    /// Deletes up to `budget` events that `policy` no longer keeps, oldest
    /// first, with their index entries and dedup keys; returns how many.
    pub async fn retain(
        &self,
        policy: crate::settings::Retention,
        budget: usize,
    ) -> Result<u64, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::Job::Retain {
                policy,
                budget,
                reply,
            })
            .await
            .map_err(|_| AppendError::Unavailable("journal writer stopped".into()))?;
        rx.await
            .map_err(|_| AppendError::Unavailable("journal writer stopped".into()))?
    }

    /// Writes and flushes a probe record: `Ok` means the journal is writable.
    pub async fn probe(&self) -> Result<(), AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::Job::Probe { reply })
            .await
            .map_err(|_| AppendError::Unavailable("journal writer stopped".into()))?;
        rx.await
            .map_err(|_| AppendError::Unavailable("journal writer stopped".into()))?
    }

    /// Runs `f` with the durable portal directory.
    pub fn with_directory<T>(&self, f: impl FnOnce(&Directory) -> T) -> T {
        // See Writer::publish on poisoning.
        let dir = self.directory.read().unwrap_or_else(|p| p.into_inner());
        f(&dir)
    }

    /// The store's read side.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Appends waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// A receiver that changes after every durable commit: live readers wait
    /// on it instead of polling.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }
}
