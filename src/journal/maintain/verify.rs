//! Offline verification: opens a stopped data directory and checks every
//! key, index and counter against the events themselves.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::error::MaintainError;
use super::offline::open_store;
use super::verify_runs::RunsCheck;
use crate::journal::dedup::key::dedup_key_of_record;
use crate::journal::format::{read_format, ENGINE_DIR};
use crate::journal::record::{span_of, EventRecord, PortalIx, PortalRecord, SpanSummary};
use crate::journal::rollup::RollupDelta;
use crate::journal::store::codec;
use crate::journal::store::{KeyKind, Reader, StoreError};
use crate::journal::PortalDirectory;

/// What `verify` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Format version.
    pub format: u32,
    /// Portals (not counting erased ones).
    pub portals: usize,
    /// Events.
    pub events: u64,
    /// Entity index entries.
    pub entity_entries: u64,
    /// Live postings runs whose heads do not list their items (written
    /// before heads did): their lookups read by range until a merge
    /// replaces them.
    pub runs_without_item_list: u64,
    /// Dedup keys.
    pub dedup_keys: u64,
    /// Summary blocks.
    pub summaries: u64,
    /// Registrations.
    pub registrations: u64,
    /// Bytes of keys and values stored, by what they hold.
    pub stored_bytes: StoredBytes,
    /// Problems found (at most [`MAX_PROBLEMS`] listed; `problem_count` has them all).
    pub problems: Vec<String>,
    /// Number of problems.
    pub problem_count: u64,
}

/// Bytes of keys and values the journal holds, by what they hold: what
/// the disk pays for each part before the engine's own overhead (sled adds
/// a few hundred bytes per item).
#[derive(Debug, Default, serde::Serialize)]
pub struct StoredBytes {
    /// Events: sealed blocks and the unsealed tails (those are in the redo
    /// log, not in sled).
    pub events: u64,
    /// The entity index's postings items.
    pub postings: u64,
    /// The entity index's run heads (mostly their Bloom filters) and run
    /// lists.
    pub runs: u64,
    /// Span summaries.
    pub summaries: u64,
    /// Everything else: dedup keys, portal records, registrations,
    /// rollups, pull states, markers.
    pub other: u64,
}

impl StoredBytes {
    /// Counts one stored key and value under what it holds.
    fn add(&mut self, kind: &KeyKind, bytes: usize) {
        let part = match kind {
            KeyKind::Tail { .. } | KeyKind::Block { .. } => &mut self.events,
            KeyKind::RunItem { .. } => &mut self.postings,
            KeyKind::RunHead { .. } | KeyKind::Runs(_) => &mut self.runs,
            KeyKind::Summary { .. } => &mut self.summaries,
            _ => &mut self.other,
        };
        *part += bytes as u64;
    }
}

/// Most problems listed in a report.
pub const MAX_PROBLEMS: usize = 100;

impl VerifyReport {
    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what);
        }
    }
}

#[derive(Default)]
struct PortalTally {
    events: u64,
    duplicates: u64,
    max_seq: u64,
    /// The activity rollups its events add up to.
    rollups: RollupDelta,
    /// The lowest and highest `ts` of its events per summary span: a
    /// window query passes over a span whose summary misses an event's.
    spans: BTreeMap<u64, (u64, u64)>,
}

