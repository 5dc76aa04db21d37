//! The storage engine boundary: the only file that names sled.
//!
//! Everything lives in one sled tree under one-byte key prefixes, because
//! `apply_batch` is atomic within one tree only: an event, its index entries,
//! its dedup key and its portal's counters then land in one atomic batch, with
//! no crash window between them and without sled transactions (which take a
//! process-global lock and may re-run).
//!
//! | prefix | key                                       | value                 |
//! |--------|-------------------------------------------|-----------------------|
//! | `T`    | portal u32 BE, seq u64 BE                 | event record (tail)   |
//! | `B`    | portal u32 BE, block u64 BE               | sealed event block    |
//! | `X`    | portal u32 BE, len u8, entity id, seq u64 | entity chunk          |
//! | `S`    | portal u32 BE, block u64 BE               | min ts, max ts u64 BE |
//! | `D`    | portal u32 BE, dedup key (16 bytes)       | seq u64 BE (events without an entity id) |
//! | `P`    | portal u32 BE                             | portal record: tables |
//! | `C`    | portal u32 BE                             | portal record: counters |
//! | `R`    | member id bytes                           | registration          |
//! | `H`    | (none)                                    | last health probe, ms |
//! | `L`    | (none)                                    | LSN of the last logged batch, u64 BE |
//!
//! How events are packed into blocks and chunks, and why: [`super::pack`].
//!
//! Big-endian integers make byte order equal numeric order, so a reverse range
//! scan yields newest-first without sorting.
//!
//! A group commit is made durable by the redo log ([`super::wal`], in
//! `wal/` beside sled's files), not by flushing sled. sled is flushed at
//! checkpoints and by [`Store::sync`]; its `flush()` uses `sync_file_range`
//! on Linux, which is not a full fsync (../shared/SLED.md), and it writes
//! large values to `blobs/` without syncing them, so every flush here is
//! followed by `sync_all` on the log file and on any new blob file.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::dedup::key::DedupKey;
use super::pack::{self, ChunkEntry};
use super::record::{EventRecord, PortalIx, PortalRecord, SpanSummary};
use super::registration::Registration;
use super::wal::{self, Wal};

const TAIL: u8 = b'T';
/// Version 1's per-event key (see migrations-notes/): read by `migrate` only.
const V1_EVENT: u8 = b'E';
const BLOCK: u8 = b'B';
const CHUNK: u8 = b'X';
const SUMMARY: u8 = b'S';
const DEDUP: u8 = b'D';
const PORTAL: u8 = b'P';
const COUNTERS: u8 = b'C';
const HEALTH: u8 = b'H';
const REGISTRATION: u8 = b'R';
/// The LSN of the last logged batch applied (see [`wal`]).
const LSN: u8 = b'L';

/// The redo log's directory, inside the engine's.
const WAL_DIR: &str = "wal";

/// A storage failure. Never the client's fault: answered 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine reported an error.
    #[error("storage engine: {0}")]
    Engine(String),
    /// A file operation failed.
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Stored bytes did not decode.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The engine is being reopened after an I/O failure.
    #[error("storage is being reopened after an I/O error")]
    Reopening,
    /// Too little free disk space to take a write safely; nothing was
    /// written.
    #[error("disk nearly full: {free} bytes free, writes need at least {needed}")]
    DiskFull {
        /// Bytes free.
        free: u64,
        /// Bytes a write needs free.
        needed: u64,
    },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StoreError::Io(io),
            other => StoreError::Engine(other.to_string()),
        }
    }
}

/// How far a failed commit got.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Nothing of the batch was applied.
    #[error("batch not applied: {0}")]
    NotApplied(StoreError),
    /// The batch is applied (readable, will reach disk with a later flush) but
    /// is not known to be on disk: it must not be acknowledged.
    #[error("batch applied but not durable: {0}")]
    NotDurable(StoreError),
}

/// The journal's storage.
pub struct Store {
    /// `None` while a reopen is pending.
    engine: Option<Engine>,
    reader: Reader,
    dir: PathBuf,
    cache_bytes: u64,
    /// Blob files already fsynced; shared with checkpoint threads.
    synced_blobs: Arc<std::sync::Mutex<HashSet<std::ffi::OsString>>>,
    /// The redo log of the open engine.
    wal: Arc<Wal>,
    /// The LSN the next logged batch gets.
    next_lsn: u64,
    /// Redo-log bytes appended since the engine was opened.
    logged_since_open: u64,
    /// Redo-log bytes after which [`Store::snapshot_due`] says so.
    snapshot_every: u64,
}

/// How long [`Store::open`] waits for sled's lock on the files to be free.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits, up to [`RELEASE_WAIT`], until nothing holds sled's lock on
/// `dir/db`. sled's I/O threads answer a flush before they drop their
/// handle on that file, so for a moment after a database is dropped its
/// lock is still held, and opening the same files again in this process
/// fails with "could not acquire lock" (sled itself blocks on the lock in
/// its own tests for this reason). `migrate` does exactly that: it closes
/// the old engine, moves it aside and opens it. If the lock is still held
/// after the wait (a running service), sled's open reports it.
fn wait_for_release(dir: &Path) {
    use fs2::FileExt;
    // No file yet: nothing can hold it.
    let Ok(file) = File::open(dir.join("db")) else {
        return;
    };
    let until = std::time::Instant::now() + RELEASE_WAIT;
    while file.try_lock_exclusive().is_err() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Dropping `file` releases the lock if it was taken.
}

/// The open sled database.
struct Engine {
    db: sled::Db,
    tree: sled::Tree,
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
    fn applied_lsn(&self) -> Result<u64, StoreError> {
        Ok(self
            .tree
            .get([LSN])?
            .map(|v| be_u64(&v).ok_or_else(|| StoreError::Corrupt("log sequence number".into())))
            .transpose()?
            .unwrap_or(0))
    }

