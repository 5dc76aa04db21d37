//! Two in-process measurements of work the service cannot avoid, for the
//! report's "what a goal leaves per request" section: they show how far a
//! throughput goal is from the machine, not only from the bare server.
//!
//! - `probe`: pages (latest-50, or an entity or window query with
//!   `--query`) answered by the service's own query code on a filled
//!   journal, one thread, no HTTP: the CPU a page costs before any socket
//!   is involved.
//! - `sled-floor`: sled 0.34.7 alone, with the service's settings, inserting
//!   one value per event: the cheapest write a layout on sled can make, and
//!   what one key per event costs on disk.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use b24_journal::journal::{store, Journal, JournalOptions};
use b24_journal::query::{self, EventsQuery};
use b24_journal::settings;

use crate::gen::{FillPlan, Rng, ENTITY_BASE};
use crate::sys;

/// `b24-bench probe` arguments.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// A filled journal's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Seconds of measured pages (a third as long again of warm-up before).
    #[arg(long, value_name = "S", default_value_t = 3.0)]
    secs: f64,
    #[arg(long, value_name = "X", default_value_t = 1)]
    seed: u64,
    /// The journal's cache, as the service's `--cache-mb`.
    #[arg(long, value_name = "MIB", default_value_t = settings::DEFAULT_CACHE_MB)]
    cache_mb: u64,
    /// Which query to answer: the latest 50, one entity of the fill's plan
    /// (`entity_id`), or a 30 s `since`/`until` window of it.
    #[arg(long, value_enum, default_value_t = ProbeQuery::Latest)]
    query: ProbeQuery,
    /// Events per entity the journal was filled with (`fill --per-entity`),
    /// for the entity ids and windows `--query` asks for.
    #[arg(long, value_name = "K", default_value_t = 3)]
    per_entity: u64,
}

/// The queries `probe` can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeQuery {
    /// `?limit=50`.
    Latest,
    /// `?entity_id=E`.
    Entity,
    /// `?since=S&until=S+29`.
    Window,
}

/// Opens the journal, answers `--query` (latest-50 by default) for random
/// portals on this thread for `--secs`, and prints one `PROBE key=value …`
/// line: pages, µs of this thread's CPU and of wall time per page, mean
/// body bytes, mean stored record bytes.
pub fn probe(a: ProbeArgs) -> anyhow::Result<()> {
    // As the service opens it by default (`--cache-mb` to compare).
    let options = JournalOptions {
        cache_bytes: a.cache_mb * 1024 * 1024,
        queue: settings::DEFAULT_QUEUE,
        snapshot_every_bytes: settings::DEFAULT_SNAPSHOT_EVERY_MB * 1024 * 1024,
    };
    let journal = Journal::open(&a.data_dir, options).context("open journal")?;
    let portals: Vec<_> = journal
        .handle()
        .with_directory(|d| d.portals().to_vec())
        .into_iter()
        .filter(|p| p.last_seq() > 0)
        .collect();
    if portals.is_empty() {
        bail!("the journal has no events");
    }
    let reader = journal.handle().reader().clone();
    // Stored record size, from the newest 50 events of up to 100 portals.
    let (mut records, mut record_bytes) = (0u64, 0u64);
    for p in portals.iter().take(100) {
        for seq in p.last_seq().saturating_sub(49).max(1)..=p.last_seq() {
            if let Some(bytes) = reader.store().event(p.ix, seq).context("read an event")? {
                records += 1;
                record_bytes += bytes.len() as u64;
            }
        }
    }
    let n: u64 = portals.iter().map(|p| p.last_seq()).sum();
    let plan = FillPlan::new(portals.len() as u64, n, a.per_entity);
    let mut rng = Rng::new(a.seed);
    let page = |rng: &mut Rng| -> anyhow::Result<(usize, usize)> {
        let p = &portals[rng.below(portals.len() as u64) as usize];
        let raw = match a.query {
            ProbeQuery::Latest => "limit=50".to_owned(),
            ProbeQuery::Entity => {
                format!("entity_id={}", ENTITY_BASE + rng.below(plan.entity_range))
            }
            ProbeQuery::Window => {
                let since = plan.base_ts + rng.below(p.last_seq().saturating_sub(30).max(1));
                format!("since={since}&until={}", since + 29)
            }
        };
        let q = EventsQuery::parse(&raw).map_err(|e| anyhow!("query {raw}: {e:?}"))?;
        let page = query::newest(&reader, p, &q).context("a page")?;
        let events = page.event_count();
        Ok((events, page.into_body().len()))
    };
    // Warm-up: the cache as the query server's would be after a while.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs_f64(a.secs / 3.0) {
        page(&mut rng)?;
    }
    let (mut pages, mut events, mut bytes) = (0u64, 0u64, 0u64);
    let (cpu0, t0) = (sys::this_thread_cpu_secs(), Instant::now());
    while t0.elapsed() < Duration::from_secs_f64(a.secs) {
        let (e, b) = page(&mut rng)?;
        pages += 1;
        events += e as u64;
        bytes += b as u64;
    }
    let (cpu, wall) = (sys::this_thread_cpu_secs() - cpu0, t0.elapsed());
    drop(reader);
    journal.shutdown();
    let per = |x: f64| x * 1e6 / pages.max(1) as f64;
    println!(
        "PROBE pages={pages} events_per_page={:.1} cpu_us={:.2} wall_us={:.2} body_bytes={} record_bytes={}",
        events as f64 / pages.max(1) as f64,
        per(cpu),
        per(wall.as_secs_f64()),
        bytes / pages.max(1),
        record_bytes / records.max(1),
    );
    Ok(())
}

