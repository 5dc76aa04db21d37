//! One node of the cluster: its NATS connection, the stream, the applier
//! task, and the report of its progress that the other nodes and `cluster
//! status` read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

use super::apply::{self, Applied};
use super::config::ClusterConfig;
use super::metrics::cluster_metrics;
use super::publish::Publisher;
use crate::journal::JournalHandle;

/// The KV bucket where each node reports its applied sequence.
pub const NODES_BUCKET: &str = "b24j_nodes";
/// Time between a node's reports (and lag measurements).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What a node reports about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's name.
    pub node: String,
    /// The last stream sequence its journal applied.
    pub applied: u64,
    /// The stream's last sequence when it reported.
    pub stream_last: u64,
    /// When it reported, Unix ms.
    pub at_ms: u64,
}

/// This node's part in the cluster.
pub struct Cluster {
    /// The settings.
    pub config: ClusterConfig,
    /// JetStream on the node's connection.
    pub js: jetstream::Context,
    /// Publishes commands with retries.
    pub publisher: Publisher,
    /// The applier's progress.
    pub applied: Arc<Applied>,
    /// The stream, for its last sequence.
    stream: jetstream::stream::Stream,
    /// The stream's last sequence, as last measured.
    stream_last: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No NATS server could be reached.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// The stream does not exist (or cannot be read).
    #[error("stream {stream} unavailable (create it with `b24-journal cluster init`): {why}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What went wrong.
        why: String,
    },
    /// The journal's position could not be read.
    #[error("cannot read the journal's stream position: {0}")]
    Position(String),
}

impl Cluster {
    /// Connects, checks the stream, and starts applying it into `journal`.
    pub async fn start(
        config: ClusterConfig,
        journal: JournalHandle,
    ) -> Result<Arc<Cluster>, StartError> {
        let client = config.connect().await?;
        let js = jetstream::new(client.clone());
        let stream_err = |why: String| StartError::Stream {
            stream: config.stream.clone(),
            why,
        };
        // With `retry_on_initial_connect` the client connects in the
        // background: keep asking until the stream answers.
        let stream = loop {
            match js.get_stream(&config.stream).await {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        jetstream::context::GetStreamErrorKind::JetStream(_)
                    ) =>
                {
                    return Err(stream_err(e.to_string()))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for the NATS cluster");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let position = journal
            .stream_seq()
            .map_err(|e| StartError::Position(e.to_string()))?;
        let applied = Applied::new(position);
        let publisher = Publisher::new(js.clone(), config.publish_deadline);
        let applier = tokio::spawn(apply::run(
            stream.clone(),
            client.clone(),
            journal.clone(),
            applied.clone(),
        ));
        let stream_last = Arc::new(AtomicU64::new(position));
        let reporter = Reporter {
            js: js.clone(),
            stream: stream.clone(),
            node: config.node.clone(),
            applied: applied.clone(),
            stream_last: stream_last.clone(),
        };
        let cluster = Arc::new(Cluster {
            config,
            js,
            publisher,
            applied,
            stream,
            stream_last,
            tasks: vec![applier, tokio::spawn(reporter.run())],
        });
        tracing::info!(
            node = %cluster.config.node,
            position,
            "cluster mode: applying the stream from the journal's position"
        );
        Ok(cluster)
    }

    /// The stream's current last sequence, asked of the stream now.
    pub async fn stream_last(&self) -> Result<u64, String> {
        let info = self.stream.get_info().await.map_err(|e| e.to_string())?;
        let last = info.state.last_sequence;
        note_stream_last(&self.stream_last, &self.applied, last);
        Ok(last)
    }

    /// Messages this node is behind the stream, as last measured.
    pub fn lag(&self) -> u64 {
        self.stream_last
            .load(Ordering::Relaxed)
            .saturating_sub(self.applied.seq())
    }

    /// Whether the node is close enough to the stream to serve reads
    /// (`/healthz`).
    pub fn caught_up(&self) -> bool {
        self.lag() <= self.config.max_lag
    }

    /// Tries to hold lease `name` for this node until `stop` (see
    /// `lease::hold`); whether it holds it now.
    pub fn lease(
        &self,
        name: &str,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::sync::watch::Receiver<bool> {
        let replicas = self.stream.cached_info().config.num_replicas.max(1);
        super::lease::hold(
            self.js.clone(),
            replicas,
            name.to_owned(),
            self.config.node.clone(),
            stop,
        )
    }

    /// Stops the applier and the reporter (at shutdown, before the
    /// journal closes).
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Reports the node's progress every [`REPORT_EVERY`].
struct Reporter {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    node: String,
    applied: Arc<Applied>,
    stream_last: Arc<AtomicU64>,
}

/// Records the stream's last sequence and the lag it makes.
fn note_stream_last(stream_last: &AtomicU64, applied: &Applied, last: u64) {
    let last = stream_last.fetch_max(last, Ordering::Relaxed).max(last);
    let m = cluster_metrics();
    m.stream_last_seq.set(last as i64);
    m.lag.set(last.saturating_sub(applied.seq()) as i64);
}

impl Reporter {
    async fn run(self) {
        let mut bucket: Option<kv::Store> = None;
        loop {
            tokio::time::sleep(REPORT_EVERY).await;
            let last = match self.stream.get_info().await {
                Ok(info) => info.state.last_sequence,
                Err(e) => {
                    tracing::debug!(error = %e, "stream info unavailable");
                    continue;
                }
            };
            note_stream_last(&self.stream_last, &self.applied, last);
            if bucket.is_none() {
                bucket = self.js.get_key_value(NODES_BUCKET).await.ok();
            }
            if let Some(b) = &bucket {
                let report = NodeReport {
                    node: self.node.clone(),
                    applied: self.applied.seq(),
                    stream_last: last,
                    at_ms: now_ms(),
                };
                // Cannot fail: a plain struct.
                let bytes = serde_json::to_vec(&report).expect("report serialises");
                if let Err(e) = b.put(&self.node, bytes.into()).await {
                    tracing::debug!(error = %e, "node report not written");
                }
            }
        }
    }
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
