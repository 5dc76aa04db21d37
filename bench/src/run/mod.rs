//! `b24-bench run`: every phase, in one process, on one machine, one
//! report. The harness (`harness.rs`) holds what the phases share; each
//! phase is a file of its own, in the order they run: machine → ceiling →
//! ingest → query (fills, then the in-process floors) → the sized ceiling →
//! the other entity mixes' fills.

mod ceiling;
mod floors;
mod harness;
mod ingest;
mod machine;
mod mixes;
mod proc;
mod query;
mod service;
mod tool;

use std::time::Instant;

use anyhow::{bail, Context};

use crate::opts::Opts;
use harness::Harness;

/// Runs `run` with `o`: prepares the work dir, runs every phase, prints the
/// report and writes it to every output. `Ok(false)`: a correctness check
/// failed (the report says which).
pub fn execute(mut o: Opts) -> anyhow::Result<bool> {
    let own_tmp = o.tmp.as_os_str().is_empty();
    if own_tmp {
        o.tmp = std::env::temp_dir().join(format!("b24-bench-{}", std::process::id()));
    }
    std::fs::create_dir_all(&o.tmp).with_context(|| o.tmp.display().to_string())?;
    for bin in [&o.server_bin, &o.ceiling_bin] {
        if !bin.exists() {
            bail!(
                "{} not found: build with `cargo build --release -p b24-journal -p b24-journal-bench`",
                bin.display()
            );
        }
    }
    let outputs = o.outputs.clone();
    let tmp = o.tmp.clone();
    let result = run(o);
    if own_tmp {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let (text, ok) = result?;
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
    Ok(ok)
}

/// Runs every phase; returns the report and whether all checks passed. A
/// phase's error ends the run, and the report says where it stopped.
fn run(o: Opts) -> anyhow::Result<(String, bool)> {
    let t = Instant::now();
    let mut h = Harness::new(o)?;
    let mut fatal = None;
    for phase in [
        Harness::machine as fn(&mut Harness) -> anyhow::Result<()>,
        Harness::ceiling,
        Harness::ingest,
        Harness::query,
        Harness::ceiling_sized,
        Harness::mixes,
    ] {
        if let Err(e) = phase(&mut h) {
            fatal = Some(e);
            break;
        }
    }
    if let Some(e) = fatal {
        h.errors.push(format!("aborted: {e:#}"));
    }
    let text = h.finish(t.elapsed());
    let ok = h.errors.is_empty();
    Ok((text, ok))
}
