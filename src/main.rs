//! The `b24-journal` binary: set up the process (allocator, memory, async
//! runtime), parse the command line, run the command, turn its outcome into
//! an exit code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: the query path and sled allocate many
/// small short-lived buffers, which glibc's malloc serves slowly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Threads for blocking work (filtered queries, live-stream reads, start and
/// shutdown): one per core, and at least 2 so that on a 1-vCPU VPS a query
/// waiting on a cold disk read does not hold up every other one. tokio's
/// default of 512 lets a burst of queries spread over many threads, each
/// keeping its own allocator pages, for less throughput and more memory.
/// Backups, which run for minutes, have their own thread (`app::Backups`).
fn blocking_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

fn main() -> ExitCode {
    // A kernel without the flag only keeps the old behaviour: nothing to
    // report before logging is even set up.
    let _ = b24_journal::memory::disable_transparent_huge_pages();
    b24_journal::memory::shorten_allocator_purge_delay();
    let cli = b24_journal::cli::Cli::parse();
    // Before the runtime starts its threads: this reads and unsets
    // LISTEN_FDS and LISTEN_PID.
    let activation = b24_journal::server::Activation::from_env();
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
    match runtime.block_on(b24_journal::commands::run(cli, activation)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr, not also a log line: under systemd both
            // reach the journal, and a terminal showed the error twice.
            eprintln!("b24-journal: {e}");
            ExitCode::FAILURE
        }
    }
}
