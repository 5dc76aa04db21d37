//! The command line of `b24-bench`: one clap type per subcommand. `run`'s
//! flags are laid over [`Opts::defaults`] or, with `--smoke`, over
//! [`Opts::smoke`], so that every default follows the mode whatever the
//! order of the flags. The tool subcommands' arguments live beside their
//! bodies (`fill.rs`, `floor.rs`, `load.rs`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};

use crate::fill::FillArgs;
use crate::floor::{FloorArgs, ProbeArgs};
use crate::load::LoadArgs;
use crate::opts::Opts;
use crate::outage::OutageArgs;
use crate::restarts::RestartsArgs;

/// The benchmark harness of b24-journal. Normally started by
/// `scripts/bench.sh`, which builds the binaries and provides the temp dir.
// A flag given twice takes its last value, as `scripts/bench.sh` relies on:
// it passes `--latest`, `--tmp`, … and then the caller's own flags.
#[derive(Debug, Parser)]
#[command(name = "b24-bench", args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What `b24-bench` does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every phase, one markdown report.
    Run(Box<RunArgs>),
    /// POST ingest bodies against any server (ceiling mode: only 200 is checked).
    Load(LoadArgs),
    /// Bulk fill through the service's write path (used by `run`).
    Fill(FillArgs),
    /// latest-50 through the query code, one thread, no HTTP (used by `run`).
    Probe(ProbeArgs),
    /// N inserts into a new sled database with the service's settings (used by `run`).
    SledFloor(FloorArgs),
    /// Restarts under load, socket-activated and plain --listen: requests,
    /// refused, longest answer.
    Restarts(RestartsArgs),
    /// A simulated outage against a fake Bitrix24: events recovered from
    /// the offline queue, reconciled with pushes, and the recovery time.
    Outage(OutageArgs),
}

impl Cli {
    /// Parses `args` (the program name first) and checks what one flag alone
    /// cannot: a fill's range.
    pub fn try_parse_checked<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        if let Command::Fill(f) = &cli.command {
            if !(f.from < f.to && f.to <= f.n) {
                return Err(Cli::command().error(
                    ErrorKind::ArgumentConflict,
                    "fill needs --from < --to <= --n",
                ));
            }
        }
        Ok(cli)
    }
}

/// The flags of `run`; each one given replaces the mode's default.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A few seconds: N=20k (stage 5k), 1 s phases, 1 and 64 connections, no wrk.
    #[arg(long)]
    smoke: bool,
    /// Events in the query journal (default 1000000).
    #[arg(long, value_name = "N", overrides_with = "full",
          value_parser = clap::value_parser!(u64).range(1..))]
    n: Option<u64>,
    /// N = 10000000.
    #[arg(long, overrides_with = "n")]
    full: bool,
    /// The small journal measured first (default 100000).
    #[arg(long, value_name = "N")]
    stage: Option<u64>,
    /// Ingest concurrency levels (default 1,16,64,256).
    #[arg(long, value_name = "LIST", value_parser = parse_conns)]
    conns: Option<Conns>,
    /// Query connections (default 16).
    #[arg(long, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    query_conns: Option<usize>,
    /// New events per entity id in the ingest phase (default 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    ingest_per_entity: Option<u64>,
    /// Entity mixes (events per entity id) filled to N for bytes on disk
    /// (default 1,3,10; the query journal is the 3 mix).
    #[arg(long, value_name = "LIST", value_parser = parse_mixes)]
    mixes: Option<Mixes>,
    /// Skip the extra fills of the entity mixes.
    #[arg(long)]
    no_mixes: bool,
    /// Seconds per ingest level (default 10).
    #[arg(long, value_name = "S")]
    secs: Option<f64>,
    /// Seconds per query kind (default 10).
    #[arg(long, value_name = "S")]
    query_secs: Option<f64>,
    /// Unmeasured seconds before each phase (default 1).
    #[arg(long, value_name = "S")]
    warmup: Option<f64>,
    /// Load generator threads (default 1).
    #[arg(long, value_name = "N")]
    client_threads: Option<usize>,
    /// Skip the wrk comparison.
    #[arg(long)]
    no_wrk: bool,
    /// Wait up to S s for other CPU load < 15 % before starting (default 180, smoke 0).
    #[arg(long, value_name = "S")]
    wait_quiet: Option<f64>,
    /// Also write the report to FILE (repeatable).
    #[arg(long, value_name = "FILE")]
    write: Vec<PathBuf>,
    /// Where the latest report goes (default target/bench/latest.md).
    #[arg(long, value_name = "FILE")]
    latest: Option<PathBuf>,
    /// Work dir for data dirs and logs (default: a new temp dir).
    #[arg(long, value_name = "DIR")]
    tmp: Option<PathBuf>,
    /// The service binary (default target/release/b24-journal).
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// The bare server (default target/release/b24-bench-ceiling).
    #[arg(long, value_name = "PATH")]
    ceiling_bin: Option<PathBuf>,
    /// Repository root, for git and Cargo.lock (default .).
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    /// RUST_LOG of the service (default info, as in production).
    #[arg(long, value_name = "FILTER")]
    server_log: Option<String>,
    /// The command line to print in the report.
    #[arg(long, value_name = "TEXT")]
    command: Option<String>,
}

/// A comma-separated list of connection counts, none of them zero.
#[derive(Debug, Clone)]
struct Conns(Vec<usize>);

