//! The read path's scans: which stored events of a portal match a filter,
//! in which order, within what budget.
//!
//! Every read is a range scan over seqs: the portal's event log, or its
//! entity's seqs (the unsealed tail's, then the entity index's). A time window (`since`/`until`) without an entity first
//! scans the portal's span summaries (one per [`SUMMARY_SPAN`] events, with
//! the span's lowest and highest `ts`) and reads only the spans that can
//! match. A scan looks at most [`SCAN_BUDGET`] entries: a filter that
//! matches rarely then ends early and says where it stopped, instead of
//! walking the whole portal in one request. Scans only see seqs up to the
//! portal record's last seq, which the writer publishes once durable.
//!
//! Each matching event is handed to a visitor as it is read (decoded, not
//! copied or collected), which renders it wherever it goes and says whether
//! to go on: so a page is written straight into its response body.

use std::ops::ControlFlow;
use std::sync::{Arc, RwLock};

use super::directory::PortalDirectory;
use super::entities::EntityIndex;
use super::record::{
    peek, peek_entity, span_of, EventRecord, PortalIx, PortalRecord, SpanSummary, SUMMARY_SPAN,
};
use super::spans::SpanIndex;
use super::store::codec::event_block;
use super::store::{Reader, StoreError};
use crate::types::{EntityId, EventName, Ts};

/// The journal's read side: the store's reader, the entity index's runs
/// and the portals as shown to readers; cheap to clone into request
/// handlers.
#[derive(Clone)]
pub struct JournalReader {
    store: Reader,
    entities: EntityIndex,
    spans: SpanIndex,
    directory: Arc<RwLock<PortalDirectory>>,
}

impl JournalReader {
    /// The read side of `store` with the entity index `entities` and the
    /// shown portals `directory`.
    pub(crate) fn new(
        store: Reader,
        entities: EntityIndex,
        directory: Arc<RwLock<PortalDirectory>>,
    ) -> JournalReader {
        JournalReader {
            store,
            entities,
            spans: SpanIndex::default(),
            directory,
        }
    }

    /// The store's reader.
    pub fn store(&self) -> &Reader {
        &self.store
    }

    /// Seqs of `portal`'s events about `entity` within `lo..=hi`,
    /// ascending, read from `store` (the reader or a pinned copy of it):
    /// the unsealed tail's first, then the sealed ones from the entity
    /// index. A block sealed meanwhile moves events from the tail into the
    /// index, and the index shows them before the tail drops them (see
    /// `Store::commit_logged`), so in this order an event can be seen
    /// twice (kept once) but never missed.
    pub(crate) fn entity_seqs(
        &self,
        store: &Reader,
        portal: PortalIx,
        entity: &str,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let mut seqs = Vec::new();
        for (seq, bytes) in store.tail_range(portal, lo, hi)? {
            if peek_entity(&bytes) == Some(entity) {
                seqs.push(seq);
            }
        }
        let mut sealed = self.entities.sealed_seqs(store, portal, entity, lo, hi)?;
        sealed.extend(seqs);
        sealed.sort_unstable();
        sealed.dedup();
        Ok(sealed)
    }

    /// The event a seq from the entity index (or the tail) names; `None`
    /// if it was deleted since the scan took `portal`'s record: retention
    /// (and an erase) delete whole blocks and tail events before they show
    /// the portal's new first seq, so an event is gone for that reason when
    /// its block is gone too or the first seq shown now is past it.
    fn indexed_event(
        &self,
        reader: &Reader,
        portal: &PortalRecord,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(bytes) = reader.event(portal.ix, seq)? {
            return Ok(Some(bytes));
        }
        let first_now = self
            .directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .portal(portal.ix)
            .map_or(u64::MAX, PortalRecord::first_seq);
        if seq < first_now || reader.block(portal.ix, event_block(seq))?.is_none() {
            return Ok(None);
        }
        Err(StoreError::Corrupt(format!(
            "entity index names missing event {seq}"
        )))
    }
}

/// Most index or log entries (and span summaries) one scan looks at.
pub const SCAN_BUDGET: usize = 20_000;

/// Which events a scan yields.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFilter<'a> {
    /// Only these event names.
    pub events: Option<&'a [EventName]>,
    /// Only this entity (read through the entity index).
    pub entity_id: Option<&'a EntityId>,
    /// `ts >= since`.
    pub since: Option<Ts>,
    /// `ts <= until`.
    pub until: Option<Ts>,
}

