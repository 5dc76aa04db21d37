//! `b24-bench load`: a bare load run against any server, outside the
//! harness: against the bare server (ceiling mode, the default: every
//! answer only has to be 200), or against a running service the way the
//! ingest phase loads it (`--journal`), e.g. to profile it. `--config`
//! prints the `[portals]` table such a service must trust, and exits.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use crate::client;
use crate::gen;
use crate::model::Lat;
use crate::works;

/// Portals and seed of the load: the ingest phase's.
const PORTALS: usize = 100;
const SEED: u64 = 24;

/// `b24-bench load ADDR CONNS SECS [THREADS]`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The server, IP:PORT.
    #[arg(required_unless_present = "config")]
    addr: Option<SocketAddr>,
    /// Connections.
    #[arg(required_unless_present = "config")]
    conns: Option<usize>,
    /// Measured seconds (after 1 s of warm-up).
    #[arg(required_unless_present = "config")]
    secs: Option<f64>,
    /// Load generator threads.
    #[arg(default_value_t = 1)]
    threads: usize,
    /// Load a b24-journal service as the ingest phase does: new events
    /// with `--per-entity` events per entity id, `--dup-rate` resends,
    /// answers checked.
    #[arg(long)]
    journal: bool,
    /// New events per entity id (with `--journal`).
    #[arg(long, value_name = "K", default_value_t = gen::DEFAULT_MIX)]
    per_entity: u64,
    /// Share of exact resends of bodies already stored (with `--journal`).
    #[arg(long, value_name = "P", default_value_t = 0.10)]
    dup_rate: f64,
    /// More servers to spread the connections over (comma-separated
    /// IP:PORT): connection i goes to the (i mod n)-th of ADDR and these,
    /// as a load balancer in front of a cluster's nodes would spread them.
    #[arg(long, value_delimiter = ',', value_name = "ADDRS")]
    also: Vec<SocketAddr>,
    /// Print the config file lines (`[portals]`) a service needs to take
    /// this load, and exit.
    #[arg(long)]
    config: bool,
}

/// POSTs ingest bodies for `secs` and prints rate and latency.
pub fn run(a: LoadArgs) -> anyhow::Result<()> {
    let portals = gen::portals(PORTALS, SEED);
    if a.config {
        print!("{}", gen::portals_toml(&portals));
        return Ok(());
    }
    let (Some(addr), Some(conns), Some(secs)) = (a.addr, a.conns, a.secs) else {
        anyhow::bail!("ADDR, CONNS and SECS are needed");
    };
    anyhow::ensure!(
        (0.0..1.0).contains(&a.dup_rate),
        "--dup-rate is a share of requests: at least 0, below 1"
    );
    let rt = client::runtime(a.threads).context("tokio runtime")?;
    let (dup_rate, per_entity) = if a.journal {
        (a.dup_rate, a.per_entity)
    } else {
        (0.0, 1)
    };
    let shared = works::IngestShared::new(portals, addr.to_string(), dup_rate, per_entity);
    let spec = client::Spec {
        addr,
        also: a.also.clone(),
        conns,
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs_f64(secs),
    };
    let out = rt.block_on(client::run(spec, |i| {
        works::IngestWork::new(shared.clone(), i as u64, !a.journal)
    }))?;
    let l = Lat::of(&out.hist);
    let mut counts = works::IngestCounts::default();
    for w in &out.works {
        counts.add(&w.counts);
    }
    println!(
        "{:.0} req/s  p50 {} µs  p99 {} µs  p99.9 {} µs  max {} µs  stored {} duplicate {} 503 {} other {}",
        out.rate(),
        l.p50 / 1000,
        l.p99 / 1000,
        l.p999 / 1000,
        out.hist.max() / 1000,
        counts.stored(),
        counts.duplicates(),
        counts.unavailable,
        counts.other_status + counts.unparsed + counts.fresh_duplicate + counts.resend_stored
    );
    Ok(())
}
