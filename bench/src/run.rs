//! `b24-bench run`: every phase, in one process, on one machine, one table.

use std::collections::HashSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use b24_journal::journal::WRITER_THREAD;
use hdrhistogram::Histogram;

use crate::client::{self, Outcome, Spec};
use crate::gen::{self, FillPlan, Portal};
use crate::report::{self, Report};
use crate::sys;
use crate::works::{
    repeated_ids, IngestCounts, IngestShared, IngestWork, QueryCounts, QueryKind, QueryShared,
    QueryWork,
};

pub const READ_TOKEN: &str = "bench-read-token-7f3a9c2e";
const INGEST_SEED: u64 = 24;
const QUERY_SEED: u64 = 1000;

/// Options of `run`.
#[derive(Debug, Clone)]
pub struct Opts {
    pub smoke: bool,
    pub n: u64,
    pub stage: u64,
    pub ingest_conns: Vec<usize>,
    pub query_conns: usize,
    pub ingest_secs: f64,
    pub query_secs: f64,
    pub warmup_secs: f64,
    pub ingest_portals: usize,
    pub query_portals: u64,
    pub dup_rate: f64,
    pub window: u64,
    pub tmp: PathBuf,
    pub server_bin: PathBuf,
    pub ceiling_bin: PathBuf,
    pub repo: PathBuf,
    pub outputs: Vec<PathBuf>,
    pub command: String,
    pub client_threads: usize,
    pub wrk: bool,
    pub fsync_count: u32,
    pub fill_inflight: usize,
    pub server_log: String,
    /// Seconds to wait for the machine to be quiet before starting.
    pub wait_quiet: f64,
}

impl Opts {
    pub fn defaults() -> Opts {
        Opts {
            smoke: false,
            n: 1_000_000,
            stage: 100_000,
            ingest_conns: vec![1, 16, 64, 256],
            query_conns: 16,
            ingest_secs: 10.0,
            query_secs: 10.0,
            warmup_secs: 1.0,
            ingest_portals: 100,
            query_portals: 1000,
            dup_rate: 0.10,
            window: 30,
            tmp: PathBuf::new(),
            server_bin: PathBuf::from("target/release/b24-journal"),
            ceiling_bin: PathBuf::from("target/release/b24-bench-ceiling"),
            repo: PathBuf::from("."),
            outputs: vec![PathBuf::from("target/bench/latest.md")],
            command: "scripts/bench.sh".into(),
            client_threads: 1,
            wrk: true,
            fsync_count: 2000,
            fill_inflight: 512,
            server_log: "info".into(),
            wait_quiet: 180.0,
        }
    }

