//! The harness's own subcommands (`fill`, `probe`, `sled-floor`) run as
//! child processes, so that their peak RSS and CPU are theirs alone; each
//! prints one `PREFIX key=value …` line on stdout, read here.

use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};

use super::harness::Harness;

impl Harness {
    /// Runs this binary with `args` (a subcommand: fill, probe, sled-floor)
    /// and returns the `key=value` pairs of its stdout line `PREFIX …`. The
    /// child is registered in `<tmp>/pids` while it runs, so that
    /// scripts/bench.sh's trap stops it when a run is interrupted.
    pub(super) fn tool(&self, prefix: &str, args: &[&str]) -> anyhow::Result<ToolLine> {
        let exe = std::env::current_exe().context("path of this executable")?;
        let child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context(args[0].to_owned())?;
        let pidfile = self.pids.join(child.id().to_string());
        let _ = std::fs::write(&pidfile, child.id().to_string());
        let out = child.wait_with_output();
        let _ = std::fs::remove_file(&pidfile);
        let out = out.context(args[0].to_owned())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("{} failed ({}): {text}", args[0], out.status);
        }
        text.lines()
            .find_map(|l| {
                l.strip_prefix(prefix)
                    .filter(|rest| rest.starts_with(' '))
                    .map(|rest| ToolLine(rest.to_owned()))
            })
            .ok_or_else(|| anyhow!("{} printed no {prefix} line: {text}", args[0]))
    }
}

/// The `key=value …` rest of a tool's result line.
pub(super) struct ToolLine(String);

impl ToolLine {
    /// The value of `key`, 0 if absent or not a number.
    pub(super) fn get(&self, key: &str) -> f64 {
        self.0
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}
