//! The sled database and its life: open, replay of the redo log, flush,
//! reopen. [`Store`] owns one open engine, its redo log and its memtable.
//!
//! Everything lives in one sled tree under one-byte key prefixes (see
//! `keys.rs`), because `apply_batch` is atomic within one tree only.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::error::StoreError;
use super::keys::{be_u64, LSN};
use super::log::{self, sync_dir, RedoLog, Segments, Tier};
use super::memtable::Memtable;
use super::mirror::Mirror;
use super::reader::Reader;

/// The redo log's directory, inside the engine's.
pub(super) const WAL_DIR: &str = "wal";

/// Blob files already fsynced, by name; shared with checkpoint threads.
pub(super) type SyncedBlobs = Arc<Mutex<HashSet<std::ffi::OsString>>>;

/// The journal's storage: one open engine, its redo log, its memtable, and
/// the [`Reader`] that follows the engine through reopens. Only the writer
/// (and offline maintenance) holds it.
pub struct Store {
    /// `None` while a reopen is pending.
    engine: Option<Engine>,
    reader: Reader,
    /// The log-only and deferred writes; the reader shares it.
    pub(super) memtable: Arc<Memtable>,
    /// The engine's directory.
    pub(super) dir: PathBuf,
    cache_bytes: u64,
    /// Blob files already fsynced; shared with checkpoint threads.
    pub(super) synced_blobs: SyncedBlobs,
    /// The redo log of the open engine.
    pub(super) wal: Arc<RedoLog>,
    /// The LSN the next logged batch gets.
    pub(super) next_lsn: u64,
    /// Redo-log bytes appended since the engine was opened.
    pub(super) logged_since_open: u64,
    /// Redo-log bytes after which [`Store::snapshot_due`] says so.
    snapshot_every: u64,
    /// How the redo log makes room for records.
    segments: Segments,
}

/// How long [`Store::open`] waits for sled's lock on the files to be free.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits, up to [`RELEASE_WAIT`], until nothing holds sled's lock on
/// `dir/db`; `false` if something still does. sled's I/O threads answer a flush before they drop their
/// handle on that file, so for a moment after a database is dropped its
/// lock is still held, and opening the same files again in this process
/// fails with "could not acquire lock" (sled itself blocks on the lock in
/// its own tests for this reason). `migrate` does exactly that: it closes
/// the old engine, moves it aside and opens it. A lock still held after
/// the wait belongs to another process: a running service.
fn wait_for_release(dir: &Path) -> bool {
    // No file yet: nothing can hold it.
    let Ok(file) = File::open(dir.join("db")) else {
        return true;
    };
    let until = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        // Dropping `file` releases the lock if it was taken.
        match file.try_lock() {
            Ok(()) => return true,
            // Any other failure is sled's open to report.
            Err(std::fs::TryLockError::Error(_)) => return true,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() >= until => {
                return false
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
        }
    }
}

/// The open sled database.
pub(super) struct Engine {
    db: sled::Db,
    /// The one tree everything lives in.
    pub(super) tree: sled::Tree,
    /// sled's log file, fsynced after each flush.
    log: Arc<File>,
}

/// The settings the journal opens sled in `dir` with. Public so that the
/// benchmark harness measures sled alone as the service runs it.
pub fn engine_config(dir: &Path, cache_bytes: u64) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        // Commits are made durable by the redo log, and sled is flushed at
        // checkpoints by one thread at a time: sled's periodic flush thread
        // would add a second, concurrent flusher.
        .flush_every_ms(None)
}

impl Engine {
    fn open(dir: &Path, cache_bytes: u64) -> Result<Engine, StoreError> {
        let db = engine_config(dir, cache_bytes).open()?;
        let tree = db.open_tree("journal")?;
        let log = Arc::new(File::open(dir.join("db"))?);
        Ok(Engine { db, tree, log })
    }

    /// The LSN of the last logged batch sled holds (0 before the first).
    pub(super) fn applied_lsn(&self) -> Result<u64, StoreError> {
        Ok(self
            .tree
            .get([LSN])?
            .map(|v| be_u64(&v).ok_or_else(|| StoreError::Corrupt("log sequence number".into())))
            .transpose()?
            .unwrap_or(0))
    }