fn parse_conns(raw: &str) -> Result<Conns, String> {
    let conns = raw
        .split(',')
        .map(|c| c.trim().parse::<usize>().map_err(|e| format!("{c:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if conns.contains(&0) {
        return Err("connection counts must be positive".into());
    }
    Ok(Conns(conns))
}

/// A comma-separated list of events per entity id, none of them zero.
#[derive(Debug, Clone)]
struct Mixes(Vec<u64>);

fn parse_mixes(raw: &str) -> Result<Mixes, String> {
    let mixes = raw
        .split(',')
        .map(|c| c.trim().parse::<u64>().map_err(|e| format!("{c:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if mixes.contains(&0) {
        return Err("events per entity must be positive".into());
    }
    Ok(Mixes(mixes))
}

impl RunArgs {
    /// The run these flags ask for.
    pub fn into_opts(self) -> Opts {
        let mut o = Opts::defaults();
        if self.smoke {
            o = o.smoke();
        }
        if self.full {
            o.n = 10_000_000;
        }
        set(&mut o.n, self.n);
        set(&mut o.stage, self.stage);
        set(&mut o.ingest_conns, self.conns.map(|c| c.0));
        set(&mut o.query_conns, self.query_conns);
        set(&mut o.ingest_per_entity, self.ingest_per_entity);
        set(&mut o.mixes, self.mixes.map(|m| m.0));
        if self.no_mixes {
            o.mixes.clear();
        }
        set(&mut o.ingest_secs, self.secs);
        set(&mut o.query_secs, self.query_secs);
        set(&mut o.warmup_secs, self.warmup);
        set(&mut o.client_threads, self.client_threads);
        if self.no_wrk {
            o.wrk = false;
        }
        set(&mut o.wait_quiet, self.wait_quiet);
        set(&mut o.tmp, self.tmp);
        set(&mut o.server_bin, self.server_bin);
        set(&mut o.ceiling_bin, self.ceiling_bin);
        set(&mut o.repo, self.repo);
        set(&mut o.server_log, self.server_log);
        set(&mut o.command, self.command);
        if let Some(latest) = self.latest {
            o.outputs = vec![latest];
        }
        o.outputs.extend(self.write);
        o.stage = o.stage.min(o.n);
        o
    }
}

/// Replaces a default with the flag's value, if the flag was given.
fn set<T>(field: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *field = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_checked(std::iter::once("b24-bench").chain(args.iter().copied()))
    }

    fn run_opts(args: &[&str]) -> Opts {
        match parse(&[&["run"], args].concat()) {
            Ok(Cli {
                command: Command::Run(r),
            }) => r.into_opts(),
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn run_flags_lay_over_the_mode() {
        let o = run_opts(&[
            "--n", "42", "--smoke", "--conns", "1, 16", "--write", "a.md",
        ]);
        assert!(o.smoke);
        assert_eq!(o.n, 42);
        assert_eq!(o.stage, 42, "the stage is capped at N");
        assert_eq!(o.ingest_conns, vec![1, 16]);
        assert_eq!(o.ingest_secs, 1.0, "--smoke's default");
        assert_eq!(
            o.outputs,
            vec![PathBuf::from("target/bench/latest.md"), "a.md".into()]
        );
        let o = run_opts(&[
            "--latest", "x.md", "--write", "a", "--latest", "y.md", "--write", "b",
        ]);
        assert_eq!(
            o.outputs,
            vec![PathBuf::from("y.md"), "a".into(), "b".into()]
        );
        assert_eq!(run_opts(&["--n", "5", "--full"]).n, 10_000_000);
        assert_eq!(run_opts(&["--full", "--n", "5"]).n, 5);
        assert_eq!(run_opts(&["--stage", "7"]).stage, 7);
        assert!(!run_opts(&["--no-wrk"]).wrk);
        assert_eq!(run_opts(&[]).mixes, vec![1, 3, 10]);
        assert_eq!(run_opts(&["--mixes", "2, 5"]).mixes, vec![2, 5]);
        assert!(run_opts(&["--no-mixes"]).mixes.is_empty());
        assert_eq!(
            run_opts(&["--ingest-per-entity", "10"]).ingest_per_entity,
            10
        );
        assert!(run_opts(&[]).wrk);
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        let err = parse(&["run", "--n"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        assert!(err.to_string().contains("--n"), "{err}");
        let err = parse(&["run", "--secs", "x"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("--secs"), "{err}");
        assert!(err.to_string().contains("invalid float literal"), "{err}");
        for bad in [
            &["run", "--n", "0"][..],
            &["run", "--query-conns", "0"],
            &["run", "--conns", "1,x"],
            &["run", "--conns", "0"],
            &["run", "--mixes", "1,0"],
            &["run", "--ingest-per-entity", "0"],
            &["sled-floor", "--dir", "d", "--n", "1", "--value-bytes", "0"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad:?}: {err}");
        }
        let err = parse(&["run", "--bogus"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownArgument);
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn tool_flags_parse() {
        let fill = [
            "fill",
            "--data-dir",
            "/tmp/x",
            "--from",
            "5",
            "--to",
            "10",
            "--n",
            "10",
        ];
        match parse(&fill) {
            Ok(Cli {
                command: Command::Fill(f),
            }) => {
                assert_eq!(f.data_dir, PathBuf::from("/tmp/x"));
                assert_eq!(
                    (f.from, f.to, f.n, f.portals, f.inflight, f.per_entity),
                    (5, 10, 10, 1000, 512, 3)
                );
            }
            other => panic!("not a fill: {other:?}"),
        }
        let err = parse(&["fill", "--data-dir", "d", "--to", "10", "--n", "9"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let err = parse(&["fill", "--to", "10", "--n", "10"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert!(matches!(
            parse(&["probe", "--data-dir", "d", "--secs", "1.5"]),
            Ok(Cli {
                command: Command::Probe(_)
            })
        ));
        assert!(matches!(
            parse(&["load", "127.0.0.1:1", "4", "2"]),
            Ok(Cli {
                command: Command::Load(_)
            })
        ));
        assert!(parse(&["load", "nowhere", "4", "2"]).is_err());
    }
}
