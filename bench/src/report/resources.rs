//! The resources section (fills, bytes on disk, start-up times, peak RSS)
//! and the list of correctness checks the run applied.

use std::fmt::Write as _;
use std::time::Duration;

use super::fmt::{dur, int, mib};
use crate::model::{FillRow, Report};
use crate::opts::Opts;
use crate::sys::DiskSplit;

/// `## Resources`: the fills, then start-up and restart times.
pub(super) fn resources(w: &mut String, o: &Opts, r: &Report) {
    let _ = writeln!(w, "## Resources\n");
    let _ = writeln!(
        w,
        "| step | events | time | rate | peak RSS | data dir on disk | bytes/event |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for f in &r.fills {
        let _ = writeln!(
            w,
            "| fill {}..{} (library, {} appends in flight) | {} | {} (+{:.1} s close; process {}) | {} ev/s | {} | {} | {:.0} |",
            int(f.from),
            int(f.to),
            o.fill_inflight,
            int(f.stored),
            dur(Duration::from_secs_f64(f.fill_secs)),
            f.close_secs,
            dur(f.wall),
            int((f.stored as f64 / f.fill_secs.max(1e-9)) as u64),
            mib(f.peak_rss_kb),
            int(f.disk.total()),
            f.disk.total() as f64 / f.to.max(1) as f64
        );
    }
    let _ = writeln!(w);
    for (at, d) in &r.startups {
        let _ = writeln!(
            w,
            "- start to first healthy `GET /healthz` on the filled journal of {} events: **{}** (first start after the fill: sled 0.34.7 writes its page-table snapshot only when it opens a database, so this start scans sled's log written since the fill's last engine reopen — the journal reopens every `--snapshot-every-mb` (512) MiB of redo log, in the fill as in the service)",
            int(*at),
            dur(*d)
        );
    }
    for (at, d) in &r.mirror_ready {
        let _ = writeln!(
            w,
            "- read mirror ready {} after that first start was healthy, on the journal of {} events (rebuilt from sled in the background, at nice 10; until then queries read sled; the query rows were measured after it)",
            dur(*d),
            int(*at)
        );
    }
    for &(at, total, mirror) in &r.serving_disk {
        let per = |b: u64| b as f64 / at.max(1) as f64;
        let _ = writeln!(
            w,
            "- data dir while the query server ran on the journal of {} events (after its queries): {} bytes = **{:.0} B/event**, of which the read mirror (the sealed blocks and postings items copied into a flat file for one-`pread` reads, rebuilt at each start and deleted at stop) {} bytes = {:.0} B/event",
            int(at),
            int(total),
            per(total),
            int(mirror),
            per(mirror)
        );
    }
    for (at, d) in &r.restarts {
        let _ = writeln!(
            w,
            "- restart (second start) on the journal of {} events, after the first start wrote the snapshot: **{}**",
            int(*at),
            dur(*d)
        );
    }
    if let Some(f) = r.fills.last().filter(|f| f.to == o.n && o.n < 10_000_000) {
        let rate = f.stored as f64 / f.fill_secs.max(1e-9);
        let per = f.disk.total() as f64 / f.to.max(1) as f64;
        let _ = writeln!(
            w,
            "- not run here: `scripts/bench.sh --full` (N = 10,000,000). Extrapolated from this run's last fill rate ({} ev/s, which fell as the journal grew), its fill alone would take at least {} and its data dir would need about {:.1} GB ({per:.0} B/event); the phases other than the fill take about as long as in this run.",
            int(rate as u64),
            dur(Duration::from_secs_f64(10_000_000.0 / rate.max(1.0))),
            per * 10_000_000.0 / 1e9
        );
    }
    let _ = writeln!(
        w,
        "- peak RSS is VmHWM from /proc/PID/status, reset with `echo 5 > /proc/PID/clear_refs` at the start of each phase (fill: the fill process's own peak)."
    );
    let _ = writeln!(w);
}

