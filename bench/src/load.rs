//! `b24-bench load`: a bare load run against any server, outside the
//! harness, for checking the load generator (against the ceiling or wrk's
//! numbers). Ceiling mode: every answer only has to be 200.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use crate::client;
use crate::gen;
use crate::model::Lat;
use crate::works;

/// `b24-bench load ADDR CONNS SECS [THREADS]`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The server, IP:PORT.
    addr: SocketAddr,
    /// Connections.
    conns: usize,
    /// Measured seconds (after 1 s of warm-up).
    secs: f64,
    /// Load generator threads.
    #[arg(default_value_t = 1)]
    threads: usize,
}

/// POSTs ingest bodies for `secs` and prints rate and latency.
pub fn run(a: LoadArgs) -> anyhow::Result<()> {
    let rt = client::runtime(a.threads).context("tokio runtime")?;
    let shared = works::IngestShared::new(gen::portals(100, 24), a.addr.to_string(), 0.0, 1);
    let spec = client::Spec {
        addr: a.addr,
        conns: a.conns,
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs_f64(a.secs),
    };
    let out = rt.block_on(client::run(spec, |i| {
        works::IngestWork::new(shared.clone(), i as u64, true)
    }))?;
    let l = Lat::of(&out.hist);
    println!(
        "{:.0} req/s  p50 {} µs  p99 {} µs  p99.9 {} µs",
        out.rate(),
        l.p50 / 1000,
        l.p99 / 1000,
        l.p999 / 1000
    );
    Ok(())
}
