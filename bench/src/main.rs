//! `b24-bench`: the benchmark harness of b24-journal.
//!
//! ```text
//! b24-bench run [--smoke] [--n N | --full] [options]   every phase, one markdown report
//! b24-bench load ADDR CONNS SECS [THREADS]             bare load against any server
//! b24-bench fill --data-dir D --from A --to B --n N      bulk fill (used by `run`)
//! b24-bench probe --data-dir D [--secs S] [--query Q]     in-process page cost (latest-50 used by `run`)
//! b24-bench sled-floor --dir D --n N --value-bytes B      sled alone (used by `run`)
//! b24-bench restarts [--clients 8 --restarts 5 --mode both]  restarts under load
//! ```
//!
//! Normally started by `scripts/bench.sh`, which builds the binaries and
//! provides the temp dir. `b24-bench help run` lists `run`'s options.
//!
//! Modules, in the order a run uses them: `cli` and `opts` (what to run),
//! `run` (the phases), whose load comes from `client` (the load generator),
//! `works` (what each connection sends and checks) and `gen` (the synthetic
//! traffic), measured with `sys`; `fill` and `floor` are the subcommands
//! `run` starts as child processes; the phases fill a `model::Report` in,
//! which `report` renders as markdown.

mod cli;
mod client;
mod fill;
mod floor;
mod gen;
mod load;
mod model;
mod opts;
mod outage;
mod report;
mod restarts;
mod run;
mod sys;
mod works;

use std::process::ExitCode;

use cli::{Cli, Command};

/// Same allocator as `b24-journal`'s binary: the fill runs the service's
/// write path in this process and must allocate as it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // As `b24-journal` does: the fill runs the service's write path here.
    let _ = b24_journal::disable_transparent_huge_pages();
    b24_journal::shorten_allocator_purge_delay();
    let cli = Cli::try_parse_checked(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Run(args) => match run::execute(args.into_opts()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("b24-bench: CORRECTNESS CHECKS FAILED (see the report)");
                ExitCode::FAILURE
            }
            Err(e) => failed("run", e),
        },
        Command::Load(args) => exit("load", load::run(args)),
        Command::Fill(args) => exit("fill", fill::run(args)),
        Command::Probe(args) => exit("probe", floor::probe(args)),
        Command::SledFloor(args) => exit("sled-floor", floor::sled_floor(args)),
        Command::Restarts(args) => exit("restarts", restarts::run(args)),
        Command::Outage(args) => exit("outage", outage::run(args)),
    }
}

/// A subcommand's exit: its error, if any, on stderr.
fn exit(what: &str, r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(what, e),
    }
}

/// Prints `e` with its causes and fails.
fn failed(what: &str, e: anyhow::Error) -> ExitCode {
    eprintln!("b24-bench {what}: {e:#}");
    ExitCode::FAILURE
}
