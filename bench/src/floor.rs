//! Two in-process measurements of work the service cannot avoid, for the
//! report's "what a goal leaves per request" section: they show how far a
//! throughput goal is from the machine, not only from the bare server.
//!
//! - `probe`: latest-50 pages answered by the service's own query code on a
//!   filled journal, one thread, no HTTP: the CPU a page costs before any
//!   socket is involved.
//! - `sled-floor`: sled 0.34.7 alone, with the service's settings, inserting
//!   one value per event: the cheapest write a layout on sled can make, and
//!   what one key per event costs on disk.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use b24_journal::journal::{store, Journal, JournalOptions};
use b24_journal::query::{self, EventsQuery};
use b24_journal::settings;

use crate::flags;
use crate::gen::Rng;
use crate::sys;

/// `b24-bench probe` arguments.
pub struct ProbeArgs {
    data_dir: PathBuf,
    secs: f64,
    seed: u64,
    cache_mb: u64,
}

/// `--data-dir DIR [--secs S] [--seed X] [--cache-mb MIB]`.
pub fn parse_probe(args: &[String]) -> Result<ProbeArgs, String> {
    let mut a = ProbeArgs {
        data_dir: PathBuf::new(),
        secs: 3.0,
        seed: 1,
        cache_mb: settings::DEFAULT_CACHE_MB,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--data-dir" => a.data_dir = flags::value(flag, it.next())?,
            "--secs" => a.secs = flags::value(flag, it.next())?,
            "--seed" => a.seed = flags::value(flag, it.next())?,
            "--cache-mb" => a.cache_mb = flags::value(flag, it.next())?,
            other => return Err(format!("probe: unknown flag {other}")),
        }
    }
    if a.data_dir.as_os_str().is_empty() {
        return Err("probe needs --data-dir".into());
    }
    Ok(a)
}

/// Opens the journal, answers latest-50 for random portals on this thread
/// for `--secs`, and prints one `PROBE key=value …` line: pages, µs of this
/// thread's CPU and of wall time per page, mean body bytes, mean stored
/// record bytes.
pub fn probe(a: ProbeArgs) -> Result<(), String> {
    // As the service opens it by default (`--cache-mb` to compare).
    let options = JournalOptions {
        cache_bytes: a.cache_mb * 1024 * 1024,
        queue: settings::DEFAULT_QUEUE,
        snapshot_every_bytes: settings::DEFAULT_SNAPSHOT_EVERY_MB * 1024 * 1024,
    };
    let journal = Journal::open(&a.data_dir, options).map_err(|e| format!("open journal: {e}"))?;
    let portals: Vec<_> = journal
        .handle()
        .with_directory(|d| d.portals().to_vec())
        .into_iter()
        .filter(|p| p.last_seq() > 0)
        .collect();
    if portals.is_empty() {
        return Err("probe: the journal has no events".into());
    }
    let reader = journal.handle().reader().clone();
    // Stored record size, from the newest 50 events of up to 100 portals.
    let (mut records, mut record_bytes) = (0u64, 0u64);
    for p in portals.iter().take(100) {
        for seq in p.last_seq().saturating_sub(49).max(1)..=p.last_seq() {
            if let Some(bytes) = reader.event(p.ix, seq).map_err(|e| e.to_string())? {
                records += 1;
                record_bytes += bytes.len() as u64;
            }
        }
    }
    let q = EventsQuery::parse("limit=50").map_err(|e| format!("{e:?}"))?;
    let mut rng = Rng::new(a.seed);
    let page = |rng: &mut Rng| -> Result<(usize, usize), String> {
        let p = &portals[rng.below(portals.len() as u64) as usize];
        let page = query::newest(&reader, p, &q).map_err(|e| e.to_string())?;
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
pub struct FloorArgs {
    dir: PathBuf,
    n: u64,
    value_bytes: usize,
}

/// `--dir DIR --n N --value-bytes B`.
pub fn parse_floor(args: &[String]) -> Result<FloorArgs, String> {
    let mut a = FloorArgs {
        dir: PathBuf::new(),
        n: 0,
        value_bytes: 0,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--dir" => a.dir = flags::value(flag, it.next())?,
            "--n" => a.n = flags::value(flag, it.next())?,
            "--value-bytes" => a.value_bytes = flags::value(flag, it.next())?,
            other => return Err(format!("sled-floor: unknown flag {other}")),
        }
    }
    if a.dir.as_os_str().is_empty() || a.n == 0 || a.value_bytes == 0 {
        return Err("sled-floor needs --dir, --n > 0, --value-bytes > 0".into());
    }
    Ok(a)
}

/// Inserts `--n` values of `--value-bytes` into a new sled database in
/// `--dir`, one per event as a journal without packing would (key: prefix,
/// portal u32 of 1,000, seq u64), with the settings the service opens sled
/// with; then flushes it. Prints one `FLOOR key=value …` line: µs of the
/// process's CPU (sled's own threads included) and of wall time per
/// insert, and bytes on disk per item after the flush.
pub fn sled_floor(a: FloorArgs) -> Result<(), String> {
    let db = store::engine_config(&a.dir, settings::DEFAULT_CACHE_MB * 1024 * 1024)
        .open()
        .map_err(|e| format!("open sled: {e}"))?;
    let tree = db.open_tree("journal").map_err(|e| e.to_string())?;
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
        tree.insert(key, value.as_slice())
            .map_err(|e| e.to_string())?;
    }
    let (cpu, wall) = (sys::cpu_secs(me).unwrap_or(0.0) - cpu0, t0.elapsed());
    db.flush().map_err(|e| e.to_string())?;
    drop(tree);
    drop(db);
    let disk = sys::disk_usage(&a.dir).map_err(|e| e.to_string())?;
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