    /// Applies the redo log's records that sled does not hold, in order.
    /// Returns the next LSN and the segment a new log starts in; the log
    /// may go only after a [`Flusher::flush`].
    fn replay(&self, wal_dir: &Path) -> Result<(u64, u64), StoreError> {
        let mut lsn = self.applied_lsn()?;
        let found = wal::read(wal_dir)?;
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
            if record.lsn <= lsn {
                continue;
            }
            if record.lsn != lsn + 1 {
                return Err(StoreError::Corrupt(format!(
                    "redo log jumps from LSN {lsn} (in the store) to {}",
                    record.lsn
                )));
            }
            let ops = wal::decode_ops(&record.writes).ok_or_else(|| {
                StoreError::Corrupt(format!("redo log record {} does not decode", record.lsn))
            })?;
            // As a commit applies them (see `Store::commit_logged`): one
            // atomic sled batch per record made a replay of one 16 MiB
            // segment (15k records) take 2.1 s.
            apply_in_order(
                &self.tree,
                ops.into_iter().map(|op| match op {
                    wal::Op::Insert(k, v) => (k, Some(v)),
                    wal::Op::Remove(k) => (k, None),
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
}

/// Free space needed before a broken engine is closed and reopened.
const REOPEN_MIN_FREE: u64 = 2 * 1024 * 1024;

/// Redo-log bytes after which the writer reopens the engine (see
/// [`Store::snapshot_due`]). sled 0.34.7 writes its page-table snapshot
/// only when it opens a database, and opening scans all of its log written
/// since the last snapshot: measured, a first start after filling 10M
/// events (~2.3 GB of redo log, never reopened) took 2.7 s, the next 0.3 s.
/// Reopening every 512 MiB logged bounds that scan, at the price of one
/// pause of about one restart's length (0.3 s at 10M events) per 512 MiB
/// (~2.2M events). The default of `--snapshot-every-mb`.
pub const SNAPSHOT_AFTER_LOGGED: u64 = 512 * 1024 * 1024;

/// Free space below which a commit is refused before sled sees it. sled
/// 0.34.7 handles running out of space mid-write badly: part of a batch can
/// stay linked in memory, a leaf it filled then needs a split that every
/// later *read* retries and fails, and the engine keeps the error until it
/// is reopened. Refusing early keeps reads working and lets writes resume
/// by themselves once space is back. Several sled segments (512 KiB) plus
/// the largest batch fit in this margin.
const WRITE_MIN_FREE: u64 = 8 * 1024 * 1024;

/// A stored key, opaque outside this module: scans hand them out so that
/// maintenance (erase) can delete exactly what it found without knowing the
/// layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

/// What kind of record a key holds, with the numbers in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// An event of the unsealed tail.
    Tail {
        /// Portal.
        portal: PortalIx,
        /// Seq.
        seq: u64,
    },
    /// A sealed block of events.
    Block {
        /// Portal.
        portal: PortalIx,
        /// Block number (see [`pack::event_block`]).
        block: u64,
    },
    /// An entity index chunk.
    Chunk {
        /// Portal.
        portal: PortalIx,
        /// Entity id.
        entity: String,
        /// Seq of the chunk's first entry.
        first: u64,
    },
    /// A dedup key (events without an entity id), pointing at `seq`.
    Dedup {
        /// Portal.
        portal: PortalIx,
        /// The dedup digest.
        digest: DedupKey,
        /// Seq of the event that holds it.
        seq: u64,
    },
    /// A span summary.
    Summary {
        /// Portal.
        portal: PortalIx,
        /// The summary.
        summary: SpanSummary,
    },
    /// A portal record (either part: tables `P` or counters `C`).
    Portal(PortalIx),
    /// A registration.
    Registration,
    /// The health probe.
    Health,
    /// The LSN of the last logged batch (see [`wal`]).
    Lsn,
    /// Anything else: corruption.
    Unknown,
}

/// A set of writes, committed together by [`Store::commit_logged`] or
/// [`Store::commit`]. One write per key (the last one made), in key order,
/// as in `sled::Batch`.
#[derive(Default)]
pub struct WriteBatch {
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    len: usize,
}

fn key(prefix: u8, portal: PortalIx, rest: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + rest.iter().map(|r| r.len()).sum::<usize>());
    k.push(prefix);
    k.extend_from_slice(&portal.to_be_bytes());
    for r in rest {
        k.extend_from_slice(r);
    }
    k
}

fn entity_prefix(portal: PortalIx, entity: &str) -> Vec<u8> {
    // Entity ids are at most 200 bytes (types::EntityId), so the length fits a
    // byte; the length prefix keeps "1" from matching "12".
    let len = [u8::try_from(entity.len()).unwrap_or(u8::MAX)];
    key(CHUNK, portal, &[&len, entity.as_bytes()])
}

fn chunk_key(portal: PortalIx, entity: &str, first: u64) -> Vec<u8> {
    let mut k = entity_prefix(portal, entity);
    k.extend_from_slice(&first.to_be_bytes());
    k
}

fn seq_suffix(k: &[u8]) -> Result<u64, StoreError> {
    let tail = k
        .len()
        .checked_sub(8)
        .map(|at| &k[at..])
        .ok_or_else(|| StoreError::Corrupt("index key too short".into()))?;
    let mut b = [0u8; 8];
    b.copy_from_slice(tail);
    Ok(u64::from_be_bytes(b))
}

impl WriteBatch {
    fn insert(&mut self, key: Vec<u8>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key, Some(value.into()));
        self.len += 1;
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
        self.len += 1;
    }

    /// The writes as one atomic sled batch, with the LSN if given.
    fn into_sled(self, lsn: Option<u64>) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        if let Some(lsn) = lsn {
            batch.insert(&[LSN][..], &lsn.to_be_bytes()[..]);
        }
        batch
    }

