//! The single writer: group commit with atomic dedup.
//!
//! One OS thread owns every append. Request handlers send it a [`Job`] with a
//! reply channel; it takes whatever is queued (up to [`MAX_BATCH`]), checks each
//! event against the store and against the batch itself for a duplicate,
//! assigns per-portal seqs, lays the events out (`pack`) and commits the whole
//! batch: one record in the redo log, one fdatasync, then the writes into
//! sled (`Store::commit_logged`). Only then does it show the batch to readers
//! and answer its waiters; jobs that arrive meanwhile form the next batch.
//! Because only the writer reads and writes what dedup looks at, "check and
//! append" is one atomic step without locks, and concurrent requests share
//! one fsync.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::layout;
use super::record::{
    bump_duplicates, dedup_key, store_data, BlockSummary, DedupKey, EventRecord, Interned,
    PortalIx, PortalRecord, Registration, Source, Status,
};
use super::store::codec;
use super::store::{CommitError, KeyKind, Store, StoreError, WriteBatch};
use super::{AppendError, AppendOutcome, Directory, Lifecycle, NewEvent};

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
    },
    /// Prove the journal takes a durable write.
    Probe {
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
    /// Erase one portal completely.
    Erase {
        member_id: String,
        reply: oneshot::Sender<Result<Option<u64>, AppendError>>,
    },
    /// Delete what the retention policy no longer keeps (bounded).
    Retain {
        policy: crate::settings::Retention,
        budget: usize,
        reply: oneshot::Sender<Result<u64, AppendError>>,
    },
    /// Commit what came before, then stop.
    Shutdown,
}

/// Deletes per commit while erasing a portal.
const ERASE_CHUNK: usize = 20_000;

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
    /// Summary blocks this batch completes.
    sealed: Vec<(PortalIx, BlockSummary)>,
    /// Domains first claimed in this batch, by portal.
    domains: HashMap<String, PortalIx>,
    /// Registrations this batch changes.
    registrations: HashMap<String, Registration>,
    /// Stored events whose duplicate counter this batch bumps.
    rewritten: HashMap<(PortalIx, u64), Vec<u8>>,
    /// Each waiter with the answer it gets if the batch commits.
    replies: Vec<(AppendReply, Result<AppendOutcome, AppendError>)>,
    probes: Vec<oneshot::Sender<Result<(), AppendError>>>,
}

/// The writer thread's state.
pub(super) struct Writer {
    store: Store,
    /// Portals as committed (applied) in the store.
    directory: Directory,
    /// What readers see: only portals whose state is known durable.
    published: Arc<RwLock<Directory>>,
    /// Bumped after every durable commit, waking live readers.
    commits: watch::Sender<u64>,
    /// A commit failed: the engine must be reopened before the next one.
    broken: bool,
    /// Per portal, its unsealed tail as deduplication needs it. Loaded from
    /// the store on first use, kept in step by every durable commit, and
    /// dropped whenever the tail may have changed otherwise (a failed
    /// commit, erase, retention, reopen). Scanning the tail items for every
    /// entity event took a third of the writer's time.
    tails: HashMap<PortalIx, Vec<TailEntry>>,
}

/// What deduplication needs to know about one event of a portal's
/// unsealed tail; a candidate is confirmed by reading the event.
#[derive(Debug, Clone, Copy)]
struct TailEntry {
    seq: u64,
    ts: u64,
    tag: u16,
    /// Hash of the entity id (0 when none).
    entity: u64,
}

impl TailEntry {
    fn of(seq: u64, rec: &EventRecord, portal: &PortalRecord) -> TailEntry {
        TailEntry {
            seq,
            ts: rec.ts,
            tag: codec::name_tag(rec.event_name(portal)),
            entity: rec.entity_id.as_deref().map_or(0, entity_hash),
        }
    }
}