impl EventFilter<'_> {
    /// Whether `rec` passes the name and time conditions (the entity is
    /// chosen by the index a scan reads).
    fn matches(&self, rec: &EventRecord, portal: &PortalRecord) -> bool {
        if let Some(names) = self.events {
            let name = rec.event_name(portal);
            if !names.iter().any(|n| n.as_str() == name) {
                return false;
            }
        }
        self.in_window(rec.ts)
    }

    /// Whether `ts` is within `since..=until`.
    fn in_window(&self, ts: u64) -> bool {
        !(self.since.is_some_and(|s| ts < s.secs()) || self.until.is_some_and(|u| ts > u.secs()))
    }
}

/// Where a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every candidate in range was looked at.
    Exhausted,
    /// The visitor stopped the scan at this seq.
    Stopped(u64),
    /// The budget ran out at this seq (looked at, or the lowest seq of a
    /// span skipped): a continuation starts past it.
    OutOfBudget(u64),
}

/// A matching event as a scan hands it over.
#[derive(Debug, Clone, Copy)]
pub struct Found<'r> {
    /// Its seq.
    pub seq: u64,
    /// The stored record.
    pub record: &'r EventRecord,
    /// Its duplicate counter.
    pub duplicates: u32,
}

/// One scan's state: what it looks for, what it has looked at, and who
/// gets the matches.
struct Scan<'a, V> {
    portal: &'a PortalRecord,
    filter: &'a EventFilter<'a>,
    looked: usize,
    visit: V,
}

