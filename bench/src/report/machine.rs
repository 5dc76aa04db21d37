//! The machine section: what the run ran on, the disk's fsync rate, the
//! load at start, the versions measured and how the load was generated.

use std::fmt::Write as _;

use super::fmt::int;
use crate::model::Report;
use crate::opts::Opts;
use crate::sys;

/// `## Machine`.
pub(super) fn section(w: &mut String, o: &Opts, r: &Report) {
    let _ = writeln!(w, "## Machine\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    if let Some(m) = &r.machine {
        let _ = writeln!(w, "| CPU | {} cores (`nproc`), {} |", m.cores, m.cpu);
        let _ = writeln!(w, "| memory | {:.1} GiB (MemTotal) |", m.mem_gib);
        let _ = writeln!(w, "| disk | {} |", m.disk);
        let _ = writeln!(w, "| kernel | {} |", m.kernel);
    }
    if let Some(f) = r.fsync_rate {
        let appending = r
            .fsync_append_rate
            .map(|a| {
                format!(
                    "; appending to the file instead: {} fsyncs/s",
                    int(a as u64)
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            w,
            "| fsync rate | **{} fsyncs/s** ({} × write 200 B + fdatasync over a zero-filled file, as the service's redo log writes, in the run's temp dir, same file system as the data dirs{appending}) |",
            int(f as u64),
            o.fsync_count
        );
    }
    let _ = writeln!(
        w,
        "| other load at start | {} of all CPU busy over 0.5 s; loadavg {} |",
        r.busy_before
            .map(|b| format!("{:.0} %", b * 100.0))
            .unwrap_or_else(|| "?".into()),
        r.load_before
    );
    let versions: Vec<String> = r.versions.iter().map(|(n, v)| format!("{n} {v}")).collect();
    let _ = writeln!(
        w,
        "| service | `{}` at git `{}`; {} (workspace Cargo.lock) |",
        o.server_bin.display(),
        r.git,
        versions.join(", ")
    );
    let _ = writeln!(
        w,
        "| load generator | `b24-bench` (bench/), {} client thread(s), raw HTTP/1.1 keep-alive, closed loop; {:.1} s warm-up (not measured) then {:.0} s per ingest level / {:.0} s per query kind; harness and servers at niceness {} |",
        o.client_threads,
        o.warmup_secs,
        o.ingest_secs,
        o.query_secs,
        sys::niceness()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into())
    );
    let _ = writeln!(w);
}
