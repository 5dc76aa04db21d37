//! The read mirror: the sealed blocks and the entity postings items copied
//! into one flat file beside sled, each read back with a single `pread`.
//!
//! A cold sled read pages in a whole leaf (a base and its deltas, two
//! `pread`s each, checksummed and deserialized) to hand out one value; an
//! `entity_id` page reads the postings items of the entity, then one block
//! per event it shows, each usually cold. The mirror answers those reads
//! from a file the OS caches, through an index in memory (one entry per
//! value).
//!
//! sled stays the only truth. The mirror is rebuilt from sled each time the
//! store opens (readers use sled until it is complete), every commit writes
//! its blocks and items through to it before the commit is shown to
//! readers, and a rebuild replaces it once overwritten and deleted values
//! take more than half of its live bytes. On any error, or when the disk
//! gets short of room, it is dropped and reads go back to sled: a mirror
//! problem never fails a commit or a read. Its files are deleted when the
//! store closes.
//!
//! A rebuild reads the values by point lookups, portal by portal, never by
//! a sled range scan: sled 0.34.7's iterator keeps what it pages in, and a
//! scan of every block took the process from 77 to 335 MiB on a 10M-event
//! journal, where point lookups of the same blocks stayed at 85 MiB. The
//! keys come from the portal records (blocks) and the run heads (items);
//! the items of a run whose head was written before heads listed them are
//! not mirrored, and are read from sled.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::StoreError;
use super::keys::{BLOCK, RUN_ITEM};

/// The mirror's directory inside the engine's.
const MIRROR_DIR: &str = "mirror";

/// Blocks a rebuild copies per hold of the tree: each chunk takes it anew,
/// so that an engine reopen never waits for a whole rebuild.
const CHUNK: usize = 512;

/// Free bytes the mirror always leaves on the disk, for the journal's own
/// writes: below this it is dropped rather than grown.
const MIN_FREE: u64 = 256 * 1024 * 1024;

/// Dead bytes that never start a rebuild on their own (small journals).
#[cfg(not(test))]
const MIN_GARBAGE: u64 = 32 * 1024 * 1024;
/// Small in unit tests, so that they see rebuilds.
#[cfg(test)]
const MIN_GARBAGE: u64 = 16 * 1024;

/// Whether the mirror holds values of `key`: sealed blocks and postings
/// items, which the pages of filtered queries read cold.
pub(super) fn mirrored(key: &[u8]) -> bool {
    matches!(key.first(), Some(&BLOCK | &RUN_ITEM))
}

/// What a rebuild reads: the store's reader, seen through what the rebuild
/// needs (the reader reads through the mirror, so the mirror does not name
/// it).
pub(super) trait Source: Clone + Send + 'static {
    /// The key of every value to mirror that sled may hold: the blocks of
    /// every portal's sealed seqs, and the items its live runs' heads list.
    fn mirrored_keys(&self) -> Result<Vec<Vec<u8>>, StoreError>;
    /// The current tree ([`StoreError::Reopening`] during a reopen).
    fn tree(&self) -> Result<sled::Tree, StoreError>;
}

/// Where a value is in a generation's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    At {
        offset: u64,
        len: u32,
    },
    /// Deleted while a rebuild runs: the rebuild must not bring back what
    /// it read before the delete.
    Gone,
}

/// One mirror file and its index.
struct Generation {
    file: File,
    path: PathBuf,
    /// The end of the file, where the next append goes.
    end: Mutex<u64>,
    index: RwLock<Index>,
}

#[derive(Default)]
struct Index {
    slots: BTreeMap<Box<[u8]>, Slot>,
    live: u64,
    garbage: u64,
}

impl Index {
    /// Puts `slot` at `key`, counting what it replaces as garbage.
    fn put(&mut self, key: &[u8], slot: Slot) {
        if let Slot::At { len, .. } = slot {
            self.live += u64::from(len);
        }
        if let Some(Slot::At { len, .. }) = self.slots.insert(key.into(), slot) {
            self.live -= u64::from(len);
            self.garbage += u64::from(len);
        }
    }