/// Opens a stopped data directory and checks every tree and index.
/// Blocking.
pub fn verify(data_dir: &Path) -> Result<VerifyReport, MaintainError> {
    let format = read_format(data_dir)?;
    let store = open_store(&data_dir.join(ENGINE_DIR), data_dir)?;
    let reader = store.reader();
    let mut report = VerifyReport {
        data_dir: data_dir.to_owned(),
        format,
        ..VerifyReport::default()
    };
    let records = reader.portals()?;
    let registrations = reader.registrations()?;
    let dir = match PortalDirectory::from_records(records.clone(), registrations.clone()) {
        Ok(dir) => dir,
        Err(e) => {
            report.problem(format!("portal records: {e}"));
            return Ok(report);
        }
    };
    report.registrations = registrations.len() as u64;
    report.portals = records.iter().filter(|p| !p.member_id.is_empty()).count();
    let portal = |ix: PortalIx| dir.portals().get(ix as usize);
    let mut tallies: HashMap<PortalIx, PortalTally> = HashMap::new();
    let mut seen_dedup: BTreeMap<(PortalIx, u64), u32> = BTreeMap::new();
    let mut summaries: HashMap<(PortalIx, u64), SpanSummary> = HashMap::new();

    // Sealed entity events per portal, which the entity index must hold
    // exactly once each (see `verify_runs`).
    let mut sealed_entity_events: HashMap<PortalIx, u64> = HashMap::new();
    let mut runs = RunsCheck::load(reader, &dir)?;
    for item in reader.all_keys() {
        let (key, kind, value) = item?;
        report
            .stored_bytes
            .add(&kind, key.stored_len() + value.len());
        match kind {
            KeyKind::Tail { portal: ix, seq } => {
                let Some(p) = portal(ix) else {
                    report.problem(format!("event {ix}/{seq} of a portal without a record"));
                    continue;
                };
                if seq <= codec::sealed_upto(p.last_seq()) || seq < p.first_seq() {
                    report.problem(format!("tail event {ix}/{seq} outside the portal's tail"));
                }
                check_event(&mut report, &mut tallies, reader, p, seq, &value, None)?;
            }
            KeyKind::Block { portal: ix, block } => {
                let Some(p) = portal(ix) else {
                    report.problem(format!("block {ix}/{block} of a portal without a record"));
                    continue;
                };
                let first = codec::event_block_first(block);
                if first + codec::BLOCK_SPAN - 1 > codec::sealed_upto(p.last_seq()) {
                    report.problem(format!("block {ix}/{block} is past the portal's last seq"));
                }
                let entries = match codec::decode_block(&value) {
                    Ok(e) => e,
                    Err(e) => {
                        report.problem(format!("block {ix}/{block}: {}", StoreError::from(e)));
                        continue;
                    }
                };
                for (seq, bytes) in (first..).zip(entries) {
                    if seq < p.first_seq() {
                        continue;
                    }
                    if bytes.is_empty() {
                        report.problem(format!("event {ix}/{seq} missing from its block"));
                        continue;
                    }
                    let sealed = sealed_entity_events.entry(ix).or_default();
                    check_event(
                        &mut report,
                        &mut tallies,
                        reader,
                        p,
                        seq,
                        bytes,
                        Some(sealed),
                    )?;
                }
            }
            KeyKind::RunItem {
                portal: ix,
                run,
                entity,
                seq,
            } => match portal(ix) {
                Some(p) => runs.item(reader, p, run, (&entity, seq), &value)?,
                None => report.problem(format!("postings of a portal without a record: {ix}")),
            },
            KeyKind::RunHead { portal: ix, run } => runs.head(ix, run),
            KeyKind::Runs(ix) => {
                if portal(ix).is_none() {
                    report.problem(format!("run list of a portal without a record: {ix}"));
                }
            }
            KeyKind::V3Chunk => report.problem("an entity chunk of format version 3".into()),
            KeyKind::Dedup {
                portal: ix, seq, ..
            } => {
                report.dedup_keys += 1;
                *seen_dedup.entry((ix, seq)).or_default() += 1;
                if reader.event(ix, seq)?.is_none() {
                    report.problem(format!("dedup key {ix}/{seq} points to a missing event"));
                }
            }
            KeyKind::Summary {
                portal: ix,
                summary,
            } => {
                report.summaries += 1;
                if summary.min_ts > summary.max_ts {
                    report.problem(format!("summary {ix}/{} has min > max", summary.span));
                }
                if portal(ix).is_none() {
                    report.problem(format!("summary of a portal without a record: {ix}"));
                }
                summaries.insert((ix, summary.span), summary);
            }
            KeyKind::Portal(_)
            | KeyKind::Registration
            | KeyKind::Health
            | KeyKind::Lsn
            | KeyKind::StreamSeq
            | KeyKind::Rollup { .. } => {}
            // Sealed: verify checks that it decodes, never what it holds.
            KeyKind::PullState => {
                if crate::journal::pull_state::PullState::from_bytes(&value).is_err() {
                    report.problem("an offline pull state that does not decode".into());
                }
            }
            KeyKind::Unknown => report.problem("a key of unknown kind".into()),
        }
    }
    runs.finish(&sealed_entity_events, &dir);
    report.entity_entries = runs.entries;
    report.runs_without_item_list = runs.without_item_list;
    for problem in runs.problems {
        report.problem(problem);
    }
    for ((ix, seq), n) in seen_dedup {
        if n > 1 {
            report.problem(format!("{n} dedup keys point to event {ix}/{seq}"));
        }
    }
    // A journal written before rollups existed has none until the
    // migration rebuilds them: checked once any exists.
    let check_rollups = super::rollups::any(reader)?;
    for p in dir.portals() {
        let t = tallies.remove(&p.ix).unwrap_or_default();
        if check_rollups && !p.member_id.is_empty() {
            let limit = MAX_PROBLEMS.saturating_sub(report.problems.len()).max(1);
            for problem in super::rollups::compare(reader, p, &t.rollups, limit)? {
                report.problem(problem);
            }
        }
        if t.events != p.events {
            report.problem(format!(
                "portal {}: record says {} events, found {}",
                p.member_id, p.events, t.events
            ));
        }
        if t.duplicates != p.duplicates {
            report.problem(format!(
                "portal {}: record says {} duplicates, events count {}",
                p.member_id, p.duplicates, t.duplicates
            ));
        }
        for (&span, &(lo, hi)) in &t.spans {
            let summary = p
                .summary
                .filter(|open| open.span == span)
                .or_else(|| summaries.get(&(p.ix, span)).copied());
            match summary {
                None => report.problem(format!(
                    "portal {}: span {span} has events but no summary",
                    p.member_id
                )),
                Some(s) if s.min_ts > lo || s.max_ts < hi => report.problem(format!(
                    "portal {}: the summary of span {span} ({}..={}) misses its events' ts ({lo}..={hi})",
                    p.member_id, s.min_ts, s.max_ts
                )),
                Some(_) => {}
            }
        }
        if t.max_seq > p.last_seq() {
            report.problem(format!(
                "portal {}: events up to seq {} but next seq is {}",
                p.member_id, t.max_seq, p.next_seq
            ));
        }
    }
    Ok(report)
}

