//! The ceiling phases: the bare server (`b24-bench-ceiling`) under the same
//! load as the service, so that every throughput can be read as a share of
//! what HTTP alone manages on this machine; wrk once against it, to check
//! the load generator; and, after the query phase, its GET answering
//! bodies as large as the service's latest-50 pages.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{anyhow, Context};

use super::harness::{Harness, INGEST_SEED, READ_TOKEN};
use super::proc::Proc;
use crate::gen::{self, FillPlan};
use crate::model::{Measured, Wrk};
use crate::works::{
    IngestCounts, IngestShared, IngestWork, QueryCounts, QueryKind, QueryShared, QueryWork,
};

impl Harness {
    /// Starts the bare server; returns it and its address.
    fn spawn_ceiling(&self, name: &str) -> anyhow::Result<(Proc, SocketAddr)> {
        let log = self.o.tmp.join(format!("{name}.log"));
        let mut cmd = Command::new(&self.o.ceiling_bin);
        cmd.arg("127.0.0.1:0").stdout(Stdio::piped());
        let mut p = Proc::spawn(name, cmd, &log, &self.pids)?;
        let out = p
            .child
            .as_mut()
            .expect("a Proc just spawned has its child")
            .stdout
            .take()
            .context("ceiling stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .context("ceiling stdout")?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("ceiling said {line:?}"))?
            .parse::<SocketAddr>()
            .with_context(|| format!("ceiling said {line:?}"))?;
        Ok((p, addr))
    }

    /// The ceiling phase: POST at every ingest concurrency, GET at the query
    /// concurrency, and the wrk comparison.
    pub(super) fn ceiling(&mut self) -> anyhow::Result<()> {
        let (mut p, addr) = self.spawn_ceiling("ceiling")?;
        let host = addr.to_string();
        let shared = IngestShared::new(
            gen::portals(self.o.ingest_portals, INGEST_SEED),
            host,
            0.0,
            1,
        );
        for &c in &self.o.ingest_conns.clone() {
            eprintln!("== ceiling POST, {c} connections");
            let spec = self.spec(addr, c, self.o.ingest_secs);
            let (out, m) = self.measure(p.pid, spec, |i| {
                IngestWork::new(shared.clone(), 7_000 + i as u64, true)
            })?;
            let mut counts = IngestCounts::default();
            for w in &out.works {
                counts.add(&w.counts);
            }
            if counts.other_status + counts.unavailable > 0 {
                self.errors.push(format!(
                    "ceiling POST at {c}: {} non-200 answers",
                    counts.other_status + counts.unavailable
                ));
            }
            self.r.ceiling_post.push(m);
        }
        eprintln!("== ceiling GET, {} connections", self.o.query_conns);
        let (counts, m) = self.ceiling_get(&p, addr, QueryKind::Ceiling, 9_000)?;
        let non200 = counts.non200;
        if non200 > 0 {
            self.errors
                .push(format!("ceiling GET: {non200} non-200 answers"));
        }
        self.r.ceiling_get = Some(m);
        if self.o.wrk {
            self.wrk_compare(addr, &shared);
        }
        p.alive()?;
        if let Err(e) = p.stop() {
            self.errors.push(format!("ceiling: {e:#}"));
        }
        Ok(())
    }

    /// The bare server's GET once more, answering bodies as large as the
    /// service's latest-50 pages at N were on average: what HTTP and the
    /// kernel alone manage for answers of that size on this machine.
    pub(super) fn ceiling_sized(&mut self) -> anyhow::Result<()> {
        let Some(q) = self.r.latest_at(self.o.n) else {
            return Ok(());
        };
        let Some(bytes) = q.counts.bytes.checked_div(q.counts.ok) else {
            return Ok(());
        };
        let (mut p, addr) = self.spawn_ceiling("ceiling-sized")?;
        eprintln!(
            "== ceiling GET answering {bytes} bytes, {} connections",
            self.o.query_conns
        );
        let (counts, m) = self.ceiling_get(&p, addr, QueryKind::CeilingSized(bytes), 9_500)?;
        if counts.non200 > 0 || counts.bytes != counts.ok * bytes {
            self.errors.push(format!(
                "sized ceiling GET: {} non-200 answers, {} bytes in {} answers of {bytes}",
                counts.non200, counts.bytes, counts.ok
            ));
        }
        self.r.ceiling_sized = Some((bytes, m));
        p.alive()?;
        if let Err(e) = p.stop() {
            self.errors.push(format!("sized ceiling: {e:#}"));
        }
        Ok(())
    }

    /// GETs of `kind` against the bare server at the query concurrency.
    fn ceiling_get(
        &self,
        p: &Proc,
        addr: SocketAddr,
        kind: QueryKind,
        seed: u64,
    ) -> anyhow::Result<(QueryCounts, Measured)> {
        let qs = Arc::new(QueryShared {
            members: vec!["x".into()],
            host: addr,
            token: READ_TOKEN.into(),
            plan: FillPlan::new(1, 1, 1),
            filled: 1,
            window: 1,
        });
        let spec = self.spec(addr, self.o.query_conns, self.o.query_secs);
        let (out, m) = self.measure(p.pid, spec, |i| {
            QueryWork::new(qs.clone(), kind, seed + i as u64)
        })?;
        let mut counts = QueryCounts::default();
        for w in &out.works {
            counts.add(&w.counts);
        }
        Ok((counts, m))
    }

    /// The same POST load by wrk against the same bare server, once.
    fn wrk_compare(&mut self, addr: SocketAddr, shared: &Arc<IngestShared>) {
        let c = 64;
        let mut body = Vec::new();
        let mut rng = gen::Rng::new(5);
        gen::write_body(
            &mut body,
            &shared.portals[0],
            "ONCRMACTIVITYUPDATE",
            999,
            1_466_439_714,
            &mut rng,
        );
        let script = self.o.tmp.join("post.lua");
        let lua = format!(
            "wrk.method = \"POST\"\nwrk.body = \"{}\"\nwrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n",
            String::from_utf8_lossy(&body)
        );
        if std::fs::write(&script, lua).is_err() {
            return;
        }
        let secs = self.o.ingest_secs.round().max(1.0) as u64;
        eprintln!("== wrk -t1 -c{c} -d{secs}s against the ceiling (comparison)");
        let out = Command::new("wrk")
            .args(["-t1", &format!("-c{c}"), &format!("-d{secs}s"), "--latency"])
            .arg("-s")
            .arg(&script)
            .arg(format!("http://{addr}/v1/bitrix24/events"))
            .output();
        let Ok(out) = out else {
            self.r.wrk = Some(Wrk {
                note: "wrk not found".into(),
                ..Default::default()
            });
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |prefix: &str| -> Option<String> {
            text.lines()
                .map(str::trim)
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.split_whitespace().last())
                .map(str::to_owned)
        };
        let rate = field("Requests/sec:").and_then(|v| v.parse::<f64>().ok());
        self.r.wrk = Some(Wrk {
            conns: c,
            secs,
            rate,
            p50: field("50%"),
            p99: field("99%"),
            note: String::new(),
        });
    }
}
