//! The targets table: each goal of the service, what this run measured
//! for it, and whether it passes. Targets never fail the run.

use std::fmt::Write as _;

use super::budgets::INGEST_GOAL;
use super::fmt::{dur, fmt_ratio, int, mark, mib, ns, ratio};
use super::resources::mix_rows;
use crate::model::Report;
use crate::opts::Opts;
use crate::works::QueryKind;

/// 256 MB in KiB, the RSS goal.
const MB_256_KB: u64 = 256 * 1000 * 1000 / 1024;

/// One row of the targets table.
struct Target {
    what: String,
    measured: String,
    goal: &'static str,
    pass: Option<bool>,
}

/// The targets the run is judged by, measured or not.
fn targets(o: &Opts, r: &Report) -> Vec<Target> {
    let mut t = Vec::new();
    let not_measured = |what: String, goal| Target {
        what,
        measured: "not measured in this run".into(),
        goal,
        pass: None,
    };
    match r.ingest_at(64) {
        Some(row) => {
            let x = ratio(row.m.rate, r.ceiling_at(64));
            t.push(Target {
                what: "ingest at 64 connections: throughput".into(),
                measured: format!("{} ({} ev/s)", fmt_ratio(x), int(row.m.rate as u64)),
                goal: "≥ 0.3× ceiling",
                pass: x.map(|x| x >= INGEST_GOAL),
            });
            t.push(Target {
                what: "ingest at 64 connections: p99".into(),
                measured: ns(row.m.lat.p99),
                goal: "≤ 10 ms",
                pass: Some(row.m.lat.p99 <= 10_000_000),
            });
        }
        None => t.push(not_measured(
            "ingest at 64 connections".into(),
            "≥ 0.3× ceiling, p99 ≤ 10 ms",
        )),
    }
    match r.ingest_at(1) {
        Some(row) => {
            let x = ratio(row.m.rate, r.ceiling_at(1));
            t.push(Target {
                what: "ingest at 1 connection: throughput".into(),
                measured: format!("{} ({} ev/s)", fmt_ratio(x), int(row.m.rate as u64)),
                goal: "≥ 0.25× ceiling",
                pass: x.map(|x| x >= 0.25),
            });
        }
        None => t.push(not_measured(
            "ingest at 1 connection".into(),
            "≥ 0.25× ceiling",
        )),
    }
    match r.latest_at(o.n) {
        Some(q) => {
            t.push(Target {
                what: format!("latest-50 at N = {}: p99", int(o.n)),
                measured: ns(q.m.lat.p99),
                goal: "≤ 2 ms",
                pass: Some(q.m.lat.p99 <= 2_000_000),
            });
            let x = ratio(q.m.rate, r.ceiling_get.as_ref());
            t.push(Target {
                what: format!("latest-50 at N = {}: throughput", int(o.n)),
                measured: format!("{} ({} req/s)", fmt_ratio(x), int(q.m.rate as u64)),
                goal: "≥ 0.5× ceiling",
                pass: x.map(|x| x >= 0.5),
            });
            if let Some((bytes, sized)) = &r.ceiling_sized {
                t.push(Target {
                    what: format!(
                        "latest-50 at N = {}: throughput vs the bare server answering {} B (its mean answer)",
                        int(o.n),
                        int(*bytes)
                    ),
                    measured: format!(
                        "{} (bare server: {} req/s, p99 {}; {} of its small GET)",
                        fmt_ratio(ratio(q.m.rate, Some(sized))),
                        int(sized.rate as u64),
                        ns(sized.lat.p99),
                        fmt_ratio(ratio(sized.rate, r.ceiling_get.as_ref())),
                    ),
                    goal: "no goal: the limit answers of this size set",
                    pass: None,
                });
            }
            if let Some(small) = r.latest_at(o.stage).filter(|_| o.stage < o.n) {
                let x = q.m.lat.p99 as f64 / small.m.lat.p99.max(1) as f64;
                t.push(Target {
                    what: format!("latest-50 p99 at {} vs at {}", int(o.n), int(o.stage)),
                    measured: format!("{x:.2}× ({} vs {})", ns(q.m.lat.p99), ns(small.m.lat.p99)),
                    goal: "≤ 1.2×",
                    pass: Some(x <= 1.2),
                });
            }
        }
        None => t.push(not_measured(
            "latest-50 at N".into(),
            "p99 ≤ 2 ms, ≥ 0.5× ceiling",
        )),
    }
    for kind in [QueryKind::Entity, QueryKind::Range] {
        match r.query.iter().find(|q| q.kind == kind && q.at == o.n) {
            Some(q) => t.push(Target {
                what: format!("{} at N = {}: p99", kind.label(), int(o.n)),
                measured: format!("{} ({} req/s)", ns(q.m.lat.p99), int(q.m.rate as u64)),
                goal: "≤ 2 ms",
                pass: Some(q.m.lat.p99 <= 2_000_000),
            }),
            None => t.push(not_measured(format!("{} at N", kind.label()), "p99 ≤ 2 ms")),
        }
    }
    let mixes = mix_rows(o, r);
    if mixes.is_empty() {
        t.push(not_measured("bytes on disk per event".into(), "≤ 250 B"));
    }
    for m in mixes {
        let per = m.bytes_per_event();
        t.push(Target {
            what: format!(
                "bytes on disk per event at N = {}, {} per entity",
                int(m.events),
                m.per_entity
            ),
            measured: format!("{per:.0} B"),
            goal: "≤ 250 B",
            pass: Some(per <= 250.0),
        });
    }
    if let Some(&(at, total, _)) = r.serving_disk.iter().find(|(at, ..)| *at == o.n) {
        let per = total as f64 / at.max(1) as f64;
        t.push(Target {
            what: format!(
                "bytes on disk per event at N = {} while serving, read mirror included",
                int(at)
            ),
            measured: format!("{per:.0} B"),
            goal: "≤ 250 B",
            pass: Some(per <= 250.0),
        });
    }
    let fill_rss = r.fills.iter().chain(&r.mixes).map(|f| f.peak_rss_kb).max();
    match fill_rss {
        Some(kb) => t.push(Target {
            what: "peak RSS during fill (service's write path)".into(),
            measured: mib(kb),
            goal: "≤ 256 MB",
            pass: Some(kb <= MB_256_KB),
        }),
        None => t.push(not_measured("peak RSS during fill".into(), "≤ 256 MB")),
    }
    let query_rss = r.query.iter().map(|q| q.m.peak_rss_kb).max();
    match query_rss {
        Some(kb) => t.push(Target {
            what: "peak RSS of the server during queries".into(),
            measured: mib(kb),
            goal: "≤ 256 MB",
            pass: Some(kb <= MB_256_KB),
        }),
        None => t.push(not_measured("peak RSS during queries".into(), "≤ 256 MB")),
    }
    match r.startups.iter().find(|(at, _)| *at == o.n) {
        Some((_, d)) => t.push(Target {
            what: format!("start to healthy at N = {}", int(o.n)),
            measured: dur(*d),
            goal: "≤ 2 s",
            pass: Some(d.as_secs_f64() <= 2.0),
        }),
        None => t.push(not_measured("start to healthy".into(), "≤ 2 s")),
    }
    if let Some((_, d)) = r.restarts.iter().find(|(at, _)| *at == o.n) {
        t.push(Target {
            what: format!("restart to healthy at N = {} (second start)", int(o.n)),
            measured: dur(*d),
            goal: "≤ 2 s",
            pass: Some(d.as_secs_f64() <= 2.0),
        });
    }
    t
}

/// The `## Targets` section.
pub(super) fn section(w: &mut String, o: &Opts, r: &Report) {
    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(
        w,
        "| target | measured | goal | result |\n|---|---|---|---|"
    );
    for t in targets(o, r) {
        let res = match t.pass {
            Some(p) => mark(p),
            None => "–",
        };
        let _ = writeln!(w, "| {} | {} | {} | {} |", t.what, t.measured, t.goal, res);
    }
    let _ = writeln!(w);
}
