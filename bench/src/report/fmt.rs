//! How the report writes numbers: thousands separators, latencies, sizes,
//! ratios, pass marks and the cells every load table shares.

use std::time::Duration;

use crate::model::Measured;

/// Cores of other load above which a phase is marked disturbed.
pub(super) const NOISY: f64 = 0.3;

/// `1234567` → `1,234,567`.
pub(super) fn int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency in ns, in the unit that reads best (µs, ms or s).
pub(super) fn ns(v: u64) -> String {
    let v = v as f64;
    if v < 1e6 {
        format!("{:.0} µs", v / 1e3)
    } else if v < 1e9 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.2} s", v / 1e9)
    }
}

/// A duration: ms below 1 s, minutes and seconds from 2 min.
pub(super) fn dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{} min {:02} s", s as u64 / 60, s as u64 % 60)
    }
}

/// KiB as MiB.
pub(super) fn mib(kb: u64) -> String {
    format!("{:.0} MiB", kb as f64 / 1024.0)
}

/// A target's result cell.
pub(super) fn mark(ok: bool) -> &'static str {
    if ok {
        "✅ pass"
    } else {
        "❌ miss"
    }
}

/// `v` as a multiple of `of`'s rate; `None` without a rate to divide by.
pub(super) fn ratio(v: f64, of: Option<&Measured>) -> Option<f64> {
    of.filter(|c| c.rate > 0.0).map(|c| v / c.rate)
}

/// A ratio as `0.52×`, `–` when there is none.
pub(super) fn fmt_ratio(x: Option<f64>) -> String {
    x.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "–".into())
}

/// CPU cores of server / client / other, marked ⚠ when other load was [`NOISY`].
pub(super) fn cpu(m: &Measured) -> String {
    format!(
        "{:.2} / {:.2} / {:.2}{}",
        m.server_cpu,
        m.client_cpu,
        m.other_cpu,
        if m.other_cpu > NOISY { " ⚠" } else { "" }
    )
}

/// The cells from connections to peak RSS of a load table's row.
pub(super) fn row_tail(m: &Measured) -> String {
    format!(
        "{} | {} | {} | {} | {} | {} | {}",
        m.conns,
        int(m.rate as u64),
        ns(m.lat.p50),
        ns(m.lat.p99),
        ns(m.lat.p999),
        cpu(m),
        mib(m.peak_rss_kb)
    )
}