    /// Removes `key`'s value (the rebuild's own index keeps a [`Slot::Gone`]).
    fn remove(&mut self, key: &[u8], building: bool) {
        if building {
            self.put(key, Slot::Gone);
        } else if let Some(Slot::At { len, .. }) = self.slots.remove(key) {
            self.live -= u64::from(len);
            self.garbage += u64::from(len);
        }
    }
}

impl Generation {
    fn create(path: PathBuf) -> std::io::Result<Generation> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Generation {
            file,
            path,
            end: Mutex::new(0),
            index: RwLock::new(Index::default()),
        })
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // A poisoned lock means a thread panicked holding it; the index
        // changes one whole entry at a time.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `values` in one write and returns their slots. The bytes are
    /// written before any index entry names them, so a reader never reads
    /// a slot whose bytes are not there yet.
    fn append<'a>(&self, values: impl Iterator<Item = &'a [u8]>) -> std::io::Result<Vec<Slot>> {
        let mut buf = Vec::new();
        let mut lens = Vec::new();
        for v in values {
            buf.extend_from_slice(v);
            lens.push(u32::try_from(v.len()).map_err(std::io::Error::other)?);
        }
        let at = {
            let mut end = self.end.lock().unwrap_or_else(|p| p.into_inner());
            let at = *end;
            *end += buf.len() as u64;
            at
        };
        self.file.write_all_at(&buf, at)?;
        let mut offset = at;
        Ok(lens
            .into_iter()
            .map(|len| {
                let slot = Slot::At { offset, len };
                offset += u64::from(len);
                slot
            })
            .collect())
    }

    fn read(&self, slot: Slot) -> std::io::Result<Option<Vec<u8>>> {
        let Slot::At { offset, len } = slot else {
            return Ok(None);
        };
        let mut buf = vec![0; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Some(buf))
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // Readers that still hold this generation keep its open file; the
        // name goes now.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Default)]
struct State {
    /// What reads use: complete, and written through by every commit.
    current: Option<Arc<Generation>>,
    /// Being filled from sled by a rebuild; written through too.
    building: Option<Arc<Generation>>,
    /// Dropped after an error: no more rebuilds until the store reopens.
    broken: bool,
}

impl State {
    /// Whether `generation` is the one being built (a reset or an error
    /// may have let it go).
    fn building_is(&self, generation: &Arc<Generation>) -> bool {
        self.building
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, generation))
    }

    /// Lets both generations go: reads go to sled.
    fn clear(&mut self) {
        self.current = None;
        self.building = None;
        crate::metrics::metrics().read_mirror_ready.set(0);
    }
}

/// The read mirror of one open store (see the module documentation).
pub struct Mirror {
    dir: PathBuf,
    state: RwLock<State>,
    next: AtomicU64,
    stop: AtomicBool,
    builder: Mutex<Option<JoinHandle<()>>>,
}

impl Mirror {
    /// A mirror in `engine_dir`, empty until [`Mirror::rebuild`], or none
    /// when its directory cannot be made (reads then go to sled). The
    /// files a previous run left are deleted first.
    pub(super) fn start(engine_dir: &Path) -> Option<Arc<Mirror>> {
        Mirror::new(engine_dir)
            .inspect_err(|e| tracing::warn!(error = %e, "no read mirror; reads go to sled"))
            .ok()
    }

    fn new(engine_dir: &Path) -> Result<Arc<Mirror>, StoreError> {
        let dir = engine_dir.join(MIRROR_DIR);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(Mirror {
            dir,
            state: RwLock::new(State::default()),
            next: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            builder: Mutex::new(None),
        }))
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The complete generation reads use, if any.
    fn current(&self) -> Option<Arc<Generation>> {
        self.state().current.clone()
    }

    /// Whether reads are answered from the mirror.
    pub fn ready(&self) -> bool {
        self.state().current.is_some()
    }