    /// Applies the redo log's engine writes that sled does not hold, in
    /// order, and rebuilds the log-only and deferred writes of every record
    /// into `memtable`. Returns the next LSN and the segment a new log
    /// starts in; the log may go only after the deferred writes are in sled
    /// and a [`Flusher::flush`].
    fn replay(&self, wal_dir: &Path, memtable: &Memtable) -> Result<(u64, u64), StoreError> {
        let mut lsn = self.applied_lsn()?;
        let found = log::read(wal_dir)?;
        // sled must not hold a batch the log does not reach: the log then
        // lost its end (it is written and synced before sled is touched,
        // so only a disk that dropped synced writes does this), and the
        // unsealed tails of those batches — in the log only — are gone
        // while sled's counters, dedup keys and stream position count
        // them. Starting would silently miss events. Only a log that holds
        // batches can tell: one with none was closed cleanly, possibly by a
        // release that kept no `covered` file (a rollback, then this
        // release again), and its stale `covered` would refuse a good
        // journal.
        let last = found.records.iter().map(|r| r.lsn).max().unwrap_or(0);
        if last > 0 {
            let reaches = log::read_covered(wal_dir)?.map_or(last, |c| c.max(last));
            if lsn > reaches {
                return Err(StoreError::LogBehind {
                    store: lsn,
                    log: reaches,
                });
            }
        }
        if found.after_hole > 0 {
            let (path, at) = found.torn.unwrap_or_default();
            return Err(StoreError::Corrupt(format!(
                "redo log {} is damaged at byte {at} and {} whole records follow the damage; \
                 they cannot be applied in order",
                path.display(),
                found.after_hole
            )));
        }
        let mut replayed = 0u64;
        for record in &found.records {
            let ops = log::decode_ops(&record.writes).ok_or_else(|| {
                StoreError::Corrupt(format!("redo log record {} does not decode", record.lsn))
            })?;
            // The memtable's writes of every record, whatever sled holds:
            // sled never had them.
            for op in &ops {
                match *op {
                    log::Op::Insert(tier, k, v) => memtable.apply(tier, k, Some(v)),
                    log::Op::Remove(tier, k) => memtable.apply(tier, k, None),
                    log::Op::ClearLogOnly => memtable.clear_log_only(),
                }
            }
            // A snapshot record (LSN 0) has no engine writes.
            if record.lsn <= lsn {
                continue;
            }
            if record.lsn != lsn + 1 {
                return Err(StoreError::Corrupt(format!(
                    "redo log jumps from LSN {lsn} (in the store) to {}",
                    record.lsn
                )));
            }
            // One by one, as a commit applies them (see
            // `Store::commit_logged`): an atomic sled batch per record is
            // far slower.
            apply_in_order(
                &self.tree,
                ops.into_iter().filter_map(|op| match op {
                    log::Op::Insert(Tier::Engine, k, v) => Some((k, Some(v))),
                    log::Op::Remove(Tier::Engine, k) => Some((k, None)),
                    _ => None,
                }),
                record.lsn,
            )?;
            lsn = record.lsn;
            replayed += 1;
        }
        if let Some((path, at)) = &found.torn {
            // Bytes of an append that a crash interrupted: never
            // acknowledged.
            tracing::warn!(segment = %path.display(), offset = at, "redo log ends in a torn record; ignored");
        }
        if replayed > 0 {
            tracing::info!(records = replayed, "replayed the redo log");
        }
        Ok((lsn + 1, found.next_segment))
    }

    /// Readies sled for a flush that lets the log records so far go: writes
    /// the memtable's deferred writes and `last_lsn` as the LSN sled holds
    /// (batches without engine writes do not write it, see
    /// `apply_in_order`). On an error the deferred writes stay in the
    /// memtable, so that a later checkpoint writes them.
    pub(super) fn settle(&self, memtable: &Memtable, last_lsn: u64) -> Result<(), StoreError> {
        // Written to sled before the memtable forgets them: a reader that
        // looks between the two finds the value in both, never in neither.
        let deferred = memtable.deferred_writes();
        for (k, v) in &deferred {
            match v {
                Some(v) => self.tree.insert(k.as_slice(), v.as_slice()).map(drop)?,
                None => self.tree.remove(k.as_slice()).map(drop)?,
            }
        }
        memtable.settled(&deferred);
        if last_lsn > self.applied_lsn()? {
            self.tree.insert([LSN], &last_lsn.to_be_bytes()[..])?;
        }
        Ok(())
    }

