//! The options of `b24-bench run`: what one run measures and where it
//! writes. The flags (`cli.rs`) fill them in over `defaults()` or
//! `smoke()`; the phases and the report read them.

use std::path::PathBuf;

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
    /// New events per entity id in the ingest phase.
    pub ingest_per_entity: u64,
    /// Events per entity id of the query journal's fill.
    pub query_per_entity: u64,
    /// The entity mixes filled to N for their bytes on disk (the query
    /// journal's mix is measured by the query phase's own fill).
    pub mixes: Vec<u64>,
    pub window: u64,
    /// Work dir for data dirs and logs; empty: a new temp dir of the run's own.
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
    /// The full run (N = 1,000,000).
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
            ingest_per_entity: crate::gen::DEFAULT_MIX,
            query_per_entity: crate::gen::DEFAULT_MIX,
            mixes: crate::gen::MIXES.to_vec(),
            window: crate::works::WINDOW_SECS,
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

    /// A few seconds (CI): small journals, short phases, no wrk, no wait.
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