    /// Drops the mirror after `e`: reads go to sled from now on.
    fn fail(&self, what: &str, e: &dyn std::fmt::Display) {
        let mut state = self.state_mut();
        if !state.broken {
            tracing::warn!(error = %e, "read mirror dropped ({what}); reads go to sled");
        }
        state.clear();
        state.broken = true;
    }

    /// Whether the disk has room for `more` bytes of mirror beyond
    /// [`MIN_FREE`].
    fn room_for(&self, more: u64) -> bool {
        fs4::available_space(&self.dir).is_ok_and(|free| free >= MIN_FREE + more)
    }

    /// Starts a rebuild from `source` in the background, unless one runs
    /// or the mirror is broken. Readers keep the current generation (or
    /// sled) until it completes.
    pub(super) fn rebuild(self: &Arc<Self>, source: &impl Source) {
        let mut builder = self.builder.lock().unwrap_or_else(|p| p.into_inner());
        if self.stop.load(Ordering::SeqCst) || self.state().building.is_some() {
            return;
        }
        // A rebuild that was reset ends at its next chunk.
        if let Some(old) = builder.take() {
            let _ = old.join();
        }
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let generation = {
            let mut state = self.state_mut();
            if state.broken || state.building.is_some() {
                return;
            }
            match Generation::create(self.dir.join(format!("{n:06}.mirror"))) {
                Ok(g) => {
                    let g = Arc::new(g);
                    state.building = Some(Arc::clone(&g));
                    g
                }
                Err(e) => {
                    drop(state);
                    self.fail("create", &e);
                    return;
                }
            }
        };
        let (mirror, source) = (Arc::clone(self), source.clone());
        let spawned = std::thread::Builder::new()
            .name("read-mirror".into())
            .spawn(move || mirror.fill(&source, &generation));
        match spawned {
            Ok(handle) => *builder = Some(handle),
            Err(e) => {
                drop(builder);
                self.fail("start a rebuild", &e);
            }
        }
    }

