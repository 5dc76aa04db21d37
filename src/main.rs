//! The `b24-journal` binary: parse the command line, run the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = b24_journal::Cli::parse();
    b24_journal::init_logging();
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
