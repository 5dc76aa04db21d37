//! [`WriteBatch`]: the writes one commit makes, built with the layout's
//! typed setters so that no caller spells a key.

use std::collections::BTreeMap;

use super::codec::postings::{Item, RunHead, RunList};
#[cfg(test)]
use super::keys::V1_EVENT;
use super::keys::{
    key, pull_state_key, registration_key, run_head_key, run_item_key, seq_key, tier, Key, BLOCK,
    COUNTERS, DEDUP, HEALTH, PORTAL, RUNS, SUMMARY, TAIL,
};
use super::log;
use crate::journal::dedup::key::DedupKey;
use crate::journal::pull_state::PullState;
use crate::journal::record::{PortalIx, PortalRecord, SpanSummary};
use crate::journal::registration::Registration;

/// A set of writes, committed together by
/// [`Store::commit_logged`](super::Store::commit_logged) or
/// [`Store::commit`](super::Store::commit). One write per key (the last one
/// made), in key order, as in `sled::Batch`. Where each write lives after
/// the log follows from its key (`keys::tier`).
#[derive(Default)]
pub struct WriteBatch {
    /// Key → value to insert, or `None` to remove.
    pub(super) writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    len: usize,
}

impl WriteBatch {
    pub(super) fn insert(&mut self, key: Vec<u8>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key, Some(value.into()));
        self.len += 1;
    }

    pub(super) fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
        self.len += 1;
    }

    /// The writes encoded for the redo log.
    pub(super) fn encode(&self) -> Vec<u8> {
        let size = self
            .writes
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 9)
            .sum();
        let mut out = Vec::with_capacity(size);
        for (k, v) in &self.writes {
            match v {
                Some(v) => log::encode_insert(&mut out, tier(k), k, v),
                None => log::encode_remove(&mut out, tier(k), k),
            }
        }
        out
    }

    /// Stores an encoded event of the unsealed tail.
    pub fn put_tail(&mut self, portal: PortalIx, seq: u64, value: Vec<u8>) {
        self.insert(seq_key(TAIL, portal, seq), value);
    }

    /// Deletes a tail event (sealed into a block, or retention).
    pub fn delete_tail(&mut self, portal: PortalIx, seq: u64) {
        self.remove(seq_key(TAIL, portal, seq));
    }

    /// Stores an encoded block (see [`codec::encode_block`]).
    pub fn put_block(&mut self, portal: PortalIx, block: u64, value: Vec<u8>) {
        self.insert(seq_key(BLOCK, portal, block), value);
    }

    /// Deletes a block (retention).
    pub fn delete_block(&mut self, portal: PortalIx, block: u64) {
        self.remove(seq_key(BLOCK, portal, block));
    }

    /// Stores an item of postings run `run`.
    pub fn put_run_item(&mut self, portal: PortalIx, run: u32, item: Item) {
        self.insert(
            run_item_key(portal, run, item.entity.as_bytes(), item.seq),
            item.bytes,
        );
    }

    /// Deletes an item of postings run `run` (one written in the same
    /// batch; stored runs are deleted by the keys
    /// [`Reader::run_keys`](super::Reader::run_keys) finds).
    pub fn delete_run_item(&mut self, portal: PortalIx, run: u32, item: &Item) {
        self.remove(run_item_key(portal, run, item.entity.as_bytes(), item.seq));
    }

    /// Stores the head of postings run `run`.
    pub fn put_run_head(&mut self, portal: PortalIx, run: u32, head: &RunHead) {
        self.insert(run_head_key(portal, run), head.to_bytes());
    }

    /// Deletes the head of postings run `run` (its items are deleted by
    /// key, as [`Reader::run_keys`](super::Reader::run_keys) finds them).
    pub fn delete_run_head(&mut self, portal: PortalIx, run: u32) {
        self.remove(run_head_key(portal, run));
    }

    /// Stores a portal's list of postings runs.
    pub fn put_runs(&mut self, portal: PortalIx, runs: &RunList) {
        self.insert(key(RUNS, portal, &[]), runs.to_bytes());
    }

    /// Stores the `ts` range of a summary block.
    pub fn put_summary(&mut self, portal: PortalIx, s: &SpanSummary) {
        let mut v = s.min_ts.to_be_bytes().to_vec();
        v.extend_from_slice(&s.max_ts.to_be_bytes());
        self.insert(seq_key(SUMMARY, portal, s.span), v);
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
        self.insert(registration_key(&reg.member_id), reg.to_bytes());
    }

    /// Stores a portal's offline pull state.
    pub fn put_pull_state(&mut self, state: &PullState) {
        self.insert(pull_state_key(&state.member_id), state.to_bytes());
    }

    /// Removes a portal's offline pull state.
    pub fn remove_pull_state(&mut self, member_id: &str) {
        self.remove(pull_state_key(member_id));
    }

    /// Removes a portal registration.
    pub fn remove_registration(&mut self, member_id: &str) {
        self.remove(registration_key(member_id));
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

    /// Deletes a summary block.
    pub fn delete_summary(&mut self, portal: PortalIx, block: u64) {
        self.remove(seq_key(SUMMARY, portal, block));
    }

    /// Stores an event in the version-1 layout (tests of `migrate`).
    #[cfg(test)]
    pub(crate) fn put_v1_event(&mut self, portal: PortalIx, seq: u64, value: Vec<u8>) {
        self.insert(seq_key(V1_EVENT, portal, seq), value);
    }

    /// Moves the second half of the writes (in key order) into a new batch,
    /// for tests that crash in the middle of applying one.
    #[cfg(test)]
    pub(crate) fn split_off_half(&mut self) -> WriteBatch {
        let at = self.writes.keys().nth(self.writes.len() / 2).cloned();
        let rest = match at {
            Some(k) => self.writes.split_off(&k),
            None => BTreeMap::new(),
        };
        self.len = self.writes.len();
        WriteBatch {
            len: rest.len(),
            writes: rest,
        }
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