    /// The rebuild: copies every mirrored value of sled into `generation`,
    /// a chunk at a time, then makes it current. A value a commit wrote or
    /// deleted meanwhile is already in the index and keeps the commit's
    /// version; one written after the keys were read is written through.
    /// Stops early when the store closes (the store's `Drop` waits for it).
    fn fill(&self, source: &impl Source, generation: &Arc<Generation>) {
        // Background work: the rebuild yields the cores to requests. On
        // Linux the nice value is per thread, and 0 names this one.
        // SAFETY: setpriority reads its three integer arguments only.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
        let t = Instant::now();
        let keys = loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            match source.mirrored_keys() {
                Ok(k) => break k,
                Err(StoreError::Reopening) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return self.fail("rebuild", &e),
            }
        };
        let mut keys = keys.into_iter().peekable();
        while keys.peek().is_some() {
            if self.stop.load(Ordering::SeqCst) || !self.state().building_is(generation) {
                return;
            }
            let tree = match source.tree() {
                Ok(tree) => tree,
                Err(StoreError::Reopening) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return self.fail("rebuild", &e),
            };
            let mut chunk = Vec::with_capacity(CHUNK);
            for k in keys.by_ref().take(CHUNK) {
                match tree.get(&k) {
                    Ok(Some(v)) => chunk.push((k, v)),
                    Ok(None) => {}
                    Err(e) => return self.fail("rebuild", &e),
                }
            }
            drop(tree);
            let bytes: u64 = chunk.iter().map(|(_, v)| v.len() as u64).sum();
            if !self.room_for(bytes) {
                return self.fail("rebuild", &"the disk is short of room");
            }
            let slots = match generation.append(chunk.iter().map(|(_, v)| v.as_ref())) {
                Ok(s) => s,
                Err(e) => return self.fail("rebuild", &e),
            };
            let mut index = generation.write_index();
            for ((k, _), slot) in chunk.iter().zip(slots) {
                if !index.slots.contains_key(k.as_slice()) {
                    index.put(k, slot);
                } else if let Slot::At { len, .. } = slot {
                    index.garbage += u64::from(len);
                }
            }
        }
        let mut state = self.state_mut();
        if !state.building_is(generation) {
            return;
        }
        let (entries, live) = {
            let mut index = generation.write_index();
            index.slots.retain(|_, s| *s != Slot::Gone);
            (index.slots.len(), index.live)
        };
        state.current = state.building.take();
        drop(state);
        crate::metrics::metrics().read_mirror_ready.set(1);
        tracing::info!(
            entries,
            bytes = live,
            ms = t.elapsed().as_millis() as u64,
            "read mirror ready"
        );
    }

    /// Writes a commit's mirrored writes (`None`: deleted) through to every
    /// generation, after sled has them and before readers are shown the
    /// commit; starts a rebuild when the dead bytes outgrow half the live
    /// ones. Never fails: on an error the mirror is dropped.
    pub(super) fn apply(self: &Arc<Self>, source: &impl Source, writes: &[(&[u8], Option<&[u8]>)]) {
        if writes.is_empty() {
            return;
        }
        let generations: Vec<(Arc<Generation>, bool)> = {
            let state = self.state();
            let current = state.current.iter().map(|g| (Arc::clone(g), false));
            current
                .chain(state.building.iter().map(|g| (Arc::clone(g), true)))
                .collect()
        };
        if generations.is_empty() {
            return;
        }
        let bytes: u64 = writes
            .iter()
            .filter_map(|(_, v)| *v)
            .map(|v| v.len() as u64)
            .sum();
        if bytes > 0 && !self.room_for(bytes * generations.len() as u64) {
            return self.fail("write", &"the disk is short of room");
        }
        let mut due = false;
        for (generation, building) in &generations {
            let slots = match generation.append(writes.iter().filter_map(|(_, v)| *v)) {
                Ok(s) => s,
                Err(e) => return self.fail("write", &e),
            };
            let mut slots = slots.into_iter();
            let mut index = generation.write_index();
            for (k, v) in writes {
                match v.and_then(|_| slots.next()) {
                    Some(slot) => index.put(k, slot),
                    None => index.remove(k, *building),
                }
            }
            due |= !building && index.garbage > MIN_GARBAGE.max(index.live / 2);
        }
        if due {
            self.rebuild(source);
        }
    }

    /// The value of mirrored `key`, if the mirror is ready and holds it.
    /// `None`: ask sled. A key the mirror does not hold goes to sled too,
    /// so that the mirror never answers "not stored" on its own (a block
    /// outside every portal's seqs, or an item of a run whose head does
    /// not list it, would not be rebuilt).
    pub(super) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if !mirrored(key) {
            return None;
        }
        let generation = self.current()?;
        let slot = generation.read_index().slots.get(key).copied()?;
        match generation.read(slot) {
            Ok(found) => found,
            Err(e) => {
                self.fail("read", &e);
                None
            }
        }
    }

    /// Forgets everything and rebuilds from sled, after sled's contents
    /// changed without a commit (a reopen that replayed the redo log).
    pub(super) fn reset(self: &Arc<Self>, source: &impl Source) {
        {
            let mut state = self.state_mut();
            state.clear();
            state.broken = false;
        }
        self.rebuild(source);
    }

    /// What the complete generation holds at `key`, read from it alone.
    #[cfg(test)]
    pub(super) fn held(&self, key: &[u8]) -> Option<Vec<u8>> {
        let generation = self.current()?;
        let slot = generation.read_index().slots.get(key).copied()?;
        generation.read(slot).ok().flatten()
    }

    /// The keys the complete generation holds values of, and its file.
    #[cfg(test)]
    pub(super) fn held_keys(&self) -> Option<(Vec<Box<[u8]>>, PathBuf)> {
        let generation = self.current()?;
        let keys = generation
            .read_index()
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::At { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        Some((keys, generation.path.clone()))
    }

    /// Stops a rebuild in progress and waits for it, and deletes the files.
    pub(super) fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let builder = self
            .builder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(b) = builder {
            let _ = b.join();
        }
        self.state_mut().clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
