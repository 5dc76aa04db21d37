//! Publishing a command and waiting for the stream's acknowledgement: the
//! only way a cluster node changes state.
//!
//! A publish is acknowledged once a quorum of the stream's replicas stored
//! it (and, with `sync_interval: always`, synced it to disk). While the
//! stream elects a new leader, or while a quorum is missing, publishes fail
//! or time out: they are retried with the same `Nats-Msg-Id`, so that one
//! that was stored although its answer was lost is not stored twice (the
//! stream drops a repeat within its `duplicate_window` and answers with
//! the original's sequence), until the deadline — then the caller answers
//! 503 and Bitrix24's event was never acknowledged.
//!
//! A repeat's acknowledgement comes from the leader's dedup table alone,
//! and a leader that lost its followers keeps answering for seconds (until
//! it notices and steps down). So a repeat counts only once a fresh write
//! has been acknowledged after it ([`Command::Quorum`]): no 200 is
//! answered while the cluster could not store anything.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::Publish};

use super::commands::Command;
use super::metrics::cluster_metrics;

/// Longest one publish attempt waits for its acknowledgement. An election
/// takes seconds; an attempt that times out is retried, not abandoned.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The stream's answer to a publish.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    /// The message's stream sequence (the original's, for a repeat).
    pub seq: u64,
    /// The stream already held a message with this `Nats-Msg-Id`.
    pub repeat: bool,
}

/// Why a command was not acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("not acknowledged by the stream within {waited_ms} ms after {attempts} attempts: {last}")]
pub struct PublishError {
    /// Attempts made.
    pub attempts: u32,
    /// Time spent.
    pub waited_ms: u64,
    /// The last attempt's failure.
    pub last: String,
}

/// Publishes commands with retries.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    deadline: Duration,
}

impl Publisher {
    /// Publishes a [`Command::Quorum`] (a new message id, so never a
    /// repeat) and waits for its acknowledgement: proof that a quorum of
    /// the stream's replicas stores messages now.
    async fn prove_quorum(&self) -> Result<(), String> {
        let probe = Command::Quorum;
        let publish = Publish::build()
            .payload(probe.to_bytes().into())
            .message_id(uuid::Uuid::now_v7().to_string());
        let ack = self
            .js
            .send_publish(probe.subject(), publish)
            .await
            .map_err(|e| format!("quorum probe: {e}"))?;
        ack.await
            .map(|_| ())
            .map_err(|e| format!("quorum probe: {e}"))
    }

    /// A publisher on `js` that gives up after `deadline`.
    pub fn new(js: jetstream::Context, deadline: Duration) -> Publisher {
        Publisher { js, deadline }
    }

    /// Publishes `command` under `msg_id` and waits for the stream's
    /// acknowledgement, retrying until the deadline.
    pub async fn publish(&self, command: &Command, msg_id: &str) -> Result<Acked, PublishError> {
        let started = Instant::now();
        let subject = command.subject();
        let payload: bytes::Bytes = command.to_bytes().into();
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let left = self.deadline.saturating_sub(started.elapsed());
            let attempt = async {
                let publish = Publish::build().payload(payload.clone()).message_id(msg_id);
                let ack = self
                    .js
                    .send_publish(subject.clone(), publish)
                    .await
                    .map_err(|e| e.to_string())?;
                let ack = ack.await.map_err(|e| e.to_string())?;
                if ack.duplicate {
                    self.prove_quorum().await?;
                }
                Ok::<_, String>(ack)
            };
            let result = tokio::time::timeout(ATTEMPT_TIMEOUT.min(left), attempt).await;
            let last = match result {
                Ok(Ok(ack)) => {
                    let m = cluster_metrics();
                    m.publish_latency.observe(started.elapsed().as_secs_f64());
                    return Ok(Acked {
                        seq: ack.sequence,
                        repeat: ack.duplicate,
                    });
                }
                Ok(Err(e)) => e,
                Err(_) => "no acknowledgement in time".to_owned(),
            };
            let waited = started.elapsed();
            if waited + backoff >= self.deadline {
                cluster_metrics().publish_failures.inc();
                return Err(PublishError {
                    attempts,
                    waited_ms: waited.as_millis() as u64,
                    last,
                });
            }
            cluster_metrics().publish_retries.inc();
            tracing::debug!(attempts, error = %last, "publish not acknowledged; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
