//! Where the puller's changes go. In embedded mode, the local writer. In
//! cluster mode, the stream: every pull-state change and every pulled
//! batch is published as a command, acknowledged by a quorum, and applied
//! by every node's writer (this one's included, which is waited for), so
//! all journals hold the same records and the same pull state, and a
//! batch is cleared at the portal only once the cluster holds it.

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::journal::pull_state::{PullMerge, PullState};
use crate::journal::{AppendError, AppendOutcome, JournalHandle, NewEvent, UnavailableCause};

/// The puller's writer: local, or the cluster's stream.
#[derive(Clone)]
pub enum Sink {
    /// Embedded mode.
    Local(JournalHandle),
    /// Cluster mode.
    Cluster(Arc<Cluster>, JournalHandle),
}

impl Sink {
    /// The local journal (reads).
    pub fn journal(&self) -> &JournalHandle {
        match self {
            Sink::Local(j) | Sink::Cluster(_, j) => j,
        }
    }

    /// Cluster mode: the portal's state as this node last applied it, the
    /// base every change is made from (another node may have applied a
    /// new grant). `None` in embedded mode, where memory is the truth.
    pub fn applied_state(&self, member_id: &str) -> Option<PullState> {
        match self {
            Sink::Local(_) => None,
            Sink::Cluster(_, j) => j.reader().store().pull_state(member_id).ok().flatten(),
        }
    }

    /// Whether this is cluster mode.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Sink::Cluster(..))
    }

    /// Stores `state` durably (combined by `merge` in cluster mode).
    pub async fn save_pull(&self, state: PullState, merge: PullMerge) -> Result<(), AppendError> {
        match self {
            Sink::Local(j) => j.save_pull(state).await,
            Sink::Cluster(c, _) => c.save_pull(state, merge).await.map_err(not_replicated),
        }
    }

    /// Journals pulled records with `state` in one atomic batch; each
    /// record's outcome and the state as committed.
    pub async fn append_pulled(
        &self,
        events: Vec<NewEvent>,
        state: PullState,
        merge: PullMerge,
    ) -> Result<(Vec<Result<AppendOutcome, AppendError>>, PullState), AppendError> {
        match self {
            Sink::Local(j) => j.append_pulled(events, state).await,
            Sink::Cluster(c, _) => c.pulled(events, state, merge).await.map_err(not_replicated),
        }
    }
}

fn not_replicated(why: String) -> AppendError {
    AppendError::Unavailable(UnavailableCause::NotReplicated(why))
}