    /// The writes encoded for the redo log.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.writes {
            match v {
                Some(v) => wal::encode_insert(&mut out, k, v),
                None => wal::encode_remove(&mut out, k),
            }
        }
        out
    }

    /// Stores an encoded event of the unsealed tail.
    pub fn put_tail(&mut self, portal: PortalIx, seq: u64, value: Vec<u8>) {
        self.insert(key(TAIL, portal, &[&seq.to_be_bytes()]), value);
    }

    /// Deletes a tail event (sealed into a block, or retention).
    pub fn delete_tail(&mut self, portal: PortalIx, seq: u64) {
        self.remove(key(TAIL, portal, &[&seq.to_be_bytes()]));
    }

    /// Stores an encoded block (see [`pack::encode_block`]).
    pub fn put_block(&mut self, portal: PortalIx, block: u64, value: Vec<u8>) {
        self.insert(key(BLOCK, portal, &[&block.to_be_bytes()]), value);
    }

    /// Deletes a block (retention).
    pub fn delete_block(&mut self, portal: PortalIx, block: u64) {
        self.remove(key(BLOCK, portal, &[&block.to_be_bytes()]));
    }

    /// Stores an entity chunk whose first entry is `first`.
    pub fn put_chunk(
        &mut self,
        portal: PortalIx,
        entity: &str,
        first: u64,
        entries: &[ChunkEntry],
    ) {
        self.insert(
            chunk_key(portal, entity, first),
            pack::encode_chunk(first, entries),
        );
    }

    /// Deletes an entity chunk (retention).
    pub fn delete_chunk(&mut self, portal: PortalIx, entity: &str, first: u64) {
        self.remove(chunk_key(portal, entity, first));
    }

    /// Stores the `ts` range of a summary span.
    pub fn put_summary(&mut self, portal: PortalIx, s: &SpanSummary) {
        let mut v = s.min_ts.to_be_bytes().to_vec();
        v.extend_from_slice(&s.max_ts.to_be_bytes());
        self.insert(key(SUMMARY, portal, &[&s.span.to_be_bytes()]), v);
    }

    /// Records a dedup key as taken by `seq`.
    pub fn put_dedup(&mut self, portal: PortalIx, dedup: &DedupKey, seq: u64) {
        self.insert(key(DEDUP, portal, &[dedup]), seq.to_be_bytes().to_vec());
    }

    /// Stores a portal record (tables and counters).
    pub fn put_portal(&mut self, record: &PortalRecord) {
        let (fixed, counters) = record.to_split_bytes();
        self.insert(key(PORTAL, record.ix, &[]), fixed);
        self.insert(key(COUNTERS, record.ix, &[]), counters);
    }

    /// Stores only a portal record's counters (its tables are unchanged).
    pub fn put_portal_counters(&mut self, record: &PortalRecord) {
        let (_, counters) = record.to_split_bytes();
        self.insert(key(COUNTERS, record.ix, &[]), counters);
    }

    /// Stores a whole portal record as version 1 did (tests of `migrate`).
    #[cfg(test)]
    pub(crate) fn put_v1_portal(&mut self, record: &PortalRecord) {
        self.insert(key(PORTAL, record.ix, &[]), record.to_bytes());
    }

    /// Stores a portal registration.
    pub fn put_registration(&mut self, reg: &Registration) {
        let mut k = vec![REGISTRATION];
        k.extend_from_slice(reg.member_id.as_bytes());
        self.insert(k, reg.to_bytes());
    }

    /// Removes a portal registration.
    pub fn remove_registration(&mut self, member_id: &str) {
        let mut k = vec![REGISTRATION];
        k.extend_from_slice(member_id.as_bytes());
        self.remove(k);
    }

    /// Records a health probe (proves the journal takes writes).
    pub fn put_health(&mut self, now_ms: u64) {
        self.insert(vec![HEALTH], now_ms.to_be_bytes().to_vec());
    }

    /// Deletes a key found by a scan.
    pub fn delete(&mut self, key: &Key) {
        self.remove(key.0.clone());
    }

    /// Deletes a dedup key.
    pub fn delete_dedup(&mut self, portal: PortalIx, dedup: &DedupKey) {
        self.remove(key(DEDUP, portal, &[dedup]));
    }

    /// Deletes a span summary.
    pub fn delete_summary(&mut self, portal: PortalIx, span: u64) {
        self.remove(key(SUMMARY, portal, &[&span.to_be_bytes()]));
    }

    /// Stores an event in the version-1 layout (tests of `migrate`).
    #[cfg(test)]
    pub(crate) fn put_v1_event(&mut self, portal: PortalIx, seq: u64, value: Vec<u8>) {
        self.insert(key(V1_EVENT, portal, &[&seq.to_be_bytes()]), value);
    }

    /// Number of writes in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with a page cache of
    /// `cache_bytes`, applying what the redo log holds beyond sled. sled's
    /// default cache is 1 GiB and its RSS can exceed the setting, so it is
    /// always set explicitly. Waits up to `RELEASE_WAIT` (1 s) for an engine
    /// this process just dropped to let go of the files (see
    /// `wait_for_release`).
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        wait_for_release(dir);
        let engine = Engine::open(dir, cache_bytes)?;
        let (next_lsn, segment) = engine.replay(&dir.join(WAL_DIR))?;
        let synced_blobs = Arc::default();
        Flusher::new(&engine, dir, &synced_blobs).flush()?;
        // Make the freshly created files and their directory entries durable
        // before anything is acknowledged.
        File::open(dir.join("conf"))?.sync_all()?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let wal = Arc::new(Wal::start(&dir.join(WAL_DIR), segment)?);
        Ok(Store {
            reader: Reader {
                shared: Arc::new(RwLock::new(Some(engine.tree.clone()))),
                long_reads: Arc::default(),
            },
            engine: Some(engine),
            dir: dir.to_owned(),
            cache_bytes,
            synced_blobs,
            wal,
            next_lsn,
            logged_since_open: 0,
            snapshot_every: SNAPSHOT_AFTER_LOGGED,
        })
    }

    /// Whether the engine is open (it is not after a failed reopen).
    pub fn is_open(&self) -> bool {
        self.engine.is_some()
    }

    fn engine(&self) -> Result<&Engine, StoreError> {
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
        let free = fs2::available_space(&self.dir)?;
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
            let (next_lsn, segment) = engine.replay(&store.dir.join(WAL_DIR))?;
            Flusher::new(&engine, &store.dir, &store.synced_blobs).flush()?;
            store.wal = Arc::new(Wal::start(&store.dir.join(WAL_DIR), segment)?);
            store.next_lsn = next_lsn;
            Ok(engine)
        })
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
        self.cycle_engine(|store, engine| {
            if engine.applied_lsn()? + 1 != store.next_lsn {
                let (next_lsn, _) = engine.replay(&store.dir.join(WAL_DIR))?;
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

    /// Applies `batch` atomically without logging it (bulk copies into a
    /// new store, which end with [`Store::sync`]).
    pub fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        Ok(self.engine()?.tree.apply_batch(batch.into_sled(None))?)
    }

    /// Applies `batch` atomically and makes it and everything before it
    /// durable in sled's own files (inline commits: erase, retention,
    /// maintenance). Only after `Ok` may it be acknowledged.
    pub fn commit(&mut self, batch: WriteBatch) -> Result<(), CommitError> {
        self.check_space().map_err(CommitError::NotApplied)?;
        let lsn = self.next_lsn;
        let keys = batch.writes.len() as u64 + 1;
        self.engine()
            .map_err(CommitError::NotApplied)?
            .tree
            .apply_batch(batch.into_sled(Some(lsn)))
            .map_err(|e| CommitError::NotDurable(e.into()))?;
        crate::metrics::metrics().store_writes.inc_by(keys);
        self.next_lsn += 1;
        self.sync().map_err(CommitError::NotDurable)
    }

    /// Commits a group of events: the batch's record is written to the redo
    /// log and fdatasynced *first*, then its writes are applied to sled one
    /// by one. sled writes its log buffers to disk whenever they fill, so a
    /// write applied before its record was durable could outlive a crash
    /// that the record did not; logged first, every write sled holds is
    /// replayable. One by one instead of one atomic sled batch because an
    /// atomic batch makes sled seal and write two I/O buffers, each with a
    /// `sync_file_range` that waits for the device (measured: 2 `pwrite64`
    /// and 2 `sync_file_range` per batch); the log record already makes the
    /// batch atomic across a crash. Inserts go first, then removes, then
    /// the LSN: a reader sees an event sealed into its block before it
    /// leaves the tail.
    ///
    /// Refused (nothing written) when the disk is nearly full. After `Ok`
    /// the batch may be acknowledged.
    pub fn commit_logged(&mut self, batch: WriteBatch) -> Result<(), CommitError> {
        self.check_space().map_err(CommitError::NotApplied)?;
        let tree = self.engine().map_err(CommitError::NotApplied)?.tree.clone();
        let lsn = self.next_lsn;
        let record = batch.encode();
        self.logged_since_open += record.len() as u64;
        self.wal.append(lsn, &record);
        // From here the record may be on disk: a failure means "maybe
        // durable", and the engine is reopened (which replays the log).
        self.wal
            .sync()
            .map_err(|e| CommitError::NotDurable(e.into()))?;
        self.next_lsn += 1;
        // The batch's keys and its LSN.
        let keys = batch.writes.len() as u64 + 1;
        apply_in_order(&tree, batch.writes, lsn).map_err(CommitError::NotDurable)?;
        crate::metrics::metrics().store_writes.inc_by(keys);
        self.maybe_checkpoint();
        Ok(())
    }

    /// Refuses a write when the disk is nearly full (see
    /// [`WRITE_MIN_FREE`]).
    fn check_space(&self) -> Result<(), StoreError> {
        let free = fs2::available_space(&self.dir)?;
        if free < WRITE_MIN_FREE {
            return Err(StoreError::DiskFull {
                free,
                needed: WRITE_MIN_FREE,
            });
        }
        Ok(())
    }

    /// When the log's segment is full, starts a checkpoint in the
    /// background: it flushes sled, then drops the older segments. Every
    /// record logged so far is applied by now, as the checkpoint requires.
    fn maybe_checkpoint(&self) {
        let Ok(engine) = self.engine() else { return };
        let below = match self.wal.begin_checkpoint() {
            Ok(Some(below)) => below,
            Ok(None) => return,
            Err(e) => {
                // The log stays in its segment; the next commit tries again.
                tracing::warn!(error = %e, "could not start a journal checkpoint");
                return;
            }
        };
        let flusher = Flusher::new(engine, &self.dir, &self.synced_blobs);
        let wal = Arc::clone(&self.wal);
        let spawned = std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || {
                let flushed = flusher.flush().map_err(|e| e.to_string());
                drop(flusher);
                if flushed.is_ok() {
                    wal.prepare(below + 1);
                }
                wal.finish_checkpoint(below, flushed);
            });
        if let Err(e) = spawned {
            self.wal.finish_checkpoint(below, Err(e.to_string()));
        }
    }

    /// Flushes and fsyncs everything applied so far into sled's own files
    /// (so the redo log is no longer needed), then starts a new log
    /// segment. Waits for a background checkpoint first: sled must not be
    /// flushed from two threads.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.flush_engine()?;
        self.wal.reset()?;
        Ok(())
    }

    /// Waits for a running checkpoint (one sled flusher at a time), then
    /// flushes sled and fsyncs its files.
    fn flush_engine(&self) -> Result<(), StoreError> {
        self.wal.wait_idle();
        Flusher::new(self.engine()?, &self.dir, &self.synced_blobs).flush()
    }

    /// Flushes everything into sled's files and closes the store, removing
    /// its redo log (then empty): for stores written once, backups and
    /// migrations, whose copies need not carry prepared log segments
    /// (32 MiB of zeros). Opening it again starts a new log.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.sync()?;
        let wal_dir = self.dir.join(WAL_DIR);
        drop(self);
        std::fs::remove_dir_all(&wal_dir)?;
        if let Some(parent) = wal_dir.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// The read side of the store.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }
}

