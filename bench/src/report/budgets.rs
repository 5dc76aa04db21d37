//! The budget sections: the throughput goals in CPU per request, and
//! ingest at one connection in time per event. They show how far a goal is
//! from what the machine and the bare HTTP exchange leave, not only from
//! the bare server's rate.

use std::fmt::Write as _;

use super::fmt::int;
use crate::model::{Measured, Report};
use crate::opts::Opts;

/// µs of CPU per request that a phase used: server, load generator and the
/// rest of the machine (loopback network work lands there).
fn exchange_us(m: &Measured) -> f64 {
    (m.server_cpu + m.client_cpu + m.other_cpu) * 1e6 / m.rate.max(1.0)
}

/// The ingest goal at 64 connections, as a share of the bare server's rate.
pub(super) const INGEST_GOAL: f64 = 0.3;

/// The section that puts the two throughput goals (ingest at 64
/// connections, latest-50) in CPU per request: what the machine has at the
/// goal, what the bare HTTP exchange already spends of it in the same run,
/// and what the service's own work measures.
pub(super) fn throughput(w: &mut String, o: &Opts, r: &Report) {
    let cores = r.machine.as_ref().map_or(0, |m| m.cores).max(1) as f64;
    let (Some(row), Some(ceil)) = (r.ingest_at(64), r.ceiling_at(64)) else {
        return;
    };
    let (Some(q), Some(get), Some((size, sized))) = (
        r.latest_at(o.n),
        r.ceiling_get.as_ref(),
        r.ceiling_sized.as_ref(),
    ) else {
        return;
    };
    let us = |x: f64| format!("{x:.1} µs");
    let _ = writeln!(w, "## The throughput goals in CPU per request\n");
    let _ = writeln!(
        w,
        "What {cores:.0} cores give per request at each goal, what the bare HTTP exchange already spent per request in this run (bare server + load generator + the rest of the machine, from the ceiling rows), and what the service's own work measured. Where the last row is larger than the one above it, the goal cannot be met without cutting that work by the ratio between the two, however fast the HTTP side were.\n"
    );
    let goal_in = INGEST_GOAL * ceil.rate;
    let goal_q = 0.5 * get.rate;
    let (have_in, have_q) = (cores * 1e6 / goal_in, cores * 1e6 / goal_q);
    let (bare_in, bare_q) = (exchange_us(ceil), exchange_us(sized));
    let answers = (row.counts.stored() + row.counts.duplicates()).max(1);
    let service_in = row.m.server_cpu * 1e6 / row.m.rate.max(1.0);
    let writer_in = row.m.writer_cpu.map(|c| c * 1e6 / row.m.rate.max(1.0));
    let keys = row.store_writes.map(|k| k as f64 / answers as f64);
    let mut own_in = format!(
        "the journal writer thread {} per event (the whole service, its HTTP side included: {})",
        writer_in.map_or("–".into(), us),
        us(service_in)
    );
    if let Some(k) = keys {
        let _ = write!(own_in, "; {k:.1} sled keys written per event");
        if let Some(f) = &r.floor {
            let _ = write!(
                own_in,
                ", which at sled's own cost ({} of CPU per insert of a {} B value, below) are {} without any lookup",
                us(f.cpu_us),
                f.value_bytes,
                us(k * f.cpu_us)
            );
        }
    }
    let own_q = match &r.probe {
        Some(p) => format!(
            "{} per page through the service's query code, one thread, no HTTP ({} pages of {} B); the server over HTTP: {} per answer",
            us(p.cpu_us),
            int(p.pages),
            int(p.body_bytes),
            us(q.m.server_cpu * 1e6 / q.m.rate.max(1.0))
        ),
        None => format!(
            "the server over HTTP: {} per answer",
            us(q.m.server_cpu * 1e6 / q.m.rate.max(1.0))
        ),
    };
    let _ = writeln!(
        w,
        "| | ingest at 64 connections | latest-50 at N = {} |\n|---|---|---|",
        int(o.n)
    );
    let _ = writeln!(
        w,
        "| goal | {} events/s ({INGEST_GOAL} × {}) | {} req/s (0.5 × {}) |",
        int(goal_in as u64),
        int(ceil.rate as u64),
        int(goal_q as u64),
        int(get.rate as u64)
    );
    let _ = writeln!(
        w,
        "| CPU per request at the goal ({cores:.0} cores ÷ goal) | {} | {} |",
        us(have_in),
        us(have_q)
    );
    let _ = writeln!(
        w,
        "| spent by the bare exchange (ingest: POST at 64 connections; latest-50: GET answering {} B) | {} | {} |",
        int(*size),
        us(bare_in),
        us(bare_q)
    );
    let _ = writeln!(
        w,
        "| **left for the service's own work** | **{}** | **{}** |",
        us(have_in - bare_in),
        us(have_q - bare_q)
    );
    let _ = writeln!(
        w,
        "| the service's own work, measured | {own_in} | {own_q} |"
    );
    if let Some(f) = &r.floor {
        let _ = writeln!(
            w,
            "\nsled alone (`b24-bench sled-floor`): {} inserts of {} B values (the mean stored record of the query journal) into a new database with the service's settings, keys as the journal's tail keys, one thread: {} of CPU per insert (sled's own threads included), {:.0} bytes on disk per item after a flush{}",
            int(f.inserts),
            f.value_bytes,
            us(f.cpu_us),
            f.disk_bytes_per_item,
            if f.disk_bytes_per_item > 250.0 {
                ": one sled item per event would by itself miss the 250 B/event goal, which is why the journal packs 64 events per item (and pays for it in rewrites)."
            } else {
                "."
            }
        );
    }
    let _ = writeln!(w);
}

