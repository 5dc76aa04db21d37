//! `b24-bench`: the benchmark harness of b24-journal.
//!
//! ```text
//! b24-bench run [--smoke] [--n N | --full] [options]   every phase, one markdown report
//! b24-bench fill --data-dir D --from A --to B --n N      bulk fill (used by `run`)
//! b24-bench probe --data-dir D [--secs S]                 in-process latest-50 (used by `run`)
//! b24-bench sled-floor --dir D --n N --value-bytes B      sled alone (used by `run`)
//! ```
//!
//! Normally started by `scripts/bench.sh`, which builds the binaries and
//! provides the temp dir.

mod client;
mod fill;
mod flags;
mod floor;
mod gen;
mod report;
mod run;
mod sys;
mod works;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage:
  b24-bench run [options]
    --smoke               a few seconds: N=20k (stage 5k), 1 s phases, 1 and 64 connections, no wrk
    --n N                 events in the query journal (default 1000000)
    --full                N = 10000000
    --stage N             the small journal measured first (default 100000)
    --conns LIST          ingest concurrency levels (default 1,16,64,256)
    --query-conns N       query connections (default 16)
    --secs S              seconds per ingest level (default 10)
    --query-secs S        seconds per query kind (default 10)
    --warmup S            unmeasured seconds before each phase (default 1)
    --client-threads N    load generator threads (default 1)
    --no-wrk              skip the wrk comparison
    --wait-quiet S        wait up to S s for other CPU load < 15 % before starting (default 180, smoke 0)
    --write FILE          also write the report to FILE (repeatable)
    --latest FILE         where the latest report goes (default target/bench/latest.md)
    --tmp DIR             work dir for data dirs and logs (default: a new temp dir)
    --server-bin PATH     (default target/release/b24-journal)
    --ceiling-bin PATH    (default target/release/b24-bench-ceiling)
    --repo DIR            repository root, for git and Cargo.lock (default .)
    --server-log FILTER   RUST_LOG of the service (default info, as in production)
    --command TEXT        the command line to print in the report
  b24-bench load ADDR CONNS SECS [THREADS]   POST ingest bodies (ceiling mode: only 200 is checked)
  b24-bench fill --data-dir DIR --from A --to B --n N [--portals P] [--seed S] [--inflight K]
  b24-bench probe --data-dir DIR [--secs S] [--seed X] [--cache-mb MIB]
                                                        latest-50 through the query code, one thread, no HTTP
  b24-bench sled-floor --dir DIR --n N --value-bytes B   N inserts into a new sled database with the service's settings";