    /// Brings a just-opened engine up to the log: replays it (rebuilding
    /// the memtable), writes the deferred writes to sled and flushes.
    /// Returns the next LSN and the segment a new log starts in.
    fn recover(
        &self,
        dir: &Path,
        memtable: &Memtable,
        synced_blobs: &SyncedBlobs,
    ) -> Result<(u64, u64), StoreError> {
        let rebuilt = Memtable::default();
        let (next_lsn, segment) = self.replay(&dir.join(WAL_DIR), &rebuilt)?;
        memtable.replace_with(rebuilt);
        self.settle(memtable, next_lsn - 1)?;
        Flusher::new(self, dir, synced_blobs).flush()?;
        Ok((next_lsn, segment))
    }
}

/// Free space needed before a broken engine is closed and reopened.
const REOPEN_MIN_FREE: u64 = 2 * 1024 * 1024;

/// Redo-log bytes after which the writer reopens the engine (see
/// [`Store::snapshot_due`]); the default of `--snapshot-every-mb`. sled
/// 0.34.7 writes its page-table snapshot only when it opens a database, and
/// opening scans all of its log written since then: reopening bounds what a
/// start after a crash scans, at the price of one short pause per reopen.
pub const SNAPSHOT_AFTER_LOGGED: u64 = 512 * 1024 * 1024;

