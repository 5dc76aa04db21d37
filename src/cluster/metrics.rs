//! Cluster mode's metrics, registered with the process's other metrics
//! (served at `GET /metrics`).

use std::sync::OnceLock;

use prometheus::{Histogram, IntCounter, IntGauge};

use crate::metrics::{register_counter, register_gauge, register_histogram};

/// Publish, apply and lag metrics.
pub struct ClusterMetrics {
    /// Time from the first publish attempt to the stream's acknowledgement.
    pub publish_latency: Histogram,
    /// Publish attempts repeated (elections, lost quorum, timeouts).
    pub publish_retries: IntCounter,
    /// Publishes abandoned at the deadline (answered 503).
    pub publish_failures: IntCounter,
    /// The last stream sequence applied to the local journal.
    pub applied_seq: IntGauge,
    /// The stream's last sequence, as last seen.
    pub stream_last_seq: IntGauge,
    /// Messages the local journal is behind the stream.
    pub lag: IntGauge,
    /// Times the applier restarted from the journal's position.
    pub apply_restarts: IntCounter,
    /// Events answered `accepted` (acknowledged by the stream, not yet
    /// applied locally).
    pub accepted: IntCounter,
}

/// The cluster metrics of this process.
pub fn cluster_metrics() -> &'static ClusterMetrics {
    static METRICS: OnceLock<ClusterMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let registry = crate::metrics::metrics().registry();
        let counter = |name: &str, help: &str| register_counter(registry, name, help);
        let gauge = |name: &str, help: &str| register_gauge(registry, name, help);
        let publish_latency = register_histogram(
            registry,
            "b24j_cluster_publish_seconds",
            "Time from the first publish attempt to the stream's acknowledgement",
            vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        );
        ClusterMetrics {
            publish_latency,
            publish_retries: counter(
                "b24j_cluster_publish_retries_total",
                "Publish attempts repeated",
            ),
            publish_failures: counter(
                "b24j_cluster_publish_failures_total",
                "Publishes abandoned at the deadline",
            ),
            applied_seq: gauge(
                "b24j_cluster_applied_seq",
                "Last stream sequence applied to the local journal",
            ),
            stream_last_seq: gauge(
                "b24j_cluster_stream_last_seq",
                "The stream's last sequence as last seen",
            ),
            lag: gauge(
                "b24j_cluster_lag",
                "Stream messages the local journal is behind",
            ),
            accepted: counter(
                "b24j_cluster_accepted_total",
                "Events answered accepted before the local journal applied them",
            ),
            apply_restarts: counter(
                "b24j_cluster_apply_restarts_total",
                "Times the applier resumed from the journal's position",
            ),
        }
    })
}