/// `b24-bench sled-floor` arguments.
#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    /// Where the new sled database goes.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Inserts.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    n: u64,
    /// Bytes of each inserted value.
    #[arg(long, value_name = "B",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    value_bytes: usize,
}

/// Inserts `--n` values of `--value-bytes` into a new sled database in
/// `--dir`, one per event as a journal without packing would (key: prefix,
/// portal u32 of 1,000, seq u64), with the settings the service opens sled
/// with; then flushes it. Prints one `FLOOR key=value …` line: µs of the
/// process's CPU (sled's own threads included) and of wall time per
/// insert, and bytes on disk per item after the flush.
pub fn sled_floor(a: FloorArgs) -> anyhow::Result<()> {
    let db = store::engine_config(&a.dir, settings::DEFAULT_CACHE_MB * 1024 * 1024)
        .open()
        .context("open sled")?;
    let tree = db.open_tree("journal").context("open tree")?;
    let value = vec![0x5au8; a.value_bytes];
    let mut rng = Rng::new(7);
    let mut next_seq = vec![0u64; 1000];
    let me = std::process::id();
    let (cpu0, t0) = (sys::cpu_secs(me).unwrap_or(0.0), Instant::now());
    for _ in 0..a.n {
        let portal = rng.below(1000) as usize;
        next_seq[portal] += 1;
        let mut key = Vec::with_capacity(13);
        key.push(b'T');
        key.extend_from_slice(&(portal as u32).to_be_bytes());
        key.extend_from_slice(&next_seq[portal].to_be_bytes());
        tree.insert(key, value.as_slice()).context("insert")?;
    }
    let (cpu, wall) = (sys::cpu_secs(me).unwrap_or(0.0) - cpu0, t0.elapsed());
    db.flush().context("flush")?;
    drop(tree);
    drop(db);
    let disk = sys::disk_usage(&a.dir).with_context(|| a.dir.display().to_string())?;
    let per = |x: f64| x * 1e6 / a.n as f64;
    println!(
        "FLOOR inserts={} value_bytes={} cpu_us={:.2} wall_us={:.2} disk_bytes_per_item={:.0}",
        a.n,
        a.value_bytes,
        per(cpu),
        per(wall.as_secs_f64()),
        disk as f64 / a.n as f64,
    );
    Ok(())
}
