//! The `b24-journal` binary: parse the command line, run the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: the query path and sled allocate many
/// small short-lived buffers, and profiles of latest-50 queries showed glibc's
/// malloc/free/consolidate as the largest cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = b24_journal::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