impl<V> Scan<'_, V>
where
    V: FnMut(Found<'_>) -> Result<ControlFlow<()>, StoreError>,
{
    /// Looks at stored event `seq`; `Some` when the scan ends here. An
    /// event outside a time window is passed over by its `ts` alone:
    /// decoding every event of the spans a window reads cost more than the
    /// rest of such a query.
    fn look(&mut self, seq: u64, bytes: &[u8]) -> Result<Option<ScanEnd>, StoreError> {
        if self.filter.since.is_some() || self.filter.until.is_some() {
            if let Some((ts, _)) = peek(bytes) {
                if !self.filter.in_window(ts) {
                    self.looked += 1;
                    return Ok(self.spent(seq));
                }
            }
        }
        let (record, duplicates) = EventRecord::from_bytes(bytes)
            .map_err(|e| StoreError::undecodable(format!("event {seq}"), e))?;
        self.looked += 1;
        if self.filter.matches(&record, self.portal) {
            let found = Found {
                seq,
                record: &record,
                duplicates,
            };
            if (self.visit)(found)?.is_break() {
                return Ok(Some(ScanEnd::Stopped(seq)));
            }
        }
        Ok(self.spent(seq))
    }

    /// Counts `summary` as looked at; whether its `ts` range meets
    /// `since..=until`.
    fn meets(&mut self, summary: &SpanSummary, (since, until): (u64, u64)) -> bool {
        self.looked += 1;
        summary.max_ts >= since && summary.min_ts <= until
    }

    /// After [`Scan::meets`]: looks at the events up to seq `start` of a
    /// span that meets the window; for one that does not, ends the scan if
    /// the budget is spent. `Some` when the scan ends.
    fn span(
        &mut self,
        reader: &Reader,
        start: u64,
        summary: &SpanSummary,
        meets: bool,
    ) -> Result<Option<ScanEnd>, StoreError> {
        let lo = (summary.span * SUMMARY_SPAN + 1).max(self.portal.first_seq());
        let hi = ((summary.span + 1) * SUMMARY_SPAN).min(start);
        if !meets {
            return Ok(self.spent(lo));
        }
        for event in reader.events(self.portal.ix, lo, hi).rev() {
            let (seq, bytes) = event?;
            if let Some(end) = self.look(seq, &bytes)? {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    /// Whether the budget is spent.
    fn out_of_budget(&self) -> bool {
        self.looked >= SCAN_BUDGET
    }

    /// `Some` once the budget is spent, ending the scan at `seq`.
    fn spent(&self, seq: u64) -> Option<ScanEnd> {
        self.out_of_budget().then_some(ScanEnd::OutOfBudget(seq))
    }
}

/// Hands `visit` the events of `portal` that match `filter`, newest first,
/// from seq `at_most` (clamped to the durable end) down, until `visit`
/// breaks or the budget runs out. Reads one snapshot of the store.
pub fn newest(
    journal: &JournalReader,
    portal: &PortalRecord,
    filter: &EventFilter<'_>,
    at_most: u64,
    visit: impl FnMut(Found<'_>) -> Result<ControlFlow<()>, StoreError>,
) -> Result<ScanEnd, StoreError> {
    let reader = &journal.store.pinned()?;
    let ix = portal.ix;
    let start = at_most.min(portal.last_seq());
    let mut scan = Scan {
        portal,
        filter,
        looked: 0,
        visit,
    };
    if start == 0 {
        return Ok(ScanEnd::Exhausted);
    }
    if let Some(entity) = filter.entity_id {
        for seq in journal
            .entity_seqs(reader, ix, entity.as_str(), portal.first_seq(), start)?
            .into_iter()
            .rev()
        {
            let Some(bytes) = journal.indexed_event(reader, portal, seq)? else {
                continue;
            };
            if let Some(end) = scan.look(seq, &bytes)? {
                return Ok(end);
            }
        }
    } else if filter.since.is_some() || filter.until.is_some() {
        let (since, until) = (
            filter.since.unwrap_or(Ts::MIN).secs(),
            filter.until.unwrap_or(Ts::MAX).secs(),
        );
        let window = (since, until);
        // The open span's summary is in the portal record.
        if let Some(open) = portal.summary.filter(|s| s.span <= span_of(start)) {
            let meets = scan.meets(&open, window);
            if let Some(end) = scan.span(reader, start, &open, meets)? {
                return Ok(end);
            }
        }
        // Full spans' summaries are stored and held in memory; the index
        // stops at each one that meets the window or spends the budget.
        let mut upper = Some(span_of(start));
        while let Some(below) = upper {
            let mut meets = false;
            let found = journal.spans.find_newest(reader, portal, below, |s| {
                meets = scan.meets(s, window);
                meets || scan.out_of_budget()
            })?;
            let Some(summary) = found else {
                break;
            };
            if let Some(end) = scan.span(reader, start, &summary, meets)? {
                return Ok(end);
            }
            upper = summary.span.checked_sub(1);
        }
    } else {
        for event in reader.events(ix, portal.first_seq(), start).rev() {
            let (seq, bytes) = event?;
            if let Some(end) = scan.look(seq, &bytes)? {
                return Ok(end);
            }
        }
    }
    Ok(ScanEnd::Exhausted)
}

/// Hands `visit` the events of `portal` that match `filter` with seq above
/// `after`, oldest first, up to the durable end, until `visit` breaks or
/// the budget runs out. Returns the highest seq looked at: where the next
/// call continues. Reads one snapshot of the store.
pub fn after(
    journal: &JournalReader,
    portal: &PortalRecord,
    filter: &EventFilter<'_>,
    after: u64,
    visit: impl FnMut(Found<'_>) -> Result<ControlFlow<()>, StoreError>,
) -> Result<u64, StoreError> {
    let reader = &journal.store.pinned()?;
    let ix = portal.ix;
    let upper = portal.last_seq();
    if after >= upper {
        return Ok(after);
    }
    // Retention may have deleted the oldest events.
    let from = (after + 1).max(portal.first_seq());
    let mut scan = Scan {
        portal,
        filter,
        looked: 0,
        visit,
    };
    let end = |end: ScanEnd| match end {
        ScanEnd::Stopped(seq) | ScanEnd::OutOfBudget(seq) => seq,
        ScanEnd::Exhausted => upper,
    };
    if let Some(entity) = filter.entity_id {
        for seq in journal.entity_seqs(reader, ix, entity.as_str(), from, upper)? {
            let Some(bytes) = journal.indexed_event(reader, portal, seq)? else {
                continue;
            };
            if let Some(stop) = scan.look(seq, &bytes)? {
                return Ok(end(stop));
            }
        }
    } else {
        for event in reader.events(ix, from, upper) {
            let (seq, bytes) = event?;
            if let Some(stop) = scan.look(seq, &bytes)? {
                return Ok(end(stop));
            }
        }
    }
    // Everything up to the durable end was looked at.
    Ok(upper)
}