/// Flushes sled's files: sled's `flush()` (which syncs with
/// `sync_file_range` only), then `fsync` of its log and of any new blob file
/// (sled writes blobs without syncing them). One thread at a time
/// (concurrent sled flushes lock up, ../shared/SLED.md): a checkpoint
/// thread, or the writer once no checkpoint runs.
struct Flusher {
    db: sled::Db,
    log: Arc<File>,
    blobs: PathBuf,
    synced_blobs: Arc<std::sync::Mutex<HashSet<std::ffi::OsString>>>,
}

impl Flusher {
    /// A flusher of `engine`, whose files are in `dir`.
    fn new(
        engine: &Engine,
        dir: &Path,
        synced_blobs: &Arc<std::sync::Mutex<HashSet<std::ffi::OsString>>>,
    ) -> Flusher {
        Flusher {
            db: engine.db.clone(),
            log: Arc::clone(&engine.log),
            blobs: dir.join("blobs"),
            synced_blobs: Arc::clone(synced_blobs),
        }
    }

    /// Everything applied before the call is then in sled's files.
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.log.sync_all()?;
        sync_blobs(&self.blobs, &self.synced_blobs)
    }
}

/// Applies one logged batch's writes to sled one by one: inserts, then
/// removes, then the batch's LSN (see [`Store::commit_logged`] for why in
/// this order and not as one sled batch).
fn apply_in_order<K, V>(
    tree: &sled::Tree,
    writes: impl IntoIterator<Item = (K, Option<V>)>,
    lsn: u64,
) -> Result<(), StoreError>
where
    K: AsRef<[u8]>,
    V: Into<sled::IVec>,
{
    let mut removes = Vec::new();
    for (k, v) in writes {
        match v {
            Some(v) => {
                tree.insert(k.as_ref(), v)?;
            }
            None => removes.push(k),
        }
    }
    for k in removes {
        tree.remove(k.as_ref())?;
    }
    tree.insert([LSN], &lsn.to_be_bytes()[..])?;
    Ok(())
}

