//! The load tables, one section per phase: the bare server (ceiling), the
//! service's ingest levels, and its query kinds.

use std::fmt::Write as _;

use super::fmt::{cpu, dur, fmt_ratio, int, mib, ns, ratio, row_tail};
use crate::model::Report;
use crate::opts::Opts;
use crate::works::QueryKind;

/// `## Ceiling: bare warp server`, with the wrk comparison.
pub(super) fn ceiling(w: &mut String, r: &Report) {
    let _ = writeln!(w, "## Ceiling: bare warp server\n");
    let _ = writeln!(
        w,
        "`b24-bench-ceiling`: the same warp/hyper/tokio, connections served like the service's (hyper HTTP/1.1, keep-alive, TCP_NODELAY); reads the body, answers a small JSON 200, nothing else (the sized GET row: a JSON body of exactly that many bytes, built once per worker thread).\n"
    );
    let _ = writeln!(
        w,
        "| load | connections | req/s | p50 | p99 | p99.9 | CPU server / client / other | peak RSS |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for m in &r.ceiling_post {
        let _ = writeln!(w, "| POST ingest body | {} |", row_tail(m));
    }
    if let Some(m) = &r.ceiling_get {
        let _ = writeln!(w, "| GET | {} |", row_tail(m));
    }
    if let Some((bytes, m)) = &r.ceiling_sized {
        let _ = writeln!(
            w,
            "| GET, {} B answer (latest-50's mean at N; measured after the query phase) | {} |",
            int(*bytes),
            row_tail(m)
        );
    }
    let _ = writeln!(w);
    if let Some(wrk) = &r.wrk {
        if wrk.note.is_empty() {
            let ours = r.ceiling_at(wrk.conns);
            let _ = writeln!(
                w,
                "Load-generator check: `wrk -t1 -c{} -d{}s` with the same POST body against the same bare server: **{} req/s** (p50 {}, p99 {}); this harness at {} connections: {} req/s ({}).\n",
                wrk.conns,
                wrk.secs,
                wrk.rate.map(|x| int(x as u64)).unwrap_or_else(|| "?".into()),
                wrk.p50.as_deref().unwrap_or("?"),
                wrk.p99.as_deref().unwrap_or("?"),
                wrk.conns,
                ours.map(|m| int(m.rate as u64)).unwrap_or_else(|| "?".into()),
                match (ours, wrk.rate) {
                    (Some(m), Some(x)) if x > 0.0 => format!("{:.2}× wrk", m.rate / x),
                    _ => "–".into(),
                }
            );
        } else {
            let _ = writeln!(w, "Load-generator check: {}.\n", wrk.note);
        }
    }
}

