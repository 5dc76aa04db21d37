//! Journal: the durable, deduplicated, per-portal ordered store of events.
//!
//! - `append` names what an append takes and answers ([`NewEvent`],
//!   [`AppendOutcome`], [`AppendError`]);
//! - [`record`] defines what is stored and how it is encoded;
//! - [`PortalDirectory`] (`directory`) is the table of portals, and
//!   [`registration`] the rules of installs and uninstalls;
//! - [`dedup`] decides whether an event is already stored;
//! - `writer` is the single writer thread doing group commit;
//! - [`read`] holds the read path's scans (filter, order, budget);
//! - [`RetentionPolicy`] (`retention`) says what may be deleted;
//! - [`store`] is the storage engine boundary (the only code naming sled),
//!   with [`pack`] and [`wal`] below it, and [`maintain`] the offline
//!   commands.
//!
//! The rest of the program talks to a [`JournalHandle`]: `append` (answers
//! only once the event is on disk), `probe`, and read access for queries.

mod append;
pub mod dedup;
mod directory;
pub mod maintain;
pub mod pack;
pub mod read;
pub mod record;
pub mod registration;
mod retention;
pub mod store;
pub mod wal;
mod writer;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot, watch};

use store::{Reader, Store, StoreError};

pub use append::{AppendError, AppendOutcome, NewEvent, UnavailableCause};
pub use directory::PortalDirectory;
pub use registration::Lifecycle;
pub use retention::RetentionPolicy;
pub use writer::MAX_BATCH;

/// The on-disk format this binary writes and reads. See
/// `migrations-notes/` for what each version means.
pub const FORMAT_VERSION: u32 = 3;