/// Same allocator as `b24-journal`'s binary: the fill runs the service's
/// write path in this process and must allocate as it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // As `b24-journal` does: the fill runs the service's write path here.
    let _ = b24_journal::disable_transparent_huge_pages();
    b24_journal::shorten_allocator_purge_delay();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fill") => report_err("fill", fill::parse_args(&args[1..]).and_then(fill::run)),
        Some("probe") => report_err(
            "probe",
            floor::parse_probe(&args[1..]).and_then(floor::probe),
        ),
        Some("sled-floor") => report_err(
            "sled-floor",
            floor::parse_floor(&args[1..]).and_then(floor::sled_floor),
        ),
        Some("run") => run_cmd(&args[1..]),
        Some("load") => load_cmd(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// A subcommand's exit: its error, if any, on stderr.
fn report_err(what: &str, r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("b24-bench {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_run(args: &[String]) -> Result<run::Opts, String> {
    let mut o = run::Opts::defaults();
    if args.iter().any(|a| a == "--smoke") {
        o = o.smoke();
    }
    let mut it = args.iter();
    let mut latest: Option<PathBuf> = None;
    let mut extra = Vec::new();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--smoke" => {}
            "--n" => o.n = flags::value(flag, it.next())?,
            "--full" => o.n = 10_000_000,
            "--stage" => o.stage = flags::value(flag, it.next())?,
            "--conns" => {
                o.ingest_conns = flags::value::<String>(flag, it.next())?
                    .split(',')
                    .map(|c| {
                        c.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--conns: {e}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--query-conns" => o.query_conns = flags::value(flag, it.next())?,
            "--secs" => o.ingest_secs = flags::value(flag, it.next())?,
            "--query-secs" => o.query_secs = flags::value(flag, it.next())?,
            "--warmup" => o.warmup_secs = flags::value(flag, it.next())?,
            "--client-threads" => o.client_threads = flags::value(flag, it.next())?,
            "--no-wrk" => o.wrk = false,
            "--wait-quiet" => o.wait_quiet = flags::value(flag, it.next())?,
            "--write" => extra.push(flags::value(flag, it.next())?),
            "--latest" => latest = Some(flags::value(flag, it.next())?),
            "--tmp" => o.tmp = flags::value(flag, it.next())?,
            "--server-bin" => o.server_bin = flags::value(flag, it.next())?,
            "--ceiling-bin" => o.ceiling_bin = flags::value(flag, it.next())?,
            "--repo" => o.repo = flags::value(flag, it.next())?,
            "--server-log" => o.server_log = flags::value(flag, it.next())?,
            "--command" => o.command = flags::value(flag, it.next())?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if let Some(l) = latest {
        o.outputs = vec![l];
    }
    o.outputs.extend(extra);
    if o.n == 0 || o.ingest_conns.is_empty() || o.query_conns == 0 {
        return Err("--n, --conns and --query-conns must be positive".into());
    }
    o.stage = o.stage.min(o.n);
    Ok(o)
}

fn run_cmd(args: &[String]) -> ExitCode {
    let mut o = match parse_run(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let own_tmp = o.tmp.as_os_str().is_empty();
    if own_tmp {
        o.tmp = std::env::temp_dir().join(format!("b24-bench-{}", std::process::id()));
    }
    if let Err(e) = std::fs::create_dir_all(&o.tmp) {
        eprintln!("{}: {e}", o.tmp.display());
        return ExitCode::FAILURE;
    }
    for bin in [&o.server_bin, &o.ceiling_bin] {
        if !bin.exists() {
            eprintln!(
                "{} not found: build with `cargo build --release -p b24-journal -p b24-journal-bench`",
                bin.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let outputs = o.outputs.clone();
    let tmp = o.tmp.clone();
    let result = run::run(o);
    if own_tmp {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let (text, ok) = match result {
        Ok(x) => x,
        Err(e) => {
            eprintln!("b24-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{text}");
    for path in outputs {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::write(&path, &text) {
            Ok(()) => eprintln!("report written to {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("b24-bench: CORRECTNESS CHECKS FAILED (see the report)");
        ExitCode::FAILURE
    }
}

/// A bare load run against any server (for checking the load generator).
fn load_cmd(args: &[String]) -> ExitCode {
    let parsed = (|| -> Option<(std::net::SocketAddr, usize, f64, usize)> {
        Some((
            args.first()?.parse().ok()?,
            args.get(1)?.parse().ok()?,
            args.get(2)?.parse().ok()?,
            args.get(3).map(|t| t.parse().ok()).unwrap_or(Some(1))?,
        ))
    })();
    let Some((addr, conns, secs, threads)) = parsed else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("runtime");
    let shared = works::IngestShared::new(gen::portals(100, 24), addr.to_string(), 0.0);
    let spec = client::Spec {
        addr,
        conns,
        warmup: std::time::Duration::from_secs(1),
        measure: std::time::Duration::from_secs_f64(secs),
    };
    match rt.block_on(client::run(spec, |i| {
        works::IngestWork::new(shared.clone(), i as u64, true)
    })) {
        Ok(out) => {
            let l = run::Lat::of(&out.hist);
            println!(
                "{:.0} req/s  p50 {} µs  p99 {} µs  p99.9 {} µs",
                out.rate(),
                l.p50 / 1000,
                l.p99 / 1000,
                l.p999 / 1000
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