/// `## Ingest`: one row per level, then the totals and the restart check.
pub(super) fn ingest(w: &mut String, o: &Opts, r: &Report) {
    let _ = writeln!(w, "## Ingest: `POST /v1/bitrix24/events`, durable acks\n");
    let _ = writeln!(
        w,
        "The real `b24-journal serve` (RUST_LOG={}, log to a file), {} portals from a `--config` file, ~545-byte form bodies in the wire format of `tests/fixtures/ONCRMACTIVITYUPDATE-app.form`, ADD/UPDATE/DELETE 35/50/15 %, random-looking activity ids with {} new events each (consecutive, to the same portal, each with its own `ts`), {:.0} % exact resends of bodies already answered `stored`. One server for all levels, in order; counts are checked against `GET /v1/portals` after each level.\n",
        o.server_log,
        o.ingest_portals,
        o.ingest_per_entity,
        o.dup_rate * 100.0
    );
    let _ = writeln!(
        w,
        "| connections | events/s | × ceiling | p50 | p99 | p99.9 | stored | duplicate | 503 | other non-200 | journal check | CPU server / client / other | peak RSS |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    );
    for row in &r.ingest {
        let m = &row.m;
        let c = &row.counts;
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.conns,
            int(m.rate as u64),
            fmt_ratio(ratio(m.rate, r.ceiling_at(m.conns))),
            ns(m.lat.p50),
            ns(m.lat.p99),
            ns(m.lat.p999),
            int(c.stored()),
            int(c.duplicates()),
            int(c.unavailable),
            int(c.other_status + c.unparsed),
            if row.verified {
                format!(
                    "✅ {} events, {} dups",
                    int(row.journal_events),
                    int(row.journal_dups)
                )
            } else {
                format!(
                    "❌ {} events, {} dups",
                    int(row.journal_events),
                    int(row.journal_dups)
                )
            },
            cpu(m),
            mib(m.peak_rss_kb)
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "events/s counts every 200 answer (`stored` and `duplicate`) in the measured window; stored/duplicate/503 count every answer of the level, warm-up included. CPU is in cores (2 = the whole machine): the server process, the load generator, and everything else on the machine (loopback network work in softirq also lands there; anything large means the machine was not quiet)."
    );
    let t = &r.ingest_total;
    let _ = write!(
        w,
        "After all levels: {} answers `stored`, {} `duplicate` (of {} resends), {} 503. ",
        int(t.stored()),
        int(t.duplicates()),
        int(t.resends),
        int(t.unavailable)
    );
    let _ = write!(
        w,
        "Clean restart (SIGTERM, start again): counts {}",
        if r.ingest_restart_ok {
            "still match ✅"
        } else {
            "DO NOT match ❌"
        }
    );
    if let Some(d) = r.ingest_startup {
        let _ = write!(w, ", start to healthy {}", dur(d));
    }
    if let Some((disk, events)) = r.ingest_disk {
        let per = |b: u64| b as f64 / events.max(1) as f64;
        let _ = write!(
            w,
            "; data dir after the restarted server stopped (a clean shutdown, which checkpoints) {} for {} events = **{:.0} B/event**: sled {} ({:.0} B/event), redo log {} ({:.0} B/event: the unsealed tails and the prepared segments), other {}",
            int(disk.total()),
            int(events),
            per(disk.total()),
            int(disk.engine),
            per(disk.engine),
            int(disk.redo_log),
            per(disk.redo_log),
            int(disk.other)
        );
    }
    let _ = writeln!(w, ".\n");
}

/// `## Query`: one row per kind and journal size.
pub(super) fn query(w: &mut String, o: &Opts, r: &Report) {
    if let Some(plan) = &r.query_plan {
        let _ = writeln!(w, "## Query: `GET /v1/portals/{{member}}/events`\n");
        let _ = writeln!(
            w,
            "Journal filled through the service's own write path (linked as a library) with N = {} events across {} portals (~{} per portal, ts ≈ base + i per portal with 0–2 s jitter, entity ids from a range of {} per portal ≈ {} events each), then served by the real binary; {} connections, random portals. `since/until` windows are {} s wide. × ceiling is against the bare server's GET.\n",
            int(o.n),
            int(plan.portals),
            int(plan.per_portal()),
            int(plan.entity_range),
            plan.per_entity,
            o.query_conns,
            o.window
        );
        let _ = writeln!(
            w,
            "| query | events in journal | req/s | × ceiling | p50 | p99 | p99.9 | events/answer | CPU server / client / other | peak RSS |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for q in &r.query {
            let m = &q.m;
            let per = q.counts.events as f64 / q.counts.ok.max(1) as f64;
            let label = if q.kind == QueryKind::Walk {
                format!(
                    "{} — {:.0} walks/s",
                    q.kind.label(),
                    q.counts.walks_done as f64 / o.query_secs
                )
            } else {
                q.kind.label().to_owned()
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
                label,
                int(q.at),
                int(m.rate as u64),
                fmt_ratio(ratio(m.rate, r.ceiling_get.as_ref())),
                ns(m.lat.p50),
                ns(m.lat.p99),
                ns(m.lat.p999),
                per,
                cpu(m),
                mib(m.peak_rss_kb)
            );
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "The cursor walk's latency is per page request; walks/s counts walks that reached 20 pages within the window.\n"
        );
    }
}