/// The oldest version upgraded in place on open: version 3 only adds the
/// redo log (`sled/wal/`) and the `L` key to version 2's layout. The
/// version still moves, so that a version-2 binary refuses a directory
/// whose acknowledged writes may be in the redo log only.
pub(crate) const UPGRADES_IN_PLACE_FROM: u32 = 2;
/// Name of the file in the data directory that records the format.
pub const FORMAT_FILE: &str = "FORMAT";
const FORMAT_PREFIX: &str = "b24-journal data format ";
/// Sub-directory of the data directory that holds the sled database.
pub(crate) const ENGINE_DIR: &str = "sled";

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory was written by a newer binary.
    #[error("data directory {dir} has format version {found}, newer than the {supported} this binary supports; run a newer b24-journal")]
    TooNew {
        /// The data directory.
        dir: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// The directory was written by an older binary and must be migrated.
    #[error("data directory {dir} has format version {found}, older than the {current} this binary uses; stop the service, back up the directory, then run `b24-journal migrate --data-dir {dir}`")]
    NeedsMigration {
        /// The data directory.
        dir: PathBuf,
        /// Version found.
        found: u32,
        /// Version this binary uses.
        current: u32,
    },
    /// The directory holds something we do not recognise.
    #[error("data directory {dir} has an unknown format version ({why}); refusing to open it")]
    Unknown {
        /// The data directory.
        dir: PathBuf,
        /// What was found.
        why: String,
    },
    /// File system trouble.
    #[error("data directory {dir}: {source}")]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The engine failed to open.
    #[error("opening the journal in {dir}: {source}")]
    Store {
        /// The data directory.
        dir: PathBuf,
        /// The error.
        source: StoreError,
    },
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
    directory: Arc<RwLock<PortalDirectory>>,
    commits: watch::Receiver<u64>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `data_dir`.
    pub fn open(data_dir: &Path, options: JournalOptions) -> Result<Journal, OpenError> {
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
                mpsc::error::TrySendError::Closed(_) => writer_stopped(),
            })?;
        rx.await.map_err(|_| writer_stopped())?
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
            .map_err(|_| writer_stopped())?;
        rx.await.map_err(|_| writer_stopped())?
    }

    /// Deletes up to `budget` events that `policy` no longer keeps, oldest
    /// first, with their index entries and dedup keys; returns how many.
    pub async fn retain(&self, policy: RetentionPolicy, budget: usize) -> Result<u64, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::Job::Retain {
                policy,
                budget,
                reply,
            })
            .await
            .map_err(|_| writer_stopped())?;
        rx.await.map_err(|_| writer_stopped())?
    }

    /// Writes and flushes a probe record: `Ok` means the journal is writable.
    pub async fn probe(&self) -> Result<(), AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::Job::Probe { reply })
            .await
            .map_err(|_| writer_stopped())?;
        rx.await.map_err(|_| writer_stopped())?
    }

    /// Runs `f` with the durable portal directory.
    pub fn with_directory<T>(&self, f: impl FnOnce(&PortalDirectory) -> T) -> T {
        // A poisoned lock means a reader panicked while holding it; the
        // data (plain records) is still consistent, so keep going.
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

/// "Not stored, try later": the writer thread is gone.
fn writer_stopped() -> AppendError {
    AppendError::Unavailable(UnavailableCause::WriterStopped)
}

/// Reads the format version of an existing data directory without creating
/// anything; refuses unknown and newer versions like [`Journal::open`].
pub(crate) fn read_format(dir: &Path) -> Result<u32, OpenError> {
    if !dir.join(FORMAT_FILE).exists() {
        return Err(OpenError::Unknown {
            dir: dir.to_owned(),
            why: format!("no {FORMAT_FILE} file: not a b24-journal data directory"),
        });
    }
    check_format(dir)?;
    Ok(FORMAT_VERSION)
}

/// Checks (or, for a new directory, writes) the format file.
pub(crate) fn check_format(dir: &Path) -> Result<(), OpenError> {
    let io = |source| OpenError::Io {
        dir: dir.to_owned(),
        source,
    };
    let unknown = |why: String| OpenError::Unknown {
        dir: dir.to_owned(),
        why,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let line = text.lines().next().unwrap_or("").trim();
            let version = line
                .strip_prefix(FORMAT_PREFIX)
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| unknown(format!("{FORMAT_FILE} says {line:?}")))?;
            if version > FORMAT_VERSION {
                return Err(OpenError::TooNew {
                    dir: dir.to_owned(),
                    found: version,
                    supported: FORMAT_VERSION,
                });
            }
            if version == 1 {
                return Err(OpenError::NeedsMigration {
                    dir: dir.to_owned(),
                    found: version,
                    current: FORMAT_VERSION,
                });
            }
            if version == UPGRADES_IN_PLACE_FROM {
                write_format(dir).map_err(io)?;
                tracing::info!(
                    dir = %dir.display(),
                    from = version,
                    to = FORMAT_VERSION,
                    "data format upgraded in place"
                );
                return Ok(());
            }
            if version != FORMAT_VERSION {
                return Err(unknown(format!(
                    "format version {version} is not supported"
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries = std::fs::read_dir(dir).map_err(io)?;
            if entries.next().is_some() {
                return Err(unknown(format!(
                    "no {FORMAT_FILE} file, but the directory is not empty"
                )));
            }
            write_format(dir).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes this binary's version into `dir`'s format file: write a temp
/// file, fsync, rename, fsync the directory, so a crash leaves either the
/// old file or the new one.
pub(crate) fn write_format(dir: &Path) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{FORMAT_PREFIX}{FORMAT_VERSION}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FORMAT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The version named by `dir`'s format file, whatever it is.
pub(crate) fn raw_format_version(dir: &Path) -> Result<u32, OpenError> {
    let text = std::fs::read_to_string(dir.join(FORMAT_FILE)).map_err(|source| OpenError::Io {
        dir: dir.to_owned(),
        source,
    })?;
    let line = text.lines().next().unwrap_or("").trim();
    line.strip_prefix(FORMAT_PREFIX)
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| OpenError::Unknown {
            dir: dir.to_owned(),
            why: format!("{FORMAT_FILE} says {line:?}"),
        })
}
