//! Metrics in the Prometheus text format, served at `GET /metrics`.
//!
//! One process-wide set, like Prometheus' own default registry: the writer
//! thread, the handlers and the scrape all reach it without threading a
//! handle through every layer.

use std::path::Path;
use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Registers `metric` in `registry` and returns it. Cannot fail for the
/// service's own metrics: their names are valid and each is registered
/// once (a clash is a programming error caught by the metrics tests).
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

/// A counter registered in `registry` (see [`register`]).
pub(crate) fn register_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid counter"),
    )
}

/// A gauge registered in `registry` (see [`register`]).
pub(crate) fn register_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid gauge"))
}

/// A histogram with `buckets` registered in `registry` (see [`register`]).
pub(crate) fn register_histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(
        registry,
        Histogram::with_opts(opts).expect("valid histogram"),
    )
}

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    /// Ingest requests that reached the handler.
    pub received: IntCounter,
    /// New events stored.
    pub stored: IntCounter,
    /// Duplicates answered.
    pub duplicates: IntCounter,
    /// Refused ingest requests, by reason.
    pub rejected: IntCounterVec,
    /// Time from request to durable acknowledgement (200s).
    pub ack_latency: Histogram,
    /// Jobs per writer batch (one fsync each).
    pub batch_size: Histogram,
    /// sled keys inserted or removed by commits. Per stored event this is
    /// the storage engine's share of ingest work: each key costs sled a tree
    /// descent and usually a node copy (docs/performance.md).
    pub store_writes: IntCounter,
    /// 1 while block and postings item reads are answered by the read
    /// mirror, 0 while it is rebuilt after a start (or was dropped):
    /// queries then read sled.
    pub read_mirror_ready: IntGauge,
    /// Appends waiting for the writer (sampled at scrape).
    pub queue_depth: IntGauge,
    /// Bytes of the data directory (sampled at scrape).
    pub disk_bytes: IntGauge,
    /// Portals in the journal (sampled at scrape).
    pub portals: IntGauge,
    /// Offline records pulled, by outcome (recovered, reconciled,
    /// duplicate, unreadable).
    pub offline_records: IntCounterVec,
    /// Failed pull cycles and calls, by kind.
    pub offline_errors: IntCounterVec,
    /// Access-token refreshes that succeeded.
    pub offline_refreshes: IntCounter,
    /// Per pulled portal (sampled at scrape): Unix seconds of its last
    /// complete pull.
    pub offline_last_pull: IntGaugeVec,
    /// Per pulled portal (sampled at scrape): 1 for its token state
    /// (`ok`, `refreshing`, `revoked`).
    pub offline_token_state: IntGaugeVec,
}

/// The metrics of this process.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        // Cannot fail: the names, labels and buckets below are valid and
        // registered once each.
        let counter = |name: &str, help: &str| register_counter(&registry, name, help);
        let gauge = |name: &str, help: &str| register_gauge(&registry, name, help);
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            register_histogram(&registry, name, help, buckets)
        };
        let rejected = IntCounterVec::new(
            Opts::new(
                "b24j_events_rejected_total",
                "Ingest requests refused, by reason",
            ),
            &["reason"],
        )
        .expect("valid counter vec");
        registry
            .register(Box::new(rejected.clone()))
            .expect("registered once");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter vec");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge vec");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        Metrics {
            offline_records: counter_vec(
                "b24j_offline_records_total",
                "Offline records pulled, by outcome",
                &["outcome"],
            ),
            offline_errors: counter_vec(
                "b24j_offline_errors_total",
                "Failed offline pulls, by kind",
                &["kind"],
            ),
            offline_refreshes: counter(
                "b24j_offline_token_refreshes_total",
                "Access tokens renewed at the OAuth server",
            ),
            offline_last_pull: gauge_vec(
                "b24j_offline_last_pull_timestamp_seconds",
                "Unix time of the last complete offline pull, per portal",
                &["member_id"],
            ),
            offline_token_state: gauge_vec(
                "b24j_offline_token_state",
                "1 for the portal's token state (ok, refreshing, revoked)",
                &["member_id", "state"],
            ),
            received: counter("b24j_events_received_total", "Ingest requests received"),
            stored: counter("b24j_events_stored_total", "New events stored durably"),
            duplicates: counter(
                "b24j_events_duplicate_total",
                "Events answered as duplicates of stored ones",
            ),
            rejected,
            ack_latency: histogram(
                "b24j_ack_latency_seconds",
                "Time from request to durable acknowledgement",
                vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            batch_size: histogram(
                "b24j_writer_batch_size",
                "Jobs committed per writer batch (one fsync each)",
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            ),
            store_writes: counter(
                "b24j_store_writes_total",
                "sled keys inserted or removed by commits",
            ),
            read_mirror_ready: gauge(
                "b24j_read_mirror_ready",
                "1 while block and postings item reads are answered by the read mirror",
            ),
            queue_depth: gauge("b24j_writer_queue_depth", "Appends waiting for the writer"),
            disk_bytes: gauge(
                "b24j_journal_disk_bytes",
                "Bytes used by the data directory",
            ),
            portals: gauge("b24j_portals", "Portals in the journal"),
            registry,
        }
    }

    /// The registry, for metrics defined elsewhere (cluster mode's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Cannot fail: encoding into a Vec only fails on I/O errors.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("metrics encode");
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Bytes used by the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