/// Checks one stored event and counts it; `sealed` counts sealed events
/// with an entity id (they must be in the entity index).
fn check_event(
    report: &mut VerifyReport,
    tallies: &mut HashMap<PortalIx, PortalTally>,
    reader: &Reader,
    p: &PortalRecord,
    seq: u64,
    bytes: &[u8],
    sealed: Option<&mut u64>,
) -> Result<(), StoreError> {
    let ix = p.ix;
    report.events += 1;
    let (rec, dups) = match EventRecord::from_bytes(bytes) {
        Ok(r) => r,
        Err(e) => {
            report.problem(format!("event {ix}/{seq} does not decode: {e}"));
            return Ok(());
        }
    };
    let t = tallies.entry(ix).or_default();
    t.events += 1;
    t.duplicates += u64::from(dups);
    t.max_seq = t.max_seq.max(seq);
    t.rollups
        .add(ix, rec.ts, rec.event_name(p), 1, i64::from(dups));
    let span = t.spans.entry(span_of(seq)).or_insert((rec.ts, rec.ts));
    *span = (span.0.min(rec.ts), span.1.max(rec.ts));
    if seq > p.last_seq() {
        report.problem(format!(
            "event {ix}/{seq} is past the portal's last seq {}",
            p.last_seq()
        ));
    }
    if rec.entity_id.is_some() {
        if let Some(n) = sealed {
            *n += 1;
        }
        return Ok(());
    }
    match dedup_key_of_record(&rec, p) {
        Some(key) => match reader.dedup(ix, &key)? {
            Some(s) if s == seq => {}
            Some(s) => report.problem(format!("dedup key of event {ix}/{seq} points to seq {s}")),
            None => report.problem(format!("event {ix}/{seq} has no dedup key")),
        },
        None => report.problem(format!("event {ix}/{seq}: stored fields invalid")),
    }
    Ok(())
}
