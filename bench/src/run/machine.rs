//! The first phase: wait for a quiet machine, then record what the run
//! ran on (CPU, memory, disk, kernel, versions) and the disk's fsync rate,
//! which bounds ingest at one connection.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::harness::Harness;
use crate::sys;

/// Share of all CPUs busy below which the machine counts as quiet.
const QUIET: f64 = 0.15;

impl Harness {
    /// The machine phase.
    pub(super) fn machine(&mut self) -> anyhow::Result<()> {
        if self.o.wait_quiet > 0.0 {
            self.wait_quiet();
        }
        self.r.started = utc_now();
        self.r.machine = Some(sys::machine(&self.o.tmp));
        self.r.busy_before = sys::cpu_busy(Duration::from_millis(500));
        self.r.load_before = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        self.r.git = sys::git_describe(&self.o.repo);
        self.r.versions = sys::lock_versions(
            &self.o.repo.join("Cargo.lock"),
            &["warp", "hyper", "hyper-util", "tokio", "sled"],
        );
        eprintln!("== fsync rate ({} × 200 B + fdatasync)", self.o.fsync_count);
        self.r.fsync_append_rate =
            Some(sys::fsync_rate(&self.o.tmp, self.o.fsync_count, false).context("fsync")?);
        self.r.fsync_rate =
            Some(sys::fsync_rate(&self.o.tmp, self.o.fsync_count, true).context("fsync")?);
        Ok(())
    }

    /// Waits up to `--wait-quiet` seconds for other load to fall below
    /// [`QUIET`]; starts anyway after that.
    fn wait_quiet(&self) {
        let t = Instant::now();
        loop {
            let busy = sys::cpu_busy(Duration::from_secs(1)).unwrap_or(0.0);
            if busy < QUIET {
                break;
            }
            if t.elapsed().as_secs_f64() > self.o.wait_quiet {
                eprintln!(
                    "== the machine is still busy ({:.0} % CPU); starting anyway",
                    busy * 100.0
                );
                break;
            }
            eprintln!(
                "== waiting for a quiet machine ({:.0} % CPU busy)",
                busy * 100.0
            );
            std::thread::sleep(Duration::from_secs(4));
        }
    }
}

/// `date -u`, as the report's header shows it.
fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
