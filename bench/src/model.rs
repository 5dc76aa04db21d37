//! What a run measured: the numbers of each phase and the report's rows.
//! The phases (`run/`) fill a [`Report`] in; the markdown (`report/`)
//! reads it. Both import these types, neither imports the other's.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::gen::FillPlan;
use crate::sys::{DiskSplit, Machine};
use crate::works::{IngestCounts, QueryCounts, QueryKind};

/// Latency summary of a histogram, in ns.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lat {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
}

impl Lat {
    pub fn of(h: &Histogram<u64>) -> Lat {
        Lat {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
        }
    }
}

/// One load phase's numbers.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub conns: usize,
    pub rate: f64,
    pub lat: Lat,
    pub server_cpu: f64,
    pub client_cpu: f64,
    /// Cores busy with anything else on the machine during the phase.
    pub other_cpu: f64,
    /// Cores used by the service's journal writer thread (`None` for the
    /// bare server, which has none).
    pub writer_cpu: Option<f64>,
    pub peak_rss_kb: u64,
}

/// wrk's run against the bare server, for checking the load generator.
#[derive(Debug, Clone, Default)]
pub struct Wrk {
    pub conns: usize,
    pub secs: u64,
    pub rate: Option<f64>,
    pub p50: Option<String>,
    pub p99: Option<String>,
    /// Why there are no numbers (e.g. wrk not found); empty when there are.
    pub note: String,
}

/// One ingest level against the real service.
pub struct IngestRow {
    pub m: Measured,
    pub counts: IngestCounts,
    pub journal_events: u64,
    pub journal_dups: u64,
    pub verified: bool,
    /// sled keys the service wrote during the level (its
    /// `b24j_store_writes_total`), warm-up included like `counts`.
    pub store_writes: Option<u64>,
}

/// One bulk fill (`b24-bench fill`): of the query journal, or of an entity
/// mix's own journal.
pub struct FillRow {
    /// Events per entity id of the plan.
    pub per_entity: u64,
    pub from: u64,
    pub to: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub fill_secs: f64,
    pub close_secs: f64,
    pub wall: Duration,
    pub peak_rss_kb: u64,
    pub disk: DiskSplit,
}

/// One query kind at one journal size.
pub struct QueryRow {
    pub kind: QueryKind,
    pub at: u64,
    pub m: Measured,
    pub counts: QueryCounts,
}

/// latest-50 through the service's query code, one thread, no HTTP
/// (`b24-bench probe`, on the N journal after the query phase).
pub struct Probe {
    pub pages: u64,
    /// CPU of the probing thread per page, µs.
    pub cpu_us: f64,
    pub body_bytes: u64,
    /// Mean stored event record, bytes.
    pub record_bytes: u64,
}

/// sled alone inserting one value per event (`b24-bench sled-floor`).
pub struct Floor {
    pub inserts: u64,
    pub value_bytes: u64,
    /// Process CPU (sled's threads included) per insert, µs.
    pub cpu_us: f64,
    pub disk_bytes_per_item: f64,
}

/// Everything one run measured, in the order the report shows it.
#[derive(Default)]
pub struct Report {
    pub started: String,
    pub machine: Option<Machine>,
    pub busy_before: Option<f64>,
    pub load_before: String,
    pub git: String,
    pub versions: Vec<(String, String)>,
    pub fsync_rate: Option<f64>,
    /// The same, appending to the file instead.
    pub fsync_append_rate: Option<f64>,
    pub ceiling_post: Vec<Measured>,
    pub ceiling_get: Option<Measured>,
    /// The bare server's GET answering bodies of the given size (latest-50's
    /// mean at N), measured after the query phase.
    pub ceiling_sized: Option<(u64, Measured)>,
    pub wrk: Option<Wrk>,
    pub ingest: Vec<IngestRow>,
    pub ingest_total: IngestCounts,
    pub ingest_restart_ok: bool,
    pub ingest_startup: Option<Duration>,
    /// The ingest journal on disk after its clean restart and stop, and its
    /// events.
    pub ingest_disk: Option<(DiskSplit, u64)>,
    /// The query journal's fills (the small stage, then N).
    pub fills: Vec<FillRow>,
    /// The other entity mixes' fills to N (`run/mixes.rs`).
    pub mixes: Vec<FillRow>,
    pub startups: Vec<(u64, Duration)>,
    /// (events, time) of the second start on the same journal.
    pub restarts: Vec<(u64, Duration)>,
    /// (events, data dir bytes, of which the read mirror) of the query
    /// journal while its server ran, after the queries: the mirror exists
    /// only while the service runs.
    pub serving_disk: Vec<(u64, u64, u64)>,
    /// (events, time) from healthy to the read mirror ready, after the
    /// first start; the queries are measured after it.
    pub mirror_ready: Vec<(u64, Duration)>,
    pub query: Vec<QueryRow>,
    pub query_plan: Option<FillPlan>,
    pub probe: Option<Probe>,
    pub floor: Option<Floor>,
    pub wall: Duration,
    pub errors: Vec<String>,
}

impl Report {
    /// The bare server's POST at `conns` connections.
    pub fn ceiling_at(&self, conns: usize) -> Option<&Measured> {
        self.ceiling_post.iter().find(|m| m.conns == conns)
    }

    /// The ingest level at `conns` connections.
    pub fn ingest_at(&self, conns: usize) -> Option<&IngestRow> {
        self.ingest.iter().find(|row| row.m.conns == conns)
    }

    /// latest-50 on the journal of `at` events.
    pub fn latest_at(&self, at: u64) -> Option<&QueryRow> {
        self.query
            .iter()
            .find(|q| q.kind == QueryKind::Latest && q.at == at)
    }
}
