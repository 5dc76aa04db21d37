//! The single writer: group commit with atomic dedup.
//!
//! One OS thread owns every append. Request handlers send it a [`Job`] with a
//! reply channel; it takes whatever is queued (up to [`MAX_BATCH`]) and
//! handles it in steps, one file each:
//!
//! - `stage`: each event is checked against the store and against the batch
//!   itself for a duplicate (see `journal::dedup`), applies its registration
//!   change, and takes the next per-portal seq;
//! - `commit`: the batch is laid out (`layout`: tails, sealed blocks, the
//!   entity index's runs) and committed — one record in the redo log, one
//!   fdatasync, then the writes into sled and the memtable — and only then
//!   shown to readers and answered; jobs that arrive meanwhile form the
//!   next batch;
//! - `erase` and `retain`: the two jobs that delete;
//! - `rollup`: the activity rollups, changed in the same batches.
//!
//! Cluster mode's rule for stream positions: every job that comes from a
//! stream message names it (`from`); the writer applies them only in
//! stream order with no gap, and the batch that applies one records it
//! (`store::WriteBatch::put_stream_seq`) in the same atomic commit. A
//! failed commit answers its jobs 503 and the writer's position stays, so
//! the jobs after it are refused as out of order until the applier resumes
//! from the position: nothing is applied twice or skipped.
//!
//! Because only the writer reads and writes what dedup looks at, "check and
//! append" is one atomic step without locks, and concurrent requests share
//! one fsync.
//!
//! The writer's state and the batch it builds are defined here; each step
//! adds its methods in its own file and this one names nothing of theirs,
//! so the steps depend on it and never the other way round.

mod commit;
mod erase;
mod pulled;
mod retain;
mod rollup;
mod stage;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::append::{AppendError, AppendOutcome, NewEvent, UnavailableCause};
use super::dedup::key::DedupKey;
use super::dedup::TailCache;
use super::directory::PortalDirectory;
use super::entities::EntityIndex;
use super::pull_state::{PullMerge, PullState};
use super::record::{EventRecord, PortalIx, PortalRecord, SpanSummary};
use super::registration::Registration;
use super::retention::RetentionPolicy;
use super::rollup::RollupDelta;
use super::store::{Store, StoreError};

/// Most jobs committed together. Bounds the latency one batch adds and the
/// memory it holds.
pub const MAX_BATCH: usize = 1024;

/// Where the writer answers one append.
type AppendReply = oneshot::Sender<Result<AppendOutcome, AppendError>>;

