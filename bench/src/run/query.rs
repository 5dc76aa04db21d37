//! The query phase: the query journal filled through the service's write
//! path (`b24-bench fill`, first to the small stage, then to N), the real
//! service started on it at each stage, and every query kind measured
//! against it; then the in-process floors on the full journal.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use super::harness::{Harness, QUERY_SEED, READ_TOKEN};
use super::service::Service;
use crate::gen::{self, FillPlan};
use crate::model::{FillRow, QueryRow};
use crate::sys;
use crate::works::{QueryCounts, QueryKind, QueryShared, QueryWork};

/// Query kinds measured at the small stage.
const STAGE_KINDS: &[QueryKind] = &[QueryKind::Latest];
/// Query kinds measured at N.
const FULL_KINDS: &[QueryKind] = &[
    QueryKind::Latest,
    QueryKind::Walk,
    QueryKind::Entity,
    QueryKind::Range,
];

impl Harness {
    /// The query phase.
    pub(super) fn query(&mut self) -> anyhow::Result<()> {
        let data = self.o.tmp.join("query-data");
        let portals = gen::portals(self.o.query_portals as usize, QUERY_SEED);
        let members: Vec<String> = portals.iter().map(|p| p.member.clone()).collect();
        let cfg = self.write_config("query", &data, &portals)?;
        let plan = FillPlan::new(self.o.query_portals, self.o.n, self.o.query_per_entity);
        let stages: Vec<u64> = if self.o.stage < self.o.n {
            vec![self.o.stage, self.o.n]
        } else {
            vec![self.o.n]
        };
        let mut from = 0;
        for (si, &at) in stages.iter().enumerate() {
            let row = self.fill(&data, plan.per_entity, from, at)?;
            from = at;
            self.r.fills.push(row);
            eprintln!("== query: starting b24-journal on {at} events");
            let mut svc = self.start_service(&format!("query-server-{at}"), &cfg)?;
            self.r.startups.push((at, svc.startup));
            let ready = self.wait_mirror(&mut svc)?;
            self.r.mirror_ready.push((at, ready));
            let (events, _) = self.journal_totals(svc.addr)?;
            if events != at {
                self.errors.push(format!(
                    "query journal at {at}: GET /v1/portals sums {events} events"
                ));
            }
            let qs = Arc::new(QueryShared {
                members: members.clone(),
                host: svc.addr,
                token: READ_TOKEN.into(),
                plan,
                filled: at,
                window: self.o.window,
            });
            let kinds = if si + 1 == stages.len() {
                FULL_KINDS
            } else {
                STAGE_KINDS
            };
            let mut res = Ok(());
            for &k in kinds {
                res = self.query_kind(&svc, &qs, k, at);
                if res.is_err() {
                    break;
                }
            }
            // The read mirror (`store/mirror.rs`) is on disk only while the
            // service runs: the fills' sizes, taken after a clean close,
            // leave it out.
            if let Ok(total) = sys::disk_usage(&data) {
                let mirror = sys::disk_usage(&data.join("sled").join("mirror")).unwrap_or(0);
                self.r.serving_disk.push((at, total, mirror));
            }
            if let Err(e) = svc.proc_.alive() {
                self.errors.push(format!("{e:#}"));
            }
            self.stop_service(svc, &format!("query server at {at}"));
            res?;
            // sled writes its page-table snapshot only when it opens a
            // database, so the first start after a fill scans the log the
            // fill wrote since its last engine reopen; a second start shows
            // what a clean start right after another pays.
            let again = self.start_service(&format!("query-server-{at}-restart"), &cfg)?;
            self.r.restarts.push((at, again.startup));
            self.stop_service(again, &format!("query server at {at} (restarted)"));
        }
        self.floors(&data);
        self.r.query_plan = Some(plan);
        let _ = std::fs::remove_dir_all(&data);
        Ok(())
    }

    /// Fills the events `from..to` of the plan for N with `per_entity`
    /// events per entity id into `data` with `b24-bench fill`.
    pub(super) fn fill(
        &mut self,
        data: &Path,
        per_entity: u64,
        from: u64,
        to: u64,
    ) -> anyhow::Result<FillRow> {
        eprintln!(
            "== fill {from}..{to} of {} ({per_entity} per entity) through the library",
            self.o.n
        );
        let t = Instant::now();
        let line = self
            .tool(
                "FILL",
                &[
                    "fill",
                    "--data-dir",
                    &data.display().to_string(),
                    "--from",
                    &from.to_string(),
                    "--to",
                    &to.to_string(),
                    "--n",
                    &self.o.n.to_string(),
                    "--portals",
                    &self.o.query_portals.to_string(),
                    "--seed",
                    &QUERY_SEED.to_string(),
                    "--inflight",
                    &self.o.fill_inflight.to_string(),
                    "--per-entity",
                    &per_entity.to_string(),
                ],
            )
            .with_context(|| format!("fill {from}..{to}"))?;
        let wall = t.elapsed();
        let row = FillRow {
            per_entity,
            from,
            to,
            stored: line.get("stored") as u64,
            duplicates: line.get("duplicates") as u64,
            fill_secs: line.get("fill_secs"),
            close_secs: line.get("close_secs"),
            wall,
            peak_rss_kb: line.get("vmhwm_kb") as u64,
            disk: sys::disk_split(data).unwrap_or_default(),
        };
        if row.stored != to - from || row.duplicates != 0 {
            self.errors.push(format!(
                "fill {from}..{to}: {} stored, {} duplicates (expected {} stored, 0 duplicates)",
                row.stored,
                row.duplicates,
                to - from
            ));
        }
        Ok(row)
    }

    /// One query kind against the service on the journal of `at` events.
    fn query_kind(
        &mut self,
        svc: &Service,
        qs: &Arc<QueryShared>,
        kind: QueryKind,
        at: u64,
    ) -> anyhow::Result<()> {
        eprintln!(
            "== query {} at {at} events, {} connections",
            kind.label(),
            self.o.query_conns
        );
        let spec = self.spec(svc.addr, self.o.query_conns, self.o.query_secs);
        let (out, m) = self.measure(svc.proc_.pid, spec, |i| {
            QueryWork::new(qs.clone(), kind, QUERY_SEED ^ ((i as u64) << 8) ^ at)
        })?;
        let mut counts = QueryCounts::default();
        for w in &out.works {
            counts.add(&w.counts);
        }
        if counts.non200 > 0 {
            self.errors.push(format!(
                "query {} at {at}: {} non-200 answers, e.g. {:?}",
                kind.label(),
                counts.non200,
                counts.samples
            ));
        }
        // Every portal holds at least 50 events at both stages, so a latest-50
        // page is always full; and every entity/window query matches.
        if kind == QueryKind::Latest && counts.short_pages > 0 && at / self.o.query_portals >= 50 {
            self.errors.push(format!(
                "query latest-50 at {at}: {} pages with fewer than 50 events",
                counts.short_pages
            ));
        }
        self.r.query.push(QueryRow {
            kind,
            at,
            m,
            counts,
        });
        Ok(())
    }
}
