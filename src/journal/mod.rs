//! Journal: the durable, deduplicated, per-portal ordered store of events.
//!
//! - `append` names what an append takes and answers ([`NewEvent`],
//!   [`AppendOutcome`], [`AppendError`]);
//! - [`record`] defines what is stored and how it is encoded;
//! - [`PortalDirectory`] (`directory`) is the table of portals, and
//!   [`registration`] the rules of installs and uninstalls;
//! - [`dedup`] decides whether an event is already stored;
//! - [`entities`] holds the entity index's runs in memory for lookups;
//! - `writer` is the single writer thread doing group commit;
//! - [`read`] holds the read path's scans (filter, order, budget);
//! - [`RetentionPolicy`] (`retention`) says what may be deleted;
//! - [`layout`] decides how events are packed into blocks and how the
//!   entity index's runs grow and merge;
//! - [`store`] is the storage engine boundary (the only code naming sled),
//!   with its pure packing codec and redo log inside it;
//! - `format` checks the data directory's format version, and [`maintain`]
//!   holds the offline commands (backup, verify, migrate, registrations).
//!
//! The rest of the program talks to a [`JournalHandle`]: `append` (answers
//! only once the event is on disk), `probe`, and read access for queries.

mod append;
pub mod dedup;
mod directory;
pub mod entities;
mod format;
pub mod layout;
pub mod maintain;
#[cfg(test)]
mod mirror_tests;
pub mod provenance;
pub mod pull_state;
pub mod read;
#[cfg(test)]
mod read_tests;
pub mod record;
pub mod registration;
mod retention;
pub mod rollup;
mod spans;
pub mod store;
mod writer;

use std::path::Path;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot, watch};

use entities::EntityIndex;
use pull_state::{PullMerge, PullState};
use store::Store;

pub use append::{AppendError, AppendOutcome, NewEvent, Origin, UnavailableCause};
pub use directory::PortalDirectory;
pub use read::JournalReader;
pub use registration::Lifecycle;
pub use retention::RetentionPolicy;
pub use writer::MAX_BATCH;

pub(crate) use format::{check_format, ENGINE_DIR};
pub use format::{OpenError, FORMAT_FILE, FORMAT_VERSION};

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
    reader: JournalReader,
    directory: Arc<RwLock<PortalDirectory>>,
    commits: watch::Receiver<u64>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `data_dir`.
    pub fn open(data_dir: &Path, options: JournalOptions) -> Result<Journal, OpenError> {
        Journal::open_with(data_dir, options, |_| {})
    }

    /// [`Journal::open`], with `tune` applied to the writer before it
    /// starts (tests set what no option should).
    fn open_with(
        data_dir: &Path,
        options: JournalOptions,
        tune: impl FnOnce(&mut writer::Writer),
    ) -> Result<Journal, OpenError> {
        check_format(data_dir)?;
        let store_err = |source| OpenError::Store {
            dir: data_dir.to_owned(),
            source,
        };
        let mut store =
            Store::open(&data_dir.join(ENGINE_DIR), options.cache_bytes).map_err(store_err)?;
        store.set_snapshot_every(options.snapshot_every_bytes);
        let records = store.reader().portals().map_err(store_err)?;
        let registrations = store.reader().registrations().map_err(store_err)?;
        let directory = PortalDirectory::from_records(records, registrations).map_err(store_err)?;
        let published = Arc::new(RwLock::new(directory.clone()));
        let entities = EntityIndex::default();
        let reader =
            JournalReader::new(store.reader().clone(), entities.clone(), published.clone());
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let (commits_tx, commits) = watch::channel(0);
        let mut writer =
            writer::Writer::new(store, directory, published.clone(), commits_tx, entities);
        writer.set_stream_seq(reader.store().stream_seq().map_err(store_err)?);
        writer.finish_erasures().map_err(store_err)?;
        tune(&mut writer);
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
                from: None,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AppendError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => writer_stopped(),
            })?;
        rx.await.map_err(|_| writer_stopped())?
    }

    /// Erases a portal completely (events, indexes, dedup keys, counters,
    /// registration); `Ok(None)` if it is not in the journal. Returns the
    /// number of events erased.
    pub async fn erase(&self, member_id: &str) -> Result<Option<u64>, AppendError> {
        self.request(|reply| writer::Job::Erase {
            member_id: member_id.to_owned(),
            reply,
            from: None,
        })
        .await
    }

    /// Deletes up to `budget` events that `policy` no longer keeps, oldest
    /// first, with their index entries and dedup keys; returns how many.
    pub async fn retain(&self, policy: RetentionPolicy, budget: usize) -> Result<u64, AppendError> {
        self.request(|reply| writer::Job::Retain {
            policy,
            budget,
            at_ms: now_ms(),
            reply,
            from: None,
        })
        .await
    }

    /// Stores a portal's offline pull state; resolves once it is durable.
    pub async fn save_pull(&self, state: PullState) -> Result<(), AppendError> {
        self.request(|reply| writer::Job::SavePull {
            state: Box::new(state),
            merge: PullMerge::Replace,
            reply,
            from: None,
        })
        .await
    }

    /// Journals pulled offline records and, atomically with them, `state`
    /// with its counters advanced by the outcomes; resolves once durable
    /// with each record's outcome and the state as committed.
    pub async fn append_pulled(
        &self,
        events: Vec<NewEvent>,
        state: PullState,
    ) -> Result<(Vec<Result<AppendOutcome, AppendError>>, PullState), AppendError> {
        self.request(|reply| writer::Job::AppendPulled {
            events,
            state: Box::new(state),
            merge: PullMerge::Replace,
            reply,
            from: None,
        })
        .await
    }

    /// Writes and flushes a probe record: `Ok` means the journal is writable.
    pub async fn probe(&self) -> Result<(), AppendError> {
        self.request(|reply| writer::Job::Probe { reply }).await
    }

    /// Runs `f` with the durable portal directory.
    pub fn with_directory<T>(&self, f: impl FnOnce(&PortalDirectory) -> T) -> T {
        // A poisoned lock means a reader panicked while holding it; the
        // data (plain records) is still consistent, so keep going.
        let dir = self.directory.read().unwrap_or_else(|p| p.into_inner());
        f(&dir)
    }

    /// The journal's read side.
    pub fn reader(&self) -> &JournalReader {
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

/// Queuing a job for the writer.
impl JournalHandle {
    /// Queues the job `job` builds around its reply channel, waiting for
    /// room in the queue; returns where the writer's answer arrives.
    async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, AppendError>>) -> writer::Job,
    ) -> Result<oneshot::Receiver<Result<T, AppendError>>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(job(reply))
            .await
            .map_err(|_| writer_stopped())?;
        Ok(rx)
    }

    /// [`JournalHandle::submit`], then waits for the writer's answer.
    async fn request<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, AppendError>>) -> writer::Job,
    ) -> Result<T, AppendError> {
        let rx = self.submit(job).await?;
        rx.await.map_err(|_| writer_stopped())?
    }
}

