//! The memtable: the writes that live in memory and in the redo log rather
//! than in sled (the log-only and deferred tiers, see `log.rs`), shared by
//! the writer and every reader.
//!
//! The log-only writes are the unsealed tails: an event is written to sled
//! once, in its sealed block, instead of once as a tail item and again to
//! delete it. The deferred writes are the portal counters, which nearly
//! every batch changes: sled gets them at checkpoints only.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeInclusive};
use std::sync::{Mutex, RwLock};

use super::log::{self, Tier};

/// A deferred write: the value, or `None` for a remove.
type Deferred = Option<Vec<u8>>;

/// The log-only writes, by key.
type LogOnly = BTreeMap<Box<[u8]>, Box<[u8]>>;

/// The deferred writes, by key.
type DeferredWrites = BTreeMap<Vec<u8>, Deferred>;

/// The log-only and deferred writes of one store.
#[derive(Default)]
pub(super) struct Memtable {
    /// Log-only writes (the unsealed tails' events), by key.
    log_only: RwLock<LogOnly>,
    /// Deferred writes not yet written to sled, by key.
    deferred: Mutex<DeferredWrites>,
}

impl Memtable {
    fn read_log_only(&self) -> std::sync::RwLockReadGuard<'_, LogOnly> {
        // A poisoned lock means a thread panicked holding it; the map
        // itself is whole (every change is one insert or remove).
        self.log_only.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_log_only(&self) -> std::sync::RwLockWriteGuard<'_, LogOnly> {
        self.log_only.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_deferred(&self) -> std::sync::MutexGuard<'_, DeferredWrites> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log-only value of `key`, copied.
    pub(super) fn log_only(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.read_log_only().get(key).map(|v| v.to_vec())
    }

    /// The log-only writes with keys in `range`, in key order, copied.
    pub(super) fn log_only_range(&self, range: RangeInclusive<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let bounds = (
            Bound::Included(*range.start()),
            Bound::Included(*range.end()),
        );
        self.read_log_only()
            .range::<[u8], _>(bounds)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    /// The deferred write of `key` not yet in sled: `Some(None)` for a
    /// remove, `None` if there is none (sled holds the value).
    pub(super) fn deferred(&self, key: &[u8]) -> Option<Deferred> {
        self.lock_deferred().get(key).cloned()
    }

    /// Applies one write of the log-only or deferred tier.
    pub(super) fn apply(&self, tier: Tier, key: &[u8], value: Option<&[u8]>) {
        match tier {
            Tier::LogOnly => {
                let mut map = self.write_log_only();
                match value {
                    Some(v) => {
                        map.insert(key.into(), v.into());
                    }
                    None => {
                        map.remove(key);
                    }
                }
            }
            Tier::Deferred => {
                self.lock_deferred()
                    .insert(key.to_vec(), value.map(<[u8]>::to_vec));
            }
            // Engine writes go to sled (the callers split them off first).
            Tier::Engine => {}
        }
    }

    /// Applies several log-only writes under one lock.
    pub(super) fn apply_log_only<'a>(
        &self,
        writes: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) {
        let mut map = self.write_log_only();
        for (key, value) in writes {
            match value {
                Some(v) => {
                    map.insert(key.into(), v.into());
                }
                None => {
                    map.remove(key);
                }
            }
        }
    }

    /// Forgets every log-only write (a snapshot record follows in the log).
    pub(super) fn clear_log_only(&self) {
        self.write_log_only().clear();
    }

    /// The log-only writes encoded as the inserts of a snapshot record (see
    /// `log::RedoLog::start`); empty when there are none.
    pub(super) fn snapshot(&self) -> Vec<u8> {
        let map = self.read_log_only();
        let mut out = Vec::with_capacity(map.iter().map(|(k, v)| k.len() + v.len() + 9).sum());
        for (k, v) in map.iter() {
            log::encode_insert(&mut out, Tier::LogOnly, k, v);
        }
        out
    }

    /// Every deferred write, in key order, copied: the caller writes them
    /// to sled, then calls [`Memtable::settled`]. They stay here meanwhile,
    /// so that a reader never finds a key in neither place.
    pub(super) fn deferred_writes(&self) -> DeferredWrites {
        self.lock_deferred().clone()
    }

    /// Forgets the deferred writes in `written` that sled now holds,
    /// keeping any newer write of the same key.
    pub(super) fn settled(&self, written: &DeferredWrites) {
        let mut map = self.lock_deferred();
        for (k, v) in written {
            if map.get(k) == Some(v) {
                map.remove(k);
            }
        }
    }

    /// Replaces the whole contents with `other`'s (after a replay, which
    /// rebuilt them from the log), in place: readers keep their handle.
    pub(super) fn replace_with(&self, other: Memtable) {
        let (log_only, deferred) = other.into_parts();
        *self.write_log_only() = log_only;
        *self.lock_deferred() = deferred;
    }

    fn into_parts(self) -> (LogOnly, DeferredWrites) {
        (
            self.log_only
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
            self.deferred
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_hold_the_log_only_writes_and_deferred_ones_are_taken_once() {
        let m = Memtable::default();
        m.apply(Tier::LogOnly, b"T1", Some(b"one"));
        m.apply(Tier::LogOnly, b"T2", Some(b"two"));
        m.apply(Tier::LogOnly, b"T1", None);
        m.apply(Tier::Deferred, b"C1", Some(b"c"));
        assert_eq!(m.log_only(b"T2").as_deref(), Some(&b"two"[..]));
        assert_eq!(m.log_only(b"T1"), None);
        let snap = m.snapshot();
        assert_eq!(
            log::decode_ops(&snap).unwrap(),
            vec![log::Op::Insert(Tier::LogOnly, b"T2", b"two")]
        );
        assert_eq!(m.deferred(b"C1"), Some(Some(b"c".to_vec())));
        m.apply(Tier::Deferred, b"C2", None);
        let written = m.deferred_writes();
        assert_eq!(written.len(), 2);
        // Still readable until settled; a newer write survives settling.
        assert_eq!(m.deferred(b"C1"), Some(Some(b"c".to_vec())));
        m.apply(Tier::Deferred, b"C1", Some(b"newer"));
        m.settled(&written);
        assert_eq!(m.deferred(b"C1"), Some(Some(b"newer".to_vec())));
        assert_eq!(m.deferred(b"C2"), None);
        assert_eq!(
            m.log_only_range(&b"T0"[..]..=&b"T9"[..]),
            vec![(b"T2".to_vec(), b"two".to_vec())]
        );
    }
}
