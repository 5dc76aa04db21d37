//! State changes other than received events, issued through the stream:
//! in cluster mode a portal erasure or a retention step is published as a
//! command and applied by every node (this one included) in stream order,
//! never done locally only. Each waits for the local journal to apply it
//! and answers with its local outcome.

use std::time::Duration;

use uuid::Uuid;

use super::apply::Outcome;
use super::commands::Command;
use super::node::{now_ms, Cluster};
use crate::journal::RetentionPolicy;

/// How long an operator's change waits for the local apply.
const APPLY_WAIT: Duration = Duration::from_secs(30);

impl Cluster {
    /// Publishes `command` (under a fresh `Nats-Msg-Id`: each call is a
    /// change of its own) and waits until this node applied it.
    async fn change(&self, command: Command) -> Result<Outcome, String> {
        let msg_id = format!("change.{}", Uuid::now_v7());
        let acked = self
            .publisher
            .publish(&command, &msg_id)
            .await
            .map_err(|e| e.to_string())?;
        self.applied
            .wait_for(acked.seq, APPLY_WAIT)
            .await
            .ok_or_else(|| format!("stream message {} not applied here in time", acked.seq))
    }

    /// Erases a portal on every node; the events erased here (`None`: not
    /// in the journal).
    pub async fn erase(&self, member_id: &str) -> Result<Option<u64>, String> {
        let command = Command::Erase {
            member_id: member_id.to_owned(),
        };
        match self.change(command).await? {
            Outcome::Erased(n) => Ok(n),
            other => Err(format!("unexpected outcome {other:?}")),
        }
    }

    /// One retention step on every node, its age limit counted back from
    /// this node's clock now; the events deleted.
    pub async fn retain(&self, policy: RetentionPolicy, budget: usize) -> Result<u64, String> {
        match self
            .change(Command::retain(policy, budget, now_ms()))
            .await?
        {
            Outcome::Retained(n) => Ok(n),
            other => Err(format!("unexpected outcome {other:?}")),
        }
    }
}