/// The jobs of cluster mode: each comes from one stream message, named by
/// its stream sequence (`from`), and the writer applies them strictly in
/// stream order, recording the position atomically with each (see the
/// writer's module doc). They wait for room in the queue instead of being
/// refused: the applier is the only sender and must not drop a message.
/// Each returns a future of the writer's answer, so that the applier can
/// queue many before the first is committed (group commit).
impl JournalHandle {
    /// Applies a replicated event.
    pub async fn apply_event(
        &self,
        event: NewEvent,
        from: u64,
    ) -> Result<oneshot::Receiver<Result<AppendOutcome, AppendError>>, AppendError> {
        self.submit(|reply| writer::Job::Append {
            event: Box::new(event),
            reply,
            from: Some(from),
        })
        .await
    }

    /// Moves the position past a message that changes nothing.
    pub async fn apply_skip(
        &self,
        from: u64,
    ) -> Result<oneshot::Receiver<Result<(), AppendError>>, AppendError> {
        self.submit(|reply| writer::Job::Skip { from, reply }).await
    }

    /// Applies a replicated portal erasure.
    pub async fn apply_erase(
        &self,
        member_id: &str,
        from: u64,
    ) -> Result<oneshot::Receiver<Result<Option<u64>, AppendError>>, AppendError> {
        self.submit(|reply| writer::Job::Erase {
            member_id: member_id.to_owned(),
            reply,
            from: Some(from),
        })
        .await
    }

    /// Applies one replicated retention step, its age limit counted back
    /// from `at_ms` (the publishing node's clock, carried in the message).
    pub async fn apply_retain(
        &self,
        policy: RetentionPolicy,
        budget: usize,
        at_ms: u64,
        from: u64,
    ) -> Result<oneshot::Receiver<Result<u64, AppendError>>, AppendError> {
        self.submit(|reply| writer::Job::Retain {
            policy,
            budget,
            at_ms,
            reply,
            from: Some(from),
        })
        .await
    }

    /// Applies a replicated pull-state change, combined with the stored
    /// state by `merge`.
    pub async fn apply_save_pull(
        &self,
        state: PullState,
        merge: PullMerge,
        from: u64,
    ) -> Result<oneshot::Receiver<Result<(), AppendError>>, AppendError> {
        self.submit(|reply| writer::Job::SavePull {
            state: Box::new(state),
            merge,
            reply,
            from: Some(from),
        })
        .await
    }

    /// Applies a replicated batch of pulled records (their ids fixed) with
    /// the pull state it leaves, combined with the stored state by `merge`.
    pub async fn apply_pulled(
        &self,
        events: Vec<NewEvent>,
        state: PullState,
        merge: PullMerge,
        from: u64,
    ) -> Result<PulledReceiver, AppendError> {
        self.submit(|reply| writer::Job::AppendPulled {
            events,
            state: Box::new(state),
            merge,
            reply,
            from: Some(from),
        })
        .await
    }

    /// The last stream message durably applied (0: none; always 0 in
    /// embedded mode).
    pub fn stream_seq(&self) -> Result<u64, store::StoreError> {
        self.reader.store().stream_seq()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a pulled batch's answer arrives: each record's outcome and the
/// pull state as committed.
pub type PulledReceiver = oneshot::Receiver<PulledResult>;

/// Each pulled record's outcome and the pull state as committed.
pub type PulledResult = Result<(Vec<Result<AppendOutcome, AppendError>>, PullState), AppendError>;

/// "Not stored, try later": the writer thread is gone.
fn writer_stopped() -> AppendError {
    AppendError::Unavailable(UnavailableCause::WriterStopped)
}