/// fsyncs blob files not synced yet (sled writes them without syncing).
fn sync_blobs(
    blobs: &Path,
    synced_blobs: &std::sync::Mutex<HashSet<std::ffi::OsString>>,
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

/// A read-only view of the store, cloneable into request handlers. It
/// follows the store through reopens.
#[derive(Clone)]
pub struct Reader {
    shared: Arc<RwLock<Option<sled::Tree>>>,
    /// Long reads in progress (see [`Reader::long_read`]).
    long_reads: Arc<AtomicUsize>,
}

/// A long read (a backup) in progress, until dropped: meanwhile the engine
/// is not reopened for a fresh snapshot, which could not close a database
/// the long read keeps open (see [`Store::refresh_snapshot`]).
pub struct LongRead(Arc<AtomicUsize>);

impl Drop for LongRead {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An iterator over the results of a scan, or over the one error that kept
/// the scan from starting.
fn scan<T, I>(
    tree: Result<sled::Tree, StoreError>,
    f: impl FnOnce(sled::Tree) -> I,
) -> impl DoubleEndedIterator<Item = Result<T, StoreError>>
where
    I: DoubleEndedIterator<Item = Result<T, StoreError>>,
{
    let (err, tree) = match tree {
        Ok(t) => (None, Some(t)),
        Err(e) => (Some(Err(e)), None),
    };
    err.into_iter().chain(tree.map(f).into_iter().flatten())
}

impl Reader {
    /// A reader fixed to the current engine: it does not follow a reopen,
    /// so a query that makes several reads (an index scan, then the events
    /// it names) sees one database and never waits for a reopen halfway;
    /// a reopen in turn waits the few milliseconds until it is dropped
    /// (see [`Store::refresh_snapshot`]).
    pub fn pinned(&self) -> Result<Reader, StoreError> {
        Ok(Reader {
            shared: Arc::new(RwLock::new(Some(self.tree()?))),
            long_reads: Arc::clone(&self.long_reads),
        })
    }

    /// Marks a long read in progress until the guard is dropped.
    pub fn long_read(&self) -> LongRead {
        self.long_reads.fetch_add(1, Ordering::SeqCst);
        LongRead(Arc::clone(&self.long_reads))
    }

    /// The current tree (a cheap handle).
    fn tree(&self) -> Result<sled::Tree, StoreError> {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }

    /// Every portal record, in portal-number order: its tables and its
    /// counters concatenated (see [`PortalRecord::to_split_bytes`]); a
    /// version-1 record is whole under `P`, with no counters key.
    pub fn portals(&self) -> Result<Vec<PortalRecord>, StoreError> {
        let tree = self.tree()?;
        tree.scan_prefix([PORTAL])
            .map(|kv| {
                let (k, fixed) = kv?;
                let mut bytes = fixed.to_vec();
                if let Some(c) = tree.get([&[COUNTERS][..], &k[1..]].concat())? {
                    bytes.extend_from_slice(&c);
                }
                PortalRecord::from_bytes(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// Every key of one portal (events, entity index, dedup keys, summaries,
    /// and its portal record), with its value.
    pub fn portal_keys(
        &self,
        portal: PortalIx,
    ) -> impl Iterator<Item = Result<(Key, KeyKind, Vec<u8>), StoreError>> + '_ {
        scan(self.tree(), move |tree| {
            [TAIL, BLOCK, CHUNK, DEDUP, SUMMARY, PORTAL, COUNTERS]
                .into_iter()
                .flat_map(move |prefix| tree.scan_prefix(key(prefix, portal, &[])))
                .map(|kv| {
                    let (k, v) = kv?;
                    let kind = classify(&k, &v);
                    Ok((Key(k.to_vec()), kind, v.to_vec()))
                })
        })
    }

    /// Every key in the store, in key order, classified.
    pub fn all_keys(
        &self,
    ) -> impl Iterator<Item = Result<(Key, KeyKind, Vec<u8>), StoreError>> + '_ {
        scan(self.tree(), |tree| {
            tree.iter().map(|kv| {
                let (k, v) = kv?;
                let kind = classify(&k, &v);
                Ok((Key(k.to_vec()), kind, v.to_vec()))
            })
        })
    }

    /// Every registration, by member id.
    pub fn registrations(&self) -> Result<Vec<Registration>, StoreError> {
        self.tree()?
            .scan_prefix([REGISTRATION])
            .values()
            .map(|v| {
                let v = v?;
                Registration::from_bytes(&v).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// The seq that holds `dedup` in `portal`, if any.
    pub fn dedup(&self, portal: PortalIx, dedup: &DedupKey) -> Result<Option<u64>, StoreError> {
        match self.tree()?.get(key(DEDUP, portal, &[dedup]))? {
            None => Ok(None),
            Some(v) => seq_suffix(&v).map(Some),
        }
    }

    /// The encoded event `seq` of `portal`, wherever it lives.
    pub fn event(&self, portal: PortalIx, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut scan = SeqScan::new(self.tree(), portal, seq, seq);
        scan.next()
            .transpose()
            .map(|found| found.map(|(_, bytes)| bytes))
    }

    /// Events of `portal` with seq in `lo..=hi`, oldest first (`.rev()` for
    /// newest first); seqs that are gone are skipped. `hi` must not exceed
    /// the portal's last seq written to the engine (see [`SeqScan`]): the
    /// scan takes every seq up to `sealed_upto(hi)` to be in a block.
    pub fn events(&self, portal: PortalIx, lo: u64, hi: u64) -> SeqScan {
        SeqScan::new(self.tree(), portal, lo, hi)
    }

    /// Event `seq` of `portal` if it is in the unsealed tail.
    pub fn tail_event(&self, portal: PortalIx, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree()?
            .get(key(TAIL, portal, &[&seq.to_be_bytes()]))?
            .map(|v| v.to_vec()))
    }

    /// The unsealed tail of `portal`: (seq, encoded event), oldest first.
    pub fn tail(&self, portal: PortalIx) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.tree()?
            .scan_prefix(key(TAIL, portal, &[]))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((seq_suffix(&k)?, v.to_vec()))
            })
            .collect()
    }

    /// The raw bytes of sealed block `block` of `portal`.
    pub fn block(&self, portal: PortalIx, block: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree()?
            .get(key(BLOCK, portal, &[&block.to_be_bytes()]))?
            .map(|v| v.to_vec()))
    }

    /// The chunks of `entity` in `portal` whose first seq is `<= hi`, oldest
    /// first: (first seq, entries).
    pub fn chunks(
        &self,
        portal: PortalIx,
        entity: &str,
        hi: u64,
    ) -> impl DoubleEndedIterator<Item = Result<(u64, Vec<ChunkEntry>), StoreError>> {
        let lo = chunk_key(portal, entity, 0);
        let hi = chunk_key(portal, entity, hi);
        scan(self.tree(), move |tree| {
            tree.range(lo..=hi).map(|kv| {
                let (k, v) = kv?;
                let first = seq_suffix(&k)?;
                Ok((first, pack::decode_chunk(first, &v)?))
            })
        })
    }

    /// The newest chunk of `entity` in `portal`, if any.
    pub fn newest_chunk(
        &self,
        portal: PortalIx,
        entity: &str,
    ) -> Result<Option<(u64, Vec<ChunkEntry>)>, StoreError> {
        self.chunks(portal, entity, u64::MAX)
            .next_back()
            .transpose()
    }

    /// Seqs of `portal`'s events about `entity` with seq in `lo..=hi`,
    /// oldest first (`.rev()` for newest first): the sealed ones from the
    /// entity index, the rest from the tail.
    pub fn entity(
        &self,
        portal: PortalIx,
        entity: &str,
        lo: u64,
        hi: u64,
    ) -> impl DoubleEndedIterator<Item = Result<u64, StoreError>> {
        let found = self.entity_seqs(portal, entity, lo, hi);
        let (err, seqs) = match found {
            Ok(seqs) => (None, seqs),
            Err(e) => (Some(Err(e)), Vec::new()),
        };
        err.into_iter().chain(seqs.into_iter().map(Ok))
    }

    fn entity_seqs(
        &self,
        portal: PortalIx,
        entity: &str,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<u64>, StoreError> {
        // The tail first: a block sealed meanwhile moves events from the tail
        // into the index, so reading in this order can see an event twice
        // (removed below) but never miss one.
        let mut seqs = Vec::new();
        for (seq, bytes) in self.tail(portal)? {
            if (lo..=hi).contains(&seq) {
                let (rec, _) = EventRecord::from_bytes(&bytes)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if rec.entity_id.as_deref() == Some(entity) {
                    seqs.push(seq);
                }
            }
        }
        let mut sealed = Vec::new();
        for chunk in self.chunks(portal, entity, hi) {
            let (_, entries) = chunk?;
            sealed.extend(
                entries
                    .into_iter()
                    .map(|e| e.seq)
                    .filter(|s| (lo..=hi).contains(s)),
            );
        }
        sealed.extend(seqs);
        sealed.sort_unstable();
        sealed.dedup();
        Ok(sealed)
    }

    /// Events of `portal` in the version-1 layout (one `E` item per event),
    /// oldest first. Read only by `migrate`.
    pub fn v1_events(
        &self,
        portal: PortalIx,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> {
        scan(self.tree(), move |tree| {
            tree.scan_prefix(key(V1_EVENT, portal, &[])).map(|kv| {
                let (k, v) = kv?;
                Ok((seq_suffix(&k)?, v.to_vec()))
            })
        })
    }

    /// `portal`'s span summaries numbered `<= upper`, newest first.
    pub fn summaries_desc(
        &self,
        portal: PortalIx,
        upper: u64,
    ) -> impl Iterator<Item = Result<SpanSummary, StoreError>> + '_ {
        let lo = key(SUMMARY, portal, &[&0u64.to_be_bytes()]);
        let hi = key(SUMMARY, portal, &[&upper.to_be_bytes()]);
        scan(self.tree(), move |tree| {
            tree.range(lo..=hi).rev().map(|kv| {
                let (k, v) = kv?;
                if v.len() != 16 {
                    return Err(StoreError::Corrupt("summary value length".into()));
                }
                let mut min = [0u8; 8];
                let mut max = [0u8; 8];
                min.copy_from_slice(&v[..8]);
                max.copy_from_slice(&v[8..]);
                Ok(SpanSummary {
                    span: seq_suffix(&k)?,
                    min_ts: u64::from_be_bytes(min),
                    max_ts: u64::from_be_bytes(max),
                })
            })
        })
    }
}

/// Where one seq was found.
enum Lookup {
    Found(Vec<u8>),
    /// An empty entry in a block: the event was deleted before sealing.
    Gone,
    /// Neither a tail item nor its block: deleted (retention keeps a prefix,
    /// so everything below is gone too).
    BlockGone(u64),
}

/// Iterator over a portal's events by seq, both directions.
///
/// `hi` must not exceed the portal's last seq written to the engine: then
/// every seq up to `sealed_upto(hi)` is in a sealed block (the write that
/// fills a block seals it), and only the seqs above can be tail items. Those
/// are looked up in the tail first and then in their block: a seal writes
/// the block before it removes the tail items, so in that order a
/// concurrent seal cannot hide an event.
///
/// The tail part is read with one range scan, not one `get` per seq: a
/// latest-50 page is mostly tail items, and a sled `get` walks the tree from
/// its root each time (per-seq gets were ~30 % of the CPU of a latest-50
/// query, perf on a 10M-event journal).
pub struct SeqScan {
    tree: Option<sled::Tree>,
    err: Option<StoreError>,
    portal: PortalIx,
    lo: u64,
    hi: u64,
    /// The `hi` the scan started with (`hi` moves as a reverse scan goes);
    /// seqs up to `sealed_upto(top)` are in sealed blocks.
    top: u64,
    /// Whether the scan is of one seq.
    point: bool,
    /// The tail items above `sealed_upto(top)`, once read.
    tail: Option<Vec<(u64, sled::IVec)>>,
    /// The last block read.
    cache: Option<CachedBlock>,
}

/// A block held by a [`SeqScan`]: its number, bytes, and the byte range of
/// each entry.
struct CachedBlock {
    block: u64,
    bytes: sled::IVec,
    ranges: Vec<(usize, usize)>,
}

impl SeqScan {
    fn new(tree: Result<sled::Tree, StoreError>, portal: PortalIx, lo: u64, hi: u64) -> Self {
        let (tree, err) = match tree {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        SeqScan {
            tree,
            err,
            portal,
            lo: lo.max(1),
            hi,
            top: hi,
            point: lo.max(1) == hi,
            tail: None,
            cache: None,
        }
    }

    /// The tail items with seqs in `sealed_upto(top) + 1 ..= top` as of now, read once
    /// (fewer than [`pack::BLOCK_SPAN`]). A seq missing here that a caller
    /// may read was sealed (or deleted) before this read, so its block is
    /// where to look.
    fn tail_items(&mut self, tree: &sled::Tree) -> Result<&[(u64, sled::IVec)], StoreError> {
        if self.tail.is_none() {
            let sealed = pack::sealed_upto(self.top);
            let from = key(TAIL, self.portal, &[&(sealed + 1).to_be_bytes()]);
            let to = key(TAIL, self.portal, &[&self.top.to_be_bytes()]);
            let items = tree
                .range(from..=to)
                .map(|kv| {
                    let (k, v) = kv?;
                    Ok((seq_suffix(&k)?, v))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            self.tail = Some(items);
        }
        Ok(self.tail.as_deref().unwrap_or_default())
    }

    fn cached(&self, seq: u64) -> Option<Lookup> {
        let c = self.cache.as_ref()?;
        if c.block != pack::event_block(seq) {
            return None;
        }
        // In range: decode_block checked there are BLOCK_SPAN entries.
        let (from, to) = c.ranges[((seq - 1) % pack::BLOCK_SPAN) as usize];
        Some(if from == to {
            Lookup::Gone
        } else {
            Lookup::Found(c.bytes[from..to].to_vec())
        })
    }

    fn lookup(&mut self, tree: &sled::Tree, seq: u64) -> Result<Lookup, StoreError> {
        if let Some(found) = self.cached(seq) {
            return Ok(found);
        }
        if seq > pack::sealed_upto(self.top) {
            if self.point {
                // A one-seq scan (`Reader::event`): a point lookup is cheaper
                // than a range scan.
                if let Some(v) = tree.get(key(TAIL, self.portal, &[&seq.to_be_bytes()]))? {
                    return Ok(Lookup::Found(v.to_vec()));
                }
            } else {
                let tail = self.tail_items(tree)?;
                if let Ok(at) = tail.binary_search_by_key(&seq, |(s, _)| *s) {
                    return Ok(Lookup::Found(tail[at].1.to_vec()));
                }
            }
        }
        let block = pack::event_block(seq);
        let Some(bytes) = tree.get(key(BLOCK, self.portal, &[&block.to_be_bytes()]))? else {
            return Ok(Lookup::BlockGone(block));
        };
        let base = bytes.as_ptr() as usize;
        let ranges = pack::decode_block(&bytes)?
            .into_iter()
            .map(|e| {
                let from = e.as_ptr() as usize - base;
                (from, from + e.len())
            })
            .collect();
        self.cache = Some(CachedBlock {
            block,
            bytes,
            ranges,
        });
        // Just cached: present.
        Ok(self.cached(seq).unwrap_or(Lookup::Gone))
    }

    fn step(&mut self, forward: bool) -> Option<Result<(u64, Vec<u8>), StoreError>> {
        if let Some(e) = self.err.take() {
            self.lo = 1;
            self.hi = 0;
            return Some(Err(e));
        }
        let tree = self.tree.clone()?;
        while self.lo <= self.hi {
            let seq = if forward { self.lo } else { self.hi };
            if forward {
                self.lo += 1;
            } else {
                self.hi -= 1;
            }
            match self.lookup(&tree, seq) {
                Ok(Lookup::Found(bytes)) => return Some(Ok((seq, bytes))),
                Ok(Lookup::Gone) => {}
                Ok(Lookup::BlockGone(block)) => {
                    if forward {
                        self.lo = self.lo.max(pack::event_block_first(block + 1));
                    } else {
                        self.hi = 0;
                    }
                }
                Err(e) => {
                    self.lo = 1;
                    self.hi = 0;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

impl Iterator for SeqScan {
    type Item = Result<(u64, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

impl DoubleEndedIterator for SeqScan {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Reads what a key is from its bytes.
fn classify(k: &[u8], v: &[u8]) -> KeyKind {
    let portal = || be_u32(k.get(1..)?);
    let parsed = match k.first() {
        Some(&TAIL) if k.len() == 13 => portal()
            .zip(be_u64(&k[5..]))
            .map(|(portal, seq)| KeyKind::Tail { portal, seq }),
        Some(&BLOCK) if k.len() == 13 => portal()
            .zip(be_u64(&k[5..]))
            .map(|(portal, block)| KeyKind::Block { portal, block }),
        Some(&CHUNK) if k.len() >= 15 => {
            let len = k[5] as usize;
            match (
                portal(),
                k.get(6..6 + len),
                k.get(6 + len..).and_then(be_u64),
            ) {
                (Some(portal), Some(entity), Some(first)) if k.len() == 14 + len => {
                    std::str::from_utf8(entity).ok().map(|e| KeyKind::Chunk {
                        portal,
                        entity: e.to_owned(),
                        first,
                    })
                }
                _ => None,
            }
        }
        Some(&DEDUP) if k.len() == 21 => match (portal(), be_u64(v)) {
            (Some(portal), Some(seq)) => {
                let mut digest = [0u8; 16];
                digest.copy_from_slice(&k[5..]);
                Some(KeyKind::Dedup {
                    portal,
                    digest,
                    seq,
                })
            }
            _ => None,
        },
        Some(&SUMMARY) if k.len() == 13 && v.len() == 16 => {
            match (portal(), be_u64(&k[5..]), be_u64(v), be_u64(&v[8..])) {
                (Some(portal), Some(span), Some(min_ts), Some(max_ts)) => Some(KeyKind::Summary {
                    portal,
                    summary: SpanSummary {
                        span,
                        min_ts,
                        max_ts,
                    },
                }),
                _ => None,
            }
        }
        Some(&PORTAL | &COUNTERS) if k.len() == 5 => portal().map(KeyKind::Portal),
        Some(&REGISTRATION) => Some(KeyKind::Registration),
        Some(&HEALTH) if k.len() == 1 => Some(KeyKind::Health),
        Some(&LSN) if k.len() == 1 && v.len() == 8 => Some(KeyKind::Lsn),
        _ => None,
    };
    parsed.unwrap_or(KeyKind::Unknown)
}

/// fsyncs a directory, making the entries of files created in it durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    const CACHE: u64 = 8 << 20;

    #[test]
    fn writes_sled_lost_come_back_from_the_redo_log() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let mut store = Store::open(&live, CACHE).unwrap();
        let mut first = WriteBatch::default();
        first.put_tail(7, 0, b"zero".to_vec());
        store.commit(first).unwrap();
        // sled's files as they are after a full flush: what a power cut
        // leaves when nothing later reached them.
        let crashed = dir.path().join("crashed");
        copy_dir(&live, &crashed);
        for seq in 1..=3u64 {
            let mut b = WriteBatch::default();
            b.put_tail(7, seq, vec![seq as u8; 3]);
            if seq == 3 {
                b.delete_tail(7, 0);
            }
            // Durable in the redo log only.
            store.commit_logged(b).unwrap();
        }
        std::fs::remove_dir_all(crashed.join(WAL_DIR)).unwrap();
        copy_dir(&live.join(WAL_DIR), &crashed.join(WAL_DIR));
        drop(store);

        let store = Store::open(&crashed, CACHE).unwrap();
        let tail = store.reader().tail(7).unwrap();
        assert_eq!(
            tail,
            vec![(1, vec![1; 3]), (2, vec![2; 3]), (3, vec![3; 3])]
        );
        assert_eq!(store.engine().unwrap().applied_lsn().unwrap(), 4);
        assert_eq!(store.next_lsn, 5);
        // Opening replayed, flushed and dropped the old log: a second open
        // finds nothing to apply and the same state.
        drop(store);
        let found = wal::read(&crashed.join(WAL_DIR)).unwrap();
        assert!(found.records.is_empty(), "{found:?}");
        let store = Store::open(&crashed, CACHE).unwrap();
        assert_eq!(store.reader().tail(7).unwrap().len(), 3);
    }

    #[test]
    fn open_waits_for_a_lock_that_is_let_go_and_reports_one_that_is_not() {
        use fs2::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let engine = dir.path().join("sled");
        Store::open(&engine, CACHE).unwrap().close().unwrap();
        // Held for a moment, as sled's I/O thread does after a close.
        let held = File::open(engine.join("db")).unwrap();
        held.try_lock_exclusive().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(held);
        });
        Store::open(&engine, CACHE).unwrap().close().unwrap();
        release.join().unwrap();
        // Held for good, as by a running service: sled's error.
        let held = File::open(engine.join("db")).unwrap();
        held.try_lock_exclusive().unwrap();
        let err = Store::open(&engine, CACHE).err().expect("locked files");
        assert!(err.to_string().contains("could not acquire lock"), "{err}");
    }

    #[test]
    fn replay_skips_what_sled_holds_and_refuses_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let engine = dir.path().join("sled");
        let mut store = Store::open(&engine, CACHE).unwrap();
        for value in [b"one", b"two"] {
            let mut b = WriteBatch::default();
            b.put_tail(1, 0, value.to_vec());
            store.commit(b).unwrap();
        }
        drop(store);
        // An older record than sled holds (LSN 1 of 2) must not undo the
        // newer write.
        let mut writes = Vec::new();
        wal::encode_insert(&mut writes, &key(TAIL, 1, &[&0u64.to_be_bytes()]), b"one");
        let log = Wal::start(&engine.join(WAL_DIR), 100).unwrap();
        log.append(1, &writes);
        log.sync().unwrap();
        drop(log);
        let store = Store::open(&engine, CACHE).unwrap();
        assert_eq!(store.reader().tail(1).unwrap(), vec![(0, b"two".to_vec())]);
        drop(store);

        // A record past a hole (sled holds LSN 2, the log starts at 4).
        let log = Wal::start(&engine.join(WAL_DIR), 200).unwrap();
        log.append(4, &writes);
        log.sync().unwrap();
        drop(log);
        let err = Store::open(&engine, CACHE)
            .err()
            .expect("a gap must not open");
        assert!(err.to_string().contains("jumps from LSN 2"), "{err}");
    }

    fn snapshots(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with("snap."))
            .collect();
        names.sort();
        names
    }

    /// A store in `dir/live` that is due a snapshot refresh after its one
    /// logged batch (portal 7, seq 0, "zero").
    fn store_due_a_refresh(dir: &Path) -> (PathBuf, Store) {
        let live = dir.join("live");
        let mut store = Store::open(&live, CACHE).unwrap();
        store.set_snapshot_every(1);
        assert!(!store.snapshot_due());
        let mut b = WriteBatch::default();
        b.put_tail(7, 0, b"zero".to_vec());
        store.commit_logged(b).unwrap();
        assert!(store.snapshot_due());
        (live, store)
    }

    #[test]
    fn a_snapshot_refresh_keeps_every_write_and_the_redo_log_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        let (live, mut store) = store_due_a_refresh(dir.path());
        let before = snapshots(&live);
        // A reader handed out before the refresh follows the new engine.
        let reader = store.reader().clone();
        // Postponed while a long read (a backup) is in progress.
        let long = store.reader().long_read();
        assert!(!store.refresh_snapshot().unwrap());
        assert!(store.snapshot_due());
        assert_eq!(snapshots(&live), before);
        drop(long);
        assert!(store.refresh_snapshot().unwrap());
        assert!(!store.snapshot_due());
        let after = snapshots(&live);
        assert_ne!(before, after, "sled wrote a new snapshot");
        assert_eq!(reader.tail(7).unwrap(), vec![(0, b"zero".to_vec())]);

        // sled's files as the refresh left them, then a batch durable in the
        // redo log only: the log went on after the refresh, so a crash now
        // loses nothing.
        let crashed = dir.path().join("crashed");
        copy_dir(&live, &crashed);
        let mut b = WriteBatch::default();
        b.put_tail(7, 1, b"one".to_vec());
        store.commit_logged(b).unwrap();
        std::fs::remove_dir_all(crashed.join(WAL_DIR)).unwrap();
        copy_dir(&live.join(WAL_DIR), &crashed.join(WAL_DIR));
        drop(store);
        let store = Store::open(&crashed, CACHE).unwrap();
        assert_eq!(
            store.reader().tail(7).unwrap(),
            vec![(0, b"zero".to_vec()), (1, b"one".to_vec())]
        );
        assert_eq!(store.next_lsn, 3);
    }

    #[test]
    fn a_pinned_reader_finishes_its_reads_across_a_snapshot_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut store) = store_due_a_refresh(dir.path());
        // A query: pins the engine, reads, pauses while the refresh starts,
        // then reads again (as an index scan followed by the events it
        // names does).
        let reader = store.reader().clone();
        let (pinned_tx, pinned_rx) = std::sync::mpsc::channel();
        let query = std::thread::spawn(move || {
            let pinned = reader.pinned().unwrap();
            // An open scan holds the engine, like an index scan in flight.
            let scan = pinned.events(7, 0, 10);
            let first = pinned.tail(7).unwrap();
            pinned_tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(60));
            let second = pinned.tail(7);
            drop(scan);
            (first, second)
        });
        pinned_rx.recv().unwrap();
        assert!(store.refresh_snapshot().unwrap());
        let (first, second) = query.join().unwrap();
        assert_eq!(first, vec![(0, b"zero".to_vec())]);
        assert_eq!(
            second.unwrap(),
            first,
            "the second read saw the same engine"
        );
        assert_eq!(store.reader().tail(7).unwrap(), first);
    }

    /// The value stored for `seq` in the scan tests.
    fn ev(seq: u64) -> Vec<u8> {
        format!("event {seq}").into_bytes()
    }

    /// Block `block` of the scan tests, with seqs in `gone` empty and seqs
    /// above `last` absent (empty) too.
    fn test_block(block: u64, last: u64, gone: &[u64]) -> Vec<u8> {
        let first = pack::event_block_first(block);
        let values: Vec<Vec<u8>> = (first..first + pack::BLOCK_SPAN)
            .map(|seq| {
                if seq > last || gone.contains(&seq) {
                    Vec::new()
                } else {
                    ev(seq)
                }
            })
            .collect();
        pack::encode_block(&values.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    fn seqs(scan: impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>>) -> Vec<u64> {
        scan.map(|r| {
            let (seq, bytes) = r.unwrap();
            assert_eq!(bytes, ev(seq), "the bytes of seq {seq}");
            seq
        })
        .collect()
    }

    #[test]
    fn seq_scans_read_tail_and_blocks_both_ways_and_across_a_seal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), CACHE).unwrap();
        // Block 0 sealed (seq 10 deleted before sealing), 65..=70 in the tail.
        let mut b = WriteBatch::default();
        b.put_block(7, 0, test_block(0, 64, &[10]));
        for seq in 65..=70 {
            b.put_tail(7, seq, ev(seq));
        }
        // Another portal's tail right next to it in key order.
        b.put_tail(8, 1, b"other".to_vec());
        store.commit(b).unwrap();
        let reader = store.reader().clone();
        let all: Vec<u64> = (1..=70).filter(|s| *s != 10).collect();
        let newest_first: Vec<u64> = all.iter().rev().copied().collect();
        assert_eq!(seqs(reader.events(7, 1, 70)), all);
        assert_eq!(seqs(reader.events(7, 1, 70).rev()), newest_first);
        assert_eq!(
            seqs(reader.events(7, 60, 66).rev()),
            vec![66, 65, 64, 63, 62, 61, 60]
        );
        assert_eq!(seqs(reader.events(7, 66, 68)), vec![66, 67, 68]);
        assert_eq!(reader.event(7, 65).unwrap(), Some(ev(65)));
        assert_eq!(reader.event(7, 64).unwrap(), Some(ev(64)));
        assert_eq!(reader.event(7, 10).unwrap(), None);

        // A scan that has read the tail, then a seal moves the tail into
        // block 1 (block first, tail items removed after, as the writer
        // applies them): the scan still returns every event once.
        let mut during = reader.events(7, 1, 70).rev();
        assert_eq!(during.next().unwrap().unwrap().0, 70);
        let mut seal = WriteBatch::default();
        seal.put_block(7, 1, test_block(1, 70, &[]));
        for seq in 65..=70 {
            seal.delete_tail(7, seq);
        }
        store.commit(seal).unwrap();
        let mut rest = vec![70];
        rest.extend(seqs(during));
        assert_eq!(rest, newest_first);
        // Scans started after the seal find the moved events in the block.
        assert_eq!(seqs(reader.events(7, 1, 70).rev()), newest_first);
        assert_eq!(seqs(reader.events(7, 1, 70)), all);
        assert_eq!(reader.tail(8).unwrap(), vec![(1, b"other".to_vec())]);
    }
}
