//! The read barrier: before a node refuses an event because it does not
//! know the portal or its token, it applies everything the stream held at
//! that moment. An install acknowledged by another node a moment ago is in
//! the stream, so it is known here once the barrier passes, and its
//! portal's next event is not refused with 401.

use std::time::Duration;

use super::node::Cluster;

/// Why the barrier did not pass: the node cannot tell whether the portal
/// is known, so the event is answered 503 (try later), never 401.
#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    /// The stream's last sequence could not be read (no quorum, no leader).
    #[error("stream state unavailable: {0}")]
    Stream(String),
    /// The local journal did not catch up in time.
    #[error("the local journal did not apply up to stream message {0} in time")]
    Behind(u64),
}

impl Cluster {
    /// Waits until the local journal has applied everything the stream
    /// holds now, for at most `wait`.
    pub async fn barrier(&self, wait: Duration) -> Result<(), BarrierError> {
        let last = tokio::time::timeout(wait, self.stream_last())
            .await
            .map_err(|_| BarrierError::Stream("no answer in time".into()))?
            .map_err(BarrierError::Stream)?;
        if self.applied.reach(last, wait).await {
            Ok(())
        } else {
            Err(BarrierError::Behind(last))
        }
    }
}
