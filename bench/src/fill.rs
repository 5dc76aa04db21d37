//! Bulk fill through the service's own write path, linked as a library:
//! form body → `decode::decode` → `IncomingEvent::into_new_event` →
//! `JournalHandle::append`, with many appends in flight so the single writer
//! group-commits.
//!
//! Runs as its own process (`b24-bench fill …`) so that its peak RSS is the
//! journal's, not the harness's, and so a second fill can continue the first
//! on the same data directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use b24_journal::decode::{decode, BodyKind};
use b24_journal::journal::store::SNAPSHOT_AFTER_LOGGED;
use b24_journal::journal::{AppendError, AppendOutcome, Journal, JournalOptions, Lifecycle};

use crate::gen::{portals, write_body, FillPlan, Rng};
use crate::sys;

/// `b24-bench fill` arguments: the events `from..to` of the plan for `n`.
#[derive(Debug, clap::Args)]
pub struct FillArgs {
    /// The journal's data directory (created or continued).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// First event of the plan to write.
    #[arg(long, value_name = "A", default_value_t = 0)]
    pub from: u64,
    /// End of the range (exclusive).
    #[arg(long, value_name = "B")]
    pub to: u64,
    /// Events of the whole plan.
    #[arg(long, value_name = "N")]
    pub n: u64,
    /// Portals the events spread over.
    #[arg(long, value_name = "P", default_value_t = 1000)]
    pub portals: u64,
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Events per entity id (the entity mix).
    #[arg(long, value_name = "K", default_value_t = crate::gen::DEFAULT_MIX,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub per_entity: u64,
    /// Appends in flight, so that the writer group-commits.
    #[arg(long, value_name = "K", default_value_t = 512)]
    pub inflight: usize,
    #[arg(long, value_name = "MIB", default_value_t = b24_journal::settings::DEFAULT_CACHE_MB)]
    pub cache_mb: u64,
    /// The journal's queue; more than `--inflight`, so it is never full.
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub queue: usize,
    #[arg(long, value_name = "MIB", default_value_t = SNAPSHOT_AFTER_LOGGED / (1024 * 1024))]
    pub snapshot_every_mb: u64,
}

/// Runs the fill; prints one `FILL key=value …` line on stdout.
pub fn run(a: FillArgs) -> anyhow::Result<()> {
    let plan = FillPlan::new(a.portals, a.n, a.per_entity);
    let portals = Arc::new(portals(a.portals as usize, a.seed));
    let started = Instant::now();
    let journal = Journal::open(
        &a.data_dir,
        JournalOptions {
            cache_bytes: a.cache_mb * 1024 * 1024,
            queue: a.queue,
            snapshot_every_bytes: a.snapshot_every_mb * 1024 * 1024,
        },
    )
    .context("open journal")?;
    let opened = started.elapsed();
    let handle = journal.handle();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let next = Arc::new(AtomicU64::new(a.from));
    let stored = Arc::new(AtomicU64::new(0));
    let dups = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let to = a.to;
    let t_fill = Instant::now();
    let result: anyhow::Result<()> = rt.block_on(async {
        let progress = {
            let stored = stored.clone();
            let from = a.from;
            tokio::spawn(async move {
                let t = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let s = stored.load(Ordering::Relaxed);
                    eprintln!(
                        "  fill: {} / {} events ({:.0}/s)",
                        from + s,
                        to,
                        s as f64 / t.elapsed().as_secs_f64()
                    );
                }
            })
        };
        let mut tasks = Vec::new();
        for w in 0..a.inflight {
            let (handle, portals, next, stored, dups, busy) = (
                handle.clone(),
                portals.clone(),
                next.clone(),
                stored.clone(),
                dups.clone(),
                busy.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(a.seed ^ ((w as u64) << 20));
                let mut body = Vec::with_capacity(1024);
                loop {
                    let g = next.fetch_add(1, Ordering::Relaxed);
                    if g >= to {
                        return anyhow::Ok(());
                    }
                    let ev = plan.event(g);
                    body.clear();
                    write_body(
                        &mut body,
                        &portals[ev.portal],
                        ev.event,
                        ev.entity,
                        ev.ts,
                        &mut rng,
                    );
                    let incoming =
                        decode(BodyKind::Form, &body).context("generated body does not decode")?;
                    let new_event = incoming.into_new_event(Lifecycle::Ordinary);
                    // The queue holds more than `inflight` appends: never full.
                    match handle.append(new_event).await {
                        Ok(AppendOutcome::Stored { .. }) => {
                            stored.fetch_add(1, Ordering::Relaxed);
                        }
                        // Pushed events are never reconciled.
                        Ok(AppendOutcome::Duplicate { .. } | AppendOutcome::Reconciled { .. }) => {
                            dups.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(AppendError::QueueFull) => {
                            busy.fetch_add(1, Ordering::Relaxed);
                            bail!("journal queue full (raise --queue)");
                        }
                        Err(e) => return Err(e).context("append"),
                    }
                }
            }));
        }
        let mut res = Ok(());
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => res = Err(e),
                Err(e) => res = Err(anyhow!("fill task panicked: {e}")),
            }
        }
        progress.abort();
        res
    });
    let fill_secs = t_fill.elapsed().as_secs_f64();
    drop(handle);
    drop(rt);
    let t_close = Instant::now();
    journal.shutdown();
    let close_secs = t_close.elapsed().as_secs_f64();
    result?;
    let vmhwm = sys::vm_hwm_kb(std::process::id()).unwrap_or(0);
    println!(
        "FILL stored={} duplicates={} queue_full={} fill_secs={:.3} open_secs={:.3} close_secs={:.3} vmhwm_kb={}",
        stored.load(Ordering::Relaxed),
        dups.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed),
        fill_secs,
        opened.as_secs_f64(),
        close_secs,
        vmhwm
    );
    Ok(())
}
