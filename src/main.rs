//! The `b24-journal` binary: parse the command line, run the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: the query path and sled allocate many
/// small short-lived buffers, and profiles of latest-50 queries showed glibc's
/// malloc/free/consolidate as the largest cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Threads for blocking work: filtered queries (sled scans, CPU-bound on
/// cached pages), live-stream reads, start and shutdown; one per core, and
/// at least 2 so that on a 1-vCPU VPS a query waiting on a cold disk read
/// does not hold up every other one. Backups, which run for minutes, have
/// their own thread (`admin.rs`).
/// Tokio's default of 512 let 16 connections of `entity_id` queries spread
/// over ~40 threads, each keeping its own allocator pages: measured on a
/// 1M-event journal (wrk, 16 connections), capping at 4 on 2 cores took
/// that load from 14.1k to 22–25k req/s and peak RSS from 223 to 139 MiB.
/// From 4 to 2 on the 10M journal (wrk, 16 connections, after a latest-50
/// load; four interleaved runs each): peak RSS under `entity_id` load
/// 227–243 → 216–225 MiB, 5.5k–9.3k → 6.9k–8.9k req/s.
fn blocking_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

fn main() -> ExitCode {
    // A kernel without the flag only keeps the old behaviour: nothing to
    // report before logging is even set up.
    let _ = b24_journal::disable_transparent_huge_pages();
    b24_journal::shorten_allocator_purge_delay();
    let cli = b24_journal::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads())
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("b24-journal: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(b24_journal::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("b24-journal: {e}");
            ExitCode::FAILURE
        }
    }
}
