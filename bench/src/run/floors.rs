//! The in-process floors, after the query phase: latest-50 through the
//! service's query code on the filled journal (`b24-bench probe`), then
//! sled alone inserting values of the journal's mean record size
//! (`b24-bench sled-floor`). The report's CPU-per-request section compares
//! the service's measured work with them.

use std::path::Path;

use super::harness::{Harness, QUERY_SEED};
use crate::model::{Floor, Probe};

/// Inserts of the sled floor, at most (N if smaller).
const FLOOR_INSERTS: u64 = 1_000_000;

impl Harness {
    /// Both floors on the filled journal in `data` (no server runs on it
    /// now). A failure is an error of the run (the filled journal must open
    /// and answer), and the report's CPU-per-request section then lacks
    /// what is missing.
    pub(super) fn floors(&mut self, data: &Path) {
        let secs = if self.o.smoke { 1.0 } else { 6.0 };
        eprintln!("== in-process latest-50 on the filled journal, {secs} s");
        let probe = self.tool(
            "PROBE",
            &[
                "probe",
                "--data-dir",
                &data.display().to_string(),
                "--secs",
                &secs.to_string(),
                "--seed",
                &QUERY_SEED.to_string(),
            ],
        );
        let probe = match probe {
            Ok(v) => Probe {
                pages: v.get("pages") as u64,
                cpu_us: v.get("cpu_us"),
                body_bytes: v.get("body_bytes") as u64,
                record_bytes: v.get("record_bytes") as u64,
            },
            Err(e) => {
                self.errors.push(format!("probe: {e:#}"));
                return;
            }
        };
        let record_bytes = probe.record_bytes.max(1);
        self.r.probe = Some(probe);
        let n = self.o.n.min(FLOOR_INSERTS);
        eprintln!("== sled alone: {n} inserts of {record_bytes} B");
        let dir = self.o.tmp.join("sled-floor");
        let floor = self.tool(
            "FLOOR",
            &[
                "sled-floor",
                "--dir",
                &dir.display().to_string(),
                "--n",
                &n.to_string(),
                "--value-bytes",
                &record_bytes.to_string(),
            ],
        );
        let _ = std::fs::remove_dir_all(&dir);
        match floor {
            Ok(v) => {
                self.r.floor = Some(Floor {
                    inserts: n,
                    value_bytes: record_bytes,
                    cpu_us: v.get("cpu_us"),
                    disk_bytes_per_item: v.get("disk_bytes_per_item"),
                })
            }
            Err(e) => self.errors.push(format!("sled-floor: {e:#}")),
        }
    }
}