impl Store {
    /// Opens (or creates) the store in `dir` with a page cache of
    /// `cache_bytes`, applying what the redo log holds beyond sled. sled's
    /// default cache is 1 GiB and its RSS can exceed the setting, so it is
    /// always set explicitly. Waits up to `RELEASE_WAIT` (1 s) for an engine
    /// this process just dropped to let go of the files (see
    /// `wait_for_release`), and answers [`StoreError::Locked`] if another
    /// process holds them.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        Store::open_with(dir, cache_bytes, Segments::Prepared, true)
    }

    /// [`Store::open`] for maintenance (backups, migrations, offline
    /// edits, `verify`): the redo log grows with its records instead of
    /// being written full of zeros ahead, so a store opened for a few
    /// commits, or a copy that is checked, does not take 32 MiB of zeros.
    pub fn open_for_maintenance(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        Store::open_with(dir, cache_bytes, Segments::Growing, false)
    }

    /// Opens the store; `mirrored`: with a read mirror (`mirror.rs`), which
    /// a store that answers queries keeps and a maintenance copy does not
    /// need.
    fn open_with(
        dir: &Path,
        cache_bytes: u64,
        segments: Segments,
        mirrored: bool,
    ) -> Result<Store, StoreError> {
        if !wait_for_release(dir) {
            return Err(StoreError::Locked(dir.to_owned()));
        }
        let engine = Engine::open(dir, cache_bytes)?;
        let synced_blobs = Arc::default();
        let memtable = Arc::new(Memtable::default());
        let (next_lsn, segment) = engine.recover(dir, &memtable, &synced_blobs)?;
        // Make the freshly created files and their directory entries durable
        // before anything is acknowledged.
        File::open(dir.join("conf"))?.sync_all()?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let wal = Arc::new(RedoLog::start(
            &dir.join(WAL_DIR),
            segment,
            &memtable.snapshot(),
            segments,
            next_lsn - 1,
        )?);
        let mirror = mirrored.then(|| Mirror::start(dir)).flatten();
        let reader = Reader::new(engine.tree.clone(), Arc::clone(&memtable), mirror);
        if let Some(m) = &reader.mirror {
            m.rebuild(&reader);
        }
        Ok(Store {
            reader,
            memtable,
            engine: Some(engine),
            dir: dir.to_owned(),
            cache_bytes,
            synced_blobs,
            wal,
            next_lsn,
            logged_since_open: 0,
            snapshot_every: SNAPSHOT_AFTER_LOGGED,
            segments,
        })
    }

    /// Whether the engine is open (it is not after a failed reopen).
    pub fn is_open(&self) -> bool {
        self.engine.is_some()
    }

    /// The open engine, or [`StoreError::Reopening`].
    pub(super) fn engine(&self) -> Result<&Engine, StoreError> {
        self.engine.as_ref().ok_or(StoreError::Reopening)
    }

    /// Closes and reopens the engine, replaying the redo log. sled 0.34.7
    /// remembers the first I/O error (a full disk, say) for the life of the
    /// database object and fails every later write with it; only a fresh
    /// open clears it. After an `Err` call again later.
    pub fn reopen(&mut self) -> Result<(), StoreError> {
        // Reads keep working on the old engine until there is room for the
        // new one to start: closing it on a full disk would only take reads
        // down too.
        let free = fs4::available_space(&self.dir)?;
        if self.engine.is_some() && free < REOPEN_MIN_FREE {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("{free} bytes free, waiting for at least {REOPEN_MIN_FREE}"),
            )));
        }
        // Records appended and not written were never acknowledged: the
        // new engine starts from what is on disk.
        self.wal.wait_idle();
        self.wal.discard_pending();
        self.cycle_engine(|store, engine| {
            // What the memtable holds beyond the log was never durable.
            let (next_lsn, segment) =
                engine.recover(&store.dir, &store.memtable, &store.synced_blobs)?;
            store.wal = Arc::new(RedoLog::start(
                &store.dir.join(WAL_DIR),
                segment,
                &store.memtable.snapshot(),
                store.segments,
                next_lsn - 1,
            )?);
            store.next_lsn = next_lsn;
            Ok(engine)
        })?;
        // The replay may have changed what sled holds.
        if let Some(m) = &self.reader.mirror {
            m.reset(&self.reader);
        }
        Ok(())
    }

    /// Closes and reopens a healthy engine so that sled writes a fresh
    /// page-table snapshot (see [`Store::snapshot_due`]). sled is flushed
    /// first, so the new engine normally holds every logged batch and the
    /// redo log carries on as it is; should it hold less, the log's records
    /// are replayed (they stay until a checkpoint has flushed them).
    ///
    /// Returns `Ok(false)`, touching nothing, while a long read (a backup)
    /// is in progress: it keeps the old database open for longer than a
    /// reopen may wait, and a reopen that cannot open leaves the journal
    /// refusing events until it can.
    pub fn refresh_snapshot(&mut self) -> Result<bool, StoreError> {
        if self.reader.long_reads.load(Ordering::SeqCst) > 0 {
            return Ok(false);
        }
        // Every logged batch is applied (commits apply before they return).
        self.flush_engine()?;
        let mut replayed = false;
        self.cycle_engine(|store, engine| {
            if engine.applied_lsn()? + 1 != store.next_lsn {
                replayed = true;
                // The memtable is current: only sled's part is replayed.
                let (next_lsn, _) =
                    engine.replay(&store.dir.join(WAL_DIR), &Memtable::default())?;
                if next_lsn != store.next_lsn {
                    return Err(StoreError::Corrupt(format!(
                        "reopened engine and redo log end at LSN {}, expected {}",
                        next_lsn - 1,
                        store.next_lsn - 1
                    )));
                }
            }
            Ok(engine)
        })?;
        if let (true, Some(m)) = (replayed, &self.reader.mirror) {
            m.reset(&self.reader);
        }
        Ok(true)
    }

    /// Closes the engine and opens it again; `start` readies the opened
    /// engine (replay, log) before anyone sees it. Every handle must be
    /// gone first (sled locks its file). New readers wait while a query
    /// still iterating on the old database finishes (attempts every 5 ms
    /// for up to 200 ms); a reader that needs a second handle while holding
    /// one cannot finish that way, so later attempts let readers go on in
    /// between (they see [`StoreError::Reopening`]).
    fn cycle_engine(
        &mut self,
        mut start: impl FnMut(&mut Store, Engine) -> Result<Engine, StoreError>,
    ) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.reader.shared);
        let lock = || shared.write().unwrap_or_else(|p| p.into_inner());
        let mut readers = lock();
        *readers = None;
        self.engine = None;
        let mut last = None;
        for attempt in 0..60 {
            match Engine::open(&self.dir, self.cache_bytes).and_then(|e| start(self, e)) {
                Ok(engine) => {
                    *readers = Some(engine.tree.clone());
                    self.engine = Some(engine);
                    self.logged_since_open = 0;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            // A reader still iterating (or a checkpoint thread just
            // finishing) holds the old database for a moment.
            if attempt < 40 {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            drop(readers);
            std::thread::sleep(std::time::Duration::from_millis(50));
            readers = lock();
        }
        Err(last.unwrap_or(StoreError::Reopening))
    }

    /// Whether enough has been logged since the engine opened that it
    /// should be reopened, so that sled writes a fresh page-table snapshot
    /// and a later start (after a crash, say) scans a bounded part of
    /// sled's log ([`SNAPSHOT_AFTER_LOGGED`]).
    pub fn snapshot_due(&self) -> bool {
        self.logged_since_open >= self.snapshot_every
    }

    /// Sets the redo-log volume between reopens (default
    /// [`SNAPSHOT_AFTER_LOGGED`]).
    pub fn set_snapshot_every(&mut self, bytes: u64) {
        self.snapshot_every = bytes.max(1);
    }

    /// Flushes everything into sled's files and closes the store, leaving
    /// a redo log of only the log-only writes (the unsealed tails; no log
    /// at all without them): for stores written once, backups and
    /// migrations, whose copies need not carry prepared log segments
    /// (32 MiB of zeros). Opening it again starts a new log.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.sync()?;
        self.wal
            .finish(&self.memtable.snapshot(), self.next_lsn - 1)?;
        Ok(())
    }

    /// The read side of the store.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }
}

