//! The applier: consumes the stream in order into the local journal.
//!
//! An ordered consumer delivers the stream from the message after the
//! journal's recorded position (`JournalHandle::stream_seq`); each message
//! becomes one writer job that names its stream sequence, and the writer
//! applies them strictly in order, recording the position atomically with
//! each batch. Many jobs are queued before the first is answered, so
//! applying shares group commits like ingest does. If a job fails (the
//! disk, a gap), the jobs after it are refused by the writer as out of
//! order, and the applier starts again from the recorded position: nothing
//! is applied twice or skipped, however a node dies.
//!
//! The outcome of each applied message is kept for a while ([`Applied`]),
//! so that the node that received an event can answer `stored`/`duplicate`
//! with its seq, as embedded mode does.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::push::OrderedConfig, consumer::DeliverPolicy};
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::watch;

use super::commands::{Command, WireEvent};
use super::metrics::cluster_metrics;
use crate::journal::pull_state::PullState;
use crate::journal::{AppendError, AppendOutcome, JournalHandle, RetentionPolicy};

/// Messages handed to the writer and not yet answered: enough to fill
/// several batches (`journal::MAX_BATCH`), few enough to bound memory.
const IN_FLIGHT: usize = 4096;
/// Outcomes kept for receivers to read.
const KEPT_OUTCOMES: usize = 65_536;
/// Pause before starting again after a failure.
const RESTART_PAUSE: Duration = Duration::from_millis(500);

/// What applying one message did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// An event, stored or counted as a duplicate — or refused (takeover,
    /// a domain of another portal), the same way on every node.
    Event(Result<AppendOutcome, AppendError>),
    /// A portal erasure: the events erased (`None`: unknown portal).
    Erased(Option<u64>),
    /// A retention step: the events deleted.
    Retained(u64),
    /// A pull-state change, stored.
    PullSaved,
    /// A pulled batch: each record's outcome, and the pull state as
    /// committed.
    Pulled(Vec<Result<AppendOutcome, AppendError>>, Box<PullState>),
    /// A message this version does not apply.
    Skipped,
}