/// One entity mix's journal of N events.
pub(super) struct MixRow {
    pub per_entity: u64,
    pub events: u64,
    /// Seconds of filling, over every fill of the journal.
    pub fill_secs: f64,
    pub peak_rss_kb: u64,
    pub disk: DiskSplit,
}

impl MixRow {
    pub fn bytes_per_event(&self) -> f64 {
        self.disk.total() as f64 / self.events.max(1) as f64
    }
}

/// Every entity mix filled to N: the query journal (filled in stages),
/// then the other mixes (`run/mixes.rs`), by events per entity.
pub(super) fn mix_rows(o: &Opts, r: &Report) -> Vec<MixRow> {
    let mut rows = Vec::new();
    if let Some(last) = r.fills.last().filter(|f| f.to == o.n) {
        rows.push(MixRow {
            per_entity: last.per_entity,
            events: last.to,
            fill_secs: r.fills.iter().map(|f| f.fill_secs).sum(),
            peak_rss_kb: r.fills.iter().map(|f| f.peak_rss_kb).max().unwrap_or(0),
            disk: last.disk,
        });
    }
    rows.extend(r.mixes.iter().map(|f: &FillRow| MixRow {
        per_entity: f.per_entity,
        events: f.to,
        fill_secs: f.fill_secs,
        peak_rss_kb: f.peak_rss_kb,
        disk: f.disk,
    }));
    rows.sort_by_key(|m| m.per_entity);
    rows
}

/// `## Bytes on disk per entity mix`: one journal of N events per mix of
/// events per entity id, after the fill closed it (a clean shutdown, which
/// checkpoints), by part of the data directory.
pub(super) fn mixes(w: &mut String, o: &Opts, r: &Report) {
    let rows = mix_rows(o, r);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "## Bytes on disk per entity mix
"
    );
    let _ = writeln!(
        w,
        "Each journal holds N = {} events across {} portals filled through the service's write path as in the query phase, differing only in how many events share an entity id (1: every activity is added once; 3: added and updated twice, the query journal; 10: a busy record). Sizes are allocated bytes after the fill process closed the journal (a clean shutdown: sled flushed, the redo log holding only the unsealed tails and its prepared segments).\n",
        int(o.n),
        int(o.query_portals)
    );
    let _ = writeln!(
        w,
        "| events per entity | events | fill time | rate | peak RSS | sled | redo log | other | bytes/event |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for m in rows {
        let per = |b: u64| b as f64 / m.events.max(1) as f64;
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} ev/s | {} | {} ({:.0} B/ev) | {} ({:.0} B/ev) | {} | **{:.0}** |",
            m.per_entity,
            int(m.events),
            dur(Duration::from_secs_f64(m.fill_secs)),
            int((m.events as f64 / m.fill_secs.max(1e-9)) as u64),
            mib(m.peak_rss_kb),
            int(m.disk.engine),
            per(m.disk.engine),
            int(m.disk.redo_log),
            per(m.disk.redo_log),
            int(m.disk.other),
            m.bytes_per_event()
        );
    }
    let _ = writeln!(w);
}

/// `## Correctness checks`: what the harness fails on.
pub(super) fn checks(w: &mut String) {
    let _ = writeln!(w, "## Correctness checks (the harness fails on any)\n");
    for c in [
        "every ingest level: Σ `events` over `GET /v1/portals` = number of `stored` answers so far, Σ `duplicates` = number of `duplicate` answers so far",
        "every new body is answered `stored` with an id no other answer had; every resent body is answered `duplicate` with its original's id",
        "no non-200 answer other than 503 (503s are reported separately), in every phase",
        "after a clean restart the ingest journal's counts are unchanged; every server exits 0 on SIGTERM",
        "each fill stores exactly its planned events (no duplicates); the query server's `GET /v1/portals` sums to the events filled",
        "latest-50 pages are full (every portal has ≥ 50 events)",
    ] {
        let _ = writeln!(w, "- {c}");
    }
    let _ = writeln!(w);
}
