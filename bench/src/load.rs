//! `b24-bench load`: a bare load run against any server, outside the
//! harness: against the bare server (ceiling mode, the default: every
//! answer only has to be 200), or against a running service the way the
//! ingest phase loads it (`--journal`), e.g. to profile it. `--config`
//! prints the `[portals]` table such a service must trust, and exits.
//! `--query` sends the query phase's GETs instead, to a service serving a
//! journal that `b24-bench fill` wrote: one query row of the report,
//! measured again on a journal kept from an earlier fill.

use std::net::SocketAddr;
use std::sync::Arc;
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
    /// Send the query phase's GETs of this kind instead of events, with
    /// the read token `--token`, for a journal filled by `b24-bench fill`
    /// with `--n`, `--portals`, `--seed` and `--per-entity`.
    #[arg(long, value_enum, value_name = "KIND")]
    query: Option<LoadQuery>,
    /// The service's read token (with `--query`).
    #[arg(long, value_name = "T", requires = "query")]
    token: Option<String>,
    /// Events the journal was filled with (with `--query`).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    n: u64,
    /// Portals the fill spread them over (with `--query`).
    #[arg(long, value_name = "P", default_value_t = 1000)]
    portals: u64,
    /// The fill's seed, which names its portals (with `--query`).
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
}

/// The query kinds `load --query` sends, as the query phase does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadQuery {
    /// `?limit=50` for a random portal.
    Latest,
    /// `?entity_id=E` for a random portal and entity of its range.
    Entity,
    /// A 30 s `since`/`until` window of a random portal.
    Window,
    /// Cursor walks of 20 pages of 50.
    Walk,
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
    if let Some(kind) = a.query {
        return queries(&a, kind, addr, conns, secs);
    }
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
    let out = rt.block_on(client::run(spec(&a, addr, conns, secs), |i| {
        works::IngestWork::new(shared.clone(), i as u64, !a.journal)
    }))?;
    let mut counts = works::IngestCounts::default();
    for w in &out.works {
        counts.add(&w.counts);
    }
    println!(
        "{}  stored {} duplicate {} 503 {} other {}",
        rate_and_latency(&out),
        counts.stored(),
        counts.duplicates(),
        counts.unavailable,
        counts.other_status + counts.unparsed + counts.fresh_duplicate + counts.resend_stored
    );
    Ok(())
}

/// Sends `kind`'s GETs for `secs` and prints rate, latency and what the
/// answers held.
fn queries(
    a: &LoadArgs,
    kind: LoadQuery,
    addr: SocketAddr,
    conns: usize,
    secs: f64,
) -> anyhow::Result<()> {
    let token = a.token.clone().context("--query needs --token")?;
    let members = gen::portals(a.portals as usize, a.seed)
        .into_iter()
        .map(|p| p.member)
        .collect();
    let shared = Arc::new(works::QueryShared {
        members,
        host: addr,
        token,
        plan: gen::FillPlan::new(a.portals, a.n, a.per_entity),
        filled: a.n,
        window: works::WINDOW_SECS,
    });
    let kind = match kind {
        LoadQuery::Latest => works::QueryKind::Latest,
        LoadQuery::Entity => works::QueryKind::Entity,
        LoadQuery::Window => works::QueryKind::Range,
        LoadQuery::Walk => works::QueryKind::Walk,
    };
    let rt = client::runtime(a.threads).context("tokio runtime")?;
    let out = rt.block_on(client::run(spec(a, addr, conns, secs), |i| {
        works::QueryWork::new(shared.clone(), kind, a.seed ^ ((i as u64) << 8))
    }))?;
    let mut counts = works::QueryCounts::default();
    for w in &out.works {
        counts.add(&w.counts);
    }
    println!(
        "{} {}  events/answer {:.1}  non-200 {}",
        kind.label(),
        rate_and_latency(&out),
        counts.events as f64 / counts.ok.max(1) as f64,
        counts.non200
    );
    anyhow::ensure!(
        counts.non200 == 0,
        "non-200 answers, e.g. {:?}",
        counts.samples
    );
    Ok(())
}

/// The load of `conns` connections to `addr` (and `--also`) for `secs`
/// after one second of warm-up.
fn spec(a: &LoadArgs, addr: SocketAddr, conns: usize, secs: f64) -> client::Spec {
    client::Spec {
        addr,
        also: a.also.clone(),
        conns,
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs_f64(secs),
    }
}

/// `N req/s  p50 … µs  p99 …  p99.9 …  max …` of a measured load.
fn rate_and_latency<W>(out: &client::Outcome<W>) -> String {
    let l = Lat::of(&out.hist);
    format!(
        "{:.0} req/s  p50 {} µs  p99 {} µs  p99.9 {} µs  max {} µs",
        out.rate(),
        l.p50 / 1000,
        l.p99 / 1000,
        l.p999 / 1000,
        out.hist.max() / 1000
    )
}
