//! What the phases of a run share: the options, the load generator's
//! runtime, the pid dir, the errors so far and the report being filled;
//! and how one load phase is measured (rate, latency, CPU, peak RSS).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use b24_journal::journal::WRITER_THREAD;

use crate::client::{self, Outcome, Spec};
use crate::model::{Lat, Measured, Report};
use crate::opts::Opts;
use crate::report;
use crate::sys;

/// The read token of every service the harness starts.
pub(super) const READ_TOKEN: &str = "bench-read-token-7f3a9c2e";
/// Seeds the ingest portals and bodies.
pub(super) const INGEST_SEED: u64 = 24;
/// Seeds the query journal's portals and fill, and the probe.
pub(super) const QUERY_SEED: u64 = 1000;

/// What the phases share.
pub(super) struct Harness {
    pub(super) o: Opts,
    pub(super) rt: tokio::runtime::Runtime,
    /// `<tmp>/pids`: one file per running child, for scripts/bench.sh's trap.
    pub(super) pids: PathBuf,
    /// Correctness errors so far: any fails the run.
    pub(super) errors: Vec<String>,
    pub(super) r: Report,
}

impl Harness {
    pub(super) fn new(o: Opts) -> anyhow::Result<Harness> {
        let rt = client::runtime(o.client_threads).context("tokio runtime")?;
        let pids = o.tmp.join("pids");
        std::fs::create_dir_all(&pids).with_context(|| pids.display().to_string())?;
        Ok(Harness {
            o,
            rt,
            pids,
            errors: Vec::new(),
            r: Report::default(),
        })
    }

    /// A load phase of `secs` at `conns` connections, after the warm-up.
    pub(super) fn spec(&self, addr: std::net::SocketAddr, conns: usize, secs: f64) -> Spec {
        Spec {
            also: Vec::new(),
            addr,
            conns,
            warmup: Duration::from_secs_f64(self.o.warmup_secs),
            measure: Duration::from_secs_f64(secs),
        }
    }

    /// Runs one load phase against `pid`, measuring CPU and peak RSS too.
    pub(super) fn measure<W: client::Work, F: FnMut(usize) -> W>(
        &self,
        pid: u32,
        spec: Spec,
        factory: F,
    ) -> anyhow::Result<(Outcome<W>, Measured)> {
        let _ = sys::reset_peak_rss(pid);
        let me = std::process::id();
        let w0 = sys::thread_cpu_secs(pid, WRITER_THREAD);
        let (s0, c0, j0, t0) = (
            sys::cpu_secs(pid).unwrap_or(0.0),
            sys::cpu_secs(me).unwrap_or(0.0),
            sys::machine_jiffies().unwrap_or((0, 0)),
            Instant::now(),
        );
        let out = self.rt.block_on(client::run(spec.clone(), factory))?;
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

    /// The report of everything measured so far.
    pub(super) fn finish(&mut self, wall: Duration) -> String {
        self.r.wall = wall;
        self.r.errors = self.errors.clone();
        report::render(&self.o, &self.r)
    }
}
