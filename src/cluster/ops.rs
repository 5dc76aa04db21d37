//! Operating a cluster: `b24-journal cluster init` creates (or checks and
//! updates) the stream and the nodes' KV bucket; `cluster status` shows
//! the stream's state, its replicas, and each node's applied sequence and
//! lag.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use serde_json::{json, Value};

use super::commands::SUBJECT_PREFIX;
use super::config::ClusterConfig;
use super::node::{now_ms, NodeReport, NODES_BUCKET};

/// The stream's limits, as `cluster init` sets them.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Replicas (3 for a cluster that survives the loss of any one node).
    pub replicas: usize,
    /// How long the stream keeps messages: at least the time it takes to
    /// rebuild a node (restore a peer's backup and replay the rest).
    pub max_age: Duration,
    /// Most bytes kept; the oldest go first.
    pub max_bytes: i64,
    /// The window in which a repeated `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpsError(String);

/// Creates the stream and the KV bucket, or updates their limits.
pub async fn init(config: &ClusterConfig, limits: StreamLimits) -> Result<Value, OpsError> {
    let client = config
        .connect()
        .await
        .map_err(|e| OpsError(format!("cannot connect to NATS: {e}")))?;
    let js = jetstream::new(client);
    let wanted = stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        storage: stream::StorageType::File,
        num_replicas: limits.replicas,
        max_age: limits.max_age,
        max_bytes: limits.max_bytes,
        duplicate_window: limits.duplicate_window,
        discard: stream::DiscardPolicy::Old,
        // Messages are never deleted one by one: the applier relies on
        // consecutive sequences.
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    };
    let created = match js.get_stream(&config.stream).await {
        Ok(_) => {
            js.update_stream(wanted)
                .await
                .map_err(|e| OpsError(format!("cannot update stream: {e}")))?;
            false
        }
        Err(_) => {
            js.create_stream(wanted)
                .await
                .map_err(|e| OpsError(format!("cannot create stream: {e}")))?;
            true
        }
    };
    if js.get_key_value(NODES_BUCKET).await.is_err() {
        js.create_key_value(kv::Config {
            bucket: NODES_BUCKET.into(),
            description: "b24-journal nodes' applied stream sequences".into(),
            history: 1,
            num_replicas: limits.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| OpsError(format!("cannot create KV bucket: {e}")))?;
    }
    if js.get_key_value(super::lease::LEASES_BUCKET).await.is_err() {
        js.create_key_value(super::lease::bucket_config(limits.replicas))
            .await
            .map_err(|e| OpsError(format!("cannot create the leases bucket: {e}")))?;
    }
    Ok(json!({
        "status": "ok",
        "stream": config.stream,
        "created": created,
        "replicas": limits.replicas,
        "max_age_secs": limits.max_age.as_secs(),
        "max_bytes": limits.max_bytes,
        "duplicate_window_secs": limits.duplicate_window.as_secs(),
    }))
}

/// The stream's state and every node's progress, as JSON.
pub async fn status(config: &ClusterConfig) -> Result<Value, OpsError> {
    let client = config
        .connect()
        .await
        .map_err(|e| OpsError(format!("cannot connect to NATS: {e}")))?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(&config.stream)
        .await
        .map_err(|e| OpsError(format!("stream {}: {e}", config.stream)))?;
    let info = stream
        .get_info()
        .await
        .map_err(|e| OpsError(format!("stream info: {e}")))?;
    let last = info.state.last_sequence;
    let cluster = info.cluster.as_ref().map(|c| {
        json!({
            "leader": c.leader,
            "replicas": c.replicas.iter().map(|r| json!({
                "name": r.name,
                "current": r.current,
                "offline": r.offline,
                "lag": r.lag,
                "active_ms": r.active.as_millis() as u64,
            })).collect::<Vec<_>>(),
        })
    });
    let mut nodes = Vec::new();
    if let Ok(bucket) = js.get_key_value(NODES_BUCKET).await {
        if let Ok(mut keys) = bucket.keys().await {
            use futures_util::StreamExt;
            while let Some(Ok(key)) = keys.next().await {
                if let Ok(Some(bytes)) = bucket.get(&key).await {
                    if let Ok(r) = serde_json::from_slice::<NodeReport>(&bytes) {
                        nodes.push(json!({
                            "node": r.node,
                            "applied": r.applied,
                            "lag": last.saturating_sub(r.applied),
                            "reported_ms_ago": now_ms().saturating_sub(r.at_ms),
                        }));
                    }
                }
            }
        }
    }
    Ok(json!({
        "stream": config.stream,
        "messages": info.state.messages,
        "bytes": info.state.bytes,
        "first_seq": info.state.first_sequence,
        "last_seq": last,
        "replicas": info.config.num_replicas,
        "max_age_secs": info.config.max_age.as_secs(),
        "max_bytes": info.config.max_bytes,
        "duplicate_window_secs": info.config.duplicate_window.as_secs(),
        "cluster": cluster,
        "nodes": nodes,
    }))
}
