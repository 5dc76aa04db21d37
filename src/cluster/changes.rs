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
use sha2::{Digest, Sha256};

use crate::journal::dedup::key::dedup_key;
use crate::journal::pull_state::{PullMerge, PullState};
use crate::journal::{AppendError, AppendOutcome, NewEvent, RetentionPolicy};

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

    /// Publishes a change of a portal's pull state and waits until this
    /// node applied it.
    pub async fn save_pull(&self, state: PullState, merge: PullMerge) -> Result<(), String> {
        match self.change(Command::SavePull { state, merge }).await? {
            Outcome::PullSaved => Ok(()),
            other => Err(format!("unexpected outcome {other:?}")),
        }
    }

    /// Publishes a pulled batch (each record's id assigned now) with the
    /// pull state it leaves, and waits until this node applied it: the
    /// records are durable in the cluster once this returns `Ok`, so the
    /// portal may clear them. The message id is the records' dedup keys,
    /// so a retried publish of the same batch is dropped by the stream.
    pub async fn pulled(
        &self,
        events: Vec<NewEvent>,
        state: PullState,
        merge: PullMerge,
    ) -> Result<(Vec<Result<AppendOutcome, AppendError>>, PullState), String> {
        let mut digest = Sha256::new();
        for e in &events {
            digest.update(dedup_key(
                &e.event,
                e.entity_id.as_ref(),
                e.data.as_ref(),
                e.ts,
            ));
        }
        digest.update(state.in_flight.as_deref().unwrap_or("").as_bytes());
        let msg_id = format!(
            "{}.pull.{}",
            state.member_id,
            digest
                .finalize()
                .iter()
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let command = Command::pulled(events, state, merge);
        let acked = self
            .publisher
            .publish(&command, &msg_id)
            .await
            .map_err(|e| e.to_string())?;
        match self.applied.wait_for(acked.seq, APPLY_WAIT).await {
            Some(Outcome::Pulled(outcomes, state)) => Ok((outcomes, *state)),
            Some(other) => Err(format!("unexpected outcome {other:?}")),
            None => Err(format!(
                "stream message {} not applied here in time",
                acked.seq
            )),
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