    pub fn smoke(mut self) -> Opts {
        self.smoke = true;
        self.n = 20_000;
        self.stage = 5_000;
        self.ingest_conns = vec![1, 64];
        self.ingest_secs = 1.0;
        self.query_secs = 1.0;
        self.warmup_secs = 0.2;
        self.wrk = false;
        self.fsync_count = 200;
        self.wait_quiet = 0.0;
        self
    }
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A child process that is killed if the harness stops early. Its pid is
/// also written to `<tmp>/pids/` so that scripts/bench.sh's trap can kill it
/// if the harness itself is killed.
pub struct Proc {
    name: String,
    child: Option<Child>,
    pub pid: u32,
    log: PathBuf,
    pidfile: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: &Path, pids: &Path) -> Result<Proc, String> {
        let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stderr(log_file);
        let child = cmd.spawn().map_err(|e| format!("start {name}: {e}"))?;
        let pid = child.id();
        let pidfile = pids.join(format!("{pid}"));
        let _ = std::fs::write(&pidfile, format!("{pid}\n"));
        Ok(Proc {
            name: name.into(),
            child: Some(child),
            pid,
            log: log.to_owned(),
            pidfile,
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Err if the process has exited.
    fn alive(&mut self) -> Result<(), String> {
        let child = self.child.as_mut().expect("child");
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!(
                "{} exited unexpectedly ({st}); log tail:\n{}",
                self.name,
                self.log_tail()
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// SIGTERM, then wait (up to 60 s) for a clean exit.
    fn stop(mut self) -> Result<ExitStatus, String> {
        let mut child = self.child.take().expect("child");
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    let _ = std::fs::remove_file(&self.pidfile);
                    return Ok(st);
                }
                Ok(None) if t.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_file(&self.pidfile);
                    return Err(format!("{} did not stop within 60 s of SIGTERM", self.name));
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.pidfile);
        }
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

pub struct Harness {
    pub o: Opts,
    pub rt: tokio::runtime::Runtime,
    pub pids: PathBuf,
    pub errors: Vec<String>,
    pub r: Report,
}

/// Latency summary of a histogram, in ns.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lat {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
}

impl Lat {
    pub fn of(h: &Histogram<u64>) -> Lat {
        Lat {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
        }
    }
}

/// One load phase's numbers.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub conns: usize,
    pub rate: f64,
    pub lat: Lat,
    pub server_cpu: f64,
    pub client_cpu: f64,
    /// Cores busy with anything else on the machine during the phase.
    pub other_cpu: f64,
    /// Cores used by the service's journal writer thread (`None` for the
    /// bare server, which has none).
    pub writer_cpu: Option<f64>,
    pub peak_rss_kb: u64,
}

pub struct Service {
    proc_: Proc,
    pub addr: SocketAddr,
    pub startup: Duration,
}

impl Harness {
    pub fn new(o: Opts) -> Result<Harness, String> {
        let rt = if o.client_threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(o.client_threads)
                .enable_all()
                .build()
        }
        .map_err(|e| e.to_string())?;
        let pids = o.tmp.join("pids");
        std::fs::create_dir_all(&pids).map_err(|e| e.to_string())?;
        Ok(Harness {
            o,
            rt,
            pids,
            errors: Vec::new(),
            r: Report::default(),
        })
    }

    fn spec(&self, addr: SocketAddr, conns: usize, secs: f64) -> Spec {
        Spec {
            addr,
            conns,
            warmup: Duration::from_secs_f64(self.o.warmup_secs),
            measure: Duration::from_secs_f64(secs),
        }
    }

    /// Runs one load phase against `pid`, measuring CPU and peak RSS too.
    fn measure<W: client::Work, F: FnMut(usize) -> W>(
        &self,
        pid: u32,
        spec: Spec,
        factory: F,
    ) -> Result<(Outcome<W>, Measured), String> {
        let _ = sys::reset_peak_rss(pid);
        let me = std::process::id();
        let w0 = sys::thread_cpu_secs(pid, WRITER_THREAD);
        let (s0, c0, j0, t0) = (
            sys::cpu_secs(pid).unwrap_or(0.0),
            sys::cpu_secs(me).unwrap_or(0.0),
            sys::machine_jiffies().unwrap_or((0, 0)),
            Instant::now(),
        );
        let out = self.rt.block_on(client::run(spec, factory))?;
        let wall = t0.elapsed().as_secs_f64();
        let w1 = sys::thread_cpu_secs(pid, WRITER_THREAD);
        let (s1, c1, j1) = (
            sys::cpu_secs(pid).unwrap_or(0.0),
            sys::cpu_secs(me).unwrap_or(0.0),
            sys::machine_jiffies().unwrap_or((0, 0)),
        );
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let busy_cores = (j1.0 - j0.0) as f64 / (j1.1 - j0.1).max(1) as f64 * cores;
        let (server_cpu, client_cpu) = ((s1 - s0) / wall, (c1 - c0) / wall);
        let m = Measured {
            conns: spec.conns,
            rate: out.rate(),
            lat: Lat::of(&out.hist),
            server_cpu,
            client_cpu,
            other_cpu: (busy_cores - server_cpu - client_cpu).max(0.0),
            writer_cpu: w0.zip(w1).map(|(a, b)| (b - a) / wall),
            peak_rss_kb: sys::vm_hwm_kb(pid).unwrap_or(0),
        };
        Ok((out, m))
    }

    fn write_config(&self, name: &str, data_dir: &Path, portals: &[Portal]) -> PathBuf {
        let path = self.o.tmp.join(format!("{name}.toml"));
        let text = format!(
            "data_dir = \"{}\"\nread_token = \"{READ_TOKEN}\"\n\n{}",
            data_dir.display(),
            gen::portals_toml(portals)
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts the real service binary and waits for `GET /healthz` 200.
    fn start_service(&self, name: &str, config: &Path) -> Result<Service, String> {
        let mut last_err = String::new();
        for attempt in 0..3 {
            let port = free_port()?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let mut cmd = Command::new(&self.o.server_bin);
            cmd.arg("serve")
                .arg("--config")
                .arg(config)
                .arg("--listen")
                .arg(addr.to_string())
                .env("RUST_LOG", &self.o.server_log)
                .stdout(Stdio::null());
            let log = self.o.tmp.join(format!("{name}-{attempt}.log"));
            let t0 = Instant::now();
            let mut p = Proc::spawn(name, cmd, &log, &self.pids)?;
            match self.wait_healthy(&mut p, addr, t0) {
                Ok(startup) => {
                    return Ok(Service {
                        proc_: p,
                        addr,
                        startup,
                    })
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    fn wait_healthy(
        &self,
        p: &mut Proc,
        addr: SocketAddr,
        t0: Instant,
    ) -> Result<Duration, String> {
        loop {
            p.alive()?;
            let r = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(6), client::get(addr, "/healthz", None))
                    .await
            });
            if let Ok(Ok((200, _))) = r {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(120) {
                return Err(format!("{} not healthy after 120 s", p.name));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn stop_service(&mut self, s: Service, what: &str) {
        match s.proc_.stop() {
            Ok(st) if st.success() => {}
            Ok(st) => self
                .errors
                .push(format!("{what}: service exited with {st} after SIGTERM")),
            Err(e) => self.errors.push(format!("{what}: {e}")),
        }
    }

    /// The service's `b24j_store_writes_total` (sled keys written), from
    /// `GET /metrics`; `None` if it cannot be read.
    fn store_writes(&self, addr: SocketAddr) -> Option<u64> {
        let (status, body) = self.rt.block_on(client::get(addr, "/metrics", None)).ok()?;
        if status != 200 {
            return None;
        }
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix("b24j_store_writes_total "))?
            .trim()
            .parse()
            .ok()
    }

    /// Sums `events` and `duplicates` over `GET /v1/portals`.
    fn journal_totals(&self, addr: SocketAddr) -> Result<(u64, u64, usize), String> {
        let (status, body) = self
            .rt
            .block_on(client::get(addr, "/v1/portals", Some(READ_TOKEN)))
            .map_err(|e| format!("GET /v1/portals: {e}"))?;
        if status != 200 {
            return Err(format!(
                "GET /v1/portals answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("GET /v1/portals JSON: {e}"))?;
        let list = v["portals"]
            .as_array()
            .ok_or("GET /v1/portals: no `portals` array")?;
        let sum = |k: &str| list.iter().map(|p| p[k].as_u64().unwrap_or(0)).sum::<u64>();
        Ok((sum("events"), sum("duplicates"), list.len()))
    }

    // -----------------------------------------------------------------------
    // Phases
    // -----------------------------------------------------------------------

    pub fn machine(&mut self) -> Result<(), String> {
        if self.o.wait_quiet > 0.0 {
            let t = Instant::now();
            loop {
                let busy = sys::cpu_busy(Duration::from_secs(1)).unwrap_or(0.0);
                if busy < 0.15 {
                    break;
                }
                if t.elapsed().as_secs_f64() > self.o.wait_quiet {
                    eprintln!(
                        "== the machine is still busy ({:.0} % CPU); starting anyway",
                        busy * 100.0
                    );
                    break;
                }
                eprintln!(
                    "== waiting for a quiet machine ({:.0} % CPU busy)",
                    busy * 100.0
                );
                std::thread::sleep(Duration::from_secs(4));
            }
        }
        self.r.started = sh_date();
        self.r.machine = Some(sys::machine(&self.o.tmp));
        self.r.busy_before = sys::cpu_busy(Duration::from_millis(500));
        self.r.load_before = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        self.r.git = sys::git_describe(&self.o.repo);
        self.r.versions = sys::lock_versions(
            &self.o.repo.join("Cargo.lock"),
            &["warp", "hyper", "hyper-util", "tokio", "sled"],
        );
        eprintln!("== fsync rate ({} × 200 B + fdatasync)", self.o.fsync_count);
        self.r.fsync_append_rate = Some(
            sys::fsync_rate(&self.o.tmp, self.o.fsync_count, false)
                .map_err(|e| format!("fsync: {e}"))?,
        );
        self.r.fsync_rate = Some(
            sys::fsync_rate(&self.o.tmp, self.o.fsync_count, true)
                .map_err(|e| format!("fsync: {e}"))?,
        );
        Ok(())
    }

    /// Starts the bare server; returns it and its address.
    fn spawn_ceiling(&self, name: &str) -> Result<(Proc, SocketAddr), String> {
        let log = self.o.tmp.join(format!("{name}.log"));
        let mut cmd = Command::new(&self.o.ceiling_bin);
        cmd.arg("127.0.0.1:0").stdout(Stdio::piped());
        let mut p = Proc::spawn(name, cmd, &log, &self.pids)?;
        let addr = {
            use std::io::BufRead;
            let out = p
                .child
                .as_mut()
                .expect("child")
                .stdout
                .take()
                .ok_or("ceiling stdout")?;
            let mut line = String::new();
            std::io::BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            line.trim()
                .strip_prefix("listening on ")
                .ok_or_else(|| format!("ceiling said {line:?}"))?
                .parse::<SocketAddr>()
                .map_err(|e| e.to_string())?
        };
        Ok((p, addr))
    }

    pub fn ceiling(&mut self) -> Result<(), String> {
        let (mut p, addr) = self.spawn_ceiling("ceiling")?;
        let host = addr.to_string();
        let shared = IngestShared::new(gen::portals(self.o.ingest_portals, INGEST_SEED), host, 0.0);
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
        match p.stop() {
            Ok(_) => {}
            Err(e) => self.errors.push(format!("ceiling: {e}")),
        }
        Ok(())
    }

    /// The bare server's GET once more, answering bodies as large as the
    /// service's latest-50 pages at N were on average: what HTTP and the
    /// kernel alone manage for answers of that size on this machine.
    pub fn ceiling_sized(&mut self) -> Result<(), String> {
        let Some(q) = self
            .r
            .query
            .iter()
            .find(|q| q.kind == QueryKind::Latest && q.at == self.o.n)
        else {
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
            self.errors.push(format!("sized ceiling: {e}"));
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
    ) -> Result<(QueryCounts, Measured), String> {
        let qs = Arc::new(QueryShared {
            members: vec!["x".into()],
            host: addr,
            token: READ_TOKEN.into(),
            plan: FillPlan::new(1, 1),
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
            self.r.wrk = Some(report::Wrk {
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
        self.r.wrk = Some(report::Wrk {
            conns: c,
            secs,
            rate,
            p50: field("50%"),
            p99: field("99%"),
            note: String::new(),
        });
    }

    pub fn ingest(&mut self) -> Result<(), String> {
        let data = self.o.tmp.join("ingest-data");
        let portals = gen::portals(self.o.ingest_portals, INGEST_SEED);
        let cfg = self.write_config("ingest", &data, &portals);
        eprintln!("== ingest: starting b24-journal");
        let mut svc = self.start_service("ingest-server", &cfg)?;
        let shared = IngestShared::new(portals, svc.addr.to_string(), self.o.dup_rate);
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
            let (events, dups, _) = self.journal_totals(svc.addr)?;
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
            let verified = problems.is_empty();
            for p in problems {
                self.errors.push(format!("ingest at {c} connections: {p}"));
            }
            self.r.ingest.push(report::IngestRow {
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
        let (events, dups, _) = self.journal_totals(svc.addr)?;
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
        let bytes = sys::disk_usage(&data).unwrap_or(0);
        self.r.ingest_disk = Some((bytes, cum.stored()));
        self.r.ingest_total = cum;
        let _ = std::fs::remove_dir_all(&data);
        Ok(())
    }

    fn fill(&mut self, data: &Path, from: u64, to: u64) -> Result<report::FillRow, String> {
        eprintln!("== fill {from}..{to} of {} through the library", self.o.n);
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
                ],
            )
            .map_err(|e| format!("fill {from}..{to}: {e}"))?;
        let wall = t.elapsed();
        let row = report::FillRow {
            from,
            to,
            stored: line.get("stored") as u64,
            duplicates: line.get("duplicates") as u64,
            fill_secs: line.get("fill_secs"),
            close_secs: line.get("close_secs"),
            wall,
            peak_rss_kb: line.get("vmhwm_kb") as u64,
            disk_bytes: sys::disk_usage(data).unwrap_or(0),
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

    fn query_phase(
        &mut self,
        svc: &Service,
        qs: &Arc<QueryShared>,
        kind: QueryKind,
        at: u64,
    ) -> Result<(), String> {
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
        self.r.query.push(report::QueryRow {
            kind,
            at,
            m,
            counts,
        });
        Ok(())
    }

    pub fn query(&mut self) -> Result<(), String> {
        let data = self.o.tmp.join("query-data");
        let portals = gen::portals(self.o.query_portals as usize, QUERY_SEED);
        let members: Vec<String> = portals.iter().map(|p| p.member.clone()).collect();
        let cfg = self.write_config("query", &data, &portals);
        let plan = FillPlan::new(self.o.query_portals, self.o.n);
        let stages: Vec<u64> = if self.o.stage < self.o.n {
            vec![self.o.stage, self.o.n]
        } else {
            vec![self.o.n]
        };
        let mut from = 0;
        for (si, &at) in stages.iter().enumerate() {
            let row = self.fill(&data, from, at)?;
            from = at;
            self.r.fills.push(row);
            eprintln!("== query: starting b24-journal on {at} events");
            let svc = self.start_service(&format!("query-server-{at}"), &cfg)?;
            self.r.startups.push((at, svc.startup));
            let (events, _, _) = self.journal_totals(svc.addr)?;
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
            let last = si + 1 == stages.len();
            let kinds: &[QueryKind] = if last {
                &[
                    QueryKind::Latest,
                    QueryKind::Walk,
                    QueryKind::Entity,
                    QueryKind::Range,
                ]
            } else {
                &[QueryKind::Latest]
            };
            let mut res = Ok(());
            for &k in kinds {
                res = self.query_phase(&svc, &qs, k, at);
                if res.is_err() {
                    break;
                }
            }
            let mut svc = svc;
            if let Err(e) = svc.proc_.alive() {
                self.errors.push(e);
            }
            self.stop_service(svc, &format!("query server at {at}"));
            res?;
            // sled 0.34.7 writes its page-table snapshot only when it opens a
            // database, so the first start after a fill scans sled's log
            // written since the fill's last engine reopen (every 512 MiB of
            // redo log, as in the service); a restart shows what a clean
            // start right after another pays.
            let again = self.start_service(&format!("query-server-{at}-restart"), &cfg)?;
            self.r.restarts.push((at, again.startup));
            self.stop_service(again, &format!("query server at {at} (restarted)"));
        }
        self.floors(&data);
        self.r.query_plan = Some(plan);
        let _ = std::fs::remove_dir_all(&data);
        Ok(())
    }

    /// The in-process measurements of `floor`: latest-50 through the query
    /// code on the filled journal (no server runs on it now), then sled
    /// alone inserting values of the journal's mean record size. A failure
    /// is an error of the run (the filled journal must open and answer),
    /// and the report's CPU-per-request section then lacks what is missing.
    fn floors(&mut self, data: &Path) {
        let secs = if self.o.smoke { 1.0 } else { 6.0 };
        eprintln!("== in-process latest-50 on the filled journal, {secs} s");
        let probe = self.tool(
            "PROBE",
            &[
                "probe",
                "--data-dir",
                &data.display().to_string(),
                "--secs",
                &secs.to_string(),
                "--seed",
                &QUERY_SEED.to_string(),
            ],
        );
        let record_bytes = match probe {
            Ok(v) => {
                let probe = report::Probe {
                    pages: v.get("pages") as u64,
                    cpu_us: v.get("cpu_us"),
                    body_bytes: v.get("body_bytes") as u64,
                    record_bytes: v.get("record_bytes") as u64,
                };
                let b = probe.record_bytes;
                self.r.probe = Some(probe);
                b.max(1)
            }
            Err(e) => {
                self.errors.push(format!("probe: {e}"));
                return;
            }
        };
        let n = self.o.n.min(1_000_000);
        eprintln!("== sled alone: {n} inserts of {record_bytes} B");
        let dir = self.o.tmp.join("sled-floor");
        let floor = self.tool(
            "FLOOR",
            &[
                "sled-floor",
                "--dir",
                &dir.display().to_string(),
                "--n",
                &n.to_string(),
                "--value-bytes",
                &record_bytes.to_string(),
            ],
        );
        let _ = std::fs::remove_dir_all(&dir);
        match floor {
            Ok(v) => {
                self.r.floor = Some(report::Floor {
                    inserts: n,
                    value_bytes: record_bytes,
                    cpu_us: v.get("cpu_us"),
                    disk_bytes_per_item: v.get("disk_bytes_per_item"),
                })
            }
            Err(e) => self.errors.push(format!("sled-floor: {e}")),
        }
    }

    /// Runs this binary with `args` (a subcommand: fill, probe, sled-floor)
    /// and returns the `key=value` pairs of its stdout line `PREFIX …`. The
    /// child is registered in `<tmp>/pids` while it runs, so that
    /// scripts/bench.sh's trap stops it when a run is interrupted.
    fn tool(&self, prefix: &str, args: &[&str]) -> Result<ToolLine, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{}: {e}", args[0]))?;
        let pidfile = self.pids.join(child.id().to_string());
        let _ = std::fs::write(&pidfile, child.id().to_string());
        let out = child.wait_with_output();
        let _ = std::fs::remove_file(&pidfile);
        let out = out.map_err(|e| format!("{}: {e}", args[0]))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!("{} failed ({}): {text}", args[0], out.status));
        }
        text.lines()
            .find_map(|l| {
                l.strip_prefix(prefix)
                    .filter(|rest| rest.starts_with(' '))
                    .map(|rest| ToolLine(rest.to_owned()))
            })
            .ok_or_else(|| format!("{} printed no {prefix} line: {text}", args[0]))
    }

    pub fn finish(&mut self, wall: Duration) -> String {
        self.r.wall = wall;
        self.r.errors = self.errors.clone();
        report::render(&self.o, &self.r)
    }
}

/// The `key=value …` rest of a tool's result line.
struct ToolLine(String);

impl ToolLine {
    /// The value of `key`, 0 if absent or not a number.
    fn get(&self, key: &str) -> f64 {
        self.0
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

fn sh_date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Runs every phase; returns the report and whether all checks passed.
pub fn run(o: Opts) -> Result<(String, bool), String> {
    let t = Instant::now();
    let mut h = Harness::new(o)?;
    let mut fatal = None;
    for phase in [
        Harness::machine as fn(&mut Harness) -> Result<(), String>,
        Harness::ceiling,
        Harness::ingest,
        Harness::query,
        Harness::ceiling_sized,
    ] {
        if let Err(e) = phase(&mut h) {
            fatal = Some(e);
            break;
        }
    }
    if let Some(e) = fatal {
        h.errors.push(format!("aborted: {e}"));
    }
    let text = h.finish(t.elapsed());
    let ok = h.errors.is_empty();
    Ok((text, ok))
}