/// Work for the writer.
pub(super) enum Job {
    /// Journal one event.
    Append {
        event: Box<NewEvent>,
        reply: AppendReply,
        /// Cluster mode: the stream message it came in (see the module doc).
        from: Option<u64>,
    },
    /// Cluster mode: a stream message that changes nothing (a command this
    /// version does not know): only the position moves past it.
    Skip {
        from: u64,
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
    /// Prove the journal takes a durable write.
    Probe {
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
    /// Erase one portal completely.
    Erase {
        member_id: String,
        reply: oneshot::Sender<Result<Option<u64>, AppendError>>,
        from: Option<u64>,
    },
    /// Delete what the retention policy no longer keeps (bounded).
    Retain {
        policy: RetentionPolicy,
        budget: usize,
        /// The time the age limit counts back from (Unix ms): the caller's
        /// clock, so that a replicated pass deletes the same on every node.
        at_ms: u64,
        reply: oneshot::Sender<Result<u64, AppendError>>,
        from: Option<u64>,
    },
    /// Store a portal's offline pull state (durably, when answered).
    SavePull {
        state: Box<PullState>,
        merge: PullMerge,
        reply: oneshot::Sender<Result<(), AppendError>>,
        from: Option<u64>,
    },
    /// Journal a batch of pulled offline records and, in the same atomic
    /// batch, the portal's pull state with its counters advanced by the
    /// outcomes.
    AppendPulled {
        events: Vec<NewEvent>,
        state: Box<PullState>,
        merge: PullMerge,
        reply: PulledReply,
        from: Option<u64>,
    },
    /// Commit what came before, then stop.
    Shutdown,
}

/// A pulled batch's answer, sent once the batch is durable: where, each
/// record's outcome, and the pull state as committed.
type PulledAnswer = (
    PulledReply,
    Vec<Result<AppendOutcome, AppendError>>,
    PullState,
);

/// Where the writer answers a pulled batch: each record's outcome, and
/// the pull state as committed.
pub(super) type PulledReply =
    oneshot::Sender<Result<(Vec<Result<AppendOutcome, AppendError>>, PullState), AppendError>>;

/// A new event waiting in the current batch.
struct Pending {
    portal: PortalIx,
    seq: u64,
    dedup: DedupKey,
    record: EventRecord,
    duplicates: u32,
}

/// Everything one batch changes, kept apart from the writer's committed
/// state until the batch is applied.
#[derive(Default)]
struct Batch {
    /// Working copies of the portals this batch changes.
    portals: HashMap<PortalIx, PortalRecord>,
    /// Portals created in this batch, by member id.
    new_members: HashMap<String, PortalIx>,
    new_events: Vec<Pending>,
    /// Dedup keys taken in this batch → index in `new_events`.
    taken: HashMap<(PortalIx, DedupKey), usize>,
    /// Summary spans this batch completes.
    sealed: Vec<(PortalIx, SpanSummary)>,
    /// Domains first claimed in this batch, by portal.
    domains: HashMap<String, PortalIx>,
    /// Registrations this batch changes.
    registrations: HashMap<String, Registration>,
    /// Stored events whose duplicate counter this batch bumps.
    rewritten: HashMap<(PortalIx, u64), Vec<u8>>,
    /// Each waiter with the answer it gets if the batch commits.
    replies: Vec<(AppendReply, Result<AppendOutcome, AppendError>)>,
    /// Probes (and skipped stream messages) answered once the batch is
    /// durable.
    probes: Vec<oneshot::Sender<Result<(), AppendError>>>,
    /// Cluster mode: the last stream message this batch applies, written
    /// with it.
    stream_seq: Option<u64>,
    /// Pull states this batch stores, by member id.
    pulls: HashMap<String, PullState>,
    /// Pull-state saves answered once the batch is durable.
    saved: Vec<oneshot::Sender<Result<(), AppendError>>>,
    /// Pulled batches answered once the batch is durable.
    pulled: Vec<PulledAnswer>,
    /// Duplicates of stored events, for the activity rollups (new events
    /// are counted from `new_events` at commit).
    rollups: RollupDelta,
}

/// The writer thread's state.
pub(super) struct Writer {
    store: Store,
    /// Portals as committed (applied) in the store.
    directory: PortalDirectory,
    /// What readers see: only portals whose state is known durable.
    published: Arc<RwLock<PortalDirectory>>,
    /// Bumped after every durable commit, waking live readers.
    commits: watch::Sender<u64>,
    /// A commit failed: the engine must be reopened before the next one.
    broken: bool,
    /// Per portal, its unsealed tail as deduplication needs it.
    tails: TailCache,
    /// The entity index's runs, shared with readers.
    entities: EntityIndex,
    /// Portals whose dead entity index runs the next commit deletes (see
    /// `layout::runs`).
    dead_runs: Vec<PortalIx>,
    /// Portals whose entity index runs have merges due, oldest first: each
    /// commit does some, and an idle writer commits them alone.
    pending_merges: Vec<PortalIx>,
    /// Seqs of runs one commit merges at most (see [`MERGE_BUDGET`]).
    merge_budget: u64,
    /// Whether a writer without jobs commits due merges alone.
    idle_merges: bool,
    /// Cluster mode: the last stream message durably applied (0: none).
    stream_seq: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// "Not stored, try later" for a storage failure.
fn unavailable(e: StoreError) -> AppendError {
    AppendError::Unavailable(UnavailableCause::Store(Arc::new(e)))
}

impl Writer {
    pub(super) fn new(
        store: Store,
        directory: PortalDirectory,
        published: Arc<RwLock<PortalDirectory>>,
        commits: watch::Sender<u64>,
        entities: EntityIndex,
    ) -> Self {
        Writer {
            store,
            directory,
            published,
            commits,
            broken: false,
            tails: TailCache::default(),
            entities,
            dead_runs: Vec::new(),
            pending_merges: Vec::new(),
            merge_budget: MERGE_BUDGET,
            idle_merges: true,
            stream_seq: 0,
        }
    }

    /// Sets the seqs of runs one commit merges at most, and whether an
    /// idle writer commits due merges alone: tests make the budget tiny, so
    /// that a few seals leave merges due, and see them done at shutdown.
    #[cfg(test)]
    pub(super) fn set_merging(&mut self, budget: u64, when_idle: bool) {
        self.merge_budget = budget;
        self.idle_merges = when_idle;
    }

    /// Sets the last applied stream message, as read from the store.
    pub(super) fn set_stream_seq(&mut self, seq: u64) {
        self.stream_seq = seq;
    }

    /// Checks that stream message `from` is the next one to apply, so that
    /// nothing is applied twice or skipped (see the module doc).
    fn next_in_stream(&self, batch: &Batch, from: u64) -> Result<(), AppendError> {
        let expected = batch.stream_seq.unwrap_or(self.stream_seq) + 1;
        if from == expected {
            Ok(())
        } else {
            Err(AppendError::Unavailable(UnavailableCause::StreamGap {
                expected,
                got: from,
            }))
        }
    }

    /// Runs until a [`Job::Shutdown`] or until every sender is gone.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        let mut stop = false;
        // Jobs in the last batch (see `SPIN_US`).
        let mut last_batch = 0;
        // Cleared when a commit of merges alone wrote nothing (or failed),
        // so that it is not retried before the next batch of jobs.
        let mut merge_when_idle = self.idle_merges;
        // Waiting for a job with a deadline needs a timer: a small runtime
        // of the writer's own.
        let timer = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::warn!(error = %e, "no timer for the journal writer; due merges wait for the next batches");
                None
            }
        };
        while !stop {
            let next = match &timer {
                Some(timer) if merge_when_idle && self.merges_due() => {
                    match recv_within(timer, &mut rx, IDLE_AFTER) {
                        Waited::Job(job) => Some(job),
                        Waited::Closed => None,
                        Waited::Quiet => {
                            merge_when_idle = self.merge_idle();
                            continue;
                        }
                    }
                }
                _ if last_batch <= SPIN_BATCH_MAX => spin_recv(&mut rx),
                _ => rx.blocking_recv(),
            };
            match next {
                Some(job) => jobs.push(job),
                None => break,
            }
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            crate::metrics::metrics()
                .batch_size
                .observe(jobs.len() as f64);
            last_batch = jobs.len();
            stop = self.process(&mut jobs);
            merge_when_idle = self.idle_merges;
        }
        // Refuse whatever is still queued, so no handler waits forever.
        rx.close();
        while let Ok(job) = rx.try_recv() {
            refuse(job);
        }
        self.finish_merges();
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "final journal flush failed");
        }
        tracing::info!("journal writer stopped");
    }

    /// Commits one batch of jobs; returns whether a shutdown was requested.
    fn process(&mut self, jobs: &mut Vec<Job>) -> bool {
        if self.broken {
            self.recover();
        }
        let mut batch = Batch::default();
        let mut stop = false;
        for job in jobs.drain(..) {
            match job {
                Job::Append { event, reply, from } => {
                    if let Some(from) = from {
                        if let Err(e) = self.next_in_stream(&batch, from) {
                            batch.replies.push((reply, Err(e)));
                            continue;
                        }
                        // A refused event is applied too: the refusal is
                        // the same on every node.
                        batch.stream_seq = Some(from);
                    }
                    let outcome = self.stage(&mut batch, *event);
                    batch.replies.push((reply, outcome));
                }
                Job::Skip { from, reply } => match self.next_in_stream(&batch, from) {
                    Ok(()) => {
                        batch.stream_seq = Some(from);
                        batch.probes.push(reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Job::Probe { reply } => batch.probes.push(reply),
                Job::Erase {
                    member_id,
                    reply,
                    from,
                } => {
                    // Commit what came before, so the erase sees it.
                    self.commit(std::mem::take(&mut batch));
                    let result = self
                        .next_stream_step(from)
                        .and_then(|()| self.erase(&member_id, from));
                    let _ = reply.send(result);
                }
                Job::Retain {
                    policy,
                    budget,
                    at_ms,
                    reply,
                    from,
                } => {
                    self.commit(std::mem::take(&mut batch));
                    let result = self
                        .next_stream_step(from)
                        .and_then(|()| self.retain(policy, budget, at_ms, from));
                    let _ = reply.send(result);
                }
                Job::SavePull {
                    state,
                    merge,
                    reply,
                    from,
                } => match self.merge_pull(&mut batch, from, &merge, *state) {
                    Ok(state) => {
                        batch.pulls.insert(state.member_id.clone(), state);
                        batch.saved.push(reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Job::AppendPulled {
                    events,
                    state,
                    merge,
                    reply,
                    from,
                } => match self.merge_pull(&mut batch, from, &merge, *state) {
                    Ok(state) => self.stage_pulled(&mut batch, events, state, reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Job::Shutdown => stop = true,
            }
        }
        self.commit(batch);
        if !stop && !self.broken && self.store.snapshot_due() {
            self.refresh_snapshot();
        }
        stop
    }

    /// Checks a single-step job's stream message (see
    /// [`Writer::next_in_stream`]); embedded jobs (`None`) always pass.
    fn next_stream_step(&self, from: Option<u64>) -> Result<(), AppendError> {
        match from {
            Some(from) => self.next_in_stream(&Batch::default(), from),
            None => Ok(()),
        }
    }

    /// Reopens the engine so that sled writes a fresh page-table snapshot
    /// (see [`Store::snapshot_due`]); readers and appends wait meanwhile.
    /// The directory and the tails stay valid: every logged batch is
    /// applied, and the reopened engine holds exactly what the old one did.
    fn refresh_snapshot(&mut self) {
        let started = Instant::now();
        match self.store.refresh_snapshot() {
            Ok(true) => tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                "journal reopened so that sled writes a fresh snapshot"
            ),
            // A backup is running: tried again after the next batch.
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not reopen the journal for a fresh snapshot");
                // Closed and not reopened: recover before the next commit.
                self.broken = !self.store.is_open();
            }
        }
    }
}

/// Seqs of entity index runs one commit merges at most (beyond its first
/// merge), the rest waiting for the next commits. Far above what a steady
/// stream needs (a posting is merged once per level, about 4 times at 10M
/// events), it bounds the batches in which many portals seal a block at
/// once: their whole merge cascades held in one batch made the writer's
/// peak memory (docs/performance.md).
const MERGE_BUDGET: u64 = 1 << 16;

/// How long the writer polls its queue after a batch of at most
/// [`SPIN_BATCH_MAX`] jobs before it goes to sleep: a lone sender's next
/// event usually comes this soon, and waking a sleeping writer costs more
/// latency than polling costs CPU (docs/performance.md, `SPIN_US`).
const SPIN_US: u64 = 200;

/// Polling only follows batches this small: under load the queue is rarely
/// empty, and a spinning writer would take a core from the HTTP workers.
const SPIN_BATCH_MAX: usize = 1;

/// Waits for the next job: polls for [`SPIN_US`] before sleeping.
fn spin_recv(rx: &mut mpsc::Receiver<Job>) -> Option<Job> {
    let until = Instant::now() + Duration::from_micros(SPIN_US);
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if Instant::now() >= until {
            return rx.blocking_recv();
        }
        std::hint::spin_loop();
    }
}

/// How long the writer must have had no job before it commits due merges
/// alone. Longer than the gap between two rounds of a closed-loop burst
/// (answers out, the next requests in): a busy writer leaves the merges to
/// its batches instead of putting a commit, and its fdatasync, between
/// them.
const IDLE_AFTER: Duration = Duration::from_millis(10);

/// What waiting for a job with a deadline gave.
enum Waited {
    Job(Job),
    /// Every sender is gone.
    Closed,
    /// No job within the deadline.
    Quiet,
}

/// Waits up to `within` for the next job.
fn recv_within(
    timer: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Job>,
    within: Duration,
) -> Waited {
    // The timeout is made inside the runtime: its timer must exist then.
    match timer.block_on(async { tokio::time::timeout(within, rx.recv()).await }) {
        Ok(Some(job)) => Waited::Job(job),
        Ok(None) => Waited::Closed,
        Err(_) => Waited::Quiet,
    }
}

/// Answers a job the stopping writer will not run.
fn refuse(job: Job) {
    let err = || AppendError::Unavailable(UnavailableCause::ShuttingDown);
    match job {
        Job::Append { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::Probe { reply } | Job::Skip { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::Erase { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::Retain { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::SavePull { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::AppendPulled { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::Shutdown => {}
    }
}

#[cfg(test)]
mod merge_tests;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_recv_takes_a_job_that_comes_after_the_poll_and_ends_with_the_senders() {
        let (tx, mut rx) = mpsc::channel::<Job>(4);
        let sender = std::thread::spawn(move || {
            // Well past the poll: the writer must be asleep and still wake.
            std::thread::sleep(std::time::Duration::from_micros(SPIN_US * 20));
            tx.blocking_send(Job::Shutdown).map_err(|_| "send").unwrap();
            // `tx` dropped here.
        });
        assert!(matches!(spin_recv(&mut rx), Some(Job::Shutdown)));
        sender.join().unwrap();
        assert!(spin_recv(&mut rx).is_none(), "no senders left: None");
    }

    #[test]
    fn spin_recv_takes_a_queued_job_at_once() {
        let (tx, mut rx) = mpsc::channel::<Job>(4);
        tx.try_send(Job::Shutdown).map_err(|_| "send").unwrap();
        assert!(matches!(spin_recv(&mut rx), Some(Job::Shutdown)));
    }
}
