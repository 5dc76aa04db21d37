//! The ingest phase: the real service under POST load at every concurrency
//! level in turn, each answer checked (new bodies `stored` under new ids,
//! resent bodies `duplicate` under their original's id) and the journal's
//! totals checked against the answers after each level and after a clean
//! restart.

use std::collections::HashSet;

use super::harness::{Harness, INGEST_SEED};
use crate::gen;
use crate::model::IngestRow;
use crate::sys;
use crate::works::{repeated_ids, IngestCounts, IngestShared, IngestWork};

impl Harness {
    /// The ingest phase.
    pub(super) fn ingest(&mut self) -> anyhow::Result<()> {
        let data = self.o.tmp.join("ingest-data");
        let portals = gen::portals(self.o.ingest_portals, INGEST_SEED);
        let cfg = self.write_config("ingest", &data, &portals)?;
        eprintln!("== ingest: starting b24-journal");
        let mut svc = self.start_service("ingest-server", &cfg)?;
        let shared = IngestShared::new(
            portals,
            svc.addr.to_string(),
            self.o.dup_rate,
            self.o.ingest_per_entity,
        );
        let mut cum = IngestCounts::default();
        let mut seen: HashSet<u128> = HashSet::new();
        for &c in &self.o.ingest_conns.clone() {
            eprintln!("== ingest, {c} connections");
            let spec = self.spec(svc.addr, c, self.o.ingest_secs);
            let writes_before = self.store_writes(svc.addr);
            let (out, m) = self.measure(svc.proc_.pid, spec, |i| {
                IngestWork::new(shared.clone(), ((c as u64) << 32) | i as u64, false)
            })?;
            svc.proc_.alive()?;
            let store_writes = writes_before
                .zip(self.store_writes(svc.addr))
                .map(|(a, b)| b.saturating_sub(a));
            let mut counts = IngestCounts::default();
            for w in &out.works {
                counts.add(&w.counts);
            }
            let repeated = repeated_ids(&mut seen, out.works.iter().flat_map(|w| &w.stored_ids));
            cum.add(&counts);
            let (events, dups) = self.journal_totals(svc.addr)?;
            let problems = level_problems(&counts, &cum, repeated, events, dups);
            let verified = problems.is_empty();
            for p in problems {
                self.errors.push(format!("ingest at {c} connections: {p}"));
            }
            self.r.ingest.push(IngestRow {
                m,
                counts,
                journal_events: events,
                journal_dups: dups,
                verified,
                store_writes,
            });
        }
        // Durability across a clean restart.
        eprintln!("== ingest: restart and re-count");
        self.stop_service(svc, "ingest server");
        let svc = self.start_service("ingest-server-restart", &cfg)?;
        let (events, dups) = self.journal_totals(svc.addr)?;
        if events != cum.stored() || dups != cum.duplicates() {
            self.errors.push(format!(
                "after restart the journal holds {events} events / {dups} duplicates, expected {} / {}",
                cum.stored(),
                cum.duplicates()
            ));
        }
        self.r.ingest_restart_ok = events == cum.stored() && dups == cum.duplicates();
        self.r.ingest_startup = Some(svc.startup);
        self.stop_service(svc, "ingest server (restarted)");
        let split = sys::disk_split(&data).unwrap_or_default();
        self.r.ingest_disk = Some((split, cum.stored()));
        self.r.ingest_total = cum;
        let _ = std::fs::remove_dir_all(&data);
        Ok(())
    }
}

/// What is wrong after one level: `counts` of the level, `cum` of all
/// levels so far, `repeated` ids answered `stored` twice, and the journal's
/// `events` and `dups` totals.
fn level_problems(
    counts: &IngestCounts,
    cum: &IngestCounts,
    repeated: u64,
    events: u64,
    dups: u64,
) -> Vec<String> {
    let mut problems = Vec::new();
    if events != cum.stored() {
        problems.push(format!(
            "journal holds {events} events but {} answers said `stored`",
            cum.stored()
        ));
    }
    if dups != cum.duplicates() {
        problems.push(format!(
            "journal counts {dups} duplicates but {} answers said `duplicate`",
            cum.duplicates()
        ));
    }
    for (n, what) in [
        (counts.fresh_duplicate, "new bodies answered `duplicate`"),
        (
            counts.resend_stored,
            "resent bodies answered `stored` (stored twice)",
        ),
        (
            counts.id_mismatch,
            "duplicate answers with another id than the original's",
        ),
        (counts.unparsed, "200 answers not understood"),
        (counts.other_status, "non-200 answers other than 503"),
        (repeated, "ids answered `stored` twice"),
    ] {
        if n > 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    if !counts.other_samples.is_empty() {
        problems.push(format!("examples: {:?}", counts.other_samples));
    }
    problems
}