/// Ingest at 1 connection in time per event: events are serial there, so
/// the goal is a time per event, of which the disk's fdatasync and the
/// bare round trip take their share whatever the service does.
pub(super) fn serial(w: &mut String, r: &Report) {
    let (Some(row), Some(ceil), Some(fsyncs)) = (r.ingest_at(1), r.ceiling_at(1), r.fsync_rate)
    else {
        return;
    };
    let us = |x: f64| format!("{x:.0} µs");
    let goal = 0.25 * ceil.rate;
    let at_goal = 1e6 / goal.max(1.0);
    let fsync = 1e6 / fsyncs.max(1.0);
    let bare = 1e6 / ceil.rate.max(1.0);
    let took = 1e6 / row.m.rate.max(1.0);
    let _ = writeln!(w, "## Ingest at 1 connection in time per event\n");
    let _ = writeln!(
        w,
        "One connection sends the next event only after the answer to the last, so the goal is a time per event. Each durable answer waits for one fdatasync (this run's rate for the redo log's kind of write, above) and pays the round trip the bare server pays at 1 connection; what is left is the time for everything else: decoding, verifying, deduplicating, laying out and applying the event to sled, and handing it between threads.\n"
    );
    let _ = writeln!(w, "| | µs per event |\n|---|---:|");
    for (what, v) in [
        (
            format!(
                "at the goal: 1 / (0.25 × {} events/s)",
                int(ceil.rate as u64)
            ),
            us(at_goal),
        ),
        (
            format!("one fdatasync: 1 / {} per s", int(fsyncs as u64)),
            us(fsync),
        ),
        (
            format!("the bare round trip: 1 / {} per s", int(ceil.rate as u64)),
            us(bare),
        ),
        (
            "**left at the goal for everything else**".into(),
            format!("**{}**", us(at_goal - fsync - bare)),
        ),
        (
            format!(
                "the service in this run: 1 / {} events/s, less the fdatasync and the round trip",
                int(row.m.rate as u64)
            ),
            format!("{} (all of it: {})", us(took - fsync - bare), us(took)),
        ),
    ] {
        let _ = writeln!(w, "| {what} | {v} |");
    }
    let _ = writeln!(w);
}