/// A hash of an entity id for [`TailEntry`] (in memory only, so the
/// process-stable std hasher is fine).
fn entity_hash(entity: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    entity.hash(&mut h);
    h.finish()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Writer {
    pub(super) fn new(
        store: Store,
        directory: Directory,
        published: Arc<RwLock<Directory>>,
        commits: watch::Sender<u64>,
    ) -> Self {
        Writer {
            store,
            directory,
            published,
            commits,
            broken: false,
            tails: HashMap::new(),
        }
    }

    /// Commits through the store, remembering a failure: sled keeps the
    /// first I/O error for the life of the database object, so after one the
    /// engine is reopened (see [`Writer::recover`]) before the next commit.
    fn commit_store(&mut self, writes: WriteBatch) -> Result<(), CommitError> {
        let result = self.store.commit(writes);
        // A refusal for lack of space touched nothing: no reopen needed.
        if result.is_err()
            && !matches!(
                result,
                Err(CommitError::NotApplied(StoreError::DiskFull { .. }))
            )
        {
            self.broken = true;
        }
        result
    }

    /// After a failed commit (a full disk, say): reopen the engine and
    /// rebuild the directory from what it recovered — a batch that failed
    /// after being applied may or may not have reached the disk, so the
    /// in-memory counters cannot be trusted. Until this succeeds every job
    /// is answered 503; it is retried with every batch.
    fn recover(&mut self) {
        if let Err(e) = self.store.reopen() {
            tracing::warn!(error = %e, "journal still unavailable; will retry");
            return;
        }
        let reader = self.store.reader();
        let loaded = reader.portals().and_then(|portals| {
            let regs = reader.registrations()?;
            Directory::from_records(portals, regs)
        });
        match loaded {
            Ok(dir) => {
                self.directory = dir.clone();
                *self.published.write().unwrap_or_else(|p| p.into_inner()) = dir;
                self.tails.clear();
                self.broken = false;
                self.commits.send_modify(|n| *n = n.wrapping_add(1));
                tracing::info!("journal reopened after a storage error; accepting events again");
            }
            Err(e) => tracing::error!(error = %e, "journal reopened but unreadable; will retry"),
        }
    }

    /// Runs until a [`Job::Shutdown`] or until every sender is gone.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        let mut stop = false;
        // Jobs in the last batch (see `SPIN_US`).
        let mut last_batch = 0;
        while !stop {
            let next = if last_batch <= SPIN_BATCH_MAX {
                spin_recv(&mut rx)
            } else {
                rx.blocking_recv()
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
        }
        // Refuse whatever is still queued, so no handler waits forever.
        rx.close();
        while let Ok(job) = rx.try_recv() {
            refuse(job);
        }
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
                Job::Append { event, reply } => {
                    let outcome = self.stage(&mut batch, *event);
                    batch.replies.push((reply, outcome));
                }
                Job::Probe { reply } => batch.probes.push(reply),
                Job::Erase { member_id, reply } => {
                    // Commit what came before, so the erase sees it.
                    self.commit(std::mem::take(&mut batch));
                    let _ = reply.send(self.erase(&member_id));
                }
                Job::Retain {
                    policy,
                    budget,
                    reply,
                } => {
                    self.commit(std::mem::take(&mut batch));
                    let _ = reply.send(self.retain(policy, budget));
                }
                Job::Shutdown => stop = true,
            }
        }
        self.commit(batch);
        if !stop && !self.broken && self.store.snapshot_due() {
            self.refresh_snapshot();
        }
        stop
    }

    /// Reopens the engine so that sled writes a fresh page-table snapshot
    /// (see [`Store::snapshot_due`]); readers and appends wait meanwhile.
    /// The directory and the tails stay valid: every logged batch is
    /// applied, and the reopened engine holds exactly what the old one did.
    fn refresh_snapshot(&mut self) {
        let started = std::time::Instant::now();
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

    /// The portal record `member` has in this batch, creating it if new.
    /// The number of `member`'s portal, in the store or created in `batch`.
    fn known_portal(&self, batch: &Batch, member: &str) -> Option<PortalIx> {
        self.directory
            .by_member
            .get(member)
            .or_else(|| batch.new_members.get(member))
            .copied()
    }

    fn portal_for<'b>(&self, batch: &'b mut Batch, event: &NewEvent) -> &'b mut PortalRecord {
        let member = event.member_id.as_str();
        let ix = match self.known_portal(batch, member) {
            Some(ix) => ix,
            None => {
                // Cannot overflow in practice: four billion portals.
                let ix = u32::try_from(self.directory.portals.len() + batch.new_members.len())
                    .unwrap_or(u32::MAX);
                batch.new_members.insert(member.to_owned(), ix);
                batch
                    .portals
                    .insert(ix, PortalRecord::new(ix, &event.member_id));
                ix
            }
        };
        batch.portals.entry(ix).or_insert_with(|| {
            // Present: `ix` came from the directory (new ones were inserted above).
            self.directory.portals[ix as usize].clone()
        })
    }

    /// Applies an install or uninstall to the portal's registration. This is
    /// the authoritative takeover check: only this thread changes
    /// registrations, so two racing installs cannot both win.
    fn register(&self, batch: &mut Batch, event: &NewEvent) -> Result<(), AppendError> {
        let member = event.member_id.as_str();
        let current = batch
            .registrations
            .get(member)
            .or_else(|| self.directory.registration(member));
        let next = match event.lifecycle {
            Lifecycle::None => return Ok(()),
            Lifecycle::Install { token, configured } => {
                let token = (!configured).then_some(token.0);
                if let Some(cur) = current {
                    let other_token = cur.token_sha256.is_some() && cur.token_sha256 != token;
                    if cur.status == Status::Active && other_token && !configured {
                        return Err(AppendError::Conflict(member.to_owned()));
                    }
                    if cur.status == Status::Active && !other_token {
                        // A repeated install: nothing changes.
                        return Ok(());
                    }
                }
                Registration {
                    member_id: member.to_owned(),
                    token_sha256: token,
                    domain: event.profile.domain.clone(),
                    source: Source::Install,
                    status: Status::Active,
                    updated_ms: now_ms(),
                }
            }
            Lifecycle::Uninstall => match current {
                Some(cur) if cur.status == Status::Uninstalled => return Ok(()),
                Some(cur) => Registration {
                    status: Status::Uninstalled,
                    updated_ms: now_ms(),
                    ..cur.clone()
                },
                // A configured portal: record only the status.
                None => Registration {
                    member_id: member.to_owned(),
                    token_sha256: None,
                    domain: event.profile.domain.clone(),
                    source: Source::Operator,
                    status: Status::Uninstalled,
                    updated_ms: now_ms(),
                },
            },
        };
        batch.registrations.insert(member.to_owned(), next);
        Ok(())
    }

    /// Decides what one event is: new (staged) or a duplicate (counted).
    fn stage(&mut self, batch: &mut Batch, event: NewEvent) -> Result<AppendOutcome, AppendError> {
        // A domain names one portal: a trusted portal must not make another
        // portal's domain point at its own events. Checked before anything
        // is staged, so a refused event changes nothing.
        let member = event.member_id.as_str();
        let this = self.known_portal(batch, member);
        let domain = &event.profile.domain;
        let owner = self
            .directory
            .domain_owner(domain)
            .or_else(|| batch.domains.get(domain).copied());
        if owner.is_some_and(|owner| Some(owner) != this) {
            return Err(AppendError::DomainTaken(domain.clone()));
        }
        self.register(batch, &event)?;
        let dedup = dedup_key(
            &event.event,
            event.entity_id.as_ref(),
            event.data.as_ref(),
            event.ts,
        );
        let portal = self.portal_for(batch, &event).ix;
        batch
            .domains
            .entry(event.profile.domain.clone())
            .or_insert(portal);

        // A duplicate of an event earlier in this same batch.
        if let Some(&i) = batch.taken.get(&(portal, dedup)) {
            let pending = &mut batch.new_events[i];
            pending.duplicates = pending.duplicates.saturating_add(1);
            let outcome = AppendOutcome::Duplicate {
                id: pending.record.uuid(),
                seq: pending.seq,
            };
            if let Some(rec) = batch.portals.get_mut(&portal) {
                rec.duplicates += 1;
            }
            return Ok(outcome);
        }

        // A duplicate of a stored event. Only portals already in the store
        // can have stored events.
        if self
            .directory
            .by_member
            .contains_key(event.member_id.as_str())
        {
            if let Some(seq) = self.stored_duplicate(portal, &event, &dedup)? {
                match self.bump_stored(batch, portal, seq) {
                    Ok(Some(id)) => {
                        if let Some(rec) = batch.portals.get_mut(&portal) {
                            rec.duplicates += 1;
                        }
                        return Ok(AppendOutcome::Duplicate { id, seq });
                    }
                    Ok(None) => {
                        // A dedup key without its event cannot be produced by
                        // our atomic batches; store the event rather than
                        // refuse it, and say so loudly.
                        tracing::error!(
                            portal,
                            seq,
                            "dedup key points to a missing event; storing anew"
                        );
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            }
        }

        // New: take the next seq and stage it.
        let now = Uuid::now_v7();
        let rec = batch
            .portals
            .get_mut(&portal)
            .ok_or_else(|| AppendError::Unavailable("portal record vanished".into()))?;
        let seq = rec.next_seq;
        rec.next_seq += 1;
        rec.events += 1;
        let ts = event.ts.secs();
        if let Some(sealed) = rec.summarise(seq, ts) {
            batch.sealed.push((portal, sealed));
        }
        let name = event.event.as_str();
        let record = EventRecord {
            id: now.into_bytes(),
            ts,
            event: match rec.name_index(name) {
                Some(i) => Interned::At(i),
                None => Interned::Inline(name.to_owned()),
            },
            data: store_data(
                event.data.as_ref(),
                event.entity_id.as_ref().map(|e| e.as_str()),
            ),
            entity_id: event.entity_id.map(|e| e.as_str().to_owned()),
            event_handler_id: event.event_handler_id,
            profile: match rec.profile_index(&event.profile) {
                Some(i) => Interned::At(i),
                None => Interned::Inline(event.profile),
            },
            auth: if event.auth_rest.is_empty() {
                Vec::new()
            } else {
                // Cannot fail in practice: a JSON object always serialises.
                serde_json::to_vec(&event.auth_rest).unwrap_or_default()
            },
        };
        let received = record.received_ms();
        rec.first_received_ms.get_or_insert(received);
        rec.last_received_ms = Some(received);
        batch.taken.insert((portal, dedup), batch.new_events.len());
        batch.new_events.push(Pending {
            portal,
            seq,
            dedup,
            record,
            duplicates: 0,
        });
        Ok(AppendOutcome::Stored { id: now, seq })
    }

    /// The seq of the stored event `event` duplicates, if any. The dedup
    /// key is (event, entity, ts): an entity event is looked for among its
    /// entity's index entries and the unsealed tail (see `pack`), an event
    /// without an entity id by its dedup key.
    fn stored_duplicate(
        &mut self,
        portal: PortalIx,
        event: &NewEvent,
        dedup: &DedupKey,
    ) -> Result<Option<u64>, AppendError> {
        let Some(entity) = event.entity_id.as_ref().map(|e| e.as_str()) else {
            return self
                .store
                .reader()
                .dedup(portal, dedup)
                .map_err(unavailable);
        };
        // Stored events only name portal-table entries already committed.
        let Some(rec) = self.directory.portals.get(portal as usize) else {
            return Ok(None);
        };
        let (name, ts, first) = (event.event.as_str(), event.ts.secs(), rec.first_seq());
        let tag = codec::name_tag(name);
        let same = |bytes: &[u8]| -> Result<bool, AppendError> {
            let (stored, _) = EventRecord::from_bytes(bytes)
                .map_err(|e| unavailable(StoreError::Corrupt(e.to_string())))?;
            Ok(stored.ts == ts
                && stored.entity_id.as_deref() == Some(entity)
                && stored.event_name(rec) == name)
        };
        if !self.tails.contains_key(&portal) {
            let mut entries = Vec::new();
            for (seq, bytes) in self.store.reader().tail(portal).map_err(unavailable)? {
                let (stored, _) = EventRecord::from_bytes(&bytes)
                    .map_err(|e| unavailable(StoreError::Corrupt(e.to_string())))?;
                entries.push(TailEntry::of(seq, &stored, rec));
            }
            self.tails.insert(portal, entries);
        }
        let reader = self.store.reader();
        let hash = entity_hash(entity);
        let candidates = self
            .tails
            .get(&portal)
            .into_iter()
            .flatten()
            .filter(|e| e.seq >= first && e.entity == hash && e.ts == ts && e.tag == tag);
        for e in candidates {
            // A candidate sealed meanwhile is found in the index below.
            if let Some(bytes) = reader.tail_event(portal, e.seq).map_err(unavailable)? {
                if same(&bytes)? {
                    return Ok(Some(e.seq));
                }
            }
        }
        for chunk in reader.chunks(portal, entity, u64::MAX).rev() {
            let (_, entries) = chunk.map_err(unavailable)?;
            for e in entries.iter().rev() {
                if e.seq >= first && e.ts == ts && e.tag == tag {
                    if let Some(bytes) = reader.event(portal, e.seq).map_err(unavailable)? {
                        if same(&bytes)? {
                            return Ok(Some(e.seq));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Bumps the duplicate counter of stored event `seq`; returns its id, or
    /// `None` if it does not exist.
    fn bump_stored(
        &self,
        batch: &mut Batch,
        portal: PortalIx,
        seq: u64,
    ) -> Result<Option<Uuid>, StoreError> {
        let bytes = match batch.rewritten.remove(&(portal, seq)) {
            Some(b) => b,
            None => match self.store.reader().event(portal, seq)? {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        let (record, _) =
            EventRecord::from_bytes(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut bytes = bytes;
        bump_duplicates(&mut bytes);
        batch.rewritten.insert((portal, seq), bytes);
        Ok(Some(record.uuid()))
    }

    /// Puts the batch's new and rewritten events into `writes`, laid out
    /// as `pack` describes.
    fn lay_out(&self, batch: &mut Batch, writes: &mut WriteBatch) -> Result<(), StoreError> {
        let committed_last = |portal: PortalIx| {
            self.directory
                .portals
                .get(portal as usize)
                .map_or(0, PortalRecord::last_seq)
        };
        let mut fresh: HashMap<PortalIx, BTreeMap<u64, Vec<u8>>> = HashMap::new();
        for p in &batch.new_events {
            fresh
                .entry(p.portal)
                .or_default()
                .insert(p.seq, p.record.to_bytes(p.duplicates));
            if p.record.entity_id.is_none() {
                writes.put_dedup(p.portal, &p.dedup, p.seq);
            }
        }
        // Duplicate counters: a tail event is rewritten (or sealed) with the
        // rest; one in a sealed block rewrites its block.
        let mut blocks: BTreeMap<(PortalIx, u64), Vec<Vec<u8>>> = BTreeMap::new();
        for ((portal, seq), bytes) in batch.rewritten.drain() {
            if seq > codec::sealed_upto(committed_last(portal)) {
                fresh.entry(portal).or_default().insert(seq, bytes);
                continue;
            }
            let block = codec::event_block(seq);
            let entries = match blocks.entry((portal, block)) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let raw = self.store.reader().block(portal, block)?.ok_or_else(|| {
                        StoreError::Corrupt(format!("block {portal}/{block} vanished"))
                    })?;
                    v.insert(
                        codec::decode_block(&raw)?
                            .into_iter()
                            .map(<[u8]>::to_vec)
                            .collect(),
                    )
                }
            };
            // In range: decode_block checked the block has BLOCK_SPAN entries.
            entries[((seq - 1) % codec::BLOCK_SPAN) as usize] = bytes;
        }
        for ((portal, block), entries) in blocks {
            let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
            writes.put_block(portal, block, codec::encode_block(&refs));
        }
        for (portal, events) in fresh {
            let rec = batch
                .portals
                .get(&portal)
                .ok_or_else(|| StoreError::Corrupt(format!("portal {portal} not in batch")))?;
            layout::lay_out(
                writes,
                self.store.reader(),
                rec,
                committed_last(portal),
                events,
            )?;
        }
        Ok(())
    }

    /// Commits the batch, then publishes it and answers every waiter; a
    /// batch that cannot be committed is answered 503.
    fn commit(&mut self, mut batch: Batch) {
        let mut writes = WriteBatch::default();
        let laid_out = self.lay_out(&mut batch, &mut writes);
        for (portal, summary) in &batch.sealed {
            writes.put_summary(*portal, summary);
        }
        // The open summary block lives in the portal record (queries read it
        // from there); its `S` key is written once, when the block is full.
        for rec in batch.portals.values() {
            match self.directory.portals.get(rec.ix as usize) {
                Some(old) if !rec.tables_differ(old) => writes.put_portal_counters(rec),
                _ => writes.put_portal(rec),
            }
        }
        for reg in batch.registrations.values() {
            writes.put_registration(reg);
        }
        if !batch.probes.is_empty() {
            writes.put_health(now_ms());
        }
        let registrations: Vec<Registration> = batch.registrations.into_values().collect();
        // In number order: new portals must be appended to the directory in
        // the order their numbers were given.
        let mut touched: Vec<PortalRecord> = batch.portals.into_values().collect();
        touched.sort_by_key(|rec| rec.ix);

        if laid_out.is_ok() && writes.is_empty() {
            // Only refused jobs (or nothing): no write to make durable.
            for (reply, outcome) in batch.replies {
                let _ = reply.send(outcome);
            }
            return;
        }
        let committed = laid_out
            .map_err(CommitError::NotApplied)
            .and_then(|()| self.store.commit_logged(writes));
        if let Err(e) = committed {
            tracing::error!(error = %e, "journal batch not committed; answering 503");
            // A refusal for lack of space touched nothing; anything else
            // may have left sled's in-memory state half-changed, or the
            // batch may or may not be durable: reopen before the next.
            if !matches!(e, CommitError::NotApplied(StoreError::DiskFull { .. })) {
                self.broken = true;
            }
            let e = match e {
                CommitError::NotApplied(e) | CommitError::NotDurable(e) => e.to_string(),
            };
            for (reply, outcome) in batch.replies {
                let _ = reply.send(outcome.and(Err(AppendError::Unavailable(e.clone()))));
            }
            for probe in batch.probes {
                let _ = probe.send(Err(AppendError::Unavailable(e.clone())));
            }
            return;
        }
        // Durable: the writer's view moves on (dedup and seqs of the next
        // batch build on it), then readers see it, then waiters hear.
        for p in &batch.new_events {
            if let (Some(tail), Ok(at)) = (
                self.tails.get_mut(&p.portal),
                touched.binary_search_by_key(&p.portal, |r| r.ix),
            ) {
                tail.push(TailEntry::of(p.seq, &p.record, &touched[at]));
            }
        }
        let ixs: Vec<PortalIx> = touched.iter().map(|r| r.ix).collect();
        for rec in touched {
            if let Some(tail) = self.tails.get_mut(&rec.ix) {
                let sealed = codec::sealed_upto(rec.last_seq());
                tail.retain(|e| e.seq > sealed);
            }
            self.directory.upsert(rec);
        }
        for reg in &registrations {
            self.directory.set_registration(reg.clone());
        }
        self.publish(&ixs, registrations);
        for (reply, outcome) in batch.replies {
            // The handler may have gone (client disconnected).
            let _ = reply.send(outcome);
        }
        for probe in batch.probes {
            let _ = probe.send(Ok(()));
        }
    }

    /// Erases a portal: first a tombstone record (readers stop seeing the
    /// portal at once), then every other key of it in bounded chunks. A crash
    /// in between leaves a tombstone with leftovers, which [`Writer::new`]
    /// finishes erasing.
    fn erase(&mut self, member: &str) -> Result<Option<u64>, AppendError> {
        let Some(rec) = self.directory.by_member(member).cloned() else {
            return Ok(None);
        };
        let erased = rec.events;
        self.tails.remove(&rec.ix);
        let tombstone = PortalRecord {
            member_id: String::new(),
            ..PortalRecord::new(rec.ix, &event_member_placeholder())
        };
        let mut writes = WriteBatch::default();
        writes.put_portal(&tombstone);
        writes.remove_registration(member);
        self.commit_store(writes)
            .map_err(|e| unavailable_commit(&e))?;
        self.directory.upsert(tombstone.clone());
        self.directory.remove_registration(member);
        {
            let mut shared = self.published.write().unwrap_or_else(|p| p.into_inner());
            shared.upsert(tombstone);
            shared.remove_registration(member);
        }
        self.purge(rec.ix)
            .map_err(|e| AppendError::Unavailable(e.to_string()))?;
        tracing::info!(member_id = member, events = erased, "portal erased");
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Some(erased))
    }

    /// Deletes every key of portal `ix` but its (tombstone) record.
    fn purge(&mut self, ix: PortalIx) -> Result<(), StoreError> {
        loop {
            let mut writes = WriteBatch::default();
            for item in self.store.reader().portal_keys(ix) {
                let (key, kind, _) = item?;
                if !matches!(kind, KeyKind::Portal(_)) {
                    writes.delete(&key);
                }
                if writes.len() >= ERASE_CHUNK {
                    break;
                }
            }
            if writes.is_empty() {
                return Ok(());
            }
            self.commit_store(writes).map_err(|e| match e {
                CommitError::NotApplied(e) | CommitError::NotDurable(e) => e,
            })?;
        }
    }

    /// Finishes erasures a crash interrupted.
    pub(super) fn finish_erasures(&mut self) -> Result<(), StoreError> {
        let tombstones: Vec<PortalIx> = self
            .directory
            .portals()
            .iter()
            .filter(|p| p.member_id.is_empty())
            .map(|p| p.ix)
            .collect();
        for ix in tombstones {
            self.purge(ix)?;
        }
        Ok(())
    }

    /// One bounded retention step: deletes at most `budget` events, oldest
    /// first, portal by portal, in one atomic commit. The caller repeats
    /// while it returns `budget`, other jobs running in between, so ingest
    /// never waits for more than one step.
    fn retain(
        &mut self,
        policy: crate::settings::Retention,
        budget: usize,
    ) -> Result<u64, AppendError> {
        // Retention may delete tail events: reload tails when next needed.
        self.tails.clear();
        let cutoff_ms = policy
            .max_age
            .map(|age| now_ms().saturating_sub(age.as_millis() as u64));
        let mut writes = WriteBatch::default();
        let mut touched = Vec::new();
        let mut deleted = 0u64;
        let portals: Vec<PortalRecord> = self
            .directory
            .portals()
            .iter()
            .filter(|p| !p.member_id.is_empty() && p.events > 0)
            .cloned()
            .collect();
        for mut rec in portals {
            if deleted as usize >= budget {
                break;
            }
            let mut excess = policy
                .per_portal
                .map_or(0, |keep| rec.events.saturating_sub(keep));
            let (first, last) = (rec.first_seq(), rec.last_seq());
            let mut first_kept = rec.next_seq;
            let mut entities = HashSet::new();
            let reader = self.store.reader();
            for item in reader.events(rec.ix, first, last) {
                let (seq, bytes) = item.map_err(unavailable)?;
                let (event, dups) = EventRecord::from_bytes(&bytes)
                    .map_err(|e| unavailable(StoreError::Corrupt(e.to_string())))?;
                let too_old = cutoff_ms.is_some_and(|c| event.received_ms() < c);
                if (excess == 0 && !too_old) || deleted as usize >= budget {
                    first_kept = seq;
                    break;
                }
                match &event.entity_id {
                    Some(entity) => {
                        entities.insert(entity.clone());
                    }
                    None => {
                        if let Some(key) = super::record::dedup_key_of_record(&event, &rec) {
                            writes.delete_dedup(rec.ix, &key);
                        }
                    }
                }
                rec.events -= 1;
                rec.duplicates = rec.duplicates.saturating_sub(u64::from(dups));
                excess = excess.saturating_sub(1);
                deleted += 1;
            }
            if first_kept == first {
                continue;
            }
            // Whole blocks below the first kept event go; a block still
            // holding kept events stays (readers start at `first_seq`).
            let sealed = codec::sealed_upto(last);
            let mut block = codec::event_block(first);
            while codec::event_block_first(block + 1) <= first_kept
                && codec::event_block_first(block + 1) - 1 <= sealed
            {
                writes.delete_block(rec.ix, block);
                block += 1;
            }
            for seq in first.max(sealed + 1)..first_kept {
                writes.delete_tail(rec.ix, seq);
            }
            for entity in &entities {
                for chunk in reader.chunks(rec.ix, entity, first_kept) {
                    let (chunk_first, entries) = chunk.map_err(unavailable)?;
                    if entries.last().is_some_and(|e| e.seq < first_kept) {
                        writes.delete_chunk(rec.ix, entity, chunk_first);
                    }
                }
            }
            let first_block = super::record::block_of(first_kept);
            for summary in reader.summaries_desc(rec.ix, first_block.saturating_sub(1)) {
                let summary = summary.map_err(unavailable)?;
                if summary.block < first_block {
                    writes.delete_summary(rec.ix, summary.block);
                }
            }
            writes.put_portal(&rec);
            touched.push(rec);
        }
        if writes.is_empty() {
            return Ok(0);
        }
        self.commit_store(writes)
            .map_err(|e| unavailable_commit(&e))?;
        let ixs: Vec<PortalIx> = touched.iter().map(|r| r.ix).collect();
        for rec in touched {
            self.directory.upsert(rec);
        }
        self.publish(&ixs, Vec::new());
        tracing::info!(events = deleted, "retention deleted old events");
        Ok(deleted)
    }

    /// Shows durable state to readers and wakes live readers.
    fn publish(&self, ixs: &[PortalIx], registrations: Vec<Registration>) {
        if ixs.is_empty() && registrations.is_empty() {
            return;
        }
        {
            // A poisoned lock means a reader panicked while holding it; the
            // data (plain records) is still consistent, so keep going.
            let mut shared = self.published.write().unwrap_or_else(|p| p.into_inner());
            for &ix in ixs {
                if let Some(rec) = self.directory.portals.get(ix as usize) {
                    shared.upsert(rec.clone());
                }
            }
            for reg in registrations {
                shared.set_registration(reg);
            }
        }
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// How long the writer polls its queue after a batch of at most
/// [`SPIN_BATCH_MAX`] jobs before it goes to sleep.
///
/// A lone sender (one connection, or a quiet portal) sends its next event
/// about 0.1–0.2 ms after its answer. A writer asleep by then is woken
/// through a futex, which on this 2-vCPU VM often means waking an idle vCPU
/// too; polling meanwhile cut the median 1-connection ingest latency from
/// 372–488 µs to 282–297 µs in two of three interleaved A/B runs (the third
/// ran with other load on the machine), for up to this much CPU per batch.
const SPIN_US: u64 = 200;

/// Polling only follows batches this small: under load the queue is rarely
/// empty, and a spinning writer would take a core from the HTTP workers.
const SPIN_BATCH_MAX: usize = 1;

/// Waits for the next job: polls for [`SPIN_US`] before sleeping.
fn spin_recv(rx: &mut mpsc::Receiver<Job>) -> Option<Job> {
    let until = std::time::Instant::now() + std::time::Duration::from_micros(SPIN_US);
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if std::time::Instant::now() >= until {
            return rx.blocking_recv();
        }
        std::hint::spin_loop();
    }
}

/// A member id for building tombstones (the tombstone then clears it).
fn event_member_placeholder() -> crate::types::MemberId {
    // Cannot fail: "erased" is a valid member id.
    crate::types::MemberId::parse("erased").expect("valid member id")
}

fn unavailable_commit(e: &CommitError) -> AppendError {
    AppendError::Unavailable(e.to_string())
}

fn unavailable(e: StoreError) -> AppendError {
    AppendError::Unavailable(e.to_string())
}

fn refuse(job: Job) {
    let err = || AppendError::Unavailable("journal is shutting down".into());
    match job {
        Job::Append { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::Probe { reply } => {
            let _ = reply.send(Err(err()));
        }
        Job::Erase { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::Retain { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::Shutdown => {}
    }
}

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