impl Drop for Store {
    /// Stops the read mirror's rebuild and deletes its files: it is
    /// rebuilt from sled at the next open anyway.
    fn drop(&mut self) {
        if let Some(m) = &self.reader.mirror {
            m.close();
        }
    }
}

/// Flushes sled's files: sled's `flush()` (which syncs with
/// `sync_file_range` only), then `fsync` of its log and of any new blob file
/// (sled writes blobs without syncing them). One thread at a time
/// (concurrent sled flushes lock up): a checkpoint
/// thread, or the writer once no checkpoint runs.
pub(super) struct Flusher {
    db: sled::Db,
    log: Arc<File>,
    blobs: PathBuf,
    synced_blobs: SyncedBlobs,
}

impl Flusher {
    /// A flusher of `engine`, whose files are in `dir`.
    pub(super) fn new(engine: &Engine, dir: &Path, synced_blobs: &SyncedBlobs) -> Flusher {
        Flusher {
            db: engine.db.clone(),
            log: Arc::clone(&engine.log),
            blobs: dir.join("blobs"),
            synced_blobs: Arc::clone(synced_blobs),
        }
    }

    /// Everything applied before the call is then in sled's files.
    pub(super) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.log.sync_all()?;
        sync_blobs(&self.blobs, &self.synced_blobs)
    }
}

/// Applies one logged batch's engine writes to sled one by one: inserts,
/// then removes, then the batch's LSN (see [`Store::commit_logged`] for why
/// in this order and not as one sled batch). A batch without engine writes
/// (most batches: tail events and counters only) writes nothing, not even
/// its LSN: sled's `L` then names the last batch that changed sled, and
/// replaying the batches after it changes nothing for those. Whoever lets
/// log records go first writes the LSN up to them ([`Engine::settle`]).
pub(super) fn apply_in_order<K, V>(
    tree: &sled::Tree,
    writes: impl IntoIterator<Item = (K, Option<V>)>,
    lsn: u64,
) -> Result<(), StoreError>
where
    K: AsRef<[u8]>,
    V: Into<sled::IVec>,
{
    let mut removes = Vec::new();
    let mut inserted = false;
    for (k, v) in writes {
        match v {
            Some(v) => {
                tree.insert(k.as_ref(), v)?;
                inserted = true;
            }
            None => removes.push(k),
        }
    }
    let changed = inserted || !removes.is_empty();
    for k in removes {
        tree.remove(k.as_ref())?;
    }
    if changed {
        tree.insert([LSN], &lsn.to_be_bytes()[..])?;
    }
    Ok(())
}

/// fsyncs blob files not synced yet (sled writes them without syncing).
fn sync_blobs(
    blobs: &Path,
    synced_blobs: &Mutex<HashSet<std::ffi::OsString>>,
) -> Result<(), StoreError> {
    let mut synced = synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
    let mut new = false;
    for entry in std::fs::read_dir(blobs)? {
        let entry = entry?;
        let name = entry.file_name();
        if !synced.contains(&name) {
            // A blob may be garbage-collected between listing and opening:
            // then there is nothing left to sync.
            match File::open(entry.path()) {
                Ok(f) => f.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            synced.insert(name);
            new = true;
        }
    }
    if new {
        sync_dir(blobs)?;
    }
    Ok(())
}