/// The applier's progress, shared with the receive side.
pub struct Applied {
    /// The last stream sequence durably applied.
    seq: watch::Sender<u64>,
    /// Recent outcomes by stream sequence.
    outcomes: Mutex<BTreeMap<u64, Outcome>>,
    /// Held (shared) by every message from its submission to its answer;
    /// [`Applied::pause`] takes it exclusively, so that the journal holds
    /// still at one stream position (a backup for a new node).
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl Applied {
    /// Progress starting at `seq` (the journal's recorded position).
    pub fn new(seq: u64) -> Arc<Applied> {
        cluster_metrics().applied_seq.set(seq as i64);
        Arc::new(Applied {
            seq: watch::channel(seq).0,
            outcomes: Mutex::default(),
            gate: Arc::default(),
        })
    }

    /// Stops applying once the messages already handed to the writer are
    /// answered, until the guard is dropped: the journal then changes no
    /// more (in cluster mode every change comes through the applier), and
    /// its recorded stream position matches its contents exactly.
    pub async fn pause(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    /// The last stream sequence durably applied.
    pub fn seq(&self) -> u64 {
        *self.seq.borrow()
    }

    /// Waits until message `seq` is applied or `wait` passes; its outcome
    /// if it is applied and still kept.
    pub async fn wait_for(&self, seq: u64, wait: Duration) -> Option<Outcome> {
        let mut rx = self.seq.subscribe();
        let reached = tokio::time::timeout(wait, rx.wait_for(|&s| s >= seq)).await;
        if !matches!(reached, Ok(Ok(_))) {
            return None;
        }
        self.lock().get(&seq).cloned()
    }

    /// Waits until everything up to `seq` is applied, or `wait` passes;
    /// whether it was reached.
    pub async fn reach(&self, seq: u64, wait: Duration) -> bool {
        let mut rx = self.seq.subscribe();
        let reached = tokio::time::timeout(wait, rx.wait_for(|&s| s >= seq)).await;
        matches!(reached, Ok(Ok(_)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Outcome>> {
        // Plain data: a panic elsewhere leaves it consistent.
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, seq: u64, outcome: Outcome) {
        {
            let mut kept = self.lock();
            kept.insert(seq, outcome);
            while kept.len() > KEPT_OUTCOMES {
                kept.pop_first();
            }
        }
        self.seq.send_modify(|s| *s = (*s).max(seq));
        cluster_metrics().applied_seq.set(seq as i64);
    }
}

/// A message's job, answered by the writer.
type Answer = Pin<Box<dyn Future<Output = (u64, Result<Outcome, AppendError>)> + Send>>;

/// Runs the applier until the process ends.
pub async fn run(
    stream: jetstream::stream::Stream,
    client: async_nats::Client,
    journal: JournalHandle,
    applied: Arc<Applied>,
) {
    loop {
        if let Err(e) = apply_from_position(&stream, &client, &journal, &applied).await {
            tracing::warn!(error = %e, "applying the stream stopped; resuming from the journal's position");
        }
        cluster_metrics().apply_restarts.inc();
        tokio::time::sleep(RESTART_PAUSE).await;
    }
}

/// Consumes the stream from the message after the journal's position
/// until something fails.
async fn apply_from_position(
    stream: &jetstream::stream::Stream,
    client: &async_nats::Client,
    journal: &JournalHandle,
    applied: &Applied,
) -> Result<(), String> {
    let position = journal.stream_seq().map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: position + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot consume: {e}"))?;
    tracing::info!(from = position + 1, "applying the stream");
    let mut answers: FuturesOrdered<Answer> = FuturesOrdered::new();
    loop {
        tokio::select! {
            message = messages.next(), if answers.len() < IN_FLIGHT => {
                let message = match message {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(format!("consumer: {e}")),
                    None => return Err("consumer ended".into()),
                };
                let seq = message
                    .info()
                    .map_err(|e| format!("message without stream info: {e}"))?
                    .stream_sequence;
                let held = applied.gate.clone().read_owned().await;
                let answer = submit(journal, seq, &message.payload).await?;
                answers.push_back(Box::pin(async move {
                    let answered = answer.await;
                    drop(held);
                    answered
                }));
            }
            Some((seq, result)) = answers.next() => match result {
                Ok(outcome) => applied.record(seq, outcome),
                Err(e) => return Err(format!("message {seq} not applied: {e}")),
            },
        }
    }
}

/// Hands message `seq` to the writer; the future of its answer.
async fn submit(journal: &JournalHandle, seq: u64, payload: &[u8]) -> Result<Answer, String> {
    let stopped = |e: AppendError| e.to_string();
    let command = match Command::from_bytes(payload) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(seq, error = %e, "stream message is not a command this version applies; skipping it");
            let rx = journal.apply_skip(seq).await.map_err(stopped)?;
            return Ok(answer(seq, rx, |()| Outcome::Skipped));
        }
    };
    Ok(match command {
        Command::Event(event) => match event.into_new_event() {
            Ok(event) => {
                let rx = journal.apply_event(event, seq).await.map_err(stopped)?;
                Box::pin(async move {
                    match rx.await {
                        // A refusal is an outcome, the same on every node.
                        Ok(Ok(o)) => (seq, Ok(Outcome::Event(Ok(o)))),
                        Ok(Err(e @ (AppendError::Conflict(_) | AppendError::DomainTaken(_)))) => {
                            (seq, Ok(Outcome::Event(Err(e))))
                        }
                        Ok(Err(e)) => (seq, Err(e)),
                        Err(_) => (seq, Err(writer_gone())),
                    }
                })
            }
            Err(e) => {
                tracing::error!(seq, error = %e, "stream event is invalid; skipping it");
                let rx = journal.apply_skip(seq).await.map_err(stopped)?;
                answer(seq, rx, |()| Outcome::Skipped)
            }
        },
        Command::Quorum => {
            let rx = journal.apply_skip(seq).await.map_err(stopped)?;
            answer(seq, rx, |()| Outcome::Skipped)
        }
        Command::Erase { member_id } => {
            let rx = journal
                .apply_erase(&member_id, seq)
                .await
                .map_err(stopped)?;
            answer(seq, rx, Outcome::Erased)
        }
        Command::Retain {
            max_age_ms,
            per_portal,
            budget,
            at_ms,
        } => {
            let policy = RetentionPolicy {
                max_age: max_age_ms.map(Duration::from_millis),
                per_portal,
                every: Duration::ZERO,
            };
            let rx = journal
                .apply_retain(policy, budget, at_ms, seq)
                .await
                .map_err(stopped)?;
            answer(seq, rx, Outcome::Retained)
        }
        Command::SavePull { state, merge } => {
            let rx = journal
                .apply_save_pull(state, merge, seq)
                .await
                .map_err(stopped)?;
            answer(seq, rx, |()| Outcome::PullSaved)
        }
        Command::Pulled {
            events,
            state,
            merge,
        } => {
            let events: Result<Vec<_>, _> =
                events.into_iter().map(WireEvent::into_new_event).collect();
            match events {
                Ok(events) => {
                    let rx = journal
                        .apply_pulled(events, state, merge, seq)
                        .await
                        .map_err(stopped)?;
                    answer(seq, rx, |(outcomes, state)| {
                        Outcome::Pulled(outcomes, Box::new(state))
                    })
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "pulled batch is invalid; skipping it");
                    let rx = journal.apply_skip(seq).await.map_err(stopped)?;
                    answer(seq, rx, |()| Outcome::Skipped)
                }
            }
        }
    })
}

/// The future of a writer answer, mapped to an [`Outcome`].
fn answer<T: Send + 'static>(
    seq: u64,
    rx: tokio::sync::oneshot::Receiver<Result<T, AppendError>>,
    f: impl FnOnce(T) -> Outcome + Send + 'static,
) -> Answer {
    Box::pin(async move {
        match rx.await {
            Ok(Ok(v)) => (seq, Ok(f(v))),
            Ok(Err(e)) => (seq, Err(e)),
            Err(_) => (seq, Err(writer_gone())),
        }
    })
}

fn writer_gone() -> AppendError {
    AppendError::Unavailable(crate::journal::UnavailableCause::WriterStopped)
}
